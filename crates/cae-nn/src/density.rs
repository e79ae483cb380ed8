use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softplus};

const FILTERS: [usize; 6] = [1, 3, 3, 3, 3, 1];
const INIT_SCALE: f64 = 10.0;
/// Likelihoods are bounded below so that one outlier cannot dominate the rate.
pub const LIKELIHOOD_BOUND: f32 = 1e-9;

/// The factorized density of the hyper-latent (Ballé et al. 2018, appendix 6.1): per channel,
/// a monotone function built from softplus-positive matrices gives cumulative logits; the
/// likelihood of an integer-rounded value is CDF(v + ½) − CDF(v − ½).
#[derive(Module, Debug)]
pub struct FactorizedDensity {
    pub matrices: Vec<Param<Tensor<3>>>,
    pub biases: Vec<Param<Tensor<3>>>,
    pub factors: Vec<Param<Tensor<3>>>,
}

impl FactorizedDensity {
    pub fn new(channels: usize, device: &Device) -> Self {
        let scale = INIT_SCALE.powf(1.0 / (FILTERS.len() - 1) as f64);
        let mut matrices = Vec::new();
        let mut biases = Vec::new();
        let mut factors = Vec::new();
        for i in 0..FILTERS.len() - 1 {
            let (fi, fo) = (FILTERS[i], FILTERS[i + 1]);
            let init = (1.0 / scale / fo as f64).exp_m1().ln() as f32;
            matrices.push(Param::from_tensor(Tensor::full([channels, fo, fi], init, device)));
            biases.push(Param::from_tensor(
                Tensor::random([channels, fo, 1], burn::tensor::Distribution::Uniform(-0.5, 0.5), device),
            ));
            if i + 2 < FILTERS.len() {
                factors.push(Param::from_tensor(Tensor::zeros([channels, fo, 1], device)));
            }
        }
        FactorizedDensity { matrices, biases, factors }
    }

    /// Cumulative logits of `x`, shaped `[channels, 1, k]`.
    pub fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let mut x = x;
        for i in 0..self.matrices.len() {
            x = softplus(self.matrices[i].val(), 1.0).matmul(x) + self.biases[i].val();
            if let Some(f) = self.factors.get(i) {
                x = x.clone() + f.val().tanh() * x.tanh();
            }
        }
        x
    }

    /// Likelihood of every element of `z` (`[b, c, h, w]`), same shape order `[c, 1, b*h*w]`.
    pub fn likelihood(&self, z: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = z.dims();
        let v = z.permute([1, 0, 2, 3]).reshape([c, 1, b * h * w]);
        let lower = self.logits(v.clone() - 0.5);
        let upper = self.logits(v + 0.5);
        // Evaluate on the side of the median where the sigmoid does not saturate.
        let sign = (lower.clone() + upper.clone()).sign().neg();
        let l = (sigmoid(upper * sign.clone()) - sigmoid(lower * sign)).abs();
        l.clamp_min(LIKELIHOOD_BOUND)
    }

    /// CDF of channel `c` at the points `x` (f64 out, for table building).
    pub fn cdf(&self, x: &[f32], device: &Device) -> Vec<Vec<f64>> {
        let c = self.matrices[0].val().dims()[0];
        let k = x.len();
        let data: Vec<f32> = (0..c).flat_map(|_| x.iter().copied()).collect();
        let t = Tensor::<3>::from_data(TensorData::new(data, [c, 1, k]), device);
        let p = sigmoid(self.logits(t)).into_data().try_into_vec_as::<f32>().expect("f32 tensor");
        p.chunks(k).map(|r| r.iter().map(|&v| v as f64).collect()).collect()
    }
}

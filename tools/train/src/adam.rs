//! Adam with per-parameter gradient-norm clipping: what burn's `AdamConfig` with
//! `GradientClippingConfig::Norm` computes, in one parallel pass per parameter on the flex CPU
//! backend. burn's own runs about a dozen element-wise operations per parameter (clipping:
//! square, sum, square root, scale; Adam: two moments, square root, division, update), each a
//! serial pass on the calling thread while the pool waits: in training, a tenth of the main
//! thread's time. Other backends (and any other dtype) take burn's operations.
//!
//! Same state as burn's Adam ([`AdamState`]), so either can continue the other's moments.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::grad_clipping::GradientClipping;
use burn::optim::{Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

/// Values per piece of the parallel passes: pieces, and the norm's partial sums, do not depend
/// on the number of threads, so neither do the results.
const CHUNK: usize = 1 << 13;

#[derive(Clone)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// Each parameter's gradient scaled to at most this L2 norm.
    clip_norm: Option<f32>,
    /// burn's Adam, for tensors off flex.
    fallback: Adam,
}

impl FusedAdam {
    /// β₁ = 0.9, β₂ = 0.999 (burn's defaults), `epsilon`, clipping to `clip_norm`.
    pub fn new(epsilon: f32, clip_norm: Option<f32>) -> Self {
        let (beta_1, beta_2) = (0.9, 0.999);
        let fallback = AdamConfig::new().with_beta_1(beta_1).with_beta_2(beta_2).with_epsilon(epsilon).build();
        FusedAdam { beta_1, beta_2, epsilon, clip_norm, fallback }
    }

    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

/// The contiguous flex primitive of an f32 tensor, or `None` on another backend or dtype.
fn flex<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    t.clone().try_into_primitive::<Flex>().ok().map(|p| p.to_contiguous())
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn flex_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, shape.to_vec())))
}

/// L2 norm of `g`: f64 partial sums per fixed piece, added in order.
fn norm(g: &[f32]) -> f32 {
    let parts: Vec<f64> = g.par_chunks(CHUNK).map(|c| c.iter().map(|&v| v as f64 * v as f64).sum::<f64>()).collect();
    parts.iter().sum::<f64>().sqrt() as f32
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(&self, lr: LearningRate, tensor: Tensor<D>, grad: Tensor<D>, state: Option<AdamState<D>>) -> (Tensor<D>, Option<AdamState<D>>) {
        let moments = match &state {
            Some(s) => flex(&s.momentum.moment_1).zip(flex(&s.momentum.moment_2)).map(Some),
            None => Some(None),
        };
        let (Some(p), Some(g), Some(moments)) = (flex(&tensor), flex(&grad), moments) else {
            let grad = match self.clip_norm {
                Some(t) => GradientClipping::Norm(t).clip_gradient(grad),
                None => grad,
            };
            return self.fallback.step(lr, tensor, grad, state);
        };
        let shape: [usize; D] = tensor.dims();
        let (p, g) = (values(&p), values(&g));
        // As burn's clip_by_norm: threshold / (norm + the smallest positive f32), at most 1.
        let clip = self.clip_norm.map_or(1.0, |t| (t / (norm(g) + f32::MIN_POSITIVE)).min(1.0));
        let time = state.as_ref().map_or(0, |s| s.momentum.time) + 1;
        let (b1, b2) = (self.beta_1, self.beta_2);
        // As burn's AdaptiveMomentum, operation for operation.
        let bias_correction2_sqrt = (1.0 - b2.powi(time as i32)).sqrt();
        let combined = bias_correction2_sqrt / (1.0 - b1.powi(time as i32));
        let eps = self.epsilon * bias_correction2_sqrt;
        let lr = lr as f32;
        let n = p.len();
        let (mut p_new, mut m_new, mut v_new) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let old = moments.as_ref().map(|(m, v)| (values(m), values(v)));
        p_new.par_chunks_mut(CHUNK).zip(m_new.par_chunks_mut(CHUNK)).zip(v_new.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, ((po, mo), vo))| {
            let at = c * CHUNK;
            let (p, g) = (&p[at..at + po.len()], &g[at..at + po.len()]);
            for i in 0..po.len() {
                let g = if clip < 1.0 { g[i] * clip } else { g[i] };
                let (m, v) = match old {
                    Some((m, v)) => (m[at + i] * b1 + g * (1.0 - b1), v[at + i] * b2 + g * g * (1.0 - b2)),
                    None => (g * (1.0 - b1), g * g * (1.0 - b2)),
                };
                mo[i] = m;
                vo[i] = v;
                po[i] = p[i] - (m * combined) / (v.sqrt() + eps) * lr;
            }
        });
        let momentum = AdaptiveMomentumState::new(time, flex_tensor(m_new, shape), flex_tensor(v_new, shape));
        (flex_tensor(p_new, shape), Some(AdamState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: AdamState<D>, device: &Device) -> AdamState<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::grad_clipping::GradientClippingConfig;
    use burn::module::Param;
    use burn::optim::GradientsParams;

    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }

    fn parameters(m: &Two) -> Vec<f32> {
        let mut v: Vec<f32> = m.a.val().into_data().try_to_vec().unwrap();
        v.extend(m.b.val().into_data().try_to_vec::<f32>().unwrap());
        v
    }

    /// Three steps of the fused optimizer and of burn's Adam with norm clipping, from the same
    /// parameters and losses: the same parameters within float rounding. One parameter's
    /// gradient is large enough to be clipped, the other not; sizes over several pieces.
    #[test]
    fn matches_burns_adam_with_clipping() {
        let dev = Device::flex().autodiff();
        dev.seed(3);
        let init = Two {
            a: Param::from_tensor(Tensor::random([300, 70], burn::tensor::Distribution::Normal(0.0, 1.0), &dev)),
            b: Param::from_tensor(Tensor::random([5], burn::tensor::Distribution::Normal(0.0, 0.1), &dev)),
        };
        let loss = |m: &Two| (m.a.val().powf_scalar(2.0).sum() * 0.5 + m.b.val().sum() * 1e-3).sum();
        let mut ours = init.clone();
        let mut theirs = init;
        let mut fused = FusedAdam::new(1e-8, Some(1.0)).init();
        let mut burns = AdamConfig::new().with_epsilon(1e-8).with_grad_clipping(Some(GradientClippingConfig::Norm(1.0))).init();
        for step in 0..3 {
            let g = GradientsParams::from_grads(loss(&ours).backward(), &ours);
            ours = fused.step(1e-2, ours, g);
            let g = GradientsParams::from_grads(loss(&theirs).backward(), &theirs);
            theirs = burns.step(1e-2, theirs, g);
            for (i, (p, q)) in parameters(&ours).iter().zip(parameters(&theirs)).enumerate() {
                assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "step {step}, parameter {i}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn norm_adds_pieces_in_order() {
        let g: Vec<f32> = (0..3 * CHUNK + 5).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
        let want = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() as f32;
        assert!((norm(&g) - want).abs() <= 1e-6 * want);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| norm(&g));
        assert_eq!(one.to_bits(), norm(&g).to_bits());
    }
}

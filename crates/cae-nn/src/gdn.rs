use burn::module::Param;
use burn::prelude::*;

const PEDESTAL: f32 = 1.0 / (1 << 18) as f32;
const BETA_MIN: f32 = 1e-6;

/// Generalized divisive normalization (Ballé et al. 2016):
/// `y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)`, or with `inverse`, a multiplication.
/// beta and gamma are kept non-negative by storing their (pedestal-shifted) square roots.
#[derive(Module, Debug)]
pub struct Gdn {
    pub beta: Param<Tensor<1>>,
    pub gamma: Param<Tensor<2>>,
    pub inverse: bool,
}

impl Gdn {
    /// beta = 1, gamma = 0.1·I.
    pub fn new(channels: usize, inverse: bool, device: &Device) -> Self {
        let beta = vec![(1.0 + PEDESTAL).sqrt(); channels];
        let mut gamma = vec![PEDESTAL.sqrt(); channels * channels];
        for i in 0..channels {
            gamma[i * channels + i] = (0.1 + PEDESTAL).sqrt();
        }
        Gdn {
            beta: Param::from_tensor(Tensor::from_data(TensorData::new(beta, [channels]), device)),
            gamma: Param::from_tensor(Tensor::from_data(TensorData::new(gamma, [channels, channels]), device)),
            inverse,
        }
    }

    /// The lower bounds of the stored (reparametrised) beta and gamma.
    fn bounds() -> (f32, f32) {
        ((BETA_MIN + PEDESTAL).sqrt(), PEDESTAL.sqrt())
    }

    /// beta and gamma after the reparametrisation: `[c]` and `[c_out, c_in]`.
    fn effective(&self) -> (Tensor<1>, Tensor<2>) {
        let (beta_bound, gamma_bound) = Self::bounds();
        let beta = crate::lower_bound(self.beta.val(), beta_bound).square() - PEDESTAL;
        let gamma = crate::lower_bound(self.gamma.val(), gamma_bound).square() - PEDESTAL;
        (beta, gamma)
    }

    /// Raise the stored beta and gamma to their lower bounds. Training calls this after every
    /// optimiser step (projected gradient descent): the bounds pass gradients through, so
    /// without it a parameter that the loss pushes down drifts ever further below its bound,
    /// with no effect on the output, and needs as many steps to come back once the loss
    /// wants it up (CompressAI's `LowerBound` blocks such pushes instead).
    pub fn project(self) -> Self {
        let (beta_bound, gamma_bound) = Self::bounds();
        fn raise<const D: usize>(t: Tensor<D>, bound: f32) -> Tensor<D> {
            let t = t.clamp_min(bound).detach();
            if t.is_autodiff() { t.require_grad() } else { t }
        }
        Gdn {
            beta: self.beta.map(|t| raise(t, beta_bound)),
            gamma: self.gamma.map(|t| raise(t, gamma_bound)),
            inverse: self.inverse,
        }
    }

    /// The normaliser `sqrt(beta + gamma · x²)` is a 1x1 convolution of x², computed as one
    /// matrix product per image, `gamma [c, c] @ x² [c, h·w]`: the same sum, but its gradient
    /// with respect to gamma is a matrix product too (burn-flex computes the gradient of a 1x1
    /// convolution's weight as one matrix-vector product per output channel).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let (beta, gamma) = self.effective();
        let x2 = x.clone().square().reshape([b, c, h * w]);
        let norm = (gamma.unsqueeze::<3>().matmul(x2) + beta.reshape([1, c, 1])).reshape([b, c, h, w]);
        if self.inverse { x * norm.sqrt() } else { x / norm.sqrt() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    /// The normaliser as burn's own 1x1 convolution, the reference for the matrix form.
    fn forward_by_conv(g: &Gdn, x: Tensor<4>) -> Tensor<4> {
        let [_, c, _, _] = x.dims();
        let (beta, gamma) = g.effective();
        let norm = conv2d(x.clone().square(), gamma.reshape([c, c, 1, 1]), Some(beta), ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
        if g.inverse { x * norm.sqrt() } else { x / norm.sqrt() }
    }

    #[test]
    fn projection_raises_parameters_to_their_bounds() {
        for dev in [Device::flex(), Device::flex().autodiff()] {
        let mut g = Gdn::new(3, false, &dev);
        g.beta = Param::from_tensor(Tensor::from_data(TensorData::new(vec![-2.0f32, 0.5, 1.0], [3]), &dev));
        g.gamma = Param::from_tensor(Tensor::from_data(TensorData::new(vec![-1.0f32, 0.3, 0.0, 0.2, 0.1, -0.5, 0.0, 0.0, 0.7], [3, 3]), &dev));
        let p = g.project();
        let (bb, gb) = Gdn::bounds();
        let beta: Vec<f32> = p.beta.val().into_data().try_into_vec_as().unwrap();
        let gamma: Vec<f32> = p.gamma.val().into_data().try_into_vec_as().unwrap();
        assert_eq!(beta, vec![bb, 0.5, 1.0]);
        assert_eq!(gamma, vec![gb, 0.3, gb, 0.2, 0.1, gb, gb, gb, 0.7]);
        }
    }

    #[test]
    fn matrix_form_matches_burns_convolution() {
        let dev = Device::flex();
        dev.seed(5);
        for inverse in [false, true] {
            let mut g = Gdn::new(16, inverse, &dev);
            // Non-trivial gamma and beta.
            g.gamma = Param::from_tensor(Tensor::<2>::random([16, 16], burn::tensor::Distribution::Uniform(0.0, 0.6), &dev));
            g.beta = Param::from_tensor(Tensor::<1>::random([16], burn::tensor::Distribution::Uniform(0.5, 1.5), &dev));
            let x = Tensor::<4>::random([3, 16, 9, 7], burn::tensor::Distribution::Normal(0.0, 2.0), &dev);
            let a: Vec<f32> = g.forward(x.clone()).into_data().try_into_vec_as().unwrap();
            let b: Vec<f32> = forward_by_conv(&g, x).into_data().try_into_vec_as().unwrap();
            for (i, (&p, &q)) in a.iter().zip(&b).enumerate() {
                assert!((p - q).abs() <= 1e-5 * q.abs().max(1.0), "inverse {inverse}, element {i}: {p} vs {q}");
            }
        }
    }
}

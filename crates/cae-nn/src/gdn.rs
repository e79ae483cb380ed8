use burn::module::Param;
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

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

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, c, _, _] = x.dims();
        let beta_bound = (BETA_MIN + PEDESTAL).sqrt();
        let beta = crate::lower_bound(self.beta.val(), beta_bound).square() - PEDESTAL;
        let gamma = crate::lower_bound(self.gamma.val(), PEDESTAL.sqrt()).square() - PEDESTAL;
        let norm = conv2d(
            x.clone().square(),
            gamma.reshape([c, c, 1, 1]),
            Some(beta),
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
        if self.inverse { x * norm.sqrt() } else { x / norm.sqrt() }
    }
}

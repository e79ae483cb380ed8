//! What the encoder and decoder networks share: the model configuration, GDN / inverse GDN,
//! the per-quality gain vectors of the variable-rate model, and the learned factorized
//! density of the hyper-latent.
#![forbid(unsafe_code)]

mod config;
mod density;
mod gdn;
mod tensors;

pub use config::{ModelConfig, ConfigError};
pub use density::FactorizedDensity;
pub use gdn::Gdn;
pub use tensors::{export_params, import_params, NamedTensor};

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::PaddingConfig2d;
use burn::prelude::*;

/// Total downsampling of the hyperprior models: images are padded to a multiple of this.
pub const STRIDE: u32 = 64;

/// `max(x, bound)` whose gradient passes through unchanged, also below the bound (so that
/// a value held at the bound can still be pulled up by the loss).
pub fn lower_bound<const D: usize>(x: Tensor<D>, bound: f32) -> Tensor<D> {
    x.clone() + (x.clone().clamp_min(bound) - x).detach()
}

/// A k x k convolution with stride `s` and "same"-style padding k/2.
pub fn conv(c_in: usize, c_out: usize, k: usize, s: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([s, s])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .init(device)
}

/// A k x k transposed convolution with stride 2 that doubles height and width.
pub fn deconv(c_in: usize, c_out: usize, k: usize, device: &Device) -> ConvTranspose2d {
    ConvTranspose2dConfig::new([c_in, c_out], [k, k])
        .with_stride([2, 2])
        .with_padding([k / 2, k / 2])
        .with_padding_out([1, 1])
        .init(device)
}

/// Per-quality gain vectors (Cui et al. 2021): the encoder multiplies the latent by
/// `gain[q]` before quantisation and the decoder multiplies the dequantised latent by
/// `inverse[q]`, so one network serves every quality.
#[derive(Module, Debug)]
pub struct GainUnit {
    pub gain: Param<Tensor<2>>,
    pub inverse: Param<Tensor<2>>,
}

impl GainUnit {
    /// Gains initialised to sqrt(λ_q / λ_mid): the quantiser step that suits each λ.
    pub fn new(lambdas: &[f64], m: usize, device: &Device) -> Self {
        let mid = lambdas[lambdas.len() / 2];
        let g: Vec<f32> =
            lambdas.iter().flat_map(|&l| std::iter::repeat_n((l / mid).sqrt() as f32, m)).collect();
        let inv: Vec<f32> = g.iter().map(|v| 1.0 / v).collect();
        let q = lambdas.len();
        GainUnit {
            gain: Param::from_tensor(Tensor::from_data(TensorData::new(g, [q, m]), device)),
            inverse: Param::from_tensor(Tensor::from_data(TensorData::new(inv, [q, m]), device)),
        }
    }

    /// Gains of quality index `q` (0-based) for each batch element: `[b, m, 1, 1]`.
    fn pick(p: &Param<Tensor<2>>, q: &[usize]) -> Tensor<4> {
        let t = p.val();
        let [_, m] = t.dims();
        let rows: Vec<Tensor<2>> = q.iter().map(|&q| t.clone().slice([q..q + 1, 0..m])).collect();
        Tensor::cat(rows, 0).abs().reshape([q.len(), m, 1, 1])
    }

    /// Scale a latent `[b, m, h, w]` for quantisation.
    pub fn apply(&self, y: Tensor<4>, q: &[usize]) -> Tensor<4> {
        y * Self::pick(&self.gain, q)
    }

    /// Undo the scaling after dequantisation.
    pub fn invert(&self, y: Tensor<4>, q: &[usize]) -> Tensor<4> {
        y * Self::pick(&self.inverse, q)
    }
}

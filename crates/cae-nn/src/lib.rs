//! What the encoder and decoder networks share: the model configuration, GDN / inverse GDN,
//! the per-quality gain vectors of the variable-rate model, and the learned factorized
//! density of the hyper-latent.
// Unsafe code only in `direct`'s SIMD micro-kernel and the AMX tiles (`amx`, `amx_train`),
// behind checked bounds.
#![deny(unsafe_code)]

pub mod amx;
mod amx_train;
mod config;
mod conv_op;
mod density;
mod direct;
mod fastconv;
mod flex_ops;
mod gdn;
mod gdn_op;
mod tensors;

pub use amx_train::{bf16_products, set_bf16_products};
pub use config::{ModelConfig, ConfigError};
pub use density::FactorizedDensity;
pub use direct::conv3x3_exact;
pub use fastconv::{chain_values, conv2d, conv_chain, deconv_chain, conv_forward, conv_relu_forward, conv_transpose2d, conv_values, deconv_forward, deconv_relu_forward, deconv_values, weight_grad};
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

/// See [`GainUnit::remap`]: `rows` is `[old.len(), m]`, `exponent` the range of the
/// extrapolation's exponent.
fn remap_rows(rows: &[f32], m: usize, old: &[f64], new: &[f64], exponent: (f64, f64)) -> Vec<f32> {
    assert_eq!(rows.len(), old.len() * m, "one row of gains per old λ");
    let ln_old: Vec<f64> = old.iter().map(|l| l.ln()).collect();
    let ln_row = |i: usize| rows[i * m..(i + 1) * m].iter().map(|g| (g.abs() as f64).max(1e-12).ln()).collect::<Vec<f64>>();
    let mut out = Vec::with_capacity(new.len() * m);
    for &lambda in new {
        let l = lambda.ln();
        if let Some(i) = ln_old.iter().position(|&o| (o - l).abs() < 1e-9) {
            out.extend_from_slice(&rows[i * m..(i + 1) * m]);
            continue;
        }
        if old.len() == 1 {
            let e = if exponent.1 > 0.0 { 0.5 } else { -0.5 };
            out.extend(ln_row(0).iter().map(|g| (g + e * (l - ln_old[0])).exp() as f32));
            continue;
        }
        // The pair of old levels that brackets λ, or the nearest pair at either end.
        let a = ln_old.iter().rposition(|&o| o < l).unwrap_or(0).min(old.len() - 2);
        let inside = l > ln_old[0] && l < ln_old[old.len() - 1];
        let (ga, gb) = (ln_row(a), ln_row(a + 1));
        for c in 0..m {
            let mut slope = (gb[c] - ga[c]) / (ln_old[a + 1] - ln_old[a]);
            if !inside {
                slope = slope.clamp(exponent.0, exponent.1);
            }
            // From the nearer of the two (they agree inside the bracket).
            let (g, at) = if l > ln_old[a + 1] { (gb[c], ln_old[a + 1]) } else { (ga[c], ln_old[a]) };
            out.push((g + slope * (l - at)).exp() as f32);
        }
    }
    out
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

    /// The gains of a model trained with the λ set `old`, carried over to the λ set `new`
    /// (both ascending), so that a run can resume with more or other quality levels: a λ of
    /// `old` keeps its rows exactly; one between two of them gets the per-channel log-linear
    /// interpolation in log λ (gains follow a power of λ); one outside them the extrapolation
    /// of the nearest two, its exponent held within [0, 1] (gain) or [−1, 0] (inverse), and
    /// with a single old level, the exponent ±½ of [`GainUnit::new`].
    pub fn remap(&self, old: &[f64], new: &[f64], device: &Device) -> Self {
        let rows = |p: &Param<Tensor<2>>| -> Vec<f32> { p.val().into_data().try_into_vec_as().expect("float gains") };
        let m = self.gain.val().dims()[1];
        let gain = remap_rows(&rows(&self.gain), m, old, new, (0.0, 1.0));
        let inverse = remap_rows(&rows(&self.inverse), m, old, new, (-1.0, 0.0));
        let param = |v: Vec<f32>| Param::from_tensor(Tensor::from_data(TensorData::new(v, [new.len(), m]), device));
        GainUnit { gain: param(gain), inverse: param(inverse) }
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

/// `n` zeros, written by the thread pool where `n` is large: an output or a padded copy is
/// zeroed before the threads fill it, and a plain `vec![0; n]` did that on the calling thread
/// alone (in training, `memset` was a third of the main thread's time while the pool waited).
pub(crate) fn zeroed<T: Copy + Default + Send + Sync>(n: usize) -> Vec<T> {
    use rayon::iter::ParallelExtend;
    if n < 1 << 16 {
        return vec![T::default(); n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(T::default(), n));
    v
}

/// A copy of `x`, written by the thread pool where `x` is large (as [`zeroed`]).
pub(crate) fn copied<T: Copy + Send + Sync>(x: &[T]) -> Vec<T> {
    use rayon::prelude::*;
    if x.len() < 1 << 16 {
        return x.to_vec();
    }
    let mut v = Vec::with_capacity(x.len());
    v.par_extend(x.par_iter().copied());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remapped_gains_keep_old_rows_and_follow_powers_of_lambda() {
        // Two channels: one whose gain goes as λ^0.5, one as λ^2 (beyond the extrapolation's
        // limit of 1).
        let old = [0.01, 0.04];
        let rows = [0.1f32, 0.01, 0.2, 0.16];
        let new = [0.0025, 0.01, 0.02, 0.04, 0.16];
        let out = remap_rows(&rows, 2, &old, &new, (0.0, 1.0));
        let want = [0.05, 0.0025, 0.1, 0.01, 0.1414, 0.04, 0.2, 0.16, 0.4, 0.64];
        for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
            assert!((o as f64 - w).abs() < 1e-3 * w.max(0.01), "element {i}: {o} vs {w}");
        }
        // Inverse gains: exponents held within [-1, 0].
        let inv: Vec<f32> = rows.iter().map(|g| 1.0 / g).collect();
        let out = remap_rows(&inv, 2, &old, &[0.16], (-1.0, 0.0));
        assert!((out[0] - 2.5).abs() < 1e-3 && (out[1] - 1.5625).abs() < 1e-3, "{out:?}");
        // A single old level: exponent one half.
        let out = remap_rows(&[1.0, 2.0], 2, &[0.01], &[0.04], (0.0, 1.0));
        assert!((out[0] - 2.0).abs() < 1e-5 && (out[1] - 4.0).abs() < 1e-5, "{out:?}");
    }

    #[test]
    fn remap_builds_a_gain_unit_of_the_new_size() {
        let dev = Device::flex();
        let g = GainUnit::new(&[0.01, 0.02], 3, &dev);
        let r = g.remap(&[0.01, 0.02], &[0.005, 0.01, 0.02, 0.04], &dev);
        assert_eq!(r.gain.val().dims(), [4, 3]);
        let kept: Vec<f32> = r.gain.val().slice([1..3, 0..3]).into_data().try_into_vec_as().unwrap();
        let orig: Vec<f32> = g.gain.val().into_data().try_into_vec_as().unwrap();
        assert_eq!(kept, orig);
    }
}

/// Reproducible pseudo-random values for the tests (a linear congruential generator).
#[cfg(test)]
pub(crate) struct TestRng(u32);

#[cfg(test)]
impl TestRng {
    pub(crate) fn new(seed: u32) -> Self {
        TestRng(seed)
    }

    /// `n` values spread over [lo, hi).
    pub(crate) fn values(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_mul(1664525).wrapping_add(1013904223);
                lo + (hi - lo) * ((self.0 >> 8) as f32 / (1u32 << 24) as f32)
            })
            .collect()
    }
}

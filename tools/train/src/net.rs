//! The trainable codec: every network of the model plus the factorized density, and the
//! training forward pass (noise for the rate, straight-through rounding for the decoder).

use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::store::ModuleRecord;
use cae_decoder::{HyperSynthesis, Synthesis};
use cae_encoder::{Analysis, HyperAnalysis};
use cae_nn::{FactorizedDensity, GainUnit, ModelConfig};

/// Scales below this are raised to it (the smallest entry of the scale table).
const SCALE_MIN: f64 = 0.11;
const LIKELIHOOD_BOUND: f64 = 1e-9;

#[derive(Module, Debug)]
pub struct Net {
    pub g_a: Analysis,
    pub h_a: HyperAnalysis,
    pub g_s: Synthesis,
    pub h_s: HyperSynthesis,
    pub gains: GainUnit,
    pub density: FactorizedDensity,
}

/// Latent channels whose rate counts only in part: the channels from `from` on, at `weight`.
#[derive(Clone, Copy, Debug)]
pub struct Growing {
    pub from: usize,
    pub weight: f64,
}

pub struct Output {
    /// Mean squared error per sample, pixels in [0, 1].
    pub mse: Tensor<1>,
    /// Estimated bits per pixel of y and z.
    pub bpp: Tensor<1>,
}

/// The sum of `t` `[b, c, h, w]`, the channels from `growing.from` on weighted by `growing.weight`.
fn weighted_sum(t: Tensor<4>, growing: Option<Growing>) -> Tensor<1> {
    match growing {
        Some(g) if g.from < t.dims()[1] => {
            let [b, c, h, w] = t.dims();
            t.clone().slice([0..b, 0..g.from, 0..h, 0..w]).sum() + t.slice([0..b, g.from..c, 0..h, 0..w]).sum() * g.weight
        }
        _ => t.sum(),
    }
}

/// Standard normal CDF.
fn phi(x: Tensor<4>) -> Tensor<4> {
    (x * std::f64::consts::FRAC_1_SQRT_2).erf() * 0.5 + 0.5
}

/// `max(scale, SCALE_MIN)` with the gradient of CompressAI's `LowerBound` ("identity if
/// towards"): above the bound it passes; below it passes only where a larger scale would lower
/// the rate of that element. A plain straight-through bound also passes the pushes further
/// down, which change nothing in the forward pass but still move the shared weights of h_s —
/// a gradient for a gain that does not exist, which grows as more elements sit at the bound.
/// Only the rate depends on the scales, so the direction is known here: the likelihood
/// Φ((½ − v)/σ) − Φ((−½ − v)/σ) of an element at distance `v` from its mean has the
/// derivative (bφ(b) − aφ(a))/σ in σ (a, b the two arguments), which at σ = 0.11 is
/// positive exactly where v > ½ (up to a term of order e^(−1/(2σ²)) ≈ 1e−18).
fn bounded_scales(raw: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let fixed = raw.clone().detach();
    let larger_helps = v.detach().greater_elem(0.5).float();
    let above = fixed.clone().greater_equal_elem(SCALE_MIN).float();
    let pass = above.clone() + (above.neg() + 1.0) * larger_helps;
    fixed.clamp_min(SCALE_MIN as f32) + (raw.clone() - raw.detach()) * pass
}

impl Net {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        Net {
            g_a: Analysis::new(cfg, device),
            h_a: HyperAnalysis::new(cfg, device),
            g_s: Synthesis::new(cfg, device),
            h_s: HyperSynthesis::new(cfg, device),
            gains: GainUnit::new(&cfg.lambdas, cfg.m, device),
            density: FactorizedDensity::new(cfg.z_channels(), device),
        }
    }

    /// One training forward pass at quality index `q` for the whole batch: code `x`, measure
    /// the distortion against `target` (`x` itself, or the clean image when `x` is noisy).
    /// With `decoder_noise`, the synthesis sees the same noisy latent as the rate term
    /// (CompressAI's training forward); without, the latent rounded around the means with a
    /// straight-through gradient (what it sees at inference; Minnen & Singh 2020).
    pub fn forward(&self, x: Tensor<4>, target: Tensor<4>, q: usize, decoder_noise: bool) -> Output {
        self.forward_growing(x, target, q, decoder_noise, None)
    }

    /// [`Net::forward`], with the rate of the latent channels from `growing.from` on counted
    /// with the weight `growing.weight` (a latent just grown: see [`crate::widen`]).
    pub fn forward_growing(&self, x: Tensor<4>, target: Tensor<4>, q: usize, decoder_noise: bool, growing: Option<Growing>) -> Output {
        let [b, _, h, w] = x.dims();
        let qs = vec![q; b];
        let y = self.gains.apply(self.g_a.forward(x.clone()), &qs);
        let z = self.h_a.forward(y.clone());
        let z_tilde = cae_quant::add_noise(z);
        let z_lik = self.density.likelihood(z_tilde.clone());
        let (scales, means) = self.h_s.forward(z_tilde);
        let y_tilde = cae_quant::add_noise(y.clone());
        let v = (y_tilde.clone() - means.clone()).abs();
        let scales = bounded_scales(scales, v.clone());
        let upper = phi((v.clone().neg() + 0.5) / scales.clone());
        let lower = phi((v.neg() - 0.5) / scales);
        let y_lik = (upper - lower).clamp_min(LIKELIHOOD_BOUND);
        let pixels = (b * h * w) as f64;
        let bits = weighted_sum(y_lik.log(), growing) + z_lik.log().sum();
        let bpp = bits / (-std::f64::consts::LN_2 * pixels);
        let y_hat = if decoder_noise { y_tilde } else { cae_quant::ste_round_around(y, means) };
        let x_hat = self.g_s.forward(self.gains.invert(y_hat, &qs));
        let mse = (x_hat - target).square().mean();
        Output { mse, bpp }
    }

    /// This model (configuration `cfg`) grown to `new_cfg`'s latent size M and hidden width N
    /// (see [`crate::widen`]); the new weights come from a fresh initialisation on `device`.
    pub fn widen(&self, cfg: &ModelConfig, new_cfg: &ModelConfig, device: &Device) -> Result<Net> {
        let fresh = Net::new(new_cfg, device);
        let params = crate::widen::widen(&cae_nn::export_params(self), &cae_nn::export_params(&fresh), cfg.m, new_cfg.m)
            .map_err(|e| anyhow::anyhow!("growing the model: {e}"))?;
        let by_name = params.into_iter().map(|t| (t.name.clone(), t)).collect();
        let (net, missing) = cae_nn::import_params(fresh, &by_name);
        anyhow::ensure!(missing.is_empty(), "growing the model: no values for {missing:?}");
        Ok(net)
    }

    /// Projections after an optimiser step (see [`cae_nn::Gdn::project`]).
    pub fn project(mut self) -> Self {
        self.g_a.gdns = self.g_a.gdns.into_iter().map(cae_nn::Gdn::project).collect();
        self.g_s.igdns = self.g_s.igdns.into_iter().map(cae_nn::Gdn::project).collect();
        self
    }

    /// The rate the model expects with inference quantisation (rounding around the means,
    /// z rounded), in bits per pixel of `x`, and the MSE of the decoded image: what real files
    /// would give with ideal entropy coding and float probability models. Call on the
    /// non-autodiff module (`valid()`).
    pub fn estimate(&self, x: Tensor<4>, q: usize) -> (f64, f64) {
        let [b, _, h, w] = x.dims();
        let qs = vec![q; b];
        let y = self.gains.apply(self.g_a.forward(x.clone()), &qs);
        let z_hat = self.h_a.forward(y.clone()).round();
        let z_lik = self.density.likelihood(z_hat.clone());
        let (scales, means) = self.h_s.forward(z_hat);
        let scales = scales.clamp_min(SCALE_MIN as f32);
        let y_hat = (y - means.clone()).round() + means.clone();
        let v = (y_hat.clone() - means).abs();
        let upper = phi((v.clone().neg() + 0.5) / scales.clone());
        let lower = phi((v.neg() - 0.5) / scales);
        let y_lik = (upper - lower).clamp_min(LIKELIHOOD_BOUND);
        let bits = (y_lik.log().sum() + z_lik.log().sum()).into_scalar::<f32>() as f64 / -std::f64::consts::LN_2;
        let x_hat = self.g_s.forward(self.gains.invert(y_hat, &qs)).clamp(0.0, 1.0);
        let mse = (x_hat - x).square().mean().into_scalar::<f32>() as f64;
        (bits / (b * h * w) as f64, mse)
    }

    /// The embeddable model file.
    pub fn export(&self, cfg: &ModelConfig, device: &Device) -> Vec<u8> {
        let m = self.valid();
        cae_models::export(
            &cae_models::Trained {
                config: cfg,
                analysis: &m.g_a,
                hyper_analysis: &m.h_a,
                synthesis: &m.g_s,
                hyper_synthesis: &m.h_s,
                gains: &m.gains,
                density: &m.density,
            },
            device,
        )
    }
}

/// An exponential moving average of a model's parameters (Polyak averaging): with batches of
/// two crops the weights of any one step carry the noise of its last few updates; their
/// average over the last ~1/(1 − decay) updates does not.
pub struct Ema {
    decay: f32,
    values: std::collections::HashMap<String, cae_nn::NamedTensor>,
}

impl Ema {
    pub fn new(decay: f64) -> Self {
        Ema { decay: decay as f32, values: Default::default() }
    }

    /// Fold the model's current parameters in (the first call takes them as they are).
    pub fn update(&mut self, model: &Net) {
        let d = self.decay;
        for t in cae_nn::export_params(model) {
            match self.values.get_mut(&t.name) {
                Some(e) if e.shape == t.shape => e.values.iter_mut().zip(&t.values).for_each(|(a, &b)| *a = d * *a + (1.0 - d) * b),
                _ => {
                    self.values.insert(t.name.clone(), t);
                }
            }
        }
    }

    /// `model` with the averaged parameters (`model` itself before the first update).
    pub fn model(&self, model: &Net) -> Net {
        cae_nn::import_params(model.clone(), &self.values).0
    }
}

/// Save the full training state of the networks (f32) and the step count.
pub fn save_checkpoint(model: &Net, step: usize, path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp.bpk");
    model.clone().save_file(&tmp).map_err(|e| anyhow::anyhow!("{e:?}")).context("writing checkpoint")?;
    std::fs::rename(&tmp, path)?;
    std::fs::write(path.with_extension("step"), step.to_string())?;
    Ok(())
}

/// Load a checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint(model: Net, path: &Path) -> Result<(Net, usize)> {
    let record = ModuleRecord::load(path).map_err(|e| anyhow::anyhow!("{e:?}")).with_context(|| format!("{}", path.display()))?;
    let step = std::fs::read_to_string(path.with_extension("step")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    Ok((model.load_record(record), step))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_into_vec_as().unwrap()
    }

    #[test]
    fn a_grown_latent_leaves_every_old_output_unchanged() {
        let dev = Device::flex();
        dev.seed(7);
        let cfg = ModelConfig { n: 8, m: 12, kernel: 5, gdn: true, lambdas: vec![0.01, 0.02], hyper_n: None };
        let old = Net::new(&cfg, &dev);
        let new = old.widen(&cfg, &ModelConfig { m: 16, ..cfg.clone() }, &dev).unwrap();
        let x = Tensor::<4>::random([1, 3, 64, 64], burn::tensor::Distribution::Uniform(0.0, 1.0), &dev);
        let (y_old, y_new) = (old.gains.apply(old.g_a.forward(x.clone()), &[1]), new.gains.apply(new.g_a.forward(x), &[1]));
        assert_eq!(y_new.dims(), [1, 16, 4, 4]);
        assert_eq!(values(y_new.clone().slice([0..1, 0..12])), values(y_old.clone()));
        // The new channels carry values (random in), the hyper-latent ignores them (zero out).
        assert!(values(y_new.clone().slice([0..1, 12..16])).iter().any(|v| v.abs() > 1e-3));
        let (z_old, z_new) = (old.h_a.forward(y_old.clone()), new.h_a.forward(y_new));
        assert_eq!(values(z_new.clone()), values(z_old.clone()));
        let ((s_old, m_old), (s_new, m_new)) = (old.h_s.forward(z_old), new.h_s.forward(z_new));
        assert_eq!(values(s_new.slice([0..1, 0..12])), values(s_old));
        assert_eq!(values(m_new.slice([0..1, 0..12])), values(m_old));
        // With the new channels at zero (rounded away), the same image; with them set, another.
        let padded = Tensor::cat(vec![y_old.clone(), Tensor::zeros([1, 4, 4, 4], &dev)], 1);
        assert_eq!(values(new.g_s.forward(padded)), values(old.g_s.forward(y_old.clone())));
        let ones = Tensor::cat(vec![y_old.clone(), Tensor::ones([1, 4, 4, 4], &dev)], 1);
        assert_ne!(values(new.g_s.forward(ones)), values(old.g_s.forward(y_old)));
        // And it trains and exports like any model of that size.
        assert!(!new.export(&ModelConfig { m: 16, ..cfg }, &dev).is_empty());
    }

    #[test]
    fn a_grown_hidden_width_leaves_the_codec_unchanged() {
        let dev = Device::flex();
        dev.seed(11);
        let cfg = ModelConfig { n: 8, m: 12, kernel: 5, gdn: true, lambdas: vec![0.01, 0.02], hyper_n: None };
        // The hyperprior grown with N (z too), and kept at its size.
        for hyper_n in [None, Some(8)] {
            let wide = ModelConfig { n: 12, hyper_n, ..cfg.clone() };
            let old = Net::new(&cfg, &dev);
            let new = old.widen(&cfg, &wide, &dev).unwrap();
            let x = Tensor::<4>::random([1, 3, 64, 64], burn::tensor::Distribution::Uniform(0.0, 1.0), &dev);
            let close = |a: Tensor<4>, b: Tensor<4>, what: &str| {
                let (a, b) = (values(a), values(b));
                assert_eq!(a.len(), b.len(), "{what}");
                let spread = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
                let worst = a.iter().zip(&b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(worst <= 1e-5 * spread, "{what}: {worst} of {spread}");
            };
            // The same latent, the same hyper-latent on the old channels (the new ones are new),
            // the same entropy parameters and the same image.
            let (y_old, y_new) = (old.g_a.forward(x.clone()), new.g_a.forward(x));
            close(y_new.clone(), y_old.clone(), "y");
            let (z_old, z_new) = (old.h_a.forward(y_old.clone()), new.h_a.forward(y_new.clone()));
            assert_eq!(z_new.dims()[1], wide.z_channels());
            close(z_new.clone().slice([0..1, 0..8]), z_old.clone(), "z");
            // h_s reads the new z channels with zero weights: any values there change nothing.
            let ((s_old, m_old), (s_new, m_new)) = (old.h_s.forward(z_old), new.h_s.forward(z_new));
            close(s_new, s_old, "scales");
            close(m_new, m_old, "means");
            close(new.g_s.forward(y_new), old.g_s.forward(y_old), "image");
            // The new hidden channels carry values (random in), and the model exports at its size.
            let h: Vec<f32> = values(new.g_a.convs[0].forward(Tensor::ones([1, 3, 16, 16], &dev)).slice([0..1, 8..12]));
            assert!(h.iter().any(|v| v.abs() > 1e-3));
            let bytes = new.export(&wide, &dev);
            let loaded = cae_models::Model::from_bytes("grown", &bytes, &dev).unwrap();
            assert_eq!((loaded.config.n, loaded.config.z_channels()), (12, wide.z_channels()));
        }
    }

    #[test]
    fn growing_channels_pay_their_rate_by_the_weight() {
        let dev = Device::flex();
        // Two channels of 1 and 10 per element, 2x2 each.
        let t = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0, 10.0], [1, 2, 2, 2]), &dev);
        let sum = |g| weighted_sum(t.clone(), g).into_scalar::<f32>();
        assert_eq!(sum(None), 44.0);
        assert_eq!(sum(Some(Growing { from: 1, weight: 0.25 })), 14.0);
        assert_eq!(sum(Some(Growing { from: 1, weight: 0.0 })), 4.0);
        assert_eq!(sum(Some(Growing { from: 2, weight: 0.0 })), 44.0);
    }

    #[test]
    fn the_average_follows_the_parameters_by_its_decay() {
        let dev = Device::flex();
        let cfg = ModelConfig { n: 4, m: 6, kernel: 5, gdn: true, lambdas: vec![0.01], hyper_n: None };
        let mut ema = Ema::new(0.75);
        let (a, b) = (Net::new(&cfg, &dev), Net::new(&cfg, &dev));
        ema.update(&a);
        ema.update(&b);
        let avg = cae_nn::export_params(&ema.model(&a));
        let (pa, pb) = (cae_nn::export_params(&a), cae_nn::export_params(&b));
        assert_eq!(avg.len(), pa.len());
        for ((e, x), y) in avg.iter().zip(&pa).zip(&pb) {
            for ((&e, &x), &y) in e.values.iter().zip(&x.values).zip(&y.values) {
                assert!((e - (0.75 * x + 0.25 * y)).abs() <= 1e-6 * (1.0 + x.abs() + y.abs()), "{}: {e} {x} {y}", e);
            }
        }
        // Two fresh networks differ, so the average is neither of them.
        assert_ne!(avg[0].values, pa[0].values);
        assert_ne!(avg[0].values, pb[0].values);
    }

    #[test]
    fn scale_bound_passes_only_useful_gradients() {
        let dev = Device::flex().autodiff();
        // Raw scales: above the bound, below it with v = 0 (a smaller scale would lower the
        // rate: blocked), below it with v = 3 (a larger scale would: passed).
        let raw = Tensor::<4>::from_data(TensorData::new(vec![0.5f32, 0.05, 0.05], [1, 1, 1, 3]), &dev).require_grad();
        let v = Tensor::<4>::from_data(TensorData::new(vec![0.2f32, 0.0, 3.0], [1, 1, 1, 3]), &dev);
        let s = bounded_scales(raw.clone(), v);
        let values: Vec<f32> = s.clone().into_data().try_into_vec_as().unwrap();
        assert_eq!(values, vec![0.5, SCALE_MIN as f32, SCALE_MIN as f32]);
        let grads = (s * Tensor::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [1, 1, 1, 3]), &dev)).sum().backward();
        let g: Vec<f32> = raw.grad(&grads).unwrap().into_data().try_into_vec_as().unwrap();
        assert_eq!(g, vec![1.0, 0.0, 3.0]);
    }
}

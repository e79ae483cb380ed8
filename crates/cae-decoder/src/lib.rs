//! The synthesis networks: `g_s` (latent → image) in floats, and `h_s` (hyper-latent →
//! means and scales of the latent) both as a trainable float module and in the integer form
//! that coding uses ([`IntHyperSynthesis`]).
#![forbid(unsafe_code)]

mod int_hyper;

pub use int_hyper::{fixed_to_f32, IntConv, IntConvKind, IntHyperSynthesis, Prediction, FRAC_BITS};

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::prelude::*;
use cae_nn::{conv, conv_forward, deconv, deconv_chain, deconv_forward, deconv_relu_forward, Gdn, ModelConfig, NamedTensor};

/// `g_s`: four k x k stride-2 transposed convolutions M → N → N → N → 3, inverse GDN (or
/// ReLU) after the first three.
#[derive(Module, Debug)]
pub struct Synthesis {
    pub deconvs: Vec<ConvTranspose2d>,
    pub igdns: Vec<Gdn>,
}

impl Synthesis {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let ch = [cfg.m, cfg.n, cfg.n, cfg.n, 3];
        let deconvs = (0..4).map(|i| deconv(ch[i], ch[i + 1], cfg.kernel, device)).collect();
        let igdns = if cfg.gdn { (0..3).map(|i| Gdn::new(ch[i + 1], true, device)).collect() } else { Vec::new() };
        Synthesis { deconvs, igdns }
    }

    /// Reconstruction, not yet clamped.
    pub fn forward(&self, y: Tensor<4>) -> Tensor<4> {
        if !y.is_autodiff() {
            // Decoding: each layer writes straight into the next one's padded input, ReLU
            // fused into the writes.
            return deconv_chain(y, &self.deconvs, &self.igdns);
        }
        let mut x = y;
        for (i, d) in self.deconvs.iter().enumerate() {
            // Training: ReLU fused into the transposed convolution's operation.
            x = match (i < 3, self.igdns.get(i)) {
                (true, Some(g)) => g.forward(deconv_forward(d, x)),
                (true, None) => deconv_relu_forward(d, x),
                (false, _) => deconv_forward(d, x),
            };
        }
        x
    }
}

/// `h_s` (mean-scale variant, float, for training): 5x5 up N → M, ReLU, 5x5 up
/// M → 3M/2, ReLU, 3x3 conv 3M/2 → 2M; the first M output channels are scales, the last M
/// means.
#[derive(Module, Debug)]
pub struct HyperSynthesis {
    pub up1: ConvTranspose2d,
    pub up2: ConvTranspose2d,
    pub out: Conv2d,
}

impl HyperSynthesis {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let mid = cfg.m * 3 / 2;
        HyperSynthesis {
            up1: deconv(cfg.z_channels(), cfg.m, 5, device),
            up2: deconv(cfg.m, mid, 5, device),
            out: conv(mid, 2 * cfg.m, 3, 1, device),
        }
    }

    /// `(scales, means)`, each `[b, M, H/16, W/16]`; scales are not yet lower-bounded.
    pub fn forward(&self, z: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let x = deconv_relu_forward(&self.up1, z);
        let x = deconv_relu_forward(&self.up2, x);
        let mut p = conv_forward(&self.out, x).chunk(2, 1);
        let means = p.pop().expect("two chunks");
        let scales = p.pop().expect("two chunks");
        (scales, means)
    }

    /// Convert to the integer network that coding runs.
    pub fn to_integer(&self, cfg: &ModelConfig, scale_table: &[f64]) -> IntHyperSynthesis {
        let params = cae_nn::export_params(self);
        let get = |name: &str| -> &NamedTensor {
            params.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("parameter {name}"))
        };
        let mid = cfg.m * 3 / 2;
        let layer = |prefix: &str, kind, c_in, c_out| {
            IntConv::from_float(
                kind,
                c_in,
                c_out,
                &get(&format!("{prefix}.weight")).values,
                &get(&format!("{prefix}.bias")).values,
            )
        };
        IntHyperSynthesis {
            layers: vec![
                layer("up1", IntConvKind::Up5x5, cfg.z_channels(), cfg.m),
                layer("up2", IntConvKind::Up5x5, cfg.m, mid),
                layer("out", IntConvKind::Same3x3, mid, 2 * cfg.m),
            ],
            scale_thresholds: IntHyperSynthesis::thresholds(scale_table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::relu;

    /// As the encoder's test: plain values between g_s's layers give what the layers give one
    /// tensor at a time, bit for bit.
    #[test]
    fn values_between_layers_match_the_layer_by_layer_path() {
        let dev = Device::flex();
        dev.seed(6);
        for gdn in [true, false] {
            let cfg = ModelConfig { n: 16, m: 32, kernel: 5, gdn, lambdas: vec![0.01], hyper_n: None };
            let gs = Synthesis::new(&cfg, &dev);
            let y = Tensor::<4>::random([1, 32, 5, 7], burn::tensor::Distribution::Uniform(-2.0, 2.0), &dev);
            let mut want = y.clone();
            for (i, d) in gs.deconvs.iter().enumerate() {
                want = deconv_forward(d, want);
                if i < 3 {
                    want = match gs.igdns.get(i) {
                        Some(g) => g.forward(want),
                        None => relu(want),
                    };
                }
            }
            let bits = |t: Tensor<4>| -> Vec<u32> { t.into_data().try_into_vec_as::<f32>().unwrap().iter().map(|v| v.to_bits()).collect() };
            assert_eq!(bits(gs.forward(y)), bits(want), "g_s, gdn {gdn}");
        }
    }

    #[test]
    fn integer_hyper_synthesis_tracks_the_float_one() {
        let dev = Device::flex();
        dev.seed(3);
        let cfg = ModelConfig { n: 8, m: 12, kernel: 5, gdn: true, lambdas: vec![0.01], hyper_n: None };
        let hs = HyperSynthesis::new(&cfg, &dev);
        let (zh, zw) = (2, 3);
        let z: Vec<i32> = (0..8 * zh * zw).map(|i| (i as i32 % 7) - 3).collect();
        let zt = Tensor::<4>::from_data(
            TensorData::new(z.iter().map(|&v| v as f32).collect::<Vec<f32>>(), [1, 8, zh, zw]),
            &dev,
        );
        let (scales, means) = hs.forward(zt);
        let means: Vec<f32> = means.into_data().try_into_vec_as().unwrap();
        let scales: Vec<f32> = scales.into_data().try_into_vec_as().unwrap();
        let table = cae_entropy_free_scale_table();
        let ihs = hs.to_integer(&cfg, &table);
        assert!(ihs.validate());
        let p = ihs.forward(&z, zh, zw);
        assert_eq!(p.means.len(), 12 * 8 * 12);
        for (i, (&mf, &mi)) in means.iter().zip(&p.means).enumerate() {
            assert!((mf - fixed_to_f32(mi)).abs() < 5e-3, "mean {i}: {mf} vs {}", fixed_to_f32(mi));
        }
        // The chosen table entry is the first one at or above the float scale (allowing for
        // elements within rounding distance of a boundary).
        for (&s, &t) in scales.iter().zip(&p.table) {
            let s = s.max(0.11) as f64;
            let t = t as usize;
            assert!(table[t] >= s - 2e-3 || t == table.len() - 1);
            assert!(t == 0 || table[t - 1] < s + 2e-3);
        }
    }

    fn cae_entropy_free_scale_table() -> Vec<f64> {
        (0..64).map(|i| (0.11f64.ln() + (256f64.ln() - 0.11f64.ln()) * i as f64 / 63.0).exp()).collect()
    }
}

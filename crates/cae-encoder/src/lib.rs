//! The analysis networks: `g_a` (image → latent y) and `h_a` (y → hyper-latent z).
#![forbid(unsafe_code)]

use burn::nn::conv::Conv2d;
use burn::prelude::*;
use cae_nn::{conv, conv_chain, conv_forward, conv_relu_forward, Gdn, ModelConfig};

/// `g_a`: four k x k stride-2 convolutions 3 → N → N → N → M, GDN (or ReLU) after the
/// first three. Output: `[b, M, H/16, W/16]`.
#[derive(Module, Debug)]
pub struct Analysis {
    pub convs: Vec<Conv2d>,
    pub gdns: Vec<Gdn>,
}

impl Analysis {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let ch = [3, cfg.n, cfg.n, cfg.n, cfg.m];
        let convs = (0..4).map(|i| conv(ch[i], ch[i + 1], cfg.kernel, 2, device)).collect();
        let gdns = if cfg.gdn { (0..3).map(|i| Gdn::new(ch[i + 1], false, device)).collect() } else { Vec::new() };
        Analysis { convs, gdns }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if !x.is_autodiff() {
            // Coding: each layer writes straight into the next one's padded input (no tensor
            // per layer), ReLU fused into the convolutions' writes.
            return conv_chain(x, &self.convs, &self.gdns);
        }
        let mut x = x;
        for (i, c) in self.convs.iter().enumerate() {
            // Training: ReLU fused into the convolution's operation.
            x = match (i < 3, self.gdns.get(i)) {
                (true, Some(g)) => g.forward(conv_forward(c, x)),
                (true, None) => conv_relu_forward(c, x),
                (false, _) => conv_forward(c, x),
            };
        }
        x
    }
}

/// `h_a` (mean-scale variant): 3x3 conv M → N, ReLU, 5x5 stride-2 conv N → N, ReLU,
/// 5x5 stride-2 conv N → N. Output: `[b, N, H/64, W/64]`.
#[derive(Module, Debug)]
pub struct HyperAnalysis {
    pub convs: Vec<Conv2d>,
}

impl HyperAnalysis {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        HyperAnalysis {
            convs: vec![
                conv(cfg.m, cfg.z_channels(), 3, 1, device),
                conv(cfg.z_channels(), cfg.z_channels(), 5, 2, device),
                conv(cfg.z_channels(), cfg.z_channels(), 5, 2, device),
            ],
        }
    }

    pub fn forward(&self, y: Tensor<4>) -> Tensor<4> {
        if !y.is_autodiff() {
            // ReLU after every layer but the last, as below.
            return conv_chain(y, &self.convs, &[]);
        }
        let x = conv_relu_forward(&self.convs[0], y);
        let x = conv_relu_forward(&self.convs[1], x);
        conv_forward(&self.convs[2], x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::relu;

    /// The coding path (plain values between layers, ReLU fused) computes what the layers
    /// compute one tensor at a time, bit for bit, with GDN and with ReLU, at a size that is
    /// not a multiple of any tile.
    /// g_a one layer at a time through burn's tensors, the f32 path.
    fn layer_by_layer(ga: &Analysis, x: Tensor<4>) -> Tensor<4> {
        let mut x = x;
        for (i, c) in ga.convs.iter().enumerate() {
            x = conv_forward(c, x);
            if i < 3 {
                x = match ga.gdns.get(i) {
                    Some(g) => g.forward(x),
                    None => relu(x),
                };
            }
        }
        x
    }

    #[test]
    fn values_between_layers_match_the_layer_by_layer_path() {
        let dev = Device::flex();
        dev.seed(5);
        for gdn in [true, false] {
            let cfg = ModelConfig { n: 16, m: 32, kernel: 5, gdn, lambdas: vec![0.01], hyper_n: None };
            let (ga, ha) = (Analysis::new(&cfg, &dev), HyperAnalysis::new(&cfg, &dev));
            let x = Tensor::<4>::random([1, 3, 72, 104], burn::tensor::Distribution::Uniform(0.0, 1.0), &dev);
            let want = layer_by_layer(&ga, x.clone());
            let got = ga.forward(x);
            let bits = |t: Tensor<4>| -> Vec<u32> { t.into_data().try_into_vec_as::<f32>().unwrap().iter().map(|v| v.to_bits()).collect() };
            assert_eq!(bits(got.clone()), bits(want.clone()), "g_a, gdn {gdn}");
            let z_want = conv_forward(&ha.convs[2], relu(conv_forward(&ha.convs[1], relu(conv_forward(&ha.convs[0], want)))));
            assert_eq!(bits(ha.forward(got)), bits(z_want), "h_a, gdn {gdn}");
        }
    }

    /// With AMX (`cae_nn::amx`), g_a's layers run on bf16 tiles: not the same bits, but within
    /// bf16's rounding of the f32 layers (the decoder never takes this path).
    #[test]
    fn tiles_stay_within_bf16_rounding_of_the_f32_layers() {
        let dev = Device::flex();
        dev.seed(6);
        for gdn in [true, false] {
            let cfg = ModelConfig { n: 64, m: 96, kernel: 5, gdn, lambdas: vec![0.01], hyper_n: None };
            let ga = Analysis::new(&cfg, &dev);
            let x = Tensor::<4>::random([1, 3, 64, 576], burn::tensor::Distribution::Uniform(0.0, 1.0), &dev);
            let want = layer_by_layer(&ga, x.clone());
            let values = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_into_vec_as::<f32>().unwrap() };
            let (got, want) = (values(ga.forward(x)), values(want));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 0.01 * scale, "gdn {gdn}: off by {worst} of {scale}");
            if cae_nn::amx::available() {
                assert!(got != want, "gdn {gdn}: the tiles did not run");
            }
        }
    }

    #[test]
    fn shapes() {
        let dev = Device::flex();
        let cfg = ModelConfig { n: 8, m: 12, kernel: 5, gdn: true, lambdas: vec![0.01], hyper_n: None };
        let x = Tensor::<4>::zeros([1, 3, 128, 64], &dev);
        let y = Analysis::new(&cfg, &dev).forward(x);
        assert_eq!(y.dims(), [1, 12, 8, 4]);
        let z = HyperAnalysis::new(&cfg, &dev).forward(y);
        assert_eq!(z.dims(), [1, 8, 2, 1]);
    }
}

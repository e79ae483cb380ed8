//! The analysis networks: `g_a` (image → latent y) and `h_a` (y → hyper-latent z).
#![forbid(unsafe_code)]

use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::activation::relu;
use cae_nn::{conv, conv_forward, Gdn, ModelConfig};

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
        let mut x = x;
        for (i, c) in self.convs.iter().enumerate() {
            x = conv_forward(c, x);
            if i < 3 {
                x = match self.gdns.get(i) {
                    Some(g) => g.forward(x),
                    None => relu(x),
                };
            }
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
                conv(cfg.m, cfg.n, 3, 1, device),
                conv(cfg.n, cfg.n, 5, 2, device),
                conv(cfg.n, cfg.n, 5, 2, device),
            ],
        }
    }

    pub fn forward(&self, y: Tensor<4>) -> Tensor<4> {
        let x = relu(conv_forward(&self.convs[0], y));
        let x = relu(conv_forward(&self.convs[1], x));
        conv_forward(&self.convs[2], x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let dev = Device::flex();
        let cfg = ModelConfig { n: 8, m: 12, kernel: 5, gdn: true, lambdas: vec![0.01] };
        let x = Tensor::<4>::zeros([1, 3, 128, 64], &dev);
        let y = Analysis::new(&cfg, &dev).forward(x);
        assert_eq!(y.dims(), [1, 12, 8, 4]);
        let z = HyperAnalysis::new(&cfg, &dev).forward(y);
        assert_eq!(z.dims(), [1, 8, 2, 1]);
    }
}

//! The seed convolutional autoencoder that caec grew from: an encoder of Conv2D + ReLU +
//! MaxPool blocks, a dense bottleneck of `code` values (the code size), a decoder of a dense
//! layer and Conv2D + ReLU + UpSampling blocks, and a sigmoid output; trained to minimise
//! MSE, L1 or binary cross-entropy. Also the MNIST reader ([`idx`]).
#![forbid(unsafe_code)]

pub mod eval;
pub mod idx;

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::interpolate::{Interpolate2d, Interpolate2dConfig, InterpolateMode};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid, softplus};
use serde::{Deserialize, Serialize};

/// The architecture: image side and channels, channels per block, code size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    /// Side of the (square) input images; a multiple of 2^blocks.
    pub size: usize,
    /// Channels of the images (1 for MNIST).
    pub image_channels: usize,
    /// Channels of each Conv + ReLU + MaxPool block (the decoder mirrors them).
    pub channels: Vec<usize>,
    /// Values in the bottleneck.
    pub code: usize,
}

impl SeedConfig {
    /// MNIST with the given code size and two blocks of 16 and 32 channels.
    pub fn mnist(code: usize) -> Self {
        SeedConfig { size: 28, image_channels: 1, channels: vec![16, 32], code }
    }

    /// Check the ranges; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let blocks = self.channels.len();
        if !(1..=6).contains(&blocks) || self.channels.iter().any(|&c| !(1..=1024).contains(&c)) {
            return Err(format!("channels {:?}: 1 to 6 blocks of 1..=1024", self.channels));
        }
        if self.size == 0 || self.size % (1 << blocks) != 0 {
            return Err(format!("size {} is not a multiple of 2^{blocks}", self.size));
        }
        if !(1..=4096).contains(&self.code) || !(1..=4).contains(&self.image_channels) {
            return Err(format!("code {} (1..=4096), image channels {} (1..=4)", self.code, self.image_channels));
        }
        Ok(())
    }

    fn bottom(&self) -> (usize, usize) {
        (*self.channels.last().expect("validated"), self.size >> self.channels.len())
    }
}

/// The reconstruction loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    Mse,
    L1,
    Bce,
}

impl std::str::FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mse" => Ok(Loss::Mse),
            "l1" => Ok(Loss::L1),
            "bce" => Ok(Loss::Bce),
            _ => Err(format!("loss {s:?}: mse, l1 or bce")),
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::Mse => "mse",
            Loss::L1 => "l1",
            Loss::Bce => "bce",
        })
    }
}

fn conv3(c_in: usize, c_out: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device)
}

/// The seed autoencoder.
#[derive(Module, Debug)]
pub struct SeedCae {
    pub encoder: Vec<Conv2d>,
    pub pool: MaxPool2d,
    pub to_code: Linear,
    pub from_code: Linear,
    pub upsample: Interpolate2d,
    pub decoder: Vec<Conv2d>,
    pub output: Conv2d,
    pub bottom_channels: usize,
    pub bottom_side: usize,
}

impl SeedCae {
    pub fn new(cfg: &SeedConfig, device: &Device) -> Self {
        let ch = &cfg.channels;
        let mut ins = vec![cfg.image_channels];
        ins.extend_from_slice(&ch[..ch.len() - 1]);
        let encoder = ins.iter().zip(ch).map(|(&i, &o)| conv3(i, o, device)).collect();
        let (bc, bs) = cfg.bottom();
        // Decoder blocks mirror the encoder: c_{B-1} → c_{B-2} → … → c_0 → c_0.
        let rev: Vec<usize> = ch.iter().rev().copied().chain(std::iter::once(ch[0])).collect();
        let decoder = rev.windows(2).map(|w| conv3(w[0], w[1], device)).collect();
        SeedCae {
            encoder,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            to_code: LinearConfig::new(bc * bs * bs, cfg.code).init(device),
            from_code: LinearConfig::new(cfg.code, bc * bs * bs).init(device),
            upsample: Interpolate2dConfig::new().with_scale_factor(Some([2.0, 2.0])).with_mode(InterpolateMode::Nearest).init(),
            decoder,
            output: Self::output_layer(ch[0], cfg.image_channels, device),
            bottom_channels: bc,
            bottom_side: bs,
        }
    }

    /// The output convolution, its bias starting at the logit of a dark image (σ(−2) = 0.12,
    /// about MNIST's mean): started at 0.5 everywhere, the first steps pushed every logit far
    /// down, the sigmoid saturated, and MSE/L1 training stalled with an all-black output.
    fn output_layer(c_in: usize, c_out: usize, device: &Device) -> Conv2d {
        let mut conv = conv3(c_in, c_out, device);
        conv.bias = Some(burn::module::Param::from_tensor(Tensor::full([c_out], -2.0, device)));
        conv
    }

    /// The code of each image: `[b, code]`; images `[b, c, size, size]` in [0, 1].
    pub fn encode(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for c in &self.encoder {
            x = self.pool.forward(relu(c.forward(x)));
        }
        let [b, c, h, w] = x.dims();
        self.to_code.forward(x.reshape([b, c * h * w]))
    }

    /// Output logits (before the sigmoid) of codes `[b, code]`.
    pub fn decode_logits(&self, code: Tensor<2>) -> Tensor<4> {
        let b = code.dims()[0];
        let (c, s) = (self.bottom_channels, self.bottom_side);
        let mut x = relu(self.from_code.forward(code)).reshape([b, c, s, s]);
        for conv in &self.decoder {
            x = relu(conv.forward(self.upsample.forward(x)));
        }
        self.output.forward(x)
    }

    /// Reconstructions in (0, 1) of codes `[b, code]`.
    pub fn decode(&self, code: Tensor<2>) -> Tensor<4> {
        sigmoid(self.decode_logits(code))
    }

    /// The training loss of reconstructing `target` from `input` (equal unless denoising),
    /// and the reconstruction.
    pub fn loss(&self, input: Tensor<4>, target: Tensor<4>, loss: Loss) -> (Tensor<1>, Tensor<4>) {
        let logits = self.decode_logits(self.encode(input));
        let out = sigmoid(logits.clone());
        let l = match loss {
            Loss::Mse => (out.clone() - target).square().mean(),
            Loss::L1 => (out.clone() - target).abs().mean(),
            // −[t·log σ(l) + (1 − t)·log(1 − σ(l))] = softplus(l) − t·l, stable for any l.
            Loss::Bce => (softplus(logits.clone(), 1.0) - target * logits).mean(),
        };
        (l, out)
    }
}

/// A batch of 8-bit images (`n` of `side` x `side`, `channels` planes each) as a tensor in [0, 1].
pub fn batch(pixels: &[&[u8]], channels: usize, side: usize, device: &Device) -> Tensor<4> {
    let data: Vec<f32> = pixels.iter().flat_map(|p| p.iter().map(|&v| v as f32 / 255.0)).collect();
    Tensor::from_data(TensorData::new(data, [pixels.len(), channels, side, side]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamConfig, GradientsParams};

    #[test]
    fn config_checks() {
        assert!(SeedConfig::mnist(32).validate().is_ok());
        assert!(SeedConfig { size: 30, ..SeedConfig::mnist(2) }.validate().is_err());
        assert!(SeedConfig { channels: vec![], ..SeedConfig::mnist(2) }.validate().is_err());
        assert!(SeedConfig { code: 0, ..SeedConfig::mnist(2) }.validate().is_err());
        assert_eq!("BCE".parse::<Loss>(), Ok(Loss::Bce));
        assert!("ssim".parse::<Loss>().is_err());
    }

    #[test]
    fn shapes_and_learning() {
        let dev = Device::flex().autodiff();
        dev.seed(3);
        let cfg = SeedConfig { size: 16, image_channels: 1, channels: vec![4, 8], code: 8 };
        let mut model = SeedCae::new(&cfg, &dev);
        // Four fixed 16x16 patterns: squares at different places.
        let imgs: Vec<Vec<u8>> = (0..4)
            .map(|k| (0..256).map(|i| if (i / 16) / 8 == k / 2 && (i % 16) / 8 == k % 2 { 255 } else { 0 }).collect())
            .collect();
        let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
        let x = batch(&refs, 1, 16, &dev);
        assert_eq!(model.encode(x.clone()).dims(), [4, 8]);
        let mut optim = AdamConfig::new().init();
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..300 {
            let (l, out) = model.loss(x.clone(), x.clone(), Loss::Bce);
            assert_eq!(out.dims(), [4, 1, 16, 16]);
            last = l.clone().into_scalar::<f32>();
            first.get_or_insert(last);
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        let first = first.unwrap();
        assert!(last < 0.3 * first, "loss {first} → {last}: the autoencoder does not learn");
    }
}

//! Where the time goes (`cargo bench -p caec-train --bench layers`): every layer of the default
//! architecture (N = 64, M = 96, 5x5, GDN) on its own, and whole training steps.
//!
//! - `infer/768x512/*`: each layer of `g_a` and `g_s` forward on a 768x512 image (what
//!   `caec compress` / `decompress` run), and the whole `g_a` / `g_s`;
//! - `train/2x256/*`: each layer forward + backward (gradients of input and weights) on the
//!   training shapes (batch 2 of 256x256 crops), and a whole training step: `forward` (loss),
//!   `forward_backward`, `step` (with the Adam update and the GDN projection), and
//!   `plain_gdn` / `plain_relu`: g_a, rounding, g_s, MSE and backward only (no hyperprior),
//!   with GDN or with ReLU, the step `../shared/peer/peer_bench.py` times in PyTorch; the
//!   `_bf16` twins (and `train_bf16/2x256/*` for the layers) run training's products on the
//!   AMX tiles where the CPU has them;
//! - `infer/768x512/g_a_relu`, `g_s_relu`: the ReLU network of `peer_bench.py`;
//!
//! Convolutions report their floating-point operations as criterion's "elements" (2 per
//! multiply-add; forward + backward counted as 3 products), so elem/s is FLOP/s: compare
//! with the FMA ceiling of the machine (2 cores AVX2 FMA at ~2.8 GHz: ~181 GFLOP/s).
//! Random weights: the time of a layer does not depend on its values.

use std::hint::black_box;

use burn::optim::GradientsParams;
use burn::prelude::*;
use cae_nn::ModelConfig;
use caec_train::{data, net::Net};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use criterion::measurement::WallTime;
use rand::SeedableRng;

fn config() -> ModelConfig {
    ModelConfig { n: 64, m: 96, kernel: 5, gdn: true, lambdas: vec![0.0035, 0.0067, 0.013, 0.025], hyper_n: None }
}

/// Multiply-adds of a k x k convolution from `c_in` to `c_out` channels per output pixel.
fn macs(c_in: usize, c_out: usize, k: usize) -> u64 {
    (c_in * c_out * k * k) as u64
}

/// One layer to time: its name, its input shape, its cost in FLOPs (0: not a product), and
/// how to run it.
struct Layer<'a> {
    name: String,
    input: [usize; 4],
    flops: u64,
    run: Box<dyn Fn(Tensor<4>) -> Tensor<4> + 'a>,
}

/// The layers of g_a then g_s, for a batch of `b` images of `h` x `w` pixels.
fn layers<'a>(net: &'a Net, cfg: &ModelConfig, b: usize, h: usize, w: usize) -> Vec<Layer<'a>> {
    let k = cfg.kernel;
    let ch = [3, cfg.n, cfg.n, cfg.n, cfg.m];
    let mut out = Vec::new();
    for i in 0..4 {
        let (hi, wi) = (h >> i, w >> i);
        let pixels = (b * (hi / 2) * (wi / 2)) as u64;
        let conv = &net.g_a.convs[i];
        out.push(Layer {
            name: format!("g_a.conv{i}"),
            input: [b, ch[i], hi, wi],
            flops: 2 * macs(ch[i], ch[i + 1], k) * pixels,
            run: Box::new(move |x| cae_nn::conv_forward(conv, x)),
        });
        if let Some(g) = net.g_a.gdns.get(i) {
            out.push(Layer {
                name: format!("g_a.gdn{i}"),
                input: [b, ch[i + 1], hi / 2, wi / 2],
                flops: 2 * macs(ch[i + 1], ch[i + 1], 1) * pixels,
                run: Box::new(move |x| g.forward(x)),
            });
        }
    }
    let ch = [cfg.m, cfg.n, cfg.n, cfg.n, 3];
    for i in 0..4 {
        let (hi, wi) = (h >> (4 - i), w >> (4 - i));
        let pixels = (b * hi * wi) as u64;
        let deconv = &net.g_s.deconvs[i];
        out.push(Layer {
            name: format!("g_s.deconv{i}"),
            input: [b, ch[i], hi, wi],
            flops: 2 * macs(ch[i], ch[i + 1], k) * pixels,
            run: Box::new(move |x| cae_nn::deconv_forward(deconv, x)),
        });
        if let Some(g) = net.g_s.igdns.get(i) {
            out.push(Layer {
                name: format!("g_s.igdn{i}"),
                input: [b, ch[i + 1], hi * 2, wi * 2],
                flops: 2 * macs(ch[i + 1], ch[i + 1], 1) * pixels * 4,
                run: Box::new(move |x| g.forward(x)),
            });
        }
    }
    out
}

fn random(shape: [usize; 4], dev: &Device) -> Tensor<4> {
    Tensor::random(shape, burn::tensor::Distribution::Uniform(-1.0, 1.0), dev)
}

fn sync(t: Tensor<4>) -> f32 {
    t.sum().into_scalar::<f32>()
}

fn bench_layers(group: &mut BenchmarkGroup<'_, WallTime>, layers: &[Layer<'_>], dev: &Device, backward: bool) {
    for l in layers {
        let x = random(l.input, dev);
        group.throughput(Throughput::Elements(if backward { 3 * l.flops } else { l.flops }));
        if backward {
            let x = x.require_grad();
            group.bench_function(&l.name, |bch| {
                bch.iter(|| {
                    let grads = (l.run)(black_box(x.clone())).sum().backward();
                    black_box(x.grad(&grads).map(sync))
                })
            });
        } else {
            group.bench_function(&l.name, |bch| bch.iter(|| sync((l.run)(black_box(x.clone())))));
        }
    }
}

/// `amx.conv1` … `amx.conv3`: g_a's 64-channel convolutions on AMX tiles (bf16, f32 sums;
/// `cae_nn::amx`), from a padded pixel-major bf16 input to f32 output without bias, against
/// `g_a.conv1` … (f32, channel-major, with bias). Skipped where the CPU has no AMX.
fn amx_layers(group: &mut BenchmarkGroup<'_, WallTime>, net: &Net, cfg: &ModelConfig, h: usize, w: usize) {
    use cae_nn::amx;
    if !amx::available() {
        eprintln!("no AMX on this CPU: amx.* not run");
        return;
    }
    let k = cfg.kernel;
    let ch = [3, cfg.n, cfg.n, cfg.n, cfg.m];
    for i in 1..4 {
        let (hi, wi) = (h >> i, w >> i);
        let weights = net.g_a.convs[i].weight.val().into_data().to_vec::<f32>().unwrap();
        let packed = amx::PackedBf16::new(&weights, ch[i + 1], ch[i], k);
        let x: Vec<f32> = (0..ch[i] * hi * wi).map(|j| ((j * 7919 % 2003) as f32 / 1001.0) - 1.0).collect();
        let p = k / 2;
        // The right margin covers the taps of the output rows rounded up to whole groups.
        let right = (2 * (amx::padded_row(wi / 2) - 1) + k).saturating_sub(wi + p);
        let xp = amx::PaddedNhwc::from_planes(&x, ch[i], hi, wi, (p, p + 1), (p, right));
        group.throughput(Throughput::Elements(2 * macs(ch[i], ch[i + 1], k) * (hi / 2 * wi / 2) as u64));
        group.bench_function(format!("amx.conv{i}"), |b| {
            b.iter(|| amx::conv(black_box(&xp), &packed, 2, hi / 2, wi / 2).expect("AMX").len())
        });
    }
}

fn inference(c: &mut Criterion) {
    let dev = Device::flex();
    dev.seed(1);
    let cfg = config();
    let net = Net::new(&cfg, &dev);
    let (h, w) = (512, 768);
    let mut group = c.benchmark_group(format!("infer/{w}x{h}"));
    group.sample_size(10);
    let all = layers(&net, &cfg, 1, h, w);
    bench_layers(&mut group, &all, &dev, false);
    amx_layers(&mut group, &net, &cfg, h, w);
    let x = random([1, 3, h, w], &dev);
    let y = random([1, cfg.m, h / 16, w / 16], &dev);
    let (ga, gs): (u64, u64) = all.iter().fold((0, 0), |(a, s), l| if l.name.starts_with("g_a") { (a + l.flops, s) } else { (a, s + l.flops) });
    group.throughput(Throughput::Elements(ga));
    group.bench_function("g_a", |b| b.iter(|| sync(net.g_a.forward(black_box(x.clone())))));
    group.throughput(Throughput::Elements(gs));
    group.bench_function("g_s", |b| b.iter(|| sync(net.g_s.forward(black_box(y.clone())))));
    // The network `../shared/peer/peer_bench.py` times in PyTorch and onnxruntime: the same
    // convolutions with ReLU instead of GDN.
    let relu = Net::new(&ModelConfig { gdn: false, ..config() }, &dev);
    group.throughput(Throughput::Elements(ga));
    group.bench_function("g_a_relu", |b| b.iter(|| sync(relu.g_a.forward(black_box(x.clone())))));
    group.throughput(Throughput::Elements(gs));
    group.bench_function("g_s_relu", |b| b.iter(|| sync(relu.g_s.forward(black_box(y.clone())))));
    group.finish();
}

/// peer_bench.py's training step: g_a, straight-through rounding, g_s, MSE, backward (no
/// hyperprior, no rate), on the same batch.
fn plain_step(net: &Net, x: Tensor<4>) -> usize {
    let y = net.g_a.forward(x.clone());
    let y = y.clone() + (y.clone().round() - y).detach();
    let loss = (net.g_s.forward(y) - x).square().mean();
    GradientsParams::from_grads(loss.backward(), net).len()
}

fn training(c: &mut Criterion) {
    let dev = Device::flex().autodiff();
    dev.seed(1);
    let cfg = config();
    let (batch, crop) = (2, 256);
    let net = Net::new(&cfg, &dev);
    if cae_nn::amx::available() {
        // The layers with the products on the AMX tiles.
        let mut tiles = c.benchmark_group(format!("train_bf16/{batch}x{crop}"));
        tiles.sample_size(10);
        cae_nn::set_bf16_products(true);
        bench_layers(&mut tiles, &layers(&net, &cfg, batch, crop, crop), &dev, true);
        cae_nn::set_bf16_products(false);
        tiles.finish();
    }
    let mut group = c.benchmark_group(format!("train/{batch}x{crop}"));
    group.sample_size(10);
    bench_layers(&mut group, &layers(&net, &cfg, batch, crop, crop), &dev, true);

    // Whole steps on crops of generated images (the content does not change the time).
    let images: Vec<image::RgbImage> = (0..4)
        .map(|s| image::RgbImage::from_fn(512, 384, |x, y| image::Rgb([(x * 7 + s) as u8, (y * 3) as u8, ((x ^ y) + s) as u8])))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let lambda = cfg.lambdas[1] * 255.0 * 255.0;
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function("forward", |b| {
        b.iter(|| {
            let x = data::batch(&images, batch, crop, &mut rng, &dev);
            let out = net.forward(x.clone(), x, 1, false);
            (out.mse * lambda + out.bpp).into_scalar::<f32>()
        })
    });
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            let x = data::batch(&images, batch, crop, &mut rng, &dev);
            let out = net.forward(x.clone(), x, 1, false);
            let grads = GradientsParams::from_grads((out.mse * lambda + out.bpp).backward(), &net);
            black_box(grads.len())
        })
    });
    let x = data::batch(&images, batch, crop, &mut rng, &dev);
    group.bench_function("plain_gdn", |b| b.iter(|| plain_step(&net, black_box(x.clone()))));
    let relu = Net::new(&ModelConfig { gdn: false, ..config() }, &dev);
    group.bench_function("plain_relu", |b| b.iter(|| plain_step(&relu, black_box(x.clone()))));
    // The same with the products on the AMX tiles (bf16 operands, f32 sums), where the CPU has them.
    if cae_nn::amx::available() {
        cae_nn::set_bf16_products(true);
        group.bench_function("plain_relu_bf16", |b| b.iter(|| plain_step(&relu, black_box(x.clone()))));
        group.bench_function("plain_gdn_bf16", |b| b.iter(|| plain_step(&net, black_box(x.clone()))));
        cae_nn::set_bf16_products(false);
    }
    let mut optim = caec_train::adam::FusedAdam::new(1e-8, Some(1.0)).init();
    let mut model = Some(net);
    for (name, tiles) in [("step", false), ("step_bf16", true)] {
        if tiles && !cae_nn::amx::available() {
            continue;
        }
        cae_nn::set_bf16_products(tiles);
        group.bench_function(name, |b| {
            b.iter(|| {
                let m = model.take().expect("model");
                let x = data::batch(&images, batch, crop, &mut rng, &dev);
                let out = m.forward(x.clone(), x, 1, false);
                let grads = GradientsParams::from_grads((out.mse * lambda + out.bpp).backward(), &m);
                model = Some(optim.step(1e-5, m, grads).project());
            })
        });
    }
    cae_nn::set_bf16_products(false);
    group.finish();
}

criterion_group!(benches, inference, training);
criterion_main!(benches);

//! Speed of the codec (`cargo bench --bench codec`; medians are in criterion's report):
//! - `768x512/{encode,decode}/qN`: whole encode and decode at every quality (Kodak's kodim23
//!   when `CAEC_CORPUS` is set, else a generated image of the same size);
//! - `size/{encode,decode}/WxH`: whole encode and decode at the default quality for several
//!   image sizes (generated images);
//! - `stage/*`: each stage of a 768x512 encode/decode on its own — g_a, h_a, the integer h_s,
//!   g_s, and entropy coding of y and z, whose throughput criterion reports in symbols/s.

use std::hint::black_box;

use burn::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::DynamicImage;

fn generated(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        let v = ((x as f32 * 0.05).sin() * (y as f32 * 0.03).cos() * 60.0 + 128.0) as u8;
        image::Rgb([v, (x / 3) as u8, (y / 2) as u8])
    }))
}

fn input() -> DynamicImage {
    if let Some(dir) = std::env::var_os("CAEC_CORPUS") {
        let p = std::path::Path::new(&dir).join("kodak/kodim23.png");
        return image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    generated(768, 512)
}

fn qualities(c: &mut Criterion) {
    let img = input();
    let model = caec::load_model("default").expect("built-in model");
    let mut group = c.benchmark_group("768x512");
    group.sample_size(10);
    for q in 1..=model.config.levels() as u8 {
        group.bench_function(format!("encode/q{q}"), |b| {
            b.iter(|| caec::compress_with(&model, black_box(&img), q).unwrap())
        });
        let bytes = caec::compress_with(&model, &img, q).unwrap();
        group.bench_function(format!("decode/q{q}"), |b| {
            b.iter(|| caec::decompress_with(&model, black_box(&bytes), &caec::Limits::default()).unwrap())
        });
    }
    group.finish();
}

fn sizes(c: &mut Criterion) {
    let model = caec::load_model("default").expect("built-in model");
    let q = caec::DEFAULT_QUALITY;
    let mut group = c.benchmark_group("size");
    group.sample_size(10);
    for (w, h) in [(64, 64), (256, 256), (768, 512), (1920, 1080)] {
        let img = generated(w, h);
        group.throughput(Throughput::Elements(w as u64 * h as u64));
        group.bench_function(format!("encode/{w}x{h}"), |b| {
            b.iter(|| caec::compress_with(&model, black_box(&img), q).unwrap())
        });
        let bytes = caec::compress_with(&model, &img, q).unwrap();
        group.bench_function(format!("decode/{w}x{h}"), |b| {
            b.iter(|| caec::decompress_with(&model, black_box(&bytes), &caec::Limits::default()).unwrap())
        });
    }
    group.finish();
}

fn to_vec(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("float tensor")
}

fn stages(c: &mut Criterion) {
    let model = caec::load_model("default").expect("built-in model");
    let q = caec::DEFAULT_QUALITY as usize - 1;
    let dev = Device::flex();
    let rgb = input().to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    assert!(w % 64 == 0 && h % 64 == 0, "the stage benches use an image whose sides are multiples of 64");
    let mut planes = vec![0f32; 3 * w * h];
    for (i, p) in rgb.pixels().enumerate() {
        for ch in 0..3 {
            planes[ch * w * h + i] = p.0[ch] as f32 / 255.0;
        }
    }
    let x = Tensor::<4>::from_data(TensorData::new(planes, [1, 3, h, w]), &dev);

    // One pass through the pipeline, keeping every intermediate for the stage benches.
    let y = model.gains.apply(model.analysis.forward(x.clone()), &[q]);
    let z = model.hyper_analysis.forward(y.clone());
    let [_, m, yh, yw] = y.dims();
    let [_, _, zh, zw] = z.dims();
    let z_sym: Vec<i32> = to_vec(z).into_iter().map(cae_quant::to_symbol).collect();
    let z_tables: Vec<u16> = (0..z_sym.len()).map(|i| (i / (zh * zw)) as u16).collect();
    let pred = model.hyper_synthesis.forward(&z_sym, zh, zw);
    let mu: Vec<f32> = pred.means.iter().map(|&v| cae_decoder::fixed_to_f32(v)).collect();
    let y_sym = cae_quant::quantize(&to_vec(y.clone()), &mu);
    let y_stream = model.y_tables.encode(&y_sym, &pred.table).unwrap();
    let z_stream = model.z_tables.encode(&z_sym, &z_tables).unwrap();
    let y_hat = Tensor::<4>::from_data(TensorData::new(cae_quant::dequantize(&y_sym, &mu), [1, m, yh, yw]), &dev);

    let mut group = c.benchmark_group(format!("stage/{w}x{h}"));
    group.sample_size(10);
    group.bench_function("g_a", |b| b.iter(|| to_vec(model.analysis.forward(black_box(x.clone())))));
    group.bench_function("h_a", |b| b.iter(|| to_vec(model.hyper_analysis.forward(black_box(y.clone())))));
    group.bench_function("h_s_integer", |b| b.iter(|| model.hyper_synthesis.forward(black_box(&z_sym), zh, zw)));
    group.bench_function("g_s", |b| {
        b.iter(|| to_vec(model.synthesis.forward(model.gains.invert(black_box(y_hat.clone()), &[q]))))
    });
    group.throughput(Throughput::Elements(y_sym.len() as u64));
    group.bench_function("encode_y", |b| b.iter(|| model.y_tables.encode(black_box(&y_sym), &pred.table).unwrap()));
    group.bench_function("decode_y", |b| {
        b.iter(|| model.y_tables.decode(black_box(&y_stream), y_sym.len(), |i| pred.table[i] as usize).unwrap())
    });
    group.throughput(Throughput::Elements(z_sym.len() as u64));
    let plane = zh * zw;
    group.bench_function("encode_z", |b| b.iter(|| model.z_tables.encode(black_box(&z_sym), &z_tables).unwrap()));
    group.bench_function("decode_z", |b| {
        b.iter(|| model.z_tables.decode(black_box(&z_stream), z_sym.len(), |i| i / plane).unwrap())
    });
    group.finish();
}

criterion_group!(benches, qualities, sizes, stages);
criterion_main!(benches);

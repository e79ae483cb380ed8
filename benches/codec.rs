//! Encode and decode time of a 768x512 image with the default model at every quality
//! (`cargo bench --bench codec`; medians are in criterion's report). Uses Kodak's kodim23
//! when `CAEC_CORPUS` is set, else a generated image of the same size.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use image::DynamicImage;

fn input() -> DynamicImage {
    if let Some(dir) = std::env::var_os("CAEC_CORPUS") {
        let p = std::path::Path::new(&dir).join("kodak/kodim23.png");
        return image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    DynamicImage::ImageRgb8(image::RgbImage::from_fn(768, 512, |x, y| {
        let v = ((x as f32 * 0.05).sin() * (y as f32 * 0.03).cos() * 60.0 + 128.0) as u8;
        image::Rgb([v, (x / 3) as u8, (y / 2) as u8])
    }))
}

fn codec(c: &mut Criterion) {
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

criterion_group!(benches, codec);
criterion_main!(benches);

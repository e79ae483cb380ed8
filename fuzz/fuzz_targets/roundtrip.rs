//! Compress → decompress of arbitrary small images: never fails, keeps the size and the
//! colour type, and the alpha plane exactly.
#![no_main]

use image::{DynamicImage, GenericImageView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [w, h, kind, quality, rest @ ..] = data else { return };
    let (w, h) = (*w as u32 % 48 + 1, *h as u32 % 48 + 1);
    let channels = [1usize, 2, 3, 4][*kind as usize % 4];
    let n = (w * h) as usize * channels;
    let pixels: Vec<u8> = (0..n).map(|i| rest.get(i % rest.len().max(1)).copied().unwrap_or(0)).collect();
    let img = match channels {
        1 => DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, pixels).unwrap()),
        2 => DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_raw(w, h, pixels).unwrap()),
        3 => DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, pixels).unwrap()),
        _ => DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, pixels).unwrap()),
    };
    let model = caec::load_model("default").unwrap();
    let q = quality % model.config.levels() as u8 + 1;
    let bytes = caec::compress_with(&model, &img, q).expect("every small image compresses");
    let back = caec::decompress(&bytes, &caec::Limits::default()).expect("and decompresses");
    assert_eq!(back.dimensions(), img.dimensions());
    assert_eq!(back.color(), img.color());
    if img.color().has_alpha() {
        let a = img.to_rgba8();
        let b = back.to_rgba8();
        assert!(a.pixels().zip(b.pixels()).all(|(p, q)| p[3] == q[3]), "alpha changed");
    }
});

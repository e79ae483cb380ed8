#![allow(dead_code)]
//! Helpers shared by the integration tests: generated images and the corpus.

use std::path::PathBuf;

use image::{DynamicImage, Rgb, RgbImage};

/// A smooth, photo-like test image: gradients, a few soft shapes and mild texture.
pub fn synthetic(w: u32, h: u32, seed: u32) -> RgbImage {
    let s = seed as f32;
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w.max(2) as f32, y as f32 / h.max(2) as f32);
        let blob = (-((fx - 0.4).powi(2) + (fy - 0.6).powi(2)) * 8.0).exp();
        let wave = ((x as f32 * 0.05 + s).sin() * (y as f32 * 0.07).cos()) * 0.15;
        let r = 0.2 + 0.5 * fx + 0.3 * blob + wave;
        let g = 0.3 + 0.4 * fy + 0.2 * blob - wave;
        let b = 0.6 - 0.3 * fx * fy + 0.1 * wave;
        let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        Rgb([q(r), q(g), q(b)])
    })
}

/// The corpus folder, when `CAEC_CORPUS` is set.
pub fn corpus() -> Option<PathBuf> {
    std::env::var_os("CAEC_CORPUS").map(PathBuf::from)
}

/// A Kodak image from the corpus, checked against the manifest; panics (fails the test)
/// when `CAEC_CORPUS` is set but the image is missing or different. `None` without it.
pub fn kodak(name: &str) -> Option<DynamicImage> {
    use sha2::{Digest, Sha256};
    let dir = corpus()?;
    let path = dir.join("kodak").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("CAEC_CORPUS is set but {}: {e}", path.display()));
    let manifest = include_str!("../../corpus/kodak.manifest");
    let want = manifest
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("{name} is not in the Kodak manifest"));
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), want, "{} does not match the manifest", path.display());
    Some(image::load_from_memory(&bytes).expect("Kodak PNG decodes"))
}

/// A version-1 file of the golden set (`tests/golden/STEM-0f80697bc63e5db5.cae`, written by
/// the default model of 2026-11-29, id 0f80697bc63e5db5, before format version 2): `rgb-q1`,
/// `rgb-top`, `gray` or `rgba`.
pub fn golden_v1_file(stem: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{stem}-0f80697bc63e5db5.cae"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

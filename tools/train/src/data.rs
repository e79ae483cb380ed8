//! Training data: images found recursively, decoded once in parallel, downscaled, kept in
//! memory as RGB8; batches of random crops with random flips.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use burn::prelude::*;
use image::RgbImage;
use rand::Rng;
use rayon::prelude::*;

const KODAK_MANIFEST: &str = include_str!("../../../corpus/kodak.manifest");

fn find(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
        let p = entry?.path();
        if p.is_dir() {
            find(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(),
            Some("png" | "jpg" | "jpeg")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// Refuse any file that is a validation (Kodak) image, by name or by content.
fn check_not_validation(files: &[PathBuf]) -> Result<()> {
    use sha2::{Digest, Sha256};
    let hashes: Vec<&str> = KODAK_MANIFEST.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_whitespace().nth(2)).collect();
    let bad: Vec<&PathBuf> = files
        .par_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("kodim") {
                return true;
            }
            std::fs::read(p).map(|b| hashes.contains(&format!("{:x}", Sha256::digest(&b)).as_str())).unwrap_or(false)
        })
        .collect();
    if let Some(p) = bad.first() {
        bail!("{}: is a validation (Kodak) image; refusing to train on a folder that contains one", p.display());
    }
    Ok(())
}

/// Average `f`x`f` blocks (area downscale).
fn downscale(img: &RgbImage, f: u32) -> RgbImage {
    if f <= 1 {
        return img.clone();
    }
    let (w, h) = (img.width() / f, img.height() / f);
    RgbImage::from_fn(w, h, |x, y| {
        let mut s = [0u32; 3];
        for dy in 0..f {
            for dx in 0..f {
                let p = img.get_pixel(x * f + dx, y * f + dy);
                for c in 0..3 {
                    s[c] += p[c] as u32;
                }
            }
        }
        let n = f * f;
        image::Rgb([((s[0] + n / 2) / n) as u8, ((s[1] + n / 2) / n) as u8, ((s[2] + n / 2) / n) as u8])
    })
}

/// Downscale by `factor` (area filter), but an image whose short side would fall below `crop`
/// is downscaled only as far as keeps that side at `crop` or more (triangle filter), so that
/// small photos (BSDS500's 481x321) still serve large crops.
fn shrink(img: RgbImage, factor: u32, crop: usize) -> RgbImage {
    let short = img.width().min(img.height()) as f64;
    let f = (factor as f64).min(short / crop as f64);
    if f >= factor as f64 {
        return downscale(&img, factor);
    }
    if f <= 1.0 {
        return img;
    }
    let size = |v: u32| ((v as f64 / f).floor() as u32).max(crop as u32);
    image::imageops::resize(&img, size(img.width()), size(img.height()), image::imageops::FilterType::Triangle)
}

/// Load every image under `dirs`.
pub fn load(dirs: &[PathBuf], factor: u32, crop: usize) -> Result<Vec<RgbImage>> {
    let mut files = Vec::new();
    for d in dirs {
        find(d, &mut files)?;
    }
    files.sort();
    check_not_validation(&files)?;
    let images: Vec<RgbImage> = files
        .par_iter()
        .filter_map(|p| match image::open(p) {
            Ok(img) => Some(shrink(img.to_rgb8(), factor, crop)),
            Err(e) => {
                eprintln!("warning: {}: {e}; skipped", p.display());
                None
            }
        })
        .filter(|img| img.width() as usize >= crop && img.height() as usize >= crop)
        .collect();
    Ok(images)
}

/// A batch of random crops with random horizontal and vertical flips, `[b, 3, crop, crop]`
/// in [0, 1].
pub fn batch(images: &[RgbImage], b: usize, crop: usize, rng: &mut impl Rng, device: &Device) -> Tensor<4> {
    let mut buf = vec![0f32; b * 3 * crop * crop];
    for i in 0..b {
        let img = &images[rng.random_range(0..images.len())];
        let x0 = rng.random_range(0..=img.width() as usize - crop);
        let y0 = rng.random_range(0..=img.height() as usize - crop);
        let (fx, fy) = (rng.random_bool(0.5), rng.random_bool(0.5));
        for y in 0..crop {
            let sy = if fy { crop - 1 - y } else { y };
            for x in 0..crop {
                let sx = if fx { crop - 1 - x } else { x };
                let p = img.get_pixel((x0 + sx) as u32, (y0 + sy) as u32);
                for c in 0..3 {
                    buf[((i * 3 + c) * crop + y) * crop + x] = p[c] as f32 / 255.0;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(buf, [b, 3, crop, crop]), device)
}

/// `x` (in [0, 1]) with Gaussian noise of `sigma` 8-bit levels, rounded to 8-bit levels and
/// clipped: what a noisy 8-bit photo looks like to the encoder.
pub fn add_noise(x: Tensor<4>, sigma: f64) -> Tensor<4> {
    let noise = x.random_like(burn::tensor::Distribution::Normal(0.0, sigma / 255.0));
    ((x + noise) * 255.0).round().clamp(0.0, 255.0) / 255.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_keeps_the_short_side_at_the_crop() {
        let img = RgbImage::from_fn(481, 321, |x, y| image::Rgb([x as u8, y as u8, 7]));
        // 128 crops: the full factor 2 (area filter).
        assert_eq!(shrink(img.clone(), 2, 128).dimensions(), (240, 160));
        // 256 crops: only by 321/256, so the short side stays 256.
        let s = shrink(img.clone(), 2, 256);
        assert_eq!(s.height(), 256);
        assert!((383..=384).contains(&s.width()), "{:?}", s.dimensions());
        // Smaller than the crop: kept as it is (and dropped by `load`).
        assert_eq!(shrink(img, 2, 512).dimensions(), (481, 321));
    }
}

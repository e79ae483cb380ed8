//! Figures for the autoencoder's other uses on photos (README, issue 7).
//!
//! ```text
//! cargo run --release --example uses -- figure DIR N QUALITY OUT.png   # originals over reconstructions
//! cargo run --release --example uses -- denoise DIR SIGMA MODEL OUT.png # PSNR noisy vs denoised, per quality
//! ```
//! `figure` is the seed's picture for photos: a row of 256x256 centre crops of the first N
//! images of DIR over the same crops of their reconstructions by the default model. `denoise`
//! adds Gaussian noise of SIGMA levels (seed = the image's index) to every image of DIR,
//! denoises it with MODEL at every quality and prints mean PSNR against the clean images;
//! OUT.png shows noisy, denoised (best quality) and clean crops of the first four.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, GenericImageView, RgbImage};

const CROP: u32 = 256;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["figure", dir, n, q, out] => figure(Path::new(dir), n.parse()?, q.parse()?, Path::new(out)),
        ["denoise", dir, sigma, model, out] => denoise(Path::new(dir), sigma.parse()?, model, Path::new(out)),
        _ => bail!("usage: uses figure DIR N QUALITY OUT.png | denoise DIR SIGMA MODEL OUT.png"),
    }
}

fn images(dir: &Path) -> Result<Vec<(String, DynamicImage)>> {
    let files = caec::image_files(dir).with_context(|| dir.display().to_string())?;
    if files.is_empty() {
        bail!("{}: no images", dir.display());
    }
    files
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            image::open(p).map(|i| (name, i)).with_context(|| p.display().to_string())
        })
        .collect()
}

fn centre_crop(img: &DynamicImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = (CROP.min(w), CROP.min(h));
    img.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch).to_rgb8()
}

/// Rows of crops side by side, 4 px apart, on white.
fn grid(rows: &[Vec<RgbImage>], out: &Path) -> Result<()> {
    let gap = 4;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let mut canvas = RgbImage::from_pixel(cols * (CROP + gap) - gap, rows.len() as u32 * (CROP + gap) - gap, image::Rgb([255; 3]));
    for (r, row) in rows.iter().enumerate() {
        for (c, tile) in row.iter().enumerate() {
            image::imageops::replace(&mut canvas, tile, (c as u32 * (CROP + gap)) as i64, (r as u32 * (CROP + gap)) as i64);
        }
    }
    canvas.save(out).with_context(|| out.display().to_string())
}

fn figure(dir: &Path, n: usize, quality: u8, out: &Path) -> Result<()> {
    let model = caec::load_model(caec::DEFAULT_MODEL)?;
    let (mut top, mut bottom) = (Vec::new(), Vec::new());
    for (name, img) in images(dir)?.into_iter().take(n) {
        let bytes = caec::compress_with(&model, &img, quality)?;
        let back = caec::decompress_with(&model, &bytes, &caec::Limits::default())?;
        let bpp = bytes.len() as f64 * 8.0 / (img.width() * img.height()) as f64;
        println!("{name}: quality {quality}, {bpp:.3} bpp, PSNR {:.2} dB", caec::psnr(&img, &back));
        top.push(centre_crop(&img));
        bottom.push(centre_crop(&back));
    }
    grid(&[top, bottom], out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn denoise(dir: &Path, sigma: f64, model: &str, out: &Path) -> Result<()> {
    let model = caec::load_model(model)?;
    let images = images(dir)?;
    let n = images.len() as f64;
    let noisy: Vec<DynamicImage> = images.iter().enumerate().map(|(i, (_, img))| caec::add_noise(img, sigma, i as u64)).collect();
    let before = images.iter().zip(&noisy).map(|((_, c), x)| caec::psnr(c, x)).sum::<f64>() / n;
    println!("{} images, Gaussian noise sigma = {sigma} levels: PSNR of the noisy images {before:.2} dB", images.len());
    println!("model {} (id {:016x})", model.name, model.id);
    println!("| quality | PSNR denoised (dB) | gain (dB) | bpp of the noisy image |");
    println!("|---:|---:|---:|---:|");
    let mut best: Option<(f64, Vec<DynamicImage>)> = None;
    for q in 1..=model.config.levels() as u8 {
        let (mut psnr, mut bpp, mut outs) = (0.0, 0.0, Vec::new());
        for ((_, clean), x) in images.iter().zip(&noisy) {
            let bytes = caec::compress_with(&model, x, q)?;
            let back = caec::decompress_with(&model, &bytes, &caec::Limits::default())?;
            bpp += bytes.len() as f64 * 8.0 / (x.width() * x.height()) as f64;
            psnr += caec::psnr(clean, &back);
            outs.push(back);
        }
        let psnr = psnr / n;
        println!("| {q} | {psnr:.2} | {:+.2} | {:.3} |", psnr - before, bpp / n);
        if best.as_ref().is_none_or(|(p, _)| psnr > *p) {
            best = Some((psnr, outs));
        }
    }
    let (_, outs) = best.expect("at least one quality");
    let k = images.len().min(4);
    let rows = [
        noisy[..k].iter().map(centre_crop).collect(),
        outs[..k].iter().map(centre_crop).collect(),
        images[..k].iter().map(|(_, c)| centre_crop(c)).collect(),
    ];
    grid(&rows, out)?;
    println!("wrote {} (rows: noisy, denoised at the best quality, clean)", out.display());
    Ok(())
}

//! The autoencoder's other uses, with the codec's own models and any image size: fixed-length
//! embeddings, anomaly scores, interpolation in latent space, and denoising.

use cae_models::Model;
use image::DynamicImage;

use crate::{pixels, tiling, Error, Result};

/// The latent `y` of an image (before the quality gains) and its shape `(M, h, w)`.
fn latent(model: &Model, image: &DynamicImage) -> Result<(Vec<f32>, (usize, usize, usize))> {
    crate::check_size(image)?;
    let p = pixels::prepare(image, cae_nn::STRIDE);
    let (pw, ph) = (p.padded_width, p.padded_height);
    let y = tiling::analyse(model, p.planes, pw, ph, tiling::DEFAULT_TILE, tiling::HALO);
    let [_, m, yh, yw] = y.dims();
    Ok((crate::tensor_to_vec(y), (m, yh, yw)))
}

/// A fixed-length embedding of an image: the mean and the standard deviation over the image of
/// each channel of the latent `y` (before the quality gains), 2·M values whatever the image
/// size — for dimensionality reduction, clustering and search.
pub fn embed(model: &Model, image: &DynamicImage) -> Result<Vec<f32>> {
    let (y, (m, h, w)) = latent(model, image)?;
    let n = (h * w) as f64;
    let mut out = vec![0f32; 2 * m];
    for (c, plane) in y.chunks(h * w).enumerate() {
        let mean = plane.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = plane.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        out[c] = mean as f32;
        out[m + c] = var.sqrt() as f32;
    }
    Ok(out)
}

/// How unusual an image is to a model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnomalyScore {
    /// Bits per pixel of its `.cae` file (the model's negative log-likelihood of the image's
    /// latents, header included): high for content the model did not learn to predict.
    pub bpp: f64,
    /// Mean squared error of its reconstruction (8-bit RGB levels).
    pub mse: f64,
}

/// Code an image at `quality` and measure both anomaly scores.
pub fn anomaly_score(model: &Model, image: &DynamicImage, quality: u8) -> Result<AnomalyScore> {
    let bytes = crate::compress_with(model, image, quality)?;
    let back = crate::decompress_with(model, &bytes, &crate::Limits::default())?;
    let bpp = bytes.len() as f64 * 8.0 / (image.width() as f64 * image.height() as f64);
    Ok(AnomalyScore { bpp, mse: 255.0 * 255.0 / 10f64.powf(crate::psnr(image, &back) / 10.0) })
}

/// `steps` (≥ 2) images on the straight line in latent space from `a` to `b` (images of the
/// same size): the unquantised latents of both ends, blended, decoded by the synthesis
/// network. The first and last are the model's reconstructions of `a` and `b`.
pub fn interpolate(model: &Model, a: &DynamicImage, b: &DynamicImage, steps: usize) -> Result<Vec<DynamicImage>> {
    if (a.width(), a.height()) != (b.width(), b.height()) {
        return Err(Error::Inconsistent(format!(
            "interpolation needs images of one size, not {}x{} and {}x{}",
            a.width(),
            a.height(),
            b.width(),
            b.height()
        )));
    }
    let steps = steps.max(2);
    let (ya, (_, yh, yw)) = latent(model, a)?;
    let (yb, _) = latent(model, b)?;
    let (pw, ph) = (yw * 16, yh * 16);
    (0..steps)
        .map(|s| {
            let t = s as f32 / (steps - 1) as f32;
            let y: Vec<f32> = ya.iter().zip(&yb).map(|(p, q)| (1.0 - t) * p + t * q).collect();
            let planes = tiling::synthesise(model, y, yh, yw, tiling::DEFAULT_TILE, tiling::HALO);
            Ok(pixels::assemble(&planes, pw, ph, a.width(), a.height(), cae_format::ColourType::Rgb, None))
        })
        .collect()
}

/// The built-in model trained to reconstruct clean photos from noisy ones (Gaussian noise of
/// σ = 15 levels): a denoising autoencoder that is also a codec.
pub const DENOISE_MODEL: &str = "denoise";

/// The quality level `caec denoise` codes at by default (the best PSNR on Kodak with σ = 15).
pub const DENOISE_QUALITY: u8 = 4;

/// Denoise an image: code it with `model` (trained on noisy inputs, e.g. [`DENOISE_MODEL`])
/// at `quality` and decode it. Same size and colour type; alpha is kept exactly.
pub fn denoise(model: &Model, image: &DynamicImage, quality: u8) -> Result<DynamicImage> {
    let bytes = crate::compress_with(model, image, quality)?;
    crate::decompress_with(model, &bytes, &crate::Limits::default())
}

/// The image with independent Gaussian noise of standard deviation `sigma` (8-bit levels)
/// added to every colour sample (not to alpha), rounded and clipped to 8 bits; the same
/// `seed` gives the same noise. For measuring denoising.
pub fn add_noise(image: &DynamicImage, sigma: f64, seed: u64) -> DynamicImage {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut noisy = |v: u8| -> u8 {
        let n: f64 = rng.sample(rand_distr::StandardNormal);
        (v as f64 + sigma * n).round().clamp(0.0, 255.0) as u8
    };
    match image {
        DynamicImage::ImageLuma8(g) => {
            let mut g = g.clone();
            g.pixels_mut().for_each(|p| p[0] = noisy(p[0]));
            DynamicImage::ImageLuma8(g)
        }
        DynamicImage::ImageLumaA8(g) => {
            let mut g = g.clone();
            g.pixels_mut().for_each(|p| p[0] = noisy(p[0]));
            DynamicImage::ImageLumaA8(g)
        }
        img if img.color().has_alpha() => {
            let mut rgba = img.to_rgba8();
            rgba.pixels_mut().for_each(|p| (0..3).for_each(|c| p[c] = noisy(p[c])));
            DynamicImage::ImageRgba8(rgba)
        }
        img => {
            let mut rgb = img.to_rgb8();
            rgb.pixels_mut().for_each(|p| (0..3).for_each(|c| p[c] = noisy(p[c])));
            DynamicImage::ImageRgb8(rgb)
        }
    }
}

/// A `width` x `height` image drawn from the model's learned prior at `quality`: `z` sampled
/// from the factorized density, `y` from the Gaussians the hyper-synthesis predicts for that
/// `z` (both through the integer tables the decoder uses), then decoded. The same seed gives
/// the same image.
pub fn sample(model: &Model, width: u32, height: u32, quality: u8, seed: u64) -> Result<DynamicImage> {
    use rand::{Rng, SeedableRng};
    crate::check_quality(model, quality)?;
    crate::check_dimensions(width, height)?;
    let stride = cae_nn::STRIDE as usize;
    let (pw, ph) = ((width as usize).div_ceil(stride) * stride, (height as usize).div_ceil(stride) * stride);
    let (zh, zw, yh, yw) = (ph / stride, pw / stride, ph / 16, pw / 16);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut u = || rng.random_range(0..cae_entropy::TOTAL);
    let z_tables = model.z_tables.tables();
    let z: Vec<i32> = (0..model.config.z_channels() * zh * zw).map(|i| z_tables[i / (zh * zw)].quantile(u())).collect();
    let pred = model.hyper_synthesis.forward(&z, zh, zw);
    let y_tables = model.y_tables.tables();
    let y: Vec<i32> = pred.table.iter().map(|&t| y_tables[t as usize].quantile(u())).collect();
    let mu: Vec<f32> = pred.means.iter().map(|&v| cae_decoder::fixed_to_f32(v)).collect();
    let y_hat = cae_quant::dequantize(&y, &mu);
    Ok(crate::synthesise_image(model, y_hat, (model.config.m, yh, yw), quality as usize - 1, tiling::DEFAULT_TILE, (width, height), cae_format::ColourType::Rgb, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn picture(w: u32, h: u32, phase: f32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            let v = |k: f32| (127.0 + 100.0 * ((x as f32 * 0.07 + phase * k).sin() * (y as f32 * 0.05).cos())) as u8;
            image::Rgb([v(1.0), v(2.0), v(3.0)])
        }))
    }

    #[test]
    fn embeddings_have_a_fixed_length_and_tell_images_apart() {
        let model = crate::load_model("default").unwrap();
        let m = model.config.m;
        let a = embed(&model, &picture(100, 60, 0.0)).unwrap();
        let a_big = embed(&model, &picture(300, 200, 0.0)).unwrap();
        let flat = embed(&model, &DynamicImage::ImageRgb8(RgbImage::from_pixel(100, 60, image::Rgb([90, 90, 90])))).unwrap();
        assert_eq!((a.len(), a_big.len(), flat.len()), (2 * m, 2 * m, 2 * m));
        let dist = |p: &[f32], q: &[f32]| p.iter().zip(q).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
        // The same texture at another size is nearer than a flat grey image.
        assert!(dist(&a, &a_big) < dist(&a, &flat), "{} vs {}", dist(&a, &a_big), dist(&a, &flat));
        // A flat image has (almost) no spatial spread in its latent.
        assert!(flat[m..].iter().sum::<f32>() < a[m..].iter().sum::<f32>());
    }

    #[test]
    fn noise_is_more_anomalous_than_a_smooth_picture() {
        let model = crate::load_model("default").unwrap();
        let smooth = anomaly_score(&model, &picture(128, 96, 1.0), 2).unwrap();
        let mut state = 12345u32;
        let noise = DynamicImage::ImageRgb8(RgbImage::from_fn(128, 96, |_, _| {
            let mut next = || {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            };
            image::Rgb([next(), next(), next()])
        }));
        let noisy = anomaly_score(&model, &noise, 2).unwrap();
        assert!(noisy.bpp > 2.0 * smooth.bpp && noisy.mse > 2.0 * smooth.mse, "{smooth:?} vs {noisy:?}");
    }

    #[test]
    fn added_noise_has_its_sigma_and_is_repeatable() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(200, 100, image::Rgb([128, 60, 200])));
        let a = add_noise(&img, 15.0, 1);
        assert_eq!(a, add_noise(&img, 15.0, 1));
        assert_ne!(a, add_noise(&img, 15.0, 2));
        // PSNR of noise with σ = 15: 20·log10(255/15) = 24.61 dB (rounding adds 1/12 level²).
        let p = crate::psnr(&img, &a);
        assert!((p - 24.61).abs() < 0.15, "{p}");
        // Alpha is untouched; grey stays grey.
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(20, 20, image::Rgba([9, 9, 9, 77])));
        let n = add_noise(&rgba, 30.0, 3).to_rgba8();
        assert!(n.pixels().all(|p| p[3] == 77) && n.pixels().any(|p| p[0] != 9));
        assert_eq!(add_noise(&DynamicImage::ImageLuma8(image::GrayImage::new(4, 4)), 5.0, 1).color(), image::ColorType::L8);
    }

    #[test]
    fn samples_from_the_prior_are_repeatable_pictures() {
        let model = crate::load_model("default").unwrap();
        let a = sample(&model, 100, 70, 2, 1).unwrap();
        assert_eq!((a.width(), a.height(), a.color()), (100, 70, image::ColorType::Rgb8));
        assert_eq!(a, sample(&model, 100, 70, 2, 1).unwrap());
        let b = sample(&model, 100, 70, 2, 2).unwrap();
        assert!(crate::psnr(&a, &b) < 40.0, "different seeds, different samples");
        // Not flat: the pixels vary.
        let v = a.to_rgb8();
        let (lo, hi) = v.as_raw().iter().fold((255u8, 0u8), |(l, h), &x| (l.min(x), h.max(x)));
        assert!(hi - lo > 20, "range {lo}..{hi}");
        assert!(sample(&model, 0, 5, 2, 1).is_err() && sample(&model, 5, 5, 0, 1).is_err());
    }

    #[test]
    fn interpolation_ends_at_the_reconstructions() {
        let model = crate::load_model("default").unwrap();
        let (a, b) = (picture(64, 64, 0.0), picture(64, 64, 2.0));
        let path = interpolate(&model, &a, &b, 5).unwrap();
        assert_eq!(path.len(), 5);
        assert!(crate::psnr(&a, &path[0]) > 24.0 && crate::psnr(&b, &path[4]) > 24.0);
        // The middle lies between the ends.
        let (da, db) = (crate::psnr(&a, &path[2]), crate::psnr(&b, &path[2]));
        assert!(da < crate::psnr(&a, &path[0]) && db < crate::psnr(&b, &path[4]));
        assert!(interpolate(&model, &a, &picture(65, 64, 0.0), 3).is_err());
    }
}

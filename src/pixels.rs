//! Conversions between `image` types and the planar float layout the networks use, with
//! edge-replication padding to the model's stride.

use cae_format::ColourType;
use image::{DynamicImage, GenericImageView, GrayAlphaImage, GrayImage, Luma, LumaA, RgbImage, Rgba, RgbaImage};

/// What `compress` keeps of an input image besides its colour planes.
pub(crate) struct Prepared {
    pub colour: ColourType,
    pub bit_depth: u8,
    /// RGB planes, padded, values in [0, 1], layout [3][padded_h][padded_w].
    pub planes: Vec<f32>,
    pub padded_width: usize,
    pub padded_height: usize,
    /// The alpha plane (unpadded), when the image has one.
    pub alpha: Option<GrayImage>,
}

/// Classify the colour type and source bit depth of an image.
pub(crate) fn colour_of(image: &DynamicImage) -> (ColourType, u8) {
    use image::ColorType as C;
    let c = image.color();
    let colour = match (c.has_color(), c.has_alpha()) {
        (false, false) => ColourType::L,
        (false, true) => ColourType::La,
        (true, false) => ColourType::Rgb,
        (true, true) => ColourType::Rgba,
    };
    let depth = match c {
        C::L8 | C::La8 | C::Rgb8 | C::Rgba8 => 8,
        _ => 16,
    };
    (colour, depth)
}

/// The smallest multiple of `stride` that is at least `n`.
pub(crate) fn padded(n: u32, stride: u32) -> u64 {
    (n as u64).div_ceil(stride as u64) * stride as u64
}

/// Split an image into padded float RGB planes (and its alpha plane).
pub(crate) fn prepare(image: &DynamicImage, stride: u32) -> Prepared {
    let (colour, bit_depth) = colour_of(image);
    let (width, height) = image.dimensions();
    let pw = padded(width, stride) as usize;
    let ph = padded(height, stride) as usize;
    let rgb: RgbImage = if colour.is_gray() {
        let l = image.to_luma8();
        RgbImage::from_fn(width, height, |x, y| {
            let v = l.get_pixel(x, y)[0];
            image::Rgb([v, v, v])
        })
    } else {
        image.to_rgb8()
    };
    let mut planes = vec![0f32; 3 * pw * ph];
    for c in 0..3 {
        let plane = &mut planes[c * pw * ph..(c + 1) * pw * ph];
        for y in 0..ph {
            let sy = y.min(height as usize - 1) as u32;
            for x in 0..pw {
                let sx = x.min(width as usize - 1) as u32;
                plane[y * pw + x] = rgb.get_pixel(sx, sy)[c] as f32 / 255.0;
            }
        }
    }
    let alpha = colour.has_alpha().then(|| {
        let a = image.to_rgba8();
        GrayImage::from_fn(width, height, |x, y| Luma([a.get_pixel(x, y)[3]]))
    });
    Prepared { colour, bit_depth, planes, padded_width: pw, padded_height: ph, alpha }
}

/// Round a float sample in [0, 1] to 8 bits.
pub(crate) fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Assemble the decoded image from padded float planes, cropping the padding and restoring
/// the colour type.
pub(crate) fn assemble(
    planes: &[f32],
    padded_width: usize,
    padded_height: usize,
    width: u32,
    height: u32,
    colour: ColourType,
    alpha: Option<GrayImage>,
) -> DynamicImage {
    let plane = padded_width * padded_height;
    let at = |c: usize, x: u32, y: u32| to_u8(planes[c * plane + y as usize * padded_width + x as usize]);
    let luma = |x: u32, y: u32| {
        // The decoded gray image is the mean of the three decoded planes.
        let s: f32 = (0..3).map(|c| planes[c * plane + y as usize * padded_width + x as usize]).sum();
        to_u8(s / 3.0)
    };
    let alpha_at = |x: u32, y: u32| alpha.as_ref().map_or(255, |a| a.get_pixel(x, y)[0]);
    match colour {
        ColourType::L => DynamicImage::ImageLuma8(GrayImage::from_fn(width, height, |x, y| Luma([luma(x, y)]))),
        ColourType::La => DynamicImage::ImageLumaA8(GrayAlphaImage::from_fn(width, height, |x, y| {
            LumaA([luma(x, y), alpha_at(x, y)])
        })),
        ColourType::Rgba => DynamicImage::ImageRgba8(RgbaImage::from_fn(width, height, |x, y| {
            Rgba([at(0, x, y), at(1, x, y), at(2, x, y), alpha_at(x, y)])
        })),
        _ => DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([at(0, x, y), at(1, x, y), at(2, x, y)])
        })),
    }
}

/// PSNR in dB between two images of equal size over their RGB channels (8-bit).
pub fn psnr(a: &DynamicImage, b: &DynamicImage) -> f64 {
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    assert_eq!(a.dimensions(), b.dimensions(), "PSNR of images of different sizes");
    let se: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let mse = se / a.as_raw().len() as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}

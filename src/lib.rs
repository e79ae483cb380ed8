//! caec: a learned image codec (convolutional autoencoder with a mean-scale hyperprior).
//!
//! ```
//! use image::{DynamicImage, RgbImage};
//!
//! let image = DynamicImage::ImageRgb8(RgbImage::from_fn(96, 80, |x, y| {
//!     image::Rgb([(x * 2) as u8, (y * 3) as u8, 128])
//! }));
//! let bytes = caec::compress(&image, &caec::Options::default()).unwrap();
//! let back = caec::decompress(&bytes, &caec::Limits::default()).unwrap();
//! assert_eq!((back.width(), back.height()), (96, 80));
//! assert!(caec::psnr(&image, &back) > 25.0);
//! ```
#![forbid(unsafe_code)]

pub mod metrics;
mod pixels;
mod tiling;
mod uses;

use std::io::Cursor;

use burn::prelude::*;
pub use cae_format::{ColourType, FormatError, Header, Limits};
use cae_format::LatentShape;
use cae_models::{Model, ModelError};
use image::DynamicImage;
pub use pixels::psnr;
pub use tiling::{DEFAULT_TILE, HALO};
pub use uses::{add_noise, anomaly_score, denoise, embed, interpolate, sample, AnomalyScore, DENOISE_MODEL, DENOISE_QUALITY};

/// The default model's quality used when none is given (1-based): level 4 of its six, λ = 0.0067
/// (levels 1 and 2 are below the rates of the earlier four-level models). Other models code at
/// their own [`Model::default_quality`] (the level nearest the same λ).
pub const DEFAULT_QUALITY: u8 = 4;

/// How to compress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Quality level, 1 ..= the model's number of levels (higher is better and larger).
    pub quality: u8,
    /// Name of the built-in model.
    pub model: String,
}

impl Default for Options {
    fn default() -> Self {
        Options { quality: DEFAULT_QUALITY, model: DEFAULT_MODEL.to_string() }
    }
}

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("file was written by model {0:016x}, which this build of caec does not have")]
    UnknownModel(u64),
    #[error("quality {quality} is out of range: this model has levels 1..={levels}")]
    Quality { quality: u8, levels: usize },
    #[error("invalid .cae file: {0}")]
    Inconsistent(String),
    #[error("corrupted .cae file: {0}")]
    Entropy(#[from] cae_entropy::EntropyError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("image: {0}")]
    Image(#[from] image::ImageError),
    #[error("image of {width}x{height} pixels is too large (at most {max} pixels a side)")]
    TooLarge { width: u32, height: u32, max: u32 },
    #[error("target {0} is not a positive number")]
    Target(String),
    #[error("tile size {0} is not a positive multiple of 64")]
    Tile(usize),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The largest side `compress` accepts: the default decoding limit, so that every file it
/// writes decodes with default limits.
pub const MAX_SIDE: u32 = cae_format::DEFAULT_MAX_SIDE;

fn device() -> Device {
    Device::flex()
}

fn tensor_to_vec(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("float tensor")
}

/// The name of the model [`Options`] use unless told otherwise.
pub const DEFAULT_MODEL: &str = cae_models::DEFAULT_MODEL;

/// The names of the built-in models, the default first.
pub fn model_names() -> Vec<&'static str> {
    cae_models::BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// Load a built-in model by name.
pub fn load_model(name: &str) -> Result<Model> {
    Ok(cae_models::load_builtin(name, &device())?)
}

/// Load a model from the bytes of a `.caem` file (as `caec-train` exports them), named `name`.
/// Files it writes name this model's id, so only a build that embeds it decodes them with
/// [`decompress`]; [`decompress_with`] this model decodes them anywhere.
pub fn load_model_bytes(name: &str, bytes: &[u8]) -> Result<Model> {
    Ok(Model::from_bytes(name, bytes, &device())?)
}

/// The symbols of a file, as the entropy decoder produced them (for determinism checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbols {
    pub z: Vec<i32>,
    pub y: Vec<i32>,
    /// Table index of every y symbol, as the integer hyper-synthesis chose it.
    pub y_tables: Vec<u16>,
}

impl Symbols {
    /// SHA-256 (hex) of z and y (i32, little-endian) and the y table indices (u16): equal on
    /// every machine for the same file.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for v in self.z.iter().chain(&self.y) {
            h.update(v.to_le_bytes());
        }
        for t in &self.y_tables {
            h.update(t.to_le_bytes());
        }
        format!("{:x}", h.finalize())
    }
}

/// Compress an image into a `.cae` file.
pub fn compress(image: &DynamicImage, options: &Options) -> Result<Vec<u8>> {
    let model = load_model(&options.model)?;
    compress_with(&model, image, options.quality)
}

/// Compress with an already loaded model.
pub fn compress_with(model: &Model, image: &DynamicImage, quality: u8) -> Result<Vec<u8>> {
    compress_tiled(model, image, quality, DEFAULT_TILE)
}

/// Refuse an empty image or one with a side over [`MAX_SIDE`].
fn check_size(image: &DynamicImage) -> Result<()> {
    check_dimensions(image.width(), image.height())
}

/// Refuse a size with a zero side or a side over [`MAX_SIDE`].
fn check_dimensions(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::TooLarge { width, height, max: MAX_SIDE });
    }
    Ok(())
}

/// Refuse a quality level the model does not have (they are 1..=levels).
fn check_quality(model: &Model, quality: u8) -> Result<()> {
    let levels = model.config.levels();
    if quality == 0 || quality as usize > levels {
        return Err(Error::Quality { quality, levels });
    }
    Ok(())
}

fn check_tile(tile: usize) -> Result<()> {
    if tile == 0 || tile % cae_nn::STRIDE as usize != 0 {
        return Err(Error::Tile(tile));
    }
    Ok(())
}

/// Compress, running the analysis network over tiles with cores of `tile` pixels (a multiple
/// of 64) when the image is larger than one tile, which bounds the memory a large photo needs.
/// The halo around each core is wider than the network's receptive field, so the file is the
/// one whole-image coding writes (up to float rounding): no seams, nothing in the format.
pub fn compress_tiled(model: &Model, image: &DynamicImage, quality: u8, tile: usize) -> Result<Vec<u8>> {
    check_tile(tile)?;
    check_quality(model, quality)?;
    let (width, height) = (image.width(), image.height());
    check_size(image)?;
    let q = quality as usize - 1;
    let stride = cae_nn::STRIDE;
    let p = pixels::prepare(image, stride);
    let (pw, ph, colour, bit_depth, alpha) = (p.padded_width, p.padded_height, p.colour, p.bit_depth, p.alpha);
    let y = model.gains.apply(tiling::analyse(model, p.planes, pw, ph, tile, HALO), &[q]);
    let z = model.hyper_analysis.forward(y.clone());
    let [_, m, yh, yw] = y.dims();
    let [_, n, zh, zw] = z.dims();
    let y = tensor_to_vec(y);
    let z_sym: Vec<i32> = tensor_to_vec(z).into_iter().map(cae_quant::to_symbol).collect();
    let z_tables: Vec<u16> = (0..z_sym.len()).map(|i| (i / (zh * zw)) as u16).collect();
    let pred = model.hyper_synthesis.forward(&z_sym, zh, zw);
    let mu: Vec<f32> = pred.means.iter().map(|&v| cae_decoder::fixed_to_f32(v)).collect();
    let y_sym = cae_quant::quantize(&y, &mu);
    // One ANS stack: the decoder pops z, then y (whose tables z selects), so y goes in first.
    let mut stack = cae_entropy::StackEncoder::new();
    stack.push(&model.y_tables, &y_sym, &pred.table)?;
    stack.push(&model.z_tables, &z_sym, &z_tables)?;
    let symbols = stack.finish(cae_entropy::Packing::Trimmed);
    let alpha_stream = match &alpha {
        Some(a) => {
            let mut buf = Vec::new();
            let enc = image::codecs::png::PngEncoder::new_with_quality(
                Cursor::new(&mut buf),
                image::codecs::png::CompressionType::Best,
                image::codecs::png::FilterType::Adaptive,
            );
            a.write_with_encoder(enc)?;
            buf
        }
        None => Vec::new(),
    };
    let shape = |c: usize, h: usize, w: usize| LatentShape { channels: c as u16, height: h as u16, width: w as u16 };
    let header = Header {
        model_id: model.id,
        quality,
        colour,
        bit_depth,
        width,
        height,
        pad_right: (pw - width as usize) as u8,
        pad_bottom: (ph - height as usize) as u8,
        y_shape: shape(m, yh, yw),
        z_shape: shape(n, zh, zw),
    };
    Ok(cae_format::write(&header, &symbols, &alpha_stream)?)
}

/// A goal from which [`compress_to_target`] picks the quality.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// At most this many bits per pixel (whole file): the highest quality that fits, or the
    /// lowest quality if none does.
    Bpp(f64),
    /// At least this PSNR (RGB, dB): the lowest quality that reaches it, or the highest
    /// quality if none does.
    Psnr(f64),
}

/// Compress at the quality that `target` asks for, found by bisection over the quality
/// levels (file size and PSNR both grow with the quality, so ⌈log2(levels + 1)⌉ trial
/// encodings suffice; a PSNR target also decodes each trial). Returns the file and the
/// quality chosen.
pub fn compress_to_target(model: &Model, image: &DynamicImage, target: Target) -> Result<(Vec<u8>, u8)> {
    let value = match target {
        Target::Bpp(v) | Target::Psnr(v) => v,
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::Target(format!("{value}")));
    }
    let levels = model.config.levels() as u8;
    let pixels = image.width() as f64 * image.height() as f64;
    let mut files: Vec<Option<Vec<u8>>> = vec![None; levels as usize + 1];
    // `past(q)` is false for low qualities and true from some quality on.
    let mut past = |q: u8| -> Result<bool> {
        let bytes = compress_with(model, image, q)?;
        let past = match target {
            Target::Bpp(max) => bytes.len() as f64 * 8.0 / pixels > max,
            Target::Psnr(min) => psnr(image, &decompress_with(model, &bytes, &Limits::default())?) >= min,
        };
        files[q as usize] = Some(bytes);
        Ok(past)
    };
    let (mut lo, mut hi) = (1u8, levels + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if past(mid)? { hi = mid } else { lo = mid + 1 }
    }
    // `lo` is the first quality past the target (levels + 1 if none is).
    let quality = match target {
        Target::Bpp(_) => lo.saturating_sub(1).max(1),
        Target::Psnr(_) => lo.min(levels),
    };
    let bytes = match files[quality as usize].take() {
        Some(b) => b,
        None => compress_with(model, image, quality)?,
    };
    Ok((bytes, quality))
}

/// Check the model-dependent header fields before any network runs.
fn check_against_model(h: &Header, model: &Model) -> Result<()> {
    let levels = model.config.levels();
    if h.quality as usize > levels {
        return Err(Error::Quality { quality: h.quality, levels });
    }
    let stride = cae_nn::STRIDE as u64;
    let (pw, ph) = (h.padded_width(), h.padded_height());
    let bad = |what: String| Err(Error::Inconsistent(what));
    if h.pad_right as u64 >= stride || h.pad_bottom as u64 >= stride || pw % stride != 0 || ph % stride != 0 {
        return bad(format!("padding {}x{} does not fit the model's stride {stride}", h.pad_right, h.pad_bottom));
    }
    let expect_y = (model.config.m as u64, ph / 16, pw / 16);
    let expect_z = (model.config.z_channels() as u64, ph / 64, pw / 64);
    let s = |s: LatentShape| (s.channels as u64, s.height as u64, s.width as u64);
    if s(h.y_shape) != expect_y || s(h.z_shape) != expect_z {
        return bad(format!("latent shapes {:?} / {:?} do not match the image size", h.y_shape, h.z_shape));
    }
    Ok(())
}

/// Decode the symbols of a file without running the synthesis network.
pub fn decode_symbols(bytes: &[u8], limits: &Limits) -> Result<Symbols> {
    let file = cae_format::parse(bytes, limits)?;
    let model = model_for(&file.header)?;
    check_against_model(&file.header, &model)?;
    let (symbols, _) = entropy_decode(&file, &model)?;
    Ok(symbols)
}

fn model_for(h: &Header) -> Result<Model> {
    match cae_models::load_builtin_by_id(h.model_id, &device()) {
        Some(m) => Ok(m?),
        None => Err(Error::UnknownModel(h.model_id)),
    }
}

fn entropy_decode(file: &cae_format::CaeFile, model: &Model) -> Result<(Symbols, Vec<f32>)> {
    let h = &file.header;
    let zs = h.z_shape;
    let plane = zs.height as usize * zs.width as usize;
    use cae_entropy::{Packing, StackDecoder};
    // Version 1: z and y on stacks of their own; version 2: y under z on one stack.
    let (mut z_stack, y_stack) = match file.symbols {
        cae_format::Symbols::Separate { z, y } => (StackDecoder::new(z, Packing::Words)?, Some(StackDecoder::new(y, Packing::Words)?)),
        cae_format::Symbols::Joint(bytes) => (StackDecoder::new(bytes, Packing::Trimmed)?, None),
    };
    let z = z_stack.pop(&model.z_tables, zs.len(), |i| i / plane)?;
    let pred = model.hyper_synthesis.forward(&z, zs.height as usize, zs.width as usize);
    let mut y_stack = match y_stack {
        Some(y_stack) => {
            z_stack.finish()?;
            y_stack
        }
        None => z_stack,
    };
    let y = y_stack.pop(&model.y_tables, h.y_shape.len(), |i| pred.table[i] as usize)?;
    y_stack.finish()?;
    let mu: Vec<f32> = pred.means.iter().map(|&v| cae_decoder::fixed_to_f32(v)).collect();
    let y_hat = cae_quant::dequantize(&y, &mu);
    Ok((Symbols { z, y, y_tables: pred.table }, y_hat))
}

/// Decompress a `.cae` file with the built-in model that wrote it.
pub fn decompress(bytes: &[u8], limits: &Limits) -> Result<DynamicImage> {
    let file = cae_format::parse(bytes, limits)?;
    let model = model_for(&file.header)?;
    decode_file(&model, &file, DEFAULT_TILE)
}

/// Decompress with an already loaded model (which must be the one that wrote the file).
pub fn decompress_with(model: &Model, bytes: &[u8], limits: &Limits) -> Result<DynamicImage> {
    decompress_tiled(model, bytes, limits, DEFAULT_TILE)
}

/// Decompress, running the synthesis network over tiles with cores of `tile` pixels (a
/// multiple of 64) when the image is larger than one tile (see [`compress_tiled`]): any tile
/// size decodes a file to the same pixels, up to float rounding.
pub fn decompress_tiled(model: &Model, bytes: &[u8], limits: &Limits, tile: usize) -> Result<DynamicImage> {
    check_tile(tile)?;
    let file = cae_format::parse(bytes, limits)?;
    if file.header.model_id != model.id {
        return Err(Error::UnknownModel(file.header.model_id));
    }
    decode_file(model, &file, tile)
}

fn decode_file(model: &Model, file: &cae_format::CaeFile, tile: usize) -> Result<DynamicImage> {
    let h = file.header.clone();
    check_against_model(&h, model)?;
    let alpha = if h.colour.has_alpha() {
        let a = image::load_from_memory_with_format(file.alpha_stream, image::ImageFormat::Png)
            .map_err(|e| Error::Inconsistent(format!("alpha stream: {e}")))?;
        if a.width() != h.width || a.height() != h.height {
            return Err(Error::Inconsistent("alpha plane has the wrong size".into()));
        }
        Some(a.to_luma8())
    } else {
        None
    };
    let (_, y_hat) = entropy_decode(file, model)?;
    let ys = h.y_shape;
    let shape = (ys.channels as usize, ys.height as usize, ys.width as usize);
    Ok(synthesise_image(model, y_hat, shape, h.quality as usize - 1, tile, (h.width, h.height), h.colour, alpha))
}

/// The image of dequantised latents `y_hat` (`[M, yh, yw]`, quality gains still applied) at
/// quality index `q`, cropped from the padded `16·yw` x `16·yh` to `width` x `height`.
pub(crate) fn synthesise_image(
    model: &Model,
    y_hat: Vec<f32>,
    (m, yh, yw): (usize, usize, usize),
    q: usize,
    tile: usize,
    (width, height): (u32, u32),
    colour: ColourType,
    alpha: Option<image::GrayImage>,
) -> DynamicImage {
    let y = Tensor::<4>::from_data(TensorData::new(y_hat, [1, m, yh, yw]), &device());
    let y = tensor_to_vec(model.gains.invert(y, &[q]));
    let planes = tiling::synthesise(model, y, yh, yw, tile, HALO);
    pixels::assemble(&planes, 16 * yw, 16 * yh, width, height, colour, alpha)
}


/// Whether a file name's extension is an image format this build reads.
pub fn is_image_path(p: &std::path::Path) -> bool {
    image::ImageFormat::from_path(p).is_ok_and(|f| f.reading_enabled())
}

/// The image files directly in `dir` (not in subfolders) that [`is_image_path`] accepts,
/// sorted by name.
pub fn image_files(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_path(p))
        .collect();
    paths.sort();
    Ok(paths)
}

/// What `caec info` shows.
#[derive(Clone, Debug)]
pub struct Info {
    pub header: Header,
    /// Format version of the file.
    pub version: u8,
    pub file_bytes: usize,
    /// Bytes of entropy-coded latents (`z` and `y`).
    pub symbol_bytes: usize,
    pub alpha_bytes: usize,
    /// Name of the built-in model that wrote it, if this build has it.
    pub model_name: Option<&'static str>,
}

impl Info {
    /// Bits per pixel of the whole file.
    pub fn bpp(&self) -> f64 {
        self.file_bytes as f64 * 8.0 / (self.header.width as f64 * self.header.height as f64)
    }
}

/// Read and check a file's header and stream sizes.
pub fn info(bytes: &[u8]) -> Result<Info> {
    let file = cae_format::parse(bytes, &Limits { max_memory: u64::MAX, max_pixels: u64::MAX, ..Limits::default() })?;
    let model_name = cae_models::builtin_ids().into_iter().find(|(_, id)| *id == file.header.model_id).map(|(n, _)| n);
    Ok(Info {
        header: file.header.clone(),
        version: file.version,
        file_bytes: bytes.len(),
        symbol_bytes: file.symbols.len(),
        alpha_bytes: file.alpha_stream.len(),
        model_name,
    })
}

/// Read an image file the way the CLI does: any format the `image` crate knows, with its
/// EXIF orientation applied.
pub fn read_image(bytes: &[u8]) -> Result<DynamicImage> {
    use image::ImageDecoder;
    let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(image::ImageError::IoError)?;
    let mut decoder = reader.into_decoder()?;
    let orientation = decoder.orientation()?;
    let mut img = DynamicImage::from_decoder(decoder)?;
    img.apply_orientation(orientation);
    Ok(img)
}


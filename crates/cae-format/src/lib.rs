//! The `.cae` container, format versions 1 and 2.
//!
//! This crate knows the byte layout of a `.cae` file and nothing about the networks that
//! produce its streams. The layout is specified field by field in `docs/format.md`; in short:
//!
//! - **version 2** (written): a compact header (magic, version, model id, quality, colour,
//!   LEB128 sizes, the latent strides and channel counts, the stream lengths; 25 bytes for a
//!   768x512 RGB image), one entropy-coded stream holding the hyper-latent `z` and the latent
//!   `y` on one ANS stack, the alpha stream when the image has alpha, and a CRC32 (IEEE) over
//!   every preceding byte. The padding and the latent shapes follow from the size and strides.
//! - **version 1** (read, never written by caec since version 2): a fixed 53-byte header, three
//!   length-prefixed streams (`z`, `y`, alpha) and the CRC32.
//!
//! [`parse`] checks, in this order and before anything is allocated: the magic bytes, the
//! minimum length, the format version, that the stream lengths add up to the file length
//! exactly, the CRC, every header field, and the decoding [`Limits`]. Every file has exactly
//! one byte form: whatever parses, [`write_file`] writes back to the same bytes.
#![forbid(unsafe_code)]

use std::fmt;

/// The four magic bytes at the start of every `.cae` file.
pub const MAGIC: [u8; 4] = [0x89, b'C', b'A', b'E'];
/// The format version this crate writes.
pub const FORMAT_VERSION: u8 = 2;
/// Bytes before the first stream of a version-1 file.
pub const V1_HEADER_LEN: usize = 53;
/// Bytes of the trailing CRC32.
pub const CRC_LEN: usize = 4;
/// The smallest well-formed file of any version: a version-2 header of a 1x1 image with
/// one-byte channel counts, an empty symbol stream, and the CRC.
pub const MIN_FILE_LEN: usize = 21 + CRC_LEN;
/// The smallest well-formed version-1 file: its header, three empty streams and the CRC.
pub const V1_MIN_FILE_LEN: usize = V1_HEADER_LEN + CRC_LEN;
/// Number of streams of a version-1 file, in file order: z, y, alpha.
pub const V1_STREAM_COUNT: usize = 3;
/// The largest latent stride (as a power of two) a version-2 header can state: paddings are
/// stored in bytes, so a stride is at most 256.
pub const MAX_STRIDE_LOG2: u8 = 8;

/// Colour type of the original image, restored on decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ColourType {
    /// Grayscale.
    L,
    /// Grayscale with alpha.
    La,
    /// RGB.
    Rgb,
    /// RGB with alpha.
    Rgba,
}

impl ColourType {
    /// The byte stored in the header.
    pub fn code(self) -> u8 {
        match self {
            ColourType::L => 0,
            ColourType::La => 1,
            ColourType::Rgb => 2,
            ColourType::Rgba => 3,
        }
    }

    /// The colour type stored as `code`, if it is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => ColourType::L,
            1 => ColourType::La,
            2 => ColourType::Rgb,
            3 => ColourType::Rgba,
            _ => return None,
        })
    }

    /// Whether the image has an alpha channel (coded losslessly in the alpha stream).
    pub fn has_alpha(self) -> bool {
        matches!(self, ColourType::La | ColourType::Rgba)
    }

    /// Whether the image is grayscale.
    pub fn is_gray(self) -> bool {
        matches!(self, ColourType::L | ColourType::La)
    }

    /// A short name for `caec info`.
    pub fn name(self) -> &'static str {
        match self {
            ColourType::L => "gray",
            ColourType::La => "gray+alpha",
            ColourType::Rgb => "rgb",
            ColourType::Rgba => "rgb+alpha",
        }
    }
}

/// Shape of a latent tensor: channels, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LatentShape {
    pub channels: u16,
    pub height: u16,
    pub width: u16,
}

impl LatentShape {
    /// Number of elements (symbols) in the tensor.
    pub fn len(&self) -> usize {
        self.channels as usize * self.height as usize * self.width as usize
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every field of the fixed header.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Identifier of the model that wrote the file (first 8 bytes of the SHA-256 of the model).
    pub model_id: u64,
    /// Quality level, 1-based; its meaning belongs to the model.
    pub quality: u8,
    /// Colour type of the original image.
    pub colour: ColourType,
    /// Bit depth of the original image's samples (8 or 16); decoded images are 8-bit.
    pub bit_depth: u8,
    /// Width of the original image in pixels (≥ 1).
    pub width: u32,
    /// Height of the original image in pixels (≥ 1).
    pub height: u32,
    /// Columns of edge replication added on the right before coding.
    pub pad_right: u8,
    /// Rows of edge replication added at the bottom before coding.
    pub pad_bottom: u8,
    /// Shape of the latent `y`.
    pub y_shape: LatentShape,
    /// Shape of the hyper-latent `z`.
    pub z_shape: LatentShape,
}

impl Header {
    /// Width after padding.
    pub fn padded_width(&self) -> u64 {
        self.width as u64 + self.pad_right as u64
    }

    /// Height after padding.
    pub fn padded_height(&self) -> u64 {
        self.height as u64 + self.pad_bottom as u64
    }
}

/// The entropy-coded symbols of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symbols<'a> {
    /// Version 1: the hyper-latent `z` and the latent `y`, each its own ANS stream of whole
    /// 32-bit words.
    Separate { z: &'a [u8], y: &'a [u8] },
    /// Version 2: one ANS stack from which the decoder pops `z`, then `y`; its last word's
    /// zero high bytes are not stored (`cae_entropy::Packing::Trimmed`).
    Joint(&'a [u8]),
}

impl Symbols<'_> {
    /// Bytes of entropy-coded symbols.
    pub fn len(&self) -> usize {
        match self {
            Symbols::Separate { z, y } => z.len() + y.len(),
            Symbols::Joint(s) => s.len(),
        }
    }

    /// Whether there are no symbol bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed `.cae` file borrowing its streams from the input bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaeFile<'a> {
    /// Format version of the file (1 or 2).
    pub version: u8,
    pub header: Header,
    /// Entropy-coded symbols.
    pub symbols: Symbols<'a>,
    /// Losslessly compressed alpha plane (empty when the image has no alpha).
    pub alpha_stream: &'a [u8],
}

/// The default largest width and height a decoder accepts (and so the largest side an
/// encoder should write).
pub const DEFAULT_MAX_SIDE: u32 = 65_535;

/// Bounds checked against the header before any allocation or network run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    /// Upper bound on the memory the decoder may need, in bytes (see [`Header::decode_memory`]).
    pub max_memory: u64,
}

impl Default for Limits {
    /// Limits that a camera photo never reaches: 65,535 pixels a side, 256 Mpx, 8 GiB.
    fn default() -> Self {
        Limits {
            max_width: DEFAULT_MAX_SIDE,
            max_height: DEFAULT_MAX_SIDE,
            max_pixels: 1 << 28,
            max_memory: 8 << 30,
        }
    }
}

/// The most pixels a decoder runs its synthesis network on at once: caec decodes large
/// images in tiles of (1024 + 2·64)² pixels (`caec::DEFAULT_TILE`, `caec::HALO`; a test there
/// checks the two agree).
pub const DECODER_TILE_PIXELS: u64 = 1152 * 1152;

impl Header {
    /// A conservative estimate of the memory a decoder needs for this file, in bytes (the
    /// model itself not counted): the float activations of the widest synthesis layer on one
    /// tile (at a quarter of its pixels, two f32 buffers), the whole image's float RGB planes
    /// and RGBA8 output, and the latent with the hyper-synthesis buffers (means, table indices
    /// and f64 accumulators of up to 1.5·M channels per latent element).
    /// Measured: a 6000x4000 file decodes in 582 MiB of peak RSS (the whole process); this
    /// says 908 MiB.
    pub fn decode_memory(&self) -> u64 {
        let px = self.padded_width() * self.padded_height();
        let widest = (self.y_shape.channels as u64).max(self.z_shape.channels as u64).max(3);
        let tile = px.min(DECODER_TILE_PIXELS);
        let latent = self.y_shape.len() as u64;
        tile / 4 * widest * 4 * 2 + px * (12 + 4) + latent * (4 * 3 + 8 + 2 + 12)
    }
}

/// Why a byte string is not a valid `.cae` file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Shorter than the smallest file of its version (`min` bytes).
    TooShort { len: usize, min: usize },
    /// The file ends inside its (version-2) header.
    Truncated { len: usize },
    /// The first four bytes are not the `.cae` magic.
    BadMagic,
    /// A format version this build cannot read.
    UnsupportedVersion { version: u8 },
    /// The CRC32 does not match: the file is corrupted.
    CrcMismatch { stored: u32, computed: u32 },
    /// A header field has a value the format does not allow.
    InvalidField { field: &'static str, value: u64 },
    /// The stream lengths do not add up to the file length (truncated or extended file).
    LengthMismatch { expected: u64, actual: u64 },
    /// The header asks for more than the decoding limits allow.
    LimitExceeded { what: &'static str, value: u64, limit: u64 },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::TooShort { len, min } => write!(
                f,
                "not a .cae file: {len} bytes, shorter than the {min}-byte minimum"
            ),
            FormatError::Truncated { len } => {
                write!(f, "truncated .cae file: it ends inside its header ({len} bytes)")
            }
            FormatError::BadMagic => write!(f, "not a .cae file: wrong magic bytes"),
            FormatError::UnsupportedVersion { version } => write!(
                f,
                "unsupported .cae format version {version} (this build reads versions 1 to {FORMAT_VERSION})"
            ),
            FormatError::CrcMismatch { stored, computed } => write!(
                f,
                "corrupted .cae file: CRC32 mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
            FormatError::InvalidField { field, value } => {
                write!(f, "invalid .cae header: {field} = {value}")
            }
            FormatError::LengthMismatch { expected, actual } => write!(
                f,
                "truncated or extended .cae file: header says {expected} bytes, file has {actual}"
            ),
            FormatError::LimitExceeded { what, value, limit } => {
                write!(f, "image exceeds decoding limits: {what} {value} > {limit}")
            }
        }
    }
}

impl std::error::Error for FormatError {}

/// Serialise a header, its entropy-coded symbols (one ANS stack: `z`, then `y`) and its
/// alpha stream into a complete version-2 `.cae` file.
///
/// The header must be one that version 2 can state: each latent's stride (padded size over
/// latent size) a power of two no larger than 2^[`MAX_STRIDE_LOG2`], the same across and
/// down, the `y` stride no larger than the `z` stride, and the padding the least that makes
/// the size a multiple of the `z` stride.
pub fn write(header: &Header, symbols: &[u8], alpha: &[u8]) -> Result<Vec<u8>, FormatError> {
    validate(header)?;
    let (y_log2, z_log2) = strides_v2(header)?;
    if !header.colour.has_alpha() && !alpha.is_empty() {
        return Err(FormatError::InvalidField { field: "alpha stream length without alpha", value: alpha.len() as u64 });
    }
    let mut out = Vec::with_capacity(32 + symbols.len() + alpha.len());
    out.extend_from_slice(&MAGIC);
    out.push(2);
    out.extend_from_slice(&header.model_id.to_be_bytes());
    out.push(header.quality);
    out.push(header.colour.code() | if header.bit_depth == 16 { DEPTH_16_BIT } else { 0 });
    put_varint(&mut out, header.width as u64);
    put_varint(&mut out, header.height as u64);
    out.push(y_log2 << 4 | z_log2);
    put_varint(&mut out, header.y_shape.channels as u64);
    put_varint(&mut out, header.z_shape.channels as u64);
    for (s, present) in [(symbols, true), (alpha, header.colour.has_alpha())] {
        if present {
            let len = u32::try_from(s.len())
                .map_err(|_| FormatError::InvalidField { field: "stream length", value: s.len() as u64 })?;
            put_varint(&mut out, len as u64);
        }
    }
    out.extend_from_slice(symbols);
    out.extend_from_slice(alpha);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Serialise a header and its three streams into a complete version-1 `.cae` file (what
/// caec wrote before version 2; kept for tests and tools that need such files).
pub fn write_v1(header: &Header, z: &[u8], y: &[u8], alpha: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(V1_MIN_FILE_LEN + z.len() + y.len() + alpha.len());
    out.extend_from_slice(&MAGIC);
    out.push(1);
    out.push(0); // flags, reserved
    out.extend_from_slice(&header.model_id.to_be_bytes());
    out.push(header.quality);
    out.push(header.colour.code());
    out.push(header.bit_depth);
    out.push(0); // reserved
    out.extend_from_slice(&header.width.to_be_bytes());
    out.extend_from_slice(&header.height.to_be_bytes());
    out.push(header.pad_right);
    out.push(header.pad_bottom);
    for s in [header.y_shape, header.z_shape] {
        out.extend_from_slice(&s.channels.to_be_bytes());
        out.extend_from_slice(&s.height.to_be_bytes());
        out.extend_from_slice(&s.width.to_be_bytes());
    }
    out.push(V1_STREAM_COUNT as u8);
    for s in [z, y, alpha] {
        let len = u32::try_from(s.len()).map_err(|_| FormatError::InvalidField {
            field: "stream length",
            value: s.len() as u64,
        })?;
        out.extend_from_slice(&len.to_be_bytes());
    }
    debug_assert_eq!(out.len(), V1_HEADER_LEN);
    validate(header)?;
    out.extend_from_slice(z);
    out.extend_from_slice(y);
    out.extend_from_slice(alpha);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Write a parsed file back in its own version: the bytes it was parsed from.
pub fn write_file(file: &CaeFile) -> Result<Vec<u8>, FormatError> {
    match (file.version, file.symbols) {
        (1, Symbols::Separate { z, y }) => write_v1(&file.header, z, y, file.alpha_stream),
        (2, Symbols::Joint(s)) => write(&file.header, s, file.alpha_stream),
        (version, _) => Err(FormatError::UnsupportedVersion { version }),
    }
}

/// Bit of a version-2 colour byte that marks a 16-bit source.
const DEPTH_16_BIT: u8 = 0b100;

/// The strides (log2) of `y` and `z` that a version-2 header states for `h`.
fn strides_v2(h: &Header) -> Result<(u8, u8), FormatError> {
    let (pw, ph) = (h.padded_width(), h.padded_height());
    let log2 = |s: LatentShape| {
        (0..=MAX_STRIDE_LOG2).find(|&k| (s.height as u64) << k == ph && (s.width as u64) << k == pw)
    };
    let unstated = |value: u64| FormatError::InvalidField { field: "header not expressible in version 2", value };
    let (y, z) = match (log2(h.y_shape), log2(h.z_shape)) {
        (Some(y), Some(z)) if y <= z => (y, z),
        _ => return Err(unstated(pw)),
    };
    if (h.pad_right as u64, h.pad_bottom as u64) != (least_pad(h.width, z), least_pad(h.height, z)) {
        return Err(unstated(h.pad_right as u64));
    }
    Ok((y, z))
}

/// The padding that makes `side` a multiple of `2^log2`.
fn least_pad(side: u32, log2: u8) -> u64 {
    (side as u64).wrapping_neg() & ((1u64 << log2) - 1)
}

/// Append `v` as unsigned LEB128 (seven bits a byte, least significant first).
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse only the header (after checking magic, version and CRC); see [`parse`].
pub fn parse_header(bytes: &[u8]) -> Result<Header, FormatError> {
    parse(bytes, &Limits { max_width: u32::MAX, max_height: u32::MAX, max_pixels: u64::MAX, max_memory: u64::MAX })
        .map(|f| f.header)
}

/// Parse and fully validate a `.cae` file of either version. Nothing is allocated.
pub fn parse<'a>(bytes: &'a [u8], limits: &Limits) -> Result<CaeFile<'a>, FormatError> {
    if bytes.len() >= MAGIC.len() && bytes[..4] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if bytes.len() < MIN_FILE_LEN {
        return Err(FormatError::TooShort { len: bytes.len(), min: MIN_FILE_LEN });
    }
    match bytes[4] {
        1 => parse_v1(bytes, limits),
        2 => parse_v2(bytes, limits),
        version => Err(FormatError::UnsupportedVersion { version }),
    }
}

/// Check the CRC32 at the end of `bytes` against the bytes before it.
fn check_crc(bytes: &[u8]) -> Result<(), FormatError> {
    let (body, crc_bytes) = bytes.split_at(bytes.len() - CRC_LEN);
    let (stored, computed) = (be32(crc_bytes, 0), crc32fast::hash(body));
    if stored != computed {
        return Err(FormatError::CrcMismatch { stored, computed });
    }
    Ok(())
}

/// The fields of a version-2 header, read in order. A field in a form the format does not
/// allow (a varint longer than its shortest form, or over 32 bits) is remembered and
/// reported after the length and CRC checks, so that a damaged file says so first.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
    invalid: Option<(&'static str, u64)>,
}

impl Fields<'_> {
    fn byte(&mut self) -> Result<u8, FormatError> {
        // The header never reaches into the CRC.
        let b = *self.bytes[..self.bytes.len() - CRC_LEN]
            .get(self.at)
            .ok_or(FormatError::Truncated { len: self.bytes.len() })?;
        self.at += 1;
        Ok(b)
    }

    /// An unsigned LEB128 value of at most 32 bits, in its shortest form.
    fn varint(&mut self, field: &'static str) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for i in 0..5 {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                if (i > 0 && b == 0) || v > u32::MAX as u64 {
                    self.invalid.get_or_insert((field, v));
                }
                return Ok(v);
            }
        }
        self.invalid.get_or_insert((field, v));
        Ok(v)
    }
}

fn parse_v2<'a>(bytes: &'a [u8], limits: &Limits) -> Result<CaeFile<'a>, FormatError> {
    let mut f = Fields { bytes, at: 13, invalid: None };
    let model_id = u64::from_be_bytes(bytes[5..13].try_into().expect("8 bytes"));
    let quality = f.byte()?;
    let colour_byte = f.byte()?;
    let (width, height) = (f.varint("width")?, f.varint("height")?);
    let strides = f.byte()?;
    let (y_channels, z_channels) = (f.varint("y channels")?, f.varint("z channels")?);
    let colour = ColourType::from_code(colour_byte & 0b11).expect("two bits name a colour type");
    let symbols_len = f.varint("symbols length")?;
    let alpha_len = if colour.has_alpha() { f.varint("alpha length")? } else { 0 };
    let expected = f.at as u64 + symbols_len + alpha_len + CRC_LEN as u64;
    if expected != bytes.len() as u64 {
        return Err(FormatError::LengthMismatch { expected, actual: bytes.len() as u64 });
    }
    check_crc(bytes)?;
    let field = |field: &'static str, value: u64| FormatError::InvalidField { field, value };
    if let Some((name, value)) = f.invalid {
        return Err(field(name, value));
    }
    if colour_byte & !(0b11 | DEPTH_16_BIT) != 0 {
        return Err(field("colour byte", colour_byte as u64));
    }
    let (y_log2, z_log2) = (strides >> 4, strides & 0xf);
    if z_log2 > MAX_STRIDE_LOG2 || y_log2 > z_log2 {
        return Err(field("strides", strides as u64));
    }
    let (width, height) = (width as u32, height as u32);
    let (pad_right, pad_bottom) = (least_pad(width, z_log2), least_pad(height, z_log2));
    let (pw, ph) = (width as u64 + pad_right, height as u64 + pad_bottom);
    let u16_field = |name: &'static str, v: u64| u16::try_from(v).map_err(|_| field(name, v));
    let shape = |channels: u64, log2: u8, name: &'static str| -> Result<LatentShape, FormatError> {
        Ok(LatentShape {
            channels: u16_field(name, channels)?,
            height: u16_field("latent height", ph >> log2)?,
            width: u16_field("latent width", pw >> log2)?,
        })
    };
    let header = Header {
        model_id,
        quality,
        colour,
        bit_depth: if colour_byte & DEPTH_16_BIT != 0 { 16 } else { 8 },
        width,
        height,
        pad_right: pad_right as u8,
        pad_bottom: pad_bottom as u8,
        y_shape: shape(y_channels, y_log2, "y channels")?,
        z_shape: shape(z_channels, z_log2, "z channels")?,
    };
    validate(&header)?;
    check_limits(&header, limits)?;
    let body = &bytes[f.at..bytes.len() - CRC_LEN];
    let (symbols, alpha_stream) = body.split_at(symbols_len as usize);
    Ok(CaeFile { version: 2, header, symbols: Symbols::Joint(symbols), alpha_stream })
}

fn parse_v1<'a>(bytes: &'a [u8], limits: &Limits) -> Result<CaeFile<'a>, FormatError> {
    if bytes.len() < V1_MIN_FILE_LEN {
        return Err(FormatError::TooShort { len: bytes.len(), min: V1_MIN_FILE_LEN });
    }
    // Check the lengths before the CRC so that a truncated file says so.
    let lens = [be32(bytes, 41), be32(bytes, 45), be32(bytes, 49)];
    let expected = V1_MIN_FILE_LEN as u64 + lens.iter().map(|&l| l as u64).sum::<u64>();
    if expected != bytes.len() as u64 {
        return Err(FormatError::LengthMismatch { expected, actual: bytes.len() as u64 });
    }
    check_crc(bytes)?;
    let field = |field: &'static str, value: u64| FormatError::InvalidField { field, value };
    if bytes[5] != 0 {
        return Err(field("flags", bytes[5] as u64));
    }
    if bytes[17] != 0 {
        return Err(field("reserved", bytes[17] as u64));
    }
    if bytes[40] as usize != V1_STREAM_COUNT {
        return Err(field("stream count", bytes[40] as u64));
    }
    let shape = |at: usize| LatentShape {
        channels: be16(bytes, at),
        height: be16(bytes, at + 2),
        width: be16(bytes, at + 4),
    };
    let header = Header {
        model_id: u64::from_be_bytes(bytes[6..14].try_into().expect("8 bytes")),
        quality: bytes[14],
        colour: ColourType::from_code(bytes[15]).ok_or(field("colour type", bytes[15] as u64))?,
        bit_depth: bytes[16],
        width: be32(bytes, 18),
        height: be32(bytes, 22),
        pad_right: bytes[26],
        pad_bottom: bytes[27],
        y_shape: shape(28),
        z_shape: shape(34),
    };
    validate(&header)?;
    check_limits(&header, limits)?;
    if !header.colour.has_alpha() && lens[2] != 0 {
        return Err(field("alpha stream length without alpha", lens[2] as u64));
    }
    let body = &bytes[V1_HEADER_LEN..bytes.len() - CRC_LEN];
    let (z, rest) = body.split_at(lens[0] as usize);
    let (y, alpha_stream) = rest.split_at(lens[1] as usize);
    Ok(CaeFile { version: 1, header, symbols: Symbols::Separate { z, y }, alpha_stream })
}

fn validate(h: &Header) -> Result<(), FormatError> {
    let field = |field: &'static str, value: u64| Err(FormatError::InvalidField { field, value });
    if h.quality == 0 {
        return field("quality", 0);
    }
    if h.bit_depth != 8 && h.bit_depth != 16 {
        return field("bit depth", h.bit_depth as u64);
    }
    if h.width == 0 {
        return field("width", 0);
    }
    if h.height == 0 {
        return field("height", 0);
    }
    for (name, s) in [("y shape", h.y_shape), ("z shape", h.z_shape)] {
        if s.is_empty() {
            return field(name, 0);
        }
    }
    Ok(())
}

fn check_limits(h: &Header, limits: &Limits) -> Result<(), FormatError> {
    let over = |what: &'static str, value: u64, limit: u64| {
        if value > limit { Err(FormatError::LimitExceeded { what, value, limit }) } else { Ok(()) }
    };
    over("width", h.width as u64, limits.max_width as u64)?;
    over("height", h.height as u64, limits.max_height as u64)?;
    over("pixels", h.padded_width() * h.padded_height(), limits.max_pixels)?;
    over("memory", h.decode_memory(), limits.max_memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            model_id: 0x0123_4567_89ab_cdef,
            quality: 3,
            colour: ColourType::Rgba,
            bit_depth: 16,
            width: 67,
            height: 45,
            pad_right: 61,
            pad_bottom: 19,
            y_shape: LatentShape { channels: 96, height: 4, width: 8 },
            z_shape: LatentShape { channels: 64, height: 1, width: 2 },
        }
    }

    fn file() -> Vec<u8> {
        write(&header(), b"zzyyyy", b"alpha").unwrap()
    }

    fn file_v1() -> Vec<u8> {
        write_v1(&header(), b"zz", b"yyyy", b"alpha").unwrap()
    }

    /// Files of both versions, with and without alpha, 8- and 16-bit.
    fn files() -> Vec<Vec<u8>> {
        let rgb = Header { colour: ColourType::Rgb, bit_depth: 8, ..header() };
        vec![file(), file_v1(), write(&rgb, b"s", b"").unwrap(), write_v1(&rgb, b"z", b"y", b"").unwrap()]
    }

    #[test]
    fn memory_estimate_bounds_tiled_decoding() {
        let sized = |w: u32, h: u32| {
            let (pw, ph) = (w.div_ceil(64) as u16 * 64, h.div_ceil(64) as u16 * 64);
            Header {
                width: w,
                height: h,
                pad_right: (pw as u32 - w) as u8,
                pad_bottom: (ph as u32 - h) as u8,
                y_shape: LatentShape { channels: 96, height: ph / 16, width: pw / 16 },
                z_shape: LatentShape { channels: 64, height: ph / 64, width: pw / 64 },
                ..header()
            }
        };
        // A 24-megapixel photo (measured: 582 MiB peak) fits a 1 GiB limit; the estimate
        // grows linearly beyond one tile, so the largest side never fits the default limit.
        assert_eq!(sized(6000, 4000).decode_memory(), 952_178_688);
        assert!(sized(768, 512).decode_memory() < 128 << 20);
        let huge = sized(65_000, 65_000);
        assert!(huge.decode_memory() > Limits::default().max_memory);
        assert!(matches!(
            check_limits(&huge, &Limits { max_pixels: u64::MAX, ..Limits::default() }),
            Err(FormatError::LimitExceeded { what: "memory", .. })
        ));
    }

    #[test]
    fn round_trip() {
        let bytes = file();
        assert_eq!(bytes.len(), 22 + 11 + CRC_LEN);
        let f = parse(&bytes, &Limits::default()).unwrap();
        assert_eq!((f.version, &f.header), (2, &header()));
        assert_eq!((f.symbols, f.alpha_stream), (Symbols::Joint(b"zzyyyy"), &b"alpha"[..]));
        let bytes = file_v1();
        assert_eq!(bytes.len(), V1_MIN_FILE_LEN + 11);
        let f = parse(&bytes, &Limits::default()).unwrap();
        assert_eq!((f.version, &f.header), (1, &header()));
        assert_eq!((f.symbols, f.alpha_stream), (Symbols::Separate { z: b"zz", y: b"yyyy" }, &b"alpha"[..]));
        for bytes in files() {
            assert_eq!(write_file(&parse(&bytes, &Limits::default()).unwrap()).unwrap(), bytes);
        }
    }

    #[test]
    fn golden_header_bytes() {
        let bytes = file();
        let expected_header: [u8; 22] = [
            0x89, b'C', b'A', b'E', 2, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 3, 3 | 4, 67, 45,
            0x46, 96, 64, 6, 5,
        ];
        assert_eq!(&bytes[..22], &expected_header[..]);
        assert_eq!(&bytes[22..33], b"zzyyyyalpha");
        assert_eq!(&bytes[33..], &crc32fast::hash(&bytes[..33]).to_be_bytes());
        let bytes = file_v1();
        let expected_header: [u8; V1_HEADER_LEN] = [
            0x89, b'C', b'A', b'E', 1, 0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 3, 3,
            16, 0, 0, 0, 0, 67, 0, 0, 0, 45, 61, 19, 0, 96, 0, 4, 0, 8, 0, 64, 0, 1, 0, 2, 3, 0,
            0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 5,
        ];
        assert_eq!(&bytes[..V1_HEADER_LEN], &expected_header[..]);
        assert_eq!(&bytes[V1_HEADER_LEN + 11..], &crc32fast::hash(&bytes[..V1_HEADER_LEN + 11]).to_be_bytes());
    }

    #[test]
    fn a_camera_image_has_a_25_byte_header() {
        // 768x512 RGB, 96 and 64 channels, 20,000 bytes of symbols: two-byte varints.
        let h = Header {
            colour: ColourType::Rgb,
            bit_depth: 8,
            width: 768,
            height: 512,
            pad_right: 0,
            pad_bottom: 0,
            y_shape: LatentShape { channels: 96, height: 32, width: 48 },
            z_shape: LatentShape { channels: 64, height: 8, width: 12 },
            ..header()
        };
        let symbols = vec![7u8; 20_000];
        let bytes = write(&h, &symbols, b"").unwrap();
        assert_eq!(bytes.len(), 25 + symbols.len() + CRC_LEN);
        assert_eq!(&bytes[15..20], &[0x80, 0x06, 0x80, 0x04, 0x46]);
        assert_eq!(parse(&bytes, &Limits::default()).unwrap().header, h);
    }

    #[test]
    fn varints_have_one_form() {
        let mut out = Vec::new();
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64] {
            out.clear();
            put_varint(&mut out, v);
            let mut padded = out.clone();
            padded.extend_from_slice(&[0; CRC_LEN]);
            let mut f = Fields { bytes: &padded, at: 0, invalid: None };
            assert_eq!((f.varint("v").unwrap(), f.at, f.invalid), (v, out.len(), None), "{v}");
        }
        // A longer form than needed, a value over 32 bits, a varint running into the CRC.
        for (bytes, ok) in [(&[0x81u8, 0x00][..], false), (&[0x80, 0x80, 0x80, 0x80, 0x10], false), (&[0x80; 5], false), (&[0x81, 0x01], true)] {
            let mut padded = bytes.to_vec();
            padded.extend_from_slice(&[0; CRC_LEN]);
            let mut f = Fields { bytes: &padded, at: 0, invalid: None };
            let _ = f.varint("v");
            assert_eq!(f.invalid.is_none(), ok, "{bytes:?}");
        }
        let mut f = Fields { bytes: &[0x80, 0, 0, 0, 0], at: 0, invalid: None };
        assert!(matches!(f.varint("v"), Err(FormatError::Truncated { .. })));
    }

    #[test]
    fn headers_version_2_cannot_state_are_not_written() {
        let h = header();
        for bad in [
            Header { pad_right: 61 + 64, width: 67 - 64, ..h.clone() },
            Header { y_shape: LatentShape { channels: 96, height: 4, width: 4 }, ..h.clone() },
            Header { z_shape: LatentShape { channels: 64, height: 8, width: 16 }, ..h.clone() },
            Header { width: 66, pad_right: 61, ..h.clone() },
        ] {
            assert!(matches!(write(&bad, b"", b""), Err(FormatError::InvalidField { .. })), "{bad:?}");
        }
        let rgb = Header { colour: ColourType::Rgb, ..h };
        assert!(write(&rgb, b"s", b"alpha").is_err());
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        for bytes in files() {
            for i in 0..bytes.len() * 8 {
                let mut b = bytes.clone();
                b[i / 8] ^= 1 << (i % 8);
                assert!(parse(&b, &Limits::default()).is_err(), "bit {i} flipped was accepted");
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        for bytes in files() {
            for n in 0..bytes.len() {
                assert!(parse(&bytes[..n], &Limits::default()).is_err(), "truncated to {n} accepted");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(parse(&longer, &Limits::default()), Err(FormatError::LengthMismatch { .. })));
        }
    }

    #[test]
    fn specific_errors() {
        assert_eq!(parse(b"hello world", &Limits::default()), Err(FormatError::BadMagic));
        assert_eq!(parse(&MAGIC, &Limits::default()), Err(FormatError::TooShort { len: 4, min: MIN_FILE_LEN }));
        let mut b = file();
        b[4] = 3;
        assert_eq!(parse(&b, &Limits::default()), Err(FormatError::UnsupportedVersion { version: 3 }));
        // A version-2 file read as version 1 is too short for it.
        b[4] = 1;
        assert_eq!(parse(&b, &Limits::default()), Err(FormatError::TooShort { len: b.len(), min: V1_MIN_FILE_LEN }));
        for f in [file(), file_v1()] {
            let tight = Limits { max_width: 66, ..Limits::default() };
            assert!(matches!(
                parse(&f, &tight),
                Err(FormatError::LimitExceeded { what: "width", value: 67, limit: 66 })
            ));
        }
        let fixed = |mut b: Vec<u8>| {
            let n = b.len() - CRC_LEN;
            let crc = crc32fast::hash(&b[..n]);
            b[n..].copy_from_slice(&crc.to_be_bytes());
            b
        };
        // Reserved colour bits, a z stride below the y stride, a stride over 256.
        for (at, v, name) in [(14, 0x0b, "colour byte"), (17, 0x64, "strides"), (17, 0x49, "strides")] {
            let mut b = file();
            b[at] = v;
            assert!(matches!(parse(&fixed(b), &Limits::default()), Err(FormatError::InvalidField { field, .. }) if field == name));
        }
        // A width in a longer form than needed (its length then fixed): one byte form only.
        let mut b = file();
        b.splice(15..16, [67 | 0x80, 0]);
        assert!(matches!(parse(&fixed(b), &Limits::default()), Err(FormatError::InvalidField { field: "width", .. })));
    }

    #[test]
    fn invalid_headers_are_not_written() {
        let mut h = header();
        h.width = 0;
        assert!(write(&h, b"", b"").is_err());
        assert!(write_v1(&h, b"", b"", b"").is_err());
        let mut h = header();
        h.bit_depth = 12;
        assert!(write(&h, b"", b"").is_err());
        assert!(write_v1(&h, b"", b"", b"").is_err());
    }
}

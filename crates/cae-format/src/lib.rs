//! The `.cae` container, format version 1.
//!
//! This crate knows the byte layout of a `.cae` file and nothing about the networks that
//! produce its streams. The layout is specified field by field in `docs/format.md`; in short:
//! a fixed 53-byte big-endian header, three length-prefixed streams (hyper-latent `z`,
//! latent `y`, alpha), and a CRC32 (IEEE) over every preceding byte.
//!
//! [`parse`] checks, in this order and before anything is allocated: the minimum length,
//! the magic bytes, the format version, the CRC, every header field, the decoding
//! [`Limits`], and that the stream lengths add up to the file length exactly.
#![forbid(unsafe_code)]

use std::fmt;

/// The four magic bytes at the start of every `.cae` file.
pub const MAGIC: [u8; 4] = [0x89, b'C', b'A', b'E'];
/// The only format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the first stream.
pub const HEADER_LEN: usize = 53;
/// Bytes of the trailing CRC32.
pub const CRC_LEN: usize = 4;
/// The smallest well-formed file: a header, three empty streams and the CRC.
pub const MIN_FILE_LEN: usize = HEADER_LEN + CRC_LEN;
/// Number of streams, in file order: z, y, alpha.
pub const STREAM_COUNT: usize = 3;

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

/// A parsed `.cae` file borrowing its streams from the input bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaeFile<'a> {
    pub header: Header,
    /// Entropy-coded hyper-latent symbols.
    pub z_stream: &'a [u8],
    /// Entropy-coded latent symbols.
    pub y_stream: &'a [u8],
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
    /// Shorter than the fixed header and CRC.
    TooShort { len: usize },
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
            FormatError::TooShort { len } => write!(
                f,
                "not a .cae file: {len} bytes, shorter than the {MIN_FILE_LEN}-byte minimum"
            ),
            FormatError::BadMagic => write!(f, "not a .cae file: wrong magic bytes"),
            FormatError::UnsupportedVersion { version } => write!(
                f,
                "unsupported .cae format version {version} (this build reads version {FORMAT_VERSION})"
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

/// Serialise a header and its streams into a complete `.cae` file.
///
/// # Panics
/// Never for valid input: streams longer than `u32::MAX` bytes are rejected with an error.
pub fn write(header: &Header, z: &[u8], y: &[u8], alpha: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(MIN_FILE_LEN + z.len() + y.len() + alpha.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
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
    out.push(STREAM_COUNT as u8);
    for s in [z, y, alpha] {
        let len = u32::try_from(s.len()).map_err(|_| FormatError::InvalidField {
            field: "stream length",
            value: s.len() as u64,
        })?;
        out.extend_from_slice(&len.to_be_bytes());
    }
    debug_assert_eq!(out.len(), HEADER_LEN);
    validate(header)?;
    out.extend_from_slice(z);
    out.extend_from_slice(y);
    out.extend_from_slice(alpha);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
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

/// Parse and fully validate a `.cae` file. Nothing is allocated.
pub fn parse<'a>(bytes: &'a [u8], limits: &Limits) -> Result<CaeFile<'a>, FormatError> {
    if bytes.len() >= MAGIC.len() && bytes[..4] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if bytes.len() < MIN_FILE_LEN {
        return Err(FormatError::TooShort { len: bytes.len() });
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { version: bytes[4] });
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = be32(crc_bytes, 0);
    let computed = crc32fast::hash(body);
    // Check the lengths before the CRC so that a truncated file says so.
    let lens = [be32(bytes, 41), be32(bytes, 45), be32(bytes, 49)];
    let expected = MIN_FILE_LEN as u64 + lens.iter().map(|&l| l as u64).sum::<u64>();
    if expected != bytes.len() as u64 {
        return Err(FormatError::LengthMismatch { expected, actual: bytes.len() as u64 });
    }
    if stored != computed {
        return Err(FormatError::CrcMismatch { stored, computed });
    }
    let field = |field: &'static str, value: u64| FormatError::InvalidField { field, value };
    if bytes[5] != 0 {
        return Err(field("flags", bytes[5] as u64));
    }
    if bytes[17] != 0 {
        return Err(field("reserved", bytes[17] as u64));
    }
    if bytes[40] as usize != STREAM_COUNT {
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
    let (z_stream, rest) = body[HEADER_LEN..].split_at(lens[0] as usize);
    let (y_stream, alpha_stream) = rest.split_at(lens[1] as usize);
    Ok(CaeFile { header, z_stream, y_stream, alpha_stream })
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
        write(&header(), b"zz", b"yyyy", b"alpha").unwrap()
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
        assert_eq!(bytes.len(), MIN_FILE_LEN + 11);
        let f = parse(&bytes, &Limits::default()).unwrap();
        assert_eq!(f.header, header());
        assert_eq!((f.z_stream, f.y_stream, f.alpha_stream), (&b"zz"[..], &b"yyyy"[..], &b"alpha"[..]));
    }

    #[test]
    fn golden_header_bytes() {
        let bytes = file();
        let expected_header: [u8; HEADER_LEN] = [
            0x89, b'C', b'A', b'E', 1, 0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 3, 3,
            16, 0, 0, 0, 0, 67, 0, 0, 0, 45, 61, 19, 0, 96, 0, 4, 0, 8, 0, 64, 0, 1, 0, 2, 3, 0,
            0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 5,
        ];
        assert_eq!(&bytes[..HEADER_LEN], &expected_header[..]);
        assert_eq!(&bytes[HEADER_LEN + 11..], &crc32fast::hash(&bytes[..HEADER_LEN + 11]).to_be_bytes());
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let bytes = file();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(parse(&b, &Limits::default()).is_err(), "bit {i} flipped was accepted");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = file();
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n], &Limits::default()).is_err(), "truncated to {n} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(parse(&longer, &Limits::default()), Err(FormatError::LengthMismatch { .. })));
    }

    #[test]
    fn specific_errors() {
        assert_eq!(parse(b"hello world", &Limits::default()), Err(FormatError::BadMagic));
        assert_eq!(parse(&MAGIC, &Limits::default()), Err(FormatError::TooShort { len: 4 }));
        let mut b = file();
        b[4] = 2;
        assert_eq!(parse(&b, &Limits::default()), Err(FormatError::UnsupportedVersion { version: 2 }));
        let tight = Limits { max_width: 66, ..Limits::default() };
        assert!(matches!(
            parse(&file(), &tight),
            Err(FormatError::LimitExceeded { what: "width", value: 67, limit: 66 })
        ));
    }

    #[test]
    fn invalid_headers_are_not_written() {
        let mut h = header();
        h.width = 0;
        assert!(write(&h, b"", b"", b"").is_err());
        let mut h = header();
        h.bit_depth = 12;
        assert!(write(&h, b"", b"", b"").is_err());
    }
}

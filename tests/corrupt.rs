//! Damaged and foreign files must fail with an error, never a panic.

mod common;

use caec::{compress, decompress, Error, Limits, Options};
use image::DynamicImage;

fn small_file() -> Vec<u8> {
    let img = DynamicImage::ImageRgb8(common::synthetic(64, 48, 9));
    compress(&img, &Options::default()).unwrap()
}

#[test]
fn every_truncation_fails() {
    let bytes = small_file();
    for n in 0..bytes.len() {
        assert!(decompress(&bytes[..n], &Limits::default()).is_err(), "truncated to {n} bytes was accepted");
    }
}

#[test]
fn every_single_bit_flip_fails() {
    let bytes = small_file();
    for bit in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(decompress(&b, &Limits::default()).is_err(), "bit {bit} flipped was accepted");
    }
}

/// Rewrite the CRC so that only the semantic checks can catch an edit.
fn with_fixed_crc(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 4;
    let crc = crc32fast_hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_be_bytes());
    b
}

fn crc32fast_hash(bytes: &[u8]) -> u32 {
    // The container's CRC is CRC-32/IEEE; compute it bitwise to stay independent of the crate.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn a_file_naming_another_model_fails() {
    let mut b = small_file();
    b[6] ^= 0x55;
    let b = with_fixed_crc(b);
    assert!(matches!(decompress(&b, &Limits::default()), Err(Error::UnknownModel(_))));
}

#[test]
fn inconsistent_headers_fail() {
    // A version-2 file of 64x48 pixels: quality at byte 13, width 15, height 16, strides 17,
    // y channels 18 (one-byte varints).
    let bytes = small_file();
    assert_eq!((bytes[4], bytes[15], bytes[16], bytes[17]), (2, 64, 48, 0x46));
    let edited = |at: usize, v: u8| {
        let mut b = bytes.clone();
        b[at] = v;
        decompress(&with_fixed_crc(b), &Limits::default())
    };
    // quality beyond the model's levels
    assert!(matches!(edited(13, 200), Err(Error::Quality { .. })));
    // strides (hence padding and latent shapes) other than the model's
    for strides in [0x36, 0x45, 0x56] {
        assert!(matches!(edited(17, strides), Err(Error::Inconsistent(_))), "strides {strides:x}");
    }
    // y channels other than the model's
    assert!(matches!(edited(18, 95), Err(Error::Inconsistent(_))));
    // damaged symbols with a valid CRC: an entropy error or a (wrong) image, never a panic
    let _ = edited(40, bytes[40] ^ 0xff);
}

#[test]
fn inconsistent_version_1_headers_fail() {
    let bytes = common::golden_v1_file("rgb-q1");
    assert_eq!(bytes[4], 1);
    let edited = |at: usize, v: u8| {
        let mut b = bytes.clone();
        b[at] = v;
        decompress(&with_fixed_crc(b), &Limits::default())
    };
    assert!(decompress(&bytes, &Limits::default()).is_ok());
    // quality beyond the model's levels
    assert!(matches!(edited(14, 200), Err(Error::Quality { .. })));
    // padding that does not fit the stride
    assert!(matches!(edited(26, 3), Err(Error::Inconsistent(_))));
    // latent shape not matching the image size
    assert!(matches!(edited(31, bytes[31] ^ 1), Err(Error::Inconsistent(_))));
    // damaged y stream with a valid CRC: an entropy error or a (wrong) image, never a panic
    let at = cae_format::V1_HEADER_LEN + 20;
    let _ = edited(at, bytes[at] ^ 0xff);
}

#[test]
fn random_bytes_fail() {
    let mut x = 0x1234_5678u32;
    for len in [0usize, 1, 4, 56, 57, 58, 100, 1000, 5000] {
        let mut b: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(decompress(&b, &Limits::default()).is_err());
        if len >= 4 {
            b[..4].copy_from_slice(&cae_format::MAGIC);
            assert!(decompress(&b, &Limits::default()).is_err());
        }
    }
}

#[test]
fn limits_are_enforced_before_decoding() {
    let bytes = small_file();
    let tight = Limits { max_pixels: 100, ..Limits::default() };
    assert!(matches!(
        decompress(&bytes, &tight),
        Err(Error::Format(caec::FormatError::LimitExceeded { what: "pixels", .. }))
    ));
}

mod mutations {
    //! Property-based mutation of real files (flips, byte writes, insertions, deletions,
    //! truncations, 32-bit writes over header fields such as sizes, shapes and stream
    //! lengths). `PROPTEST_CASES` sets the number of cases (1000 by default).
    use std::sync::OnceLock;

    use caec::{compress, decompress, Limits, Options};
    use image::{DynamicImage, GrayImage, RgbaImage};
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::{common, with_fixed_crc};

    /// Real files: RGB at the lowest quality, grayscale at the highest, RGBA (with an alpha
    /// stream); and two version-1 files of the golden set (RGB, RGBA).
    fn files() -> &'static [Vec<u8>] {
        static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        FILES.get_or_init(|| {
            let rgb = DynamicImage::ImageRgb8(common::synthetic(64, 48, 2));
            let gray = DynamicImage::ImageLuma8(GrayImage::from_fn(40, 33, |x, y| image::Luma([(x * 5 + y * 3) as u8])));
            let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(37, 20, |x, y| image::Rgba([x as u8 * 6, y as u8 * 9, 90, (x * y) as u8])));
            let levels = caec::load_model("default").unwrap().config.levels() as u8;
            vec![
                compress(&rgb, &Options { quality: 1, ..Options::default() }).unwrap(),
                compress(&gray, &Options { quality: levels, ..Options::default() }).unwrap(),
                compress(&rgba, &Options::default()).unwrap(),
                common::golden_v1_file("rgb-q1"),
                common::golden_v1_file("rgba"),
            ]
        })
    }

    #[derive(Clone, Debug)]
    enum Mutation {
        Flip(Index, u8),
        Set(Index, u8),
        Insert(Index, Vec<u8>),
        Delete(Index, usize),
        Truncate(Index),
        /// A big-endian u32 written over four header bytes.
        HeaderWord(Index, u32),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
            (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
            (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
            (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
            any::<Index>().prop_map(Mutation::Truncate),
            (any::<Index>(), any::<u32>()).prop_map(|(i, v)| Mutation::HeaderWord(i, v)),
        ]
    }

    fn apply(b: &mut Vec<u8>, m: &Mutation) {
        let len = b.len();
        if len == 0 {
            return;
        }
        match m {
            Mutation::Flip(i, bit) => b[i.index(len)] ^= 1 << bit,
            Mutation::Set(i, v) => b[i.index(len)] = *v,
            Mutation::Insert(i, v) => {
                let at = i.index(len + 1);
                b.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i.index(len);
                b.drain(at..(at + n).min(len));
            }
            Mutation::Truncate(i) => b.truncate(i.index(len)),
            Mutation::HeaderWord(i, v) => {
                let span = cae_format::V1_HEADER_LEN.min(len).saturating_sub(3);
                if span > 0 {
                    let at = i.index(span);
                    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), max_global_rejects: 1 << 20, ..ProptestConfig::default() })]

        /// Any change to a file is caught (by the CRC or before it), with an error.
        #[test]
        fn every_mutated_file_is_rejected(file in 0..5usize, muts in prop::collection::vec(mutation(), 1..4)) {
            let original = &files()[file];
            let mut b = original.clone();
            for m in &muts {
                apply(&mut b, m);
            }
            prop_assume!(b != *original);
            prop_assert!(decompress(&b, &Limits::default()).is_err(), "a corrupted file was accepted: {muts:?}");
        }

        /// With the CRC recomputed, only the semantic checks stand between a mutation and the
        /// decoder: the result may be an error or an image, never a panic, and an image has the
        /// size its header gives.
        #[test]
        fn mutated_files_with_a_valid_crc_never_panic(file in 0..5usize, muts in prop::collection::vec(mutation(), 1..3)) {
            let mut b = files()[file].clone();
            for m in &muts {
                apply(&mut b, m);
            }
            prop_assume!(b.len() >= cae_format::MIN_FILE_LEN);
            let b = with_fixed_crc(b);
            let limits = Limits { max_pixels: 1 << 16, ..Limits::default() };
            if let Ok(img) = decompress(&b, &limits) {
                let h = cae_format::parse_header(&b).unwrap();
                prop_assert_eq!((img.width(), img.height()), (h.width, h.height));
            }
        }
    }
}

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
    let bytes = small_file();
    // quality beyond the model's levels
    let mut b = bytes.clone();
    b[14] = 200;
    assert!(matches!(decompress(&with_fixed_crc(b), &Limits::default()), Err(Error::Quality { .. })));
    // padding that does not fit the stride
    let mut b = bytes.clone();
    b[26] = 3;
    assert!(matches!(decompress(&with_fixed_crc(b), &Limits::default()), Err(Error::Inconsistent(_))));
    // latent shape not matching the image size
    let mut b = bytes.clone();
    b[31] ^= 1;
    assert!(matches!(decompress(&with_fixed_crc(b), &Limits::default()), Err(Error::Inconsistent(_))));
    // damaged y stream with a valid CRC: an entropy error or a (wrong) image, never a panic
    let mut b = bytes.clone();
    let at = cae_format::HEADER_LEN + 20;
    b[at] ^= 0xff;
    let _ = decompress(&with_fixed_crc(b), &Limits::default());
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

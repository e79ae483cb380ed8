//! Golden files: committed `.cae` files (tests/golden/) and what they must decode to.
//!
//! Each line of `tests/golden/manifest.txt` names a file, the digest of its entropy-decoded
//! symbols (`caec::Symbols::digest`, exact on every machine) and its size; `NAME.png` beside
//! it holds the pixels it decoded to when it was written, which every later build must
//! reproduce within one level. A change that makes an existing file decode differently must
//! bump the format version and keep decoding the old version as before; a model that wrote a
//! golden file must stay in the model registry (`crates/cae-models`) for good.
//!
//! New golden files (never replacing existing ones) are written by
//! `CAEC_WRITE_GOLDEN=1 cargo test --test golden -- --ignored`.

mod common;

use std::path::{Path, PathBuf};

use caec::{decode_symbols, decompress, Limits};
use image::{DynamicImage, GenericImageView};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

struct Entry {
    name: String,
    symbols: String,
    width: u32,
    height: u32,
}

fn manifest() -> Vec<Entry> {
    let text = std::fs::read_to_string(dir().join("manifest.txt")).expect("tests/golden/manifest.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "manifest line {l:?}: NAME SYMBOLS WxH");
            let (w, h) = f[2].split_once('x').expect("WxH");
            Entry { name: f[0].to_string(), symbols: f[1].to_string(), width: w.parse().unwrap(), height: h.parse().unwrap() }
        })
        .collect()
}

#[test]
fn golden_files_decode_as_they_always_did() {
    let entries = manifest();
    assert!(entries.len() >= 3, "the golden set is missing");
    // Every version this build writes or once wrote is in the set.
    for version in 1..=cae_format::FORMAT_VERSION {
        let count = entries.iter().filter(|e| std::fs::read(dir().join(&e.name)).unwrap()[4] == version).count();
        assert!(count >= 4, "{count} golden files of format version {version}");
    }
    for e in entries {
        let bytes = std::fs::read(dir().join(&e.name)).unwrap();
        let symbols = decode_symbols(&bytes, &Limits::default()).unwrap_or_else(|err| panic!("{}: {err}", e.name));
        assert_eq!(symbols.digest(), e.symbols, "{}: entropy-decoded symbols changed", e.name);
        let img = decompress(&bytes, &Limits::default()).unwrap();
        assert_eq!(img.dimensions(), (e.width, e.height), "{}", e.name);
        let reference = image::open(dir().join(&e.name).with_extension("png")).unwrap();
        assert_eq!(img.color(), reference.color(), "{}: colour type changed", e.name);
        let max = img.as_bytes().iter().zip(reference.as_bytes()).map(|(&a, &b)| a.abs_diff(b)).max().unwrap_or(0);
        assert!(max <= 1, "{}: pixels differ by {max} levels from the reference", e.name);
    }
}

/// A version-2 file holds the same symbols as the version-1 file of the same model, input
/// and quality (the change was the container, not the coding), in fewer bytes: a 21- or 22-byte
/// header instead of 53, one ANS stack instead of two, its last word trimmed.
#[test]
fn version_2_files_hold_version_1_symbols_in_fewer_bytes() {
    let entries = manifest();
    let mut pairs = 0;
    for v2 in entries.iter().filter(|e| e.name.starts_with("v2-")) {
        let Some(v1) = entries.iter().find(|e| e.name == v2.name["v2-".len()..]) else { continue };
        let header = |e: &Entry| cae_format::parse_header(&std::fs::read(dir().join(&e.name)).unwrap()).unwrap();
        // Older grayscale and RGBA files were written at the default quality of their day.
        if header(v1) != header(v2) {
            continue;
        }
        assert_eq!(v1.symbols, v2.symbols, "{}", v2.name);
        let len = |e: &Entry| std::fs::metadata(dir().join(&e.name)).unwrap().len();
        assert!(len(v2) + 31 <= len(v1), "{}: {} bytes against {}", v2.name, len(v2), len(v1));
        pairs += 1;
    }
    // Both RGB files of each of the seven models, and all four of the 2026-11-29 default.
    assert!(pairs >= 2 * 7 + 2, "{pairs} pairs");
}

/// Inputs of the golden set for a model of `levels` quality levels: RGB at the lowest and
/// highest quality, grayscale, RGBA.
fn inputs(levels: u8) -> Vec<(&'static str, DynamicImage, u8)> {
    let rgb = DynamicImage::ImageRgb8(common::synthetic(96, 64, 11));
    let g = common::synthetic(33, 47, 12);
    let gray = DynamicImage::ImageLuma8(image::GrayImage::from_fn(33, 47, |x, y| image::Luma([g.get_pixel(x, y).0[1]])));
    let c = common::synthetic(40, 30, 13);
    let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(40, 30, |x, y| {
        let p = c.get_pixel(x, y).0;
        image::Rgba([p[0], p[1], p[2], (x * 6 + y) as u8])
    }));
    vec![("rgb-q1", rgb.clone(), 1), ("rgb-top", rgb, levels), ("gray", gray, caec::DEFAULT_QUALITY), ("rgba", rgba, caec::DEFAULT_QUALITY)]
}

#[test]
#[ignore = "writes new golden files; run with CAEC_WRITE_GOLDEN=1"]
fn write_new_golden_files() {
    if std::env::var_os("CAEC_WRITE_GOLDEN").is_none() {
        return;
    }
    std::fs::create_dir_all(dir()).unwrap();
    let existing: Vec<String> = if dir().join("manifest.txt").exists() { manifest().into_iter().map(|e| e.name).collect() } else { Vec::new() };
    let mut lines = String::new();
    // Every built-in model that writes files gets its golden files (those it has are kept).
    let models: Vec<_> = caec::model_names().into_iter().map(|n| caec::load_model(n).unwrap()).collect();
    for (model, (stem, img, q)) in models.iter().flat_map(|m| inputs(m.config.levels() as u8).into_iter().map(move |i| (m, i))) {
        // Version-1 files were named STEM-ID.cae; later versions name theirs vN-STEM-ID.cae.
        let name = format!("v{}-{stem}-{:016x}.cae", cae_format::FORMAT_VERSION, model.id);
        if existing.contains(&name) || dir().join(&name).exists() {
            continue;
        }
        let bytes = caec::compress_with(&model, &img, q).unwrap();
        let back = decompress(&bytes, &Limits::default()).unwrap();
        std::fs::write(dir().join(&name), &bytes).unwrap();
        back.save(dir().join(&name).with_extension("png")).unwrap();
        let digest = decode_symbols(&bytes, &Limits::default()).unwrap().digest();
        lines += &format!("{name} {digest} {}x{}\n", img.width(), img.height());
    }
    let path = dir().join("manifest.txt");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# NAME SYMBOLS-SHA256 WxH (see tests/golden.rs)\n".into());
    text += &lines;
    std::fs::write(path, text).unwrap();
}

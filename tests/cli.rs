//! The `caec` binary: round trips through files and pipes, refusal to overwrite, clean
//! errors with non-zero exit codes, and determinism across thread counts.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn caec() -> Command {
    Command::new(env!("CARGO_BIN_EXE_caec"))
}

fn run(args: &[&str]) -> Output {
    caec().args(args).output().expect("caec runs")
}

fn assert_clean_failure(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("caec: error: "), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "stderr: {err}");
}

fn write_png(dir: &Path, name: &str, w: u32, h: u32) -> String {
    let p = dir.join(name);
    common::synthetic(w, h, 4).save(&p).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn compress_decompress_info_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "in.png", 100, 75);
    let cae = dir.path().join("out.cae").to_str().unwrap().to_string();
    let back = dir.path().join("back.png").to_str().unwrap().to_string();
    assert!(run(&["compress", &png, &cae]).status.success());
    assert!(run(&["decompress", &cae, &back]).status.success());
    let img = image::open(&back).unwrap();
    assert_eq!((img.width(), img.height()), (100, 75));
    assert!(caec::psnr(&image::open(&png).unwrap(), &img) > 25.0);
    let info = run(&["info", &cae]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success());
    assert!(text.contains("100x75") && text.contains("bpp:") && text.contains("(default)"), "{text}");
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn stdin_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "in.png", 64, 64);
    let input = std::fs::read(&png).unwrap();
    let mut child = caec().args(["compress", "-", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(&out.stdout[..4], &cae_format::MAGIC);
    let mut child = caec().args(["decompress", "-", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let back = child.wait_with_output().unwrap();
    assert!(back.status.success());
    let img = image::load_from_memory(&back.stdout).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
}

#[test]
fn never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "in.png", 40, 30);
    let cae = dir.path().join("out.cae");
    std::fs::write(&cae, b"precious").unwrap();
    let out = run(&["compress", &png, cae.to_str().unwrap()]);
    assert_clean_failure(&out, "already exists");
    assert_eq!(std::fs::read(&cae).unwrap(), b"precious");
    assert!(run(&["compress", &png, cae.to_str().unwrap(), "--force"]).status.success());
    assert_eq!(&std::fs::read(&cae).unwrap()[..4], &cae_format::MAGIC);
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.cae");
    std::fs::write(&junk, b"this is not a cae file at all, not even close..............").unwrap();
    let out_png = dir.path().join("x.png");
    assert_clean_failure(&run(&["decompress", junk.to_str().unwrap(), out_png.to_str().unwrap()]), "junk.cae");
    assert!(!out_png.exists());
    assert_clean_failure(&run(&["info", junk.to_str().unwrap()]), "not a .cae file");
    assert_clean_failure(&run(&["compress", junk.to_str().unwrap(), out_png.to_str().unwrap()]), "junk.cae");
    assert_clean_failure(&run(&["compress", "/nonexistent/a.png", out_png.to_str().unwrap()]), "/nonexistent/a.png");
    let png = write_png(dir.path(), "in.png", 20, 20);
    let cae = dir.path().join("q.cae");
    assert_clean_failure(&run(&["compress", &png, cae.to_str().unwrap(), "-q", "99"]), "quality 99");
    assert!(!cae.exists());
    // A truncated real file.
    assert!(run(&["compress", &png, cae.to_str().unwrap()]).status.success());
    let bytes = std::fs::read(&cae).unwrap();
    std::fs::write(&junk, &bytes[..bytes.len() - 3]).unwrap();
    assert_clean_failure(&run(&["decompress", junk.to_str().unwrap(), out_png.to_str().unwrap()]), "truncated");
    // One flipped bit.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    std::fs::write(&junk, &flipped).unwrap();
    assert_clean_failure(&run(&["decompress", junk.to_str().unwrap(), out_png.to_str().unwrap()]), "CRC32");
    assert!(!out_png.exists());
}

/// Decoding the same file with one and with two threads gives identical symbols, and
/// pixels within one level.
#[test]
fn decoding_is_deterministic_across_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "in.png", 200, 130);
    let cae = dir.path().join("d.cae");
    assert!(run(&["compress", &png, cae.to_str().unwrap()]).status.success());
    let digest = |threads: &str| {
        let out = caec().args(["digest", cae.to_str().unwrap()]).env("RAYON_NUM_THREADS", threads).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let (one, two) = (digest("1"), digest("2"));
    assert_eq!(one.lines().next(), two.lines().next(), "symbols differ between 1 and 2 threads");
    let decode = |threads: &str, name: &str| {
        let p = dir.path().join(name);
        let out = caec()
            .args(["decompress", cae.to_str().unwrap(), p.to_str().unwrap()])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(out.status.success());
        image::open(p).unwrap().to_rgb8()
    };
    let (a, b) = (decode("1", "t1.png"), decode("2", "t2.png"));
    let max = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (x as i32 - y as i32).abs()).max().unwrap();
    assert!(max <= 1, "pixels differ by {max} levels between 1 and 2 threads");
}

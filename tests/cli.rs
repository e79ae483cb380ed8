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
    // No cause said twice in a row ("image: X: X").
    let parts: Vec<&str> = err.trim_end().split(": ").collect();
    assert!(parts.windows(2).all(|w| w[0] != w[1]), "a cause repeated: {err}");
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
    let cmp = String::from_utf8(run(&["compare", &png, &back]).stdout).unwrap();
    let fields: Vec<&str> = cmp.split_whitespace().collect();
    assert_eq!((fields[0], fields[2], fields[4]), ("psnr", "max_diff", "ms_ssim"), "{cmp}");
    let (p, ms): (f64, f64) = (fields[1].parse().unwrap(), fields[5].parse().unwrap());
    assert!(p > 25.0 && ms > 0.8 && ms < 1.0, "{cmp}");
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn target_bpp_chooses_a_quality_and_conflicts_with_quality() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "in.png", 128, 96);
    let cae = dir.path().join("t.cae").to_str().unwrap().to_string();
    let out = run(&["compress", "--target-bpp", "100", &png, &cae]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let levels = caec::load_model("default").unwrap().config.levels();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("chose quality {levels}")));
    let info = String::from_utf8_lossy(&run(&["info", &cae]).stdout).to_string();
    assert!(info.contains(&format!("quality:     {levels}")), "{info}");
    let both = run(&["compress", "-q", "2", "--target-bpp", "1", &png, "-"]);
    assert!(!both.status.success() && both.stdout.is_empty());
    let bad = run(&["compress", "--target-psnr", "0", &png, "-"]);
    assert_eq!(bad.status.code(), Some(1), "{}", String::from_utf8_lossy(&bad.stderr));
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

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn batch_mode_goes_on_past_bad_files_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("photos");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    write_png(&src, "a.png", 40, 30);
    write_png(&src.join("sub"), "b.png", 33, 17);
    std::fs::write(src.join("broken.png"), b"not a png").unwrap();
    std::fs::write(src.join("notes.txt"), b"not an image, skipped").unwrap();
    let single = write_png(dir.path(), "c.png", 20, 20);
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();

    let r = run(&["compress", src.to_str().unwrap(), &single, "-o", o]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("broken.png") && err.contains("3 of 4 files compressed") && err.contains("1 failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(tree(&out), ["a.cae", "c.cae", "sub/b.cae"]);
    let before = std::fs::read(out.join("a.cae")).unwrap();

    // Again without --force: every output exists, nothing is replaced, the command fails.
    let r = run(&["compress", src.join("a.png").to_str().unwrap(), "-o", o]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("already exists"));
    assert_eq!(std::fs::read(out.join("a.cae")).unwrap(), before);

    // Decompress the folder back; an output may never replace an input.
    let back = dir.path().join("back");
    let r = run(&["decompress", o, "-o", back.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(tree(&back), ["a.png", "c.png", "sub/b.png"]);
    let b = image::open(back.join("sub/b.png")).unwrap();
    assert_eq!((b.width(), b.height()), (33, 17));
    let r = run(&["compress", src.join("a.png").to_str().unwrap(), "-o", src.to_str().unwrap()]);
    assert!(r.status.success(), "a.cae beside a.png is not an input");
    // Compressing x.cae into its own folder would replace the input: refused even with --force.
    let x = dir.path().join("x.cae");
    std::fs::copy(out.join("a.cae"), &x).unwrap();
    let r = run(&["compress", x.to_str().unwrap(), "--force", "-o", dir.path().to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("is an input"), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&x).unwrap(), before);
    let r = run(&["compress", "-", "-o", o]);
    assert_clean_failure(&r, "standard input");
}

#[cfg(unix)]
#[test]
fn an_interrupted_batch_leaves_only_complete_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        write_png(&src, &format!("{i:02}.png"), 256, 192);
    }
    let out = dir.path().join("out");
    let mut child = caec()
        .args(["compress", src.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The output folder appears once the handler is installed and the work has started.
    let t0 = std::time::Instant::now();
    while !out.exists() && t0.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    let files = tree(&out);
    assert_eq!(status.code(), Some(130), "interrupted: {files:?}");
    assert!(files.len() < 40, "{files:?}");
    for f in &files {
        assert!(f.ends_with(".cae"), "leftover {f}");
        let bytes = std::fs::read(out.join(f)).unwrap();
        caec::decompress(&bytes, &caec::Limits::default()).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

#[test]
fn models_are_listed_and_chosen_by_name() {
    let out = run(&["models"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let names = caec::model_names();
    assert_eq!(names[0], caec::DEFAULT_MODEL);
    assert_eq!(text.lines().count(), names.len(), "{text}");
    assert!(text.lines().next().unwrap().starts_with("default (default): id "), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "in.png", 40, 30);
    for name in &names {
        // Every built-in model codes; the file names it and decodes without being told.
        let cae = dir.path().join(format!("{name}.cae")).to_str().unwrap().to_string();
        assert!(run(&["compress", "--model", name, &png, &cae]).status.success());
        let info = String::from_utf8(run(&["info", &cae]).stdout).unwrap();
        assert!(info.contains(&format!("({name})")), "{info}");
        // Without -q, each model codes at its own level nearest λ = 0.0067.
        let q = caec::load_model(name).unwrap().default_quality();
        assert!(info.contains(&format!("quality:     {q}\n")), "{name}: {info}");
        if *name == caec::DEFAULT_MODEL {
            assert_eq!(q, caec::DEFAULT_QUALITY);
        }
        let back = dir.path().join(format!("{name}.png")).to_str().unwrap().to_string();
        assert!(run(&["decompress", &cae, &back]).status.success());
    }
    let cae = dir.path().join("x.cae").to_str().unwrap().to_string();
    assert_clean_failure(&run(&["compress", "--model", "nonesuch", &png, &cae]), "nonesuch");
}

#[test]
fn embed_cluster_anomaly_interpolate() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for (i, seed) in [1, 2, 3].iter().enumerate() {
        common::synthetic(64, 48, *seed).save(imgs.join(format!("smooth{i}.png"))).unwrap();
    }
    let mut state = 7u32;
    image::RgbImage::from_fn(64, 48, |_, _| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        image::Rgb([(state >> 24) as u8, (state >> 16) as u8, (state >> 8) as u8])
    })
    .save(imgs.join("noise.png"))
    .unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let imgs = imgs.to_str().unwrap().to_string();
    let m = caec::load_model(caec::DEFAULT_MODEL).unwrap().config.m;

    assert!(run(&["embed", &imgs, "-o", &p("e.csv")]).status.success());
    let e = std::fs::read_to_string(p("e.csv")).unwrap();
    assert_eq!(e.lines().count(), 4);
    assert!(e.lines().all(|l| l.split(',').count() == 1 + 2 * m), "{e}");
    assert_clean_failure(&run(&["embed", &imgs, "-o", &p("e.csv")]), "already exists");

    assert!(run(&["cluster", &p("e.csv"), "-k", "2", "-o", &p("c.csv")]).status.success());
    let c = std::fs::read_to_string(p("c.csv")).unwrap();
    let clusters: Vec<(String, usize)> =
        c.lines().map(|l| l.rsplit_once(',').map(|(n, k)| (n.to_string(), k.parse().unwrap())).unwrap()).collect();
    assert_eq!(clusters.len(), 4);
    // The noise image is alone in its cluster.
    let noise = clusters.iter().find(|(n, _)| n.ends_with("noise.png")).unwrap().1;
    assert_eq!(clusters.iter().filter(|(_, k)| *k == noise).count(), 1, "{c}");
    assert_clean_failure(&run(&["cluster", &p("e.csv"), "-k", "5", "-o", &p("c5.csv")]), "k = 5");

    let a = run(&["anomaly", &imgs]);
    let text = String::from_utf8_lossy(&a.stdout);
    assert!(a.status.success());
    let first = text.lines().nth(1).unwrap();
    assert!(first.starts_with("1 ") && first.ends_with("noise.png"), "{text}");

    let smooth0 = format!("{imgs}/smooth0.png");
    let smooth1 = format!("{imgs}/smooth1.png");
    assert!(run(&["interpolate", &smooth0, &smooth1, "--steps", "3", "-o", &p("row.png")]).status.success());
    let row = image::open(p("row.png")).unwrap();
    assert_eq!((row.width(), row.height()), (3 * 64, 48));
    let noise_path = format!("{imgs}/noise.png");
    let small = p("small.png");
    common::synthetic(10, 10, 1).save(&small).unwrap();
    assert_clean_failure(&run(&["interpolate", &noise_path, &small, "-o", &p("x.png")]), "one size");

    assert!(run(&["sample", "-n", "2", "--width", "64", "--height", "40", "-o", &p("s.png")]).status.success());
    let s = image::open(p("s.png")).unwrap();
    assert_eq!((s.width(), s.height()), (128, 40));
    assert_clean_failure(&run(&["sample", "-n", "2", "-q", "99", "-o", &p("s9.png")]), "quality");
}

#[test]
fn denoise_removes_gaussian_noise() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // A generated picture, and Kodak's kodim23 when the corpus is there.
    let mut cases = vec![("synthetic", image::DynamicImage::ImageRgb8(common::synthetic(160, 120, 5)), 3.0)];
    if let Some(k) = common::kodak("kodim23.png") {
        cases.push(("kodim23", k, 3.0));
    }
    for (name, clean, min_gain) in cases {
        let noisy = caec::add_noise(&clean, 15.0, 1);
        let (inp, out) = (p(&format!("{name}-noisy.png")), p(&format!("{name}-out.png")));
        noisy.save(&inp).unwrap();
        let r = run(&["denoise", &inp, &out]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let back = image::open(&out).unwrap();
        let (before, after) = (caec::psnr(&clean, &noisy), caec::psnr(&clean, &back));
        assert!(after > before + min_gain, "{name}: PSNR {before:.2} dB noisy, {after:.2} dB denoised");
        assert_clean_failure(&run(&["denoise", &inp, &out]), "already exists");
    }
    assert_clean_failure(&run(&["denoise", &p("missing.png"), &p("x.png")]), "missing.png");
}

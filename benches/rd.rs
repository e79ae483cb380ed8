//! Rate–distortion of caec against PNG, JPEG and WebP on a folder of images (`cargo bench
//! --bench rd`; Kodak by default).
//!
//! Every image is coded by every codec at each of its points; bits per pixel come from the
//! actual bytes (caec: the whole `.cae` file, header included), PSNR (RGB) and MS-SSIM (5
//! scales, mean of R, G, B; `caec::metrics::ms_ssim`, checked against the iqa crate) from the
//! decoded 8-bit output. Codecs:
//! - `caec`: every quality of the built-in default model;
//! - `jpeg`: libjpeg-turbo's baseline coding (mozjpeg's library in its libjpeg-compatible mode),
//!   quality 5..95 step 5, 4:2:0 — the curve the published `jpeg` anchors use;
//! - `mozjpeg`: mozjpeg's own profile (progressive, trellis quantisation), same qualities
//!   (only when named in `CAEC_RD_CODECS`);
//! - `jpeg-image`: the `image` crate's JPEG encoder, same qualities;
//! - `webp`: libwebp lossy, quality 5..95 step 5;
//! - `png`: lossless, best compression (bpp only; PSNR is infinite).
//!
//! Environment:
//! - `CAEC_RD_IMAGES`: folder of images (default `$CAEC_CORPUS/kodak`; without either, two
//!   generated 256x192 images);
//! - `CAEC_RD_QUICK=1`: the smoke test `.ci/run` runs: 2 images, 3 points per codec; fails if
//!   any codec errors or any metric is NaN;
//! - `CAEC_RD_CODECS`: which codecs, comma-separated (default all but `mozjpeg`);
//! - `CAEC_RD_OUT`: output folder (default `target/rd`, or `target/rd-quick` in quick mode);
//! - `CAEC_RD_MODEL`: a `.caem` file (from `caec-train`) to measure instead of the built-in
//!   default model, e.g. a candidate before it is embedded;
//! - `CAEC_RD_ANCHORS`: published RD points (default `$CAEC_CORPUS/../anchors/kodak_rd.csv`),
//!   drawn dashed in the plots and used for BD-rates against the published curves.
//!
//! Output: `per_image.csv`, `mean.csv`, `bd_rate.csv`, `table.md`, `rd_psnr.{svg,png}`,
//! `rd_ms_ssim.{svg,png}`; the table is also printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use caec::metrics::{bd_rate, ms_ssim, ms_ssim_db, RdPoint};
use image::{DynamicImage, RgbImage};
use rayon::prelude::*;

const CSV_HEADER: &str = "codec,quality,image,width,height,bytes,bpp,psnr,ms_ssim,encode_s,decode_s";

/// One coded image.
#[derive(Clone, Debug)]
struct Row {
    codec: &'static str,
    quality: u32,
    image: String,
    width: u32,
    height: u32,
    bytes: usize,
    psnr: f64,
    ms_ssim: f64,
    encode_s: f64,
    decode_s: f64,
}

impl Row {
    fn bpp(&self) -> f64 {
        self.bytes as f64 * 8.0 / (self.width as f64 * self.height as f64)
    }
}

/// Mean over the images of one codec point.
#[derive(Clone, Debug)]
struct Mean {
    codec: &'static str,
    quality: u32,
    bpp: f64,
    psnr: f64,
    ms_ssim: f64,
    encode_s: f64,
    decode_s: f64,
}

/// A codec under test: its name, its points and how to code one image at one point
/// (returns the bytes, the decoded image, encode and decode seconds).
struct Codec {
    name: &'static str,
    points: Vec<u32>,
    run: Box<dyn Fn(&RgbImage, u32) -> Result<Coded>>,
}

struct Coded {
    bytes: usize,
    decoded: RgbImage,
    encode_s: f64,
    decode_s: f64,
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

/// The codecs named in `CAEC_RD_CODECS` (comma-separated), else all but `mozjpeg`.
fn codecs(quick: bool) -> Result<Vec<Codec>> {
    let all = all_codecs(quick)?;
    let wanted = std::env::var("CAEC_RD_CODECS").unwrap_or_else(|_| "caec,jpeg,jpeg-image,webp,png".into());
    let wanted: Vec<&str> = wanted.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if let Some(unknown) = wanted.iter().find(|w| !all.iter().any(|c| c.name == **w)) {
        bail!("CAEC_RD_CODECS: unknown codec {unknown:?} (known: caec, jpeg, mozjpeg, jpeg-image, webp, png)");
    }
    Ok(all.into_iter().filter(|c| wanted.contains(&c.name)).collect())
}

fn all_codecs(quick: bool) -> Result<Vec<Codec>> {
    let model = match std::env::var_os("CAEC_RD_MODEL") {
        Some(path) => {
            let bytes = std::fs::read(&path).with_context(|| format!("CAEC_RD_MODEL {}", path.display()))?;
            caec::load_model_bytes("candidate", &bytes).with_context(|| format!("CAEC_RD_MODEL {}", path.display()))?
        }
        None => caec::load_model("default").map_err(|e| anyhow!("built-in model: {e}"))?,
    };
    let levels = model.config.levels() as u32;
    let caec_points: Vec<u32> = if quick { vec![1, levels.div_ceil(2).max(1), levels] } else { (1..=levels).collect() };
    let qualities: Vec<u32> = if quick { vec![25, 50, 75] } else { (5..=95).step_by(5).collect() };
    let limits = caec::Limits::default();
    Ok(vec![
        Codec {
            name: "caec",
            points: caec_points,
            run: Box::new(move |img, q| {
                let input = DynamicImage::ImageRgb8(img.clone());
                let (bytes, encode_s) = timed(|| Ok(caec::compress_with(&model, &input, q as u8)?))?;
                let (out, decode_s) = timed(|| Ok(caec::decompress_with(&model, &bytes, &limits)?))?;
                Ok(Coded { bytes: bytes.len(), decoded: out.to_rgb8(), encode_s, decode_s })
            }),
        },
        Codec { name: "jpeg", points: qualities.clone(), run: Box::new(|img, q| mozjpeg_code(img, q, true)) },
        Codec { name: "mozjpeg", points: qualities.clone(), run: Box::new(|img, q| mozjpeg_code(img, q, false)) },
        Codec { name: "jpeg-image", points: qualities.clone(), run: Box::new(image_jpeg_code) },
        Codec { name: "webp", points: qualities, run: Box::new(webp_code) },
        Codec { name: "png", points: vec![100], run: Box::new(|img, _| png_code(img)) },
    ])
}

/// JPEG through mozjpeg's library: `libjpeg_like` selects libjpeg-turbo's baseline coding
/// (`set_fastest_defaults`), otherwise mozjpeg's own profile. 4:2:0 in both. libjpeg reports
/// errors by unwinding, hence `catch_unwind`.
fn mozjpeg_code(img: &RgbImage, q: u32, libjpeg_like: bool) -> Result<Coded> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (jpg, encode_s) = timed(|| {
        std::panic::catch_unwind(|| -> std::io::Result<Vec<u8>> {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            if libjpeg_like {
                c.set_fastest_defaults();
            }
            c.set_size(w, h);
            c.set_quality(q as f32);
            c.set_chroma_sampling_pixel_sizes((2, 2), (2, 2));
            let mut s = c.start_compress(Vec::new())?;
            s.write_scanlines(img.as_raw())?;
            s.finish()
        })
        .map_err(|_| anyhow!("libjpeg failed to encode"))?
        .context("mozjpeg encode")
    })?;
    let (px, decode_s) = timed(|| {
        std::panic::catch_unwind(|| -> std::io::Result<Vec<u8>> {
            let mut d = mozjpeg::Decompress::new_mem(&jpg)?.rgb()?;
            let px: Vec<u8> = d.read_scanlines()?;
            d.finish()?;
            Ok(px)
        })
        .map_err(|_| anyhow!("libjpeg failed to decode"))?
        .context("mozjpeg decode")
    })?;
    let decoded = RgbImage::from_raw(w as u32, h as u32, px).ok_or_else(|| anyhow!("mozjpeg: wrong decoded size"))?;
    Ok(Coded { bytes: jpg.len(), decoded, encode_s, decode_s })
}

fn image_jpeg_code(img: &RgbImage, q: u32) -> Result<Coded> {
    let (jpg, encode_s) = timed(|| {
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, q as u8).encode_image(img)?;
        Ok(buf)
    })?;
    let (out, decode_s) = timed(|| Ok(image::load_from_memory_with_format(&jpg, image::ImageFormat::Jpeg)?))?;
    Ok(Coded { bytes: jpg.len(), decoded: out.to_rgb8(), encode_s, decode_s })
}

fn webp_code(img: &RgbImage, q: u32) -> Result<Coded> {
    let (bytes, encode_s) = timed(|| {
        webp::Encoder::from_rgb(img.as_raw(), img.width(), img.height())
            .encode_simple(false, q as f32)
            .map(|m| m.to_vec())
            .map_err(|e| anyhow!("libwebp encode: {e:?}"))
    })?;
    let (px, decode_s) = timed(|| {
        let d = webp::Decoder::new(&bytes).decode().ok_or_else(|| anyhow!("libwebp decode failed"))?;
        if d.is_alpha() {
            bail!("libwebp decoded RGBA from RGB input");
        }
        Ok(d.to_vec())
    })?;
    let decoded = RgbImage::from_raw(img.width(), img.height(), px).ok_or_else(|| anyhow!("webp: wrong decoded size"))?;
    Ok(Coded { bytes: bytes.len(), decoded, encode_s, decode_s })
}

fn png_code(img: &RgbImage) -> Result<Coded> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let (bytes, encode_s) = timed(|| {
        let mut buf = Vec::new();
        img.write_with_encoder(PngEncoder::new_with_quality(&mut buf, CompressionType::Best, FilterType::Adaptive))?;
        Ok(buf)
    })?;
    let (out, decode_s) = timed(|| Ok(image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)?))?;
    Ok(Coded { bytes: bytes.len(), decoded: out.to_rgb8(), encode_s, decode_s })
}

/// The images to code: sorted by name.
fn load_images(quick: bool) -> Result<Vec<(String, RgbImage)>> {
    let dir = std::env::var_os("CAEC_RD_IMAGES")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CAEC_CORPUS").map(|c| Path::new(&c).join("kodak")));
    let mut images = Vec::new();
    match dir {
        Some(dir) => {
            let mut paths = caec::image_files(&dir).with_context(|| format!("{}: cannot list", dir.display()))?;
            if quick {
                paths.truncate(2);
            }
            for p in paths {
                let img = image::open(&p).with_context(|| format!("{}", p.display()))?;
                let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                images.push((name, img.to_rgb8()));
            }
            if images.is_empty() {
                bail!("{}: no images", dir.display());
            }
        }
        None => {
            eprintln!("rd: neither CAEC_RD_IMAGES nor CAEC_CORPUS is set: using two generated images");
            for (i, f) in [0.05f32, 0.13].into_iter().enumerate() {
                let img = RgbImage::from_fn(256, 192, |x, y| {
                    let v = ((x as f32 * f).sin() * (y as f32 * 0.07).cos() * 70.0 + 128.0) as u8;
                    image::Rgb([v, (x as u8).wrapping_mul(3) / 2, (y / 2) as u8 + 40])
                });
                images.push((format!("generated{i}"), img));
            }
        }
    }
    Ok(images)
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench` (and filters): the run is the same whatever they are.
    let quick = std::env::var("CAEC_RD_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let out = std::env::var_os("CAEC_RD_OUT").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        target.join(if quick { "rd-quick" } else { "rd" })
    });
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let images = load_images(quick)?;
    let codecs = codecs(quick)?;
    let total: usize = codecs.iter().map(|c| c.points.len()).sum::<usize>() * images.len();
    eprintln!("rd: {} images x {} codec points = {total} codings -> {}", images.len(), total / images.len(), out.display());

    let started = Instant::now();
    let mut rows = Vec::with_capacity(total);
    let mut failures = Vec::new();
    for (name, img) in &images {
        // Coding runs one at a time, so that the times are those of an idle machine; the
        // metrics (MS-SSIM is the slow part) then run in parallel.
        let mut coded = Vec::new();
        for codec in &codecs {
            for &q in &codec.points {
                match (codec.run)(img, q) {
                    Ok(c) if c.decoded.dimensions() != img.dimensions() => failures.push(format!(
                        "{} q{q} {name}: decoded {}x{}, expected {}x{}",
                        codec.name,
                        c.decoded.width(),
                        c.decoded.height(),
                        img.width(),
                        img.height()
                    )),
                    Ok(c) => coded.push((codec.name, q, c)),
                    Err(e) => failures.push(format!("{} q{q} {name}: {e:#}", codec.name)),
                }
            }
        }
        let original = DynamicImage::ImageRgb8(img.clone());
        let measured: Vec<Result<Row, String>> = coded
            .into_par_iter()
            .map(|(codec, q, c)| {
                let psnr = caec::psnr(&original, &DynamicImage::ImageRgb8(c.decoded.clone()));
                let ms = ms_ssim(img, &c.decoded).ok_or_else(|| format!("{codec} q{q} {name}: no MS-SSIM for this size"))?;
                if psnr.is_nan() || ms.is_nan() {
                    return Err(format!("{codec} q{q} {name}: NaN metric (PSNR {psnr}, MS-SSIM {ms})"));
                }
                Ok(Row {
                    codec,
                    quality: q,
                    image: name.clone(),
                    width: img.width(),
                    height: img.height(),
                    bytes: c.bytes,
                    psnr,
                    ms_ssim: ms,
                    encode_s: c.encode_s,
                    decode_s: c.decode_s,
                })
            })
            .collect();
        for m in measured {
            match m {
                Ok(row) => rows.push(row),
                Err(e) => failures.push(e),
            }
        }
        eprintln!("rd: {name} done ({:.0} s)", started.elapsed().as_secs_f64());
    }

    let means = mean_points(&rows);
    let anchors = load_anchors();
    let bd = bd_rates(&means, &anchors);
    write_outputs(&out, &rows, &means, &bd)?;
    let table = markdown(&means, &bd, images.len(), started.elapsed().as_secs_f64());
    std::fs::write(out.join("table.md"), &table)?;
    println!("{table}");
    match plots(&out, &means, &anchors) {
        Ok(()) => eprintln!("rd: plots in {}", out.display()),
        Err(e) => eprintln!("rd: no plots: {e:#}"),
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("rd: FAILED {f}");
        }
        bail!("{} of {total} codings failed", failures.len());
    }
    Ok(())
}

/// Mean of each (codec, quality) point over the images; PSNR is the mean of per-image PSNR.
fn mean_points(rows: &[Row]) -> Vec<Mean> {
    let mut groups: BTreeMap<(&'static str, u32), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        groups.entry((r.codec, r.quality)).or_default().push(r);
    }
    let order = |c: &str| ["caec", "jpeg", "mozjpeg", "jpeg-image", "webp", "png"].iter().position(|&n| n == c).unwrap_or(99);
    let mut means: Vec<Mean> = groups
        .into_iter()
        .map(|((codec, quality), rs)| {
            let n = rs.len() as f64;
            let avg = |f: &dyn Fn(&Row) -> f64| rs.iter().map(|r| f(r)).sum::<f64>() / n;
            Mean {
                codec,
                quality,
                bpp: avg(&|r| r.bpp()),
                psnr: avg(&|r| r.psnr),
                ms_ssim: avg(&|r| r.ms_ssim),
                encode_s: avg(&|r| r.encode_s),
                decode_s: avg(&|r| r.decode_s),
            }
        })
        .collect();
    means.sort_by_key(|m| (order(m.codec), m.quality));
    means
}

/// Published points, by codec name: (bpp, PSNR, MS-SSIM).
type Anchors = BTreeMap<String, Vec<(f64, f64, f64)>>;

fn load_anchors() -> Anchors {
    let path = std::env::var_os("CAEC_RD_ANCHORS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CAEC_CORPUS").map(|c| Path::new(&c).join("../anchors/kodak_rd.csv")));
    let mut anchors = Anchors::new();
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return anchors;
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if let [codec, _, bpp, psnr, ms, ..] = f[..] {
            if let (Ok(b), Ok(p)) = (bpp.parse(), psnr.parse()) {
                anchors.entry(codec.to_string()).or_default().push((b, p, ms.parse().unwrap_or(f64::NAN)));
            }
        }
    }
    anchors
}

/// One BD-rate figure: caec against `anchor`, over `metric`.
struct Bd {
    anchor: String,
    metric: &'static str,
    value: Option<f64>,
}

fn bd_rates(means: &[Mean], anchors: &Anchors) -> Vec<Bd> {
    let curve = |codec: &str, metric: &str| -> Vec<RdPoint> {
        means
            .iter()
            .filter(|m| m.codec == codec)
            .map(|m| RdPoint { bpp: m.bpp, db: if metric == "psnr" { m.psnr } else { ms_ssim_db(m.ms_ssim) } })
            .collect()
    };
    let mut out = Vec::new();
    for metric in ["psnr", "ms_ssim"] {
        let ours = curve("caec", metric);
        for base in ["jpeg", "mozjpeg", "jpeg-image", "webp"] {
            out.push(Bd { anchor: base.to_string(), metric, value: bd_rate(&curve(base, metric), &ours) });
        }
        for (name, pts) in anchors.iter().filter(|(n, _)| ["jpeg", "webp", "bpg444"].contains(&n.as_str())) {
            let published: Vec<RdPoint> = pts
                .iter()
                .map(|&(bpp, psnr, ms)| RdPoint { bpp, db: if metric == "psnr" { psnr } else { ms_ssim_db(ms) } })
                .collect();
            out.push(Bd { anchor: format!("published {name}"), metric, value: bd_rate(&published, &ours) });
        }
    }
    out
}

fn write_outputs(out: &Path, rows: &[Row], means: &[Mean], bd: &[Bd]) -> Result<()> {
    let mut s = format!("{CSV_HEADER}\n");
    for r in rows {
        writeln!(
            s,
            "{},{},{},{},{},{},{:.6},{:.4},{:.6},{:.6},{:.6}",
            r.codec, r.quality, r.image, r.width, r.height, r.bytes, r.bpp(), r.psnr, r.ms_ssim, r.encode_s, r.decode_s
        )?;
    }
    std::fs::write(out.join("per_image.csv"), s)?;
    let mut s = String::from("codec,quality,bpp,psnr,ms_ssim,encode_s,decode_s\n");
    for m in means {
        writeln!(s, "{},{},{:.6},{:.4},{:.6},{:.6},{:.6}", m.codec, m.quality, m.bpp, m.psnr, m.ms_ssim, m.encode_s, m.decode_s)?;
    }
    std::fs::write(out.join("mean.csv"), s)?;
    let mut s = String::from("codec,anchor,metric,bd_rate\n");
    for b in bd {
        writeln!(s, "caec,{},{},{}", b.anchor, b.metric, b.value.map_or("".into(), |v| format!("{v:.5}")))?;
    }
    std::fs::write(out.join("bd_rate.csv"), s)?;
    Ok(())
}

fn markdown(means: &[Mean], bd: &[Bd], images: usize, seconds: f64) -> String {
    let mut s = format!("## Rate–distortion on {images} images ({seconds:.0} s)\n\n");
    s += "| codec | quality | bpp | PSNR (dB) | MS-SSIM | encode (s) | decode (s) |\n|---|---:|---:|---:|---:|---:|---:|\n";
    for m in means {
        let _ = writeln!(
            s,
            "| {} | {} | {:.4} | {:.2} | {:.4} | {:.4} | {:.4} |",
            m.codec, m.quality, m.bpp, m.psnr, m.ms_ssim, m.encode_s, m.decode_s
        );
    }
    s += "\n### BD-rate of caec (negative = fewer bits than the anchor at equal quality)\n\n";
    s += "| anchor | PSNR | MS-SSIM |\n|---|---:|---:|\n";
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:+.1} %", v * 100.0));
    let names: Vec<&String> = bd.iter().filter(|b| b.metric == "psnr").map(|b| &b.anchor).collect();
    for name in names {
        let get = |metric: &str| bd.iter().find(|b| &b.anchor == name && b.metric == metric).and_then(|b| b.value);
        let _ = writeln!(s, "| {name} | {} | {} |", fmt(get("psnr")), fmt(get("ms_ssim")));
    }
    s
}

fn plots(out: &Path, means: &[Mean], anchors: &Anchors) -> Result<()> {
    use cae_plot::{palette, Curve, Panel, Style};
    for (metric, label, y_range) in [("psnr", "PSNR RGB (dB)", 22.0..40.0), ("ms_ssim", "MS-SSIM (RGB mean)", 0.80..1.0)] {
        let value = |psnr: f64, ms: f64| if metric == "psnr" { psnr } else { ms };
        let mut curves = Vec::new();
        // Published JPEG and WebP in the colours of the measured ones, so that the two can be
        // compared at a glance.
        let codecs = [("caec", 0), ("jpeg", 1), ("mozjpeg", 8), ("jpeg-image", 7), ("webp", 2)];
        for (codec, colour) in codecs {
            let points: Vec<(f64, f64)> =
                means.iter().filter(|m| m.codec == codec).map(|m| (m.bpp, value(m.psnr, m.ms_ssim))).collect();
            if !points.is_empty() {
                curves.push(Curve { name: codec.to_string(), points, style: Style::LineDots, colour: palette(colour) });
            }
        }
        let shown = [("jpeg", 1), ("webp", 2), ("bpg444", 3), ("bmshj2018-factorized-mse", 5), ("mbt2018-mean-mse", 6)];
        for (name, colour) in shown {
            if let Some(pts) = anchors.get(name) {
                let points: Vec<(f64, f64)> = pts.iter().map(|&(b, p, m)| (b, value(p, m))).filter(|p| p.1.is_finite()).collect();
                curves.push(Curve { name: format!("{name} (published)"), points, style: Style::Dashed, colour: palette(colour) });
            }
        }
        let panel = Panel {
            title: format!("Rate-distortion: {label} vs bits per pixel"),
            x_label: "bits per pixel".into(),
            y_label: label.into(),
            x_range: 0.0..2.0,
            y_range,
            curves,
        };
        let png = out.join(format!("rd_{metric}.png"));
        cae_plot::save(&[panel], (960, 640), &png, Some(&out.join(format!("rd_{metric}.svg"))))
            .with_context(|| png.display().to_string())?;
    }
    Ok(())
}

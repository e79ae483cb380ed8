//! The `caec` command line: a thin layer over the library.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "caec", version, about = "A learned image codec: convolutional autoencoder with a hyperprior")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct LimitArgs {
    /// Refuse files wider than this.
    #[arg(long, default_value_t = caec::Limits::default().max_width)]
    max_width: u32,
    /// Refuse files taller than this.
    #[arg(long, default_value_t = caec::Limits::default().max_height)]
    max_height: u32,
    /// Refuse files with more pixels than this.
    #[arg(long, default_value_t = caec::Limits::default().max_pixels)]
    max_pixels: u64,
    /// Refuse files whose decoding needs more memory than this many MiB.
    #[arg(long, default_value_t = caec::Limits::default().max_memory >> 20)]
    max_memory_mib: u64,
}

impl LimitArgs {
    fn limits(&self) -> caec::Limits {
        caec::Limits {
            max_width: self.max_width,
            max_height: self.max_height,
            max_pixels: self.max_pixels,
            max_memory: self.max_memory_mib.saturating_mul(1 << 20),
        }
    }
}

/// Where a command writes its one output file (CSV or PNG).
#[derive(clap::Args, Debug)]
struct OutputArgs {
    /// The file to write (- for standard output).
    #[arg(short, long)]
    out: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(short, long)]
    force: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compress an image (PNG, JPEG, WebP, BMP, TIFF, PNM) into a .cae file; with --out-dir,
    /// any number of images and folders (searched recursively) into one folder.
    Compress {
        /// IN OUT: input image and output .cae file (- for standard input / output).
        /// With --out-dir: the images and folders to compress.
        #[arg(required = true, num_args = 1.., value_name = "PATHS")]
        paths: Vec<PathBuf>,
        /// Batch mode: write DIR/<name>.cae for every input, in parallel, going on past bad
        /// files (the exit code says whether any failed).
        #[arg(short = 'o', long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Quality level (1 = smallest file; the model's number of levels = best quality).
        /// Default: the model's level nearest λ = 0.0067 (4 of the default model's six).
        #[arg(short, long)]
        quality: Option<u8>,
        /// Choose the quality instead: the best one whose file has at most this many bits
        /// per pixel (the lowest if none fits).
        #[arg(long, value_name = "BPP", conflicts_with_all = ["quality", "target_psnr"])]
        target_bpp: Option<f64>,
        /// Choose the quality instead: the smallest file whose PSNR (RGB) reaches this many dB
        /// (the best quality if none does).
        #[arg(long, value_name = "DB", conflicts_with_all = ["quality", "target_bpp"])]
        target_psnr: Option<f64>,
        /// Overwrite the output if it exists.
        #[arg(short, long)]
        force: bool,
        /// The built-in model to code with (`caec models` lists them); files name their model,
        /// so decompression needs no such option.
        #[arg(short, long, default_value = caec::DEFAULT_MODEL)]
        model: String,
    },
    /// Decompress a .cae file into an image (format from the output's extension; PNG for -);
    /// with --out-dir, any number of .cae files and folders into PNGs in one folder.
    Decompress {
        /// IN OUT: input .cae file and output image (- for standard input / PNG on standard
        /// output). With --out-dir: the .cae files and folders to decompress.
        #[arg(required = true, num_args = 1.., value_name = "PATHS")]
        paths: Vec<PathBuf>,
        /// Batch mode: write DIR/<name>.png for every input, in parallel, going on past bad
        /// files (the exit code says whether any failed).
        #[arg(short = 'o', long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Overwrite the output if it exists.
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List the built-in models: name, identifier, quality levels.
    Models,
    /// One fixed-length vector per image (mean and spread of each latent channel, 2·M values),
    /// as CSV: path, then the values.
    Embed {
        /// Images and folders (searched recursively).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
        #[arg(short, long, default_value = caec::DEFAULT_MODEL)]
        model: String,
    },
    /// k-means on the vectors of an `embed` CSV; writes path,cluster.
    Cluster {
        /// A CSV written by `caec embed`.
        embeddings: PathBuf,
        /// Number of clusters.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Rank images by how unusual they are to the model: bits per pixel of their .cae file
    /// (the model's negative log-likelihood) and reconstruction error (MSE, 8-bit levels).
    Anomaly {
        /// Images and folders (searched recursively).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Quality level; default: the model's level nearest λ = 0.0067.
        #[arg(short, long)]
        quality: Option<u8>,
        #[arg(short, long, default_value = caec::DEFAULT_MODEL)]
        model: String,
    },
    /// Decode points on the line between two images' latents; writes them side by side.
    Interpolate {
        a: PathBuf,
        b: PathBuf,
        /// Images in the row, both ends included.
        #[arg(long, default_value_t = 8)]
        steps: usize,
        #[command(flatten)]
        output: OutputArgs,
        #[arg(short, long, default_value = caec::DEFAULT_MODEL)]
        model: String,
    },
    /// Draw images from the model's learned prior (z from the factorized density, y from the
    /// hyperprior's Gaussians, decoded); writes them side by side.
    Sample {
        /// How many images.
        #[arg(short, long, default_value_t = 4)]
        n: usize,
        #[arg(long, default_value_t = 256)]
        width: u32,
        #[arg(long, default_value_t = 256)]
        height: u32,
        /// Quality level; default: the model's level nearest λ = 0.0067.
        #[arg(short, long)]
        quality: Option<u8>,
        /// Seed of the first image (the others use the next seeds).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        output: OutputArgs,
        #[arg(short, long, default_value = caec::DEFAULT_MODEL)]
        model: String,
    },
    /// Remove noise from a photo with a model trained on noisy inputs (a denoising
    /// autoencoder; the built-in `denoise` model learned Gaussian noise of σ = 15 levels).
    Denoise {
        /// The noisy image (- for standard input).
        input: PathBuf,
        /// The denoised image (format from the extension; PNG for -).
        output: PathBuf,
        /// Quality level of the model to code at (higher keeps more detail).
        #[arg(short, long, default_value_t = caec::DENOISE_QUALITY)]
        quality: u8,
        #[arg(short, long, default_value = caec::DENOISE_MODEL)]
        model: String,
        /// Overwrite the output if it exists.
        #[arg(short, long)]
        force: bool,
    },
    /// Show the header of a .cae file.
    Info {
        /// The .cae file, or - for standard input.
        file: PathBuf,
    },
    /// Compare two images of the same size: PSNR (RGB, 8-bit), largest difference and
    /// MS-SSIM (RGB mean; n/a under 11 pixels a side) of B against A.
    Compare {
        /// The reference image.
        a: PathBuf,
        /// The image to measure.
        b: PathBuf,
    },
    /// Print digests of a file's entropy-decoded symbols and decoded pixels (determinism checks).
    #[command(hide = true)]
    Digest { file: PathBuf },
}

fn is_std(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn read_input(p: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if is_std(p) {
        std::io::stdin().read_to_end(&mut buf).context("standard input")?;
    } else {
        buf = std::fs::read(p).with_context(|| p.display().to_string())?;
    }
    Ok(buf)
}

/// Write atomically: a temporary file beside the output, renamed into place. Without
/// `force`, an existing output is never replaced (even one created meanwhile).
fn write_output(p: &Path, bytes: &[u8], force: bool) -> Result<()> {
    if is_std(p) {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).and_then(|()| out.flush()).context("standard output")?;
        return Ok(());
    }
    let name = p.display().to_string();
    if !force && p.exists() {
        bail!("{name}: already exists (use --force to overwrite)");
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let _guard = WriteGuard::enter();
    let mut tmp = tempfile::Builder::new().prefix(".caec-").suffix(".tmp").tempfile_in(dir).with_context(|| name.clone())?;
    tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()).with_context(|| name.clone())?;
    // Temporary files are private (0600); the output gets the usual mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    let persisted = if force { tmp.persist(p).map(|_| ()) } else { tmp.persist_noclobber(p).map(|_| ()) };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!("{name}: already exists (use --force to overwrite)")
        } else {
            anyhow!("{name}: {}", e.error)
        }
    })
}

/// Fail before any work when the output exists and `force` is not given (`write_output`
/// checks again when it writes, in case the file appeared meanwhile).
fn refuse_existing(p: &Path, force: bool) -> Result<()> {
    if !force && !is_std(p) && p.exists() {
        bail!("{}: already exists (use --force to overwrite)", p.display());
    }
    Ok(())
}

/// Set by Ctrl-C / SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);
/// Temporary output files that exist right now.
static WRITING: AtomicUsize = AtomicUsize::new(0);

/// Marks the lifetime of a temporary output file. An interrupt exits at once when no
/// temporary file exists, else as soon as the last one has been renamed into place or
/// removed, so an interrupted run leaves only complete files.
struct WriteGuard;

impl WriteGuard {
    fn enter() -> Self {
        WRITING.fetch_add(1, Ordering::SeqCst);
        WriteGuard
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        // The temporary file is gone by now (renamed, or removed by its own drop, which runs
        // before this guard's because it was created after it).
        if WRITING.fetch_sub(1, Ordering::SeqCst) == 1 && STOP.load(Ordering::SeqCst) {
            std::process::exit(INTERRUPTED);
        }
    }
}

const INTERRUPTED: i32 = 130;

fn on_interrupt() {
    STOP.store(true, Ordering::SeqCst);
    if WRITING.load(Ordering::SeqCst) == 0 {
        std::process::exit(INTERRUPTED);
    }
}

/// The two positional paths of the one-file form.
fn in_out(paths: &[PathBuf]) -> Result<(&Path, &Path)> {
    match paths {
        [input, output] => Ok((input.as_path(), output.as_path())),
        _ => bail!("expected IN OUT (or several inputs with --out-dir DIR), got {} paths", paths.len()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Compress,
    Decompress,
}

impl Kind {
    /// Whether a file found in a searched folder is an input of this kind.
    fn wants(self, p: &Path) -> bool {
        match self {
            Kind::Compress => caec::is_image_path(p),
            Kind::Decompress => p.extension().is_some_and(|e| e.eq_ignore_ascii_case("cae")),
        }
    }

    fn out_extension(self) -> &'static str {
        match self {
            Kind::Compress => "cae",
            Kind::Decompress => "png",
        }
    }
}

/// Files under `dir`, recursively, sorted; `rel` is their path relative to `dir`.
fn walk(dir: &Path, rel: &Path, kind: Kind, out: &mut Vec<(PathBuf, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = rel.join(e.file_name());
        if path.is_dir() {
            walk(&path, &rel, kind, out)?;
        } else if kind.wants(&path) {
            out.push((path, rel));
        }
    }
    Ok(())
}

/// Batch mode: every input file (folders searched recursively) to `out_dir`, keeping the
/// folder structure below each folder given, in parallel; failures are reported and
/// counted, and make the command fail at the end.
fn batch(
    inputs: &[PathBuf],
    out_dir: &Path,
    kind: Kind,
    force: bool,
    job: impl Fn(&Path, &Path) -> Result<String> + Sync,
) -> Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    use rayon::prelude::*;
    let mut files = Vec::new();
    for p in inputs {
        if is_std(p) {
            bail!("- (standard input) cannot be used with --out-dir");
        }
        if p.is_dir() {
            walk(p, Path::new(""), kind, &mut files)?;
        } else {
            let name = p.file_name().ok_or_else(|| anyhow!("{}: not a file name", p.display()))?;
            files.push((p.clone(), PathBuf::from(name)));
        }
    }
    if files.is_empty() {
        bail!("no input files found");
    }
    std::fs::create_dir_all(out_dir).with_context(|| out_dir.display().to_string())?;
    let canonical_inputs: std::collections::HashSet<PathBuf> =
        files.iter().filter_map(|(p, _)| std::fs::canonicalize(p).ok()).collect();
    let mut seen = std::collections::HashSet::new();
    let jobs: Vec<(PathBuf, PathBuf)> = files
        .into_iter()
        .map(|(input, rel)| (input, out_dir.join(rel.with_extension(kind.out_extension()))))
        .collect();

    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} files, ETA {eta} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    // Outputs that would collide with another job's output or overwrite an input fail
    // before any work starts.
    let checked: Vec<(PathBuf, PathBuf, Option<String>)> = jobs
        .into_iter()
        .map(|(input, output)| {
            let problem = if !seen.insert(output.clone()) {
                Some(format!("{}: another input has the same output name", output.display()))
            } else if std::fs::canonicalize(&output).is_ok_and(|c| canonical_inputs.contains(&c)) {
                Some(format!("{}: is an input; not overwriting it", output.display()))
            } else {
                None
            };
            (input, output, problem)
        })
        .collect();
    let failures: Vec<String> = checked
        .par_iter()
        .filter_map(|(input, output, problem)| {
            let result = match problem {
                Some(p) => Err(anyhow!("{p}")),
                None => {
                    if let Some(parent) = output.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    if !force && output.exists() {
                        Err(anyhow!("{}: already exists (use --force to overwrite)", output.display()))
                    } else {
                        job(input.as_path(), output.as_path())
                    }
                }
            };
            bar.inc(1);
            match result {
                Ok(summary) => {
                    bar.set_message(format!("{}: {summary}", input.display()));
                    None
                }
                Err(e) => {
                    let msg = format!("{}: {}", input.display(), one_line(&e));
                    bar.suspend(|| eprintln!("caec: error: {msg}"));
                    Some(msg)
                }
            }
        })
        .collect();
    bar.finish_and_clear();
    let total = checked.len();
    let verb = if kind == Kind::Compress { "compressed" } else { "decompressed" };
    eprintln!("caec: {} of {total} files {verb} into {}, {} failed", total - failures.len(), out_dir.display(), failures.len());
    if !failures.is_empty() {
        bail!("{} of {total} files failed", failures.len());
    }
    Ok(())
}

/// Every image named or found (recursively) in the folders named.
fn image_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            files.extend(caec::image_files(p).with_context(|| label(p))?);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        bail!("no images found");
    }
    Ok(files)
}

/// Images of one size in a row.
fn side_by_side(images: &[image::DynamicImage]) -> image::DynamicImage {
    let (w, h) = (images[0].width(), images[0].height());
    let mut row = image::RgbImage::new(w * images.len() as u32, h);
    for (i, img) in images.iter().enumerate() {
        image::imageops::replace(&mut row, &img.to_rgb8(), (i as u32 * w) as i64, 0);
    }
    image::DynamicImage::ImageRgb8(row)
}

/// Write an image in the format its extension names (PNG for - and unknown extensions).
fn write_image(p: &Path, image: &image::DynamicImage, force: bool) -> Result<()> {
    let format = if is_std(p) { image::ImageFormat::Png } else { image::ImageFormat::from_path(p).unwrap_or(image::ImageFormat::Png) };
    let mut buf = std::io::Cursor::new(Vec::new());
    image.write_to(&mut buf, format).with_context(|| label(p))?;
    write_output(p, buf.get_ref(), force)
}

fn load_image(p: &Path) -> Result<image::DynamicImage> {
    caec::read_image(&read_input(p)?).with_context(|| label(p))
}

/// A path as a CSV field (quoted when it holds a comma or a quote).
fn csv_field(p: &Path) -> String {
    let s = p.display().to_string();
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// Split a CSV line into its first field (unquoted) and the rest.
fn split_csv_line(line: &str) -> Result<(String, &str)> {
    if let Some(rest) = line.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    let tail = rest[i + 1..].strip_prefix(',').ok_or_else(|| anyhow!("no values after the name"))?;
                    return Ok((format!("\"{}\"", name.replace('"', "\"\"")), tail));
                }
            } else {
                name.push(c);
            }
        }
        bail!("unterminated quote");
    }
    let (name, rest) = line.split_once(',').ok_or_else(|| anyhow!("no values after the name"))?;
    Ok((name.to_string(), rest))
}

fn label(p: &Path) -> String {
    if is_std(p) { "<stdin>".into() } else { p.display().to_string() }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compress { paths, out_dir, quality, target_bpp, target_psnr, force, model } => {
            let target = target_bpp.map(caec::Target::Bpp).or(target_psnr.map(caec::Target::Psnr));
            let model = caec::load_model(&model)?;
            let quality = quality.unwrap_or_else(|| model.default_quality());
            let job = |input: &Path, output: &Path| -> Result<String> {
                let bytes = read_input(input)?;
                let image = caec::read_image(&bytes).with_context(|| label(input))?;
                let (out, q) = match target {
                    None => (caec::compress_with(&model, &image, quality).with_context(|| label(input))?, quality),
                    Some(t) => caec::compress_to_target(&model, &image, t).with_context(|| label(input))?,
                };
                write_output(output, &out, force)?;
                let bpp = out.len() as f64 * 8.0 / (image.width() as f64 * image.height() as f64);
                Ok(format!("quality {q}, {bpp:.3} bpp"))
            };
            match out_dir {
                Some(dir) => batch(&paths, &dir, Kind::Compress, force, job),
                None => {
                    let (input, output) = in_out(&paths)?;
                    refuse_existing(output, force)?;
                    let summary = job(input, output)?;
                    if target.is_some() {
                        eprintln!("caec: chose {summary}");
                    }
                    Ok(())
                }
            }
        }
        Command::Decompress { paths, out_dir, force, limits } => {
            let limits = limits.limits();
            let job = |input: &Path, output: &Path| -> Result<String> {
                let bytes = read_input(input)?;
                let image = caec::decompress(&bytes, &limits).with_context(|| label(input))?;
                write_image(output, &image, force)?;
                Ok(format!("{}x{}", image.width(), image.height()))
            };
            match out_dir {
                Some(dir) => batch(&paths, &dir, Kind::Decompress, force, job),
                None => {
                    let (input, output) = in_out(&paths)?;
                    refuse_existing(output, force)?;
                    job(input, output).map(|_| ())
                }
            }
        }
        Command::Models => {
            for name in caec::model_names() {
                let m = caec::load_model(name)?;
                let default = if name == caec::DEFAULT_MODEL { " (default)" } else { "" };
                println!("{name}{default}: id {:016x}, {} quality levels, N = {}, M = {}", m.id, m.config.levels(), m.config.n, m.config.m);
            }
            Ok(())
        }
        Command::Embed { inputs, output: OutputArgs { out, force }, model } => {
            let model = caec::load_model(&model)?;
            let files = image_inputs(&inputs)?;
            let bar = indicatif::ProgressBar::new(files.len() as u64);
            let mut csv = String::new();
            for f in &files {
                let v = caec::embed(&model, &load_image(f)?).with_context(|| label(f))?;
                let values: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
                csv += &format!("{},{}\n", csv_field(f), values.join(","));
                bar.inc(1);
            }
            bar.finish_and_clear();
            write_output(&out, csv.as_bytes(), force)?;
            eprintln!("caec: {} embeddings of {} values in {}", files.len(), 2 * model.config.m, out.display());
            Ok(())
        }
        Command::Cluster { embeddings, k, output: OutputArgs { out, force } } => {
            let text = String::from_utf8(read_input(&embeddings)?).with_context(|| label(&embeddings))?;
            let mut names = Vec::new();
            let mut points = Vec::new();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let (name, values) = split_csv_line(line).with_context(|| format!("{} line {}", label(&embeddings), i + 1))?;
                let v: Vec<f32> = values
                    .split(',')
                    .map(|x| x.trim().parse::<f32>())
                    .collect::<std::result::Result<_, _>>()
                    .with_context(|| format!("{} line {}: not numbers", label(&embeddings), i + 1))?;
                names.push(name);
                points.push(v);
            }
            let clusters = cae_seed::eval::kmeans(&points, k, 4).map_err(|e| anyhow!("{}: {e}", label(&embeddings)))?;
            let csv: String = names.iter().zip(&clusters).map(|(n, c)| format!("{n},{c}\n")).collect();
            write_output(&out, csv.as_bytes(), force)?;
            let mut sizes = vec![0usize; k];
            clusters.iter().for_each(|&c| sizes[c] += 1);
            eprintln!("caec: {} points in {k} clusters of {sizes:?}", names.len());
            Ok(())
        }
        Command::Anomaly { inputs, quality, model } => {
            let model = caec::load_model(&model)?;
            let quality = quality.unwrap_or_else(|| model.default_quality());
            let files = image_inputs(&inputs)?;
            let bar = indicatif::ProgressBar::new(files.len() as u64);
            let mut scores = Vec::new();
            for f in &files {
                scores.push((caec::anomaly_score(&model, &load_image(f)?, quality).with_context(|| label(f))?, f));
                bar.inc(1);
            }
            bar.finish_and_clear();
            scores.sort_by(|a, b| b.0.bpp.total_cmp(&a.0.bpp));
            println!("rank bpp mse path");
            for (i, (s, f)) in scores.iter().enumerate() {
                println!("{} {:.4} {:.2} {}", i + 1, s.bpp, s.mse, f.display());
            }
            Ok(())
        }
        Command::Interpolate { a, b, steps, output: OutputArgs { out, force }, model } => {
            let model = caec::load_model(&model)?;
            let path = caec::interpolate(&model, &load_image(&a)?, &load_image(&b)?, steps)?;
            write_image(&out, &side_by_side(&path), force)
        }
        Command::Sample { n, width, height, quality, seed, output: OutputArgs { out, force }, model } => {
            if n == 0 {
                bail!("-n 0: nothing to draw");
            }
            let model = caec::load_model(&model)?;
            let quality = quality.unwrap_or_else(|| model.default_quality());
            let images = (0..n as u64).map(|k| caec::sample(&model, width, height, quality, seed + k)).collect::<caec::Result<Vec<_>>>()?;
            write_image(&out, &side_by_side(&images), force)
        }
        Command::Denoise { input, output, quality, model, force } => {
            refuse_existing(&output, force)?;
            let model = caec::load_model(&model)?;
            let clean = caec::denoise(&model, &load_image(&input)?, quality).with_context(|| label(&input))?;
            write_image(&output, &clean, force)
        }
        Command::Info { file } => {
            let bytes = read_input(&file)?;
            let i = caec::info(&bytes).with_context(|| label(&file))?;
            let h = &i.header;
            println!("file:        {}", label(&file));
            println!("size:        {}x{} ({}, {}-bit source{})", h.width, h.height, h.colour.name(), h.bit_depth,
                if h.bit_depth > 8 { ", decoded as 8-bit" } else { "" });
            println!("bytes:       {} (latents {}, alpha {}, header and CRC {}; format version {})", i.file_bytes,
                i.symbol_bytes, i.alpha_bytes, i.file_bytes - i.symbol_bytes - i.alpha_bytes, i.version);
            println!("bpp:         {:.4}", i.bpp());
            println!("quality:     {}", h.quality);
            println!("model:       {:016x} ({})", h.model_id, i.model_name.unwrap_or("not in this build"));
            println!("padding:     {} right, {} bottom", h.pad_right, h.pad_bottom);
            println!("latents:     y {}x{}x{}, z {}x{}x{}", h.y_shape.channels, h.y_shape.height, h.y_shape.width,
                h.z_shape.channels, h.z_shape.height, h.z_shape.width);
            Ok(())
        }
        Command::Compare { a, b } => {
            let load = |p: &Path| -> Result<image::DynamicImage> {
                caec::read_image(&read_input(p)?).with_context(|| label(p))
            };
            let (ia, ib) = (load(&a)?, load(&b)?);
            if (ia.width(), ia.height()) != (ib.width(), ib.height()) {
                bail!("{} is {}x{} but {} is {}x{}", label(&a), ia.width(), ia.height(), label(&b), ib.width(), ib.height());
            }
            let (ra, rb) = (ia.to_rgb8(), ib.to_rgb8());
            let max = ra.as_raw().iter().zip(rb.as_raw()).map(|(&x, &y)| x.abs_diff(y)).max().unwrap_or(0);
            let ms_ssim = caec::metrics::ms_ssim(&ra, &rb).map_or("n/a".to_string(), |v| format!("{v:.6}"));
            println!("psnr {:.4} max_diff {max} ms_ssim {ms_ssim}", caec::psnr(&ia, &ib));
            Ok(())
        }
        Command::Digest { file } => {
            use sha2::{Digest, Sha256};
            let bytes = read_input(&file)?;
            let limits = caec::Limits::default();
            let s = caec::decode_symbols(&bytes, &limits).with_context(|| label(&file))?;
            println!("symbols {}", s.digest());
            let img = caec::decompress(&bytes, &limits).with_context(|| label(&file))?;
            println!("pixels {:x}", Sha256::digest(img.as_bytes()));
            Ok(())
        }
    }
}

/// An error and its causes on one line, `outer: cause: …`, leaving out a cause whose text the
/// line already ends with (the library's errors say their cause in their own message, and
/// the image decoder's do too: "image: X: X" would repeat it).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line = format!("{line}: {text}");
        }
    }
    line
}

fn main() -> ExitCode {
    // A panic is a bug, but the user still gets one line and an exit code, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("caec: internal error (please report): {msg}");
    }));
    let cli = Cli::parse();
    if let Err(e) = ctrlc::set_handler(on_interrupt) {
        eprintln!("caec: warning: cannot catch interrupts: {e}");
    }
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("caec: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::from(2),
    }
}

//! The `caec` command line: a thin layer over the library.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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

#[derive(Subcommand, Debug)]
enum Command {
    /// Compress an image (PNG, JPEG, WebP, BMP, TIFF, PNM) into a .cae file.
    Compress {
        /// Input image, or - for standard input.
        input: PathBuf,
        /// Output .cae file, or - for standard output.
        output: PathBuf,
        /// Quality level (1 = smallest file; the model's number of levels = best quality).
        #[arg(short, long, default_value_t = caec::DEFAULT_QUALITY)]
        quality: u8,
        /// Overwrite the output if it exists.
        #[arg(short, long)]
        force: bool,
    },
    /// Decompress a .cae file into an image (format from the output's extension; PNG for -).
    Decompress {
        /// Input .cae file, or - for standard input.
        input: PathBuf,
        /// Output image, or - for PNG on standard output.
        output: PathBuf,
        /// Overwrite the output if it exists.
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Show the header of a .cae file.
    Info {
        /// The .cae file, or - for standard input.
        file: PathBuf,
    },
    /// Compare two images of the same size: PSNR (RGB, 8-bit) of B against A.
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

fn label(p: &Path) -> String {
    if is_std(p) { "<stdin>".into() } else { p.display().to_string() }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compress { input, output, quality, force } => {
            if !force && !is_std(&output) && output.exists() {
                bail!("{}: already exists (use --force to overwrite)", output.display());
            }
            let bytes = read_input(&input)?;
            let image = caec::read_image(&bytes).with_context(|| label(&input))?;
            let options = caec::Options { quality, ..caec::Options::default() };
            let out = caec::compress(&image, &options).with_context(|| label(&input))?;
            write_output(&output, &out, force)
        }
        Command::Decompress { input, output, force, limits } => {
            if !force && !is_std(&output) && output.exists() {
                bail!("{}: already exists (use --force to overwrite)", output.display());
            }
            let bytes = read_input(&input)?;
            let image = caec::decompress(&bytes, &limits.limits()).with_context(|| label(&input))?;
            let format = if is_std(&output) {
                image::ImageFormat::Png
            } else {
                image::ImageFormat::from_path(&output).unwrap_or(image::ImageFormat::Png)
            };
            let mut buf = std::io::Cursor::new(Vec::new());
            image.write_to(&mut buf, format).with_context(|| label(&output))?;
            write_output(&output, buf.get_ref(), force)
        }
        Command::Info { file } => {
            let bytes = read_input(&file)?;
            let i = caec::info(&bytes).with_context(|| label(&file))?;
            let h = &i.header;
            println!("file:        {}", label(&file));
            println!("size:        {}x{} ({}, {}-bit source{})", h.width, h.height, h.colour.name(), h.bit_depth,
                if h.bit_depth > 8 { ", decoded as 8-bit" } else { "" });
            println!("bytes:       {} (z {}, y {}, alpha {}, header and CRC {})", i.file_bytes, i.z_bytes, i.y_bytes,
                i.alpha_bytes, cae_format::MIN_FILE_LEN);
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
            println!("psnr {:.4} max_diff {max}", caec::psnr(&ia, &ib));
            Ok(())
        }
        Command::Digest { file } => {
            use sha2::{Digest, Sha256};
            let bytes = read_input(&file)?;
            let limits = caec::Limits::default();
            let s = caec::decode_symbols(&bytes, &limits).with_context(|| label(&file))?;
            let mut h = Sha256::new();
            for v in s.z.iter().chain(&s.y) {
                h.update(v.to_le_bytes());
            }
            for t in &s.y_tables {
                h.update(t.to_le_bytes());
            }
            println!("symbols {:x}", h.finalize());
            let img = caec::decompress(&bytes, &limits).with_context(|| label(&file))?;
            println!("pixels {:x}", Sha256::digest(img.as_bytes()));
            Ok(())
        }
    }
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
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("caec: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::from(2),
    }
}

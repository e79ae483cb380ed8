//! `caec-train`: learns a caec model from folders of images and exports it in the
//! embeddable form (f16 weights, integer hyper-synthesis, integer probability tables).

use caec_train::adam::FusedAdam;
use caec_train::{data, net, plot};

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::optim::GradientsParams;
use burn::prelude::*;
use cae_nn::ModelConfig;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug, serde::Serialize)]
#[command(version, about = "Train a caec model on folders of images")]
struct Args {
    /// Read the settings from a TOML file (keys are the long option names, `_` or `-`;
    /// lists as arrays); options on the command line override it. Every run writes the
    /// settings it used to out/run.toml, which this reads back.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Folders (searched recursively) of PNG/JPEG training images.
    #[arg(long, required_unless_present = "plot")]
    data: Vec<PathBuf>,
    /// Output folder: checkpoints, the exported model (model.caem), the log (log.csv).
    #[arg(long, short)]
    out: PathBuf,
    /// Channels of the hidden layers (and of z unless --hyper-n is given).
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Channels of the hyper-latent z and of the hyper-analysis's hidden layers, when they
    /// differ from --n. --resume-n grows the main transforms only: the hyperprior keeps the
    /// checkpoint's size, which is the default here then (grown with N, 64 new z channels
    /// with a fresh density cost ~0.075 bpp more at every quality: measured).
    #[arg(long)]
    hyper_n: Option<usize>,
    /// Channels of the latent y (code size per 16x16 block).
    #[arg(long, default_value_t = 96)]
    m: usize,
    /// Use ReLU instead of GDN in the main transforms.
    #[arg(long)]
    relu: bool,
    /// Kernel size of the main transforms' convolutions (odd, 3 to 9; the hyperprior's stay 5
    /// and 3).
    #[arg(long, default_value_t = 5)]
    kernel: usize,
    /// λ of each quality level, ascending (loss = λ·255²·MSE + bpp).
    #[arg(long, value_delimiter = ',', default_value = "0.0035,0.0067,0.013,0.025")]
    lambdas: Vec<f64>,
    /// Random crop size in pixels.
    #[arg(long, default_value_t = 128)]
    crop: usize,
    /// Crops per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Downscale factor applied to every training image once at load (area filter).
    #[arg(long, default_value_t = 2)]
    downscale: u32,
    /// Stop after this many steps (counting those of a resumed run).
    #[arg(long, default_value_t = 1_000_000)]
    steps: usize,
    /// Stop after this many minutes of training.
    #[arg(long, default_value_t = 60.0)]
    minutes: f64,
    /// Adam learning rate (peak).
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Steps of linear warm-up from lr/10 at the start of every run (Adam's moments start
    /// from zero again after a resume).
    #[arg(long, default_value_t = 200)]
    warmup_steps: usize,
    /// Fraction of the run (of its steps or its minutes, whichever ends it first) after which
    /// the learning rate decays along a cosine to lr·--lr-final; 1 keeps it constant.
    #[arg(long, default_value_t = 0.75)]
    decay_from: f64,
    /// Final learning rate as a fraction of --lr.
    #[arg(long, default_value_t = 0.05)]
    lr_final: f64,
    /// Train the synthesis on the noisy latent (as CompressAI does) instead of the latent
    /// rounded around the means with a straight-through gradient.
    #[arg(long)]
    decoder_noise: bool,
    /// Train a denoising codec: add Gaussian noise of this standard deviation (8-bit levels,
    /// then rounded to 8 bits) to every input crop and measure the distortion against the
    /// clean crop. Validation images get the same noise (fixed seeds).
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Random seed (weights, crops, noise).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Minutes between checkpoints.
    #[arg(long, default_value_t = 5.0)]
    checkpoint_minutes: f64,
    /// Where to train: flex (CPU), cuda or vulkan (each needs the cargo feature of that name).
    #[arg(long, default_value = "flex")]
    device: String,
    /// The convolutions' products on flex: `bf16` runs them on the CPU's AMX tiles where it
    /// has them (operands rounded to bf16, sums in f32; weights, Adam, GDN, the entropy models
    /// and the loss stay f32 — mixed precision, as PyTorch's autocast), `f32` on the f32
    /// kernels. Without AMX both are f32.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
    products: String,
    /// Write the loaded (downscaled) training images as PNGs into this folder and exit:
    /// a compact copy of the training set to carry to another machine.
    #[arg(long)]
    save_data: Option<PathBuf>,
    /// Validation images, coded with real bitstreams (whole-file bpp, PSNR, MS-SSIM) at every
    /// checkpoint into out/val.csv. Default: `$CAEC_CORPUS/kodak` when that exists.
    #[arg(long)]
    val: Option<PathBuf>,
    /// How many validation images to code at each checkpoint (the first by name; 0 = none).
    #[arg(long, default_value_t = 4)]
    val_images: usize,
    /// Resume from a checkpoint written by an earlier run (out/checkpoint.bpk).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// The λ set the --resume checkpoint was trained with, when --lambdas differs from it:
    /// its gain vectors are carried over to the new levels (kept where a λ is in both sets,
    /// interpolated or extrapolated in log λ elsewhere), all other weights as they are.
    #[arg(long, value_delimiter = ',', requires = "resume")]
    resume_lambdas: Option<Vec<f64>>,
    /// The latent size M of the --resume checkpoint, when --m is larger: trained weights are
    /// kept, the new channels start "random in, zero out" (the old outputs unchanged), so the
    /// model grows its code size without starting over.
    #[arg(long, requires = "resume")]
    resume_m: Option<usize>,
    /// The hidden width N of the --resume checkpoint, when --n is larger: grown the same way
    /// ("random in, zero out"; the old outputs unchanged); the hyperprior keeps its size.
    #[arg(long, requires = "resume")]
    resume_n: Option<usize>,
    /// With --resume-m: the new channels' rate counts from 0 rising linearly to full weight
    /// over this many steps, so that they learn to carry something before they pay for it.
    /// (An option without a default, so that a run file written without it reads back.)
    #[arg(long, requires = "resume_m")]
    grow_ramp: Option<usize>,
    /// Keep an exponential moving average of the weights, updated every 10 steps with this
    /// decay (0.99: an average over the last ~1,000 steps); validation, model.caem and best.*
    /// then use the average (out/ema.bpk), checkpoint.bpk stays the raw training state.
    /// 0 = off.
    #[arg(long, default_value_t = 0.0)]
    ema: f64,
    /// Only draw out/curves.png from the logs of the run in --out, then exit (every run also
    /// draws it at each checkpoint).
    #[arg(long)]
    #[serde(skip)]
    plot: bool,
}

fn main() -> Result<()> {
    let args = Args::parse_from(expand_config(std::env::args_os().collect())?);
    if args.plot {
        plot::curves(&args.out)?;
        eprintln!("wrote {}", args.out.join("curves.png").display());
        return Ok(());
    }
    let hyper_n = args.hyper_n.or(args.resume_n).filter(|&h| h != args.n);
    let config = ModelConfig { n: args.n, m: args.m, kernel: args.kernel, gdn: !args.relu, lambdas: args.lambdas.clone(), hyper_n };
    config.validate()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;
    std::fs::write(args.out.join("config.toml"), config.to_toml())?;
    std::fs::write(args.out.join("run.toml"), toml::to_string(&args)?)?;

    cae_nn::set_bf16_products(args.products == "bf16");
    if cae_nn::bf16_products() {
        eprintln!("convolution products on the AMX tiles (bf16 operands, f32 sums)");
    }
    let t0 = Instant::now();
    let images = data::load(&args.data, args.downscale, args.crop)?;
    eprintln!("loaded {} images in {:.1} s", images.len(), t0.elapsed().as_secs_f64());
    if images.is_empty() {
        bail!("no training images of at least {0}x{0} pixels found", args.crop);
    }

    if let Some(dir) = &args.save_data {
        std::fs::create_dir_all(dir)?;
        for (i, img) in images.iter().enumerate() {
            img.save(dir.join(format!("{i:04}.png")))?;
        }
        eprintln!("wrote {} images to {}", images.len(), dir.display());
        return Ok(());
    }
    let val_images = load_validation(&args)?;
    let val_path = args.out.join("val.csv");
    let mut val_log = std::fs::OpenOptions::new().create(true).append(true).open(&val_path)?;
    if val_log.metadata()?.len() == 0 {
        writeln!(val_log, "step,quality,bpp,psnr,ms_ssim,estimated_bpp,estimated_psnr")?;
    }
    let device = pick_device(&args.device)?.autodiff();
    device.seed(args.seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut model = net::Net::new(&config, &device);
    let mut step0 = 0usize;
    if let Some(path) = &args.resume {
        let old = args.resume_lambdas.clone().unwrap_or_else(|| config.lambdas.clone());
        let old_m = args.resume_m.unwrap_or(config.m);
        let old_n = args.resume_n.unwrap_or(config.n);
        // The checkpoint's hyperprior: the new model's (--resume-n does not grow it).
        let hyper_n = Some(config.z_channels()).filter(|&h| h != old_n);
        let old_config = ModelConfig { lambdas: old.clone(), m: old_m, n: old_n, hyper_n, ..config.clone() };
        old_config.validate().context("--resume-lambdas / --resume-m / --resume-n")?;
        if old_m > config.m {
            bail!("--resume-m {old_m} is larger than --m {}: a latent can grow, not shrink", config.m);
        }
        if old_n > config.n {
            bail!("--resume-n {old_n} is larger than --n {}: a model can grow, not shrink", config.n);
        }
        let (m, s) = net::load_checkpoint(net::Net::new(&old_config, &device), path)?;
        model = m;
        if (old_m, old_n) != (config.m, config.n) {
            let grown = ModelConfig { lambdas: old.clone(), ..config.clone() };
            model = model.widen(&old_config, &grown, &device)?;
            eprintln!("grown from N = {old_n}, M = {old_m} to N = {}, M = {}", config.n, config.m);
        }
        if old != config.lambdas {
            model.gains = model.gains.remap(&old, &config.lambdas, &device);
            eprintln!("gains of λ = {old:?} carried over to λ = {:?}", config.lambdas);
        }
        step0 = s;
        eprintln!("resumed from {} at step {step0}", path.display());
    }
    // Adam (ε = 1e-8) with each parameter's gradient clipped to norm 1, fused (see `adam`).
    let mut optim = FusedAdam::new(1e-8, Some(1.0)).init();

    if !(0.0..1.0).contains(&args.ema) {
        bail!("--ema {}: a decay in [0, 1)", args.ema);
    }
    let mut average = (args.ema > 0.0).then(|| net::Ema::new(args.ema));
    if let Some(e) = average.as_mut() {
        e.update(&model);
    }
    let log_path = args.out.join("log.csv");
    let new_log = !log_path.exists() || args.resume.is_none();
    let mut log = std::fs::OpenOptions::new().create(true).append(!new_log).write(true).truncate(new_log).open(&log_path)?;
    if new_log {
        writeln!(log, "step,seconds,quality,lambda,loss,bpp,mse,psnr")?;
    }

    let budget = Duration::from_secs_f64(args.minutes * 60.0);
    let total = args.steps.saturating_sub(step0);
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let start = Instant::now();
    let mut last_ckpt = Instant::now();
    let mut ema: Option<(f64, f64)> = None;
    let mut step = step0;
    let mut best = f64::INFINITY;
    // Save the checkpoint and the model file, validate the weights exported (the moving
    // average with --ema), keep the best: the validation line to print, if any.
    let mut checkpoint = |model: &net::Net, average: Option<&net::Ema>, step: usize| -> Result<Option<String>> {
        let averaged = average.map(|e| e.model(model));
        let bytes = save(model, averaged.as_ref(), &config, step, &args.out, &device)?;
        if val_images.is_empty() {
            return Ok(None);
        }
        let validated = averaged.as_ref().unwrap_or(model);
        let (summary, score) = validate(&bytes, validated, &config, &device, &val_images, args.noise, step, &mut val_log)?;
        let note = keep_best(&args.out, averaged.is_some(), step, score, &mut best)?;
        Ok(Some(format!("{summary}{note}")))
    };
    while step < args.steps && start.elapsed() < budget && !stop.load(Ordering::SeqCst) {
        let q = rng.random_range(0..config.levels());
        let lambda = config.lambdas[q];
        let x = data::batch(&images, args.batch, args.crop, &mut rng, &device);
        let input = if args.noise > 0.0 { data::add_noise(x.clone(), args.noise) } else { x.clone() };
        let growing = args.resume_m.zip(args.grow_ramp).filter(|&(_, ramp)| step - step0 < ramp).map(|(from, ramp)| net::Growing {
            from,
            weight: (step - step0) as f64 / ramp as f64,
        });
        let out = model.forward_growing(input, x, q, args.decoder_noise, growing);
        let loss = out.mse.clone() * (lambda * 255.0 * 255.0) + out.bpp.clone();
        let (loss_v, bpp_v, mse_v) = (
            loss.clone().into_scalar::<f32>() as f64,
            out.bpp.into_scalar::<f32>() as f64,
            out.mse.into_scalar::<f32>() as f64,
        );
        if !loss_v.is_finite() {
            bail!("loss became {loss_v} at step {step}");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let progress = ((step - step0) as f64 / total.max(1) as f64).max(start.elapsed().as_secs_f64() / budget.as_secs_f64());
        let lr = args.lr * lr_factor(step - step0, progress, args.warmup_steps, args.decay_from, args.lr_final);
        model = optim.step(lr, model, grads).project();
        step += 1;
        if let Some(e) = average.as_mut().filter(|_| step % EMA_EVERY == 0) {
            e.update(&model);
        }
        let psnr = 10.0 * (1.0 / mse_v.max(1e-10)).log10();
        writeln!(log, "{step},{:.1},{},{lambda},{loss_v:.5},{bpp_v:.5},{mse_v:.7},{psnr:.3}", start.elapsed().as_secs_f64(), q + 1)?;
        let e = ema.get_or_insert((bpp_v, psnr));
        *e = (0.98 * e.0 + 0.02 * bpp_v, 0.98 * e.1 + 0.02 * psnr);
        bar.set_message(format!("q{} loss {loss_v:.3} bpp~{:.3} psnr~{:.2}", q + 1, e.0, e.1));
        bar.inc(1);
        if last_ckpt.elapsed().as_secs_f64() > args.checkpoint_minutes * 60.0 {
            if let Some(line) = checkpoint(&model, average.as_ref(), step)? {
                bar.suspend(|| eprintln!("{line}"));
            }
            log.flush()?;
            if let Err(e) = plot::curves(&args.out) {
                bar.suspend(|| eprintln!("training curves not drawn: {e:#}"));
            }
            last_ckpt = Instant::now();
        }
    }
    bar.finish();
    if stop.load(Ordering::SeqCst) {
        eprintln!("interrupted: saving a checkpoint at step {step}");
    }
    if let Some(line) = checkpoint(&model, average.as_ref(), step)? {
        eprintln!("{line}");
    }
    log.flush()?;
    if let Err(e) = plot::curves(&args.out) {
        eprintln!("training curves not drawn: {e:#}");
    }
    eprintln!(
        "trained {} steps in {:.1} min ({:.2} steps/s, {:.1} crops/s); wrote {}",
        step - step0,
        start.elapsed().as_secs_f64() / 60.0,
        (step - step0) as f64 / start.elapsed().as_secs_f64(),
        ((step - step0) * args.batch) as f64 / start.elapsed().as_secs_f64(),
        args.out.join("model.caem").display()
    );
    Ok(())
}

/// The command line with `--config FILE` replaced by the file's settings: each key becomes
/// `--key value` (an array: the option once per element; `true`: the bare flag; `false`:
/// nothing), placed before the command line's own options and left out where the command
/// line gives that option itself, so the command line wins. A model's `config.toml` (written
/// beside its weights) reads too: its `gdn = false` is `--relu`.
fn expand_config(argv: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    use std::ffi::OsString;
    let Some(i) = argv.iter().position(|a| a == "--config" || a.to_string_lossy().starts_with("--config=")) else {
        return Ok(argv);
    };
    let mut rest = argv.clone();
    let path = match argv[i].to_str().and_then(|a| a.strip_prefix("--config=")) {
        Some(p) => {
            rest.remove(i);
            PathBuf::from(p)
        }
        None => {
            let p = argv.get(i + 1).context("--config needs a file")?;
            rest.drain(i..i + 2);
            PathBuf::from(p)
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let table: toml::Table = text.parse().with_context(|| path.display().to_string())?;
    let given: std::collections::HashSet<String> = rest
        .iter()
        .filter_map(|a| a.to_str()?.strip_prefix("--").map(|a| a.split('=').next().unwrap_or(a).to_string()))
        .collect();
    let scalar = |v: &toml::Value| -> Result<String> {
        Ok(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            other => bail!("{}: {other} is not a string or a number", path.display()),
        })
    };
    let mut out: Vec<OsString> = rest.first().cloned().into_iter().collect();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        if given.contains(&flag) || flag == "config" {
            continue;
        }
        if flag == "gdn" {
            match value {
                toml::Value::Boolean(gdn) if !gdn && !given.contains("relu") => out.push("--relu".into()),
                toml::Value::Boolean(_) => {}
                other => bail!("{}: gdn = {other} is not true or false", path.display()),
            }
            continue;
        }
        match value {
            toml::Value::Boolean(true) => out.push(format!("--{flag}").into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for v in items {
                    out.push(format!("--{flag}").into());
                    out.push(scalar(v)?.into());
                }
            }
            v => {
                out.push(format!("--{flag}").into());
                out.push(scalar(v)?.into());
            }
        }
    }
    out.extend(rest.into_iter().skip(1));
    Ok(out)
}

/// Learning-rate multiplier: linear warm-up from 0.1 over `warmup` steps of this run, constant,
/// then a cosine from 1 to `final_factor` over the part of the run after `decay_from`.
fn lr_factor(run_step: usize, progress: f64, warmup: usize, decay_from: f64, final_factor: f64) -> f64 {
    let warm = if run_step < warmup { 0.1 + 0.9 * run_step as f64 / warmup as f64 } else { 1.0 };
    let decay = if progress <= decay_from || decay_from >= 1.0 {
        1.0
    } else {
        let t = ((progress - decay_from) / (1.0 - decay_from)).min(1.0);
        final_factor + (1.0 - final_factor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    };
    warm * decay
}

fn pick_device(name: &str) -> Result<Device> {
    let mut built = vec!["flex"];
    if cfg!(feature = "cuda") {
        built.push("cuda");
    }
    if cfg!(feature = "vulkan") {
        built.push("vulkan");
    }
    Ok(match name {
        "flex" => Device::flex(),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0),
        #[cfg(feature = "vulkan")]
        "vulkan" => Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
        other => bail!("device {other:?} is not available in this build (built with: {})", built.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::{expand_config, lr_factor, Args};
    use clap::Parser;

    #[test]
    fn a_written_run_file_reads_back_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let argv = |s: &str| -> Vec<std::ffi::OsString> { s.split_whitespace().map(Into::into).collect() };
        let first = Args::parse_from(argv("caec-train --data a --data b -o out --lambdas 0.01,0.02 --relu --crop 256"));
        let run = dir.path().join("run.toml");
        std::fs::write(&run, toml::to_string(&first).unwrap()).unwrap();
        let again = Args::parse_from(expand_config(argv(&format!("caec-train --config {} --crop 192", run.display()))).unwrap());
        assert_eq!(again.data, first.data);
        assert_eq!((again.lambdas.clone(), again.relu, again.out.clone()), (vec![0.01, 0.02], true, "out".into()));
        assert_eq!((again.crop, first.crop), (192, 256));
        assert_eq!(again.minutes, first.minutes);
        // Options that require others (a grown latent's) read back too, set or not.
        let grown = Args::parse_from(argv("caec-train --data a -o out --resume c.bpk --resume-m 96 --m 192 --grow-ramp 4000 --ema 0.99"));
        std::fs::write(&run, toml::to_string(&grown).unwrap()).unwrap();
        let again = Args::parse_from(expand_config(argv(&format!("caec-train --config {}", run.display()))).unwrap());
        assert_eq!((again.resume_m, again.grow_ramp, again.ema, again.m), (Some(96), Some(4000), 0.99, 192));
        std::fs::write(&run, toml::to_string(&first).unwrap()).unwrap();
        // A hand-written file: dashes or underscores, and an unknown key is an error from clap.
        std::fs::write(&run, "data = [\"x\"]\nout = \"o\"\nval-images = 2\n").unwrap();
        let a = Args::parse_from(expand_config(argv(&format!("caec-train --config={}", run.display()))).unwrap());
        assert_eq!(a.val_images, 2);
        std::fs::write(&run, "data = [\"x\"]\nout = \"o\"\nnonesuch = 1\n").unwrap();
        assert!(Args::try_parse_from(expand_config(argv(&format!("caec-train --config {}", run.display()))).unwrap()).is_err());
        assert!(expand_config(argv("caec-train --config")).is_err());
        // A model's config.toml (the form embedded models are described in): gdn, kernel.
        for (gdn, kernel) in [(true, 5), (false, 3)] {
            let model = cae_nn::ModelConfig { n: 32, m: 48, kernel, gdn, lambdas: vec![0.002, 0.01], hyper_n: None };
            std::fs::write(&run, format!("data = [\"x\"]\nout = \"o\"\n{}", model.to_toml())).unwrap();
            let a = Args::parse_from(expand_config(argv(&format!("caec-train --config {}", run.display()))).unwrap());
            assert_eq!((a.n, a.m, a.kernel, a.relu, a.lambdas), (32, 48, kernel, !gdn, vec![0.002, 0.01]));
        }
        std::fs::write(&run, "data = [\"x\"]\nout = \"o\"\ngdn = 1\n").unwrap();
        assert!(expand_config(argv(&format!("caec-train --config {}", run.display()))).is_err());
    }

    #[test]
    fn schedule_warms_up_holds_and_decays() {
        assert!((lr_factor(0, 0.0, 200, 0.75, 0.05) - 0.1).abs() < 1e-12);
        assert!((lr_factor(100, 0.1, 200, 0.75, 0.05) - 0.55).abs() < 1e-12);
        assert_eq!(lr_factor(500, 0.5, 200, 0.75, 0.05), 1.0);
        assert!((lr_factor(900, 0.875, 200, 0.75, 0.05) - 0.525).abs() < 1e-12);
        assert!((lr_factor(1000, 1.0, 200, 0.75, 0.05) - 0.05).abs() < 1e-12);
        assert_eq!(lr_factor(1000, 1.0, 200, 1.0, 0.05), 1.0);
    }
}

/// Steps between two updates of the weights' moving average (`--ema`).
const EMA_EVERY: usize = 10;

/// Write the checkpoint and the exported model, each atomically; returns the model file. With
/// an `averaged` model (`--ema`), that is what is exported, and saved as `ema.bpk` beside the
/// raw training state.
fn save(model: &net::Net, averaged: Option<&net::Net>, config: &ModelConfig, step: usize, out: &std::path::Path, device: &Device) -> Result<Vec<u8>> {
    net::save_checkpoint(model, step, &out.join("checkpoint.bpk"))?;
    if let Some(a) = averaged {
        net::save_checkpoint(a, step, &out.join("ema.bpk"))?;
    }
    let bytes = averaged.unwrap_or(model).export(config, &device.clone().without_autodiff());
    let tmp = out.join("model.caem.tmp");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, out.join("model.caem"))?;
    Ok(bytes)
}

/// After a validation: when `score` is the lowest of this run, copy the checkpoint and the
/// exported model just written to `best.bpk` / `best.step` / `best.caem`, so that a run whose
/// real rate degrades (as one did when its hyperprior, trained on small crops only, stopped
/// generalising to whole images) still leaves its best point behind.
fn keep_best(out: &std::path::Path, averaged: bool, step: usize, score: f64, best: &mut f64) -> Result<String> {
    if !(score < *best) {
        return Ok(format!(" (score {score:.4} at step {step}; best of this run {:.4})", *best));
    }
    *best = score;
    // The weights that were validated: the moving average where there is one.
    let state = if averaged { "ema" } else { "checkpoint" };
    for (from, to) in [(format!("{state}.bpk"), "best.bpk"), (format!("{state}.step"), "best.step"), ("model.caem".into(), "best.caem")] {
        let tmp = out.join(format!("{to}.tmp"));
        std::fs::copy(out.join(from), &tmp)?;
        std::fs::rename(&tmp, out.join(to))?;
    }
    Ok(format!(" (score {score:.4}: best of this run so far, step {step} kept as best.bpk)"))
}

/// The validation images: `--val`, else `$CAEC_CORPUS/kodak` if it exists; the first
/// `--val-images` by name.
fn load_validation(args: &Args) -> Result<Vec<(String, image::DynamicImage)>> {
    if args.val_images == 0 {
        return Ok(Vec::new());
    }
    let dir = match &args.val {
        Some(d) => d.clone(),
        None => match std::env::var_os("CAEC_CORPUS").map(|c| PathBuf::from(c).join("kodak")) {
            Some(d) if d.is_dir() => d,
            _ => {
                eprintln!("no validation images (set CAEC_CORPUS or --val)");
                return Ok(Vec::new());
            }
        },
    };
    let mut paths = caec::image_files(&dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    paths.truncate(args.val_images);
    let images = paths
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            image::open(p).map(|i| (name, i)).with_context(|| p.display().to_string())
        })
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<&str> = images.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!("validation images: {}", names.join(", "));
    Ok(images)
}

/// Code the validation images at every quality with the exported model, through the real
/// encoder and decoder; log mean bpp (whole file), PSNR and MS-SSIM per quality, beside the
/// rate and PSNR the float model estimates with rounding (NaN for sizes that are not
/// multiples of 64), so that the cost of the integer tables, the escapes and the header shows.
/// With `noise` > 0 the coded images are noisy copies (seed = their index) and PSNR and
/// MS-SSIM are measured against the clean images (the estimated PSNR is then NaN).
/// Returns the summary line and a score: the training loss with real files, averaged over
/// the qualities (lower is better).
fn validate(
    model_bytes: &[u8],
    net: &net::Net,
    config: &ModelConfig,
    device: &Device,
    images: &[(String, image::DynamicImage)],
    noise: f64,
    step: usize,
    log: &mut std::fs::File,
) -> Result<(String, f64)> {
    let model = caec::load_model_bytes("validation", model_bytes).map_err(|e| anyhow::anyhow!("exported model does not load: {e}"))?;
    let eval = net.valid();
    let eval_device = device.clone().without_autodiff();
    let mut parts = Vec::new();
    let mut score = 0.0;
    for q in 1..=model.config.levels() as u8 {
        let (mut bpp, mut psnr, mut ms_ssim, mut est_bpp, mut est_psnr) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, (_, clean)) in images.iter().enumerate() {
            let noisy = (noise > 0.0).then(|| caec::add_noise(clean, noise, i as u64));
            let img = noisy.as_ref().unwrap_or(clean);
            let file = caec::compress_with(&model, img, q)?;
            let back = caec::decompress_with(&model, &file, &caec::Limits::default())?;
            bpp += file.len() as f64 * 8.0 / (img.width() as f64 * img.height() as f64);
            psnr += caec::psnr(clean, &back);
            ms_ssim += caec::metrics::ms_ssim(&clean.to_rgb8(), &back.to_rgb8()).unwrap_or(f64::NAN);
            let (w, h) = (img.width() as usize, img.height() as usize);
            if w % 64 == 0 && h % 64 == 0 {
                let rgb = img.to_rgb8();
                let mut planes = vec![0f32; 3 * w * h];
                for (i, p) in rgb.pixels().enumerate() {
                    for c in 0..3 {
                        planes[c * w * h + i] = p.0[c] as f32 / 255.0;
                    }
                }
                let x = Tensor::<4>::from_data(TensorData::new(planes, [1, 3, h, w]), &eval_device);
                let (b, mse) = eval.estimate(x, q as usize - 1);
                est_bpp += b;
                est_psnr += if noisy.is_some() { f64::NAN } else { 10.0 * (1.0 / mse.max(1e-10)).log10() };
            } else {
                est_bpp = f64::NAN;
                est_psnr = f64::NAN;
            }
        }
        let n = images.len() as f64;
        // The training loss with real files: λ·255²·MSE + bpp, MSE from the mean PSNR.
        score += config.lambdas[q as usize - 1] * 255.0 * 255.0 * 10f64.powf(-psnr / n / 10.0) + bpp / n;
        writeln!(
            log,
            "{step},{q},{:.5},{:.4},{:.6},{:.5},{:.4}",
            bpp / n,
            psnr / n,
            ms_ssim / n,
            est_bpp / n,
            est_psnr / n
        )?;
        parts.push(format!("q{q} {:.3} bpp {:.2} dB (estimated {:.3} bpp)", bpp / n, psnr / n, est_bpp / n));
    }
    let summary = format!("validation at step {step} ({} images): {}", images.len(), parts.join(", "));
    Ok((summary, score / config.levels() as f64))
}

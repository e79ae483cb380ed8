//! `caec-seed`: trains the seed convolutional autoencoder on MNIST and measures it.
//!
//! ```text
//! caec-seed train --code 32 --loss bce --out runs/seed       # one model, its test PSNR and figure
//! caec-seed table --out runs/seed-table                      # code sizes 2/8/32/64, MSE/L1/BCE
//! ```
//! MNIST is read from `--mnist DIR`, else `$CAEC_CORPUS/mnist` (IDX files, gzipped or not).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use cae_seed::idx::Mnist;
use cae_seed::{Loss, SeedCae, SeedConfig, batch};
use clap::{Args, Parser, Subcommand};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(version, about = "Train and measure the seed convolutional autoencoder on MNIST")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one model; print its test-set PSNR; write model, config, log and figure to --out.
    Train(TrainArgs),
    /// Train a model per code size (2, 8, 32, 64; MSE) and per loss (MSE, L1, BCE; code 32)
    /// and write results.csv and table.md to --out.
    Table(TrainArgs),
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// MNIST folder (default: $CAEC_CORPUS/mnist).
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// Values in the bottleneck.
    #[arg(long, default_value_t = 32)]
    code: usize,
    /// Channels of each Conv + ReLU + MaxPool block.
    #[arg(long, value_delimiter = ',', default_value = "16,32")]
    channels: Vec<usize>,
    /// Reconstruction loss: mse, l1 or bce.
    #[arg(long, default_value = "mse")]
    loss: Loss,
    /// Training steps.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Standard deviation of the Gaussian noise added to the inputs (a denoising autoencoder;
    /// pixels in [0, 1]).
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Leave this digit out of the training set (for anomaly detection).
    #[arg(long)]
    exclude: Option<u8>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output folder.
    #[arg(long, short)]
    out: PathBuf,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train(a) => {
            let (train, test) = load(&a)?;
            let r = train_one(&a, &train, &test, &a.out)?;
            println!("{}", r.line());
            Ok(())
        }
        Command::Table(a) => table(&a),
    }
}

fn load(a: &TrainArgs) -> Result<(Mnist, Mnist)> {
    let dir = match &a.mnist {
        Some(d) => d.clone(),
        None => PathBuf::from(std::env::var_os("CAEC_CORPUS").context("set --mnist or CAEC_CORPUS")?).join("mnist"),
    };
    Ok((Mnist::load(&dir, "train")?, Mnist::load(&dir, "t10k")?))
}

struct Result1 {
    code: usize,
    loss: Loss,
    steps: usize,
    seconds: f64,
    psnr: f64,
}

impl Result1 {
    fn line(&self) -> String {
        format!(
            "code {} loss {}: test PSNR {:.2} dB after {} steps ({:.0} s)",
            self.code, self.loss, self.psnr, self.steps, self.seconds
        )
    }
}

fn train_one(a: &TrainArgs, train: &Mnist, test: &Mnist, out: &Path) -> Result<Result1> {
    if train.rows != train.cols {
        bail!("images of {}x{} are not square", train.cols, train.rows);
    }
    let cfg = SeedConfig { size: train.rows, image_channels: 1, channels: a.channels.clone(), code: a.code };
    cfg.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    std::fs::write(out.join("config.toml"), toml::to_string(&cfg)?)?;
    let device = Device::flex().autodiff();
    device.seed(a.seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let pool: Vec<usize> = (0..train.len()).filter(|&i| Some(train.labels[i]) != a.exclude).collect();
    let mut model = SeedCae::new(&cfg, &device);
    let mut optim = AdamConfig::new().init();
    let mut log = std::fs::File::create(out.join("log.csv"))?;
    writeln!(log, "step,loss")?;
    let bar = indicatif::ProgressBar::new(a.steps as u64);
    let start = Instant::now();
    let side = cfg.size;
    for step in 0..a.steps {
        let picks: Vec<&[u8]> = (0..a.batch).map(|_| train.image(pool[rng.random_range(0..pool.len())])).collect();
        let clean = batch(&picks, 1, side, &device);
        let input = if a.noise > 0.0 {
            (clean.clone() + clean.random_like(burn::tensor::Distribution::Normal(0.0, a.noise))).clamp(0.0, 1.0)
        } else {
            clean.clone()
        };
        // Cosine decay to a tenth over the run.
        let t = step as f64 / a.steps as f64;
        let lr = a.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()));
        let (loss, _) = model.loss(input, clean, a.loss);
        if step % 50 == 0 {
            writeln!(log, "{step},{:.6}", loss.clone().into_scalar::<f32>())?;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    model.clone().save_file(out.join("model.bpk")).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let eval = model.valid();
    let psnr = test_psnr(&eval, test, side)?;
    figure(&eval, test, side, &out.join("reconstructions.png"))?;
    Ok(Result1 { code: a.code, loss: a.loss, steps: a.steps, seconds, psnr })
}

/// Mean per-image PSNR (peak 1) of the reconstructions of the whole test set.
fn test_psnr(model: &SeedCae, test: &Mnist, side: usize) -> Result<f64> {
    let dev = Device::flex();
    let mut sum = 0.0;
    for start in (0..test.len()).step_by(500) {
        let idx: Vec<usize> = (start..(start + 500).min(test.len())).collect();
        let picks: Vec<&[u8]> = idx.iter().map(|&i| test.image(i)).collect();
        let x = batch(&picks, 1, side, &dev);
        let y = model.decode(model.encode(x.clone()));
        let mse: Vec<f32> = (y - x).square().mean_dim(3).mean_dim(2).into_data().try_into_vec_as().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        sum += mse.iter().map(|&m| 10.0 * (1.0 / (m as f64).max(1e-10)).log10()).sum::<f64>();
    }
    Ok(sum / test.len() as f64)
}

/// The seed's figure: the first ten test images over their reconstructions, 3x enlarged.
fn figure(model: &SeedCae, test: &Mnist, side: usize, path: &Path) -> Result<()> {
    let dev = Device::flex();
    let picks: Vec<&[u8]> = (0..10).map(|i| test.image(i)).collect();
    let x = batch(&picks, 1, side, &dev);
    let y: Vec<f32> = model.decode(model.encode(x)).into_data().try_into_vec_as().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let s = 3u32;
    let img = image::GrayImage::from_fn(10 * side as u32 * s, 2 * side as u32 * s, |px, py| {
        let (col, row) = ((px / s) as usize, (py / s) as usize);
        let (k, x, yy) = (col / side, col % side, row % side);
        let v = if row < side { picks[k][yy * side + x] } else { (y[k * side * side + yy * side + x].clamp(0.0, 1.0) * 255.0).round() as u8 };
        image::Luma([v])
    });
    img.save(path).with_context(|| path.display().to_string())
}

fn table(a: &TrainArgs) -> Result<()> {
    let (train, test) = load(a)?;
    std::fs::create_dir_all(&a.out)?;
    let mut runs: Vec<(usize, Loss)> = [2, 8, 32, 64].iter().map(|&c| (c, Loss::Mse)).collect();
    runs.extend([(32, Loss::L1), (32, Loss::Bce)]);
    let mut csv = String::from("code,loss,steps,seconds,test_psnr\n");
    let mut md = String::from("| code size | loss | test PSNR (dB) | steps | seconds |\n|---:|---|---:|---:|---:|\n");
    for (code, loss) in runs {
        let args = TrainArgs { code, loss, ..a.clone() };
        let r = train_one(&args, &train, &test, &a.out.join(format!("code{code}-{loss}")))?;
        eprintln!("{}", r.line());
        csv += &format!("{},{},{},{:.1},{:.3}\n", r.code, r.loss, r.steps, r.seconds, r.psnr);
        md += &format!("| {} | {} | {:.2} | {} | {:.0} |\n", r.code, r.loss, r.psnr, r.steps, r.seconds);
    }
    std::fs::write(a.out.join("results.csv"), &csv)?;
    std::fs::write(a.out.join("table.md"), &md)?;
    print!("{md}");
    Ok(())
}

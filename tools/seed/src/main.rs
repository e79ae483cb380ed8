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
    /// k-means on the codes of the test set against k-means on its raw pixels: NMI and
    /// accuracy (Hungarian matching) against the labels; assignments to --out/clusters.csv.
    Cluster(EvalArgs),
    /// For each digit, a model trained without it; AUROC of telling that digit from the others
    /// in the test set by reconstruction error and by the code's negative log-likelihood.
    Anomaly(TrainArgs),
    /// PSNR of the noisy test set and of its reconstructions by a model trained with --noise.
    Denoise(EvalArgs),
    /// Latent interpolation between test images and samples from a Gaussian fitted to the
    /// training codes, as PNG grids in --out.
    Generate(EvalArgs),
}

#[derive(Args, Clone)]
struct EvalArgs {
    /// MNIST folder (default: $CAEC_CORPUS/mnist).
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// A folder written by `caec-seed train`.
    #[arg(long)]
    model: PathBuf,
    /// Clusters for k-means.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Noise standard deviation for `denoise` (pixels in [0, 1]).
    #[arg(long, default_value_t = 0.3)]
    sigma: f64,
    /// Interpolation steps for `generate`.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Output folder.
    #[arg(long, short)]
    out: PathBuf,
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
    /// Adam learning rate (peak; cosine decay to a tenth). 2e-3 sometimes drove the sigmoid
    /// output into saturation early (everything black, MSE stuck at 0.11, no gradient left
    /// with MSE or L1); 1e-3 (Keras's default) did not.
    #[arg(long, default_value_t = 1e-3)]
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
        Command::Anomaly(a) => anomaly(&a),
        Command::Cluster(a) => cluster(&a),
        Command::Denoise(a) => denoise(&a),
        Command::Generate(a) => generate(&a),
    }
}

fn load(a: &TrainArgs) -> Result<(Mnist, Mnist)> {
    load_dir(a.mnist.as_deref())
}

fn load_dir(mnist: Option<&Path>) -> Result<(Mnist, Mnist)> {
    let dir = match mnist {
        Some(d) => d.to_path_buf(),
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
        // Linear warm-up from a tenth over the first 100 steps, then a cosine decay to a tenth.
        let t = step as f64 / a.steps as f64;
        let warm = (0.1 + 0.9 * step as f64 / 100.0).min(1.0);
        let lr = a.lr * warm * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()));
        // L1 pushes every background pixel down with full strength however dark it already is:
        // from a random start the sigmoid saturated at black and never recovered (test PSNR
        // 9.7 dB, the all-black image, at lr 1e-3 and 3e-4). MSE for the first tenth of the
        // run gives it a start that L1 then refines.
        let kind = if a.loss == Loss::L1 && step < a.steps / 10 { Loss::Mse } else { a.loss };
        let (loss, _) = model.loss(input, clean, kind);
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
    let (_, errors) = codes_and_errors(model, test, side)?;
    Ok(errors.iter().map(|&m| 10.0 * (1.0 / m.max(1e-10)).log10()).sum::<f64>() / errors.len() as f64)
}

/// The seed's figure: the first ten test images over their reconstructions, 3x enlarged.
fn figure(model: &SeedCae, test: &Mnist, side: usize, path: &Path) -> Result<()> {
    let dev = Device::flex();
    let picks: Vec<&[u8]> = (0..10).map(|i| test.image(i)).collect();
    let x = batch(&picks, 1, side, &dev);
    let y = floats(model.decode(model.encode(x.clone())))?;
    grid(&[floats(x)?, y], side, 10, path)
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

/// A model written by `train`.
fn load_model(dir: &Path) -> Result<(SeedCae, SeedConfig)> {
    let cfg: SeedConfig = toml::from_str(&std::fs::read_to_string(dir.join("config.toml")).with_context(|| dir.display().to_string())?)?;
    cfg.validate().map_err(anyhow::Error::msg)?;
    let record = burn::store::ModuleRecord::load(dir.join("model.bpk")).map_err(|e| anyhow::anyhow!("{}: {e:?}", dir.display()))?;
    Ok((SeedCae::new(&cfg, &Device::flex()).load_record(record), cfg))
}

/// The values of a tensor of any rank, in order.
fn floats<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().try_into_vec_as().map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Mean squared error of each image of a batch `[b, c, h, w]`.
fn per_image_mse(x: Tensor<4>, y: Tensor<4>) -> Result<Vec<f64>> {
    Ok(floats((x - y).square().mean_dim(3).mean_dim(2))?.into_iter().map(f64::from).collect())
}

fn to_vecs(t: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [_, d] = t.dims();
    let v = floats(t)?;
    Ok(v.chunks(d).map(<[f32]>::to_vec).collect())
}

/// Codes of every image of `set` and the mean squared error of each reconstruction.
fn codes_and_errors(model: &SeedCae, set: &Mnist, side: usize) -> Result<(Vec<Vec<f32>>, Vec<f64>)> {
    let dev = Device::flex();
    let (mut codes, mut errors) = (Vec::new(), Vec::new());
    for start in (0..set.len()).step_by(500) {
        let picks: Vec<&[u8]> = (start..(start + 500).min(set.len())).map(|i| set.image(i)).collect();
        let x = batch(&picks, 1, side, &dev);
        let c = model.encode(x.clone());
        let y = model.decode(c.clone());
        errors.extend(per_image_mse(y, x)?);
        codes.extend(to_vecs(c)?);
    }
    Ok((codes, errors))
}

/// Per-dimension mean and standard deviation of codes.
fn gaussian(codes: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let d = codes[0].len();
    let n = codes.len() as f64;
    let mean: Vec<f64> = (0..d).map(|j| codes.iter().map(|c| c[j] as f64).sum::<f64>() / n).collect();
    let std: Vec<f64> =
        (0..d).map(|j| (codes.iter().map(|c| (c[j] as f64 - mean[j]).powi(2)).sum::<f64>() / n).sqrt().max(1e-6)).collect();
    (mean, std)
}

/// Negative log-likelihood in bits per pixel of a code under a factorized Gaussian, up to
/// a constant (the quantisation step): what a rate model of the code would charge.
fn code_bits(code: &[f32], (mean, std): &(Vec<f64>, Vec<f64>), pixels: usize) -> f64 {
    let nats: f64 = code
        .iter()
        .zip(mean.iter().zip(std))
        .map(|(&c, (&m, &s))| 0.5 * ((c as f64 - m) / s).powi(2) + s.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln())
        .sum();
    nats / std::f64::consts::LN_2 / pixels as f64
}

fn cluster(a: &EvalArgs) -> Result<()> {
    let (_, test) = load_dir(a.mnist.as_deref())?;
    let (model, cfg) = load_model(&a.model)?;
    let (codes, _) = codes_and_errors(&model, &test, cfg.size)?;
    let labels: Vec<usize> = test.labels.iter().map(|&l| l as usize).collect();
    let pixels: Vec<Vec<f32>> = (0..test.len()).map(|i| test.image(i).iter().map(|&v| v as f32 / 255.0).collect()).collect();
    let t = Instant::now();
    let by_code = cae_seed::eval::kmeans(&codes, a.k, 4).map_err(anyhow::Error::msg)?;
    let t_code = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let by_pixels = cae_seed::eval::kmeans(&pixels, a.k, 4).map_err(anyhow::Error::msg)?;
    let t_pixels = t.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out)?;
    let mut csv = String::from("index,label,cluster_code,cluster_pixels\n");
    for i in 0..labels.len() {
        csv += &format!("{i},{},{},{}\n", labels[i], by_code[i], by_pixels[i]);
    }
    std::fs::write(a.out.join("clusters.csv"), csv)?;
    use cae_seed::eval::{cluster_accuracy, nmi};
    let md = format!(
        "| k-means (k = {k}) on the MNIST test set | dimensions | NMI | accuracy | seconds |\n|---|---:|---:|---:|---:|\n\
         | caec-seed codes ({model}) | {d} | {:.4} | {:.4} | {t_code:.1} |\n| raw pixels | {p} | {:.4} | {:.4} | {t_pixels:.1} |\n",
        nmi(&by_code, &labels),
        cluster_accuracy(&by_code, &labels),
        nmi(&by_pixels, &labels),
        cluster_accuracy(&by_pixels, &labels),
        k = a.k,
        model = a.model.display(),
        d = cfg.code,
        p = cfg.size * cfg.size,
    );
    std::fs::write(a.out.join("clustering.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn anomaly(a: &TrainArgs) -> Result<()> {
    let (train, test) = load(a)?;
    std::fs::create_dir_all(&a.out)?;
    let digits: Vec<u8> = match a.exclude {
        Some(d) => vec![d],
        None => (0..10).collect(),
    };
    let mut md = String::from(
        "| held-out digit | AUROC, reconstruction error | AUROC, code NLL (bits) |\n|---:|---:|---:|\n",
    );
    let mut csv = String::from("digit,auroc_error,auroc_bits\n");
    for d in digits {
        let args = TrainArgs { exclude: Some(d), ..a.clone() };
        let dir = a.out.join(format!("without{d}"));
        train_one(&args, &train, &test, &dir)?;
        let (model, cfg) = load_model(&dir)?;
        let pixels = cfg.size * cfg.size;
        let (train_codes, _) = codes_and_errors(&model, &train, cfg.size)?;
        let kept: Vec<Vec<f32>> = train_codes.into_iter().zip(&train.labels).filter(|(_, l)| **l != d).map(|(c, _)| c).collect();
        let prior = gaussian(&kept);
        let (codes, errors) = codes_and_errors(&model, &test, cfg.size)?;
        let bits: Vec<f64> = codes.iter().map(|c| code_bits(c, &prior, pixels)).collect();
        let positive: Vec<bool> = test.labels.iter().map(|&l| l == d).collect();
        let (ae, ab) = (cae_seed::eval::auroc(&errors, &positive), cae_seed::eval::auroc(&bits, &positive));
        eprintln!("digit {d}: AUROC {ae:.4} (reconstruction error), {ab:.4} (code bits)");
        md += &format!("| {d} | {ae:.4} | {ab:.4} |\n");
        csv += &format!("{d},{ae:.5},{ab:.5}\n");
    }
    std::fs::write(a.out.join("anomaly.csv"), csv)?;
    std::fs::write(a.out.join("anomaly.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn denoise(a: &EvalArgs) -> Result<()> {
    let (_, test) = load_dir(a.mnist.as_deref())?;
    let (model, cfg) = load_model(&a.model)?;
    let dev = Device::flex();
    dev.seed(7);
    let side = cfg.size;
    let psnr = |x: Tensor<4>, y: Tensor<4>| -> Result<f64> {
        Ok(per_image_mse(x, y)?.iter().map(|&v| 10.0 * (1.0 / v.max(1e-10)).log10()).sum())
    };
    let (mut before, mut after) = (0.0, 0.0);
    let mut rows: Vec<Vec<f32>> = vec![Vec::new(); 3];
    for start in (0..test.len()).step_by(500) {
        let picks: Vec<&[u8]> = (start..(start + 500).min(test.len())).map(|i| test.image(i)).collect();
        let clean = batch(&picks, 1, side, &dev);
        let noisy = (clean.clone() + clean.random_like(burn::tensor::Distribution::Normal(0.0, a.sigma))).clamp(0.0, 1.0);
        let out = model.decode(model.encode(noisy.clone()));
        before += psnr(noisy.clone(), clean.clone())?;
        after += psnr(out.clone(), clean.clone())?;
        if start == 0 {
            for (r, t) in rows.iter_mut().zip([noisy, out, clean]) {
                *r = floats(t.slice([0..10]))?;
            }
        }
    }
    let n = test.len() as f64;
    std::fs::create_dir_all(&a.out)?;
    grid(&rows, side, 10, &a.out.join("denoise.png"))?;
    let line = format!(
        "MNIST test set, Gaussian noise sigma = {}: PSNR {:.2} dB noisy, {:.2} dB denoised ({})",
        a.sigma,
        before / n,
        after / n,
        a.model.display()
    );
    std::fs::write(a.out.join("denoise.txt"), format!("{line}\n"))?;
    println!("{line}");
    Ok(())
}

fn generate(a: &EvalArgs) -> Result<()> {
    let (train, test) = load_dir(a.mnist.as_deref())?;
    let (model, cfg) = load_model(&a.model)?;
    let dev = Device::flex();
    let side = cfg.size;
    let encode = |i: usize| -> Result<Vec<f32>> { Ok(to_vecs(model.encode(batch(&[test.image(i)], 1, side, &dev)))?.remove(0)) };
    let decode = |codes: &[Vec<f32>]| -> Result<Vec<f32>> {
        let d = codes[0].len();
        let flat: Vec<f32> = codes.iter().flatten().copied().collect();
        let t = Tensor::<2>::from_data(TensorData::new(flat, [codes.len(), d]), &dev);
        floats(model.decode(t))
    };
    // Rows of interpolations between pairs of test images (the first ten, in pairs).
    let mut rows = Vec::new();
    for p in 0..5 {
        let (ca, cb) = (encode(2 * p)?, encode(2 * p + 1)?);
        let steps = a.steps.max(2);
        let codes: Vec<Vec<f32>> = (0..steps)
            .map(|s| {
                let t = s as f32 / (steps - 1) as f32;
                ca.iter().zip(&cb).map(|(x, y)| (1.0 - t) * x + t * y).collect()
            })
            .collect();
        rows.push(decode(&codes)?);
    }
    std::fs::create_dir_all(&a.out)?;
    grid(&rows, side, a.steps.max(2), &a.out.join("interpolation.png"))?;
    // Samples from a Gaussian fitted to the training codes.
    let (codes, _) = codes_and_errors(&model, &train, side)?;
    let (mean, std) = gaussian(&codes);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let normal = |rng: &mut rand::rngs::StdRng| -> f64 { rng.sample(rand_distr::StandardNormal) };
    let mut sample_rows = Vec::new();
    for _ in 0..4 {
        let codes: Vec<Vec<f32>> =
            (0..10).map(|_| mean.iter().zip(&std).map(|(m, s)| (m + s * normal(&mut rng)) as f32).collect()).collect();
        sample_rows.push(decode(&codes)?);
    }
    grid(&sample_rows, side, 10, &a.out.join("samples.png"))?;
    println!("wrote {} and {}", a.out.join("interpolation.png").display(), a.out.join("samples.png").display());
    Ok(())
}

/// Rows of `per_row` images (each `side` x `side`, values in [0, 1]) as one PNG, 3x enlarged.
fn grid(rows: &[Vec<f32>], side: usize, per_row: usize, path: &Path) -> Result<()> {
    let s = 3u32;
    let img = image::GrayImage::from_fn((per_row * side) as u32 * s, (rows.len() * side) as u32 * s, |px, py| {
        let (col, row) = ((px / s) as usize, (py / s) as usize);
        let (r, k, x, y) = (row / side, col / side, col % side, row % side);
        let v = rows[r].get(k * side * side + y * side + x).copied().unwrap_or(0.0);
        image::Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8])
    });
    img.save(path).with_context(|| path.display().to_string())
}

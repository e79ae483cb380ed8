//! The model registry: trained models embedded in the binary (`include_bytes!`), their
//! loading into networks and tables, and their export from a trained network.
//!
//! A model file ([`blob`]) holds the configuration, the f16 weights of `g_a`, `h_a`, `g_s`
//! and the gain vectors, the integer hyper-synthesis, and the integer probability tables.
//! Its identifier is the first 8 bytes of its SHA-256, so a `.cae` file names exactly the
//! model that can decode it.
#![forbid(unsafe_code)]

pub mod blob;

use std::collections::HashMap;

use blob::{Blob, BlobError, Values};
use burn::prelude::*;
use cae_decoder::{IntConv, IntConvKind, IntHyperSynthesis, Synthesis};
use cae_encoder::{Analysis, HyperAnalysis};
use cae_entropy::{CdfTable, TableSet};
use cae_nn::{FactorizedDensity, GainUnit, ModelConfig, NamedTensor};
use sha2::{Digest, Sha256};

/// Models built into the binary: (name, model file), the default first. A model that has
/// written files stays here for good, so that they keep decoding (see weights/README.md).
pub static BUILTIN: &[(&str, &[u8])] = &[
    ("default", include_bytes!("../weights/default.caem")),
    ("default-2026-11-29", include_bytes!("../weights/default-2026-11-29.caem")),
    ("default-2026-11-28d", include_bytes!("../weights/default-2026-11-28d.caem")),
    ("default-2026-11-28c", include_bytes!("../weights/default-2026-11-28c.caem")),
    ("default-2026-11-28b", include_bytes!("../weights/default-2026-11-28b.caem")),
    ("default-2026-11-28", include_bytes!("../weights/default-2026-11-28.caem")),
    ("default-2026-11-27", include_bytes!("../weights/default-2026-11-27.caem")),
    // The default model trained further on noisy inputs (σ = 15) against clean targets: a
    // denoising autoencoder that is also a codec (`caec denoise`).
    ("denoise", include_bytes!("../weights/denoise.caem")),
];

/// The name of the model used when none is asked for.
pub const DEFAULT_MODEL: &str = "default";

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Config(#[from] cae_nn::ConfigError),
    #[error("model tables: {0}")]
    Tables(#[from] cae_entropy::EntropyError),
    #[error("model file: {0}")]
    Invalid(String),
    #[error("no built-in model is named {0:?}")]
    UnknownName(String),
}

/// The identifier of a model file.
pub fn model_id(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The identifier of every built-in model, with its name.
pub fn builtin_ids() -> Vec<(&'static str, u64)> {
    BUILTIN.iter().map(|(n, b)| (*n, model_id(b))).collect()
}

/// Load the built-in model called `name`.
pub fn load_builtin(name: &str, device: &Device) -> Result<Model, ModelError> {
    let (_, bytes) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| ModelError::UnknownName(name.into()))?;
    Model::from_bytes(name, bytes, device)
}

/// Load the built-in model whose identifier is `id`.
pub fn load_builtin_by_id(id: u64, device: &Device) -> Option<Result<Model, ModelError>> {
    BUILTIN.iter().find(|(_, b)| model_id(b) == id).map(|(n, b)| Model::from_bytes(n, b, device))
}

/// A loaded model: networks for both directions and the integer entropy models.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub id: u64,
    pub config: ModelConfig,
    pub analysis: Analysis,
    pub hyper_analysis: HyperAnalysis,
    pub synthesis: Synthesis,
    pub gains: GainUnit,
    pub hyper_synthesis: IntHyperSynthesis,
    /// One factorized table per channel of z.
    pub z_tables: TableSet,
    /// One Gaussian table per scale of the scale table.
    pub y_tables: TableSet,
}

/// 1-based index of the λ in `lambdas` nearest `target` in log λ (the lower on a tie).
fn nearest_level(lambdas: &[f64], target: f64) -> u8 {
    let d = |l: f64| (l.ln() - target.ln()).abs();
    let i = (0..lambdas.len()).fold(0, |best, i| if d(lambdas[i]) < d(lambdas[best]) { i } else { best });
    (i + 1).min(u8::MAX as usize) as u8
}

fn float_tensors(blob: &Blob, prefix: &str) -> HashMap<String, NamedTensor> {
    blob.entries
        .iter()
        .filter_map(|(name, e)| {
            let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
            Some((
                rest.to_string(),
                NamedTensor { name: rest.to_string(), shape: e.shape.clone(), values: e.values.to_f32()? },
            ))
        })
        .collect()
}

fn load_module<M: Module>(module: M, blob: &Blob, prefix: &str) -> Result<M, ModelError> {
    let (m, missing) = cae_nn::import_params(module, &float_tensors(blob, prefix));
    match missing.first() {
        Some(name) => Err(BlobError::BadTensor(format!("{prefix}.{name}")).into()),
        None => Ok(m),
    }
}

fn ints<'a>(map: &HashMap<&str, &'a blob::Entry>, name: &str) -> Result<&'a [i32], ModelError> {
    match map.get(name).map(|e| &e.values) {
        Some(Values::I32(v)) => Ok(v),
        _ => Err(BlobError::BadTensor(name.into()).into()),
    }
}

fn shorts<'a>(map: &HashMap<&str, &'a blob::Entry>, name: &str) -> Result<&'a [i16], ModelError> {
    match map.get(name).map(|e| &e.values) {
        Some(Values::I16(v)) => Ok(v),
        _ => Err(BlobError::BadTensor(name.into()).into()),
    }
}

fn longs<'a>(map: &HashMap<&str, &'a blob::Entry>, name: &str) -> Result<&'a [i64], ModelError> {
    match map.get(name).map(|e| &e.values) {
        Some(Values::I64(v)) => Ok(v),
        _ => Err(BlobError::BadTensor(name.into()).into()),
    }
}

fn push_tables(blob: &mut Blob, prefix: &str, tables: &[CdfTable]) {
    let offsets: Vec<i32> = tables.iter().map(|t| t.offset).collect();
    let lens: Vec<i32> = tables.iter().map(|t| t.probs.len() as i32).collect();
    let probs: Vec<i32> = tables.iter().flat_map(|t| t.probs.iter().map(|&p| p as i32)).collect();
    blob.push(format!("{prefix}.offsets"), &[tables.len()], Values::I32(offsets));
    blob.push(format!("{prefix}.lens"), &[tables.len()], Values::I32(lens));
    blob.push(format!("{prefix}.probs"), &[probs.len()], Values::I32(probs));
}

fn read_tables(map: &HashMap<&str, &blob::Entry>, prefix: &str) -> Result<TableSet, ModelError> {
    let offsets = ints(map, &format!("{prefix}.offsets"))?;
    let lens = ints(map, &format!("{prefix}.lens"))?;
    let probs = ints(map, &format!("{prefix}.probs"))?;
    if offsets.len() != lens.len() {
        return Err(ModelError::Invalid(format!("{prefix}: offsets and lengths differ")));
    }
    let mut at = 0usize;
    let mut tables = Vec::with_capacity(lens.len());
    for (&offset, &len) in offsets.iter().zip(lens) {
        let len = usize::try_from(len).map_err(|_| ModelError::Invalid(format!("{prefix}: negative length")))?;
        let p = probs
            .get(at..at + len)
            .ok_or_else(|| ModelError::Invalid(format!("{prefix}: probabilities truncated")))?;
        tables.push(CdfTable { offset, probs: p.iter().map(|&v| v as u32).collect() });
        at += len;
    }
    if at != probs.len() {
        return Err(ModelError::Invalid(format!("{prefix}: extra probabilities")));
    }
    Ok(TableSet::new(tables)?)
}

/// The λ whose level a model codes at unless told otherwise: the middle of the reference
/// λ range (CompressAI's quality 3), about 0.4 bpp on Kodak.
pub const DEFAULT_LAMBDA: f64 = 0.0067;

impl Model {
    /// The quality level (1-based) to code at unless told otherwise: the one whose λ is
    /// nearest [`DEFAULT_LAMBDA`] (in log λ), so that a model with other levels still gets a
    /// comparable rate rather than the level of the same number.
    pub fn default_quality(&self) -> u8 {
        nearest_level(&self.config.lambdas, DEFAULT_LAMBDA)
    }

    /// Parse a model file and build its networks on `device`.
    pub fn from_bytes(name: &str, bytes: &[u8], device: &Device) -> Result<Model, ModelError> {
        let blob = Blob::parse(bytes)?;
        let config = ModelConfig::from_toml(&blob.config)?;
        let map = blob.map();
        let analysis = load_module(Analysis::new(&config, device), &blob, "g_a")?;
        let hyper_analysis = load_module(HyperAnalysis::new(&config, device), &blob, "h_a")?;
        let synthesis = load_module(Synthesis::new(&config, device), &blob, "g_s")?;
        let gains = load_module(GainUnit::new(&config.lambdas, config.m, device), &blob, "gains")?;
        let mut layers = Vec::new();
        for i in 0..3 {
            let meta = ints(&map, &format!("h_s.{i}.meta"))?;
            let [kind, c_in, c_out] = meta else {
                return Err(ModelError::Invalid(format!("h_s.{i}.meta")));
            };
            let kind = IntConvKind::from_code(*kind as u8)
                .ok_or_else(|| ModelError::Invalid(format!("h_s.{i}: unknown layer kind")))?;
            let (c_in, c_out) = (*c_in as usize, *c_out as usize);
            let shift = ints(&map, &format!("h_s.{i}.shift"))?;
            layers.push(IntConv {
                kind,
                c_in,
                c_out,
                weight: shorts(&map, &format!("h_s.{i}.weight"))?.iter().map(|&w| w as i32).collect(),
                shift: shift.iter().map(|&s| s.clamp(0, 255) as u8).collect(),
                bias: longs(&map, &format!("h_s.{i}.bias"))?.to_vec(),
            });
        }
        let hyper_synthesis =
            IntHyperSynthesis { layers, scale_thresholds: longs(&map, "h_s.scale_thresholds")?.to_vec() };
        if !hyper_synthesis.validate()
            || hyper_synthesis.latent_channels() != config.m
            || hyper_synthesis.layers[0].c_in != config.z_channels()
        {
            return Err(ModelError::Invalid("integer hyper-synthesis does not match the config".into()));
        }
        let z_tables = read_tables(&map, "z_tables")?;
        let y_tables = read_tables(&map, "y_tables")?;
        if z_tables.len() != config.z_channels() || y_tables.len() != hyper_synthesis.scale_thresholds.len() {
            return Err(ModelError::Invalid("table counts do not match the config".into()));
        }
        Ok(Model {
            name: name.to_string(),
            id: model_id(bytes),
            config,
            analysis,
            hyper_analysis,
            synthesis,
            gains,
            hyper_synthesis,
            z_tables,
            y_tables,
        })
    }
}

/// The trained networks that [`export`] turns into a model file.
pub struct Trained<'a> {
    pub config: &'a ModelConfig,
    pub analysis: &'a Analysis,
    pub hyper_analysis: &'a HyperAnalysis,
    pub synthesis: &'a Synthesis,
    pub hyper_synthesis: &'a cae_decoder::HyperSynthesis,
    pub gains: &'a GainUnit,
    pub density: &'a FactorizedDensity,
}

/// Largest |z| a factorized table covers before escaping.
const Z_TABLE_RANGE: i32 = 255;
/// Probability mass left to the escape on each side of a factorized table.
const Z_TAIL_MASS: f64 = 1e-7;

/// Sample the learned density of each z channel into an integer table.
pub fn z_tables(density: &FactorizedDensity, device: &Device) -> Vec<CdfTable> {
    let r = Z_TABLE_RANGE;
    // CDF at v + ½ for v in -r-1 ..= r.
    let points: Vec<f32> = (-r - 1..=r).map(|v| v as f32 + 0.5).collect();
    density
        .cdf(&points, device)
        .into_iter()
        .map(|cdf| {
            // cdf[k] = CDF(v + ½) with v = k - r - 1.
            let at = |v: i32| cdf[(v + r + 1) as usize];
            let lo = (-r..=r).find(|&v| at(v) > Z_TAIL_MASS).unwrap_or(0);
            let hi = (lo..=r).find(|&v| 1.0 - at(v) <= Z_TAIL_MASS).unwrap_or(r);
            let mut pmf: Vec<f64> = (lo..=hi).map(|v| (at(v) - at(v - 1)).max(0.0)).collect();
            pmf.push(at(lo - 1) + (1.0 - at(hi)).max(0.0));
            CdfTable::from_float(lo, &pmf).expect("table length is bounded by the range")
        })
        .collect()
}

/// Build a model file from trained networks.
pub fn export(t: &Trained, device: &Device) -> Vec<u8> {
    let mut blob = Blob { config: t.config.to_toml(), entries: Vec::new() };
    let mut floats = |prefix: &str, params: Vec<NamedTensor>| {
        for p in params {
            let v = p.values.iter().map(|&x| half::f16::from_f32(x)).collect();
            blob.push(format!("{prefix}.{}", p.name), &p.shape, Values::F16(v));
        }
    };
    floats("g_a", cae_nn::export_params(t.analysis));
    floats("h_a", cae_nn::export_params(t.hyper_analysis));
    floats("g_s", cae_nn::export_params(t.synthesis));
    floats("gains", cae_nn::export_params(t.gains));
    let scales = cae_entropy::default_scale_table();
    let ihs = t.hyper_synthesis.to_integer(t.config, &scales);
    for (i, l) in ihs.layers.iter().enumerate() {
        blob.push(format!("h_s.{i}.meta"), &[3], Values::I32(vec![l.kind.code() as i32, l.c_in as i32, l.c_out as i32]));
        // |weight| <= WEIGHT_LIMIT = 2^15 - 1, so i16 holds them exactly.
        let w16 = l.weight.iter().map(|&w| w as i16).collect();
        blob.push(format!("h_s.{i}.weight"), &[l.weight.len()], Values::I16(w16));
        blob.push(format!("h_s.{i}.shift"), &[l.shift.len()], Values::I32(l.shift.iter().map(|&s| s as i32).collect()));
        blob.push(format!("h_s.{i}.bias"), &[l.bias.len()], Values::I64(l.bias.clone()));
    }
    blob.push("h_s.scale_thresholds", &[ihs.scale_thresholds.len()], Values::I64(ihs.scale_thresholds.clone()));
    push_tables(&mut blob, "z_tables", &z_tables(t.density, device));
    let y: Vec<CdfTable> = scales.iter().map(|&s| cae_entropy::gaussian_table(s)).collect();
    push_tables(&mut blob, "y_tables", &y);
    blob.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_quality_is_the_level_nearest_the_default_lambda() {
        assert_eq!(nearest_level(&[0.0009, 0.0018, 0.0035, 0.0067, 0.013, 0.025], DEFAULT_LAMBDA), 4);
        assert_eq!(nearest_level(&[0.0035, 0.0067, 0.013, 0.025], DEFAULT_LAMBDA), 2);
        assert_eq!(nearest_level(&[0.05, 0.1], DEFAULT_LAMBDA), 1);
        assert_eq!(nearest_level(&[0.0001, 0.001], DEFAULT_LAMBDA), 2);
        // In log λ: 0.0067 is nearer 0.013 (×1.94) than 0.0030 (×2.23).
        assert_eq!(nearest_level(&[0.003, 0.013], DEFAULT_LAMBDA), 2);
        // Every built-in model: a level of its own.
        let dev = Device::flex();
        for (name, _) in BUILTIN {
            let m = load_builtin(name, &dev).unwrap();
            let q = m.default_quality() as usize;
            assert!((1..=m.config.levels()).contains(&q), "{name}: {q}");
        }
    }
}

use serde::{Deserialize, Serialize};

/// The architecture of a model: travels with the weights (and the training run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Channels of the main transforms' hidden layers (and of the hyper-latent z unless
    /// `hyper_n` is set).
    pub n: usize,
    /// Channels of the latent y (the code size per 16x16 block).
    pub m: usize,
    /// Kernel size of the main transforms.
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// GDN (true) or ReLU (false) between the main layers.
    #[serde(default = "default_true")]
    pub gdn: bool,
    /// One λ per quality level, ascending: loss = λ·255²·MSE + bpp.
    pub lambdas: Vec<f64>,
    /// Channels of the hyper-latent z and of the hyper-analysis's hidden layers, when they
    /// differ from `n` (a model whose main transforms grew while its hyperprior did not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyper_n: Option<usize>,
}

fn default_kernel() -> usize {
    5
}

fn default_true() -> bool {
    true
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("invalid model config: {0}")]
    Invalid(String),
    #[error("model config: {0}")]
    Parse(#[from] toml::de::Error),
}

impl ModelConfig {
    /// Channels of the hyper-latent z (and of h_a's hidden layers).
    pub fn z_channels(&self) -> usize {
        self.hyper_n.unwrap_or(self.n)
    }

    /// Number of quality levels.
    pub fn levels(&self) -> usize {
        self.lambdas.len()
    }

    /// Parse and check a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let c: ModelConfig = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    /// Serialise as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }

    /// Check ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=1024).contains(&self.n) || !(2..=1024).contains(&self.m) || self.m % 2 != 0 {
            return bad(format!("n = {}, m = {} (1..=1024, m even)", self.n, self.m));
        }
        if self.hyper_n.is_some_and(|h| !(1..=1024).contains(&h)) {
            return bad(format!("hyper_n = {:?} (1..=1024)", self.hyper_n));
        }
        if self.kernel % 2 == 0 || !(3..=9).contains(&self.kernel) {
            return bad(format!("kernel = {} (odd, 3..=9)", self.kernel));
        }
        if self.lambdas.is_empty() || self.lambdas.len() > 64 {
            return bad(format!("{} quality levels (1..=64)", self.lambdas.len()));
        }
        if self.lambdas.windows(2).any(|w| w[0] >= w[1]) || self.lambdas.iter().any(|&l| !(l > 0.0)) {
            return bad("lambdas must be positive and ascending".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hyperprior_width_is_written_only_when_it_differs() {
        let plain = ModelConfig { n: 64, m: 96, kernel: 5, gdn: true, lambdas: vec![0.01], hyper_n: None };
        // Models written before the field existed read, and write, the same text (model ids
        // hash it).
        assert!(!plain.to_toml().contains("hyper_n"));
        assert_eq!(ModelConfig::from_toml(&plain.to_toml()).unwrap(), plain);
        assert_eq!(plain.z_channels(), 64);
        let grown = ModelConfig { n: 128, hyper_n: Some(64), ..plain };
        assert!(grown.to_toml().contains("hyper_n = 64"));
        assert_eq!(ModelConfig::from_toml(&grown.to_toml()).unwrap().z_channels(), 64);
        assert!(ModelConfig::from_toml(&grown.to_toml().replace("hyper_n = 64", "hyper_n = 0")).is_err());
    }
}

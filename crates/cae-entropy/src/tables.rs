//! Integer probability tables.
//!
//! Every table is a list of 16-bit fixed-point probabilities that sum to exactly
//! `1 << PRECISION`, all non-zero, whose last entry is the escape symbol. Tables are built
//! once (at model export) from floating-point distributions and then stored as integers in
//! the model, so that encoder and decoder use bit-identical tables on every machine.

/// Fixed-point precision of the probabilities.
pub const PRECISION: u32 = 16;
/// The total every table sums to.
pub const TOTAL: u32 = 1 << PRECISION;
/// The largest number of entries (escape included) a table may have.
pub const MAX_TABLE_LEN: usize = 1 << 14;

/// An integer probability table over the values `offset .. offset + len - 1`; the last
/// entry is the escape symbol, used for every value outside that range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CdfTable {
    /// The value coded by entry 0.
    pub offset: i32,
    /// Fixed-point probabilities, escape last; non-zero, summing to [`TOTAL`].
    pub probs: Vec<u32>,
}

/// Why a table is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    #[error("probability table has {0} entries (allowed 2..={MAX_TABLE_LEN})")]
    BadLength(usize),
    #[error("probability table has a zero entry")]
    ZeroProbability,
    #[error("probability table sums to {0}, not {TOTAL}")]
    BadTotal(u64),
}

impl CdfTable {
    /// Check the invariants that the coder relies on.
    pub fn validate(&self) -> Result<(), TableError> {
        if self.probs.len() < 2 || self.probs.len() > MAX_TABLE_LEN {
            return Err(TableError::BadLength(self.probs.len()));
        }
        if self.probs.contains(&0) {
            return Err(TableError::ZeroProbability);
        }
        let total: u64 = self.probs.iter().map(|&p| p as u64).sum();
        if total != TOTAL as u64 {
            return Err(TableError::BadTotal(total));
        }
        Ok(())
    }

    /// Number of values coded without escape.
    pub fn range_len(&self) -> usize {
        self.probs.len() - 1
    }

    /// The value whose probability interval holds `u` (taken modulo [`TOTAL`]): a uniform
    /// `u` gives a sample of the table's distribution. The escape entry gives the first value
    /// past the range.
    pub fn quantile(&self, u: u32) -> i32 {
        let u = u % TOTAL;
        let mut cum = 0u32;
        for (i, &p) in self.probs.iter().enumerate() {
            cum += p;
            if u < cum {
                return self.offset + i as i32;
            }
        }
        self.offset + self.range_len() as i32
    }

    /// Quantise a floating-point distribution over `offset ..` (plus the escape mass as the
    /// last entry) into a valid table. Deterministic for a given input.
    pub fn from_float(offset: i32, pmf_with_escape: &[f64]) -> Result<Self, TableError> {
        let n = pmf_with_escape.len();
        if !(2..=MAX_TABLE_LEN).contains(&n) {
            return Err(TableError::BadLength(n));
        }
        let sum: f64 = pmf_with_escape.iter().map(|p| p.max(0.0)).sum();
        let spare = (TOTAL - n as u32) as f64; // one count is reserved for every entry
        let mut probs: Vec<u32> = pmf_with_escape
            .iter()
            .map(|&p| 1 + ((p.max(0.0) / sum.max(f64::MIN_POSITIVE)) * spare).floor() as u32)
            .collect();
        // Hand the rounding remainder to the largest entries, where it costs least.
        let mut total: u32 = probs.iter().sum();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| probs[b].cmp(&probs[a]).then(a.cmp(&b)));
        let mut k = 0;
        while total < TOTAL {
            probs[order[k % n]] += 1;
            total += 1;
            k += 1;
        }
        let table = CdfTable { offset, probs };
        table.validate()?;
        Ok(table)
    }
}

/// Standard normal CDF, computed in f64 (used only when tables are built).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Complementary error function (W. J. Cody's rational approximations are overkill here:
/// this uses the Numerical Recipes erfc with relative error below 1.2e-7, plenty for
/// 16-bit tables).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * (-z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
        .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The scales of the Gaussian conditional: `count` values exp-spaced from `min` to `max`.
pub fn scale_table(min: f64, max: f64, count: usize) -> Vec<f64> {
    let (lo, hi) = (min.ln(), max.ln());
    (0..count).map(|i| (lo + (hi - lo) * i as f64 / (count - 1) as f64).exp()).collect()
}

/// The default scale table: 64 scales from 0.11 to 256.
pub fn default_scale_table() -> Vec<f64> {
    scale_table(0.11, 256.0, 64)
}

/// Integer table of a zero-mean Gaussian with standard deviation `scale`, quantised to
/// integers: values `-h ..= h` with `h = ceil(6.11 * scale)` (at least 1), plus escape.
pub fn gaussian_table(scale: f64) -> CdfTable {
    let h = ((6.11 * scale).ceil() as i32).max(1);
    let mut pmf: Vec<f64> = (-h..=h)
        .map(|v| normal_cdf((v as f64 + 0.5) / scale) - normal_cdf((v as f64 - 0.5) / scale))
        .collect();
    let inside: f64 = pmf.iter().sum();
    pmf.push((1.0 - inside).max(0.0));
    CdfTable::from_float(-h, &pmf).expect("Gaussian tables are within bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_tables_are_valid_and_peaked() {
        for s in default_scale_table() {
            let t = gaussian_table(s);
            t.validate().unwrap();
            let centre = (-t.offset) as usize;
            let max = *t.probs[..t.range_len()].iter().max().unwrap();
            assert_eq!(t.probs[centre], max, "scale {s}");
        }
        assert_eq!(gaussian_table(0.11).probs.len(), 4);
        assert!(gaussian_table(256.0).probs.len() > 3000);
    }

    #[test]
    fn normal_cdf_matches_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.0) - 0.841_344_746).abs() < 1e-6);
        assert!((normal_cdf(-2.0) - 0.022_750_132).abs() < 1e-6);
    }

    #[test]
    fn quantiles_follow_the_probabilities() {
        let t = CdfTable { offset: -1, probs: vec![100, TOTAL - 300, 150, 50] };
        assert_eq!((t.quantile(0), t.quantile(99)), (-1, -1));
        assert_eq!((t.quantile(100), t.quantile(TOTAL - 201)), (0, 0));
        assert_eq!((t.quantile(TOTAL - 200), t.quantile(TOTAL - 51)), (1, 1));
        // The escape entry: the first value past the range.
        assert_eq!(t.quantile(TOTAL - 1), 2);
        assert_eq!(t.quantile(TOTAL + 5), -1);
        // Uniform u over a Gaussian table: sample mean near 0, spread near the scale.
        let g = gaussian_table(3.0);
        let n = 4096u32;
        let v: Vec<f64> = (0..n).map(|k| g.quantile(k * (TOTAL / n) + 7) as f64).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(mean.abs() < 0.05 && (sd - 3.0).abs() < 0.2, "mean {mean}, sd {sd}");
    }

    #[test]
    fn from_float_rejects_and_repairs() {
        assert_eq!(CdfTable::from_float(0, &[1.0]), Err(TableError::BadLength(1)));
        let t = CdfTable::from_float(-1, &[0.0, 1.0, 0.0]).unwrap();
        assert_eq!(t.probs, vec![1, TOTAL - 2, 1]);
        let bad = CdfTable { offset: 0, probs: vec![TOTAL, 0] };
        assert_eq!(bad.validate(), Err(TableError::ZeroProbability));
    }
}

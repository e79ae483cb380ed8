//! The hyper-synthesis `h_s` in integer arithmetic.
//!
//! `h_s` chooses the probability table of every latent symbol, so the encoder and the
//! decoder must compute exactly the same thing on every machine, thread count and SIMD path.
//! The network is trained in floats and converted once, at export, to fixed point: weights
//! as integers with a power-of-two scale per output channel, activations with
//! [`FRAC_BITS`] fractional bits, exact accumulation (integer-valued f64 sums below 2^53),
//! round-half-up shifts and a clipped ReLU. Exact addition is associative, so the result does
//! not depend on the order in which threads or vector lanes add the terms.

use rayon::prelude::*;

/// Fractional bits of the fixed-point activations (1.0 = 4096).
pub const FRAC_BITS: u32 = 12;
/// Activations are clipped to ±`ACT_LIMIT` (±4096.0) so that no accumulator overflows.
pub const ACT_LIMIT: i64 = 1 << 24;
/// Hyper-latent symbols are clipped to ±`Z_LIMIT` before entering the network.
pub const Z_LIMIT: i32 = 1 << 12;
/// Largest magnitude of an integer weight.
pub const WEIGHT_LIMIT: i32 = (1 << 15) - 1;

/// The two kinds of layer `h_s` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntConvKind {
    /// 5x5 transposed convolution, stride 2, padding 2, output padding 1 (doubles H and W).
    Up5x5,
    /// 3x3 convolution, stride 1, padding 1.
    Same3x3,
}

impl IntConvKind {
    /// The kernel size.
    pub fn kernel(self) -> usize {
        match self {
            IntConvKind::Up5x5 => 5,
            IntConvKind::Same3x3 => 3,
        }
    }

    /// A stable code for serialisation.
    pub fn code(self) -> u8 {
        match self {
            IntConvKind::Up5x5 => 0,
            IntConvKind::Same3x3 => 1,
        }
    }

    /// The kind with serialisation code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(IntConvKind::Up5x5),
            1 => Some(IntConvKind::Same3x3),
            _ => None,
        }
    }
}

/// One integer convolution layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntConv {
    pub kind: IntConvKind,
    pub c_in: usize,
    pub c_out: usize,
    /// Weights, layout [c_out][c_in][k][k].
    pub weight: Vec<i32>,
    /// Per output channel: the weight scale is 2^shift.
    pub shift: Vec<u8>,
    /// Per output channel, scaled by 2^(shift + FRAC_BITS).
    pub bias: Vec<i64>,
}

impl IntConv {
    /// Convert float weights, given in burn's layout: [c_in][c_out][k][k] for a transposed
    /// convolution, [c_out][c_in][k][k] for a convolution.
    pub fn from_float(kind: IntConvKind, c_in: usize, c_out: usize, weight: &[f32], bias: &[f32]) -> Self {
        let k = kind.kernel();
        assert_eq!(weight.len(), c_in * c_out * k * k, "weight size");
        assert_eq!(bias.len(), c_out, "bias size");
        let at = |o: usize, i: usize, t: usize| match kind {
            IntConvKind::Up5x5 => weight[(i * c_out + o) * k * k + t],
            IntConvKind::Same3x3 => weight[(o * c_in + i) * k * k + t],
        };
        let mut w = vec![0i32; c_out * c_in * k * k];
        let mut shift = vec![0u8; c_out];
        let mut b = vec![0i64; c_out];
        for o in 0..c_out {
            let max = (0..c_in * k * k).map(|j| at(o, j / (k * k), j % (k * k)).abs()).fold(0f32, f32::max);
            let mut s = 0u32;
            while s < 30 && (max as f64) * 2f64.powi(s as i32 + 1) <= WEIGHT_LIMIT as f64 {
                s += 1;
            }
            shift[o] = s as u8;
            let scale = 2f64.powi(s as i32);
            for i in 0..c_in {
                for t in 0..k * k {
                    w[(o * c_in + i) * k * k + t] =
                        ((at(o, i, t) as f64 * scale).round() as i32).clamp(-WEIGHT_LIMIT, WEIGHT_LIMIT);
                }
            }
            b[o] = (bias[o] as f64 * scale * 2f64.powi(FRAC_BITS as i32)).round() as i64;
        }
        IntConv { kind, c_in, c_out, weight: w, shift, bias: b }
    }

    /// Check the shapes and ranges that `forward` relies on.
    pub fn validate(&self) -> bool {
        let k = self.kind.kernel();
        self.weight.len() == self.c_out * self.c_in * k * k
            && self.shift.len() == self.c_out
            && self.bias.len() == self.c_out
            && self.shift.iter().all(|&s| s <= 30)
            && self.weight.iter().all(|w| w.abs() <= WEIGHT_LIMIT)
            && self.bias.iter().all(|b| b.abs() < 1 << 60)
    }

    /// Output height and width for an input of `h` x `w`.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        match self.kind {
            IntConvKind::Up5x5 => (2 * h, 2 * w),
            IntConvKind::Same3x3 => (h, w),
        }
    }

    /// Apply the layer to `input` ([c_in][h][w], fixed point); `relu` clips negatives.
    ///
    /// Both kinds are exact f64 products plus data movement: a 3x3 convolution is
    /// [`cae_nn::conv3x3_exact`] (a direct product reading the taps' runs from padded planes,
    /// AVX2 where the CPU has it); a transposed convolution multiplies the per-tap weights by
    /// the input (ndarray's matrixmultiply) and adds every product column into its place in
    /// the output (col2im), in bands of about [`BAND_COLUMNS`] output pixels, so the buffers
    /// stay a few MiB for any image size.
    pub fn forward(&self, input: &[i32], h: usize, w: usize, relu: bool) -> Vec<i32> {
        self.forward_in_bands(input, h, w, relu, BAND_COLUMNS)
    }

    fn forward_in_bands(&self, input: &[i32], h: usize, w: usize, relu: bool, band_columns: usize) -> Vec<i32> {
        assert_eq!(input.len(), self.c_in * h * w, "input size");
        let (ho, wo) = self.out_size(h, w);
        let kk = self.kind.kernel() * self.kind.kernel();
        // The sums are computed in f64, which holds them exactly: every product is an integer
        // below 2^15 · 2^24 = 2^39 in magnitude and every partial sum one below c_in·k²·2^39 < 2^53,
        // so each addition (fused or not) is exact and the result does not depend on the order
        // in which the matrix product, threads or vector lanes add the terms.
        assert!(self.c_in * kk < 1 << 14, "layer too wide for exact f64 accumulation");
        // Same3x3: [c_out][c_in·k²] as stored; Up5x5: [c_out·k²][c_in], one row per output tap.
        let weights: Vec<f64> = match self.kind {
            IntConvKind::Same3x3 => self.weight.iter().map(|&v| v as f64).collect(),
            IntConvKind::Up5x5 => {
                let mut taps = vec![0f64; self.c_out * kk * self.c_in];
                for o in 0..self.c_out {
                    for i in 0..self.c_in {
                        for t in 0..kk {
                            taps[(o * kk + t) * self.c_in + i] = self.weight[(o * self.c_in + i) * kk + t] as f64;
                        }
                    }
                }
                taps
            }
        };
        let mut out = vec![0i32; self.c_out * ho * wo];
        // The 3x3 layer in one pass of cae-nn's exact direct product (no im2col block, so no
        // bands needed).
        let band = match self.kind {
            IntConvKind::Same3x3 => ho.max(1),
            IntConvKind::Up5x5 => (band_columns / wo.max(1)).max(2),
        };
        for oy0 in (0..ho).step_by(band) {
            let oy1 = (oy0 + band).min(ho);
            let acc = match self.kind {
                IntConvKind::Same3x3 => {
                    let x: Vec<f64> = input.iter().map(|&v| v as f64).collect();
                    cae_nn::conv3x3_exact(&x, self.c_in, h, w, &weights, self.c_out)
                }
                IntConvKind::Up5x5 => self.up_band(input, h, w, &weights, oy0..oy1),
            };
            let n = (oy1 - oy0) * wo;
            out.par_chunks_mut(ho * wo).zip(acc.par_chunks(n)).enumerate().for_each(|(o, (plane, acc))| {
                let s = self.shift[o] as u32;
                let bias = self.bias[o];
                let half = if s > 0 { 1i64 << (s - 1) } else { 0 };
                let lo = if relu { 0 } else { -ACT_LIMIT };
                for (dst, &a) in plane[oy0 * wo..oy1 * wo].iter_mut().zip(acc) {
                    let v = (a as i64 + bias + half) >> s;
                    *dst = v.clamp(lo, ACT_LIMIT) as i32;
                }
            });
        }
        out
    }

    /// Sums of output rows `rows` of a 5x5 stride-2 transposed convolution, [c_out][rows·2w]:
    /// row (o, ky, kx) of taps × input, column iy·w + ix, belongs at
    /// out[o][2·iy + ky − 2][2·ix + kx − 2]; only the input rows that reach `rows` are used.
    fn up_band(&self, input: &[i32], h: usize, w: usize, taps: &[f64], rows: std::ops::Range<usize>) -> Vec<f64> {
        let (k, kk, wo) = (5, 25, 2 * w);
        let iy0 = rows.start.saturating_sub(1) / 2;
        let iy1 = ((rows.end + 1) / 2 + 1).min(h);
        let n_in = (iy1 - iy0) * w;
        let x: Vec<f64> =
            (0..self.c_in).flat_map(|i| input[(i * h + iy0) * w..(i * h + iy1) * w].iter().map(|&v| v as f64)).collect();
        let cols = matmul(taps, self.c_out * kk, self.c_in, &x, n_in);
        let mut acc = vec![0f64; self.c_out * rows.len() * wo];
        acc.par_chunks_mut(rows.len() * wo).enumerate().for_each(|(o, plane)| {
            for t in 0..kk {
                let (ky, kx) = (t / k, t % k);
                let col = &cols[(o * kk + t) * n_in..][..n_in];
                for iy in iy0..iy1 {
                    let Some(oy) = (2 * iy + ky).checked_sub(2).filter(|oy| rows.contains(oy)) else { continue };
                    let dst = &mut plane[(oy - rows.start) * wo..][..wo];
                    let src = &col[(iy - iy0) * w..][..w];
                    for (ix, &v) in src.iter().enumerate() {
                        if let Some(ox) = (2 * ix + kx).checked_sub(2).filter(|&ox| ox < wo) {
                            dst[ox] += v;
                        }
                    }
                }
            }
        });
        acc
    }
}

/// Output pixels per band of [`IntConv::forward`] (the im2col and product buffers scale with it).
const BAND_COLUMNS: usize = 4096;

/// `a` (`m` x `n`) times `b` (`n` x `p`), row-major f64, the rows of `a` split over the threads.
fn matmul(a: &[f64], m: usize, n: usize, b: &[f64], p: usize) -> Vec<f64> {
    use ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2};
    let mut c = vec![0f64; m * p];
    if m == 0 || n == 0 || p == 0 {
        return c;
    }
    let bv = ArrayView2::from_shape((n, p), b).expect("b is n x p");
    let rows = m.div_ceil(rayon::current_num_threads().max(1));
    c.par_chunks_mut(rows * p).zip(a.par_chunks(rows * n)).for_each(|(c, a)| {
        let r = a.len() / n;
        let av = ArrayView2::from_shape((r, n), a).expect("a is r x n");
        let mut cv = ArrayViewMut2::from_shape((r, p), c).expect("c is r x p");
        general_mat_mul(1.0, &av, &bv, 0.0, &mut cv);
    });
    c
}

/// The mean-scale hyper-synthesis: Up5x5 + ReLU, Up5x5 + ReLU, Same3x3 → 2M channels
/// (scales first, then means), all in fixed point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntHyperSynthesis {
    pub layers: Vec<IntConv>,
    /// Scale thresholds in fixed point: a latent element takes the first table index whose
    /// threshold is ≥ its predicted scale (the last index when none is).
    pub scale_thresholds: Vec<i64>,
}

/// What `h_s` predicts for every element of the latent: a mean in fixed point and the
/// index of the Gaussian table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction {
    pub means: Vec<i32>,
    pub table: Vec<u16>,
}

impl IntHyperSynthesis {
    /// Fixed-point thresholds for a scale table.
    pub fn thresholds(scales: &[f64]) -> Vec<i64> {
        scales.iter().map(|&s| (s * (1u64 << FRAC_BITS) as f64).ceil() as i64).collect()
    }

    /// Whether layer shapes chain and the thresholds are usable.
    pub fn validate(&self) -> bool {
        self.layers.len() == 3
            && self.layers.iter().all(IntConv::validate)
            && self.layers.windows(2).all(|p| p[0].c_out == p[1].c_in)
            && self.layers[2].c_out % 2 == 0
            && !self.scale_thresholds.is_empty()
            && self.scale_thresholds.len() <= u16::MAX as usize
            && self.scale_thresholds.windows(2).all(|p| p[0] <= p[1])
    }

    /// Number of latent channels (M) it predicts.
    pub fn latent_channels(&self) -> usize {
        self.layers[2].c_out / 2
    }

    /// Run on integer hyper-latent symbols `z` ([N][zh][zw]).
    pub fn forward(&self, z: &[i32], zh: usize, zw: usize) -> Prediction {
        let x: Vec<i32> = z.iter().map(|&v| v.clamp(-Z_LIMIT, Z_LIMIT) << FRAC_BITS).collect();
        let (h1, w1) = self.layers[0].out_size(zh, zw);
        let x = self.layers[0].forward(&x, zh, zw, true);
        let (h2, w2) = self.layers[1].out_size(h1, w1);
        let x = self.layers[1].forward(&x, h1, w1, true);
        let x = self.layers[2].forward(&x, h2, w2, false);
        let m = self.latent_channels();
        let plane = h2 * w2;
        let (scales, means) = x.split_at(m * plane);
        let last = self.scale_thresholds.len() - 1;
        let table = scales
            .iter()
            .map(|&s| self.scale_thresholds.partition_point(|&t| t < s as i64).min(last) as u16)
            .collect();
        Prediction { means: means.to_vec(), table }
    }
}

/// A fixed-point mean as a float.
pub fn fixed_to_f32(v: i32) -> f32 {
    v as f32 / (1u32 << FRAC_BITS) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Float reference of a transposed convolution, burn weight layout [c_in][c_out][k][k].
    fn up_ref(x: &[f32], h: usize, w: usize, wt: &[f32], b: &[f32], ci: usize, co: usize) -> Vec<f32> {
        let mut out = vec![0f32; co * 4 * h * w];
        for o in 0..co {
            for oy in 0..2 * h {
                for ox in 0..2 * w {
                    let mut acc = b[o] as f64;
                    for i in 0..ci {
                        for iy in 0..h {
                            for ix in 0..w {
                                let (ky, kx) = (oy as isize + 2 - 2 * iy as isize, ox as isize + 2 - 2 * ix as isize);
                                if (0..5).contains(&ky) && (0..5).contains(&kx) {
                                    acc += wt[((i * co + o) * 5 + ky as usize) * 5 + kx as usize] as f64
                                        * x[(i * h + iy) * w + ix] as f64;
                                }
                            }
                        }
                    }
                    out[(o * 2 * h + oy) * 2 * w + ox] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn transposed_conv_matches_float_reference() {
        let mut seed = 7;
        let (ci, co, h, w) = (3, 4, 3, 5);
        let wt: Vec<f32> = (0..ci * co * 25).map(|_| lcg(&mut seed)).collect();
        let b: Vec<f32> = (0..co).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..ci * h * w).map(|_| lcg(&mut seed) * 8.0).collect();
        let conv = IntConv::from_float(IntConvKind::Up5x5, ci, co, &wt, &b);
        assert!(conv.validate());
        let xi: Vec<i32> = x.iter().map(|v| (v * 4096.0).round() as i32).collect();
        let got = conv.forward(&xi, h, w, false);
        let want = up_ref(&x, h, w, &wt, &b, ci, co);
        for (g, r) in got.iter().zip(&want) {
            assert!((fixed_to_f32(*g) - r).abs() < 2e-3, "{} vs {}", fixed_to_f32(*g), r);
        }
    }

    #[test]
    fn same_conv_matches_float_reference_and_relu_clips() {
        let mut seed = 11;
        let (ci, co, h, w) = (2, 3, 4, 3);
        let wt: Vec<f32> = (0..ci * co * 9).map(|_| lcg(&mut seed)).collect();
        let b: Vec<f32> = (0..co).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..ci * h * w).map(|_| lcg(&mut seed) * 4.0).collect();
        let conv = IntConv::from_float(IntConvKind::Same3x3, ci, co, &wt, &b);
        let xi: Vec<i32> = x.iter().map(|v| (v * 4096.0).round() as i32).collect();
        let got = conv.forward(&xi, h, w, false);
        let relu = conv.forward(&xi, h, w, true);
        for o in 0..co {
            for y in 0..h {
                for xx in 0..w {
                    let mut acc = b[o] as f64;
                    for i in 0..ci {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) = (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                                if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                                    acc += wt[((o * ci + i) * 3 + ky) * 3 + kx] as f64
                                        * x[(i * h + sy as usize) * w + sx as usize] as f64;
                                }
                            }
                        }
                    }
                    let idx = (o * h + y) * w + xx;
                    assert!((fixed_to_f32(got[idx]) as f64 - acc).abs() < 2e-3);
                    assert_eq!(relu[idx], got[idx].max(0));
                }
            }
        }
    }

    #[test]
    fn bands_of_any_height_give_the_same_output() {
        let mut seed = 5;
        for kind in [IntConvKind::Up5x5, IntConvKind::Same3x3] {
            let (ci, co, h, w) = (3, 4, 9, 7);
            let k = kind.kernel();
            let wt: Vec<f32> = (0..ci * co * k * k).map(|_| lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..co).map(|_| lcg(&mut seed)).collect();
            let conv = IntConv::from_float(kind, ci, co, &wt, &b);
            let x: Vec<i32> = (0..ci * h * w).map(|_| (lcg(&mut seed) * 8.0 * 4096.0) as i32).collect();
            let whole = conv.forward(&x, h, w, false);
            let wo = conv.out_size(h, w).1;
            // Bands of 2, 3, 5 and 7 output rows.
            for rows in [2, 3, 5, 7] {
                assert_eq!(conv.forward_in_bands(&x, h, w, false, rows * wo), whole, "{kind:?}, bands of {rows} rows");
            }
        }
    }

    #[test]
    fn extreme_inputs_do_not_overflow() {
        let wt = vec![1000.0f32; 2 * 2 * 25];
        let conv = IntConv::from_float(IntConvKind::Up5x5, 2, 2, &wt, &[1e6, -1e6]);
        let x = vec![i32::MAX; 2 * 2 * 2];
        let out = conv.forward(&x, 2, 2, false);
        assert!(out.iter().all(|v| (v.abs() as i64) <= ACT_LIMIT));
    }
}

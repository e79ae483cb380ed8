//! Growing a trained model's latent from M to more channels, or its hidden width N (the main
//! transforms' layers, and the hyper-latent z unless the hyperprior keeps its size), so that
//! a run can resume with a larger model instead of starting over. A model whose every latent channel already
//! carries bits at every quality (as N = 64 / M = 96 does) saturates at high rates: more
//! precision per channel cannot bring back what the projection to M channels dropped.
//!
//! Every trained weight keeps its value. A new entry takes the value of a freshly initialised
//! network of the new size ("random in") — for the latent's new channels (the analysis's last
//! layer, the hyper-synthesis's output) rescaled to the RMS of the trained weights of its
//! tensor (a fresh initialisation is far smaller than trained weights: new latent channels
//! would round to zero everywhere) — except where it reads a *new* channel into an old one,
//! which starts at zero ("zero out") so that the old outputs do not move (a new channel read
//! into a new one is fresh, like any new output) — with one
//! exception: the synthesis reads the new latent channels with a tenth of its initial
//! weights, because its input is the *rounded* latent, which is zero wherever a new channel
//! is small, and a zero weight there would leave the new channels without any gradient from
//! the distortion. New gains are the mean magnitude of their quality's old gains.
//!
//! Even so, the rate term kills new channels before they learn to carry anything (measured:
//! after 3,000 steps their spread was 0.04 against ~1 for the old ones), so training can ramp
//! their rate in (`caec-train --grow-ramp`, [`crate::net::Growing`]). With the ramp they carry
//! bits but had learnt nothing useful after 1,850 steps (the weights README has both runs):
//! growing a latent takes far more training than one session on two cores.
//!
//! New hidden channels (N) keep the fresh scale: rescaled to the trained weights' RMS, their
//! activations grew layer by layer (the inverse GDN squares them), and Adam's first step,
//! which moves every zero-out weight by the learning rate whatever its gradient, turned them
//! into a 9 dB image (measured: 31.3 dB before the step, 9.6 after).

use cae_nn::NamedTensor;

/// Weight of the synthesis's first layer (transposed: `[c_in = M, c_out, k, k]`).
const SYNTHESIS_INPUT: &str = "g_s.deconvs.0.weight";
/// Scale of the fresh values on the synthesis's new inputs.
const SYNTHESIS_INPUT_SCALE: f32 = 0.1;
/// The tensors whose new outputs are latent channels (rescaled to the trained RMS).
const LATENT_OUTPUTS: [&str; 2] = ["g_a.convs.3.", "h_s.out."];

/// Where a new index along one axis comes from in the old tensor.
fn axis_map(name: &str, axis: usize, old_len: usize, new_len: usize, m_old: usize, m_new: usize) -> Vec<Option<usize>> {
    // The hyper-synthesis's output is [scales (M); means (M)]: both halves grow.
    let halves = name.starts_with("h_s.out.") && axis == 0 && old_len == 2 * m_old && new_len == 2 * m_new;
    (0..new_len)
        .map(|i| {
            if halves {
                let (half, j) = (i / m_new, i % m_new);
                (j < m_old).then_some(half * m_old + j)
            } else {
                (i < old_len).then_some(i)
            }
        })
        .collect()
}

/// Which axis of a weight is its input channel (transposed convolutions store `[in, out, ..]`).
fn input_axis(name: &str) -> Option<usize> {
    if !name.ends_with(".weight") {
        return None;
    }
    let transposed = name.starts_with("g_s.deconvs.") || name.starts_with("h_s.up");
    Some(if transposed { 0 } else { 1 })
}

/// The parameters of the larger model: `old` are the trained ones (M = `m_old`), `fresh` a new
/// initialisation of the larger model (same names, new shapes; M = `m_new`, and any axis that
/// grows, N included, keeps its old entries first). GDN's beta and gamma and the factorized
/// density have no input axis here: their new entries are the fresh ones (gamma's fresh
/// off-diagonal entries are zero, so an old channel's normaliser ignores the new ones).
pub fn widen(old: &[NamedTensor], fresh: &[NamedTensor], m_old: usize, m_new: usize) -> Result<Vec<NamedTensor>, String> {
    assert!(m_new >= m_old);
    fresh
        .iter()
        .map(|f| {
            let o = old.iter().find(|o| o.name == f.name).ok_or_else(|| format!("{}: not in the checkpoint", f.name))?;
            if o.shape == f.shape {
                return Ok(o.clone());
            }
            if o.shape.len() != f.shape.len() || o.shape.iter().zip(&f.shape).any(|(a, b)| a > b) {
                return Err(format!("{}: {:?} does not grow into {:?}", f.name, o.shape, f.shape));
            }
            if f.name.starts_with("gains.") {
                return Ok(widen_gains(o, f));
            }
            let maps: Vec<Vec<Option<usize>>> =
                (0..f.shape.len()).map(|a| axis_map(&f.name, a, o.shape[a], f.shape[a], m_old, m_new)).collect();
            let input = input_axis(&f.name);
            // A new input channel read into an old output: the only entries that start at zero.
            let is_new_input = |idx: &[usize]| {
                input.is_some_and(|a| {
                    maps[a][idx[a]].is_none() && idx.iter().enumerate().all(|(b, &i)| b == a || maps[b][i].is_some())
                })
            };
            let rescale = if input.is_some() && LATENT_OUTPUTS.iter().any(|p| f.name.starts_with(p)) {
                // The fresh values that become new outputs, rescaled to the trained values' RMS.
                let mut fresh_new_outputs = Vec::new();
                for_each_index(&f.shape, |flat, idx| {
                    if idx.iter().enumerate().any(|(a, &i)| maps[a][i].is_none()) && !is_new_input(idx) {
                        fresh_new_outputs.push(f.values[flat]);
                    }
                });
                let fresh_rms = rms(&fresh_new_outputs);
                if fresh_rms > 0.0 { (rms(&o.values) / fresh_rms) as f32 } else { 1.0 }
            } else {
                1.0
            };
            let mut values = Vec::with_capacity(f.values.len());
            for_each_index(&f.shape, |flat, idx| {
                let src: Option<Vec<usize>> = idx.iter().enumerate().map(|(a, &i)| maps[a][i]).collect();
                values.push(match src {
                    Some(s) => o.values[s.iter().zip(&o.shape).fold(0, |acc, (&i, &n)| acc * n + i)],
                    None if is_new_input(idx) => {
                        if f.name == SYNTHESIS_INPUT { f.values[flat] * SYNTHESIS_INPUT_SCALE } else { 0.0 }
                    }
                    None => f.values[flat] * rescale,
                });
            });
            Ok(NamedTensor { name: f.name.clone(), shape: f.shape.clone(), values })
        })
        .collect()
}

/// Root mean square (0 for no values).
fn rms(values: &[f32]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    (values.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

/// Call `f(flat index, multi-index)` for every element of a row-major tensor of `shape`.
fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let mut idx = vec![0usize; shape.len()];
    let total: usize = shape.iter().product();
    for flat in 0..total {
        f(flat, &idx);
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
}

/// Gains `[levels, M]`: old columns kept, new ones the mean magnitude of their row.
fn widen_gains(o: &NamedTensor, f: &NamedTensor) -> NamedTensor {
    let (rows, m_old, m_new) = (o.shape[0], o.shape[1], f.shape[1]);
    let mut values = Vec::with_capacity(rows * m_new);
    for r in 0..rows {
        let row = &o.values[r * m_old..(r + 1) * m_old];
        let mean = row.iter().map(|v| v.abs()).sum::<f32>() / m_old as f32;
        values.extend_from_slice(row);
        values.extend(std::iter::repeat_n(mean, m_new - m_old));
    }
    NamedTensor { name: f.name.clone(), shape: f.shape.clone(), values }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[usize], values: Vec<f32>) -> NamedTensor {
        NamedTensor { name: name.into(), shape: shape.to_vec(), values }
    }

    #[test]
    fn old_weights_kept_new_inputs_zero_new_outputs_fresh() {
        // A convolution [out, in, 1, 1] from M = 2 to 3 latent inputs (h_a's first layer reads y).
        let old = [t("h_a.convs.0.weight", &[2, 2, 1, 1], vec![1.0, 2.0, 3.0, 4.0])];
        let fresh = [t("h_a.convs.0.weight", &[2, 3, 1, 1], vec![9.0; 6])];
        let w = widen(&old, &fresh, 2, 3).unwrap();
        assert_eq!(w[0].values, vec![1.0, 2.0, 0.0, 3.0, 4.0, 0.0]);
        // The analysis's last layer [M, N, 1, 1]: a new output row, fresh.
        let old = [t("g_a.convs.3.weight", &[2, 1, 1, 1], vec![1.0, 2.0]), t("g_a.convs.3.bias", &[2], vec![0.5, 0.6])];
        let fresh = [t("g_a.convs.3.weight", &[3, 1, 1, 1], vec![7.0, 8.0, 9.0]), t("g_a.convs.3.bias", &[3], vec![0.1, 0.2, 0.3])];
        let w = widen(&old, &fresh, 2, 3).unwrap();
        // The new row's weights rescaled to the trained weights' RMS (√2.5), its bias fresh.
        assert_eq!(w[1].values, vec![0.5, 0.6, 0.3]);
        assert!(w[0].values[..2] == [1.0, 2.0] && (w[0].values[2] - 2.5f32.sqrt()).abs() < 1e-6, "{:?}", w[0].values);
    }

    #[test]
    fn a_hidden_layer_grown_on_both_sides_reads_new_into_new_freshly() {
        // [out, in, 1, 1] from 2 x 2 to 3 x 3 (N grows: a layer between two hidden ones).
        let old = [t("g_a.convs.1.weight", &[2, 2, 1, 1], vec![1.0, 2.0, 3.0, 4.0])];
        let fresh = [t("g_a.convs.1.weight", &[3, 3, 1, 1], vec![1.0; 9])];
        let w = widen(&old, &fresh, 4, 4).unwrap();
        // Old rows read the new input with 0; the new row reads all three at the fresh scale
        // (a hidden layer: not rescaled).
        let want = [1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 1.0, 1.0, 1.0];
        assert!(w[0].values.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{:?}", w[0].values);
        // GDN's gamma [c, c] has no input axis here: its new entries are the fresh ones.
        let old = [t("g_a.gdns.0.gamma", &[1, 1], vec![0.7])];
        let fresh = [t("g_a.gdns.0.gamma", &[2, 2], vec![0.3, 0.001, 0.001, 0.3])];
        assert_eq!(widen(&old, &fresh, 4, 4).unwrap()[0].values, vec![0.7, 0.001, 0.001, 0.3]);
    }

    #[test]
    fn synthesis_reads_new_channels_with_small_weights_and_the_hyper_output_grows_by_halves() {
        // Transposed [in = M, out, 1, 1].
        let old = [t(SYNTHESIS_INPUT, &[2, 1, 1, 1], vec![1.0, 2.0])];
        let fresh = [t(SYNTHESIS_INPUT, &[3, 1, 1, 1], vec![5.0, 5.0, 5.0])];
        let w = widen(&old, &fresh, 2, 3).unwrap();
        assert_eq!(w[0].values, vec![1.0, 2.0, 0.5]);
        // h_s.out.bias: [s0 s1 | m0 m1] → [s0 s1 new | m0 m1 new].
        let old = [t("h_s.out.bias", &[4], vec![1.0, 2.0, 3.0, 4.0])];
        let fresh = [t("h_s.out.bias", &[6], vec![-1.0; 6])];
        let w = widen(&old, &fresh, 2, 3).unwrap();
        assert_eq!(w[0].values, vec![1.0, 2.0, -1.0, 3.0, 4.0, -1.0]);
    }

    #[test]
    fn gains_grow_by_their_rows_mean_and_unchanged_tensors_pass() {
        let old = [t("gains.gain", &[2, 2], vec![1.0, -3.0, 0.5, 0.5]), t("g_a.gdns.0.beta", &[1], vec![0.25])];
        let fresh = [t("gains.gain", &[2, 3], vec![0.0; 6]), t("g_a.gdns.0.beta", &[1], vec![1.0])];
        let w = widen(&old, &fresh, 2, 3).unwrap();
        assert_eq!(w[0].values, vec![1.0, -3.0, 2.0, 0.5, 0.5, 0.5]);
        assert_eq!(w[1].values, vec![0.25]);
        // A tensor that would shrink, and one the checkpoint does not have, are refused.
        assert!(widen(&old[..1], &[t("gains.gain", &[2, 1], vec![0.0; 2])], 2, 2).is_err());
        assert!(widen(&old[..1], &[t("h_a.convs.0.bias", &[1], vec![0.0])], 2, 2).is_err());
    }
}

//! Training's products on the AMX tiles: mixed precision, as PyTorch's autocast does on this
//! kind of CPU — the operands of the products rounded to bf16, the sums in f32, everything
//! else (master weights, Adam, the entropy models, GDN, the loss) in f32. Off unless the
//! trainer asks for it ([`set_bf16_products`]); where it is off, or AMX is missing, or a
//! shape does not suit the tiles, [`crate::conv_op`] runs the f32 kernels as before.
//!
//! - [`conv_batch`]: a convolution of a batch of channel-major f32 maps (the forward pass of a
//!   convolution, and the input gradient of a transposed convolution), through
//!   [`crate::amx::conv_rows`];
//! - [`conv_transpose_batch`]: a transposed convolution (the forward pass of one, and the
//!   input gradient of a convolution) as stride² stride-1 convolutions, one per output phase;
//! - [`weight_grad`]: the weight gradient of both, a product whose sums run over the pixels:
//!   an A tile is 16 input channels x 32 output pixels of one tap (the input split into its
//!   stride² phases, channel-major, so that a tap is an address), a B tile 16 pairs of pixels x
//!   16 output channels of the output gradient, packed once.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::amx::{self, PackedBf16, BLOCK};

static BF16_PRODUCTS: AtomicBool = AtomicBool::new(false);

/// Run training's convolution products on the AMX tiles where the CPU has them (bf16
/// operands, f32 sums), or not. Off by default: the f32 kernels.
pub fn set_bf16_products(on: bool) {
    BF16_PRODUCTS.store(on, Ordering::Relaxed);
}

/// Whether training's products run on the tiles: asked for, and AMX available.
pub fn bf16_products() -> bool {
    BF16_PRODUCTS.load(Ordering::Relaxed) && amx::available()
}

/// `product()` (one of this module's products) where training asked for bf16 products;
/// `None` otherwise or where the product's shapes do not suit the tiles.
pub(crate) fn if_asked<T>(product: impl FnOnce() -> Option<T>) -> Option<T> {
    bf16_products().then(product).flatten()
}

/// A `k` x `k` convolution at `stride` with `pad` pixels of zero padding of a batch `x`
/// (`[b, c_in, h, w]`, channel-major f32; weights `[c_out, c_in, k, k]`), plus `bias` and then
/// a ReLU where `relu` (as [`crate::direct::activate`]), on the tiles: the output
/// `[b, c_out, h_out, w_out]`, channel-major f32. `None` where the tiles do not apply
/// (`c_in` and `c_out` multiples of 32).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_batch(x: &[f32], [b, c_in, h, w]: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, k: usize, stride: usize, pad: usize, relu: bool) -> Option<(Vec<f32>, [usize; 4])> {
    // A narrow input (the image's 3 channels, whose weights take a tile step per kernel row)
    // ran no faster here than on the f32 kernels' few-row tile: left to them.
    if b == 0 || stride == 0 || h + 2 * pad < k || w + 2 * pad < k || c_in % BLOCK != 0 || !amx::fits(c_in, c_out, k) {
        return None;
    }
    assert_eq!(x.len(), b * c_in * h * w, "input [b, c_in, h, w]");
    let (h_out, w_out) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
    let packed = PackedBf16::new(weight, c_out, c_in, k);
    let (rows, cols) = amx::input_margins(&packed, stride, pad, [h, w], [h_out, w_out]);
    let plane = h_out * w_out;
    let mut out = crate::zeroed(b * c_out * plane);
    for (xi, yi) in x.chunks_exact(c_in * h * w).zip(out.chunks_exact_mut(c_out * plane)) {
        let xp = amx::PaddedNhwc::from_planes(xi, c_in, h, w, rows, cols);
        // Each row's pixel-major sums to its row of every channel plane, with bias and
        // activation, on the thread that computed them.
        let planes = Planes(yi.as_mut_ptr());
        let ran = amx::conv_rows(&xp, &packed, stride, h_out, w_out, (0..h_out).collect(), |oy, sums| {
            // SAFETY: row `oy` of every plane lies inside `yi`, and no other row's call writes
            // it (one call per row).
            unsafe { planes.write_row(plane, oy * w_out, w_out, (0, 1), sums, w_out, bias, relu) };
        });
        assert!(ran, "the shapes suit the tiles");
    }
    Some((out, [b, c_out, h_out, w_out]))
}

/// A `k` x `k` transposed convolution at `stride` with `pad` pixels of padding and `pad_out`
/// of output padding of a batch `x` (`[b, c_in, h, w]`; weights `[c_in, c_out, k, k]`, burn's
/// layout), plus `bias` and then a ReLU where `relu`, on the tiles: the output
/// `[b, c_out, h_out, w_out]`, channel-major f32. The sub-pixel form: each of the stride²
/// output phases `(ry, rx)` (rows `s·qy + ry`, columns `s·qx + rx`) is a stride-1 convolution
/// of the input with the taps `(ky, kx)` that reach it (`ky ≡ ry + pad mod s`), read at input
/// row `qy + (ry + pad − ky) / s`: no zeros inserted, no scatter. `None` where the tiles do
/// not apply (`c_in` and `c_out` multiples of 32).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_transpose_batch(x: &[f32], [b, c_in, h, w]: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, k: usize, stride: usize, pad: usize, pad_out: usize, relu: bool) -> Option<(Vec<f32>, [usize; 4])> {
    let s = stride;
    if b == 0 || s == 0 || h == 0 || w == 0 || c_in % BLOCK != 0 || !amx::fits(c_in, c_out, k) {
        return None;
    }
    let grow = |n: usize| ((n - 1) * s + k + pad_out).checked_sub(2 * pad).filter(|&n| n > 0);
    let (h_out, w_out) = (grow(h)?, grow(w)?);
    assert_eq!(x.len(), b * c_in * h * w, "input [b, c_in, h, w]");
    assert_eq!(weight.len(), c_in * c_out * k * k, "weights [c_in, c_out, k, k]");
    // Per phase r (of the rows, and alike of the columns): its taps, each as (kernel index,
    // input offset e = (r + pad − kernel index) / s).
    let phase_taps: Vec<Vec<(usize, isize)>> = (0..s)
        .map(|r| (0..k).filter(|&t| (r + pad + s * k - t) % s == 0).map(|t| (t, (r as isize + pad as isize - t as isize) / s as isize)).collect())
        .collect();
    if phase_taps.iter().any(Vec::is_empty) {
        return None;
    }
    // Margin before: the most negative offset; a tap's place in the padded map is e + lead.
    let lead = phase_taps.iter().flatten().map(|&(_, e)| -e).max().unwrap_or(0).max(0) as usize;
    let place = |e: isize| (e + lead as isize) as usize;
    // Outputs of phase r along a side of n.
    let count = |n: usize, r: usize| (n + s - 1 - r) / s;
    let reach = |r: usize| phase_taps[r].iter().map(|&(_, e)| place(e) + 1).max().unwrap_or(0);
    let after = |n: usize, n_out: usize, padded: &dyn Fn(usize) -> usize| {
        (0..s).map(|r| padded(count(n_out, r)).saturating_sub(1) + reach(r)).max().unwrap_or(0).saturating_sub(n + lead)
    };
    let (bottom, right) = (after(h, h_out, &|n| n), after(w, w_out, &amx::padded_row));
    let phases: Vec<(usize, usize, PackedBf16)> = (0..s * s)
        .map(|ph| {
            let (ry, rx) = (ph / s, ph % s);
            let taps: Vec<((usize, usize), [usize; 2])> =
                phase_taps[ry].iter().flat_map(|&(ky, ey)| phase_taps[rx].iter().map(move |&(kx, ex)| ((ky, kx), [place(ey), place(ex)]))).collect();
            let places = taps.iter().map(|t| t.1).collect();
            let packed = PackedBf16::with_taps(c_out, c_in, places, |oc, ci, t| {
                let (ky, kx) = taps[t].0;
                weight[((ci * c_out + oc) * k + ky) * k + kx]
            });
            (ry, rx, packed)
        })
        .collect();
    let plane = h_out * w_out;
    let mut out = crate::zeroed(b * c_out * plane);
    for (xi, yi) in x.chunks_exact(c_in * h * w).zip(out.chunks_exact_mut(c_out * plane)) {
        let xp = amx::PaddedNhwc::from_planes(xi, c_in, h, w, (lead, bottom), (lead, right));
        let planes = Planes(yi.as_mut_ptr());
        for (ry, rx, packed) in &phases {
            let (rows, cols) = (count(h_out, *ry), count(w_out, *rx));
            let ran = amx::conv_rows(&xp, packed, 1, rows, cols, (0..rows).collect(), |qy, sums| {
                // SAFETY: row `s·qy + ry` of every plane lies inside `yi`; within this phase no
                // other call writes it, and the phases run one after the other.
                unsafe { planes.write_row(plane, (s * qy + ry) * w_out, w_out, (*rx, s), sums, cols, bias, relu) };
            });
            assert!(ran, "the shapes suit the tiles");
        }
    }
    Some((out, [b, c_out, h_out, w_out]))
}

/// The start of channel-major output planes whose rows are written by the threads of
/// [`amx::conv_rows`], each row by one call.
struct Planes(*mut f32);

// SAFETY: the threads write disjoint rows (see `conv_batch`).
unsafe impl Sync for Planes {}

thread_local! {
    /// Per thread: a row of sums turned to channel rows.
    static TURNED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Planes {
    /// The first `n` pixels of a row of pixel-major `sums` (`c_out` values a pixel) turned to
    /// channel rows and written, plus the channel's bias and then a ReLU where `relu`, to
    /// columns `first + step·i` of the row of `width` values that starts `offset` values into
    /// each of the `c_out` planes (`plane` values apart).
    ///
    /// # Safety
    /// The rows must lie inside the planes' allocation, and no other thread may touch them
    /// meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn write_row(&self, plane: usize, offset: usize, width: usize, (first, step): (usize, usize), sums: &[f32], n: usize, bias: Option<&[f32]>, relu: bool) {
        let c_out = sums.len() / amx::padded_row(n);
        TURNED.with_borrow_mut(|turned| {
            turned.resize(c_out * n, 0.0);
            crate::direct::turn(&sums[..n * c_out], n, c_out, turned, n);
            for (co, src) in turned.chunks_exact(n).enumerate() {
                let add = bias.map_or(0.0, |b| b[co]);
                // SAFETY: per the caller's promise.
                let dst = unsafe { std::slice::from_raw_parts_mut(self.0.add(co * plane + offset), width) };
                if step == 1 {
                    crate::direct::write_activated(&mut dst[first..], src, add, relu);
                } else {
                    crate::direct::put_phase(dst, first, step, src, add, relu);
                }
            }
        });
    }
}

/// Output pixels per step of the weight gradient (one A tile row).
const K_PIXELS: usize = 32;
/// bf16 values in one 16 x 32 tile.
const TILE: usize = 16 * K_PIXELS;
/// Bands of rows whose partial gradients are added in band order: a fixed number, so that the
/// result does not depend on the number of threads.
const BANDS: usize = 8;

/// The weight gradient of a `k` x `k` convolution at `stride` with `pad` pixels of padding
/// from the larger map `big` (`[b, c_b, h, w]`) to the smaller `small` (`[b, c_a, hs, ws]`):
/// `dW[a][b][ky][kx] = Σ small[a][y][x] · big_padded[b][stride·y + ky][stride·x + kx]` over the
/// batch and the pixels, as [`crate::fastconv::weight_grad`] (so a convolution's `(dY, X)` and
/// a transposed convolution's `(X, dY)`), with bf16 operands and f32 sums. `None` where the
/// tiles do not apply: both channel counts must be multiples of 32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_grad(small: &[f32], [b, c_a, hs, ws]: [usize; 4], big: &[f32], [b2, c_b, h, w]: [usize; 4], k: usize, stride: usize, pad: usize) -> Option<Vec<f32>> {
    let suits = c_a > 0 && c_b > 0 && c_a % BLOCK == 0 && c_b % BLOCK == 0 && b == b2 && b > 0 && hs > 0 && ws > 0 && k > 0 && stride > 0;
    if !(suits && amx::available()) {
        return None;
    }
    assert_eq!(small.len(), b * c_a * hs * ws, "small [b, c_a, hs, ws]");
    assert_eq!(big.len(), b * c_b * h * w, "big [b, c_b, h, w]");
    let s = stride;
    // Phase-split columns a tap reaches past its pixel's, and the phase planes' sides.
    let reach = (k - 1) / s;
    let blocks = ws.div_ceil(K_PIXELS);
    let (rows_ph, cols_ph) = (hs + reach, blocks * K_PIXELS + reach);
    let (plane, phases) = (rows_ph * cols_ph, s * s);
    // `big` zero-padded and split into its stride² phases, channel-major bf16:
    // [n][c_b][phase (py, px)][r][c] = padded[s·r + py][s·c + px].
    let mut xph = crate::zeroed::<u16>(b * c_b * phases * plane);
    let row = || vec![0u16; w];
    xph.par_chunks_mut(phases * plane).enumerate().for_each_init(row, |tmp, (i, chan)| {
        let src = &big[i * h * w..][..h * w];
        for y in 0..h {
            let (r, py) = ((y + pad) / s, (y + pad) % s);
            if r >= rows_ph {
                break;
            }
            amx::round_to_bf16(&src[y * w..][..w], tmp);
            for px in 0..s {
                // Column c reads x = s·c + px − pad, from the first c with x ≥ 0.
                let c0 = pad.saturating_sub(px).div_ceil(s);
                let x0 = s * c0 + px - pad;
                let line = &mut chan[(py * s + px) * plane + r * cols_ph..][..cols_ph];
                for (v, &t) in line[c0.min(cols_ph)..].iter_mut().zip(tmp.iter().skip(x0).step_by(s)) {
                    *v = t;
                }
            }
        }
    });
    // `small` as B tiles: per (n, row, block of 32 pixels, group of 16 channels), 16 rows of
    // pixel pairs x 16 channels x the pair; pixels past the row are zero.
    let groups = c_a / 16;
    let per_row = blocks * groups * TILE;
    let mut packed = crate::zeroed::<u16>(b * hs * per_row);
    let line = || vec![0u16; blocks * K_PIXELS];
    packed.par_chunks_mut(per_row).enumerate().for_each_init(line, |tmp, (row, chunk)| {
        let (n, oy) = (row / hs, row % hs);
        for c in 0..c_a {
            amx::round_to_bf16(&small[((n * c_a + c) * hs + oy) * ws..][..ws], &mut tmp[..ws]);
            let (g, c) = (c / 16, c % 16);
            for (xb, pixels) in tmp.chunks_exact(K_PIXELS).enumerate() {
                let tile = &mut chunk[(xb * groups + g) * TILE..][..TILE];
                for (q, pair) in pixels.chunks_exact(2).enumerate() {
                    tile[q * 32 + c * 2..][..2].copy_from_slice(pair);
                }
            }
        }
    });
    let (kk, rows) = (k * k, b * hs);
    let bands: Vec<std::ops::Range<usize>> = (0..BANDS).map(|i| i * rows / BANDS..(i + 1) * rows / BANDS).filter(|r| !r.is_empty()).collect();
    // Per band, [tap][c_b][c_a].
    let parts: Vec<Vec<f32>> = bands
        .into_par_iter()
        .map(|band| {
            let steps: Vec<[usize; 2]> = band
                .flat_map(|row| {
                    let (n, oy) = (row / hs, row % hs);
                    (0..blocks).map(move |xb| [(n * c_b * phases * plane + oy * cols_ph + xb * K_PIXELS) * 2, (row * blocks + xb) * groups * TILE * 2])
                })
                .collect();
            let mut part = vec![0f32; kk * c_b * c_a];
            // SAFETY: AMX is available (checked above). A tiles: 16 planes (one phase of
            // channels cb … cb + 15, then cb + 16 … cb + 31) from row oy + ky/s, column xb·32 + kx/s on, 32 values:
            // inside the plane (rows_ph = hs + reach, cols_ph = blocks·32 + reach). B tiles:
            // two 1,024-byte tiles (channel groups ca/16, ca/16 + 1) of a (row, block) inside
            // `packed`. Stores: 32 x 32 f32 at (tap, cb, ca) inside `part`.
            unsafe {
                amx::configure();
                for tap in 0..kk {
                    let (ky, kx) = (tap / k, tap % k);
                    let ph = ky % s * s + kx % s;
                    for cb in (0..c_b).step_by(BLOCK) {
                        let a = xph.as_ptr().add((cb * phases + ph) * plane + ky / s * cols_ph + kx / s) as *const u8;
                        for ca in (0..c_a).step_by(BLOCK) {
                            let bp = packed.as_ptr().add(ca / 16 * TILE) as *const u8;
                            let c = part.as_mut_ptr().add((tap * c_b + cb) * c_a + ca) as *mut u8;
                            amx::group(a, phases * plane * 2, &steps, bp, c, c_a * 4);
                        }
                    }
                }
                amx::release();
            }
            part
        })
        .collect();
    // The bands' sums in band order, in their own layout (contiguous: a gathered sum per
    // element was a fifth of a training step at N = 128), then turned to [c_a][c_b][k][k].
    const PIECE: usize = 1 << 12;
    let mut total = vec![0f32; kk * c_b * c_a];
    total.par_chunks_mut(PIECE).enumerate().for_each(|(j, t)| {
        for p in &parts {
            t.iter_mut().zip(&p[j * PIECE..]).for_each(|(t, &v)| *t += v);
        }
    });
    let mut dw = vec![0f32; c_a * c_b * kk];
    dw.par_chunks_mut(c_b * kk).enumerate().for_each(|(ca, out)| {
        for (cb, taps) in out.chunks_exact_mut(kk).enumerate() {
            for (tap, v) in taps.iter_mut().enumerate() {
                *v = total[(tap * c_b + cb) * c_a + ca];
            }
        }
    });
    Some(dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amx::{bf16, f32_of};

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        crate::TestRng::new(seed).values(n, -1.0, 1.0)
    }

    fn rounded(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| f32_of(bf16(v)) as f64).collect()
    }

    /// The weight gradient on the tiles against a plain f64 sum over the same bf16 values,
    /// for a convolution (small = dY) and a transposed convolution's shapes (big = dY, with
    /// an output padding row), stride 2 and 1, rows of partial blocks, more rows than bands
    /// and fewer.
    #[test]
    fn weight_gradient_matches_a_plain_sum() {
        if !amx::available() {
            eprintln!("no AMX here: the tiles were not run");
            return;
        }
        for (b, c_a, c_b, h, w, k, s, p) in [(2, 64, 32, 20, 70, 5, 2, 2), (1, 32, 96, 6, 9, 5, 2, 2), (3, 32, 32, 7, 40, 3, 1, 1), (1, 96, 64, 16, 16, 5, 2, 2)] {
            let (hs, ws) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let small = noise(b * c_a * hs * ws, 1);
            let big = noise(b * c_b * h * w, 2);
            let got = weight_grad(&small, [b, c_a, hs, ws], &big, [b, c_b, h, w], k, s, p).expect("tiles apply");
            let (sr, br) = (rounded(&small), rounded(&big));
            let mut worst = 0f64;
            for a in 0..c_a {
                for cb in 0..c_b {
                    for ky in 0..k {
                        for kx in 0..k {
                            let (mut sum, mut mag) = (0f64, 0f64);
                            for n in 0..b {
                                for y in 0..hs {
                                    for x in 0..ws {
                                        let (iy, ix) = ((s * y + ky).wrapping_sub(p), (s * x + kx).wrapping_sub(p));
                                        if iy >= h || ix >= w {
                                            continue;
                                        }
                                        let v = sr[((n * c_a + a) * hs + y) * ws + x] * br[((n * c_b + cb) * h + iy) * w + ix];
                                        sum += v;
                                        mag += v.abs();
                                    }
                                }
                            }
                            let g = got[((a * c_b + cb) * k + ky) * k + kx] as f64;
                            worst = worst.max((g - sum).abs() / mag.max(1e-9));
                        }
                    }
                }
            }
            assert!(worst < 1e-5, "{c_a} x {c_b}, {h} x {w}, stride {s}: relative error {worst}");
        }
    }

    /// A batch's convolution on the tiles (bias, ReLU, channel-major planes) against the f32
    /// kernels: within bf16's rounding of the operands (1 % of the output's spread), and
    /// the same ReLU mask where the value is not near zero.
    #[test]
    fn batch_convolution_matches_the_f32_kernels() {
        if !amx::available() {
            eprintln!("no AMX here: the tiles were not run");
            return;
        }
        assert!(conv_batch(&[0.0; 3 * 64], [1, 3, 8, 8], &[0.0; 32 * 3 * 25], None, 32, 5, 2, 2, false).is_none(), "narrow inputs stay on the f32 kernels");
        for (b, c_in, c_out, h, w, relu) in [(2, 64, 64, 18, 37, true), (2, 32, 64, 16, 16, false), (1, 96, 32, 9, 40, false)] {
            let (k, s, p) = (5, 2, 2);
            let x = noise(b * c_in * h * w, 3);
            let wt: Vec<f32> = noise(c_out * c_in * k * k, 4).iter().map(|v| v * 0.1).collect();
            let bias = noise(c_out, 5);
            let (got, dims) = conv_batch(&x, [b, c_in, h, w], &wt, Some(&bias), c_out, k, s, p, relu).expect("tiles apply");
            let (want, want_dims) = crate::fastconv::conv2d_relu(&x, [b, c_in, h, w], &wt, Some(&bias), c_out, k, s, p, relu);
            assert_eq!(dims, want_dims);
            let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            assert!(worst <= 1e-2 * spread, "{c_in} -> {c_out}: off by {worst} of {spread}");
            if relu {
                assert!(got.iter().zip(&want).all(|(g, w)| (*g == 0.0) == (*w == 0.0) || w.abs() < 0.05 * spread), "ReLU mask");
            }
        }
    }

    /// The transposed convolution on the tiles against the f32 kernels, for the decoder's
    /// shapes (5 x 5, stride 2, padding 2, output padding 1), a 3 x 3 stride-1 one and an odd
    /// stride-2 one without output padding (phases of unequal sizes): within bf16's rounding.
    #[test]
    fn batch_transposed_convolution_matches_the_f32_kernels() {
        if !amx::available() {
            eprintln!("no AMX here: the tiles were not run");
            return;
        }
        for (b, c_in, c_out, h, w, k, s, p, po, relu) in [(2, 64, 64, 9, 21, 5, 2, 2, 1, true), (1, 96, 32, 5, 40, 3, 1, 1, 0, false), (1, 32, 64, 7, 6, 5, 2, 2, 0, false)] {
            let x = noise(b * c_in * h * w, 6);
            let wt: Vec<f32> = noise(c_in * c_out * k * k, 7).iter().map(|v| v * 0.1).collect();
            let bias = noise(c_out, 8);
            let (got, dims) = conv_transpose_batch(&x, [b, c_in, h, w], &wt, Some(&bias), c_out, k, s, p, po, relu).expect("tiles apply");
            let (want, want_dims) = crate::fastconv::conv_transpose2d_relu(&x, [b, c_in, h, w], &wt, Some(&bias), c_out, k, s, p, po, relu);
            assert_eq!(dims, want_dims);
            let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            assert!(worst <= 1e-2 * spread, "{c_in} -> {c_out}, {h} x {w}, k {k} s {s}: off by {worst} of {spread}");
        }
    }
}

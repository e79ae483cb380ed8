//! Convolutions for coding (no autodiff): im2col over bands of output rows and one matrix
//! product per band written straight into the output planes (NCHW), in parallel over bands.
//! Transposed convolutions run as their stride² sub-pixel phases, each an ordinary
//! convolution of the input with a subset of the kernel's taps, so nothing is scattered and
//! added. In training the same kernels make the forward and backward passes of
//! [`crate::conv_op`]. The tests check them against burn's own operations on random inputs.

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use crate::direct::{self, activate};
use crate::flex_ops::values;

/// Fewest output channels for which [`deconv_forward`] runs the sub-pixel phases, except where
/// [`phases_fit`] finds the few-row tile.
pub(crate) const MIN_PHASE_CHANNELS: usize = 16;

/// Whether a transposed convolution to `c_out` channels runs as sub-pixel phases on our kernels:
/// from MIN_PHASE_CHANNELS on, and with at most `direct::FEW` channels (g_s's last layer) where
/// the direct product runs (its AVX-512 tile then computes 3 rows, not 6 of which 3 idle).
pub(crate) fn phases_fit(c_out: usize) -> bool {
    c_out >= MIN_PHASE_CHANNELS || (c_out <= direct::FEW && direct::available())
}

/// Output pixels per band: the band's im2col block (K x PIXELS) and result stay near the cache.
const PIXELS: usize = 384;

/// One tap set of a convolution over a plane: output (oy, ox) reads input
/// (oy·stride + dy[i], ox·stride + dx[j]) with weight column `(ci, i, j)`.
struct Taps<'a> {
    dy: &'a [isize],
    dx: &'a [isize],
    stride: usize,
}

/// Input planes for [`im2col`]: `[c, h, w]`, and for a stride s > 1 each row's columns
/// regrouped by their remainder modulo s (column x at phase x mod s, index x / s, `wp` =
/// ⌈w / s⌉ per phase), so that every tap of a strided convolution copies a contiguous run
/// instead of gathering every s-th value.
struct Planes<'a> {
    data: std::borrow::Cow<'a, [f32]>,
    h: usize,
    w: usize,
    stride: usize,
    wp: usize,
}

impl<'a> Planes<'a> {
    fn new(x: &'a [f32], c: usize, h: usize, w: usize, stride: usize) -> Self {
        assert_eq!(x.len(), c * h * w, "input planes");
        if stride == 1 {
            return Planes { data: std::borrow::Cow::Borrowed(x), h, w, stride, wp: w };
        }
        let wp = w.div_ceil(stride);
        let mut data = vec![0f32; c * h * stride * wp];
        data.par_chunks_mut(h * stride * wp).zip(x.par_chunks(h * w)).for_each(|(out, plane)| {
            for (out, row) in out.chunks_mut(stride * wp).zip(plane.chunks(w)) {
                for (phase, out) in out.chunks_mut(wp).enumerate() {
                    for (o, &v) in out.iter_mut().zip(row.iter().skip(phase).step_by(stride)) {
                        *o = v;
                    }
                }
            }
        });
        Planes { data: std::borrow::Cow::Owned(data), h, w, stride, wp }
    }

    /// The values of row `iy` of plane `c` at the columns ≡ `phase` (mod stride).
    fn line(&self, c: usize, iy: usize, phase: usize) -> &[f32] {
        let start = ((c * self.h + iy) * self.stride + phase) * self.wp;
        &self.data[start..start + self.wp]
    }

    fn channels(&self) -> usize {
        self.data.len() / (self.h * self.stride * self.wp).max(1)
    }
}

/// im2col of `input` for output rows `rows` of an output `w_out` wide, into `col`
/// (`[c_in · |dy| · |dx|, rows.len() · w_out]`); outside the input reads zero. The taps'
/// stride must be the one `input` was split for.
fn im2col(input: &Planes<'_>, taps: &Taps<'_>, rows: std::ops::Range<usize>, w_out: usize, col: &mut ArrayViewMut2<'_, f32>) {
    assert_eq!(input.stride, taps.stride, "im2col: planes split for another stride");
    let (h, w) = (input.h, input.w);
    let p = rows.len() * w_out;
    let s = taps.stride as isize;
    let mut k = 0;
    for ci in 0..input.channels() {
        for &dy in taps.dy {
            for &dx in taps.dx {
                let mut out = col.row_mut(k);
                let out = out.as_slice_mut().expect("contiguous im2col row");
                debug_assert_eq!(out.len(), p);
                // Output columns whose input column is inside: s·ox + dx in [0, w); input
                // column s·ox + dx is at phase dx mod s, index ox + ⌊dx / s⌋.
                let lo = if dx < 0 { ((-dx + s - 1) / s) as usize } else { 0 }.min(w_out);
                let hi = if (w as isize - dx) <= 0 { 0 } else { ((w as isize - dx + s - 1) / s) as usize }.clamp(lo, w_out);
                let (phase, shift) = (dx.rem_euclid(s) as usize, dx.div_euclid(s));
                for (r, oy) in rows.clone().enumerate() {
                    let seg = &mut out[r * w_out..(r + 1) * w_out];
                    let iy = (oy * taps.stride) as isize + dy;
                    if iy < 0 || iy >= h as isize {
                        seg.fill(0.0);
                        continue;
                    }
                    seg[..lo].fill(0.0);
                    seg[hi..].fill(0.0);
                    if lo < hi {
                        let line = input.line(ci, iy as usize, phase);
                        let first = (lo as isize + shift) as usize;
                        seg[lo..hi].copy_from_slice(&line[first..first + hi - lo]);
                    }
                }
                k += 1;
            }
        }
    }
}

/// A k x k convolution (any stride, zero padding `pad`) of `x` (`[b, c_in, h, w]`), weights
/// `[c_out, c_in, k, k]` as burn stores them.
pub fn conv2d(x: &[f32], dims: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, k: usize, stride: usize, pad: usize) -> (Vec<f32>, [usize; 4]) {
    conv2d_relu(x, dims, weight, bias, c_out, k, stride, pad, false)
}

/// [`conv2d`], then a ReLU where `relu`, fused into the writes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_relu(x: &[f32], dims: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, k: usize, stride: usize, pad: usize, relu: bool) -> (Vec<f32>, [usize; 4]) {
    conv2d_using(direct::available(), x, dims, weight, bias, c_out, k, stride, pad, relu)
}

/// [`conv2d`] through the direct product (`use_direct`; with SIMD where [`direct::available`])
/// or through im2col blocks and ndarray's matrix product.
#[allow(clippy::too_many_arguments)]
fn conv2d_using(use_direct: bool, x: &[f32], dims: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, k: usize, stride: usize, pad: usize, relu: bool) -> (Vec<f32>, [usize; 4]) {
    let [b, c_in, h, w] = dims;
    assert!(stride > 0 && h + 2 * pad >= k && w + 2 * pad >= k, "conv2d: kernel larger than the padded input");
    assert_eq!(x.len(), b * c_in * h * w, "conv2d: input length");
    assert_eq!(weight.len(), c_out * c_in * k * k, "conv2d: weight length");
    let h_out = (h + 2 * pad - k) / stride + 1;
    let w_out = (w + 2 * pad - k) / stride + 1;
    if x.is_empty() || c_out == 0 {
        return (vec![0.0; b * c_out * h_out * w_out], [b, c_out, h_out, w_out]);
    }
    let offsets: Vec<isize> = (0..k).map(|t| t as isize - pad as isize).collect();
    let taps = Taps { dy: &offsets, dx: &offsets, stride };
    let wm = ArrayView2::from_shape((c_out, c_in * k * k), weight).expect("weight [c_out, c_in, k, k]");
    let packed = use_direct.then(|| direct::Packed::new(wm));
    let mut out = crate::zeroed(b * c_out * h_out * w_out);
    for (xi, oi) in x.chunks(c_in * h * w).zip(out.chunks_mut(c_out * h_out * w_out)) {
        if let Some(packed) = &packed {
            let input = direct::Padded::new(xi, c_in, h, w, stride, &offsets, w_out);
            direct_planes(&input, packed, &offsets, bias, relu, oi, [c_out, h_out, w_out]);
            continue;
        }
        let input = Planes::new(xi, c_in, h, w, stride);
        let output = ArrayViewMut3::from_shape((c_out, h_out, w_out), oi).expect("output planes");
        per_band_rows(output, 1, PIXELS, |scratch, mut band, rows| {
            let (mut col, mut res) = scratch.views(wm.ncols(), c_out, rows.len() * w_out);
            im2col(&input, &taps, rows, w_out, &mut col);
            ndarray::linalg::general_mat_mul(1.0, &wm, &col, 0.0, &mut res);
            for (co, src) in res.outer_iter().enumerate() {
                let add = bias.map_or(0.0, |values| values[co]);
                for (mut dst, seg) in band.index_axis_mut(Axis(0), co).outer_iter_mut().zip(src.exact_chunks(w_out)) {
                    for (d, &v) in dst.iter_mut().zip(seg.iter()) {
                        *d = activate(v, add, relu);
                    }
                }
            }
        });
    }
    (out, [b, c_out, h_out, w_out])
}

/// One image's convolution on the direct product into its output planes `out` (`[c_out,
/// h_out, w_out]`): bias, then ReLU where `relu`, fused into the writes.
fn direct_planes(input: &direct::Padded, packed: &direct::Packed, offsets: &[isize], bias: Option<&[f32]>, relu: bool, out: &mut [f32], [c_out, h_out, w_out]: [usize; 3]) {
    let output = ArrayViewMut3::from_shape((c_out, h_out, w_out), out).expect("output planes");
    per_band_rows(output, 1, PIXELS, |scratch, mut band, rows| {
        direct::product(input, packed, offsets, offsets, rows, w_out, &mut scratch.direct, |r, values, ld| {
            for (co, mut plane) in band.outer_iter_mut().enumerate() {
                let add = bias.map_or(0.0, |b| b[co]);
                let mut line = plane.row_mut(r);
                let line = line.as_slice_mut().expect("contiguous output row");
                direct::write_activated(line, &values[co * ld..co * ld + w_out], add, relu);
            }
        });
    });
}

/// [`direct_planes`], the output rows (`w_out` wide) written straight into `out`, the next
/// layer's zero-padded, phase-split input: no output planes to zero, no copy into that layout.
fn direct_padded(input: &direct::Padded, packed: &direct::Packed, offsets: &[isize], bias: Option<&[f32]>, relu: bool, out: &mut direct::Padded, w_out: usize) {
    let lines = out.lines();
    out.bands_mut(band_rows(w_out, 1, PIXELS)).into_par_iter().for_each_init(direct::Buffers::default, |bufs, (start, mut planes)| {
        let n = planes.first().map_or(0, |p| p.len() / lines.len());
        direct::product(input, packed, offsets, offsets, start..start + n, w_out, bufs, |r, values, ld| {
            for (co, plane) in planes.iter_mut().enumerate() {
                let add = bias.map_or(0.0, |b| b[co]);
                direct::put_activated(lines, &mut plane[r * lines.len()..(r + 1) * lines.len()], &values[co * ld..co * ld + w_out], add, relu);
            }
        });
    });
}

/// One convolution of a [`conv_chain`]: its geometry, packed weights and bias.
struct ChainLayer {
    stride: usize,
    offsets: Vec<isize>,
    packed: direct::Packed,
    bias: Option<Vec<f32>>,
    /// Output channels, rows, columns.
    out: [usize; 3],
}

impl ChainLayer {
    /// `conv` on `[c, h, w]` planes, where the direct product computes it.
    fn new(conv: &Conv2d, [c, h, w]: [usize; 3]) -> Option<Self> {
        let pad = plain_padding(conv)?;
        let (k, stride) = (conv.kernel_size[0], conv.stride[0]);
        let [c_out, c_in, ..] = conv.weight.val().dims();
        if c_in != c || c_out == 0 || h == 0 || w == 0 || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        let weight = values(conv.weight.val());
        let packed = direct::Packed::new(ArrayView2::from_shape((c_out, c_in * k * k), &weight[..]).expect("weight [c_out, c_in, k, k]"));
        Some(ChainLayer {
            stride,
            offsets: (0..k).map(|t| t as isize - pad as isize).collect(),
            packed,
            bias: conv.bias.as_ref().map(|b| values(b.val())),
            out: [c_out, (h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1],
        })
    }
}

/// g_a's and h_a's coding path: what [`chain_values`] with [`conv_values`] computes, to the
/// bit, but each layer but the last writes its output rows straight into the next layer's
/// zero-padded, phase-split input ([`direct::Padded`]), where GDN then runs in place (its
/// margins stay zero: GDN(0) = ReLU(0) = 0). That drops, per layer, the zero fill of the
/// output planes and the copy into the padded layout. Where the direct product is not
/// available or a layer's geometry does not fit it, [`chain_values`] runs.
pub fn conv_chain(x: Tensor<4>, convs: &[Conv2d], gdns: &[crate::Gdn]) -> Tensor<4> {
    let (device, [b, c, h, w]) = (x.device(), x.dims());
    let mut layers = Vec::with_capacity(convs.len());
    let mut shape = [c, h, w];
    for conv in convs.iter().take_while(|_| direct::available()) {
        let Some(layer) = ChainLayer::new(conv, shape) else { break };
        shape = layer.out;
        layers.push(layer);
    }
    if layers.is_empty() || layers.len() < convs.len() || b == 0 {
        return chain_values(x, convs, gdns, conv_values);
    }
    let last = layers.len() - 1;
    let tiles = tile_layers(convs, gdns, &layers);
    let x = crate::flex_ops::Values::of(x);
    let mut y = crate::zeroed(b * shape.iter().product::<usize>());
    for (xi, yi) in x.get().chunks(c * h * w).zip(y.chunks_mut(shape.iter().product())) {
        let first = &layers[0];
        if let Some(tiles) = &tiles {
            crate::amx::chain(xi, [c, h, w], tiles, yi);
            continue;
        }
        let mut input = direct::Padded::new(xi, c, h, w, first.stride, &first.offsets, first.out[2]);
        for (i, (layer, next)) in layers.iter().zip(&layers[1..]).enumerate() {
            let gdn = gdns.get(i);
            let [c_out, h_out, w_out] = layer.out;
            let mut out = direct::Padded::zeroed(c_out, h_out, w_out, next.stride, &next.offsets, next.out[2]);
            direct_padded(&input, &layer.packed, &layer.offsets, layer.bias.as_deref(), gdn.is_none(), &mut out, w_out);
            if let Some(g) = gdn {
                let (data, dims) = out.planes_mut();
                g.forward_values(data, dims);
            }
            input = out;
        }
        let layer = &layers[last];
        direct_planes(&input, &layer.packed, &layer.offsets, layer.bias.as_deref(), false, yi, layer.out);
    }
    let [c_y, h_y, w_y] = shape;
    Tensor::from_data(TensorData::new(y, [b, c_y, h_y, w_y]), &device)
}

/// The layers of a chain on AMX tiles (`crate::amx`), where every one of them fits the tiles
/// and `CAEC_NO_AMX` is not set: bf16 products with f32 sums, for the encoder's analysis
/// transforms only (the decoder's floats must not depend on the CPU). GDN after every layer
/// but the last where the chain has GDNs, else ReLU.
fn tile_layers(convs: &[Conv2d], gdns: &[crate::Gdn], layers: &[ChainLayer]) -> Option<Vec<crate::amx::TileLayer>> {
    use crate::amx::{PackedBf16, Then, TileLayer};
    let mut tiles = Vec::with_capacity(layers.len());
    let last = layers.len().checked_sub(1)?;
    for (i, (conv, layer)) in convs.iter().zip(layers).enumerate() {
        let [c_out, c_in, k, _] = conv.weight.val().dims();
        if !crate::amx::fits(c_in, c_out, k) {
            return None;
        }
        let then = match (i < last, gdns.get(i)) {
            (false, _) => Then::Nothing,
            (true, Some(g)) if g.inverse => return None,
            (true, Some(g)) => {
                let (beta, gamma) = g.effective_values();
                Then::Gdn { beta, gamma: PackedBf16::new(&gamma, c_out, c_out, 1) }
            }
            (true, None) => Then::Relu,
        };
        // The image (3 channels, read in one step per kernel row) as hi + lo bf16 parts: an
        // 8-bit level rounded to bf16 is off by up to half a level; the split costs nothing
        // while 2 · 3 · 5 inputs still fill one step.
        let split_input = i == 0 && c_in % crate::amx::BLOCK != 0 && PackedBf16::packs(2 * c_in, k);
        let weights = values(conv.weight.val());
        tiles.push(TileLayer {
            packed: if split_input { PackedBf16::new_split(&weights, c_out, c_in, k) } else { PackedBf16::new(&weights, c_out, c_in, k) },
            split_input,
            bias: layer.bias.clone().unwrap_or_else(|| vec![0.0; c_out]),
            stride: layer.stride,
            pad: (-layer.offsets[0]) as usize,
            out: layer.out,
            then,
        });
    }
    (!tiles.is_empty()).then_some(tiles)
}

/// A k x k transposed convolution with stride `stride`, padding `pad` and output padding
/// `pad_out` of `x` (`[b, c_in, h, w]`), weights `[c_in, c_out, k, k]` as burn stores them.
/// Output pixel (s·Y + py, s·X + px) only meets the taps ky ≡ py + pad (mod s): each of the s²
/// phases is an ordinary stride-1 convolution of the input with those taps, flipped.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d(x: &[f32], dims: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, k: usize, stride: usize, pad: usize, pad_out: usize) -> (Vec<f32>, [usize; 4]) {
    conv_transpose2d_relu(x, dims, weight, bias, c_out, k, stride, pad, pad_out, false)
}

/// [`conv_transpose2d`], then a ReLU where `relu`, fused into the writes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_transpose2d_relu(x: &[f32], dims: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, k: usize, stride: usize, pad: usize, pad_out: usize, relu: bool) -> (Vec<f32>, [usize; 4]) {
    conv_transpose2d_using(direct::available(), x, dims, weight, bias, c_out, k, stride, pad, pad_out, relu)
}

/// [`conv_transpose2d`] through the direct product or through im2col (see [`conv2d_using`]).
#[allow(clippy::too_many_arguments)]
fn conv_transpose2d_using(use_direct: bool, x: &[f32], dims: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, k: usize, stride: usize, pad: usize, pad_out: usize, relu: bool) -> (Vec<f32>, [usize; 4]) {
    let [b, c_in, h, w] = dims;
    assert!(stride > 0 && h > 0 && w > 0 && 2 * pad < k + pad_out, "conv_transpose2d: empty input or output");
    assert_eq!(x.len(), b * c_in * h * w, "conv_transpose2d: input length");
    assert_eq!(weight.len(), c_in * c_out * k * k, "conv_transpose2d: weight length");
    let h_out = (h - 1) * stride + k + pad_out - 2 * pad;
    let w_out = (w - 1) * stride + k + pad_out - 2 * pad;
    if x.is_empty() || c_out == 0 {
        return (vec![0.0; b * c_out * h_out * w_out], [b, c_out, h_out, w_out]);
    }
    let ph = Phases::new(use_direct, weight, c_in, c_out, k, stride, pad);
    let mut out = crate::zeroed(b * c_out * h_out * w_out);
    for (xi, oi) in x.chunks(c_in * h * w).zip(out.chunks_mut(c_out * h_out * w_out)) {
        let output = ArrayViewMut3::from_shape((c_out, h_out, w_out), oi).expect("output planes");
        if let Some(packed) = &ph.packed {
            let input = ph.padded(xi, c_in, h, w, w_out);
            let bands = output_bands(output, band_rows(w_out, stride, PIXELS * stride * stride));
            in_bands(bands, |bufs, band, rows| ph.direct_band(&input, packed, bias, relu, [h_out, w_out], band, rows, bufs));
            continue;
        }
        let input = Planes::new(xi, c_in, h, w, 1);
        // Bands of a multiple of `stride` rows, so that each holds whole phase rows; each
        // phase's product covers 1/stride² of a band, so bands are stride² times larger.
        per_band_rows(output, stride, PIXELS * stride * stride, |scratch, mut band, rows| {
            for (py, (_, offs_y)) in ph.taps.iter().enumerate() {
                let Some(ys) = ph.phase_rows(py, &rows, h_out) else { continue };
                for (px, (_, offs_x)) in ph.taps.iter().enumerate() {
                    let xw = (w_out + stride - 1 - px) / stride;
                    if xw == 0 {
                        continue;
                    }
                    let m = &ph.mats[py * stride + px];
                    let Scratch { col, res, .. } = &mut *scratch;
                    let mut res = view(res, c_out, ys.len() * xw);
                    let taps = Taps { dy: offs_y, dx: offs_x, stride: 1 };
                    let mut col = view(col, m.ncols(), ys.len() * xw);
                    im2col(&input, &taps, ys.clone(), xw, &mut col);
                    ndarray::linalg::general_mat_mul(1.0, m, &col, 0.0, &mut res);
                    for co in 0..c_out {
                        let add = bias.map_or(0.0, |values| values[co]);
                        let src = res.row(co);
                        let src = src.as_slice().expect("contiguous result row");
                        for (r, yy) in ys.clone().enumerate() {
                            direct::put_phase(band.line(co, yy * stride + py - rows.start), px, stride, &src[r * xw..(r + 1) * xw], add, relu);
                        }
                    }
                }
            }
        });
    }
    (out, [b, c_out, h_out, w_out])
}

/// A transposed convolution as its stride² sub-pixel phases: per phase p (0..stride) of rows
/// and of columns, the taps t with (p + pad − t) divisible by the stride and the input offset
/// each reads (output s·Y + p = s·iy − pad + t, so iy = Y + (p + pad − t)/s); per phase pair
/// (py, px) the weight matrix `[c_out, c_in · |ty| · |tx|]` and, for the direct product, its
/// packed form.
struct Phases {
    stride: usize,
    taps: Vec<(Vec<usize>, Vec<isize>)>,
    mats: Vec<Array2<f32>>,
    packed: Option<Vec<direct::Packed>>,
    /// Every phase's column offsets: what the padded input must hold.
    all_dx: Vec<isize>,
}

impl Phases {
    /// `weight`: `[c_in, c_out, k, k]` as burn stores it.
    fn new(use_direct: bool, weight: &[f32], c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize) -> Self {
        let phase_taps = |p: usize| -> (Vec<usize>, Vec<isize>) {
            let taps: Vec<usize> = (0..k).filter(|&t| (p + pad + stride * k - t) % stride == 0).collect();
            let offs = taps.iter().map(|&t| (p as isize + pad as isize - t as isize) / stride as isize).collect();
            (taps, offs)
        };
        let taps: Vec<(Vec<usize>, Vec<isize>)> = (0..stride).map(phase_taps).collect();
        // Built by the pool (at every call: in training, on the calling thread they kept the
        // pool waiting).
        let phase_weights = |i: usize| {
            let (ty, tx) = (&taps[i / stride].0, &taps[i % stride].0);
            let mut m = Array2::<f32>::zeros((c_out, c_in * ty.len() * tx.len()));
            for (co, mut row) in m.outer_iter_mut().enumerate() {
                let row = row.as_slice_mut().expect("contiguous weight row");
                let mut col = 0;
                for ci in 0..c_in {
                    for &ky in ty {
                        let taps = &weight[((ci * c_out + co) * k + ky) * k..][..k];
                        for &kx in tx {
                            row[col] = taps[kx];
                            col += 1;
                        }
                    }
                }
            }
            let packed = use_direct.then(|| direct::Packed::new(m.view()));
            (m, packed)
        };
        let (mats, packed): (Vec<Array2<f32>>, Vec<Option<direct::Packed>>) = (0..stride * stride).into_par_iter().map(phase_weights).unzip();
        let all_dx = taps.iter().flat_map(|(_, offs)| offs.iter().copied()).collect();
        Phases { stride, taps, mats, packed: packed.into_iter().collect(), all_dx }
    }

    /// The zero-padded input planes `x` (`[c, h, w]`) that [`Phases::direct_band`] reads for
    /// an output `w_out` wide.
    fn padded(&self, x: &[f32], c: usize, h: usize, w: usize, w_out: usize) -> direct::Padded {
        direct::Padded::new(x, c, h, w, 1, &self.all_dx, w_out.div_ceil(self.stride))
    }

    /// The zeros of a [`Phases::padded`] input of `[c, h, w]`, for the layer before to write.
    fn padded_zeros(&self, [c, h, w]: [usize; 3], w_out: usize) -> direct::Padded {
        direct::Padded::zeroed(c, h, w, 1, &self.all_dx, w_out.div_ceil(self.stride))
    }

    /// The rows Y of row phase `py` whose output row s·Y + py lies in `rows`, if any.
    fn phase_rows(&self, py: usize, rows: &std::ops::Range<usize>, h_out: usize) -> Option<std::ops::Range<usize>> {
        let s = self.stride;
        let y0 = (rows.start + s - 1 - py) / s;
        let y1 = ((rows.end + s - 1 - py) / s).min((h_out + s - 1 - py) / s);
        (y0 < y1).then_some(y0..y1)
    }

    /// The output rows `rows` (a band, whole phase rows) of one image on the direct product,
    /// into `band`: bias, then ReLU where `relu`, fused into the writes.
    #[allow(clippy::too_many_arguments)]
    fn direct_band(&self, input: &direct::Padded, packed: &[direct::Packed], bias: Option<&[f32]>, relu: bool, [h_out, w_out]: [usize; 2], band: &mut impl Rows, rows: std::ops::Range<usize>, bufs: &mut direct::Buffers) {
        let s = self.stride;
        for (py, (_, offs_y)) in self.taps.iter().enumerate() {
            let Some(ys) = self.phase_rows(py, &rows, h_out) else { continue };
            for (px, (_, offs_x)) in self.taps.iter().enumerate() {
                let xw = (w_out + s - 1 - px) / s;
                if xw == 0 {
                    continue;
                }
                let y0 = ys.start;
                direct::product(input, &packed[py * s + px], offs_y, offs_x, ys.clone(), xw, bufs, |r, values, ld| {
                    for co in 0..band.channels() {
                        let add = bias.map_or(0.0, |b| b[co]);
                        let line = band.line(co, (y0 + r) * s + py - rows.start);
                        direct::put_phase(line, px, s, &values[co * ld..co * ld + xw], add, relu);
                    }
                });
            }
        }
    }
}

/// A band of output rows that a layer writes: channel `co`'s row `r` (from the band's first)
/// as a line that holds output column x at index x.
trait Rows: Send {
    fn channels(&self) -> usize;
    fn rows(&self) -> usize;
    fn line(&mut self, co: usize, r: usize) -> &mut [f32];
}

/// Output planes (`[c, rows, w]`).
impl Rows for ArrayViewMut3<'_, f32> {
    fn channels(&self) -> usize {
        self.dim().0
    }

    fn rows(&self) -> usize {
        self.dim().1
    }

    fn line(&mut self, co: usize, r: usize) -> &mut [f32] {
        self.index_axis_mut(Axis(0), co).index_axis_move(Axis(0), r).into_slice().expect("contiguous output row")
    }
}

/// Rows of a stride-1 [`direct::Padded`] input of the next layer ([`direct::Padded::bands_mut`]).
struct PaddedRows<'a> {
    planes: Vec<&'a mut [f32]>,
    lines: direct::Lines,
}

impl Rows for PaddedRows<'_> {
    fn channels(&self) -> usize {
        self.planes.len()
    }

    fn rows(&self) -> usize {
        self.planes.first().map_or(0, |p| p.len() / self.lines.len())
    }

    fn line(&mut self, co: usize, r: usize) -> &mut [f32] {
        let len = self.lines.len();
        &mut self.planes[co][r * len + self.lines.left()..(r + 1) * len]
    }
}

/// `output` (`[c, h, w]`) in bands of `rows` rows, each with its first row.
fn output_bands(output: ArrayViewMut3<'_, f32>, rows: usize) -> Vec<(usize, ArrayViewMut3<'_, f32>)> {
    let rows = rows.max(1);
    let (mut bands, mut rest) = (Vec::new(), output);
    while rest.dim().1 > rows {
        let (band, more) = rest.split_at(Axis(1), rows);
        bands.push((bands.len() * rows, band));
        rest = more;
    }
    bands.push((bands.len() * rows, rest));
    bands
}

/// `f(buffers, band, rows)` for every band (with its first row) in parallel.
fn in_bands<B: Rows>(bands: Vec<(usize, B)>, f: impl Fn(&mut direct::Buffers, &mut B, std::ops::Range<usize>) + Sync + Send) {
    bands.into_par_iter().for_each_init(direct::Buffers::default, |bufs, (start, mut band)| {
        let n = band.rows();
        f(bufs, &mut band, start..start + n)
    });
}

/// One transposed convolution of a [`deconv_chain`].
struct DeconvLayer {
    phases: Phases,
    bias: Option<Vec<f32>>,
    /// Output channels, rows, columns.
    out: [usize; 3],
}

impl DeconvLayer {
    /// `deconv` on `[c, h, w]` planes, where our phases on the direct product compute it.
    fn new(deconv: &ConvTranspose2d, [c, h, w]: [usize; 3]) -> Option<Self> {
        let [c_in, c_out, ..] = deconv.weight.val().dims();
        if !direct::available() || !plain_transposed(deconv) || !phases_fit(c_out) || c_in != c || h == 0 || w == 0 {
            return None;
        }
        let (k, stride, pad, pad_out) = (deconv.kernel_size[0], deconv.stride[0], deconv.padding[0], deconv.padding_out[0]);
        Some(DeconvLayer {
            phases: Phases::new(true, &values(deconv.weight.val()), c_in, c_out, k, stride, pad),
            bias: deconv.bias.as_ref().map(|b| values(b.val())),
            out: [c_out, (h - 1) * stride + k + pad_out - 2 * pad, (w - 1) * stride + k + pad_out - 2 * pad],
        })
    }

    /// One image's output rows from `input`, into `bands`.
    fn run<B: Rows>(&self, input: &direct::Padded, relu: bool, bands: Vec<(usize, B)>) {
        let [_, h_out, w_out] = self.out;
        let packed = self.phases.packed.as_deref().expect("packed phases");
        in_bands(bands, |bufs, band, rows| self.phases.direct_band(input, packed, self.bias.as_deref(), relu, [h_out, w_out], band, rows, bufs));
    }

    fn band_rows(&self) -> usize {
        let s = self.phases.stride;
        band_rows(self.out[2], s, PIXELS * s * s)
    }
}

/// g_s's decoding path, as [`conv_chain`] for g_a: what [`chain_values`] with
/// [`deconv_values`] computes, to the bit, each layer but the last writing its rows straight
/// into the next layer's zero-padded input, inverse GDN in place over it. Where a layer does
/// not run on our phases and the direct product, [`chain_values`] runs.
pub fn deconv_chain(y: Tensor<4>, deconvs: &[ConvTranspose2d], gdns: &[crate::Gdn]) -> Tensor<4> {
    let (device, [b, c, h, w]) = (y.device(), y.dims());
    let mut layers: Vec<DeconvLayer> = Vec::with_capacity(deconvs.len());
    let mut shape = [c, h, w];
    for deconv in deconvs {
        let Some(layer) = DeconvLayer::new(deconv, shape) else { break };
        shape = layer.out;
        layers.push(layer);
    }
    if layers.is_empty() || layers.len() < deconvs.len() || b == 0 {
        return chain_values(y, deconvs, gdns, deconv_values);
    }
    let y = crate::flex_ops::Values::of(y);
    let per_image: usize = shape.iter().product();
    let mut out = crate::zeroed(b * per_image);
    for (yi, oi) in y.get().chunks(c * h * w).zip(out.chunks_mut(per_image)) {
        let mut input = layers[0].phases.padded(yi, c, h, w, layers[0].out[2]);
        for (i, (layer, next)) in layers.iter().zip(&layers[1..]).enumerate() {
            let gdn = gdns.get(i);
            let mut planes = next.phases.padded_zeros(layer.out, next.out[2]);
            let lines = planes.lines();
            let bands = planes.bands_mut(layer.band_rows()).into_iter().map(|(start, planes)| (start, PaddedRows { planes, lines })).collect();
            layer.run(&input, gdn.is_none(), bands);
            if let Some(g) = gdn {
                let (data, dims) = planes.planes_mut();
                g.forward_values(data, dims);
            }
            input = planes;
        }
        let layer = layers.last().expect("a layer");
        let [c_out, h_out, w_out] = layer.out;
        let output = ArrayViewMut3::from_shape((c_out, h_out, w_out), oi).expect("output planes");
        layer.run(&input, false, output_bands(output, layer.band_rows()));
    }
    let [c_x, h_x, w_x] = shape;
    Tensor::from_data(TensorData::new(out, [b, c_x, h_x, w_x]), &device)
}

/// The weight gradient of both kinds of convolution, as one matrix product per band of output
/// rows: Σ over images and the pixels p of the `small` grid of `small[a, p] · big[c, y·s + ky −
/// pad, x·s + kx − pad]` (outside `big` reads zero), returned as `[c_a, c_b, k, k]`.
/// - convolution: small = dY (`[b, c_out, h_out, w_out]`), big = X: dW `[c_out, c_in, k, k]`;
/// - transposed convolution: small = X, big = dY: dW `[c_in, c_out, k, k]`.
///
/// The bands' partial products are added in band order, so the sum does not depend on the
/// number of threads.
pub fn weight_grad(small: &[f32], small_dims: [usize; 4], big: &[f32], big_dims: [usize; 4], k: usize, stride: usize, pad: usize) -> Vec<f32> {
    weight_grad_using(direct::available(), small, small_dims, big, big_dims, k, stride, pad)
}

/// [`weight_grad`] through the direct product or through im2col (see [`conv2d_using`]).
#[allow(clippy::too_many_arguments)]
fn weight_grad_using(use_direct: bool, small: &[f32], small_dims: [usize; 4], big: &[f32], big_dims: [usize; 4], k: usize, stride: usize, pad: usize) -> Vec<f32> {
    let [b, c_a, hs, ws] = small_dims;
    let [b2, c_b, h, w] = big_dims;
    assert_eq!(b, b2, "weight_grad: batch sizes");
    assert_eq!(small.len(), b * c_a * hs * ws, "weight_grad: small length");
    assert_eq!(big.len(), b * c_b * h * w, "weight_grad: big length");
    let kk = c_b * k * k;
    let mut total = Array2::<f32>::zeros((c_a, kk));
    if small.is_empty() || big.is_empty() {
        return total.into_raw_vec_and_offset().0;
    }
    let offsets: Vec<isize> = (0..k).map(|t| t as isize - pad as isize).collect();
    let taps = Taps { dy: &offsets, dx: &offsets, stride };
    let rows = (2 * PIXELS / ws).max(1);
    let jobs: Vec<(usize, std::ops::Range<usize>)> =
        (0..b).flat_map(|i| (0..hs).step_by(rows).map(move |r| (i, r..(r + rows).min(hs)))).collect();
    let inputs: Vec<Input<'_>> = big
        .chunks(c_b * h * w)
        .map(|x| match use_direct {
            true => Input::Padded(direct::Padded::new(x, c_b, h, w, stride, &offsets, ws)),
            false => Input::Planes(Planes::new(x, c_b, h, w, stride)),
        })
        .collect();
    // Bands in groups of a few per thread, each group's partial products added to the total in
    // band order before the next group starts: the order of the sum is fixed whatever the group
    // size, and at most one group's partials are held at a time.
    let group = 4 * rayon::current_num_threads().max(1);
    for jobs in jobs.chunks(group) {
        let parts: Vec<Array2<f32>> = jobs
            .par_iter()
            .map_init(Scratch::default, |scratch, (i, band)| {
                let (i, band) = (*i, band.clone());
                let image = &small[i * c_a * hs * ws..(i + 1) * c_a * hs * ws];
                let mut part = Array2::<f32>::zeros((c_a, kk));
                match &inputs[i] {
                    Input::Padded(input) => {
                        let out = part.as_slice_mut().expect("contiguous partial product");
                        direct::weight_product(input, image, c_a, hs, ws, &offsets, &offsets, band, &mut scratch.direct, out);
                    }
                    Input::Planes(input) => {
                        let a = ArrayView2::from_shape((c_a, hs * ws), image).expect("small planes");
                        let a = a.slice_axis(Axis(1), ndarray::Slice::from(band.start * ws..band.end * ws));
                        let (mut col, _) = scratch.views(kk, 0, band.len() * ws);
                        im2col(input, &taps, band, ws, &mut col);
                        ndarray::linalg::general_mat_mul(1.0, &a, &col.t(), 0.0, &mut part);
                    }
                }
                part
            })
            .collect();
        // Added by the pool, piece by piece of the total, each piece in band order.
        let parts: Vec<&[f32]> = parts.iter().map(|p| p.as_slice().expect("contiguous partial product")).collect();
        let sum = total.as_slice_mut().expect("contiguous total");
        sum.par_chunks_mut(1 << 12).enumerate().for_each(|(c, piece)| {
            for part in &parts {
                for (t, &v) in piece.iter_mut().zip(&part[c << 12..]) {
                    *t += v;
                }
            }
        });
    }
    total.into_raw_vec_and_offset().0
}

/// Buffers of one worker, reused from band to band: im2col blocks are fully overwritten, so
/// they are allocated (and zeroed) once instead of once per band.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    res: Vec<f32>,
    direct: direct::Buffers,
}

impl Scratch {
    /// An im2col block `[k, p]` and a result block `[c_out, p]`.
    fn views(&mut self, k: usize, c_out: usize, p: usize) -> (ArrayViewMut2<'_, f32>, ArrayViewMut2<'_, f32>) {
        (view(&mut self.col, k, p), view(&mut self.res, c_out, p))
    }
}

/// The first `rows · cols` floats of `buf` (grown if needed) as a `[rows, cols]` matrix.
fn view(buf: &mut Vec<f32>, rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    if buf.len() < rows * cols {
        buf.resize(rows * cols, 0.0);
    }
    ArrayViewMut2::from_shape((rows, cols), &mut buf[..rows * cols]).expect("scratch block")
}

/// A convolution's input as the chosen product reads it.
enum Input<'a> {
    /// Phase-split planes for im2col.
    Planes(Planes<'a>),
    /// Zero-padded phase-split planes for the direct product.
    Padded(direct::Padded),
}

/// Run `f` on bands of whole output rows (about `pixels` pixels each, a multiple of
/// `multiple` rows) in parallel; `f` gets a worker's scratch buffers, the band
/// (`[c, rows, w]`) and its row range. The split depends on the shape only, never on the
/// number of threads, so results do not either. (A band is at least one row: at most
/// `(c_in·k² + c_out)·w` floats of scratch per worker, ~10 MB for a 6000-pixel-wide layer
/// at N = 64; the codec's tiles are at most 1152 wide.)
fn per_band_rows(
    output: ArrayViewMut3<'_, f32>,
    multiple: usize,
    pixels: usize,
    f: impl Fn(&mut Scratch, ArrayViewMut3<'_, f32>, std::ops::Range<usize>) + Sync,
) {
    let (_, h, w) = output.dim();
    output_bands(output, band_rows(w, multiple, pixels)).into_par_iter().for_each_init(Scratch::default, |scratch, (start, band)| {
        let n = band.dim().1;
        f(scratch, band, start..(start + n).min(h))
    });
}

/// Rows per band of [`per_band_rows`]: about `pixels` pixels of a `w`-wide output, a multiple
/// of `multiple` rows, at least one.
fn band_rows(w: usize, multiple: usize, pixels: usize) -> usize {
    ((pixels / w.max(1)).max(1)).div_ceil(multiple) * multiple
}

/// The square padding of `conv` where its geometry is one [`conv2d`] computes (square kernel,
/// equal strides, equal padding on every side, no groups or dilation).
fn plain_padding(conv: &Conv2d) -> Option<usize> {
    let [k0, k1] = conv.kernel_size;
    let plain = conv.groups == 1 && conv.dilation == [1, 1] && conv.stride[0] == conv.stride[1] && k0 == k1;
    match conv.padding {
        PaddingConfig2d::Explicit(a, b, c, d) if plain && a == b && b == c && c == d => Some(a),
        _ => None,
    }
}

/// `conv.forward(x)`: in training through the autodiff operation of [`crate::conv_op`], in
/// coding through [`conv2d`] (burn's own where the geometry does not fit either).
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv_then(conv, x, false)
}

/// `relu(conv.forward(x))`, the ReLU fused into the convolution (and into its backward pass).
pub fn conv_relu_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv_then(conv, x, true)
}

fn conv_then(conv: &Conv2d, x: Tensor<4>, relu: bool) -> Tensor<4> {
    if x.is_autodiff() {
        if let (Some(pad), Some(bias)) = (plain_padding(conv), conv.bias.as_ref()) {
            let g = crate::conv_op::Geometry { k: conv.kernel_size[0], stride: conv.stride[0], pad, pad_out: 0 };
            if let Some(y) = crate::conv_op::conv(&x, &conv.weight.val(), &bias.val(), g, false, relu) {
                return y;
            }
        }
        return relu_if(conv.forward(x), relu);
    }
    let (device, dims) = (x.device(), x.dims());
    let (y, shape) = conv_values(conv, values(x), dims, relu);
    Tensor::from_data(TensorData::new(y, shape), &device)
}

/// Coding without burn's tensors between layers: `conv`'s forward of the planes `x` (`dims`,
/// NCHW), then ReLU where `relu`, through [`conv2d`] where the geometry allows (else burn's
/// own operation). Returns the output planes and their dims.
pub fn conv_values(conv: &Conv2d, x: Vec<f32>, dims: [usize; 4], relu: bool) -> (Vec<f32>, [usize; 4]) {
    let k = conv.kernel_size[0];
    match plain_padding(conv) {
        Some(pad) if dims.iter().all(|&d| d > 0) && dims[2] + 2 * pad >= k && dims[3] + 2 * pad >= k => {
            let c_out = conv.weight.val().dims()[0];
            let bias = conv.bias.as_ref().map(|b| values(b.val()));
            conv2d_using(direct::available(), &x, dims, &values(conv.weight.val()), bias.as_deref(), c_out, k, conv.stride[0], pad, relu)
        }
        _ => burn_values(x, dims, relu, &conv.weight.val().device(), |t| conv.forward(t)),
    }
}

/// Coding through plain planes (one tensor in, one out): layer i of `layers` runs as
/// `run(layer, planes, dims, relu)`, then `gdns[i]` where there is one; ReLU, fused into the
/// layer's writes, after every layer but the last where there is no GDN. g_a's and g_s's
/// inference path ([`conv_values`] or [`deconv_values`] as `run`).
pub fn chain_values<L>(x: Tensor<4>, layers: &[L], gdns: &[crate::Gdn], run: impl Fn(&L, Vec<f32>, [usize; 4], bool) -> (Vec<f32>, [usize; 4])) -> Tensor<4> {
    let (device, mut dims) = (x.device(), x.dims());
    let mut v = values(x);
    let last = layers.len().saturating_sub(1);
    for (i, layer) in layers.iter().enumerate() {
        let gdn = gdns.get(i).filter(|_| i < last);
        (v, dims) = run(layer, v, dims, i < last && gdn.is_none());
        if let Some(g) = gdn {
            g.forward_values(&mut v, dims);
        }
    }
    Tensor::from_data(TensorData::new(v, dims), &device)
}

/// `layer` run by burn on the planes `x`, then ReLU where `relu`: the fallback of
/// [`conv_values`] and [`deconv_values`].
fn burn_values(x: Vec<f32>, dims: [usize; 4], relu: bool, device: &Device, layer: impl Fn(Tensor<4>) -> Tensor<4>) -> (Vec<f32>, [usize; 4]) {
    let y = relu_if(layer(Tensor::from_data(TensorData::new(x, dims), device)), relu);
    let shape = y.dims();
    (values(y), shape)
}

/// `y`, or burn's ReLU of it where `relu`: what the fused ReLU replaces wherever burn's own
/// operation runs.
fn relu_if(y: Tensor<4>, relu: bool) -> Tensor<4> {
    if relu {
        burn::tensor::activation::relu(y)
    } else {
        y
    }
}

/// Whether [`conv_transpose2d`] computes `deconv`'s geometry (square kernel, equal strides,
/// paddings and output paddings, no groups or dilation, padding inside the kernel).
fn plain_transposed(deconv: &ConvTranspose2d) -> bool {
    let [k0, k1] = deconv.kernel_size;
    deconv.groups == 1
        && deconv.dilation == [1, 1]
        && deconv.stride[0] == deconv.stride[1]
        && deconv.padding[0] == deconv.padding[1]
        && deconv.padding_out[0] == deconv.padding_out[1]
        && k0 == k1
        && deconv.padding[0] * 2 < k0 + deconv.padding_out[0]
}

/// `deconv.forward(x)`, as [`conv_forward`] (through [`conv_transpose2d`]).
pub fn deconv_forward(deconv: &ConvTranspose2d, x: Tensor<4>) -> Tensor<4> {
    deconv_then(deconv, x, false)
}

/// `relu(deconv.forward(x))`, the ReLU fused as in [`conv_relu_forward`].
pub fn deconv_relu_forward(deconv: &ConvTranspose2d, x: Tensor<4>) -> Tensor<4> {
    deconv_then(deconv, x, true)
}

fn deconv_then(deconv: &ConvTranspose2d, x: Tensor<4>, relu: bool) -> Tensor<4> {
    if x.is_autodiff() {
        if let (true, Some(bias)) = (plain_transposed(deconv), deconv.bias.as_ref()) {
            let g = crate::conv_op::Geometry { k: deconv.kernel_size[0], stride: deconv.stride[0], pad: deconv.padding[0], pad_out: deconv.padding_out[0] };
            if let Some(y) = crate::conv_op::conv(&x, &deconv.weight.val(), &bias.val(), g, true, relu) {
                return y;
            }
        }
        return relu_if(deconv.forward(x), relu);
    }
    let (device, dims) = (x.device(), x.dims());
    let (y, shape) = deconv_values(deconv, values(x), dims, relu);
    Tensor::from_data(TensorData::new(y, shape), &device)
}

/// [`conv_values`] for a transposed convolution, through [`conv_transpose2d`].
pub fn deconv_values(deconv: &ConvTranspose2d, x: Vec<f32>, dims: [usize; 4], relu: bool) -> (Vec<f32>, [usize; 4]) {
    let c_out = deconv.weight.val().dims()[1];
    // With a few output channels, but more than the few-row tile takes, each phase's product
    // has a few rows: burn's form (one product over the input channels, then a scatter of the
    // k² taps) is faster there; at 3 channels (g_s's last layer, 768x512, layers bench) burn's
    // took 21 ms against 37 on the 6-row tiles (an earlier session), and 33–35 ms against 23 on
    // the 3-row tile (this one, a slower host).
    if !plain_transposed(deconv) || !phases_fit(c_out) || dims.iter().any(|&d| d == 0) {
        return burn_values(x, dims, relu, &deconv.weight.val().device(), |t| deconv.forward(t));
    }
    let bias = deconv.bias.as_ref().map(|b| values(b.val()));
    let k = deconv.kernel_size[0];
    conv_transpose2d_using(direct::available(), &x, dims, &values(deconv.weight.val()), bias.as_deref(), c_out, k, deconv.stride[0], deconv.padding[0], deconv.padding_out[0], relu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        for (i, (&p, &q)) in a.iter().zip(b).enumerate() {
            assert!((p - q).abs() <= 1e-5 * scale, "{what}, element {i}: {p} vs {q}");
        }
    }

    #[test]
    fn convolutions_match_burns_on_random_inputs() {
        let dev = Device::flex();
        dev.seed(9);
        // (c_in, c_out, k, stride, h, w): the codec's shapes in small, odd sizes, strides 1
        // and 2, kernels 3, 5 and 9 (9: taps two phase columns away). The two with 500 / 800
        // columns span several bands (outputs wider than PIXELS: one row per band).
        for (c_in, c_out, k, stride, h, w) in [(3, 8, 5, 2, 21, 34), (8, 6, 5, 2, 16, 16), (5, 7, 3, 1, 9, 13), (4, 4, 5, 2, 1, 3), (6, 5, 5, 2, 40, 3), (4, 6, 5, 2, 9, 800), (5, 7, 3, 1, 5, 500), (4, 5, 3, 2, 11, 14), (3, 6, 9, 2, 20, 23)] {
            let conv = crate::conv(c_in, c_out, k, stride, &dev);
            let x = Tensor::<4>::random([2, c_in, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let want = values(conv.forward(x.clone()));
            let got = values(conv_forward(&conv, x));
            close(&got, &want, &format!("conv {c_in}->{c_out} k{k} s{stride} {h}x{w}"));
        }
    }

    #[test]
    fn transposed_convolutions_match_burns_on_random_inputs() {
        let dev = Device::flex();
        dev.seed(10);
        // (4, 17, 5, 13, 200): several bands, and enough output channels for deconv_forward's
        // phases; three channels (the few-row tile) on 150 columns: phase rows wider than
        // WIDE_COLS and a rest.
        for (c_in, c_out, k, h, w) in [(6, 3, 5, 11, 17), (8, 8, 5, 4, 6), (5, 4, 3, 7, 5), (4, 3, 5, 1, 1), (3, 2, 5, 9, 2), (4, 17, 5, 6, 7), (4, 17, 5, 13, 200), (8, 3, 5, 6, 150)] {
            let deconv = crate::deconv(c_in, c_out, k, &dev);
            let x = Tensor::<4>::random([2, c_in, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let want = values(deconv.forward(x.clone()));
            let bias = deconv.bias.as_ref().map(|b| values(b.val()));
            let (got, shape) = conv_transpose2d(&values(x.clone()), x.dims(), &values(deconv.weight.val()), bias.as_deref(), c_out, k, 2, k / 2, 1);
            assert_eq!(shape, [2, c_out, 2 * h, 2 * w]);
            close(&got, &want, &format!("deconv {c_in}->{c_out} k{k} {h}x{w}"));
            close(&values(deconv_forward(&deconv, x)), &want, &format!("deconv_forward {c_in}->{c_out}"));
        }
    }

    #[test]
    fn direct_and_im2col_products_agree() {
        // The direct product runs wherever the CPU has AVX2 + FMA, so burn-comparison tests on
        // such a machine check it; this checks it against the im2col path on the same shapes
        // (and the portable micro-kernel where there is no AVX2), including widths that are
        // not multiples of the micro-tile's 16 pixels and output channels not of its 6, and
        // kernels smaller than the padding or the stride (taps only outside the input; phases
        // of a transposed convolution that meet no tap).
        let mut rng = crate::TestRng::new(12345);
        let mut random = |n: usize| rng.values(n, -1.0, 1.0);
        for (c_in, c_out, k, stride, h, w, pad) in [
            (3, 8, 5, 2, 21, 34, 2),
            (8, 6, 5, 2, 16, 16, 2),
            (5, 7, 3, 1, 9, 13, 1),
            (4, 4, 5, 2, 1, 3, 2),
            (6, 5, 5, 2, 40, 3, 2),
            (4, 6, 5, 2, 9, 800, 2),
            (3, 6, 9, 2, 20, 23, 4),
            (16, 9, 5, 2, 30, 97, 2),
            (3, 5, 1, 1, 6, 14, 1),
            // The lane layout on AVX-512 (≥ 256 taps, channels a multiple of 16): 400 taps,
            // 14 pixels a row (a tail of 2), and 300 taps with 48 channels (a tail of 5); the
            // weight gradients' lane tiles with 32 and 48 rows.
            (16, 32, 5, 2, 13, 27, 2),
            (12, 48, 5, 2, 9, 33, 2),
        ] {
            let (x, wt, bias) = (random(2 * c_in * h * w), random(c_out * c_in * k * k), random(c_out));
            let a = conv2d_using(true, &x, [2, c_in, h, w], &wt, Some(&bias), c_out, k, stride, pad, false);
            let b = conv2d_using(false, &x, [2, c_in, h, w], &wt, Some(&bias), c_out, k, stride, pad, false);
            assert_eq!(a.1, b.1);
            close(&a.0, &b.0, &format!("direct conv {c_in}->{c_out} k{k} s{stride} {h}x{w}"));
            // ReLU fused into the writes: the same values, negatives (and −0) as +0.
            let r = conv2d_using(true, &x, [2, c_in, h, w], &wt, Some(&bias), c_out, k, stride, pad, true);
            assert!(r.0.iter().zip(&a.0).all(|(&r, &v)| r.to_bits() == if v > 0.0 { v } else { 0.0 }.to_bits()), "fused ReLU {c_in}->{c_out}");
            // The weight gradient for an output gradient of the output's shape.
            let dy = random(a.0.len());
            let wa = weight_grad_using(true, &dy, a.1, &x, [2, c_in, h, w], k, stride, pad);
            let wb = weight_grad_using(false, &dy, a.1, &x, [2, c_in, h, w], k, stride, pad);
            close(&wa, &wb, &format!("direct weight gradient {c_in}->{c_out} k{k} s{stride} {h}x{w}"));
        }
        // The last: one phase (9 taps x 32 channels) on the lane layout, the others on the tiles.
        for (c_in, c_out, k, h, w, pad_out) in [(6, 3, 5, 11, 17, 1), (8, 8, 5, 4, 6, 1), (5, 4, 3, 7, 5, 1), (4, 3, 5, 1, 1, 1), (4, 17, 5, 13, 200, 1), (5, 6, 5, 7, 30, 0), (3, 4, 1, 5, 9, 1), (32, 16, 5, 6, 9, 1)] {
            let (x, wt, bias) = (random(2 * c_in * h * w), random(c_in * c_out * k * k), random(c_out));
            let a = conv_transpose2d_using(true, &x, [2, c_in, h, w], &wt, Some(&bias), c_out, k, 2, k / 2, pad_out, false);
            let b = conv_transpose2d_using(false, &x, [2, c_in, h, w], &wt, Some(&bias), c_out, k, 2, k / 2, pad_out, false);
            assert_eq!(a.1, b.1);
            close(&a.0, &b.0, &format!("direct deconv {c_in}->{c_out} k{k} {h}x{w}"));
        }
    }

    #[test]
    fn transposed_convolution_without_output_padding_matches_burns() {
        use burn::nn::conv::ConvTranspose2dConfig;
        let dev = Device::flex();
        dev.seed(11);
        // Odd output sizes (2h − 1): the last band holds a single row of phase 0.
        let deconv = ConvTranspose2dConfig::new([5, 6], [5, 5]).with_stride([2, 2]).with_padding([2, 2]).init(&dev);
        let x = Tensor::<4>::random([1, 5, 7, 300], Distribution::Normal(0.0, 1.0), &dev);
        let want = values(deconv.forward(x.clone()));
        let bias = deconv.bias.as_ref().map(|b| values(b.val()));
        let (got, shape) = conv_transpose2d(&values(x.clone()), x.dims(), &values(deconv.weight.val()), bias.as_deref(), 6, 5, 2, 2, 0);
        assert_eq!(shape, [1, 6, 13, 599]);
        close(&got, &want, "deconv without output padding");
    }

    /// Output, dX, dW and db of `ours` and `burns` (the same layer) for a random input and a
    /// fixed positive weighting of the output (positive, so that db is a sum without
    /// cancellation and a relative tolerance means something).
    fn compare_gradients(ours: impl Fn(Tensor<4>) -> Tensor<4>, burns: impl Fn(Tensor<4>) -> Tensor<4>, params: impl Fn() -> (Tensor<4>, Tensor<1>), x_dims: [usize; 4], what: &str) {
        let dev = Device::flex().autodiff();
        let x = Tensor::<4>::random(x_dims, Distribution::Normal(0.0, 1.0), &dev).require_grad();
        let mut results = Vec::new();
        for f in [&ours as &dyn Fn(Tensor<4>) -> Tensor<4>, &burns] {
            let y = f(x.clone());
            let r = Tensor::<4>::from_data(
                TensorData::new((0..y.dims().iter().product::<usize>()).map(|i| ((i * 7919) % 23) as f32 / 11.0).collect::<Vec<f32>>(), y.dims()),
                &dev,
            );
            let grads = (y.clone() * r).sum().backward();
            let (w, b) = params();
            results.push([
                values(y.inner()),
                values(x.grad(&grads).expect("dx")),
                values(w.grad(&grads).expect("dw")),
                values(b.grad(&grads).expect("db")),
            ]);
        }
        for (i, name) in ["output", "dx", "dw", "db"].iter().enumerate() {
            close(&results[0][i], &results[1][i], &format!("{what}: {name}"));
        }
    }

    #[test]
    fn training_convolutions_match_burns_gradients() {
        let dev = Device::flex().autodiff();
        dev.seed(12);
        // (c_in, c_out, k, stride, h, w): the training shapes in small, an odd size, one and
        // two pixels, kernels 3 and 9 at stride 2, several bands of the weight gradient (one
        // row each at 800 columns; at 64x64, bands of 24 output rows and a short last one).
        for (c_in, c_out, k, stride, h, w) in [
            (3, 8, 5, 2, 16, 16),
            (8, 6, 5, 2, 9, 9),
            (5, 7, 3, 1, 7, 11),
            (4, 6, 5, 2, 12, 800),
            (3, 4, 5, 2, 1, 1),
            (3, 4, 5, 2, 2, 2),
            (4, 5, 3, 2, 11, 13),
            (3, 6, 9, 2, 20, 22),
            (8, 8, 5, 2, 64, 64),
        ] {
            let conv = crate::conv(c_in, c_out, k, stride, &dev);
            let g = crate::conv_op::Geometry { k, stride, pad: k / 2, pad_out: 0 };
            let params = || (conv.weight.val(), conv.bias.as_ref().expect("bias").val());
            for relu in [false, true] {
                let ours = |x: Tensor<4>| {
                    let (w, b) = params();
                    crate::conv_op::conv(&x, &w, &b, g, false, relu).expect("the training operation takes this shape")
                };
                let burns = |x| relu_if(conv.forward(x), relu);
                compare_gradients(ours, burns, params, [2, c_in, h, w], &format!("conv {c_in}->{c_out} k{k} s{stride} {h}x{w} relu {relu}"));
            }
        }
        // Transposed: enough output channels for the phases, three (the few-row tile, 200
        // columns: one WIDE_COLS step and the rest), and a few more (burn's forward).
        for (c_in, c_out, k, h, w) in [(8, 16, 5, 4, 6), (6, 3, 5, 7, 5), (6, 3, 5, 3, 100), (6, 8, 5, 7, 5), (4, 17, 5, 5, 300), (4, 17, 5, 1, 1), (5, 16, 3, 6, 9)] {
            let deconv = crate::deconv(c_in, c_out, k, &dev);
            let g = crate::conv_op::Geometry { k, stride: 2, pad: k / 2, pad_out: 1 };
            let params = || (deconv.weight.val(), deconv.bias.as_ref().expect("bias").val());
            for relu in [false, true] {
                let ours = |x: Tensor<4>| {
                    let (w, b) = params();
                    crate::conv_op::conv(&x, &w, &b, g, true, relu).expect("the training operation takes this shape")
                };
                let burns = |x| relu_if(deconv.forward(x), relu);
                compare_gradients(ours, burns, params, [2, c_in, h, w], &format!("deconv {c_in}->{c_out} k{k} {h}x{w} relu {relu}"));
            }
        }
    }

    #[test]
    fn autodiff_inputs_that_do_not_fit_take_burns_path() {
        let dev = Device::flex().autodiff();
        dev.seed(13);
        // 8 rows and 9 columns: the input gradient would need two different output paddings.
        // A 4x4 kernel with padding 2 on 8 rows: the adjoint's output padding 0 is too small.
        for (k, h, w) in [(5, 8, 9), (4, 8, 8)] {
            let conv = crate::conv(3, 4, k, 2, &dev);
            let x = Tensor::<4>::random([1, 3, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let g = crate::conv_op::Geometry { k, stride: 2, pad: k / 2, pad_out: 0 };
            assert!(crate::conv_op::conv(&x, &conv.weight.val(), &conv.bias.as_ref().unwrap().val(), g, false, false).is_none(), "k{k} {h}x{w}");
            let params = || (conv.weight.val(), conv.bias.as_ref().expect("bias").val());
            compare_gradients(|x| conv_forward(&conv, x), |x| conv.forward(x), params, [1, 3, h, w], &format!("fallback k{k} {h}x{w}"));
        }
    }

    /// Everything the training operations compute for a conv → GDN → transposed conv → ReLU stack,
    /// run in a rayon pool of `threads` threads.
    fn training_results(threads: usize, conv: &Conv2d, gdn: &crate::Gdn, deconv: &ConvTranspose2d, x: &Tensor<4>) -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        pool.install(|| {
            let x = x.clone().require_grad();
            let y = deconv_relu_forward(deconv, gdn.forward(conv_forward(conv, x.clone())));
            let grads = y.clone().sum().backward();
            let mut out = vec![values(y.inner()), values(x.grad(&grads).expect("dx"))];
            for w in [conv.weight.val(), deconv.weight.val()] {
                out.push(values(w.grad(&grads).expect("dw")));
            }
            for b in [&conv.bias, &deconv.bias] {
                out.push(values(b.as_ref().expect("bias").val().grad(&grads).expect("db")));
            }
            out.push(values(gdn.gamma.val().grad(&grads).expect("dgamma")));
            out
        })
    }

    #[test]
    fn training_operations_do_not_depend_on_the_number_of_threads() {
        let dev = Device::flex().autodiff();
        dev.seed(14);
        let conv = crate::conv(6, 16, 5, 2, &dev);
        let deconv = crate::deconv(16, 16, 5, &dev);
        let gdn = crate::Gdn::new(16, false, &dev);
        // Several bands and GDN blocks per image.
        let x = Tensor::<4>::random([2, 6, 40, 900], Distribution::Normal(0.0, 1.0), &dev);
        let one = training_results(1, &conv, &gdn, &deconv, &x);
        for threads in [2, 3] {
            let other = training_results(threads, &conv, &gdn, &deconv, &x);
            for (i, (a, b)) in one.iter().zip(&other).enumerate() {
                let first = a.iter().zip(b).position(|(p, q)| p.to_bits() != q.to_bits());
                assert!(first.is_none(), "result {i} (output, dx, dw, dw, db, db, dγ) differs with {threads} threads at {first:?}");
            }
        }
    }

    /// `got` holds `want`'s shape and values, bit for bit.
    fn same_bits(got: Tensor<4>, want: Tensor<4>, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        let (got, want) = (values(got), values(want));
        let first = got.iter().zip(&want).position(|(p, q)| p.to_bits() != q.to_bits());
        assert!(first.is_none(), "{what}: differs at {first:?}");
    }

    #[test]
    fn chains_into_padded_inputs_code_as_layer_by_layer() {
        let dev = Device::flex();
        dev.seed(15);
        let conv = |c_in, c_out, k, s| crate::conv(c_in, c_out, k, s, &dev);
        // g_a in small with GDN and with ReLU (odd sizes: phase lines with a free slot at the
        // end; 16 channels x 400 taps: the lane layout on AVX-512), rows wider than a band,
        // h_a's 3x3 stride-1 layer before stride 2, one layer alone.
        let g_a = || vec![conv(3, 16, 5, 2), conv(16, 16, 5, 2), conv(16, 16, 5, 2), conv(16, 24, 5, 2)];
        let cases = [
            (g_a(), true, [2, 3, 37, 53]),
            (g_a(), false, [2, 3, 37, 53]),
            (g_a(), true, [1, 3, 20, 900]),
            (vec![conv(24, 16, 3, 1), conv(16, 16, 5, 2), conv(16, 16, 5, 2)], false, [2, 24, 9, 11]),
            (vec![conv(4, 8, 5, 2)], false, [1, 4, 7, 7]),
        ];
        for (convs, gdn, dims) in cases {
            let gdns: Vec<crate::Gdn> = match gdn {
                true => convs.iter().map(|c| crate::Gdn::new(c.weight.val().dims()[0], false, &dev)).collect(),
                false => Vec::new(),
            };
            let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
            let want = chain_values(x.clone(), &convs, &gdns, conv_values);
            let got = conv_chain(x, &convs, &gdns);
            same_bits(got, want, &format!("{} layers, GDN {gdn}, {dims:?}", convs.len()));
        }
    }

    #[test]
    fn chains_read_views_as_their_values() {
        // The chain borrows a contiguous input's values; a view that is not contiguous (rows
        // and columns swapped) or starts past the first value (the second image of a batch)
        // must give what a fresh tensor of the same values gives.
        let dev = Device::flex();
        dev.seed(17);
        let convs = vec![crate::conv(3, 16, 5, 2, &dev), crate::conv(16, 16, 5, 2, &dev)];
        let batch = Tensor::<4>::random([2, 3, 21, 18], Distribution::Normal(0.0, 1.0), &dev);
        for view in [batch.clone().swap_dims(2, 3), batch.clone().slice([1..2])] {
            let fresh = Tensor::<4>::from_data(view.to_data(), &dev);
            same_bits(conv_chain(view, &convs, &[]), conv_chain(fresh, &convs, &[]), "a view of the input");
        }
    }

    #[test]
    fn transposed_chains_into_padded_inputs_decode_as_layer_by_layer() {
        let dev = Device::flex();
        dev.seed(16);
        let deconv = |c_in, c_out| crate::deconv(c_in, c_out, 5, &dev);
        // g_s in small with inverse GDN and with ReLU, odd sizes, rows wider than a band, the
        // last layer to 3 channels (the few-row tile on AVX-512, else the whole chain falls
        // back) and to 16.
        let g_s = |last| vec![deconv(24, 16), deconv(16, 16), deconv(16, 16), deconv(16, last)];
        let cases = [(g_s(3), true, [2, 24, 5, 7]), (g_s(3), false, [2, 24, 5, 7]), (g_s(16), false, [1, 24, 2, 60]), (vec![deconv(8, 16)], false, [1, 8, 3, 3])];
        for (deconvs, gdn, dims) in cases {
            let gdns: Vec<crate::Gdn> = match gdn {
                true => deconvs.iter().map(|d| crate::Gdn::new(d.weight.val().dims()[1], true, &dev)).collect(),
                false => Vec::new(),
            };
            let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
            let want = chain_values(x.clone(), &deconvs, &gdns, deconv_values);
            let got = deconv_chain(x, &deconvs, &gdns);
            same_bits(got, want, &format!("{} layers, GDN {gdn}, {dims:?}", deconvs.len()));
        }
    }
}

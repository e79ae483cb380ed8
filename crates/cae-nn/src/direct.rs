//! Convolution as a matrix product that reads the input planes directly (no im2col block, no
//! packing of it): the product's right-hand matrix has one row per tap (input channel, dy, dx),
//! and the NR pixels of one output row that a tap meets are a contiguous run of a zero-padded,
//! phase-split input line ([`Padded`]). A table of per-tap offsets into the padded planes,
//! built once per output row, replaces the im2col copy; the weights are packed once per call
//! ([`Packed`]), into tiles of MR output channels, or on AVX-512 for layers of many taps with
//! the output channels in the vector lanes. A micro-kernel (AVX2 + FMA: MR x NR; AVX-512: MR x
//! 2·NR, or 64 channels x 6 pixels in the lane layout) accumulates a tile over a block of taps
//! ([`product`]); the same tiles serve GDN's γ·x² ([`matmul`]) and, in f64, the integer
//! hyper-synthesis' exact 3x3 layer ([`conv3x3_exact`]); weight gradients use dot-product
//! tiles, or on AVX-512 tiles with the rows of dY (or X) in the lanes ([`weight_product`]). The
//! kernels (modules `avx2` and `avx512`) are the only unsafe code of this crate, each called
//! behind asserted bounds.
//!
//! Used by [`crate::fastconv`] and [`crate::gdn`] where the CPU has AVX2 and FMA (and the
//! environment does not set `CAEC_NO_DIRECT_CONV`); elsewhere the im2col / ndarray paths run.

use ndarray::ArrayView2;
use rayon::prelude::*;

/// Output channels per micro-tile.
pub(crate) const MR: usize = 6;
/// Output pixels per micro-tile (two AVX2 vectors): the codec's layers are multiples of 16
/// wide (768x512 images, 256x256 training crops), so no tile is partly wasted there.
pub(crate) const NR: usize = 16;
/// Taps per block: a block's input runs (KC x NR floats, 1–2 cache lines each) stay in L1
/// while every tile of output channels uses them.
const KC: usize = 128;
/// Taps per block in the lane layout: a block's weights (KCL x c_out floats, 16 KiB for 64
/// channels) and the pixels its taps read stay in L1 while the tiles sweep a row.
const KCL: usize = 64;
/// Output channels per lane tile (four 16-lane vectors), and pixels per lane tile: LANE_CHUNK /
/// 16 x LP = 24 accumulators.
const LANE_CHUNK: usize = 64;
const LP: usize = 6;
/// Fewest taps for the lane layout (see [`Packed::new`]).
const LANE_MIN_TAPS: usize = 256;

/// Whether convolutions take the direct product with its SIMD micro-kernel: where the CPU has
/// AVX2 and FMA, unless the environment sets `CAEC_NO_DIRECT_CONV` (to compare against the
/// im2col path, as `.ci/determinism.sh` does).
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| simd() && std::env::var_os("CAEC_NO_DIRECT_CONV").is_none())
}

/// Whether the tiles run on AVX-512 where the CPU has it (and AVX2 + FMA), unless the
/// environment sets `CAEC_NO_AVX512`: the forward tile (two 16-lane registers per output
/// channel, MR x 2·NR values), the lane tiles (see [`lanes_fit`]) and the weight-gradient
/// tiles (4 x 4 sums over 16 pixels, or the lane form). Each forward output is the same chain
/// of FMAs over the taps as on the AVX2 tile, so coding is identical bit for bit; weight
/// gradients are summed in another order (training differs in the last bits).
fn avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    {
        *AVX512.get_or_init(|| simd() && is_x86_feature_detected!("avx512f") && std::env::var_os("CAEC_NO_AVX512").is_none())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        *AVX512.get_or_init(|| false)
    }
}

/// Defines `fn $name(args)` whose body runs compiled for AVX-512 where the CPU has it
/// ([`avx512`]), else for the crate's baseline (SSE2): for the element-wise loops around the
/// tiles (bias and ReLU in a layer's writes, the phase split, ReLU's backward pass), which the
/// compiler vectorises only as wide as the target allows. The body is an `inline(always)`
/// function called from an AVX-512 twin (a closure would not be inlined there). Rust never
/// contracts a product and a sum into an FMA and these loops have no reductions, so both give
/// the same bits.
macro_rules! element_wise {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(unsafe_code)]
                unsafe fn twin($($arg: $ty),*) {
                    body($($arg),*)
                }
                // SAFETY: avx512() checked that the CPU has AVX-512F, AVX2 and FMA.
                #[allow(unsafe_code)]
                unsafe {
                    twin($($arg),*)
                };
                return;
            }
            body($($arg),*)
        }
    };
}

/// `v + add`, or its ReLU where `relu`: bias and activation fused into the writes of a
/// result. As burn-flex's `relu`: NaN stays NaN, negatives and −0 become +0.
#[inline(always)]
pub(crate) fn activate(v: f32, add: f32, relu: bool) -> f32 {
    let v = v + add;
    if !relu || v > 0.0 || v.is_nan() {
        v
    } else {
        0.0
    }
}

element_wise! {
    /// `dst[i] = activate(src[i], add, relu)` over the shorter of the two.
    pub(crate) fn write_activated(dst: &mut [f32], src: &[f32], add: f32, relu: bool) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = activate(v, add, relu);
        }
    }
}

element_wise! {
    /// [`Lines::put`] of `activate(v, add, relu)` of a result row.
    pub(crate) fn put_activated(lines: Lines, dst: &mut [f32], row: &[f32], add: f32, relu: bool) {
        lines.put(dst, row, |v| activate(v, add, relu));
    }
}

/// One phase of a transposed convolution's output row: `line[px + s·i] = activate(src[i],
/// add, relu)` for every i with both sides in range. For s = 2 on AVX-512, 16 values per step
/// spread over 32 columns and written with a mask ([`avx512::put_phase2`]), leaving the other
/// phase's columns as they are; the same values as one by one.
pub(crate) fn put_phase(line: &mut [f32], px: usize, s: usize, src: &[f32], add: f32, relu: bool) {
    assert!(s > 0, "a stride of 0");
    let n = src.len().min(line.len().saturating_sub(px).div_ceil(s));
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if s == 2 && avx512() {
        while i + 16 <= n {
            // SAFETY: AVX-512F is present; the kernel reads src[i .. i + 16] (i + 16 ≤ n ≤
            // src.len()) and writes only line[px + 2·(i + j)] for j < 16, below line.len()
            // since px + 2·(n − 1) < line.len() by the choice of n.
            #[allow(unsafe_code)]
            unsafe {
                avx512::put_phase2(line.as_mut_ptr().add(2 * i), px, src.as_ptr().add(i), add, relu);
            }
            i += 16;
        }
    }
    for (d, &v) in line.iter_mut().skip(px + s * i).step_by(s).zip(&src[i..n]) {
        *d = activate(v, add, relu);
    }
}

element_wise! {
    /// [`Lines::put`] of an input row as it is.
    fn put_copy(lines: Lines, dst: &mut [f32], row: &[f32]) {
        lines.put(dst, row, |v| v);
    }
}

element_wise! {
    /// ReLU's backward pass: `out[i] = 0` where the output `y[i] ≤ 0`, else `dy[i]` (a NaN
    /// output passes the gradient, as burn's `relu_backward`).
    pub(crate) fn relu_grad(out: &mut [f32], dy: &[f32], y: &[f32]) {
        for ((o, &d), &y) in out.iter_mut().zip(dy).zip(y) {
            *o = if y <= 0.0 { 0.0 } else { d };
        }
    }
}

fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Weights `[c_out, K]` packed per block of taps, in one of two layouts.
///
/// Tiles (the AVX2 and portable micro-kernels, f64; blocks of KC taps): within a block, per
/// tile of MR output channels: the block from tap `k0` (`kc` taps) starts at `k0·tiles·MR`, its
/// tile `t` at `+ t·kc·MR`, and holds `w[t·MR + r, k0 + i]` at `+ i·MR + r` (zero past `c_out`),
/// so one block's weights for all tiles are contiguous.
///
/// Lanes (AVX-512, `c_out` a multiple of 16; blocks of KCL taps): the output channels in the
/// vector lanes ([`accumulate_lanes`]): the block from `k0` starts at `start + k0·c_out`, its
/// chunk of channels from `co0` (LANE_CHUNK wide, or what is left, `cw`) at `+ kc·co0`, and
/// holds `w[co0 + j, k0 + i]` at `+ i·cw + j`; `start` puts the first weight on a 64-byte
/// boundary, so every vector of 16 weights is one aligned cache line.
pub(crate) struct Packed<T = f32> {
    data: Vec<T>,
    start: usize,
    k: usize,
    c_out: usize,
    lanes: bool,
}

/// Fills `body` (`c_out · k` values, `c_out` rounded up to `rows`) block by block of `kc_max`
/// taps, each block's region (`kc · rows` values) by `fill(block, k0, kc)`; the blocks in
/// parallel where there are many weights (packing runs at every call, in training twice per
/// layer and step, on the calling thread while the pool waits).
fn pack_blocks<T: Copy + Send>(body: &mut [T], rows: usize, k: usize, kc_max: usize, fill: impl Fn(&mut [T], usize, usize) + Sync) {
    let run = |(b, block): (usize, &mut [T])| {
        let k0 = b * kc_max;
        fill(block, k0, kc_max.min(k - k0));
    };
    if body.len() < 1 << 14 {
        body.chunks_mut(kc_max * rows).enumerate().for_each(run);
    } else {
        body.par_chunks_mut(kc_max * rows).enumerate().for_each(run);
    }
}

impl<T: Copy + Default + Send + Sync> Packed<T> {
    /// The tile layout.
    pub(crate) fn tiled(w: ArrayView2<'_, T>) -> Self {
        let (c_out, k) = w.dim();
        let tiles = c_out.div_ceil(MR);
        let mut data = vec![T::default(); tiles * k * MR];
        let w = w.as_standard_layout();
        let w = w.as_slice().expect("standard layout");
        // Within a block: tile by tile, tap by tap.
        pack_blocks(&mut data, tiles * MR, k, KC, |block, k0, kc| {
            let mut at = 0;
            for co0 in (0..tiles * MR).step_by(MR) {
                for i in k0..k0 + kc {
                    for (r, d) in block[at..at + MR].iter_mut().enumerate().take(c_out.saturating_sub(co0)) {
                        *d = w[(co0 + r) * k + i];
                    }
                    at += MR;
                }
            }
        });
        Packed { data, start: 0, k, c_out, lanes: false }
    }

    fn tiles(&self) -> usize {
        self.c_out.div_ceil(MR)
    }

    /// Rows of a result: `c_out`, rounded up to whole tiles in the tile layout.
    fn rows(&self) -> usize {
        if self.lanes {
            self.c_out
        } else {
            self.tiles() * MR
        }
    }

    /// Taps per block: KCL in the lane layout, KC in the tile layout.
    fn kc(&self) -> usize {
        if self.lanes {
            KCL
        } else {
            KC
        }
    }

    /// The weights of the block of taps from `k0` (`rows()` weights per tap in either layout).
    fn block(&self, k0: usize) -> &[T] {
        let kc = self.kc().min(self.k - k0);
        &self.data[self.start + k0 * self.rows()..self.start + (k0 + kc) * self.rows()]
    }
}

impl Packed<f32> {
    /// The lane layout where [`accumulate_lanes`] runs (AVX-512, `c_out` a non-zero multiple of
    /// 16) and there are at least LANE_MIN_TAPS taps, else the tile layout. With few taps the
    /// result's turn from pixel-major to channel rows (one scalar move per value, against
    /// K / 16 FMAs) costs more than the lanes save: GDN's γ · x² (64 taps) took 32 ms at the
    /// first layer of a 768x512 image against 20 ms on the tiles.
    pub(crate) fn new(w: ArrayView2<'_, f32>) -> Self {
        Self::with_lanes(w, lanes_fit(w.nrows()) && w.ncols() >= LANE_MIN_TAPS)
    }

    fn with_lanes(w: ArrayView2<'_, f32>, lanes: bool) -> Self {
        if !lanes {
            return Self::tiled(w);
        }
        let (c_out, k) = w.dim();
        assert!(lanes_fit(c_out), "lane layout without AVX-512 or for {c_out} channels");
        let mut data = vec![0f32; c_out * k + 16];
        let start = line_start(&data);
        let w = w.as_standard_layout();
        let w = w.as_slice().expect("standard layout");
        // Within a block: chunk of channels by chunk, tap by tap.
        pack_blocks(&mut data[start..start + c_out * k], c_out, k, KCL, |block, k0, kc| {
            let mut at = 0;
            for co0 in (0..c_out).step_by(LANE_CHUNK) {
                let cw = LANE_CHUNK.min(c_out - co0);
                for i in k0..k0 + kc {
                    for (j, d) in block[at..at + cw].iter_mut().enumerate() {
                        *d = w[(co0 + j) * k + i];
                    }
                    at += cw;
                }
            }
        });
        Packed { data, start, k, c_out, lanes: true }
    }

    /// `out[co·ld + x]` (co < [`Packed::rows`], x < n; columns from n to `ld` unspecified) = Σ
    /// over taps i of `w[co, i] · b[offsets[i] + x]`. `ld` must be `n` rounded up to NR, and
    /// each `b[offsets[i]..]` hold `ld` values in the tile layout, `n` in the lane layout.
    fn apply(&self, offsets: &[usize], b: &[f32], n: usize, ld: usize, out: &mut [f32], lanes: &mut Vec<f32>) {
        let k = self.k;
        assert!(offsets.len() == k && ld == n.div_ceil(NR) * NR && out.len() >= self.rows() * ld, "packed product shapes");
        if k == 0 {
            // A phase of a transposed convolution that meets no tap (kernel smaller than the stride).
            out.fill(0.0);
            return;
        }
        if self.lanes {
            lanes.resize(n * self.c_out, 0.0);
            for k0 in (0..k).step_by(KCL) {
                accumulate_lanes(self.block(k0), &offsets[k0..(k0 + KCL).min(k)], b, lanes, n, self.c_out, k0 == 0);
            }
            turn(&lanes[..n * self.c_out], n, self.c_out, out, ld);
            return;
        }
        for k0 in (0..k).step_by(KC) {
            let offsets = &offsets[k0..(k0 + KC).min(k)];
            for (x0, cols) in column_steps(ld, self.c_out <= FEW) {
                accumulate(self.block(k0), offsets, &b[x0..], &mut out[x0..], ld, cols, k0 == 0);
            }
        }
    }
}

/// Input planes `[c, h, w]` split by column phase modulo `stride` (as im2col's planes are) with
/// every phase line zero-padded: line (c, iy, phase) holds its `⌈w / stride⌉` values at
/// `left ..`, zeros around them, `width` floats in all; one more line of zeros at the end
/// stands for the rows outside the input. Sized so that every run a tap reads for output
/// columns below `⌈w_out / NR⌉·NR` lies inside one line (the tiles read NR or 2·NR columns).
pub(crate) struct Padded<T = f32> {
    data: Vec<T>,
    c: usize,
    h: usize,
    stride: usize,
    left: usize,
    width: usize,
}

/// Where a [`Padded`] keeps one input row: its `stride` phase lines, `width` floats each, the
/// row's values from `left` on. Copied out of the planes so that bands of rows can be written
/// in parallel ([`Padded::bands_mut`]).
#[derive(Clone, Copy)]
pub(crate) struct Lines {
    stride: usize,
    left: usize,
    width: usize,
}

impl Lines {
    /// Floats per input row (all its phase lines).
    pub(crate) fn len(self) -> usize {
        self.stride * self.width
    }

    /// Where a row's values start in its (first) phase line.
    pub(crate) fn left(self) -> usize {
        self.left
    }

    /// Writes `f` of the values of one input row, column by column, into its phase lines
    /// `lines` ([`Lines::len`] floats); margins are left as they are (zero).
    #[inline(always)]
    pub(crate) fn put<T: Copy>(self, lines: &mut [T], row: &[T], f: impl Fn(T) -> T) {
        let (left, width, w) = (self.left, self.width, row.len());
        match self.stride {
            1 => lines[left..left + w].iter_mut().zip(row).for_each(|(o, &v)| *o = f(v)),
            // Both phases in one pass over pairs (which vectorises; `step_by` did not).
            2 => {
                let (even, odd) = lines.split_at_mut(width);
                let pairs = row.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    even[left + w / 2] = f(*last);
                }
                for ((e, o), pair) in even[left..].iter_mut().zip(&mut odd[left..]).zip(pairs) {
                    *e = f(pair[0]);
                    *o = f(pair[1]);
                }
            }
            s => {
                for (phase, line) in lines.chunks_mut(width).enumerate() {
                    for (o, &v) in line[left..].iter_mut().zip(row.iter().skip(phase).step_by(s)) {
                        *o = f(v);
                    }
                }
            }
        }
    }
}

/// What [`Padded`] holds: f32 (the network's values) or f64 (the exact hyper-synthesis').
pub(crate) trait Element: Copy + Default + Send + Sync {
    /// [`Lines::put`] of an input row as it is.
    fn put_row(lines: Lines, dst: &mut [Self], row: &[Self]);
}

impl Element for f32 {
    fn put_row(lines: Lines, dst: &mut [f32], row: &[f32]) {
        put_copy(lines, dst, row);
    }
}

impl Element for f64 {
    fn put_row(lines: Lines, dst: &mut [f64], row: &[f64]) {
        lines.put(dst, row, |v| v);
    }
}

impl<T: Element> Padded<T> {
    /// `dx`: the column offsets of the taps (any phase); `w_out`: the widest output row.
    pub(crate) fn new(x: &[T], c: usize, h: usize, w: usize, stride: usize, dx: &[isize], w_out: usize) -> Self {
        assert_eq!(x.len(), c * h * w, "input planes");
        let mut padded = Self::zeroed(c, h, w, stride, dx, w_out);
        let lines = padded.lines();
        padded.data.par_chunks_mut(h * lines.len()).zip(x.par_chunks(h * w)).for_each(|(out, plane)| {
            for (out, row) in out.chunks_mut(lines.len()).zip(plane.chunks(w)) {
                T::put_row(lines, out, row);
            }
        });
        padded
    }

    /// Zeros in the layout of [`Padded::new`]: for a layer that writes its output straight
    /// into its successor's input ([`Padded::bands_mut`]).
    pub(crate) fn zeroed(c: usize, h: usize, w: usize, stride: usize, dx: &[isize], w_out: usize) -> Self {
        let s = stride as isize;
        let wp = w.div_ceil(stride);
        let shift_min = dx.iter().map(|&d| d.div_euclid(s)).min().unwrap_or(0);
        let shift_max = dx.iter().map(|&d| d.div_euclid(s)).max().unwrap_or(0);
        let left = (-shift_min).max(0) as usize;
        let runs_end = w_out.div_ceil(NR) * NR;
        let width = left + wp.max((shift_max + runs_end as isize).max(0) as usize);
        Padded { data: crate::zeroed((c * h * stride + 1) * width), c, h, stride, left, width }
    }

    /// How one input row is laid out.
    pub(crate) fn lines(&self) -> Lines {
        Lines { stride: self.stride, left: self.left, width: self.width }
    }

    /// The input rows in bands of `rows` (the last may be shorter), for writing in parallel:
    /// per band its first row and, channel by channel, the band's rows ([`Lines::len`] floats
    /// each).
    pub(crate) fn bands_mut(&mut self, rows: usize) -> Vec<(usize, Vec<&mut [T]>)> {
        let (per_row, h) = (self.lines().len(), self.h);
        let rows = rows.max(1);
        let mut bands: Vec<(usize, Vec<&mut [T]>)> = (0..h.div_ceil(rows)).map(|i| (i * rows, Vec::with_capacity(self.c))).collect();
        for plane in self.data[..self.c * h * per_row].chunks_mut((h * per_row).max(1)) {
            for (band, part) in bands.iter_mut().zip(plane.chunks_mut(rows * per_row)) {
                band.1.push(part);
            }
        }
        bands
    }

    /// The planes without the line of zeros, as NCHW planes (`[1, c, h·stride, width]`) whose
    /// margins are zero: for operations in place that keep zero at zero (GDN, ReLU).
    pub(crate) fn planes_mut(&mut self) -> (&mut [T], [usize; 4]) {
        let dims = [1, self.c, self.h * self.stride, self.width];
        (&mut self.data[..self.c * self.h * self.stride * self.width], dims)
    }

    /// The start of the line of zeros (the last line, `width` ≥ every run's length).
    fn zero_line(&self) -> usize {
        self.c * self.h * self.stride * self.width
    }

    /// Where output column 0 of tap (ci, iy, dx) reads: the zero line when row `iy` is outside.
    fn offset(&self, ci: usize, iy: isize, dx: isize) -> usize {
        let s = self.stride as isize;
        let column = (self.left as isize + dx.div_euclid(s)) as usize;
        if iy < 0 || iy >= self.h as isize {
            return self.zero_line() + column;
        }
        ((ci * self.h + iy as usize) * self.stride + dx.rem_euclid(s) as usize) * self.width + column
    }

    /// The offset table of output row `oy`: where output column 0 of every tap reads, taps in
    /// the weights' column order (input channel, then `dy`, then `dx`); `out` holds one entry
    /// per tap.
    fn offsets(&self, oy: usize, dy: &[isize], dx: &[isize], out: &mut [usize]) {
        assert_eq!(out.len(), self.c * dy.len() * dx.len(), "one offset per tap");
        let per = dy.len() * dx.len();
        if per == 0 || self.c == 0 {
            return;
        }
        // The first channel's taps through `offset` (divisions by the stride), the others by
        // shifting them one plane per channel (rows outside the input read the zero line in
        // every channel).
        let (first, rest) = out.split_at_mut(per);
        for (&ty, row) in dy.iter().zip(first.chunks_exact_mut(dx.len())) {
            let iy = (oy * self.stride) as isize + ty;
            for (&tx, o) in dx.iter().zip(row) {
                *o = self.offset(0, iy, tx);
            }
        }
        let plane = self.h * self.stride * self.width;
        for (ci, taps) in rest.chunks_exact_mut(per).enumerate() {
            let shift = (ci + 1) * plane;
            for ((&ty, row), from) in dy.iter().zip(taps.chunks_exact_mut(dx.len())).zip(first.chunks_exact(dx.len())) {
                let iy = (oy * self.stride) as isize + ty;
                let inside = iy >= 0 && iy < self.h as isize;
                for (o, &f) in row.iter_mut().zip(from) {
                    *o = if inside { f + shift } else { f };
                }
            }
        }
    }

    /// The offset tables of the output rows `rows` (a weight-gradient band), `k_pad` entries a
    /// row: the row's taps, then the start of the zero line up to `k_pad`. Checked: every run
    /// of `run` values from an offset lies inside the planes.
    fn band_offsets(&self, rows: std::ops::Range<usize>, dy: &[isize], dx: &[isize], k_pad: usize, run: usize, out: &mut Vec<usize>) {
        let k = self.c * dy.len() * dx.len();
        assert!(k <= k_pad, "band offsets: taps past the row");
        out.clear();
        out.resize(rows.len() * k_pad, self.zero_line());
        for (r, y) in rows.enumerate() {
            self.offsets(y, dy, dx, &mut out[r * k_pad..r * k_pad + k]);
        }
        let last = out.iter().copied().max().unwrap_or(0);
        assert!(last + run <= self.data.len(), "weight product: a run outside the input");
    }
}

/// Reused buffers of one worker.
#[derive(Default)]
pub(crate) struct Buffers {
    offsets: Vec<usize>,
    row: Vec<f32>,
    /// A row of results pixel-major (lane layout).
    lanes: Vec<f32>,
}

/// For output rows `rows`: `emit(r, values, stride)` once per row, with `values[co·stride + x]`
/// for output channel `co`, row `rows.start + r`, column `x < w_out` = Σ over taps (ci, dy, dx),
/// in `w`'s column order (ci, then dy, then dx), of `w[co, tap] · input[ci, (rows.start +
/// r)·stride + dy, x·stride + dx]` (zero outside the input): what im2col + GEMM compute.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(input: &Padded, w: &Packed, dy: &[isize], dx: &[isize], rows: std::ops::Range<usize>, w_out: usize, buf: &mut Buffers, mut emit: impl FnMut(usize, &[f32], usize)) {
    assert_eq!(w.k, input.c * dy.len() * dx.len(), "direct product: taps and weights");
    let ld = w_out.div_ceil(NR) * NR;
    buf.offsets.resize(w.k, 0);
    buf.row.resize(w.rows() * ld, 0.0);
    for (r, oy) in rows.enumerate() {
        input.offsets(oy, dy, dx, &mut buf.offsets);
        w.apply(&buf.offsets, &input.data, w_out, ld, &mut buf.row, &mut buf.lanes);
        emit(r, &buf.row, ld);
    }
}

/// The plain matrix product `w · b` for `b` = `[K, ldb]` (row j of `b` at `j·ldb`), columns
/// `x < n`: returns the result rows (`[Packed::rows, ld]`: c_out, rounded up to MR in the tile
/// layout; ld = n rounded up to NR; rows ≥ c_out and columns ≥ n unspecified) and `ld`. `ldb`
/// must be at least `ld`: the micro-kernels read whole runs of NR, 2·NR or WIDE_COLS below `ld`
/// (what lies past column n only reaches columns past n). GDN's normaliser γ · x² and its
/// backward products.
pub(crate) fn matmul<'a>(w: &Packed, b: &[f32], ldb: usize, n: usize, buf: &'a mut Buffers) -> (&'a [f32], usize) {
    let (k, ld) = (w.k, n.div_ceil(NR) * NR);
    assert!(ldb >= ld && b.len() >= k * ldb, "matmul: rows of b shorter than the runs read");
    buf.offsets.clear();
    buf.offsets.extend((0..k).map(|j| j * ldb));
    buf.row.resize(w.rows() * ld, 0.0);
    w.apply(&buf.offsets, b, n, ld, &mut buf.row, &mut buf.lanes);
    (&buf.row[..w.rows() * ld], ld)
}

/// Output channels up to which the AVX-512 tile computes FEW rows over WIDE_COLS columns
/// instead of MR rows (g_s's last layer: 3 channels, which left half of every 6-row tile idle).
pub(crate) const FEW: usize = 3;
const WIDE_COLS: usize = 8 * NR;

/// The column steps of a result row `ld` wide (a multiple of NR): `(x0, cols)` with cols = 2·NR
/// where the AVX-512 tile takes two vectors per row and two fit, else NR; with `few` rows
/// (AVX-512 only), WIDE_COLS first where they fit.
fn column_steps(ld: usize, few: bool) -> impl Iterator<Item = (usize, usize)> {
    let wide = avx512();
    let few = few && wide;
    let mut x0 = 0;
    std::iter::from_fn(move || {
        let cols = if few && x0 + WIDE_COLS <= ld {
            WIDE_COLS
        } else if wide && x0 + 2 * NR <= ld {
            2 * NR
        } else {
            NR
        };
        let step = (x0 < ld).then_some((x0, cols));
        x0 += cols;
        step
    })
}

/// For every tile t (`a` holds `tiles` blocks of kc·MR weights, kc = `offsets.len()`): the MR
/// x `cols` values `c[(t·MR + r)·ld + j]` (r < MR, j < cols; cols = NR or 2·NR) become
/// (`first`: 0, else themselves) + Σ_i a[t·kc·MR + i·MR + r] · b[offsets[i] + j]; with cols =
/// WIDE_COLS (one tile, AVX-512), the first FEW rows only. Checked: every value read or
/// written lies in `a`, `b` and `c`.
#[allow(clippy::too_many_arguments)]
fn accumulate(a: &[f32], offsets: &[usize], b: &[f32], c: &mut [f32], ld: usize, cols: usize, first: bool) {
    accumulate_on(avx512(), a, offsets, b, c, ld, cols, first)
}

/// [`accumulate`] on the AVX-512 tile (`wide`, which [`avx512`] must allow) or the AVX2 one.
#[allow(clippy::too_many_arguments)]
fn accumulate_on(wide: bool, a: &[f32], offsets: &[usize], b: &[f32], c: &mut [f32], ld: usize, cols: usize, first: bool) {
    assert!(!wide || avx512(), "AVX-512 tile without AVX-512");
    let kc = offsets.len();
    let tiles = if kc == 0 { 0 } else { a.len() / (kc * MR) };
    let few = cols == WIDE_COLS && wide && tiles == 1;
    assert!(a.len() == tiles * kc * MR && (cols == NR || cols == 2 * NR || few) && ld >= cols, "micro-kernel shapes");
    assert!(tiles == 0 || (tiles * MR - 1) * ld + cols <= c.len(), "micro-kernel: a tile outside the result");
    let last = offsets.iter().copied().max().unwrap_or(0);
    assert!(kc == 0 || last + cols <= b.len(), "micro-kernel: a run outside the input");
    #[cfg(target_arch = "x86_64")]
    if simd() {
        for (t, a) in a.chunks_exact(kc.max(1) * MR).enumerate() {
            // SAFETY: AVX2 and FMA (and AVX-512F where `wide`) are present (checked just
            // above); every read is inside `a` (kc·MR floats per tile), `b` (offsets[i] + cols
            // ≤ b.len(), checked) and every read or write of the tile (cols wide) inside `c`
            // (checked for the last tile).
            #[allow(unsafe_code)]
            unsafe {
                let (a, offsets, b, c) = (a.as_ptr(), offsets.as_ptr(), b.as_ptr(), c.as_mut_ptr().add(t * MR * ld));
                match (wide, cols == NR) {
                    _ if few => avx512::kernel::<FEW, { WIDE_COLS / NR }>(kc, a, offsets, b, c, ld, first),
                    (true, true) => avx512::kernel::<MR, 1>(kc, a, offsets, b, c, ld, first),
                    (true, false) => avx512::kernel::<MR, 2>(kc, a, offsets, b, c, ld, first),
                    (false, _) => {
                        for x in (0..cols).step_by(NR) {
                            avx2::kernel(kc, a, offsets, b.add(x), c.add(x), ld, first);
                        }
                    }
                }
            }
        }
        return;
    }
    accumulate_portable(a, offsets, b, c, ld, cols, first);
}

/// The index of `buf`'s first float on a 64-byte boundary (0–15).
fn line_start(buf: &[f32]) -> usize {
    (16 - (buf.as_ptr() as usize / 4) % 16) % 16
}

/// The first `len` floats of `buf` from its first 64-byte boundary (`buf` must hold `len` + 15).
pub(crate) fn aligned(buf: &mut [f32], len: usize) -> &mut [f32] {
    let start = line_start(buf);
    &mut buf[start..start + len]
}

/// Pixel-major lane rows to channel rows: `out[co·ld + x] = lanes[x·c_out + co]` (x < n,
/// co < c_out). On AVX-512, blocks of 16 x 16 turn in registers ([`avx512::turn16`]); the
/// other values one by one.
pub(crate) fn turn(lanes: &[f32], n: usize, c_out: usize, out: &mut [f32], ld: usize) {
    assert!(lanes.len() == n * c_out && n <= ld && (c_out == 0 || (c_out - 1) * ld + n <= out.len()), "turn: shapes");
    let mut x0 = 0;
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        while x0 + 16 <= n {
            for co0 in (0..c_out - c_out % 16).step_by(16) {
                // SAFETY: AVX-512F is present; the kernel reads 16 rows of 16 values from
                // `lanes[(x0 + i)·c_out + co0 ..]` (x0 + 16 ≤ n, co0 + 16 ≤ c_out) and writes 16
                // rows of 16 values to `out[(co0 + j)·ld + x0 ..]` (co0 + j < c_out, x0 + 16 ≤ n
                // ≤ ld): inside both, checked above.
                #[allow(unsafe_code)]
                unsafe {
                    avx512::turn16(lanes.as_ptr().add(x0 * c_out + co0), c_out, out.as_mut_ptr().add(co0 * ld + x0), ld);
                }
            }
            for co in c_out - c_out % 16..c_out {
                for x in x0..x0 + 16 {
                    out[co * ld + x] = lanes[x * c_out + co];
                }
            }
            x0 += 16;
        }
    }
    for (x, values) in lanes.chunks_exact(c_out.max(1)).enumerate().skip(x0) {
        for (co, &v) in values.iter().enumerate() {
            out[co * ld + x] = v;
        }
    }
}

/// Whether the lane layout serves `c_out` output channels: AVX-512 and a non-zero multiple of 16.
/// The environment can turn the lane layout off (`CAEC_NO_LANES`), to compare: coding then
/// gives the same bits; training's weight gradients go back to the dot tiles (another order of
/// the sums).
fn lanes_fit(c_out: usize) -> bool {
    static LANES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LANES.get_or_init(|| avx512() && std::env::var_os("CAEC_NO_LANES").is_none()) && c_out > 0 && c_out.is_multiple_of(16)
}

/// The lane tiles: for every pixel x < n and output channel co < c_out, `c[x·c_out + co]` becomes
/// (`first`: 0, else itself) + Σ_i a[i·cw + co − co0] · b[offsets[i] + x] (per chunk of channels
/// from co0, cw wide: `a` is one block of the lane layout, kc = `offsets.len()` taps). Each sum
/// is the same chain of FMAs over the taps as on the tile kernels, so the results are identical
/// bit for bit. Checked: every value read or written lies in `a`, `b` and `c`.
fn accumulate_lanes(a: &[f32], offsets: &[usize], b: &[f32], c: &mut [f32], n: usize, c_out: usize, first: bool) {
    let kc = offsets.len();
    assert!(lanes_fit(c_out) && a.len() == kc * c_out && c.len() >= n * c_out, "lane tile shapes");
    let last = offsets.iter().copied().max().unwrap_or(0);
    assert!(kc == 0 || last + n <= b.len(), "lane tile: a run outside the input");
    #[cfg(target_arch = "x86_64")]
    for x0 in (0..n).step_by(LP) {
        let q = LP.min(n - x0);
        for co0 in (0..c_out).step_by(LANE_CHUNK) {
            let v = LANE_CHUNK.min(c_out - co0) / 16;
            // SAFETY: AVX-512F is present (lanes_fit); the chunk's weights `a[kc·co0 ..][..kc·16·v]`
            // lie in `a` (kc·c_out floats), every pixel read `b[offsets[i] + x0 + p]` (p < q ≤ n −
            // x0) below `last + n ≤ b.len()`, and every value of the tile `c[(x0 + p)·c_out + co0
            // ..][..16·v]` below `n·c_out ≤ c.len()`: all checked above.
            #[allow(unsafe_code)]
            unsafe {
                avx512::lanes(v, q, kc, a.as_ptr().add(kc * co0), offsets.as_ptr(), b.as_ptr().add(x0), c.as_mut_ptr().add(x0 * c_out + co0), c_out, first);
            }
        }
    }
}

/// Rows of `small` per weight-gradient tile (MA: 3 on AVX2 and the portable loop, MA5 = 4 on
/// AVX-512) and taps per tile (NK); pixels go by 8 (AVX2) or 16 (AVX-512).
const MA: usize = 3;
const MA5: usize = 4;
const NK: usize = 4;

/// The sums of one weight-gradient tile (the AVX-512 shape; a 3-row tile uses the first rows).
type Sums = [[f32; NK]; MA5];

/// A weight-gradient tile's shape: `(rows of small, pixels per step)`.
fn dot_shape(wide: bool) -> (usize, usize) {
    const { assert!(NR % 16 == 0) };
    if wide {
        (MA5, 16)
    } else {
        (MA, 8)
    }
}

/// The weight-gradient product of one band: `out[a·K + tap]` (K taps in `dy`/`dx` order per
/// input channel, as [`product`]) = Σ over rows `rows` of the `small` grid (`[c_a, hs, ws]`,
/// one image) and its columns x of `small[a, y, x] · input[ci, y·stride + dy, x·stride + dx]`
/// (zero outside the input). `input` must be padded for an output `ws` wide.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_product(input: &Padded, small: &[f32], c_a: usize, hs: usize, ws: usize, dy: &[isize], dx: &[isize], rows: std::ops::Range<usize>, buf: &mut Buffers, out: &mut [f32]) {
    let k = input.c * dy.len() * dx.len();
    assert_eq!(small.len(), c_a * hs * ws, "weight product: small planes");
    assert_eq!(out.len(), c_a * k, "weight product: result");
    if lanes_fit(c_a) {
        return weight_product_lanes(input, small, c_a, hs, ws, dy, dx, rows, buf, out);
    }
    weight_product_dots(input, small, c_a, hs, ws, dy, dx, rows, buf, out)
}

/// [`weight_product`] on the dot-product tiles ([`dot_tile`]).
#[allow(clippy::too_many_arguments)]
fn weight_product_dots(input: &Padded, small: &[f32], c_a: usize, hs: usize, ws: usize, dy: &[isize], dx: &[isize], rows: std::ops::Range<usize>, buf: &mut Buffers, out: &mut [f32]) {
    let k = input.c * dy.len() * dx.len();
    let wide = avx512();
    let (ma, step) = dot_shape(wide);
    let (n, wpad) = (rows.len(), ws.div_ceil(step) * step);
    let (a_pad, k_pad) = (c_a.div_ceil(ma) * ma, k.div_ceil(NK) * NK);
    // The band of `small`, rows padded to a multiple of the pixel step and channels to one of
    // `ma` with zeros.
    buf.row.clear();
    buf.row.resize(a_pad * n * wpad, 0.0);
    for a in 0..c_a {
        for (r, y) in rows.clone().enumerate() {
            buf.row[(a * n + r) * wpad..][..ws].copy_from_slice(&small[(a * hs + y) * ws..][..ws]);
        }
    }
    // Offsets per row, taps padded to a multiple of NK with the start of the zero line. Every
    // run is inside: `input` is padded for outputs `ws` wide, so each line holds `left +
    // ⌈ws / NR⌉·NR` ≥ wpad values from a tap's start (NR a multiple of both pixel steps).
    input.band_offsets(rows, dy, dx, k_pad, wpad, &mut buf.offsets);
    let mut sums = [[0f32; NK]; MA5];
    for k0 in (0..k_pad).step_by(NK) {
        for a0 in (0..a_pad).step_by(ma) {
            let block = &buf.row[a0 * n * wpad..(a0 + ma) * n * wpad];
            dot_tile(wide, block, n, wpad, &buf.offsets, k_pad, k0, &input.data, &mut sums);
            for (i, row) in sums.iter().take(ma).enumerate().filter(|(i, _)| a0 + i < c_a) {
                for (j, &v) in row.iter().enumerate().filter(|(j, _)| k0 + j < k) {
                    out[(a0 + i) * k + k0 + j] += v;
                }
            }
        }
    }
}

/// [`weight_product`] with the rows of `small` in the vector lanes (AVX-512, `c_a` a multiple
/// of 16): the band of `small` turned pixel-major once, then per group of LP taps and chunk of
/// up to LANE_CHUNK rows one tile of LP x (chunk / 16) vector sums over every pixel of the band
/// ([`avx512::weight_lanes`]: per pixel, the chunk's values in aligned loads and one broadcast
/// value per tap; no line-splitting runs, no horizontal sums).
#[allow(clippy::too_many_arguments)]
fn weight_product_lanes(input: &Padded, small: &[f32], c_a: usize, hs: usize, ws: usize, dy: &[isize], dx: &[isize], rows: std::ops::Range<usize>, buf: &mut Buffers, out: &mut [f32]) {
    let k = input.c * dy.len() * dx.len();
    let (n, k_pad) = (rows.len(), k.div_ceil(LP) * LP);
    assert!(lanes_fit(c_a) && small.len() == c_a * hs * ws && out.len() == c_a * k && rows.end <= hs, "weight product (lanes): shapes");
    if n == 0 || ws == 0 {
        return;
    }
    // The band of `small`, pixel-major: value (a, row r, column x) at (r·ws + x)·c_a + a.
    buf.row.clear();
    buf.row.resize(n * ws * c_a, 0.0);
    // By blocks of 16 columns, so that the 16 pixel-major rows being written stay in L1.
    for (r, y) in rows.clone().enumerate() {
        for x0 in (0..ws).step_by(16) {
            let xs = x0..(x0 + 16).min(ws);
            let block = &mut buf.row[(r * ws + x0) * c_a..(r * ws + xs.end) * c_a];
            for a in 0..c_a {
                for (pixel, &v) in block.chunks_exact_mut(c_a).zip(&small[(a * hs + y) * ws + x0..(a * hs + y) * ws + xs.end]) {
                    pixel[a] = v;
                }
            }
        }
    }
    // Offsets per row, taps padded to a multiple of LP.
    input.band_offsets(rows, dy, dx, k_pad, ws, &mut buf.offsets);
    let mut sums = [0f32; LP * LANE_CHUNK];
    #[cfg(target_arch = "x86_64")]
    for t0 in (0..k_pad).step_by(LP) {
        for co0 in (0..c_a).step_by(LANE_CHUNK) {
            let v = LANE_CHUNK.min(c_a - co0) / 16;
            // SAFETY: AVX-512F is present (lanes_fit); the tile reads `buf.row[(r·ws + x)·c_a +
            // co0 ..][..16·v]` (co0 + 16·v ≤ c_a, r < n, x < ws: inside the n·ws·c_a values),
            // `buf.offsets[r·k_pad + t0 + q]` (t0 + q < k_pad) and `input.data[offset + x]`
            // (offset + ws ≤ len, checked), and writes LP·LANE_CHUNK sums.
            #[allow(unsafe_code)]
            unsafe {
                avx512::weight_lanes(v, n, ws, buf.row.as_ptr().add(co0), c_a, buf.offsets.as_ptr().add(t0), k_pad, input.data.as_ptr(), &mut sums);
            }
            for (q, sums) in sums.chunks_exact(LANE_CHUNK).enumerate().filter(|(q, _)| t0 + q < k) {
                for (j, &s) in sums[..16 * v].iter().enumerate() {
                    out[(co0 + j) * k + t0 + q] += s;
                }
            }
        }
    }
}

/// For the tile shape of `wide` ([`dot_shape`]: ma rows): `sums[i][j]` (i < ma, j < NK) = Σ
/// over rows r < n and x < wpad of `block[(i·n + r)·wpad + x] · b[offsets[r·ld + k0 + j] + x]`.
/// Checked: every read lies in `block`, `offsets` and `b`.
#[allow(clippy::too_many_arguments)]
fn dot_tile(wide: bool, block: &[f32], n: usize, wpad: usize, offsets: &[usize], ld: usize, k0: usize, b: &[f32], sums: &mut Sums) {
    assert!(!wide || avx512(), "AVX-512 tile without AVX-512");
    let (ma, step) = dot_shape(wide);
    assert!(wpad % step == 0 && block.len() == ma * n * wpad && k0 + NK <= ld && n * ld <= offsets.len(), "dot tile shapes");
    for r in 0..n {
        for j in 0..NK {
            assert!(offsets[r * ld + k0 + j] + wpad <= b.len(), "dot tile: a run outside the input");
        }
    }
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA (AVX-512F where `wide`) are present; every read is inside
        // `block` (ma·n·wpad floats), `offsets` and `b` (offsets + wpad ≤ b.len()), all checked
        // above.
        #[allow(unsafe_code)]
        unsafe {
            if wide {
                avx512::dot_tile(block.as_ptr(), n, wpad, offsets.as_ptr().add(k0), ld, b.as_ptr(), sums);
            } else {
                avx2::dot_tile(block.as_ptr(), n, wpad, offsets.as_ptr().add(k0), ld, b.as_ptr(), sums);
            }
        }
        return;
    }
    *sums = [[0.0; NK]; MA5];
    for r in 0..n {
        for (i, row) in sums.iter_mut().take(ma).enumerate() {
            let a = &block[(i * n + r) * wpad..][..wpad];
            for (j, v) in row.iter_mut().enumerate() {
                let o = offsets[r * ld + k0 + j];
                *v += a.iter().zip(&b[o..o + wpad]).map(|(p, q)| p * q).sum::<f32>();
            }
        }
    }
}

/// [`accumulate`] without SIMD intrinsics.
fn accumulate_portable(a: &[f32], offsets: &[usize], b: &[f32], c: &mut [f32], ld: usize, cols: usize, first: bool) {
    let kc = offsets.len();
    for (t, a) in a.chunks_exact(kc.max(1) * MR).enumerate() {
        for r in 0..MR {
            let row = &mut c[(t * MR + r) * ld..(t * MR + r) * ld + cols];
            if first {
                row.fill(0.0);
            }
            for (i, &o) in offsets.iter().enumerate() {
                let av = a[i * MR + r];
                for (t, &bv) in row.iter_mut().zip(&b[o..o + cols]) {
                    *t += av * bv;
                }
            }
        }
    }
}

/// Output pixels per tile of [`conv3x3_exact`] (two AVX2 vectors of four f64).
const NR64: usize = 8;

/// An exact 3x3 convolution, stride 1, zero padding 1, in f64: `out[co, y, x]` = Σ over (ci, ky,
/// kx) of `weight[co, ci, ky, kx] · input[ci, y + ky − 1, x + kx − 1]` for integer-valued
/// inputs and weights whose products and partial sums stay below 2^53 in magnitude (the caller
/// checks), so every addition is exact and the result does not depend on the order of the
/// sum (SIMD or not, any thread count). The integer hyper-synthesis' 3x3 layer.
pub fn conv3x3_exact(input: &[f64], c_in: usize, h: usize, w: usize, weight: &[f64], c_out: usize) -> Vec<f64> {
    assert_eq!(input.len(), c_in * h * w, "conv3x3_exact: input");
    assert_eq!(weight.len(), c_out * c_in * 9, "conv3x3_exact: weights");
    let mut out = vec![0f64; c_out * h * w];
    if out.is_empty() || c_in == 0 {
        return out;
    }
    let taps = [-1isize, 0, 1];
    let planes = Padded::new(input, c_in, h, w, 1, &taps, w);
    let packed = Packed::tiled(ArrayView2::from_shape((c_out, c_in * 9), weight).expect("weights [c_out, c_in·9]"));
    let (k, ld) = (c_in * 9, w.div_ceil(NR64) * NR64);
    let rows: Vec<Vec<f64>> = (0..h)
        .into_par_iter()
        .map(|y| {
            let mut offsets = vec![0; k];
            planes.offsets(y, &taps, &taps, &mut offsets);
            let mut sums = vec![0f64; packed.tiles() * MR * ld];
            for k0 in (0..k).step_by(KC) {
                accumulate_f64(packed.block(k0), &offsets[k0..(k0 + KC).min(k)], &planes.data, &mut sums, ld, k0 == 0);
            }
            sums
        })
        .collect();
    for (y, sums) in rows.iter().enumerate() {
        for (co, plane) in out.chunks_mut(h * w).enumerate() {
            plane[y * w..(y + 1) * w].copy_from_slice(&sums[co * ld..co * ld + w]);
        }
    }
    out
}

/// For every tile t of `a` (`[tile][tap][MR]`, taps = `offsets.len()`) and every column j < ld
/// (a multiple of NR64): `c[(t·MR + r)·ld + j]` = (`first`: 0, else itself) + Σ_i a[(t·taps +
/// i)·MR + r] · b[offsets[i] + j]. Tile by tile, so that a tile's weights stay in L1 while it
/// sweeps the row (the 3x3 layer's weights are too many to stay in L2). Checked bounds.
fn accumulate_f64(a: &[f64], offsets: &[usize], b: &[f64], c: &mut [f64], ld: usize, first: bool) {
    let kc = offsets.len();
    let tiles = if kc == 0 { 0 } else { a.len() / (kc * MR) };
    assert!(a.len() == tiles * kc * MR && ld % NR64 == 0, "f64 micro-kernel shapes");
    assert!(tiles * MR * ld <= c.len(), "f64 micro-kernel: a tile outside the result");
    let last = offsets.iter().copied().max().unwrap_or(0);
    assert!(kc == 0 || last + ld <= b.len(), "f64 micro-kernel: a run outside the input");
    #[cfg(target_arch = "x86_64")]
    if simd() {
        let wide = avx512();
        for (t, a) in a.chunks_exact(kc.max(1) * MR).enumerate() {
            let mut x0 = 0;
            while x0 < ld {
                // SAFETY: AVX2 and FMA are present (AVX-512F for the 2·NR64 step); reads inside
                // `a` (kc·MR per tile) and `b` (offsets + x0 + step ≤ offsets + ld ≤ b.len()),
                // the tile's rows inside `c` ((t·MR + r)·ld + x0 + step ≤ tiles·MR·ld): all
                // checked above, the step fitting below ld.
                #[allow(unsafe_code)]
                unsafe {
                    let (a, offsets, b, c) = (a.as_ptr(), offsets.as_ptr(), b.as_ptr().add(x0), c.as_mut_ptr().add(t * MR * ld + x0));
                    if wide && x0 + 2 * NR64 <= ld {
                        avx512::kernel_f64::<MR, 2>(kc, a, offsets, b, c, ld, first);
                        x0 += 2 * NR64;
                    } else {
                        avx2::kernel_f64(kc, a, offsets, b, c, ld, first);
                        x0 += NR64;
                    }
                }
            }
        }
        return;
    }
    accumulate_f64_portable(a, offsets, b, c, ld, first);
}

/// [`accumulate_f64`] without SIMD intrinsics.
fn accumulate_f64_portable(a: &[f64], offsets: &[usize], b: &[f64], c: &mut [f64], ld: usize, first: bool) {
    let kc = offsets.len();
    for (t, a) in a.chunks_exact(kc.max(1) * MR).enumerate() {
        for r in 0..MR {
            let row = &mut c[(t * MR + r) * ld..(t * MR + r + 1) * ld];
            if first {
                row.fill(0.0);
            }
            for (i, &o) in offsets.iter().enumerate() {
                let av = a[i * MR + r];
                for (v, &bv) in row.iter_mut().zip(&b[o..o + ld]) {
                    *v += av * bv;
                }
            }
        }
    }
}

/// Defines `$name`, a weight-gradient tile ([`dot_tile`]): one vector accumulator per row `i` of
/// `small` (the literals `$i`) and tap j < NK, over `$lanes` pixels at a time, each reduced to
/// `sums[i][j]` by `$reduce` at the end.
///
/// # Safety (of the defined function)
/// The target features must be available; `block` holds rows·n·wpad floats (`wpad` a multiple
/// of `$lanes`), `offsets + r·ld + j` (r < n, j < NK) is readable, and so is `b + offset ..
/// + wpad` for each.
#[cfg(target_arch = "x86_64")]
macro_rules! dot_kernel {
    ($name:ident, $feature:literal, $lanes:expr, $zero:ident, $load:ident, $fma:ident, $reduce:ident, [$($i:literal),+]) => {
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn $name(block: *const f32, n: usize, wpad: usize, offsets: *const usize, ld: usize, b: *const f32, sums: &mut super::Sums) {
            use super::NK;
            const ROWS: usize = [$($i),+].len();
            const { assert!(NK == 4 && ROWS <= super::MA5) };
            unsafe {
                let mut acc = [[$zero(); NK]; ROWS];
                for r in 0..n {
                    let o = offsets.add(r * ld);
                    let bs = [b.add(*o), b.add(*o.add(1)), b.add(*o.add(2)), b.add(*o.add(3))];
                    let rows = [$(block.add(($i * n + r) * wpad)),+];
                    let mut x = 0;
                    while x < wpad {
                        let s = [$($load(rows[$i].add(x))),+];
                        for (j, bj) in bs.iter().enumerate() {
                            let v = $load(bj.add(x));
                            $(acc[$i][j] = $fma(s[$i], v, acc[$i][j]);)+
                        }
                        x += $lanes;
                    }
                }
                for (row, acc) in sums.iter_mut().zip(&acc) {
                    for (v, &a) in row.iter_mut().zip(acc) {
                        *v = $reduce(a);
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// Defines `$name`: the MR x (2·lanes) tile at `c` (row r at `c + r·ld`), from zero
    /// (`first`) or from its values, plus Σ over `kc` taps of `a` (MR weights per tap) times
    /// the 2·lanes values at `b + offsets[i]`; 12 vector accumulators, two run loads and MR
    /// broadcasts per tap.
    ///
    /// # Safety (of the defined function)
    /// AVX2 and FMA must be available; `a` holds `kc·MR` values, `offsets` `kc` entries,
    /// `b + offsets[i] ..` is readable for 2·lanes values, `c + r·ld ..` writable for r < MR.
    macro_rules! tile_kernel {
        ($name:ident, $t:ty, $lanes:expr, $zero:ident, $load:ident, $store:ident, $splat:ident, $fma:ident) => {
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name(kc: usize, a: *const $t, offsets: *const usize, b: *const $t, c: *mut $t, ld: usize, first: bool) {
                const { assert!(MR == 6) };
                unsafe {
                    let mut acc = [[$zero(); 2]; MR];
                    if !first {
                        for (r, acc) in acc.iter_mut().enumerate() {
                            acc[0] = $load(c.add(r * ld));
                            acc[1] = $load(c.add(r * ld + $lanes));
                        }
                    }
                    for i in 0..kc {
                        let p = b.add(*offsets.add(i));
                        let b0 = $load(p);
                        let b1 = $load(p.add($lanes));
                        let w = a.add(i * MR);
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let ar = $splat(&*w.add(r));
                            acc[0] = $fma(ar, b0, acc[0]);
                            acc[1] = $fma(ar, b1, acc[1]);
                        }
                    }
                    for (r, acc) in acc.iter().enumerate() {
                        $store(c.add(r * ld), acc[0]);
                        $store(c.add(r * ld + $lanes), acc[1]);
                    }
                }
            }
        };
    }

    const _: () = assert!(NR == 16 && super::NR64 == 8);
    tile_kernel!(kernel, f32, 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_broadcast_ss, _mm256_fmadd_ps);
    tile_kernel!(kernel_f64, f64, 4, _mm256_setzero_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_broadcast_sd, _mm256_fmadd_pd);

    /// The sum of a vector's 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum8(a: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        _mm_cvtss_f32(h)
    }
    // The weight-gradient tile: 3 x 4 vector accumulators over 8 pixels at a time (the first
    // three rows of `sums`).
    dot_kernel!(dot_tile, "avx2,fma", 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, sum8, [0, 1, 2]);
    const _: () = assert!(super::MA == 3);
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::{LANE_CHUNK, LP, MR, NR};
    use std::arch::x86_64::*;

    /// `dst[px + 2j] = activate(src[j], add, relu)` for j < 16 (`px` 0 or 1; the columns of
    /// the other phase untouched): 16 values spread to 32 columns by two permutes, written
    /// with a mask.
    ///
    /// # Safety
    /// AVX-512F must be available; `src ..` readable for 16 values, `dst + px + 2j` writable
    /// (j < 16).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn put_phase2(dst: *mut f32, px: usize, src: *const f32, add: f32, relu: bool) {
        unsafe {
            let mut v = _mm512_add_ps(_mm512_loadu_ps(src), _mm512_set1_ps(add));
            if relu {
                // As `activate`: kept where v > 0 or v is NaN, else +0 (also for −0).
                let keep = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(v, _mm512_setzero_ps());
                v = _mm512_maskz_mov_ps(keep, v);
            }
            let lo = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), v);
            let hi = _mm512_permutexvar_ps(_mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15), v);
            let mask: __mmask16 = if px == 0 { 0x5555 } else { 0xAAAA };
            _mm512_mask_storeu_ps(dst, mask, lo);
            _mm512_mask_storeu_ps(dst.add(16), mask, hi);
        }
    }

    /// A 16 x 16 block turned: `dst[j·ldd + i] = src[i·lds + j]` (i, j < 16), in registers
    /// (32-bit, then 64-bit unpacks within 128-bit lanes, then two rounds of lane shuffles).
    ///
    /// # Safety
    /// AVX-512F must be available; `src + i·lds ..` readable and `dst + j·ldd ..` writable
    /// for 16 values each (i, j < 16).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn turn16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        unsafe {
            let a: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * lds)));
            // t[2k], t[2k+1]: rows 2k, 2k+1 interleaved (columns 4L, 4L+1 / 4L+2, 4L+3 of each
            // 128-bit lane L).
            let t: [__m512; 16] = std::array::from_fn(|i| {
                let (x, y) = (a[i & !1], a[i | 1]);
                if i % 2 == 0 { _mm512_unpacklo_ps(x, y) } else { _mm512_unpackhi_ps(x, y) }
            });
            // u[4m + c], lane L: rows 4m .. 4m+3 of column 4L + c.
            let u: [__m512; 16] = std::array::from_fn(|i| {
                let (m, c) = (i / 4, i % 4);
                let (x, y) = (_mm512_castps_pd(t[4 * m + c / 2]), _mm512_castps_pd(t[4 * m + 2 + c / 2]));
                _mm512_castpd_ps(if c % 2 == 0 { _mm512_unpacklo_pd(x, y) } else { _mm512_unpackhi_pd(x, y) })
            });
            for c in 0..4 {
                let p0 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
                let p1 = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
                let q0 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
                let q1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
                _mm512_storeu_ps(dst.add(c * ldd), _mm512_shuffle_f32x4::<0x88>(p0, q0));
                _mm512_storeu_ps(dst.add((4 + c) * ldd), _mm512_shuffle_f32x4::<0xDD>(p0, q0));
                _mm512_storeu_ps(dst.add((8 + c) * ldd), _mm512_shuffle_f32x4::<0x88>(p1, q1));
                _mm512_storeu_ps(dst.add((12 + c) * ldd), _mm512_shuffle_f32x4::<0xDD>(p1, q1));
            }
        }
    }

    /// Defines `$name`: the AVX2 `kernel`'s tile with `V` vector accumulators (`$lanes`
    /// values each) per output channel (R x V·$lanes values, the first R ≤ MR rows of a tile;
    /// one broadcast of a weight serves its V vectors): R = MR, V = 2 makes 12 independent
    /// sums, enough to keep two FMA units busy through their latency, and halves the weight
    /// loads per FMA; R = 3 (3 output channels), V = 8 makes 24 for 8 loads of the input and 3
    /// broadcasts per tap.
    ///
    /// # Safety (of the defined function)
    /// AVX-512F must be available; `a` holds `kc·MR` values, `offsets` `kc` entries, `b +
    /// offsets[i] ..` is readable for V·$lanes values, `c + r·ld ..` writable for V·$lanes
    /// values, r < R.
    macro_rules! wide_kernel {
        ($name:ident, $t:ty, $lanes:expr, $zero:ident, $load:ident, $store:ident, $splat:ident, $fma:ident) => {
            #[target_feature(enable = "avx512f")]
            pub(super) unsafe fn $name<const R: usize, const V: usize>(kc: usize, a: *const $t, offsets: *const usize, b: *const $t, c: *mut $t, ld: usize, first: bool) {
                const { assert!(R <= MR && R * V <= 24) };
                unsafe {
                    let mut acc = [[$zero(); V]; R];
                    if !first {
                        for (r, acc) in acc.iter_mut().enumerate() {
                            for (v, acc) in acc.iter_mut().enumerate() {
                                *acc = $load(c.add(r * ld + v * $lanes));
                            }
                        }
                    }
                    for i in 0..kc {
                        let p = b.add(*offsets.add(i));
                        let mut run = [$zero(); V];
                        for (v, run) in run.iter_mut().enumerate() {
                            *run = $load(p.add(v * $lanes));
                        }
                        let w = a.add(i * MR);
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let wr = $splat(*w.add(r));
                            for (acc, &run) in acc.iter_mut().zip(&run) {
                                *acc = $fma(wr, run, *acc);
                            }
                        }
                    }
                    for (r, acc) in acc.iter().enumerate() {
                        for (v, acc) in acc.iter().enumerate() {
                            $store(c.add(r * ld + v * $lanes), *acc);
                        }
                    }
                }
            }
        };
    }

    const _: () = assert!(NR == 16);
    wide_kernel!(kernel, f32, 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps);
    // The exact f64 product ([`super::conv3x3_exact`]): 6 x 16 values a tile (V = 2).
    wide_kernel!(kernel_f64, f64, 8, _mm512_setzero_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd, _mm512_fmadd_pd);

    /// The lane tile: `V` vectors of 16 output channels x `P` pixels (V·P accumulators), the
    /// pixel `q` of tap `i` at `b + offsets[i] + q` broadcast against the tap's V weight vectors
    /// at `a + i·16·V`; the tile at `c + q·ldc + 16·v`, from zero (`first`) or from its values.
    /// Per tap: V aligned weight loads and P broadcasts for V·P FMAs (the tile kernel: 2 runs,
    /// which split cache lines, and 6 broadcasts for 12).
    ///
    /// # Safety
    /// AVX-512F must be available; `a` holds `kc·16·V` values, `offsets` `kc` entries, `b +
    /// offsets[i] ..` is readable for P values, `c + q·ldc ..` writable for 16·V values, q < P.
    #[target_feature(enable = "avx512f")]
    unsafe fn lane_tile<const V: usize, const P: usize>(kc: usize, a: *const f32, offsets: *const usize, b: *const f32, c: *mut f32, ldc: usize, first: bool) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; P];
            if !first {
                for (q, acc) in acc.iter_mut().enumerate() {
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_loadu_ps(c.add(q * ldc + v * 16));
                    }
                }
            }
            for i in 0..kc {
                let p = b.add(*offsets.add(i));
                let w = a.add(i * 16 * V);
                let mut wv = [_mm512_setzero_ps(); V];
                for (v, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm512_loadu_ps(w.add(v * 16));
                }
                for (q, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*p.add(q));
                    for (acc, &wv) in acc.iter_mut().zip(&wv) {
                        *acc = _mm512_fmadd_ps(wv, x, *acc);
                    }
                }
            }
            for (q, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(c.add(q * ldc + v * 16), *acc);
                }
            }
        }
    }

    /// The weight-gradient lane tile: `sums[q·LANE_CHUNK + 16·v' + j]` (q < LP, v' < V, j < 16)
    /// = Σ over rows r < n and pixels x < ws of `t[(r·ws + x)·lda + 16·v' + j] · b[offsets[r·ld +
    /// q] + x]`: per pixel V aligned loads and LP broadcasts for V·LP FMAs.
    ///
    /// # Safety
    /// AVX-512F must be available; `t + (r·ws + x)·lda ..` readable for 16·V values, `offsets +
    /// r·ld + q` readable and `b + offsets[r·ld + q] ..` for ws values (r < n, q < LP).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn weight_tile<const V: usize>(n: usize, ws: usize, t: *const f32, lda: usize, offsets: *const usize, ld: usize, b: *const f32, sums: &mut [f32; LP * LANE_CHUNK]) {
        const { assert!(V * 16 <= LANE_CHUNK && LP == 6) };
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; LP];
            for r in 0..n {
                let o = offsets.add(r * ld);
                let ps: [*const f32; LP] = std::array::from_fn(|q| b.add(*o.add(q)));
                let row = t.add(r * ws * lda);
                for x in 0..ws {
                    let s = row.add(x * lda);
                    let mut wv = [_mm512_setzero_ps(); V];
                    for (v, wv) in wv.iter_mut().enumerate() {
                        *wv = _mm512_loadu_ps(s.add(v * 16));
                    }
                    for (acc, p) in acc.iter_mut().zip(&ps) {
                        let xq = _mm512_set1_ps(*p.add(x));
                        for (acc, &wv) in acc.iter_mut().zip(&wv) {
                            *acc = _mm512_fmadd_ps(wv, xq, *acc);
                        }
                    }
                }
            }
            for (q, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(sums.as_mut_ptr().add(q * LANE_CHUNK + v * 16), *acc);
                }
            }
        }
    }

    /// [`weight_tile`] with `v` vectors (1–4).
    ///
    /// # Safety
    /// As [`weight_tile`]'s with V = v.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn weight_lanes(v: usize, n: usize, ws: usize, t: *const f32, lda: usize, offsets: *const usize, ld: usize, b: *const f32, sums: &mut [f32; LP * LANE_CHUNK]) {
        unsafe {
            match v {
                4 => weight_tile::<4>(n, ws, t, lda, offsets, ld, b, sums),
                3 => weight_tile::<3>(n, ws, t, lda, offsets, ld, b, sums),
                2 => weight_tile::<2>(n, ws, t, lda, offsets, ld, b, sums),
                1 => weight_tile::<1>(n, ws, t, lda, offsets, ld, b, sums),
                _ => unreachable!("weight tile of {v} vectors"),
            }
        }
    }

    /// [`lane_tile`] with `v` vectors (1–4) and `q` pixels (1–LP).
    ///
    /// # Safety
    /// As [`lane_tile`]'s, with V = v and P = q.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn lanes(v: usize, q: usize, kc: usize, a: *const f32, offsets: *const usize, b: *const f32, c: *mut f32, ldc: usize, first: bool) {
        unsafe fn by_pixels<const V: usize>(q: usize, kc: usize, a: *const f32, offsets: *const usize, b: *const f32, c: *mut f32, ldc: usize, first: bool) {
            const _: () = assert!(super::LP == 6);
            unsafe {
                match q {
                    6 => lane_tile::<V, 6>(kc, a, offsets, b, c, ldc, first),
                    5 => lane_tile::<V, 5>(kc, a, offsets, b, c, ldc, first),
                    4 => lane_tile::<V, 4>(kc, a, offsets, b, c, ldc, first),
                    3 => lane_tile::<V, 3>(kc, a, offsets, b, c, ldc, first),
                    2 => lane_tile::<V, 2>(kc, a, offsets, b, c, ldc, first),
                    1 => lane_tile::<V, 1>(kc, a, offsets, b, c, ldc, first),
                    _ => unreachable!("lane tile of {q} pixels"),
                }
            }
        }
        const _: () = assert!(super::LANE_CHUNK == 64);
        unsafe {
            match v {
                4 => by_pixels::<4>(q, kc, a, offsets, b, c, ldc, first),
                3 => by_pixels::<3>(q, kc, a, offsets, b, c, ldc, first),
                2 => by_pixels::<2>(q, kc, a, offsets, b, c, ldc, first),
                1 => by_pixels::<1>(q, kc, a, offsets, b, c, ldc, first),
                _ => unreachable!("lane tile of {v} vectors"),
            }
        }
    }

    // The weight-gradient tile: 4 x 4 vector accumulators over 16 pixels at a time (8 loads per
    // 16 FMAs; 4 x 6 made LLVM spill its accumulators to the stack).
    dot_kernel!(dot_tile, "avx512f", 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_reduce_add_ps, [0, 1, 2, 3]);
    const _: () = assert!(super::MA5 == 4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_kernel_matches_the_portable_loop() {
        let mut rng = crate::TestRng::new(99);
        let mut random = |n: usize| rng.values(n, -0.5, 0.5);
        // Two tiles in a result of row stride 40, from zero and accumulating, one or two
        // vectors wide, on every tile this CPU has.
        for wide in [false, avx512()] {
            for cols in [NR, 2 * NR] {
                for (kc, first) in [(1, true), (7, false), (128, true), (128, false)] {
                    let a = random(2 * kc * MR);
                    let b = random(1000);
                    let offsets: Vec<usize> = (0..kc).map(|i| (i * 37) % (1000 - cols)).collect();
                    let start = random(2 * MR * 40);
                    let (mut fast, mut plain) = (start.clone(), start);
                    accumulate_on(wide, &a, &offsets, &b, &mut fast, 40, cols, first);
                    accumulate_portable(&a, &offsets, &b, &mut plain, 40, cols, first);
                    for (i, (p, q)) in fast.iter().zip(&plain).enumerate() {
                        assert!((p - q).abs() <= 1e-5, "wide {wide}, {cols} columns, kc {kc}, element {i}: {p} vs {q}");
                    }
                }
            }
        }
    }

    #[test]
    fn few_row_tile_equals_the_six_row_tile_bit_for_bit() {
        if !avx512() {
            eprintln!("this CPU has no AVX-512: the few-row tile is never used");
            return;
        }
        let mut rng = crate::TestRng::new(31);
        let ld = WIDE_COLS + 2 * NR;
        for (kc, first) in [(1, true), (9, false), (128, true), (128, false)] {
            let a = rng.values(kc * MR, -0.5, 0.5);
            let b = rng.values(3000, -1.0, 1.0);
            let offsets: Vec<usize> = (0..kc).map(|i| (i * 53) % (3000 - WIDE_COLS)).collect();
            let start = rng.values(MR * ld, -1.0, 1.0);
            let (mut few, mut six) = (start.clone(), start.clone());
            accumulate_on(true, &a, &offsets, &b, &mut few, ld, WIDE_COLS, first);
            for x0 in (0..WIDE_COLS).step_by(2 * NR) {
                accumulate_on(true, &a, &offsets, &b[x0..], &mut six[x0..], ld, 2 * NR, first);
            }
            for r in 0..MR {
                for x in 0..ld {
                    let i = r * ld + x;
                    // The first FEW rows over WIDE_COLS columns as the 6-row tile computes them;
                    // nothing else written.
                    let want = if r < FEW && x < WIDE_COLS { six[i] } else { start[i] };
                    assert_eq!(few[i].to_bits(), want.to_bits(), "kc {kc}, first {first}, row {r}, column {x}");
                }
            }
        }
    }

    #[test]
    fn lane_tiles_equal_the_tile_kernels_bit_for_bit() {
        if !avx512() {
            eprintln!("this CPU has no AVX-512: the lane layout is never used");
            return;
        }
        let mut rng = crate::TestRng::new(17);
        // Chunks of 64 and what is left (16, 32, 48), pixels past whole tiles of LP, taps over
        // several blocks of either layout (KC, KCL).
        for c_out in [16, 32, 48, 64, 96, 112] {
            for (k, n) in [(1usize, 1usize), (5, 7), (64, 13), (75, 6), (200, 50), (70, 9), (130, 10), (300, 11)] {
                let w = ndarray::Array2::from_shape_vec((c_out, k), rng.values(c_out * k, -0.5, 0.5)).unwrap();
                let b = rng.values(2000, -1.0, 1.0);
                let ld = n.div_ceil(NR) * NR;
                let offsets: Vec<usize> = (0..k).map(|i| (i * 131) % (2000 - ld)).collect();
                let (tiled, lanes) = (Packed::tiled(w.view()), Packed::with_lanes(w.view(), true));
                assert!(lanes.lanes && !tiled.lanes);
                let mut scratch = Vec::new();
                let mut got = |p: &Packed| {
                    let mut out = vec![f32::NAN; p.rows() * ld];
                    p.apply(&offsets, &b, n, ld, &mut out, &mut scratch);
                    out
                };
                let (t, l) = (got(&tiled), got(&lanes));
                for co in 0..c_out {
                    for x in 0..n {
                        let (p, q) = (t[co * ld + x], l[co * ld + x]);
                        assert_eq!(p.to_bits(), q.to_bits(), "{c_out} channels, {k} taps, {n} pixels, at {co},{x}: {p} vs {q}");
                        let want: f64 = (0..k).map(|i| w[[co, i]] as f64 * b[offsets[i] + x] as f64).sum();
                        assert!((q as f64 - want).abs() <= 1e-4, "{c_out} channels, {k} taps: {q} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn weight_lanes_match_the_dot_tiles() {
        if !avx512() {
            eprintln!("this CPU has no AVX-512: the lane weight product is never used");
            return;
        }
        let mut rng = crate::TestRng::new(23);
        // Rows of `small` in chunks of 64 and what is left; taps not a multiple of LP; a
        // stride-2 and a stride-1 input; a band from the middle.
        for (c_a, c_b, stride, hs, ws, rows) in [(16, 3, 2, 6, 10, 1..5), (64, 5, 2, 4, 16, 0..4), (96, 2, 1, 5, 7, 2..5), (48, 4, 2, 3, 13, 0..3)] {
            let taps = [-2isize, -1, 0, 1, 2];
            let (h, w) = (hs * stride, ws * stride);
            let x = rng.values(c_b * h * w, -1.0, 1.0);
            let small = rng.values(c_a * hs * ws, -1.0, 1.0);
            let input = Padded::new(&x, c_b, h, w, stride, &taps, ws);
            let k = c_b * 25;
            let start = rng.values(c_a * k, -1.0, 1.0);
            let (mut lanes, mut dots) = (start.clone(), start);
            weight_product_lanes(&input, &small, c_a, hs, ws, &taps, &taps, rows.clone(), &mut Buffers::default(), &mut lanes);
            weight_product_dots(&input, &small, c_a, hs, ws, &taps, &taps, rows.clone(), &mut Buffers::default(), &mut dots);
            for (i, (p, q)) in lanes.iter().zip(&dots).enumerate() {
                assert!((p - q).abs() <= 1e-4, "{c_a} rows, {c_b} channels, stride {stride}, element {i}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn phases_write_their_columns_as_one_by_one() {
        let mut rng = crate::TestRng::new(31);
        let mut src = rng.values(70, -1.0, 1.0);
        (src[3], src[5], src[17]) = (f32::NAN, -0.0, 0.0);
        for s in [1, 2, 3] {
            for px in 0..s {
                for (len, n) in [(140, 70), (64, 32), (75, 40), (33, 17), (2 * 16 + 1, 16), (10, 0)] {
                    for (add, relu) in [(0.0, false), (0.25, true), (-0.1, true)] {
                        let mut got: Vec<f32> = (0..len).map(|i| i as f32 + 1000.0).collect();
                        let mut want = got.clone();
                        put_phase(&mut got, px, s, &src[..n], add, relu);
                        for (d, &v) in want.iter_mut().skip(px).step_by(s).zip(&src[..n]) {
                            *d = activate(v, add, relu);
                        }
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "stride {s}, phase {px}, {len} columns, {n} values, add {add}, relu {relu}");
                    }
                }
            }
        }
    }

    #[test]
    fn lane_rows_turn_to_channel_rows() {
        let mut rng = crate::TestRng::new(29);
        // Whole blocks of 16 and pixel tails; channels in blocks of 16 and (never in the lane
        // layout, but the turn takes them) a remainder.
        for (n, c_out) in [(16, 16), (40, 64), (7, 32), (33, 96), (16, 20), (0, 16)] {
            let lanes = rng.values(n * c_out, -1.0, 1.0);
            let ld = n.div_ceil(NR) * NR + 3;
            let mut out = vec![f32::NAN; c_out * ld];
            turn(&lanes, n, c_out, &mut out, ld);
            for co in 0..c_out {
                for x in 0..ld {
                    let got = out[co * ld + x];
                    if x < n {
                        assert_eq!(got.to_bits(), lanes[x * c_out + co].to_bits(), "{n} pixels, {c_out} channels, at {co},{x}");
                    } else {
                        assert!(got.is_nan(), "{n} pixels, {c_out} channels: wrote past the row at {co},{x}");
                    }
                }
            }
        }
    }

    #[test]
    fn aligned_slices_start_on_a_cache_line() {
        for slack in 0..16 {
            let mut buf = vec![0f32; 100 + slack + 16];
            let part = aligned(&mut buf[slack..], 100);
            assert_eq!((part.as_ptr() as usize % 64, part.len()), (0, 100));
        }
    }

    #[test]
    fn f64_micro_kernel_matches_the_portable_loop_exactly() {
        let mut rng = crate::TestRng::new(5);
        // Integer values: every sum is exact, so both must agree bit for bit.
        let mut ints = |n: usize| -> Vec<f64> { rng.values(n, -4096.0, 4096.0).into_iter().map(|v| v.round() as f64).collect() };
        for (kc, first) in [(1, true), (9, false), (128, true)] {
            let (a, b) = (ints(2 * kc * MR), ints(600));
            let offsets: Vec<usize> = (0..kc).map(|i| (i * 41) % (600 - 24)).collect();
            let start = ints(2 * MR * 24);
            let (mut fast, mut plain) = (start.clone(), start);
            accumulate_f64(&a, &offsets, &b, &mut fast, 24, first);
            accumulate_f64_portable(&a, &offsets, &b, &mut plain, 24, first);
            assert_eq!(fast, plain, "kc {kc}");
        }
    }

    #[test]
    fn dot_tile_matches_a_plain_sum() {
        let mut rng = crate::TestRng::new(7);
        let mut random = |n: usize| rng.values(n, -0.5, 0.5);
        for wide in [false, avx512()] {
            let (ma, _) = dot_shape(wide);
            let (n, wpad, ld, k0) = (3, 32, 10, 4);
            let block = random(ma * n * wpad);
            let b = random(500);
            let offsets: Vec<usize> = (0..n * ld).map(|i| (i * 53) % (500 - wpad)).collect();
            let mut sums = [[0f32; NK]; MA5];
            dot_tile(wide, &block, n, wpad, &offsets, ld, k0, &b, &mut sums);
            for (i, row) in sums.iter().take(ma).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let want: f64 = (0..n)
                        .flat_map(|r| (0..wpad).map(move |x| (r, x)))
                        .map(|(r, x)| block[(i * n + r) * wpad + x] as f64 * b[offsets[r * ld + k0 + j] + x] as f64)
                        .sum();
                    assert!((v as f64 - want).abs() <= 1e-5, "wide {wide}, sum {i},{j}: {v} vs {want}");
                }
            }
        }
    }

    #[test]
    fn exact_3x3_convolution_matches_a_plain_loop_exactly() {
        let mut rng = crate::TestRng::new(11);
        let mut ints = |n: usize, range: f32| -> Vec<f64> { rng.values(n, -range, range).into_iter().map(|v| v.round() as f64).collect() };
        // Widths below, at and past a tile; channels not a multiple of MR; large integers.
        for (c_in, c_out, h, w) in [(3, 7, 5, 9), (2, 6, 1, 1), (5, 13, 4, 16), (4, 5, 3, 21), (40, 7, 3, 10)] {
            let x = ints(c_in * h * w, (1 << 24) as f32);
            let wt = ints(c_out * c_in * 9, (1 << 15) as f32);
            let got = conv3x3_exact(&x, c_in, h, w, &wt, c_out);
            for co in 0..c_out {
                for y in 0..h {
                    for xx in 0..w {
                        let mut want = 0i128;
                        for ci in 0..c_in {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                        let v = x[(ci * h + iy as usize) * w + ix as usize] as i128;
                                        want += wt[((co * c_in + ci) * 3 + ky) * 3 + kx] as i128 * v;
                                    }
                                }
                            }
                        }
                        assert_eq!(got[(co * h + y) * w + xx], want as f64, "{c_in}->{c_out} {h}x{w} at {co},{y},{xx}");
                    }
                }
            }
        }
    }

    #[test]
    fn column_steps_cover_the_row_once() {
        for (ld, few) in [16, 32, 48, 64, 80, 384, 400].into_iter().flat_map(|ld| [(ld, false), (ld, true)]) {
            let steps: Vec<(usize, usize)> = column_steps(ld, few).collect();
            let mut x = 0;
            for &(x0, cols) in &steps {
                assert_eq!(x0, x, "row {ld}: {steps:?}");
                // With few rows, WIDE_COLS wherever they fit; else two vectors wherever two fit,
                // on AVX-512; one elsewhere.
                let want = match avx512() {
                    true if few && x0 + WIDE_COLS <= ld => WIDE_COLS,
                    true if x0 + 2 * NR <= ld => 2 * NR,
                    _ => NR,
                };
                assert_eq!(cols, want, "row {ld}, few {few}: {steps:?}");
                x += cols;
            }
            assert_eq!(x, ld, "row {ld}: {steps:?}");
        }
    }

    #[test]
    #[should_panic(expected = "outside the input")]
    fn a_run_past_the_input_is_refused() {
        let mut c = vec![0f32; MR * NR];
        accumulate(&[0.0; MR], &[10], &[0.0; 20], &mut c, NR, NR, true);
    }

    #[test]
    #[should_panic(expected = "outside the result")]
    fn a_tile_past_the_result_is_refused() {
        let mut c = vec![0f32; MR * NR - 1];
        accumulate(&[0.0; MR], &[0], &[0.0; 20], &mut c, NR, NR, true);
    }
}

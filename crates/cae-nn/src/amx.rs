//! Convolutions on Intel AMX: bf16 tiles with f32 sums (`tdpbf16ps`), for work that need not
//! be bit-exact (the encoder's analysis transform; never the decoder, whose floats must not
//! depend on the CPU).
//!
//! One `tdpbf16ps` multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums:
//! 8,192 multiply-adds, where an AVX-512 FMA does 16. On this machine's Sapphire Rapids
//! cores a tight loop of them runs at ~2 TFLOP/s a core (`docs/profile.md`), against ~155
//! GFLOP/s for f32 FMAs.
//!
//! The layout that feeds the tiles without copies: the input is pixel-major (NHWC) bf16 with
//! zero margins ([`PaddedNhwc`]), so that 32 input channels of one tap at 16 output pixels
//! are one tile load, the pixels `stride · channels` values apart. Per output row, groups of
//! 32 pixels (two A tiles) times 32 output channels (two B tiles) are summed in four
//! accumulator tiles over every (tap, block of 32 input channels); the weights are packed
//! once ([`PackedBf16`]) in the pair-interleaved order the B tiles want.
#![allow(unsafe_code)]

use rayon::prelude::*;

/// Input channels per step (one A tile row: 32 bf16 = 64 bytes) and output channels per
/// group (two B tiles of 16).
pub const BLOCK: usize = 32;
/// Output pixels per group (two A tiles of 16 rows). A row's sums are computed for its
/// pixels rounded up to a whole number of groups ([`padded_row`]): the extra pixels read the
/// input's right margin and are dropped, so that every pixel is summed alike wherever it
/// lies (an image coded whole and in tiles gets the same latents).
const PIXELS: usize = 32;

/// `w_out` rounded up to whole groups of pixels.
pub fn padded_row(w_out: usize) -> usize {
    w_out.div_ceil(PIXELS) * PIXELS
}

/// Whether AMX-BF16 is usable: the CPU has AMX tiles, AMX-BF16 and AVX512-BF16, the kernel
/// grants this process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), and the
/// environment does not set `CAEC_NO_AMX`. Checked once.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| std::env::var_os("CAEC_NO_AMX").is_none() && detect())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf7 = __cpuid_count(7, 0);
    let amx = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
    if !(amx && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for a permission; it changes nothing but this process's permission.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `x` rounded to bf16 (to nearest, ties to even; NaN stays NaN), as its 16 bits.
pub fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of bf16 bits.
pub fn f32_of(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A feature map in pixel-major order, bf16, with zero margins: pixel `(y, x)` of the map is
/// at `((y + top) · width + x + left) · c`.
#[derive(Clone, Debug)]
pub struct PaddedNhwc {
    pub data: Vec<u16>,
    /// Rows and columns with the margins.
    pub height: usize,
    pub width: usize,
    pub c: usize,
    pub top: usize,
    pub left: usize,
}

impl PaddedNhwc {
    /// Zeros for a `c`-channel `h` x `w` map with the given margins.
    pub fn zeros(c: usize, h: usize, w: usize, (top, bottom): (usize, usize), (left, right): (usize, usize)) -> Self {
        let (height, width) = (h + top + bottom, w + left + right);
        PaddedNhwc { data: vec![0; height * width * c], height, width, c, top, left }
    }

    /// A channel-major (CHW) f32 map, rounded to bf16, with the given margins.
    pub fn from_planes(x: &[f32], c: usize, h: usize, w: usize, rows: (usize, usize), cols: (usize, usize)) -> Self {
        assert_eq!(x.len(), c * h * w, "input planes");
        let mut p = Self::zeros(c, h, w, rows, cols);
        let (width, top, left) = (p.width, p.top, p.left);
        // Per row: each channel's row rounded (vectorised), then turned pixel-major.
        let rounded = || vec![0u16; c * w];
        p.data.par_chunks_mut(width * c).skip(top).take(h).enumerate().for_each_init(rounded, |tmp, (y, line)| {
            for (ci, t) in tmp.chunks_exact_mut(w).enumerate() {
                round_to_bf16(&x[(ci * h + y) * w..][..w], t);
            }
            for (xx, px) in line[left * c..(left + w) * c].chunks_exact_mut(c).enumerate() {
                for (ci, v) in px.iter_mut().enumerate() {
                    *v = tmp[ci * w + xx];
                }
            }
        });
        p
    }

    /// [`from_planes`](Self::from_planes) with each value as two bf16 channels, `hi =
    /// bf16(x)` and `lo = bf16(x − hi)` (channel `2·ci` and `2·ci + 1`): 16 significant bits
    /// instead of 8, for an input whose rounding would cost more than the product's (an 8-bit
    /// image's levels are not all bf16 values). Convolve with
    /// [`PackedBf16::new_split`]'s weights.
    pub fn from_planes_split(x: &[f32], c: usize, h: usize, w: usize, rows: (usize, usize), cols: (usize, usize)) -> Self {
        assert_eq!(x.len(), c * h * w, "input planes");
        let mut p = Self::zeros(2 * c, h, w, rows, cols);
        let (width, top, left) = (p.width, p.top, p.left);
        p.data.par_chunks_mut(width * 2 * c).skip(top).take(h).enumerate().for_each(|(y, line)| {
            for (xx, px) in line[left * 2 * c..(left + w) * 2 * c].chunks_exact_mut(2 * c).enumerate() {
                for (ci, v) in px.chunks_exact_mut(2).enumerate() {
                    let x = x[(ci * h + y) * w + xx];
                    let hi = bf16(x);
                    v[0] = hi;
                    v[1] = bf16(x - f32_of(hi));
                }
            }
        });
        p
    }
}

/// A convolution's weights rounded to bf16 and packed for the B tiles: per group of 32
/// output channels, per step, two 16 x 32 tiles (output channels 0–15 and 16–31 of the
/// group), each row `r` holding for its 16 output channels the pair of inputs `2r`, `2r + 1`
/// of the step. The steps and their 32 inputs:
///
/// - *wide* (`c_in` a multiple of 32): per tap `(dy, dx)` of a list (all k x k, row-major,
///   for [`new`](Self::new)), per block of 32 input channels, those channels of the tap's
///   pixel;
/// - *narrow* (`k · c_in ≤ 32`, as the image's 3 channels): per kernel row `dy`, the 32
///   values from the row's first tap on, which hold the `k` taps' pixels (`dx · c_in + ci`)
///   and then values whose weights are zero.
#[derive(Clone, Debug)]
pub struct PackedBf16 {
    data: Vec<u16>,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    /// The taps `[dy, dx]` of a wide packing (empty for a narrow one).
    taps: Vec<[usize; 2]>,
}

/// bf16 values in one group's step: two 16 x 32 tiles.
const STEP: usize = 2 * 16 * BLOCK;

impl PackedBf16 {
    /// Whether the weights of a convolution from `c_in` channels with `k` x `k` taps pack.
    pub fn packs(c_in: usize, k: usize) -> bool {
        c_in > 0 && (c_in % BLOCK == 0 || k * c_in <= BLOCK)
    }

    /// Pack `w` (`[c_out, c_in, k, k]`, burn's layout). `c_out` must be a multiple of
    /// [`BLOCK`], and `c_in` and `k` must [`packs`](Self::packs).
    pub fn new(w: &[f32], c_out: usize, c_in: usize, k: usize) -> Self {
        assert_eq!(w.len(), c_out * c_in * k * k, "weights");
        assert!(c_out % BLOCK == 0 && Self::packs(c_in, k), "{c_in} -> {c_out} channels, {k} x {k} taps: not in blocks of {BLOCK}");
        let taps = if c_in % BLOCK == 0 { (0..k * k).map(|t| [t / k, t % k]).collect() } else { Vec::new() };
        Self::pack(c_out, c_in, k, taps, |oc, ci, t| w[(oc * c_in + ci) * k * k + t])
    }

    /// A wide packing (`c_in` and `c_out` multiples of [`BLOCK`]) of the taps `taps`
    /// (`[dy, dx]` in the padded input), tap `t`'s weight from input channel `ci` to output
    /// channel `oc` being `weight(oc, ci, t)`.
    pub(crate) fn with_taps(c_out: usize, c_in: usize, taps: Vec<[usize; 2]>, weight: impl Fn(usize, usize, usize) -> f32) -> Self {
        assert!(c_out % BLOCK == 0 && c_in % BLOCK == 0 && !taps.is_empty(), "{c_in} -> {c_out} channels: not in blocks of {BLOCK}");
        let k = taps.iter().map(|&[dy, dx]| dy.max(dx) + 1).max().unwrap_or(1);
        Self::pack(c_out, c_in, k, taps, weight)
    }

    /// Pack the weights: `weight(oc, ci, t)` with `t` the index of a wide packing's tap, or
    /// `dy · k + dx` for a narrow one.
    fn pack(c_out: usize, c_in: usize, k: usize, taps: Vec<[usize; 2]>, weight: impl Fn(usize, usize, usize) -> f32) -> Self {
        let mut packed = PackedBf16 { data: Vec::new(), c_in, c_out, k, taps };
        let steps = packed.steps();
        packed.data = vec![0u16; c_out / BLOCK * steps * STEP];
        let narrow = packed.narrow();
        let mut at = 0;
        for g in 0..c_out / BLOCK {
            for s in 0..steps {
                for half in 0..2 {
                    for r in 0..16 {
                        for n in 0..16 {
                            let oc = g * BLOCK + half * 16 + n;
                            for e in 0..2 {
                                let j = 2 * r + e;
                                // (input channel, tap) of input j of step s, if any.
                                let tap = if narrow {
                                    (j < k * c_in).then(|| (j % c_in, s * k + j / c_in))
                                } else {
                                    let (t, kb) = (s / (c_in / BLOCK), s % (c_in / BLOCK));
                                    Some((kb * BLOCK + j, t))
                                };
                                if let Some((ci, t)) = tap {
                                    packed.data[at] = bf16(weight(oc, ci, t));
                                }
                                at += 1;
                            }
                        }
                    }
                }
            }
        }
        packed
    }

    /// The weights for an input of [`PaddedNhwc::from_planes_split`]: each input channel's
    /// weights twice, for its `hi` and its `lo` part.
    pub fn new_split(w: &[f32], c_out: usize, c_in: usize, k: usize) -> Self {
        assert_eq!(w.len(), c_out * c_in * k * k, "weights");
        let per = k * k;
        let doubled: Vec<f32> = w.chunks_exact(per).flat_map(|taps| taps.iter().chain(taps)).copied().collect();
        Self::new(&doubled, c_out, 2 * c_in, k)
    }

    fn narrow(&self) -> bool {
        self.c_in % BLOCK != 0
    }

    fn steps(&self) -> usize {
        if self.narrow() { self.k } else { self.taps.len() * (self.c_in / BLOCK) }
    }

    /// Per step, the byte offsets of its A tile from an output pixel's first tap (in a padded
    /// map `width` pixels wide) and of its B tiles in a group's packed weights.
    fn steps_at(&self, width: usize) -> Vec<[usize; 2]> {
        let c_in = self.c_in;
        (0..self.steps())
            .map(|s| {
                let a = if self.narrow() {
                    s * width * c_in * 2
                } else {
                    let ([dy, dx], kb) = (self.taps[s / (c_in / BLOCK)], s % (c_in / BLOCK));
                    ((dy * width + dx) * c_in + kb * BLOCK) * 2
                };
                [a, s * STEP * 2]
            })
            .collect()
    }

    /// Columns a row of an A tile reads from its first tap's pixel on.
    pub(crate) fn reach(&self) -> usize {
        if self.narrow() { self.k.max(BLOCK.div_ceil(self.c_in)) } else { self.taps.iter().map(|t| t[1] + 1).max().unwrap_or(0) }
    }

    /// Rows the taps read from an output pixel's first tap's row on.
    pub(crate) fn rows_reach(&self) -> usize {
        if self.narrow() { self.k } else { self.taps.iter().map(|t| t[0] + 1).max().unwrap_or(0) }
    }
}

/// The tile configuration: palette 1, tiles 0–7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Whether [`conv`] runs a `k` x `k` convolution to `c_out` channels from `c_in`: AMX is
/// available, the weights [pack](PackedBf16::packs) and `c_out` is a multiple of 32.
pub fn fits(c_in: usize, c_out: usize, k: usize) -> bool {
    available() && PackedBf16::packs(c_in, k) && c_out > 0 && c_out % BLOCK == 0
}

/// Convolve `x` with `w` at `stride`: output pixel `(oy, ox)`'s tap `(dy, dx)` reads the
/// padded map's pixel `(stride·oy + dy, stride·ox + dx)` (so the margins are the
/// convolution's padding, and the right margin also covers the taps of the row's pixels up to
/// [`padded_row`]). Returns the `h_out` x `w_out` output pixel-major (NHWC), f32, without
/// bias. `None` where the tiles do not apply (see [`fits`]).
///
/// # Panics
/// If `x` is too small for the output size or its channels are not the weights'.
pub fn conv(x: &PaddedNhwc, w: &PackedBf16, stride: usize, h_out: usize, w_out: usize) -> Option<Vec<f32>> {
    let mut out = vec![0f32; h_out * w_out * w.c_out];
    let rows: Vec<&mut [f32]> = out.chunks_mut((w_out * w.c_out).max(1)).collect();
    conv_rows(x, w, stride, h_out, w_out, rows, |dst, sums| dst.copy_from_slice(&sums[..dst.len()])).then_some(out)
}

/// [`conv`], handing each output row's sums (`padded_row(w_out)` x `c_out`, pixel-major: the
/// row's `w_out` pixels, then those past it) to `f` with that row's sink (`sinks[oy]`), on
/// the thread that computed it (while the row is in its cache). Returns whether the tiles
/// ran (see [`fits`]); if not, `f` was not called.
pub fn conv_rows<T: Send>(x: &PaddedNhwc, w: &PackedBf16, stride: usize, h_out: usize, w_out: usize, sinks: Vec<T>, f: impl Fn(T, &mut [f32]) + Sync) -> bool {
    assert_eq!(x.c, w.c_in, "input channels");
    assert_eq!(sinks.len(), h_out, "one sink per output row");
    assert!(h_out == 0 || stride * (h_out - 1) + w.rows_reach() <= x.height, "rows past the padded input");
    let w_pad = padded_row(w_out);
    assert!(w_out == 0 || stride * (w_pad - 1) + w.reach() <= x.width, "columns past the padded input");
    if !fits(w.c_in, w.c_out, w.k) {
        return false;
    }
    let steps = w.steps_at(x.width);
    let scratch = || vec![0f32; w_pad * w.c_out];
    sinks.into_par_iter().enumerate().for_each_init(scratch, |row, (oy, sink)| {
        // SAFETY: `available()` checked the CPU and the permission; every tile load reads
        // inside `x.data` (the asserts above bound the taps of every pixel up to `w_pad`).
        unsafe {
            let a = x.data.as_ptr().add(stride * oy * x.width * w.c_in) as *const u8;
            row_sums(a, stride * w.c_in * 2, &steps, w, row);
        }
        f(sink, row);
    });
    true
}

/// What follows a convolution of [`chain`].
pub(crate) enum Then {
    /// GDN with `beta` (`[c]`) and gamma (`[c, c]`) packed as a 1 x 1 convolution: the
    /// normaliser's sums γ · x² on the tiles too (x² rounded to bf16).
    Gdn { beta: Vec<f32>, gamma: PackedBf16 },
    Relu,
    Nothing,
}

/// A convolution of [`chain`] (with its bias and what follows it), from `c_in` channels to
/// `out` = `[c_out, h_out, w_out]`.
pub(crate) struct TileLayer {
    /// Packed by [`PackedBf16::new_split`] for a first layer whose input is split.
    pub packed: PackedBf16,
    pub split_input: bool,
    pub bias: Vec<f32>,
    pub stride: usize,
    pub pad: usize,
    pub out: [usize; 3],
    pub then: Then,
}

/// The margins (before, after) of an input side of `n` pixels whose output side has `n_out`
/// pixels, at `stride` with `pad` pixels of padding: the padding before, and after what the
/// last output's taps (`reach` pixels from its first) reach.
fn margins(n: usize, n_out: usize, stride: usize, pad: usize, reach: usize) -> (usize, usize) {
    let reach = stride * n_out.saturating_sub(1) + reach;
    (pad, reach.saturating_sub(n + pad))
}

/// The margins (rows, columns) of the input (`h` x `w` pixels) of a convolution with weights
/// `w` to `h_out` x `w_out` pixels: the columns' for rows of [`padded_row`] output pixels.
pub(crate) fn input_margins(w: &PackedBf16, stride: usize, pad: usize, [h, wd]: [usize; 2], [h_out, w_out]: [usize; 2]) -> ((usize, usize), (usize, usize)) {
    (margins(h, h_out, stride, pad, w.rows_reach()), margins(wd, padded_row(w_out), stride, pad, w.reach()))
}

impl TileLayer {
    /// The margins (rows, columns) of this layer's input of `h` x `w` pixels.
    fn input_margins(&self, h: usize, w: usize) -> ((usize, usize), (usize, usize)) {
        input_margins(&self.packed, self.stride, self.pad, [h, w], [self.out[1], self.out[2]])
    }
}

/// An analysis chain on the tiles: from `planes` (`[c, h, w]`, channel-major f32), the last
/// layer's output (channel-major, with bias) to `out`. Every layer must [`fits`]. Between layers the values are bf16
/// pixel-major maps; each row's sums get their bias, GDN or ReLU and rounding to bf16 on the
/// thread that computed them.
pub(crate) fn chain(planes: &[f32], [c, h, w]: [usize; 3], layers: &[TileLayer], out: &mut [f32]) {
    let Some(first) = layers.first() else {
        out.copy_from_slice(planes);
        return;
    };
    let (rows, cols) = first.input_margins(h, w);
    let mut x = if first.split_input {
        PaddedNhwc::from_planes_split(planes, c, h, w, rows, cols)
    } else {
        PaddedNhwc::from_planes(planes, c, h, w, rows, cols)
    };
    for (i, l) in layers.iter().enumerate() {
        let [c_out, h_out, w_out] = l.out;
        match layers.get(i + 1) {
            Some(next) => {
                let (rows, cols) = next.input_margins(h_out, w_out);
                let mut y = PaddedNhwc::zeros(c_out, h_out, w_out, rows, cols);
                let (line, left) = (y.width * c_out, y.left * c_out);
                let sinks: Vec<&mut [u16]> = y.data.chunks_mut(line).skip(y.top).take(h_out).map(|r| &mut r[left..left + w_out * c_out]).collect();
                let ran = conv_rows(&x, &l.packed, l.stride, h_out, w_out, sinks, |dst, sums| {
                    // SAFETY: the tiles ran, so the CPU has AVX-512 and AVX512-BF16.
                    unsafe { finish_row(sums, c_out, &l.bias, &l.then, dst) }
                });
                assert!(ran, "a chain layer that does not fit the tiles");
                x = y;
            }
            None => {
                let sums = conv(&x, &l.packed, l.stride, h_out, w_out).expect("a chain layer that does not fit the tiles");
                let plane = h_out * w_out;
                for (px, v) in sums.chunks_exact(c_out).enumerate() {
                    for (co, &s) in v.iter().enumerate() {
                        out[co * plane + px] = s + l.bias[co];
                    }
                }
            }
        }
    }
}

/// Bias, then GDN or ReLU, of one row of pixel-major sums (a whole number of groups of 32
/// pixels of `c` channels), rounded to bf16 into `dst` (the row's first pixels).
///
/// # Safety
/// The CPU must have AVX-512, AVX512-BF16 and AMX (the tiles of the row's convolution ran).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn finish_row(sums: &mut [f32], c: usize, bias: &[f32], then: &Then, dst: &mut [u16]) {
    thread_local! {
        /// Per thread: x² (bf16) and the normaliser of one row, overwritten for every row.
        static SCRATCH: std::cell::RefCell<(Vec<u16>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    let Then::Gdn { beta, gamma } = then else {
        // The branch outside the loops, so that they vectorise.
        let relu = matches!(then, Then::Relu);
        for v in sums.chunks_exact_mut(c) {
            if relu {
                v.iter_mut().zip(bias).for_each(|(x, b)| *x = (*x + b).max(0.0));
            } else {
                v.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
            }
        }
        to_bf16(&sums[..dst.len()], dst);
        return;
    };
    SCRATCH.with_borrow_mut(|(sq, norm)| {
        sq.resize(sums.len(), 0);
        norm.resize(sums.len(), 0.0);
        // x = sum + bias, and x² as bf16 (in `dst`'s chunks of 32, through a small buffer).
        let mut squares = [0f32; BLOCK];
        // c is a multiple of 32: each chunk of 32 values is 32 channels of one pixel.
        for (i, (v, q)) in sums.chunks_exact_mut(BLOCK).zip(sq.chunks_exact_mut(BLOCK)).enumerate() {
            let b = &bias[i * BLOCK % c..][..BLOCK];
            for ((x, s), &b) in v.iter_mut().zip(squares.iter_mut()).zip(b) {
                *x += b;
                *s = *x * *x;
            }
            to_bf16(&squares, q);
        }
        // SAFETY: the tiles read c channels of each of the row's pixels in `sq` (gamma is
        // a 1 x 1 convolution: its steps are the blocks of 32 channels of one pixel).
        unsafe { row_sums(sq.as_ptr() as *const u8, c * 2, &gamma.steps_at(1), gamma, norm) };
        for (v, n) in sums.chunks_exact_mut(c).zip(norm.chunks_exact(c)) {
            for ((x, &s), &b) in v.iter_mut().zip(n).zip(beta) {
                *x /= (s + b).sqrt();
            }
        }
    });
    to_bf16(&sums[..dst.len()], dst);
}

/// `src` rounded to bf16 into `dst` (to nearest, ties to even, as [`bf16`] for every value
/// but subnormals, which the vector instruction takes as zero): 32 values an instruction
/// where AMX is available (and so AVX512-BF16), else one by one.
pub(crate) fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: `available()` checked AVX-512 and AVX512-BF16.
        unsafe { to_bf16(src, dst) };
        return;
    }
    assert_eq!(src.len(), dst.len(), "one bf16 per f32");
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = bf16(x);
    }
}

/// `src` rounded to bf16 (to nearest, ties to even) into `dst`, 32 values an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn to_bf16(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    assert_eq!(src.len(), dst.len(), "one bf16 per f32");
    let mut s = src.chunks_exact(32);
    let mut d = dst.chunks_exact_mut(32);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: 32 floats read from `s` and 32 bf16 written to `d`, unaligned.
        unsafe {
            let lo = _mm512_loadu_ps(s.as_ptr());
            let hi = _mm512_loadu_ps(s.as_ptr().add(16));
            let v = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(d.as_mut_ptr() as *mut __m512i, std::mem::transmute::<__m512bh, __m512i>(v));
        }
    }
    for (o, &x) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *o = bf16(x);
    }
}

/// One row's sums for every group of 32 output channels of `w`, pixel-major into `out`
/// (`w.c_out` values a pixel, a whole number of groups of 32 pixels): pixel `p`'s first tap
/// is at `a + p · a_pixel` bytes, its steps as [`PackedBf16::steps_at`] gives them.
///
/// # Safety
/// AMX must be available, and every tile row read — 64 bytes at `a + p · a_pixel + offset`
/// for each pixel `p` of `out` and each step's A offset — inside one allocation.
unsafe fn row_sums(a: *const u8, a_pixel: usize, steps: &[[usize; 2]], w: &PackedBf16, out: &mut [f32]) {
    let c_out = w.c_out;
    let pixels = out.len() / c_out;
    assert!(pixels % PIXELS == 0 && steps.len() == w.steps(), "whole groups of pixels, one offset a step");
    // SAFETY: per the caller's promise for the A tiles; the B tiles read `steps` steps per
    // group inside the packed weights; every store writes 32 pixels x 32 channels inside `out`.
    unsafe {
        configure();
        for ox in (0..pixels).step_by(PIXELS) {
            for g in 0..c_out / BLOCK {
                let b = w.data.as_ptr().add(g * w.steps() * STEP) as *const u8;
                let c = out.as_mut_ptr().add(ox * c_out + g * BLOCK) as *mut u8;
                group(a.add(ox * a_pixel), a_pixel, steps, b, c, c_out * 4);
            }
        }
        release();
    }
}

/// Load the tile configuration on this thread.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) unsafe fn configure() {
    unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
}

/// Release the tiles (back to the initial state, so that context switches stay cheap).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) unsafe fn release() {
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

/// Four 16 x 16 accumulator tiles summed over `steps`: per step `[a_off, b_off]`, the A tiles
/// at `a + a_off` (16 rows `a_stride` bytes apart) and 16 rows further, times the B tiles at
/// `b + b_off` and 1,024 bytes further (16 rows of 64 bytes each); the sums stored at `c`:
/// A tile 0's rows `c_stride` bytes apart (B tile 0's 16 columns, then B tile 1's), then
/// A tile 1's. In a convolution an A row is an output pixel and a B column an output
/// channel (32 pixels x 32 channels); in a weight gradient an A row is an input channel.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) unsafe fn group(a: *const u8, a_stride: usize, steps: &[[usize; 2]], b: *const u8, c: *mut u8, c_stride: usize) {
    if steps.is_empty() {
        return;
    }
    unsafe {
    std::arch::asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "mov {p}, qword ptr [{offs}]",
        "add {p}, {a}",
        "tileloadd tmm4, [{p} + {sa}*1]",
        "add {p}, {sa16}",
        "tileloadd tmm5, [{p} + {sa}*1]",
        "mov {p}, qword ptr [{offs} + 8]",
        "add {p}, {b}",
        "tileloadd tmm6, [{p} + {s64}*1]",
        "tileloadd tmm7, [{p} + {s64}*1 + 1024]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {offs}, 16",
        "dec {n}",
        "jnz 2b",
        "tilestored [{c} + {sc}*1], tmm0",
        "tilestored [{c} + {sc}*1 + 64], tmm1",
        "add {c}, {sc16}",
        "tilestored [{c} + {sc}*1], tmm2",
        "tilestored [{c} + {sc}*1 + 64], tmm3",
        a = in(reg) a,
        sa = in(reg) a_stride,
        sa16 = in(reg) 16 * a_stride,
        offs = inout(reg) steps.as_ptr() => _,
        n = inout(reg) steps.len() => _,
        b = in(reg) b,
        s64 = in(reg) 64usize,
        c = inout(reg) c => _,
        sc = in(reg) c_stride,
        sc16 = in(reg) 16 * c_stride,
        p = out(reg) _,
        options(nostack),
    );
    }
}

// Elsewhere `available()` is false and none of these runs.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn finish_row(_: &mut [f32], _: usize, _: &[f32], _: &Then, _: &mut [u16]) {
    unreachable!("AMX is x86-64 only")
}
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn configure() {
    unreachable!("AMX is x86-64 only")
}
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn release() {
    unreachable!("AMX is x86-64 only")
}
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn group(_: *const u8, _: usize, _: &[[usize; 2]], _: *const u8, _: *mut u8, _: usize) {
    unreachable!("AMX is x86-64 only")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A pixel's sums do not depend on where in its group of 32 it lies: the same input
    /// shifted by 8 output pixels (16 input columns) gives the same bits.
    #[test]
    fn sums_do_not_depend_on_the_position_in_a_group() {
        if !available() {
            eprintln!("no AMX here: the tiles were not run");
            return;
        }
        let (c_in, c_out, k, h, w, p) = (64, 32, 5, 6, 90, 2);
        let x = noise(c_in * h * w, 3);
        let shifted: Vec<f32> = x.chunks_exact(w).flat_map(|row| &row[16..]).copied().collect();
        let packed = PackedBf16::new(&noise(c_out * c_in * k * k, 4), c_out, c_in, k);
        let run = |x: &[f32], w: usize| {
            let w_out = (w + 2 * p - k) / 2 + 1;
            let right = (2 * (padded_row(w_out) - 1) + k).saturating_sub(w + p);
            let xp = PaddedNhwc::from_planes(x, c_in, h, w, (p, p + 1), (p, right));
            (conv(&xp, &packed, 2, (h + 2 * p - k) / 2 + 1, w_out).expect("AMX applies"), w_out)
        };
        let ((a, wa), (b, wb)) = (run(&x, w), run(&shifted, w - 16));
        for oy in 0..3 {
            // Output pixels whose taps lie inside both inputs: 9 ..= 40 of the first.
            for ox in 9..=40 {
                let (i, j) = ((oy * wa + ox) * c_out, (oy * wb + ox - 8) * c_out);
                assert_eq!(a[i..i + c_out].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b[j..j + c_out].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "pixel ({oy}, {ox})");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        assert_eq!(f32_of(bf16(-2.5)), -2.5);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32_of(bf16(f32::NAN)).is_nan());
        assert_eq!(f32_of(bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// The tiles against a plain sum over the same bf16 values (f64), on the encoder's layer
    /// shapes: 5 x 5, stride 2, 3 → 64 (narrow), 64 → 64 and 64 → 96 channels, widths with a
    /// partial group; and stride 1.
    #[test]
    fn tiles_match_a_plain_convolution() {
        if !available() {
            eprintln!("no AMX here: the tiles were not run");
            return;
        }
        for (c_in, c_out, h, w, stride) in [(64, 64, 12, 80, 2), (64, 96, 6, 72, 2), (32, 32, 5, 40, 1), (3, 64, 9, 70, 2), (3, 32, 4, 33, 1)] {
            let k = 5;
            let p = k / 2;
            let (h_out, w_out) = ((h + 2 * p - k) / stride + 1, (w + 2 * p - k) / stride + 1);
            let x = noise(c_in * h * w, 1);
            let wt = noise(c_out * c_in * k * k, 2);
            // Narrow inputs (3 channels) read 32 values, 11 pixels, from each row's first tap;
            // the right margin covers the row's pixels up to whole groups.
            let right = (stride * (padded_row(w_out) - 1) + 11).saturating_sub(w + p);
            let xp = PaddedNhwc::from_planes(&x, c_in, h, w, (p, p + 1), (p, right));
            let packed = PackedBf16::new(&wt, c_out, c_in, k);
            let got = conv(&xp, &packed, stride, h_out, w_out).expect("AMX applies");
            let mut worst = 0f64;
            for oy in 0..h_out {
                for ox in 0..w_out {
                    for oc in 0..c_out {
                        let mut sum = 0f64;
                        let mut mag = 0f64;
                        for ci in 0..c_in {
                            for dy in 0..k {
                                for dx in 0..k {
                                    let (iy, ix) = ((stride * oy + dy) as isize - p as isize, (stride * ox + dx) as isize - p as isize);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = f32_of(bf16(x[(ci * h + iy as usize) * w + ix as usize])) as f64;
                                    let wv = f32_of(bf16(wt[((oc * c_in + ci) * k + dy) * k + dx])) as f64;
                                    sum += xv * wv;
                                    mag += (xv * wv).abs();
                                }
                            }
                        }
                        let g = got[(oy * w_out + ox) * c_out + oc] as f64;
                        worst = worst.max((g - sum).abs() / mag.max(1e-9));
                    }
                }
            }
            // f32 sums of exact products: the error is f32 rounding of the partial sums.
            assert!(worst < 1e-5, "{c_in}->{c_out} stride {stride}: relative error {worst}");
        }
    }
}

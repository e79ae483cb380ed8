//! GDN as one autodiff operation for training on the flex CPU backend: the fused forward of
//! coding ([`crate::gdn::normalise`]), keeping the square root per element, and a hand-written backward pass, instead of burn
//! recording (and replaying) square, product, add, square root and division one by one.
//!
//! With r = √(β + γ·x²) per pixel and channel (γ: `[c, c]`, output channel first):
//! - GDN, y = x / r: t = dy·x / r³; dx = dy / r − x ⊙ (γᵀ t); dβ = −½ Σ t; dγ = −½ t · (x²)ᵀ.
//! - inverse GDN, y = x·r: u = dy·x / r; dx = dy·r + x ⊙ (γᵀ u); dβ = ½ Σ u; dγ = ½ u · (x²)ᵀ.
//!
//! (sums over the batch and the pixels). Checked against burn's autodiff of the matrix form.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::DType;
use ndarray::{Array2, ArrayView2, ShapeBuilder};
use rayon::prelude::*;

use crate::flex_ops::{slice, tensor, Ad};

/// What the backward pass needs, as plain values.
#[derive(Clone, Debug)]
struct State {
    /// Contiguous (cloning one only counts a reference).
    x: FlexTensor,
    root: Vec<f32>,
    gamma: Vec<f32>,
    dims: [usize; 4],
    inverse: bool,
}

#[derive(Debug)]
struct GdnBackward;

fn values(t: &FlexTensor) -> Vec<f32> {
    slice(&t.to_contiguous()).to_vec()
}

impl Backward<Flex, 3> for GdnBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_beta, node_gamma] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let State { x, root, gamma, dims, inverse } = ops.state;
        let (dx, dbeta, dgamma) = backward_blocked(slice(&x), &root, slice(&dy), &gamma, dims, inverse);
        let c = dims[1];
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, &dims));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, &[c]));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma.into_raw_vec_and_offset().0, &[c, c]));
        }
    }
}

/// Pixels per block of the backward pass: x, the root, dy, v, γᵀv and x² of one block stay in
/// the core's cache (6 x 64 channels x 512 x 4 bytes = 768 KiB at N = 64).
const BLOCK: usize = 512;

/// dx, dβ and dγ (module comment) per block of `BLOCK` pixels of one image, in parallel: the
/// element-wise steps and the two products of a block run while it is in cache, instead of
/// one pass over whole images per step. The blocks' partial dβ and dγ are added in block
/// order, so the sums do not depend on the number of threads.
fn backward_blocked(x: &[f32], root: &[f32], dy: &[f32], gamma: &[f32], dims: [usize; 4], inverse: bool) -> (Vec<f32>, Vec<f32>, Array2<f32>) {
    backward_blocked_using(crate::direct::available(), x, root, dy, gamma, dims, inverse)
}

/// [`backward_blocked`] with both products (γᵀ·v and v·(x²)ᵀ) through the direct product's
/// micro-kernel (`use_direct`) or through ndarray's matrix product.
fn backward_blocked_using(use_direct: bool, x: &[f32], root: &[f32], dy: &[f32], gamma: &[f32], dims: [usize; 4], inverse: bool) -> (Vec<f32>, Vec<f32>, Array2<f32>) {
    let [_, c, h, w] = dims;
    let hw = h * w;
    let gamma = ArrayView2::from_shape((c, c), gamma).expect("gamma [c, c]");
    let gamma_t = gamma.t();
    let packed_t = use_direct.then(|| crate::direct::Packed::new(gamma_t));
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut dx = crate::zeroed(x.len());
    let per_image = hw.div_ceil(BLOCK);
    // Each block's slice of every channel row of dx.
    let blocks = crate::gdn::pixel_blocks(&mut dx, dims, BLOCK);
    // Per worker: v, γᵀv (ndarray path; the direct path returns it in its own buffers) and x² of
    // one block (channel rows BLOCK apart, a multiple of the direct product's runs), (x²)ᵀ
    // (pixel rows `ldt` apart) and the direct product's buffers.
    let ldt = c.div_ceil(crate::direct::NR) * crate::direct::NR;
    // v and (x²)ᵀ, the runs of the direct products, start on a cache line (16 floats of slack).
    let scratch = || (vec![0f32; c * BLOCK + 16], vec![0f32; c * BLOCK], vec![0f32; c * BLOCK], vec![0f32; BLOCK * ldt + 16], crate::direct::Buffers::default());
    let parts: Vec<(Vec<f32>, Array2<f32>)> = blocks
        .into_par_iter()
        .enumerate()
        .map_init(scratch, |(vb, bb, sb, tb, bufs), (index, mut dx_rows)| {
            let (vb, tb) = (crate::direct::aligned(vb, c * BLOCK), crate::direct::aligned(tb, BLOCK * ldt));
            let n = dx_rows.first().map_or(0, |r| r.len());
            let start = |ch: usize| ((index / per_image) * c + ch) * hw + (index % per_image) * BLOCK;
            // v = t (GDN) or u (inverse), and x².
            for ch in 0..c {
                let at = start(ch);
                let (xs, rs, ds) = (&x[at..at + n], &root[at..at + n], &dy[at..at + n]);
                let (vs, sq) = (&mut vb[ch * BLOCK..ch * BLOCK + n], &mut sb[ch * BLOCK..ch * BLOCK + n]);
                for ((((v, q), &x), &r), &d) in vs.iter_mut().zip(sq.iter_mut()).zip(xs).zip(rs).zip(ds) {
                    *v = if inverse { d * x / r } else { d * x / (r * r * r) };
                    *q = x * x;
                }
            }
            let v = block_rows(vb, c, n);
            let dbeta: Vec<f32> = v.rows().into_iter().map(|row| 0.5 * sign * row.sum()).collect();
            let mut dgamma = Array2::<f32>::zeros((c, c));
            // γᵀv, rows `ld` apart.
            let (back, ld) = match &packed_t {
                Some(packed) => {
                    // dγ = ½·sign · v · (x²)ᵀ: v as the packed left side, (x²)ᵀ as the rows.
                    for (ch, sq) in sb.chunks(BLOCK).enumerate() {
                        for (p, &q) in sq[..n].iter().enumerate() {
                            tb[p * ldt + ch] = q;
                        }
                    }
                    let (prod, ldp) = crate::direct::matmul(&crate::direct::Packed::new(v), tb, ldt, c, bufs);
                    for (g, row) in dgamma.rows_mut().into_iter().zip(prod.chunks(ldp)) {
                        for (g, &p) in g.into_iter().zip(row) {
                            *g = 0.5 * sign * p;
                        }
                    }
                    crate::direct::matmul(packed, vb, BLOCK, n, bufs)
                }
                None => {
                    let mut back = ndarray::ArrayViewMut2::from_shape((c, n), &mut bb[..c * n]).expect("block of γᵀv");
                    ndarray::linalg::general_mat_mul(1.0, &gamma_t, &v, 0.0, &mut back);
                    ndarray::linalg::general_mat_mul(0.5 * sign, &v, &block_rows(sb, c, n).t(), 0.0, &mut dgamma);
                    (&bb[..], n)
                }
            };
            for (ch, out) in dx_rows.iter_mut().enumerate() {
                let at = start(ch);
                let (xs, rs, ds) = (&x[at..at + n], &root[at..at + n], &dy[at..at + n]);
                let back = &back[ch * ld..ch * ld + n];
                for ((((o, &x), &r), &d), &g) in out.iter_mut().zip(xs).zip(rs).zip(ds).zip(back) {
                    *o = (if inverse { d * r } else { d / r }) + sign * x * g;
                }
            }
            (dbeta, dgamma)
        })
        .collect();
    let mut dbeta = vec![0f32; c];
    let mut dgamma = Array2::<f32>::zeros((c, c));
    for (db, dg) in &parts {
        dbeta.iter_mut().zip(db).for_each(|(a, b)| *a += b);
        dgamma += dg;
    }
    (dx, dbeta, dgamma)
}

/// The first `n` values of each of the `c` rows of a block buffer (rows `BLOCK` apart).
fn block_rows(buf: &[f32], c: usize, n: usize) -> ArrayView2<'_, f32> {
    let len = if c == 0 { 0 } else { (c - 1) * BLOCK + n };
    ArrayView2::from_shape((c, n).strides((BLOCK, 1)), &buf[..len]).expect("block rows")
}

/// `x / √(β + γ·x²)` (or `x · √…` with `inverse`) as one recorded operation, when all three
/// tensors live on flex with autodiff and hold f32; `None` otherwise (the caller then uses
/// burn's ops).
pub(crate) fn gdn(x: &Tensor<4>, beta: &Tensor<1>, gamma: &Tensor<2>, inverse: bool) -> Option<Tensor<4>> {
    let c = x.dims()[1];
    if [x.dtype(), beta.dtype(), gamma.dtype()].iter().any(|&d| d != DType::F32) || beta.dims() != [c] || gamma.dims() != [c, c] {
        return None;
    }
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let ba = beta.clone().try_into_primitive::<Ad>().ok()?;
    let ga = gamma.clone().try_into_primitive::<Ad>().ok()?;
    let dims = x.dims();
    let xs = xa.primitive().to_contiguous();
    let bs = values(ba.primitive());
    let gs = values(ga.primitive());
    let gview = ArrayView2::from_shape((c, c), &gs[..]).expect("gamma [c, c]");
    let mut y = crate::copied(slice(&xs));
    let mut root = crate::zeroed(y.len());
    crate::gdn::normalise(&mut y, Some(&mut root), dims, &bs, gview, inverse);
    let out = tensor(y, &dims);
    let out = match GdnBackward.prepare::<NoCheckpointing>([xa.node(), ba.node(), ga.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(State { x: xs, root, gamma: gs, dims, inverse }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_and_ndarray_backward_passes_agree() {
        let mut rng = crate::TestRng::new(17);
        // Two images, a last block shorter than BLOCK; channels not a multiple of the tiles, and
        // (40) enough of them for the dγ product's rows to take the two-vector AVX-512 tile.
        for c in [13, 40] {
            let dims = [2, c, 9, 70];
            let len = dims.iter().product();
            let x = rng.values(len, -2.0, 2.0);
            let root: Vec<f32> = rng.values(len, 0.5, 2.0);
            let dy = rng.values(len, -1.0, 1.0);
            let gamma = rng.values(c * c, 0.0, 0.2);
            for inverse in [false, true] {
                let (dx1, db1, dg1) = backward_blocked_using(true, &x, &root, &dy, &gamma, dims, inverse);
                let (dx2, db2, dg2) = backward_blocked_using(false, &x, &root, &dy, &gamma, dims, inverse);
                let close = |a: &[f32], b: &[f32], tolerance: f32, what: &str| {
                    for (i, (p, q)) in a.iter().zip(b).enumerate() {
                        assert!((p - q).abs() <= tolerance * (1.0 + q.abs()), "{what} {i}: {p} vs {q} (c {c}, inverse {inverse})");
                    }
                };
                close(&dx1, &dx2, 1e-5, "dx");
                // dβ is computed before the paths part: a check of the harness, not of the products.
                assert_eq!(db1, db2, "dβ");
                // dγ: sums of 1,260 products of up to ~60 in magnitude, added in another order.
                close(dg1.as_slice().unwrap(), dg2.as_slice().unwrap(), 1e-4, "dγ");
            }
        }
    }
}

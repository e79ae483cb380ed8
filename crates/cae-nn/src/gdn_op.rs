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
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::flex_ops::{slice, tensor, Ad};

/// What the backward pass needs, as plain values.
#[derive(Clone, Debug)]
struct State {
    x: Vec<f32>,
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
        let dy = values(&grads.consume::<Flex>(&ops.node));
        let State { x, root, gamma, dims, inverse } = ops.state;
        let (dx, dbeta, dgamma) = backward_blocked(&x, &root, &dy, &gamma, dims, inverse);
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
    let [_, c, h, w] = dims;
    let hw = h * w;
    let gamma = ArrayView2::from_shape((c, c), gamma).expect("gamma [c, c]");
    let gamma_t = gamma.t();
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut dx = vec![0f32; x.len()];
    let per_image = hw.div_ceil(BLOCK);
    // Each block's slice of every channel row of dx.
    let blocks = crate::gdn::pixel_blocks(&mut dx, dims, BLOCK);
    let scratch = || (vec![0f32; c * BLOCK], vec![0f32; c * BLOCK], vec![0f32; c * BLOCK]);
    let parts: Vec<(Vec<f32>, Array2<f32>)> = blocks
        .into_par_iter()
        .enumerate()
        .map_init(scratch, |(vb, bb, sb), (index, mut dx_rows)| {
            let n = dx_rows.first().map_or(0, |r| r.len());
            let start = |ch: usize| ((index / per_image) * c + ch) * hw + (index % per_image) * BLOCK;
            // v = t (GDN) or u (inverse), and x².
            for ch in 0..c {
                let at = start(ch);
                let (xs, rs, ds) = (&x[at..at + n], &root[at..at + n], &dy[at..at + n]);
                let (vs, sq) = (&mut vb[ch * n..(ch + 1) * n], &mut sb[ch * n..(ch + 1) * n]);
                for ((((v, q), &x), &r), &d) in vs.iter_mut().zip(sq.iter_mut()).zip(xs).zip(rs).zip(ds) {
                    *v = if inverse { d * x / r } else { d * x / (r * r * r) };
                    *q = x * x;
                }
            }
            let v = ArrayView2::from_shape((c, n), &vb[..c * n]).expect("block of v");
            let sq = ArrayView2::from_shape((c, n), &sb[..c * n]).expect("block of x²");
            let mut back = ndarray::ArrayViewMut2::from_shape((c, n), &mut bb[..c * n]).expect("block of γᵀv");
            ndarray::linalg::general_mat_mul(1.0, &gamma_t, &v, 0.0, &mut back);
            for (ch, out) in dx_rows.iter_mut().enumerate() {
                let at = start(ch);
                let (xs, rs, ds) = (&x[at..at + n], &root[at..at + n], &dy[at..at + n]);
                let back = back.row(ch);
                let back = back.as_slice().expect("contiguous row");
                for ((((o, &x), &r), &d), &g) in out.iter_mut().zip(xs).zip(rs).zip(ds).zip(back) {
                    *o = (if inverse { d * r } else { d / r }) + sign * x * g;
                }
            }
            let dbeta: Vec<f32> = v.rows().into_iter().map(|row| 0.5 * sign * row.sum()).collect();
            let mut dgamma = Array2::<f32>::zeros((c, c));
            ndarray::linalg::general_mat_mul(0.5 * sign, &v, &sq.t(), 0.0, &mut dgamma);
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
    let xs = values(xa.primitive());
    let bs = values(ba.primitive());
    let gs = values(ga.primitive());
    let gview = ArrayView2::from_shape((c, c), &gs[..]).expect("gamma [c, c]");
    let mut y = xs.clone();
    let mut root = vec![0f32; xs.len()];
    crate::gdn::normalise(&mut y, Some(&mut root), dims, &bs, gview, inverse);
    let out = tensor(y, &dims);
    let out = match GdnBackward.prepare::<NoCheckpointing>([xa.node(), ba.node(), ga.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(State { x: xs, root, gamma: gs, dims, inverse }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(out))
}

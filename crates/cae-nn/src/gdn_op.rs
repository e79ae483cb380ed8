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
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

type Ad = Autodiff<Flex>;

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
    let t = t.to_contiguous();
    t.as_slice::<f32>().expect("f32 tensor").to_vec()
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape.to_vec()))
}

impl Backward<Flex, 3> for GdnBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_beta, node_gamma] = ops.parents;
        let dy = values(&grads.consume::<Flex>(&ops.node));
        let State { x, root, gamma, dims, inverse } = ops.state;
        let [_, c, h, w] = dims;
        let hw = h * w;
        let gamma = ArrayView2::from_shape((c, c), &gamma[..]).expect("gamma [c, c]");
        let gamma_t = gamma.t();
        // Per image: dx, and its contributions to dβ and dγ.
        let parts: Vec<(Vec<f32>, Vec<f32>, Array2<f32>)> = x
            .par_chunks(c * hw)
            .zip(root.par_chunks(c * hw))
            .zip(dy.par_chunks(c * hw))
            .map(|((xi, ri), di)| {
                // v = t (GDN) or u (inverse), as in the module comment.
                let v: Vec<f32> = xi
                    .iter()
                    .zip(ri)
                    .zip(di)
                    .map(|((&x, &r), &d)| if inverse { d * x / r } else { d * x / (r * r * r) })
                    .collect();
                let v = Array2::from_shape_vec((c, hw), v).expect("v planes");
                let mut back = Array2::<f32>::zeros((c, hw));
                ndarray::linalg::general_mat_mul(1.0, &gamma_t, &v, 0.0, &mut back);
                let sign = if inverse { 1.0 } else { -1.0 };
                let dx: Vec<f32> = xi
                    .iter()
                    .zip(ri)
                    .zip(di)
                    .zip(back.iter())
                    .map(|(((&x, &r), &d), &g)| (if inverse { d * r } else { d / r }) + sign * x * g)
                    .collect();
                let dbeta: Vec<f32> = v.sum_axis(Axis(1)).iter().map(|s| 0.5 * sign * s).collect();
                let sq = ArrayView2::from_shape((c, hw), xi).expect("image planes").mapv(|x| x * x);
                let mut dgamma = Array2::<f32>::zeros((c, c));
                ndarray::linalg::general_mat_mul(0.5 * sign, &v, &sq.t(), 0.0, &mut dgamma);
                (dx, dbeta, dgamma)
            })
            .collect();
        if let Some(node) = node_x {
            let dx: Vec<f32> = parts.iter().flat_map(|p| p.0.iter().copied()).collect();
            grads.register::<Flex>(node.id, tensor(dx, &dims));
        }
        if let Some(node) = node_beta {
            let mut dbeta = vec![0f32; c];
            for p in &parts {
                dbeta.iter_mut().zip(&p.1).for_each(|(a, b)| *a += b);
            }
            grads.register::<Flex>(node.id, tensor(dbeta, &[c]));
        }
        if let Some(node) = node_gamma {
            let mut dgamma = Array2::<f32>::zeros((c, c));
            for p in &parts {
                dgamma += &p.2;
            }
            grads.register::<Flex>(node.id, tensor(dgamma.into_raw_vec_and_offset().0, &[c, c]));
        }
    }
}

/// `x / √(β + γ·x²)` (or `x · √…` with `inverse`) as one recorded operation, when all three
/// tensors live on flex with autodiff; `None` otherwise (the caller then uses burn's ops).
pub(crate) fn gdn(x: &Tensor<4>, beta: &Tensor<1>, gamma: &Tensor<2>, inverse: bool) -> Option<Tensor<4>> {
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let ba = beta.clone().try_into_primitive::<Ad>().ok()?;
    let ga = gamma.clone().try_into_primitive::<Ad>().ok()?;
    let dims = x.dims();
    let c = dims[1];
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

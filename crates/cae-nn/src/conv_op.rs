//! Convolutions and transposed convolutions as autodiff operations for training on the flex
//! CPU backend, built on the kernels of [`crate::fastconv`]. A convolution and a transposed
//! convolution with the same weights are each other's adjoint, so:
//! - convolution: dX = transposed convolution of dY (output padding chosen to give X's size),
//!   dW = [`weight_grad`] (dY against X);
//! - transposed convolution: dX = convolution of dY, dW = [`weight_grad`] (X against dY);
//! - both: db = Σ dY over the batch and the pixels.
//!
//! burn computes the weight gradient as a convolution over swapped batch and channel axes,
//! behind single-threaded transposes; here it is one matrix product per band of rows.
//! Checked against burn's own operations and their autodiff in the tests.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::ops::ConvTransposeOptions;
use burn::tensor::DType;

use crate::fastconv::{conv2d, conv_transpose2d, weight_grad, MIN_PHASE_CHANNELS};
use crate::flex_ops::{slice, tensor, Ad};

/// Geometry of one square k x k layer with equal strides and paddings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// Output padding of a transposed convolution (0 for a convolution).
    pub pad_out: usize,
}

/// What the backward pass needs: the input and the weights (contiguous flex tensors; cloning
/// one only counts a reference).
#[derive(Clone, Debug)]
struct State {
    x: FlexTensor,
    weight: FlexTensor,
    x_dims: [usize; 4],
    w_dims: [usize; 4],
    y_dims: [usize; 4],
    geometry: Geometry,
    transposed: bool,
}

#[derive(Debug)]
struct ConvBackward;

/// Output padding that makes the transposed convolution of a convolution's output the size of
/// its input, per axis: `(n + 2·pad − k) mod stride`.
fn adjoint_pad_out(n: usize, g: Geometry) -> usize {
    (n + 2 * g.pad - g.k) % g.stride
}

impl Backward<Flex, 3> for ConvBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let dy = slice(&dy);
        let State { x, weight, x_dims, w_dims, y_dims, geometry: g, transposed } = ops.state;
        let c_in = x_dims[1];
        if let Some(node) = node_x {
            let (dx, dims) = if transposed {
                conv2d(dy, y_dims, slice(&weight), None, c_in, g.k, g.stride, g.pad)
            } else {
                let pad_out = adjoint_pad_out(x_dims[2], g);
                conv_transpose2d(dy, y_dims, slice(&weight), None, c_in, g.k, g.stride, g.pad, pad_out)
            };
            assert_eq!(dims, x_dims, "the adjoint gives the input's size");
            grads.register::<Flex>(node.id, tensor(dx, &x_dims));
        }
        if let Some(node) = node_w {
            let dw = if transposed {
                weight_grad(slice(&x), x_dims, dy, y_dims, g.k, g.stride, g.pad)
            } else {
                weight_grad(dy, y_dims, slice(&x), x_dims, g.k, g.stride, g.pad)
            };
            grads.register::<Flex>(node.id, tensor(dw, &w_dims));
        }
        if let Some(node) = node_b {
            let [_, c_out, h, w] = y_dims;
            let mut db = vec![0f64; c_out];
            for image in dy.chunks(c_out * h * w) {
                for (sum, plane) in db.iter_mut().zip(image.chunks(h * w)) {
                    *sum += plane.iter().map(|&v| v as f64).sum::<f64>();
                }
            }
            grads.register::<Flex>(node.id, tensor(db.into_iter().map(|v| v as f32).collect(), &[c_out]));
        }
    }
}

/// A convolution (`transposed == false`, weights `[c_out, c_in, k, k]`) or transposed
/// convolution (weights `[c_in, c_out, k, k]`) with bias, as one recorded operation, when all
/// three tensors live on flex with autodiff, hold f32 and have shapes that suit the kernels;
/// `None` otherwise (the caller then uses burn's module).
pub(crate) fn conv(x: &Tensor<4>, weight: &Tensor<4>, bias: &Tensor<1>, g: Geometry, transposed: bool) -> Option<Tensor<4>> {
    let x_dims = x.dims();
    let [b, c_in, h, w] = x_dims;
    let w_dims = weight.dims();
    let c_out = if transposed { w_dims[1] } else { w_dims[0] };
    let f32s = [x.dtype(), weight.dtype(), bias.dtype()].iter().all(|&d| d == DType::F32);
    let fits = f32s
        && bias.dims() == [c_out]
        && b > 0
        && c_in > 0
        && h > 0
        && w > 0
        && g.stride > 0
        && w_dims == if transposed { [c_in, c_out, g.k, g.k] } else { [c_out, c_in, g.k, g.k] }
        && if transposed {
            2 * g.pad < g.k + g.pad_out && g.pad_out < g.stride
        } else {
            // The adjoint (the input gradient) is a transposed convolution with one output
            // padding for both axes.
            h + 2 * g.pad >= g.k
                && w + 2 * g.pad >= g.k
                && adjoint_pad_out(h, g) == adjoint_pad_out(w, g)
                && 2 * g.pad < g.k + adjoint_pad_out(h, g)
        };
    if !fits {
        return None;
    }
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let wa = weight.clone().try_into_primitive::<Ad>().ok()?;
    let ba = bias.clone().try_into_primitive::<Ad>().ok()?;
    let xs = xa.primitive().to_contiguous();
    let ws = wa.primitive().to_contiguous();
    let bs = ba.primitive().to_contiguous();
    let (y, y_dims) = if !transposed {
        let (y, dims) = conv2d(slice(&xs), x_dims, slice(&ws), Some(slice(&bs)), c_out, g.k, g.stride, g.pad);
        (tensor(y, &dims), dims)
    } else if c_out < MIN_PHASE_CHANNELS {
        // Few output channels: burn-flex's own form is faster (see `deconv_forward`).
        let [s, p, po] = [g.stride, g.pad, g.pad_out];
        let options = ConvTransposeOptions::new([s, s], [p, p], [po, po], [1, 1], 1);
        let y = <Flex as ModuleOps<Flex>>::conv_transpose2d(xs.clone(), ws.clone(), Some(bs), options);
        let grow = |n: usize| (n - 1) * s + g.k + po - 2 * p;
        (y.to_contiguous(), [b, c_out, grow(h), grow(w)])
    } else {
        let (y, dims) = conv_transpose2d(slice(&xs), x_dims, slice(&ws), Some(slice(&bs)), c_out, g.k, g.stride, g.pad, g.pad_out);
        (tensor(y, &dims), dims)
    };
    let out = match ConvBackward.prepare::<NoCheckpointing>([xa.node(), wa.node(), ba.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(State { x: xs, weight: ws, x_dims, w_dims, y_dims, geometry: g, transposed }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Ad>(out))
}

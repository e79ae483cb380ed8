//! Convolutions and transposed convolutions as autodiff operations for training on the flex
//! CPU backend, built on the kernels of [`crate::fastconv`]. A convolution and a transposed
//! convolution with the same weights are each other's adjoint, so:
//! - convolution: dX = transposed convolution of dY (output padding chosen to give X's size),
//!   dW = [`weight_grad`] (dY against X);
//! - transposed convolution: dX = convolution of dY, dW = [`weight_grad`] (X against dY);
//! - both: db = Σ dY over the batch and the pixels;
//! - with a ReLU fused into the forward pass, dY first becomes zero where the output was not
//!   positive (burn's `relu_backward`), in a parallel pass before all three.
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

use rayon::prelude::*;

use crate::fastconv::{conv2d_relu, conv_transpose2d, conv_transpose2d_relu, phases_fit, weight_grad};
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
    /// The output, where a ReLU is fused into the operation.
    relu_out: Option<FlexTensor>,
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
        let State { x, weight, x_dims, w_dims, y_dims, geometry: g, transposed, relu_out } = ops.state;
        let masked = relu_out.map(|y| relu_backward(slice(&dy), slice(&y)));
        let dy = masked.as_deref().unwrap_or(slice(&dy));
        let c_in = x_dims[1];
        if let Some(node) = node_x {
            let (dx, dims) = if transposed {
                forward_conv(dy, y_dims, slice(&weight), None, c_in, g, false)
            } else {
                let g = Geometry { pad_out: adjoint_pad_out(x_dims[2], g), ..g };
                tiles_transposed(dy, y_dims, slice(&weight), None, c_in, g, false)
                    .unwrap_or_else(|| conv_transpose2d(dy, y_dims, slice(&weight), None, c_in, g.k, g.stride, g.pad, g.pad_out))
            };
            assert_eq!(dims, x_dims, "the adjoint gives the input's size");
            grads.register::<Flex>(node.id, tensor(dx, &x_dims));
        }
        if let Some(node) = node_w {
            let (small, big) = if transposed { ((slice(&x), x_dims), (dy, y_dims)) } else { ((dy, y_dims), (slice(&x), x_dims)) };
            let dw = crate::amx_train::if_asked(|| crate::amx_train::weight_grad(small.0, small.1, big.0, big.1, g.k, g.stride, g.pad))
                .unwrap_or_else(|| weight_grad(small.0, small.1, big.0, big.1, g.k, g.stride, g.pad));
            grads.register::<Flex>(node.id, tensor(dw, &w_dims));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, tensor(bias_grad(dy, y_dims), &[y_dims[1]]));
        }
    }
}

/// A convolution with bias (`None`: none) and ReLU where `relu`: on the AMX tiles where
/// training asked for bf16 products ([`crate::set_bf16_products`]) and the shapes suit them,
/// else the f32 kernels.
fn forward_conv(x: &[f32], dims: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, g: Geometry, relu: bool) -> (Vec<f32>, [usize; 4]) {
    crate::amx_train::if_asked(|| crate::amx_train::conv_batch(x, dims, weight, bias, c_out, g.k, g.stride, g.pad, relu))
        .unwrap_or_else(|| conv2d_relu(x, dims, weight, bias, c_out, g.k, g.stride, g.pad, relu))
}

/// A transposed convolution on the AMX tiles, where training asked for bf16 products and the
/// shapes suit them; `None` otherwise.
fn tiles_transposed(x: &[f32], dims: [usize; 4], weight: &[f32], bias: Option<&[f32]>, c_out: usize, g: Geometry, relu: bool) -> Option<(Vec<f32>, [usize; 4])> {
    crate::amx_train::if_asked(|| crate::amx_train::conv_transpose_batch(x, dims, weight, bias, c_out, g.k, g.stride, g.pad, g.pad_out, relu))
}

/// Values per piece of the parallel element-wise passes.
const CHUNK: usize = 1 << 14;

/// The gradient of a ReLU's input from that of its output `dy`: zero where the output `y` is
/// not positive (as burn's `relu_backward`: a NaN output passes the gradient), in parallel.
fn relu_backward(dy: &[f32], y: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len(), y.len(), "one gradient per output");
    let mut out = crate::zeroed(dy.len());
    out.par_chunks_mut(CHUNK).zip(dy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK))).for_each(|(o, (d, y))| {
        crate::direct::relu_grad(o, d, y);
    });
    out
}

/// db = Σ dY over the batch and the pixels (`dy`: `[b, c, h, w]`), one channel per task,
/// each plane summed in f64 over 8 interleaved partial sums, planes in batch order: the same
/// bits for any number of threads.
fn bias_grad(dy: &[f32], [b, c, h, w]: [usize; 4]) -> Vec<f32> {
    let plane = h * w;
    assert_eq!(dy.len(), b * c * plane, "dY [b, c, h, w]");
    let plane_sum = |p: &[f32]| -> f64 {
        let mut acc = [0f64; 8];
        let chunks = p.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
        for ch in chunks {
            for (a, &v) in acc.iter_mut().zip(ch) {
                *a += v as f64;
            }
        }
        acc.iter().sum::<f64>() + tail
    };
    (0..c)
        .into_par_iter()
        .map(|ci| (0..b).map(|i| plane_sum(&dy[(i * c + ci) * plane..][..plane])).sum::<f64>() as f32)
        .collect()
}

/// A convolution (`transposed == false`, weights `[c_out, c_in, k, k]`) or transposed
/// convolution (weights `[c_in, c_out, k, k]`) with bias, then a ReLU where `relu`, as one
/// recorded operation, when all three tensors live on flex with autodiff, hold f32 and have
/// shapes that suit the kernels; `None` otherwise (the caller then uses burn's module).
pub(crate) fn conv(x: &Tensor<4>, weight: &Tensor<4>, bias: &Tensor<1>, g: Geometry, transposed: bool, relu: bool) -> Option<Tensor<4>> {
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
        let (y, dims) = forward_conv(slice(&xs), x_dims, slice(&ws), Some(slice(&bs)), c_out, g, relu);
        (tensor(y, &dims), dims)
    } else if let Some((y, dims)) = tiles_transposed(slice(&xs), x_dims, slice(&ws), Some(slice(&bs)), c_out, g, relu) {
        (tensor(y, &dims), dims)
    } else if !phases_fit(c_out) {
        // A few output channels, more than the few-row tile takes: burn-flex's own form is
        // faster (see `deconv_values`).
        let [s, p, po] = [g.stride, g.pad, g.pad_out];
        let options = ConvTransposeOptions::new([s, s], [p, p], [po, po], [1, 1], 1);
        let y = <Flex as ModuleOps<Flex>>::conv_transpose2d(xs.clone(), ws.clone(), Some(bs), options);
        let y = if relu { <Flex as burn::backend::ops::ActivationOps<Flex>>::relu(y) } else { y };
        let grow = |n: usize| (n - 1) * s + g.k + po - 2 * p;
        (y.to_contiguous(), [b, c_out, grow(h), grow(w)])
    } else {
        let (y, dims) = conv_transpose2d_relu(slice(&xs), x_dims, slice(&ws), Some(slice(&bs)), c_out, g.k, g.stride, g.pad, g.pad_out, relu);
        (tensor(y, &dims), dims)
    };
    let out = match ConvBackward.prepare::<NoCheckpointing>([xa.node(), wa.node(), ba.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let relu_out = relu.then(|| y.clone());
            prep.finish(State { x: xs, weight: ws, x_dims, w_dims, y_dims, geometry: g, transposed, relu_out }, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Ad>(out))
}

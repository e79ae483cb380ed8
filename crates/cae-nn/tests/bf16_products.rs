//! Training's convolutions with their products on the AMX tiles (`cae_nn::set_bf16_products`)
//! against the f32 kernels, through the autodiff operations that training records: outputs,
//! input gradients and weight gradients of a convolution and of a transposed convolution
//! agree within bf16's rounding. Its own test binary: the switch is process-wide.

use burn::prelude::*;

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec_as().expect("f32 values")
}

/// (output, input gradient, weight gradient) of `layer` on `x`, with the products on the tiles
/// or not; the loss weights each output by a fixed pattern so that every gradient differs.
fn run(tiles: bool, layer: &dyn Fn(Tensor<4>) -> (Tensor<4>, Tensor<4>), x: &Tensor<4>) -> [Vec<f32>; 3] {
    cae_nn::set_bf16_products(tiles);
    let x = x.clone().require_grad();
    let (y, w) = layer(x.clone());
    let n = y.dims().iter().product::<usize>();
    let pattern: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let pattern = Tensor::<4>::from_data(TensorData::new(pattern, y.dims()), &y.device());
    let grads = (y.clone() * pattern).sum().backward();
    let dx = x.grad(&grads).expect("input gradient");
    let dw = w.grad(&grads).expect("weight gradient");
    cae_nn::set_bf16_products(false);
    [values(y.inner()), values(dx), values(dw)]
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    let spread = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / spread
}

#[test]
fn bf16_products_match_the_f32_kernels_in_training() {
    let dev = Device::flex().autodiff();
    dev.seed(3);
    cae_nn::set_bf16_products(true);
    if !cae_nn::bf16_products() {
        eprintln!("no AMX here: the products stay f32");
        return;
    }
    let conv = cae_nn::conv(64, 64, 5, 2, &dev);
    let deconv = cae_nn::deconv(64, 32, 5, &dev);
    let x = Tensor::<4>::random([2, 64, 20, 24], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
    type Layer<'a> = &'a dyn Fn(Tensor<4>) -> (Tensor<4>, Tensor<4>);
    let conv_layer = |x| (cae_nn::conv_forward(&conv, x), conv.weight.val());
    let deconv_layer = |x| (cae_nn::deconv_forward(&deconv, x), deconv.weight.val());
    let conv_relu = |x| (cae_nn::conv_relu_forward(&conv, x), conv.weight.val());
    let deconv_relu = |x| (cae_nn::deconv_relu_forward(&deconv, x), deconv.weight.val());
    // With a ReLU only the output is compared: where an output lies within bf16's rounding
    // of zero the two runs mask its gradient differently, and one such position moves a
    // gradient by several percent.
    let layers: [(&str, Layer<'_>, usize); 4] =
        [("convolution", &conv_layer, 3), ("transposed convolution", &deconv_layer, 3), ("convolution + ReLU", &conv_relu, 1), ("transposed convolution + ReLU", &deconv_relu, 1)];
    for (name, layer, compared) in layers {
        let (tiles, f32s) = (run(true, layer, &x), run(false, layer, &x));
        for (what, (a, b)) in ["output", "input gradient", "weight gradient"].iter().zip(tiles.iter().zip(&f32s)).take(compared) {
            assert_eq!(a.len(), b.len(), "{name} {what}: sizes");
            let e = worst(a, b);
            // bf16 keeps 8 significant bits: each product is off by up to 2^-8 relative.
            assert!(e < 2e-2, "{name} {what}: off by {e} of the spread");
            // ... and it is not the same computation (the switch took effect).
            assert!(a != b, "{name} {what}: the same bits with and without the tiles");
        }
    }
}

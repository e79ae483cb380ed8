use burn::module::Param;
use burn::prelude::*;

const PEDESTAL: f32 = 1.0 / (1 << 18) as f32;
const BETA_MIN: f32 = 1e-6;

/// Generalized divisive normalization (Ballé et al. 2016):
/// `y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)`, or with `inverse`, a multiplication.
/// beta and gamma are kept non-negative by storing their (pedestal-shifted) square roots.
#[derive(Module, Debug)]
pub struct Gdn {
    pub beta: Param<Tensor<1>>,
    pub gamma: Param<Tensor<2>>,
    pub inverse: bool,
}

impl Gdn {
    /// beta = 1, gamma = 0.1·I.
    pub fn new(channels: usize, inverse: bool, device: &Device) -> Self {
        let beta = vec![(1.0 + PEDESTAL).sqrt(); channels];
        let mut gamma = vec![PEDESTAL.sqrt(); channels * channels];
        for i in 0..channels {
            gamma[i * channels + i] = (0.1 + PEDESTAL).sqrt();
        }
        Gdn {
            beta: Param::from_tensor(Tensor::from_data(TensorData::new(beta, [channels]), device)),
            gamma: Param::from_tensor(Tensor::from_data(TensorData::new(gamma, [channels, channels]), device)),
            inverse,
        }
    }

    /// The lower bounds of the stored (reparametrised) beta and gamma.
    fn bounds() -> (f32, f32) {
        ((BETA_MIN + PEDESTAL).sqrt(), PEDESTAL.sqrt())
    }

    /// beta and gamma after the reparametrisation: `[c]` and `[c_out, c_in]`.
    fn effective(&self) -> (Tensor<1>, Tensor<2>) {
        let (beta_bound, gamma_bound) = Self::bounds();
        let beta = crate::lower_bound(self.beta.val(), beta_bound).square() - PEDESTAL;
        let gamma = crate::lower_bound(self.gamma.val(), gamma_bound).square() - PEDESTAL;
        (beta, gamma)
    }

    /// Raise the stored beta and gamma to their lower bounds. Training calls this after every
    /// optimiser step (projected gradient descent): the bounds pass gradients through, so
    /// without it a parameter that the loss pushes down drifts ever further below its bound,
    /// with no effect on the output, and needs as many steps to come back once the loss
    /// wants it up (CompressAI's `LowerBound` blocks such pushes instead).
    pub fn project(self) -> Self {
        let (beta_bound, gamma_bound) = Self::bounds();
        fn raise<const D: usize>(t: Tensor<D>, bound: f32) -> Tensor<D> {
            let t = t.clamp_min(bound).detach();
            if t.is_autodiff() { t.require_grad() } else { t }
        }
        Gdn {
            beta: self.beta.map(|t| raise(t, beta_bound)),
            gamma: self.gamma.map(|t| raise(t, gamma_bound)),
            inverse: self.inverse,
        }
    }

    /// The normaliser `sqrt(beta + gamma · x²)` is a 1x1 convolution of x², computed as one
    /// matrix product per image, `gamma [c, c] @ x² [c, h·w]`: the same sum, but its gradient
    /// with respect to gamma is a matrix product too (burn-flex computes the gradient of a 1x1
    /// convolution's weight as one matrix-vector product per output channel).
    ///
    /// Without autodiff (coding), the same sum in one fused pass: see [`Gdn::forward_fused`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if !x.is_autodiff() {
            return self.forward_fused(x);
        }
        let (beta, gamma) = self.effective();
        if let Some(y) = crate::gdn_op::gdn(&x, &beta, &gamma, self.inverse) {
            return y;
        }
        self.forward_recorded(x, beta, gamma)
    }

    /// The normaliser with burn's own (recorded) operations: the reference for
    /// [`crate::gdn_op`], and the path on other backends.
    fn forward_recorded(&self, x: Tensor<4>, beta: Tensor<1>, gamma: Tensor<2>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let x2 = x.clone().square().reshape([b, c, h * w]);
        let norm = (gamma.unsqueeze::<3>().matmul(x2) + beta.reshape([1, c, 1])).reshape([b, c, h, w]);
        if self.inverse { x * norm.sqrt() } else { x / norm.sqrt() }
    }

    /// Inference: the normaliser and the division (or multiplication) in one pass over blocks
    /// of `FUSED_PIXELS` pixels, in parallel: gather the block's x² (all channels), one small
    /// matrix product with gamma, then scale the block in place. burn's element-wise form
    /// reads and writes the whole tensor five times (square, product, add, square root,
    /// divide), which at the first layer of a 768x512 image is 5 x 25 MB.
    fn forward_fused(&self, x: Tensor<4>) -> Tensor<4> {
        let dims = x.dims();
        let device = x.device();
        let mut data: Vec<f32> = x.into_data().try_into_vec_as().expect("float input");
        self.forward_values(&mut data, dims);
        Tensor::from_data(TensorData::new(data, dims), &device)
    }

    /// Inference in place on planes `data` (`dims`, NCHW), without burn's tensors: the fused
    /// pass of [`Gdn::forward_fused`], for networks that keep their activations as plain
    /// values between layers.
    pub fn forward_values(&self, data: &mut [f32], dims: [usize; 4]) {
        let c = dims[1];
        let (beta, gamma) = self.effective_values();
        let gamma = ndarray::ArrayView2::from_shape((c, c), &gamma[..]).expect("gamma is c x c");
        normalise(data, None, dims, &beta, gamma, self.inverse);
    }

    /// beta (`[c]`) and gamma (`[c_out, c_in]`, row-major) after the reparametrisation, as
    /// values.
    pub(crate) fn effective_values(&self) -> (Vec<f32>, Vec<f32>) {
        let (beta, gamma) = self.effective();
        (beta.into_data().try_into_vec_as().expect("float beta"), gamma.into_data().try_into_vec_as().expect("float gamma"))
    }
}

/// GDN in place on `data` (`[b, c, h, w]`): per block of `FUSED_PIXELS` pixels, in parallel,
/// gather the block's x² (all channels), one small matrix product with gamma, then scale the
/// block. With `root`, also write √(β + γ·x²) of every element there (what the training
/// operation's backward pass needs, [`crate::gdn_op`]).
pub(crate) fn normalise(data: &mut [f32], root: Option<&mut [f32]>, dims: [usize; 4], beta: &[f32], gamma: ndarray::ArrayView2<'_, f32>, inverse: bool) {
    normalise_using(crate::direct::available(), data, root, dims, beta, gamma, inverse)
}

/// [`normalise`], the product γ · x² through the direct product's micro-kernel (`use_direct`)
/// or through ndarray's matrix product.
fn normalise_using(use_direct: bool, data: &mut [f32], root: Option<&mut [f32]>, dims: [usize; 4], beta: &[f32], gamma: ndarray::ArrayView2<'_, f32>, inverse: bool) {
    use rayon::prelude::*;
    let c = dims[1];
    let len = data.len();
    // Per block of pixels, its slice of every channel row (of every image), and of `root`.
    let blocks = pixel_blocks(data, dims, FUSED_PIXELS);
    let roots: Vec<Vec<&mut [f32]>> = match root {
        Some(root) => {
            assert_eq!(root.len(), len, "one root per element");
            pixel_blocks(root, dims, FUSED_PIXELS)
        }
        None => blocks.iter().map(|_| Vec::new()).collect(),
    };
    let packed = use_direct.then(|| crate::direct::Packed::new(gamma));
    // Per worker: x² and gamma · x² of one block, fully overwritten for every block (x² rows
    // FUSED_PIXELS apart, a multiple of the direct product's runs), and the direct product's
    // buffers.
    // x² starts on a cache line (16 floats of slack), so that no run the product reads splits
    // two lines: g_a.gdn0's product took 9 ms of the layer's 26 in `perf`, 89 GFLOP/s.
    let scratch = || (vec![0f32; c * FUSED_PIXELS + 16], vec![0f32; c * FUSED_PIXELS], crate::direct::Buffers::default());
    blocks.into_par_iter().zip(roots).for_each_init(scratch, |(sq, nm, bufs), (mut rows, mut roots)| {
        let sq = crate::direct::aligned(sq, c * FUSED_PIXELS);
        let n = rows.first().map_or(0, |r| r.len());
        for (ch, r) in rows.iter().enumerate() {
            for (s, &v) in sq[ch * FUSED_PIXELS..ch * FUSED_PIXELS + n].iter_mut().zip(r.iter()) {
                *s = v * v;
            }
        }
        let (norm, ld) = match &packed {
            Some(packed) => crate::direct::matmul(packed, sq, FUSED_PIXELS, n, bufs),
            None => {
                let squares = ndarray::ArrayView2::from_shape(ndarray::ShapeBuilder::strides((c, n), (FUSED_PIXELS, 1)), &sq[..]).expect("block of x²");
                let mut norm = ndarray::ArrayViewMut2::from_shape((c, n), &mut nm[..c * n]).expect("block of the normaliser");
                ndarray::linalg::general_mat_mul(1.0, &gamma, &squares, 0.0, &mut norm);
                (&nm[..], n)
            }
        };
        // Branches hoisted out of the per-element loops, so that these vectorise.
        for (ch, r) in rows.iter_mut().enumerate() {
            let bch = beta[ch];
            let sums = &norm[ch * ld..ch * ld + r.len()];
            match (roots.get_mut(ch), inverse) {
                (Some(out), false) => r.iter_mut().zip(sums).zip(out.iter_mut()).for_each(|((v, &s), o)| {
                    *o = (s + bch).sqrt();
                    *v /= *o;
                }),
                (Some(out), true) => r.iter_mut().zip(sums).zip(out.iter_mut()).for_each(|((v, &s), o)| {
                    *o = (s + bch).sqrt();
                    *v *= *o;
                }),
                (None, false) => r.iter_mut().zip(sums).for_each(|(v, &s)| *v /= (s + bch).sqrt()),
                (None, true) => r.iter_mut().zip(sums).for_each(|(v, &s)| *v *= (s + bch).sqrt()),
            }
        }
    });
}

/// `data` (`[b, c, h, w]`) cut into blocks of `block` pixels of one image: for each block (image
/// by image, then along the pixels), its slice of every channel row, channel by channel.
pub(crate) fn pixel_blocks(data: &mut [f32], dims: [usize; 4], block: usize) -> Vec<Vec<&mut [f32]>> {
    let [b, c, h, w] = dims;
    let hw = h * w;
    let per_image = hw.div_ceil(block);
    let mut blocks: Vec<Vec<&mut [f32]>> = (0..b * per_image).map(|_| Vec::with_capacity(c)).collect();
    for (row_index, row) in data.chunks_mut(hw.max(1)).enumerate() {
        for (j, part) in row.chunks_mut(block).enumerate() {
            blocks[(row_index / c) * per_image + j].push(part);
        }
    }
    blocks
}

/// Pixels per block of the fused inference pass: x², gamma · x² and the block itself stay in
/// the core's cache (3 x 64 channels x 256 x 4 bytes = 192 KiB at N = 64).
const FUSED_PIXELS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    /// The normaliser as burn's own 1x1 convolution, the reference for the matrix form.
    fn forward_by_conv(g: &Gdn, x: Tensor<4>) -> Tensor<4> {
        let [_, c, _, _] = x.dims();
        let (beta, gamma) = g.effective();
        let norm = conv2d(x.clone().square(), gamma.reshape([c, c, 1, 1]), Some(beta), ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
        if g.inverse { x * norm.sqrt() } else { x / norm.sqrt() }
    }

    /// The training operation (fused forward, hand-written backward) against burn's autodiff
    /// of the same formula: outputs and the gradients of x, beta and gamma.
    #[test]
    fn training_operation_matches_burns_autodiff() {
        let dev = Device::flex().autodiff();
        dev.seed(21);
        // One block of the backward pass, and three (the last one partial).
        for (inverse, [h, w]) in [(false, [5, 7]), (true, [5, 7]), (false, [23, 50]), (true, [23, 50])] {
            let mut g = Gdn::new(6, inverse, &dev);
            g.gamma = Param::from_tensor(Tensor::<2>::random([6, 6], burn::tensor::Distribution::Uniform(0.01, 0.6), &dev));
            g.beta = Param::from_tensor(Tensor::<1>::random([6], burn::tensor::Distribution::Uniform(0.5, 1.5), &dev));
            let x = Tensor::<4>::random([2, 6, h, w], burn::tensor::Distribution::Normal(0.0, 1.5), &dev).require_grad();
            let weights = Tensor::<4>::random([2, 6, h, w], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
            let fast = g.forward(x.clone());
            let (beta, gamma) = g.effective();
            assert!(crate::gdn_op::gdn(&x, &beta, &gamma, inverse).is_some(), "flex autodiff takes the training operation");
            let slow = g.forward_recorded(x.clone(), beta, gamma);
            let vec = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_into_vec_as().unwrap() };
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
                for (i, (p, q)) in a.iter().zip(b).enumerate() {
                    assert!((p - q).abs() <= 1e-5 * scale.max(1.0) + 1e-6, "inverse {inverse}, {what} {i}: {p} vs {q}");
                }
            };
            close(&vec(fast.clone()), &vec(slow.clone()), "output");
            let gf = (fast * weights.clone()).sum().backward();
            let gs = (slow * weights).sum().backward();
            let grad = |t: Option<Tensor<4>>| -> Vec<f32> { t.unwrap().into_data().try_into_vec_as().unwrap() };
            close(&grad(x.grad(&gf)), &grad(x.grad(&gs)), "dx");
            let (bf, bs): (Vec<f32>, Vec<f32>) = (
                g.beta.val().grad(&gf).unwrap().into_data().try_into_vec_as().unwrap(),
                g.beta.val().grad(&gs).unwrap().into_data().try_into_vec_as().unwrap(),
            );
            close(&bf, &bs, "dbeta");
            let (gf_, gs_): (Vec<f32>, Vec<f32>) = (
                g.gamma.val().grad(&gf).unwrap().into_data().try_into_vec_as().unwrap(),
                g.gamma.val().grad(&gs).unwrap().into_data().try_into_vec_as().unwrap(),
            );
            close(&gf_, &gs_, "dgamma");
        }
    }

    /// The normaliser's product through the direct micro-kernel and through ndarray agree, with
    /// and without the roots, on blocks that are not multiples of the kernel's 16 pixels and
    /// channels that are not a multiple of its 6.
    #[test]
    fn direct_and_ndarray_normalisers_agree() {
        let (c, dims) = (13, [2, 13, 9, 31]);
        let mut rng = crate::TestRng::new(3);
        let mut random = |n: usize, lo: f32, hi: f32| rng.values(n, lo, hi);
        let x = random(dims.iter().product(), -2.0, 2.0);
        let (beta, gamma) = (random(c, 0.5, 1.5), random(c * c, 0.0, 0.6));
        let gamma = ndarray::ArrayView2::from_shape((c, c), &gamma[..]).unwrap();
        for inverse in [false, true] {
            let (mut a, mut b) = (x.clone(), x.clone());
            let (mut ra, mut rb) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            normalise_using(true, &mut a, Some(&mut ra), dims, &beta, gamma, inverse);
            normalise_using(false, &mut b, Some(&mut rb), dims, &beta, gamma, inverse);
            for (i, (p, q)) in a.iter().zip(&b).chain(ra.iter().zip(&rb)).enumerate() {
                assert!((p - q).abs() <= 1e-5 * q.abs().max(1.0), "inverse {inverse}, element {i}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn projection_raises_parameters_to_their_bounds() {
        for dev in [Device::flex(), Device::flex().autodiff()] {
        let mut g = Gdn::new(3, false, &dev);
        g.beta = Param::from_tensor(Tensor::from_data(TensorData::new(vec![-2.0f32, 0.5, 1.0], [3]), &dev));
        g.gamma = Param::from_tensor(Tensor::from_data(TensorData::new(vec![-1.0f32, 0.3, 0.0, 0.2, 0.1, -0.5, 0.0, 0.0, 0.7], [3, 3]), &dev));
        let p = g.project();
        let (bb, gb) = Gdn::bounds();
        let beta: Vec<f32> = p.beta.val().into_data().try_into_vec_as().unwrap();
        let gamma: Vec<f32> = p.gamma.val().into_data().try_into_vec_as().unwrap();
        assert_eq!(beta, vec![bb, 0.5, 1.0]);
        assert_eq!(gamma, vec![gb, 0.3, gb, 0.2, 0.1, gb, gb, gb, 0.7]);
        }
    }

    /// Both forms: the training operation (autodiff, [`crate::gdn_op`]) and the fused pass
    /// (coding), on a size whose pixel count is not a multiple of the fused pass's block.
    #[test]
    fn matrix_form_and_fused_pass_match_burns_convolution() {
        for dev in [Device::flex(), Device::flex().autodiff()] {
        dev.seed(5);
        for inverse in [false, true] {
            let mut g = Gdn::new(16, inverse, &dev);
            // Non-trivial gamma and beta.
            g.gamma = Param::from_tensor(Tensor::<2>::random([16, 16], burn::tensor::Distribution::Uniform(0.0, 0.6), &dev));
            g.beta = Param::from_tensor(Tensor::<1>::random([16], burn::tensor::Distribution::Uniform(0.5, 1.5), &dev));
            let x = Tensor::<4>::random([3, 16, 19, 17], burn::tensor::Distribution::Normal(0.0, 2.0), &dev);
            let a: Vec<f32> = g.forward(x.clone()).into_data().try_into_vec_as().unwrap();
            let b: Vec<f32> = forward_by_conv(&g, x).into_data().try_into_vec_as().unwrap();
            for (i, (&p, &q)) in a.iter().zip(&b).enumerate() {
                assert!((p - q).abs() <= 1e-5 * q.abs().max(1.0), "inverse {inverse}, element {i}: {p} vs {q}");
            }
        }
        }
    }
}

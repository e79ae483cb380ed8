//! The quantiser: training relaxations of rounding (additive uniform noise, straight-through
//! rounding) and inference rounding around predicted means.
#![forbid(unsafe_code)]

use burn::prelude::*;
use burn::tensor::Distribution;

/// `y + U(−½, ½)`: the differentiable stand-in for rounding used for the rate term.
pub fn add_noise(y: Tensor<4>) -> Tensor<4> {
    let u = y.random_like(Distribution::Uniform(-0.5, 0.5));
    y + u
}

/// Rounding in the forward pass with an identity gradient (straight-through estimator).
pub fn ste_round(y: Tensor<4>) -> Tensor<4> {
    y.clone() + (y.clone().round() - y).detach()
}

/// `round(y − mu) + mu` with a straight-through gradient: what the decoder sees in training.
pub fn ste_round_around(y: Tensor<4>, mu: Tensor<4>) -> Tensor<4> {
    ste_round(y - mu.clone()) + mu
}

/// The largest symbol magnitude the quantiser emits; larger values are clipped (they cannot
/// come out of a trained network, and the clip keeps every later integer step in range).
pub const SYMBOL_LIMIT: f32 = (1 << 24) as f32;

/// `round(v)` as an integer symbol; NaN becomes 0 and magnitudes are clipped.
pub fn to_symbol(v: f32) -> i32 {
    if v.is_nan() { 0 } else { v.round().clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT) as i32 }
}

/// Inference quantisation: `symbol = round(y − mu)`.
pub fn quantize(y: &[f32], mu: &[f32]) -> Vec<i32> {
    assert_eq!(y.len(), mu.len(), "one mean per element");
    y.iter().zip(mu).map(|(&y, &m)| to_symbol(y - m)).collect()
}

/// Inference dequantisation: `y_hat = symbol + mu`.
pub fn dequantize(symbols: &[i32], mu: &[f32]) -> Vec<f32> {
    assert_eq!(symbols.len(), mu.len(), "one mean per element");
    symbols.iter().zip(mu).map(|(&s, &m)| s as f32 + m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_round_trip_is_within_half() {
        let y = [0.2f32, -1.7, 3.5, 100.49, f32::NAN, 1e30];
        let mu = [0.1f32, 0.3, -0.25, 0.0, 0.0, 0.0];
        let s = quantize(&y, &mu);
        assert_eq!(s, vec![0, -2, 4, 100, 0, 1 << 24]);
        let back = dequantize(&s, &mu);
        for i in 0..4 {
            assert!((back[i] - y[i]).abs() <= 0.5 + 1e-6);
        }
    }

    #[test]
    fn relaxations() {
        let dev = Device::flex();
        let y = Tensor::<4>::from_data(TensorData::new(vec![0.2f32, 1.6, -2.4, 7.5], [1, 1, 2, 2]), &dev);
        let n: Vec<f32> = add_noise(y.clone()).into_data().try_into_vec_as().unwrap();
        for (a, b) in n.iter().zip([0.2f32, 1.6, -2.4, 7.5]) {
            assert!((a - b).abs() <= 0.5 && a != &b);
        }
        let r: Vec<f32> = ste_round(y.clone()).into_data().try_into_vec_as().unwrap();
        assert_eq!(r[..3], [0.0, 2.0, -2.0]);
        let mu = Tensor::<4>::full([1, 1, 2, 2], 0.25, &dev);
        let r: Vec<f32> = ste_round_around(y, mu).into_data().try_into_vec_as().unwrap();
        assert_eq!(r[..3], [0.25, 1.25, -2.75]);
    }

    #[test]
    fn straight_through_gradient_is_identity() {
        let dev = Device::flex().autodiff();
        let y = Tensor::<4>::from_data(TensorData::new(vec![0.2f32, 1.6], [1, 1, 1, 2]), &dev).require_grad();
        let g = ste_round(y.clone()).sum().backward();
        let grad: Vec<f32> = y.grad(&g).unwrap().into_data().try_into_vec_as().unwrap();
        assert_eq!(grad, vec![1.0, 1.0]);
    }
}

//! What the autodiff operations on burn's flex CPU backend ([`crate::conv_op`],
//! [`crate::gdn_op`]) share: the backend type and plain f32 access to its tensors.

use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;

/// Flex with autodiff: the training backend.
pub(crate) type Ad = Autodiff<Flex>;

/// The values of a contiguous f32 tensor.
pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// A tensor of `shape` holding `values`.
pub(crate) fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

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

/// A copy of a float tensor's values (`into_data`).
pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as().expect("float tensor")
}

/// The values of a tensor on flex, borrowed where it is a contiguous f32 flex tensor (no
/// copy: `into_data` copies the whole tensor, twice), else copied out.
pub(crate) enum Values {
    Flex(FlexTensor),
    Owned(Vec<f32>),
}

impl Values {
    pub(crate) fn of<const D: usize>(t: Tensor<D>) -> Self {
        match t.clone().try_into_primitive::<Flex>() {
            Ok(p) if p.as_slice::<f32>().is_some() => Values::Flex(p),
            _ => Values::Owned(values(t)),
        }
    }

    pub(crate) fn get(&self) -> &[f32] {
        match self {
            Values::Flex(p) => slice(p),
            Values::Owned(v) => v,
        }
    }
}

//! The library behind `caec-train`: the optimiser ([`adam`]), the trainable network and its training forward pass
//! ([`net`]), the image loader and crop sampler ([`data`]), the training-curve figure
//! ([`plot`]), growing a trained model's latent ([`widen`]). A library so that the training-step bench (`cargo bench -p caec-train`) runs
//! exactly what training runs.

pub mod adam;
pub mod data;
pub mod net;
pub mod plot;
pub mod widen;

use std::collections::HashMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// A float parameter by its path in the module tree ("convs.0.weight").
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

struct Export {
    path: Vec<String>,
    out: Vec<NamedTensor>,
}

impl ModuleVisitor for Export {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        let t = p.val();
        self.out.push(NamedTensor {
            name: self.path.join("."),
            shape: t.dims().to_vec(),
            values: t.into_data().try_into_vec_as::<f32>().expect("float tensor"),
        });
    }
}

/// Every float parameter of a module, in visiting order.
pub fn export_params<M: Module>(module: &M) -> Vec<NamedTensor> {
    let mut e = Export { path: Vec::new(), out: Vec::new() };
    module.visit(&mut e);
    e.out
}

struct Import<'a> {
    path: Vec<String>,
    src: &'a HashMap<String, NamedTensor>,
    missing: Vec<String>,
}

impl ModuleMapper for Import<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        match self.src.get(&name) {
            Some(t) if t.shape == p.lazy_shape().to_vec() => {
                let v = Tensor::<D>::from_data(TensorData::new(t.values.clone(), t.shape.clone()), &p.lazy_device());
                let id = p.id;
                p.transform_for_load(v, id)
            }
            _ => {
                self.missing.push(name);
                p
            }
        }
    }
}

/// Load float parameters by path; returns the module and the paths that had no matching
/// tensor (absent or of another shape).
pub fn import_params<M: Module>(module: M, tensors: &HashMap<String, NamedTensor>) -> (M, Vec<String>) {
    let mut i = Import { path: Vec::new(), src: tensors, missing: Vec::new() };
    let m = module.map(&mut i);
    (m, i.missing)
}

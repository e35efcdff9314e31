//! A model's gradients and buffers as one flat buffer, in the module's visiting order (the same
//! on every replica), and back.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

/// The gradients of the trainable parameters, flattened, then one presence flag per parameter
/// (1 where this replica has a gradient for it, so that a parameter is stepped only where some
/// replica has one).
pub fn flatten_grads<M: Module>(model: &M, mut grads: GradientsParams) -> Vec<f32> {
    let mut visitor = Flatten {
        grads: &mut grads,
        values: Vec::new(),
        present: Vec::new(),
    };
    model.visit(&mut visitor);
    let Flatten {
        mut values,
        present,
        ..
    } = visitor;
    values.extend(present);
    values
}

/// Length of [`flatten_grads`]'s buffer for `model`.
pub fn grads_len<M: Module>(model: &M) -> usize {
    let mut shapes = Shapes::default();
    model.visit(&mut shapes);
    shapes
        .trainable
        .iter()
        .map(|s| s.iter().product::<usize>() + 1)
        .sum()
}

/// The gradients of a summed [`flatten_grads`] buffer, as tensors on `device`.
pub fn unflatten_grads<M: Module>(model: &M, flat: &[f32], device: &Device) -> GradientsParams {
    let mut shapes = Shapes::default();
    model.visit(&mut shapes);
    let total: usize = shapes
        .trainable
        .iter()
        .map(|s| s.iter().product::<usize>())
        .sum();
    let present = &flat[total.min(flat.len())..];
    let mut grads = GradientsParams::new();
    let mut visitor = Unflatten {
        flat,
        present,
        offset: 0,
        index: 0,
        device,
        grads: &mut grads,
    };
    model.visit(&mut visitor);
    grads
}

/// The values of the buffers (tensors without gradient: BatchNorm's running statistics).
pub fn flatten_buffers<M: Module>(model: &M) -> Vec<f32> {
    let mut visitor = Buffers { values: Vec::new() };
    model.visit(&mut visitor);
    visitor.values
}

/// `model` with its buffers replaced by `values` (as [`flatten_buffers`] lays them out).
pub fn replace_buffers<M: Module>(model: M, values: &[f32]) -> M {
    model.map(&mut SetBuffers { values, offset: 0 })
}

fn values_of<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

#[derive(Default)]
struct Shapes {
    trainable: Vec<Vec<usize>>,
}

impl ModuleVisitor for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        if tensor.is_require_grad() {
            self.trainable.push(tensor.shape().to_vec());
        }
    }
}

struct Flatten<'a> {
    grads: &'a mut GradientsParams,
    values: Vec<f32>,
    present: Vec<f32>,
}

impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        if !tensor.is_require_grad() {
            return;
        }
        let n = tensor.shape().num_elements();
        match self.grads.remove::<D>(param.id) {
            Some(grad) => {
                let values = values_of(grad);
                // A gradient that cannot be read as n floats counts as absent (never expected).
                if values.len() == n {
                    self.values.extend(values);
                    self.present.push(1.0);
                    return;
                }
                self.values.extend(std::iter::repeat_n(0.0, n));
                self.present.push(0.0);
            }
            None => {
                self.values.extend(std::iter::repeat_n(0.0, n));
                self.present.push(0.0);
            }
        }
    }
}

struct Unflatten<'a> {
    flat: &'a [f32],
    present: &'a [f32],
    offset: usize,
    index: usize,
    device: &'a Device,
    grads: &'a mut GradientsParams,
}

impl ModuleVisitor for Unflatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        if !tensor.is_require_grad() {
            return;
        }
        let shape = tensor.shape();
        let n = shape.num_elements();
        let (start, index) = (self.offset, self.index);
        self.offset += n;
        self.index += 1;
        let present = self.present.get(index).copied().unwrap_or(0.0) > 0.0;
        if present && let Some(values) = self.flat.get(start..start + n) {
            let grad = Tensor::<D>::from_data(TensorData::new(values.to_vec(), shape), self.device);
            self.grads.register(param.id, grad);
        }
    }
}

struct Buffers {
    values: Vec<f32>,
}

impl ModuleVisitor for Buffers {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        if !tensor.is_require_grad() {
            self.values.extend(values_of(tensor));
        }
    }
}

struct SetBuffers<'a> {
    values: &'a [f32],
    offset: usize,
}

impl ModuleMapper for SetBuffers<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        if tensor.is_require_grad() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let shape = tensor.shape();
        let n = shape.num_elements();
        let start = self.offset;
        self.offset += n;
        let tensor = match self.values.get(start..start + n) {
            Some(values) => {
                Tensor::<D>::from_data(TensorData::new(values.to_vec(), shape), &tensor.device())
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

//! The project's own CPU kernels, added to burn's CPU backend (Flex) through burn's
//! backend-extension API (`#[backend_extension]`): a convolution with bias, residual add and
//! ReLU fused (directly or by Winograd), and the stem's max pool without argmax indices. The
//! operations take weights already in the layout their product reads, prepared once when a model
//! loads ([`PreparedConv`] in `ops.rs`). Training uses the same convolution without bias
//! ([`conv2d_trainable`], `trainable.rs`), with backward passes of its own (`backward.rs`)
//! registered with burn's autodiff (the `training` feature). burn's own operations stay the
//! reference they are tested against (`tests.rs`); other backends (wgpu) keep them.

#[cfg(target_arch = "x86_64")]
mod avx512;
// Training runs natively only (the trainer); the page never computes a gradient.
#[cfg(feature = "training")]
mod backward;
mod conv;
#[cfg(all(feature = "training", target_arch = "x86_64"))]
mod grad_avx512;
mod microkernel;
mod ops;
// Read in place only by the AVX-512 tiles: built, and tested, everywhere.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod padded;
mod pool;
mod tasks;
#[cfg(test)]
mod tests;
mod trainable;
mod winograd;

use std::borrow::Cow;

use burn::backend::{Backend, Flex, backend_extension, tensor::FloatTensor};
use burn::tensor::TensorData;
use burn_flex::FlexTensor;

pub use conv::{ConvGeometry, Epilogue, Product, Weights, conv2d_prepared, conv2d_with};
pub use ops::{PreparedConv, max_pool};
pub use pool::{max_pool_3x3_s2, pooled_size};
pub use tasks::{join, on_workers};
pub use trainable::{TrainableConv, conv2d_trainable};
pub use winograd::{
    WinogradGeometry, conv3x3_prepared, conv3x3_with, prepare_filters, prepared_filters,
    transform_filters,
};

/// A square convolution's `(kernel, stride, padding)`.
pub type ConvShape = (usize, usize, usize);

/// The operations this project adds to burn's CPU backend.
#[backend_extension(Flex)]
pub trait CpuKernels: Backend {
    /// Square convolution plus a bias per output channel, then ReLU if `relu`. `weights` is
    /// the `[out, in * k * k]` matrix as [`Weights::prepare`] left it for [`Product::best`].
    fn conv_bias(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shape: ConvShape,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `relu(conv(x) + bias + residual)`: the end of a residual block in one pass.
    fn conv_bias_add_relu(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        shape: ConvShape,
    ) -> FloatTensor<Self>;

    /// 3x3 max pool, stride 2, padding 1, on `[b, c, h, w]`.
    fn max_pool_3x3_s2(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// 3x3 stride-1 padding-1 convolution by Winograd F(2x2, 3x3), plus bias, then ReLU if
    /// `relu`. `filters` is [`prepare_filters`]' result for [`Product::best`].
    fn winograd_bias(
        x: FloatTensor<Self>,
        filters: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `relu(winograd(x) + bias + residual)`.
    fn winograd_bias_add_relu(
        x: FloatTensor<Self>,
        filters: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl CpuKernels for Flex {
    fn conv_bias(
        x: FlexTensor,
        weights: FlexTensor,
        bias: FlexTensor,
        shape: ConvShape,
        relu: bool,
    ) -> FlexTensor {
        run_conv(x, weights, bias, None, shape, relu)
    }

    fn conv_bias_add_relu(
        x: FlexTensor,
        weights: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        shape: ConvShape,
    ) -> FlexTensor {
        run_conv(x, weights, bias, Some(residual), shape, true)
    }

    fn max_pool_3x3_s2(x: FlexTensor) -> FlexTensor {
        let [b, c, h, w] = dims4(&x);
        let out = max_pool_3x3_s2(&values(&x), b * c, h, w);
        let (oh, ow) = pooled_size(h, w);
        flex_tensor(out, [b, c, oh, ow])
    }

    fn winograd_bias(
        x: FlexTensor,
        filters: FlexTensor,
        bias: FlexTensor,
        relu: bool,
    ) -> FlexTensor {
        run_winograd(x, filters, bias, None, relu)
    }

    fn winograd_bias_add_relu(
        x: FlexTensor,
        filters: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
    ) -> FlexTensor {
        run_winograd(x, filters, bias, Some(residual), true)
    }
}

fn run_winograd(
    x: FlexTensor,
    filters: FlexTensor,
    bias: FlexTensor,
    residual: Option<FlexTensor>,
    relu: bool,
) -> FlexTensor {
    let [batch, in_channels, height, width] = dims4(&x);
    let out_channels = bias.layout().shape().num_elements();
    let geometry = WinogradGeometry {
        batch,
        in_channels,
        out_channels,
        height,
        width,
    };
    let filters = values(&filters);
    let filters = prepared_filters(&filters, out_channels, in_channels, Product::best());
    let out = with_epilogue(&bias, residual.as_ref(), relu, |epilogue| {
        conv3x3_prepared(&values(&x), geometry, &filters, epilogue)
    });
    flex_tensor(out, [batch, out_channels, height, width])
}

fn run_conv(
    x: FlexTensor,
    weights: FlexTensor,
    bias: FlexTensor,
    residual: Option<FlexTensor>,
    shape: ConvShape,
    relu: bool,
) -> FlexTensor {
    let out_channels = bias.layout().shape().num_elements();
    let geometry = ConvGeometry::new(dims4(&x), out_channels, shape);
    let weights = values(&weights);
    let (rows, depth) = (out_channels, geometry.patch_len());
    let weights = Weights::prepared(&weights, rows, depth, Product::best());
    let out = with_epilogue(&bias, residual.as_ref(), relu, |epilogue| {
        conv2d_prepared(&values(&x), geometry, &weights, epilogue)
    });
    let (oh, ow) = (geometry.out_height(), geometry.out_width());
    flex_tensor(out, [geometry.batch, out_channels, oh, ow])
}

/// Run `kernel` with the epilogue made of these tensors' values.
fn with_epilogue(
    bias: &FlexTensor,
    residual: Option<&FlexTensor>,
    relu: bool,
    kernel: impl FnOnce(Epilogue<'_>) -> Vec<f32>,
) -> Vec<f32> {
    let residual = residual.map(values);
    kernel(Epilogue {
        bias: &values(bias),
        residual: residual.as_deref(),
        relu,
    })
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let shape = t.layout().shape();
    assert_eq!(shape.num_dims(), 4, "expected a 4-d tensor, got {shape:?}");
    [shape[0], shape[1], shape[2], shape[3]]
}

/// The tensor's values in row-major order: borrowed when it is a contiguous f32 tensor (every
/// activation these kernels produce), copied otherwise.
fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(slice) => Cow::Borrowed(slice),
        None => Cow::Owned(
            t.clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("converted to f32"),
        ),
    }
}

fn flex_tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

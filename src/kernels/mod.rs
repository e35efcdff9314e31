//! The project's own CPU inference kernels, added to burn's CPU backend (Flex) through burn's
//! backend-extension API (`#[backend_extension]`): a convolution with bias, residual add and
//! ReLU fused, and the stem's max pool without argmax indices. burn's own operations stay the
//! reference they are tested against (`tests.rs`). Only inference uses them: they have no
//! backward pass, and other backends (wgpu) keep burn's operations.

mod conv;
mod microkernel;
mod pool;
#[cfg(test)]
mod tests;
mod winograd;

use std::borrow::Cow;

use burn::backend::{Backend, Dispatch, Flex, backend_extension, tensor::FloatTensor};
use burn::tensor::{Tensor, TensorData};
use burn_flex::FlexTensor;

pub use conv::{ConvGeometry, Epilogue, Product, conv2d, conv2d_with};
pub use pool::{max_pool_3x3_s2, pooled_size};
pub use winograd::{WinogradGeometry, conv3x3_with, transform_filters};

/// The operations this project adds to burn's CPU backend.
#[backend_extension(Flex)]
pub trait CpuKernels: Backend {
    /// Square convolution, padding `padding`, plus a bias per output channel, then ReLU if
    /// `relu`. `weight` is `[out, in, k, k]`.
    fn conv_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `relu(conv(x) + bias + residual)`: the end of a residual block in one pass.
    fn conv_bias_add_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// 3x3 max pool, stride 2, padding 1, on `[b, c, h, w]`.
    fn max_pool_3x3_s2(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// 3x3 stride-1 padding-1 convolution by Winograd F(2x2, 3x3), plus bias, then ReLU if
    /// `relu`. `filters` is `[16, out, in]` from [`transform_filters`].
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
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> FlexTensor {
        run_conv(x, weight, bias, None, stride, padding, relu)
    }

    fn conv_bias_add_relu(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        run_conv(x, weight, bias, Some(residual), stride, padding, true)
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
    let out_channels = filters.layout().shape()[1];
    let geometry = WinogradGeometry {
        batch,
        in_channels,
        out_channels,
        height,
        width,
    };
    let out = with_epilogue(&bias, residual.as_ref(), relu, |epilogue| {
        winograd::conv3x3(&values(&x), geometry, &values(&filters), epilogue)
    });
    flex_tensor(out, [batch, out_channels, height, width])
}

fn run_conv(
    x: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    residual: Option<FlexTensor>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> FlexTensor {
    let [batch, in_channels, height, width] = dims4(&x);
    let [out_channels, _, kernel, _] = dims4(&weight);
    let geometry = ConvGeometry {
        batch,
        in_channels,
        height,
        width,
        out_channels,
        kernel,
        stride,
        padding,
    };
    let out = with_epilogue(&bias, residual.as_ref(), relu, |epilogue| {
        conv2d(&values(&x), geometry, &values(&weight), epilogue)
    });
    let (oh, ow) = (geometry.out_height(), geometry.out_width());
    flex_tensor(out, [batch, out_channels, oh, ow])
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

/// [`CpuKernels::conv_bias`] on burn tensors (CPU device only).
pub fn conv_bias(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuKernels>::conv_bias(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        stride,
        padding,
        relu,
    ))
}

/// [`CpuKernels::conv_bias_add_relu`] on burn tensors (CPU device only).
pub fn conv_bias_add_relu(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    residual: Tensor<4>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuKernels>::conv_bias_add_relu(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
        stride,
        padding,
    ))
}

/// [`CpuKernels::max_pool_3x3_s2`] on a burn tensor (CPU device only).
pub fn max_pool(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuKernels>::max_pool_3x3_s2(x.into_dispatch()))
}

/// [`CpuKernels::winograd_bias`] on burn tensors (CPU device only).
pub fn winograd_bias(x: Tensor<4>, filters: Tensor<3>, bias: Tensor<1>, relu: bool) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuKernels>::winograd_bias(
        x.into_dispatch(),
        filters.into_dispatch(),
        bias.into_dispatch(),
        relu,
    ))
}

/// [`CpuKernels::winograd_bias_add_relu`] on burn tensors (CPU device only).
pub fn winograd_bias_add_relu(
    x: Tensor<4>,
    filters: Tensor<3>,
    bias: Tensor<1>,
    residual: Tensor<4>,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuKernels>::winograd_bias_add_relu(
        x.into_dispatch(),
        filters.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
    ))
}

/// [`transform_filters`] on a burn weight tensor `[out, in, 3, 3]` → `[16, out, in]`.
pub fn winograd_filters(weight: Tensor<4>) -> Tensor<3> {
    let [out, input, _, _] = weight.dims();
    let device = weight.device();
    let values = weight
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32");
    let transformed = transform_filters(&values, out, input);
    Tensor::from_data(TensorData::new(transformed, [16, out, input]), &device)
}

//! Two ways of computing the model's convolutions: burn's, and im2col with one matrix product.

use burn::nn::conv::Conv2d;
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Slice, Tensor};

use crate::kernels::conv2d_trainable;

/// How the model's convolutions are computed; all give the same numbers up to rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    /// burn's `conv2d`. On the CPU backend, with the few channels of the quarter-width model,
    /// profiling showed it spends most of its time rearranging data (NHWC copies, a generic 3D
    /// im2col; a direct loop for the one-channel stem), not multiplying.
    Burn,
    /// im2col by hand: the k² strided views of the padded input stacked as rows, then one
    /// matrix product with the filters (3x3 and 7x7 only; 1x1 goes to burn).
    Columns,
    /// The project's CPU kernels (`crate::kernels`), with their own backward passes on an
    /// autodiff device: for every convolution, 1x1 included.
    Kernels,
}

impl ConvKernel {
    /// The faster one measured on each backend (`./build.sh bench`, bench/RESULTS.md): the
    /// project's kernels on the CPU backend, for training (autodiff device) and inference
    /// alike (the folded inference path, `FoldedFeatures`, calls them directly); burn's
    /// convolution on GPUs (their kernels are tuned for it).
    pub fn for_device(device: &Device) -> Self {
        if *device == Device::flex() {
            Self::Kernels
        } else {
            Self::Burn
        }
    }
}

/// `conv` (square kernel, no bias, padding k/2, as every convolution here) computed with
/// `kernel`.
pub(super) fn conv_with(conv: &Conv2d, x: Tensor<4>, kernel: ConvKernel) -> Tensor<4> {
    let [_, _, k, _] = conv.weight.dims();
    match kernel {
        ConvKernel::Columns if k > 1 && conv.bias.is_none() => {
            conv_columns(x, conv.weight.val(), conv.stride[0], k / 2)
        }
        ConvKernel::Kernels if conv.bias.is_none() => {
            conv2d_trainable(x, conv.weight.val(), conv.stride[0], k / 2)
        }
        _ => conv.forward(x),
    }
}

/// A square convolution without bias as im2col + one matmul: `x` `[b, cin, h, w]`, `weight`
/// `[cout, cin, k, k]` → `[b, cout, oh, ow]`.
fn conv_columns(x: Tensor<4>, weight: Tensor<4>, stride: usize, pad: usize) -> Tensor<4> {
    let [b, cin, h, w] = x.dims();
    let [cout, _, k, _] = weight.dims();
    let (oh, ow) = (
        (h + 2 * pad - k) / stride + 1,
        (w + 2 * pad - k) / stride + 1,
    );
    let padded = if pad > 0 {
        x.pad([(pad, pad), (pad, pad)], PadMode::Constant(0.0))
    } else {
        x
    };
    let span = |start: usize, n: usize| {
        Slice::new(
            start as isize,
            Some((start + stride * (n - 1) + 1) as isize),
            stride as isize,
        )
    };
    let mut rows = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let view =
                padded
                    .clone()
                    .slice([Slice::full(), Slice::full(), span(ky, oh), span(kx, ow)]);
            rows.push(view.reshape([b, cin, 1, oh * ow]));
        }
    }
    // [b, cin, k*k, oh*ow] → rows in the weight's (cin, ky, kx) order.
    let rows = Tensor::cat(rows, 2).reshape([b, cin * k * k, oh * ow]);
    let filters = weight
        .reshape([1, cout, cin * k * k])
        .expand([b, cout, cin * k * k]);
    filters.matmul(rows).reshape([b, cout, oh, ow])
}

//! The kernels on burn tensors, as the model calls them: a convolution prepared once, when a
//! model loads (its weights put in the layout the kernels read, Winograd's filters transformed),
//! then run on every inference without touching the weights again.

use burn::backend::Dispatch;
use burn::tensor::{Tensor, TensorData};

use super::{CpuKernels, Product, Weights, prepare_filters};

/// A square convolution with a bias, ready for the fused kernels (CPU device only).
#[derive(Debug, Clone)]
pub struct PreparedConv {
    /// In the layout [`Product::best`] reads: the `[out, in * k * k]` matrix, or Winograd's
    /// 16 `[out, in]` matrices one after the other.
    weights: Tensor<1>,
    bias: Tensor<1>,
    kernel: usize,
    stride: usize,
    padding: usize,
    winograd: bool,
}

impl PreparedConv {
    /// `weight` `[out, in, k, k]`, `bias` `[out]`. With `winograd`, a 3x3 stride-1 padding-1
    /// convolution uses Winograd F(2x2, 3x3); other shapes ignore it.
    pub fn new(
        weight: Tensor<4>,
        bias: Tensor<1>,
        stride: usize,
        padding: usize,
        winograd: bool,
    ) -> Self {
        let [out, input, kernel, _] = weight.dims();
        let device = weight.device();
        let values = weight
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("converted to f32");
        let winograd = winograd && kernel == 3 && stride == 1 && padding == 1;
        let prepared = if winograd {
            prepare_filters(&values, out, input, Product::best())
        } else {
            let depth = input * kernel * kernel;
            Weights::prepare(&values, out, depth, Product::best())
        };
        let len = prepared.len();
        Self {
            weights: Tensor::from_data(TensorData::new(prepared, [len]), &device),
            bias,
            kernel,
            stride,
            padding,
            winograd,
        }
    }

    /// Whether this convolution runs by Winograd F(2x2, 3x3).
    pub fn uses_winograd(&self) -> bool {
        self.winograd
    }

    /// `conv(x) + bias`, then ReLU if `relu`.
    pub fn forward(&self, x: Tensor<4>, relu: bool) -> Tensor<4> {
        let (x, weights, bias) = self.operands(x);
        Tensor::from_dispatch(if self.winograd {
            <Dispatch as CpuKernels>::winograd_bias(x, weights, bias, relu)
        } else {
            let shape = (self.kernel, self.stride, self.padding);
            <Dispatch as CpuKernels>::conv_bias(x, weights, bias, shape, relu)
        })
    }

    /// `relu(conv(x) + bias + residual)`: the end of a residual block in one pass.
    pub fn forward_add_relu(&self, x: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
        let (x, weights, bias) = self.operands(x);
        let residual = residual.into_dispatch();
        Tensor::from_dispatch(if self.winograd {
            <Dispatch as CpuKernels>::winograd_bias_add_relu(x, weights, bias, residual)
        } else {
            let shape = (self.kernel, self.stride, self.padding);
            <Dispatch as CpuKernels>::conv_bias_add_relu(x, weights, bias, residual, shape)
        })
    }

    fn operands(&self, x: Tensor<4>) -> (DispatchTensor, DispatchTensor, DispatchTensor) {
        (
            x.into_dispatch(),
            self.weights.clone().into_dispatch(),
            self.bias.clone().into_dispatch(),
        )
    }
}

type DispatchTensor = burn::backend::tensor::FloatTensor<Dispatch>;

/// [`CpuKernels::max_pool_3x3_s2`] on a burn tensor (CPU device only).
pub fn max_pool(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CpuKernels>::max_pool_3x3_s2(x.into_dispatch()))
}

//! The model's convolutions as they are trained on the CPU backend: the forward pass on the
//! project's kernels (as inference, without the folded BatchNorm: the batch's statistics are
//! not known until the convolution has run), and, on an autodiff device, the backward passes of
//! `backward.rs` registered with burn's autodiff through the extension API.

use burn::backend::{Backend, Dispatch, Flex, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;
use burn_flex::FlexTensor;

use super::{ConvGeometry, ConvShape, Epilogue, Product, conv2d_with, dims4, flex_tensor, values};

/// A square convolution without bias, differentiable on an autodiff device.
#[backend_extension(Flex, Autodiff: cfg(feature = "training"))]
pub trait TrainableConv: Backend {
    /// `x` `[b, in, h, w]`, `weight` `[out, in, k, k]` → `[b, out, oh, ow]`.
    fn conv2d_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        shape: ConvShape,
    ) -> FloatTensor<Self>;
}

/// [`TrainableConv::conv2d_no_bias`] on burn tensors (CPU device, with or without autodiff):
/// `weight` `[out, in, k, k]`, padding `padding` on every side.
pub fn conv2d_trainable(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    let kernel = weight.dims()[2];
    Tensor::from_dispatch(<Dispatch as TrainableConv>::conv2d_no_bias(
        x.into_dispatch(),
        weight.into_dispatch(),
        (kernel, stride, padding),
    ))
}

impl TrainableConv for Flex {
    fn conv2d_no_bias(x: FlexTensor, weight: FlexTensor, shape: ConvShape) -> FlexTensor {
        let g = geometry(&x, &weight, shape);
        let bias = vec![0.0; g.out_channels];
        let epilogue = Epilogue {
            bias: &bias,
            residual: None,
            relu: false,
        };
        let out = conv2d_with(&values(&x), g, &values(&weight), epilogue, Product::best());
        flex_tensor(
            out,
            [g.batch, g.out_channels, g.out_height(), g.out_width()],
        )
    }
}

/// The convolution of input `x` by `weight` `[out, in, k, k]`.
///
/// # Panics
/// When the weight's input channels or kernel do not match (a programming error).
fn geometry(x: &FlexTensor, weight: &FlexTensor, shape: ConvShape) -> ConvGeometry {
    let [out_channels, weight_in, kh, kw] = dims4(weight);
    let g = ConvGeometry::new(dims4(x), out_channels, shape);
    assert_eq!((weight_in, kh, kw), (g.in_channels, g.kernel, g.kernel));
    g
}

#[cfg(feature = "training")]
mod autodiff {
    use burn::backend::Flex;
    use burn::backend::autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    };
    use burn::backend::tensor::FloatTensor;
    use burn_flex::FlexTensor;

    use super::super::backward::{conv2d_input_grad, conv2d_weight_grad};
    use super::super::{ConvShape, flex_tensor, values};
    use super::{TrainableConv, geometry};

    impl<C: CheckpointStrategy> TrainableConv for Autodiff<Flex, C> {
        fn conv2d_no_bias(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            shape: ConvShape,
        ) -> FloatTensor<Self> {
            let prepared = ConvBackward
                .prepare::<C>([x.node(), weight.node()])
                .compute_bound()
                .stateful();
            let (x, weight) = (x.into_primitive(), weight.into_primitive());
            match prepared {
                OpsKind::Tracked(prep) => {
                    let out = Flex::conv2d_no_bias(x.clone(), weight.clone(), shape);
                    prep.finish((x, weight, shape), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(Flex::conv2d_no_bias(x, weight, shape)),
            }
        }
    }

    /// Keeps the forward pass's input and weight (shared, not copied) for the gradients.
    #[derive(Debug)]
    struct ConvBackward;

    impl Backward<Flex, 2> for ConvBackward {
        type State = (FlexTensor, FlexTensor, ConvShape);

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_weight] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            let (x, weight, shape) = ops.state;
            let g = geometry(&x, &weight, shape);
            let grad = values(&grad);
            if let Some(node) = node_x {
                let dx = conv2d_input_grad(&values(&weight), g, &grad);
                let dims = [g.batch, g.in_channels, g.height, g.width];
                grads.register::<Flex>(node.id, flex_tensor(dx, dims));
            }
            if let Some(node) = node_weight {
                let dw = conv2d_weight_grad(&values(&x), g, &grad);
                let dims = [g.out_channels, g.in_channels, g.kernel, g.kernel];
                grads.register::<Flex>(node.id, flex_tensor(dw, dims));
            }
        }
    }
}

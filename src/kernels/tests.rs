//! The kernels against burn's own operations on random shapes: odd sizes, stride 2, padding,
//! batches of more than one.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{PaddingConfig2d, Relu};
use burn::tensor::{Device, Distribution, Tensor};

use super::{PreparedConv, max_pool};

const TOLERANCE: f32 = 1e-5;

fn random(shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Largest difference relative to the reference's largest magnitude (at least 1).
fn relative_difference(ours: Tensor<4>, reference: Tensor<4>) -> f32 {
    assert_eq!(ours.dims(), reference.dims());
    let scale = reference.clone().abs().max().into_scalar::<f32>().max(1.0);
    (ours - reference).abs().max().into_scalar::<f32>() / scale
}

/// burn's convolution (with a bias) that the kernels are checked against, padding `k / 2`.
fn reference_conv(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .init(device)
}

/// `(batch, in, out, h, w, k, stride)` with padding `k / 2`, as the model's convolutions.
const SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 12] = [
    (1, 1, 4, 19, 23, 7, 2),
    (2, 3, 5, 9, 7, 3, 1),
    (3, 4, 6, 11, 13, 3, 2),
    (1, 8, 16, 16, 16, 3, 1),
    (2, 5, 7, 10, 9, 1, 2),
    (1, 6, 3, 5, 8, 1, 1),
    (1, 16, 32, 33, 31, 3, 2),
    (2, 2, 3, 1, 1, 3, 1),
    // Output rows of whole 16-pixel registers (read in place on AVX-512, without im2col): the
    // stem's shape, stride 1 and 2, a 1x1 stride-2 downsample.
    (1, 1, 5, 64, 64, 7, 2),
    (2, 4, 9, 16, 32, 3, 1),
    (2, 3, 6, 32, 32, 3, 2),
    (1, 3, 4, 32, 32, 1, 2),
];

#[test]
fn fused_convolution_matches_burns_conv_bias_and_relu() {
    let device = Device::flex();
    device.seed(7);
    for (batch, cin, cout, h, w, k, stride) in SHAPES {
        let conv = reference_conv(cin, cout, k, stride, &device);
        let bias = conv.bias.as_ref().expect("bias by default").val();
        let x = random([batch, cin, h, w], &device);
        for relu in [false, true] {
            let reference = conv.forward(x.clone());
            let reference = if relu {
                Relu::new().forward(reference)
            } else {
                reference
            };
            let prepared = PreparedConv::new(conv.weight.val(), bias.clone(), stride, k / 2, false);
            let ours = prepared.forward(x.clone(), relu);
            let diff = relative_difference(ours, reference);
            assert!(
                diff < TOLERANCE,
                "{batch}x{cin}x{h}x{w} k{k} s{stride}: {diff}"
            );
        }
    }
}

#[test]
fn fused_residual_matches_burns_conv_plus_add_and_relu() {
    let device = Device::flex();
    device.seed(11);
    for (batch, cin, cout, h, w, k, stride) in SHAPES {
        let conv = reference_conv(cin, cout, k, stride, &device);
        let bias = conv.bias.as_ref().expect("bias by default").val();
        let x = random([batch, cin, h, w], &device);
        let reference = conv.forward(x.clone());
        let residual = random(reference.dims(), &device);
        let reference = Relu::new().forward(reference + residual.clone());
        let prepared = PreparedConv::new(conv.weight.val(), bias, stride, k / 2, false);
        let ours = prepared.forward_add_relu(x, residual);
        let diff = relative_difference(ours, reference);
        assert!(
            diff < TOLERANCE,
            "{batch}x{cin}x{h}x{w} k{k} s{stride}: {diff}"
        );
    }
}

#[test]
fn max_pool_matches_burns_on_odd_and_even_sizes() {
    let device = Device::flex();
    device.seed(3);
    let pool = MaxPool2dConfig::new([3, 3])
        .with_strides([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init();
    for shape in [
        [1, 1, 8, 8],
        [2, 3, 7, 9],
        [1, 4, 1, 1],
        [3, 2, 2, 5],
        [1, 16, 64, 64],
    ] {
        // Negative inputs too: the padding must never win.
        let x = random(shape, &device) - 2.0;
        let diff = relative_difference(max_pool(x.clone()), pool.forward(x));
        assert_eq!(diff, 0.0, "{shape:?}");
    }
}

#[test]
fn a_non_contiguous_input_gives_the_same_result() {
    let device = Device::flex();
    device.seed(5);
    let conv = reference_conv(3, 4, 3, 1, &device);
    let bias = conv.bias.as_ref().expect("bias by default").val();
    // A transposed view: burn-flex keeps it strided until something needs it contiguous.
    let x = random([1, 3, 9, 6], &device).swap_dims(2, 3);
    let reference = conv.forward(x.clone());
    let ours = PreparedConv::new(conv.weight.val(), bias, 1, 1, false).forward(x, false);
    assert!(relative_difference(ours, reference) < TOLERANCE);
}

#[test]
fn winograd_matches_burns_3x3_convolution() {
    let device = Device::flex();
    device.seed(17);
    for (batch, cin, cout, h, w) in [
        (1, 3, 4, 8, 8),
        (2, 5, 7, 9, 11),
        (1, 16, 16, 64, 64),
        (3, 2, 3, 1, 3),
        // Even sizes with tile rows of at most 16 tiles: AVX-512's transforms, where the CPU
        // has it.
        (2, 4, 6, 12, 10),
    ] {
        let conv = reference_conv(cin, cout, 3, 1, &device);
        let bias = conv.bias.as_ref().expect("bias by default").val();
        let prepared = PreparedConv::new(conv.weight.val(), bias, 1, 1, true);
        assert!(prepared.uses_winograd());
        let x = random([batch, cin, h, w], &device);
        let reference = conv.forward(x.clone());
        let ours = prepared.forward(x.clone(), false);
        let diff = relative_difference(ours, reference.clone());
        assert!(diff < TOLERANCE, "{batch}x{cin}x{h}x{w}: {diff}");
        let residual = random(reference.dims(), &device);
        let reference = Relu::new().forward(reference + residual.clone());
        let ours = prepared.forward_add_relu(x, residual);
        let diff = relative_difference(ours, reference);
        assert!(
            diff < TOLERANCE,
            "{batch}x{cin}x{h}x{w} with residual: {diff}"
        );
    }
}

/// The register tiles (wasm's product, run here on plain arrays) against gemm's product (checked
/// against burn above) on the same shapes, with every epilogue.
#[test]
fn tiled_product_matches_gemms_on_every_shape() {
    use super::{ConvGeometry, Epilogue, Product, conv2d_with};
    let mut rng = crate::rng::Rng::new(23);
    let mut random = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
    for (batch, cin, cout, h, w, k, stride) in SHAPES {
        let g = ConvGeometry {
            batch,
            in_channels: cin,
            height: h,
            width: w,
            out_channels: cout,
            kernel: k,
            stride,
            padding: k / 2,
        };
        let out_len = batch * cout * g.out_height() * g.out_width();
        let (input, weight) = (random(batch * cin * h * w), random(cout * g.patch_len()));
        let (bias, residual) = (random(cout), random(out_len));
        for (residual, relu) in [(None, false), (None, true), (Some(&residual[..]), true)] {
            let epilogue = Epilogue {
                bias: &bias,
                residual,
                relu,
            };
            let gemm = conv2d_with(&input, g, &weight, epilogue, Product::Gemm);
            let tiles = conv2d_with(&input, g, &weight, epilogue, Product::Tiles);
            let scale = gemm.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = gemm
                .iter()
                .zip(&tiles)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff / scale < TOLERANCE, "{g:?}: {diff}");
        }
    }
}

/// Winograd with each product against the direct convolution, on sizes that give several
/// segments of tile rows, odd and one-pixel images, and every epilogue.
#[test]
fn winograd_segments_match_the_direct_convolution_with_both_products() {
    use super::{Epilogue, Product, conv2d_with, conv3x3_with, transform_filters};
    let mut rng = crate::rng::Rng::new(29);
    let mut random = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
    for (batch, cin, cout, h, w) in [
        (1, 16, 16, 64, 64),
        (2, 3, 5, 9, 7),
        (1, 2, 6, 1, 1),
        (1, 40, 9, 23, 30),
        // Even sizes, tile rows of 16, 7 and 4 tiles (AVX-512's transforms where the CPU has it).
        (2, 8, 12, 32, 32),
        (1, 6, 5, 16, 14),
        (1, 128, 10, 8, 8),
    ] {
        let (direct, g) = geometries_3x3(batch, cin, cout, h, w);
        let (input, weight) = (random(batch * cin * h * w), random(cout * cin * 9));
        let (bias, residual) = (random(cout), random(batch * cout * h * w));
        let filters = transform_filters(&weight, cout, cin);
        for (residual, relu) in [(None, false), (Some(&residual[..]), true)] {
            let epilogue = Epilogue {
                bias: &bias,
                residual,
                relu,
            };
            let reference = conv2d_with(&input, direct, &weight, epilogue, Product::Gemm);
            let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
            for product in [Product::Gemm, Product::Tiles] {
                let ours = conv3x3_with(&input, g, &filters, epilogue, product);
                let diff = reference
                    .iter()
                    .zip(&ours)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(diff / scale < TOLERANCE, "{g:?} {product:?}: {diff}");
            }
        }
    }
}

/// Weights prepared once (as a loaded model holds them) give exactly what weights prepared on
/// each call give, with both products, direct and Winograd; 9 output channels leave a partial
/// block of packed rows.
#[test]
fn weights_prepared_once_give_the_same_output_as_weights_prepared_per_call() {
    use super::{
        Epilogue, Product, Weights, conv2d_prepared, conv2d_with, conv3x3_prepared, conv3x3_with,
        prepare_filters, prepared_filters, transform_filters,
    };
    let mut rng = crate::rng::Rng::new(31);
    let mut random = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
    let (batch, cin, cout, h, w) = (2, 6, 9, 11, 10);
    let (g, wg) = geometries_3x3(batch, cin, cout, h, w);
    let (input, weight, bias) = (
        random(batch * cin * h * w),
        random(cout * cin * 9),
        random(cout),
    );
    let epilogue = Epilogue {
        bias: &bias,
        residual: None,
        relu: true,
    };
    let transformed = transform_filters(&weight, cout, cin);
    for product in [Product::Gemm, Product::Tiles] {
        let prepared = Weights::prepare(&weight, cout, g.patch_len(), product);
        let weights = Weights::prepared(&prepared, cout, g.patch_len(), product);
        let per_call = conv2d_with(&input, g, &weight, epilogue, product);
        assert_eq!(conv2d_prepared(&input, g, &weights, epilogue), per_call);
        let prepared = prepare_filters(&weight, cout, cin, product);
        let filters = prepared_filters(&prepared, cout, cin, product);
        let per_call = conv3x3_with(&input, wg, &transformed, epilogue, product);
        assert_eq!(conv3x3_prepared(&input, wg, &filters, epilogue), per_call);
    }
}

/// A 3x3 stride-1 padding-1 convolution's shape for the direct kernel and for Winograd.
fn geometries_3x3(
    batch: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
) -> (super::ConvGeometry, super::WinogradGeometry) {
    let direct = super::ConvGeometry {
        batch,
        in_channels: cin,
        height: h,
        width: w,
        out_channels: cout,
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let winograd = super::WinogradGeometry {
        batch,
        in_channels: cin,
        out_channels: cout,
        height: h,
        width: w,
    };
    (direct, winograd)
}

/// The trainable convolution's output and both gradients against burn's `conv2d` under burn's
/// autodiff, through a random linear loss `sum(conv(x) * r)`.
#[cfg(feature = "training")]
#[test]
fn trainable_convolution_gradients_match_burns() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    let device = Device::flex().autodiff();
    device.seed(11);
    // Plus one with over 1024 output pixels, not a multiple of 16 (the weight gradient's AVX-512
    // tiles, two chunks of pixels and a masked tail).
    for (batch, cin, cout, h, w, k, stride) in SHAPES.into_iter().chain([(2, 4, 8, 47, 41, 3, 1)]) {
        let x = random([batch, cin, h, w], &device);
        let weight = random([cout, cin, k, k], &device);
        let options = ConvOptions::new([stride, stride], [k / 2, k / 2], [1, 1], 1);
        let run = |ours: bool| {
            let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
            let out = if ours {
                super::conv2d_trainable(x.clone(), weight.clone(), stride, k / 2)
            } else {
                conv2d(x.clone(), weight.clone(), None, options.clone())
            };
            device.seed(3);
            let r = Tensor::<4>::random(out.dims(), Distribution::Normal(0.0, 1.0), &device);
            let grads = (out.clone() * r).sum().backward();
            let grad = |t: &Tensor<4>| t.grad(&grads).expect("tracked");
            (out.inner(), grad(&x), grad(&weight))
        };
        let (ours, reference) = (run(true), run(false));
        let shape = (batch, cin, cout, h, w, k, stride);
        for (name, a, b) in [
            ("output", ours.0, reference.0),
            ("input gradient", ours.1, reference.1),
            ("weight gradient", ours.2, reference.2),
        ] {
            let diff = relative_difference(a, b);
            assert!(diff < 1e-4, "{name} of {shape:?} differs by {diff}");
        }
    }
}

//! The backward passes of a square convolution without bias (every convolution of the model: a
//! BatchNorm follows each), for training on the CPU backend natively. burn's own backward passes
//! rearrange the data several times (NHWC copies, a transposed convolution for the input's
//! gradient, a convolution with the output's size as its kernel for the weights'); these go
//! straight from NCHW:
//! - the weights' gradient is one matrix product per image, `∂out · columnsᵀ`, on the im2col
//!   columns of the forward pass, summed over the images;
//! - the input's gradient of a stride-1 convolution is itself a stride-1 convolution, of `∂out`
//!   with the filters flipped and transposed, so it runs on the forward kernels (register tiles,
//!   padded copies, threads);
//! - for larger strides it is `weightᵀ · ∂out` per image, whose columns are added back onto the
//!   input's pixels (col2im).

use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::{ConvGeometry, Epilogue, Product, conv2d_with, im2col_segment};
use super::tasks::scratch;

std::thread_local! {
    /// Each thread's columns (one image's, a few MB), reused across calls: fresh ones would be
    /// mapped, page-faulted and zeroed by the kernel on every convolution of every step.
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `∂L/∂weight`, `[out, in * k * k]`, from the forward pass's `input` `[batch, in, h, w]` and
/// `grad_out` `[batch, out, oh, ow]`. The images are shared between the threads; each sums its
/// share into a matrix of its own, and the matrices are added at the end.
///
/// # Panics
/// When a slice's length does not match `g` (a programming error).
pub fn conv2d_weight_grad(input: &[f32], g: ConvGeometry, grad_out: &[f32]) -> Vec<f32> {
    let (rows, depth, pixels) = (g.out_channels, g.patch_len(), g.out_pixels());
    let image_len = g.in_channels * g.height * g.width;
    assert_eq!(input.len(), g.batch * image_len);
    assert_eq!(grad_out.len(), g.batch * rows * pixels);
    let shares = rayon::current_num_threads().clamp(1, g.batch.max(1));
    let per_share = g.batch.div_ceil(shares).max(1);
    let firsts: Vec<usize> = (0..g.batch).step_by(per_share).collect();
    let partials: Vec<Vec<f32>> = firsts
        .into_par_iter()
        .map(|first| {
            let mut sum = vec![0.0; rows * depth];
            COLUMNS.with_borrow_mut(|columns| {
                let columns = scratch(columns, depth * pixels);
                for b in first..(first + per_share).min(g.batch) {
                    let image = &input[b * image_len..][..image_len];
                    im2col_segment(image, g, 0..pixels, columns);
                    let grad = &grad_out[b * rows * pixels..][..rows * pixels];
                    accumulate_grad_columns(&mut sum, grad, columns, (rows, depth, pixels));
                }
            });
            sum
        })
        .collect();
    sum_all(partials, rows * depth)
}

/// `sum[rows, depth] += grad[rows, pixels] · columns[depth, pixels]ᵀ`: on AVX-512 by the
/// project's tiles (`grad_avx512.rs`), elsewhere by `gemm`.
fn accumulate_grad_columns(
    sum: &mut [f32],
    grad: &[f32],
    columns: &[f32],
    (rows, depth, pixels): (usize, usize, usize),
) {
    assert!(sum.len() == rows * depth && grad.len() == rows * pixels);
    assert_eq!(columns.len(), depth * pixels);
    // The tiles reduce their registers' lanes once per tile and image: worth it over long rows
    // (the first two stages: 88 and 98 GFLOP/s against gemm's 21 and 37 at quarter width), not
    // over the last stages' 64 to 256 pixels (15 against 140).
    #[cfg(target_arch = "x86_64")]
    if pixels >= 1024 && super::avx512::available() {
        // SAFETY: the CPU has AVX-512F (checked on the line above).
        return unsafe {
            super::grad_avx512::accumulate(sum, grad, columns, (rows, depth, pixels))
        };
    }
    // SAFETY: the three matrices have the lengths checked above; `sum` is written transposed
    // (column stride `depth`), `grad` read transposed (column stride `pixels`). The product is
    // taken as its transpose, `sumᵀ = columns · gradᵀ`, which puts the many `depth` rows, not
    // the few `rows`, along the tall side of gemm's micro-kernel.
    unsafe {
        gemm::gemm(
            depth,
            rows,
            pixels,
            sum.as_mut_ptr(),
            depth as isize,
            1,
            true,
            columns.as_ptr(),
            1,
            pixels as isize,
            grad.as_ptr(),
            pixels as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

fn sum_all(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    partials
        .into_iter()
        .reduce(|mut total, part| {
            total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
            total
        })
        .unwrap_or_else(|| vec![0.0; len])
}

/// `∂L/∂input`, `[batch, in, h, w]`, from the `weight` `[out, in * k * k]` (row-major, burn's
/// `[out, in, k, k]`) and `grad_out` `[batch, out, oh, ow]`.
///
/// # Panics
/// When a slice's length does not match `g` (a programming error).
pub fn conv2d_input_grad(weight: &[f32], g: ConvGeometry, grad_out: &[f32]) -> Vec<f32> {
    assert_eq!(weight.len(), g.out_channels * g.patch_len());
    assert_eq!(grad_out.len(), g.batch * g.out_channels * g.out_pixels());
    if g.stride == 1 && g.padding < g.kernel {
        input_grad_as_convolution(weight, g, grad_out)
    } else {
        input_grad_by_col2im(weight, g, grad_out)
    }
}

/// Stride 1: `∂input = conv(∂out, flipped)` with padding `k - 1 - padding`, where
/// `flipped[in, out, ky, kx] = weight[out, in, k-1-ky, k-1-kx]`.
fn input_grad_as_convolution(weight: &[f32], g: ConvGeometry, grad_out: &[f32]) -> Vec<f32> {
    let transposed = ConvGeometry {
        batch: g.batch,
        in_channels: g.out_channels,
        height: g.out_height(),
        width: g.out_width(),
        out_channels: g.in_channels,
        kernel: g.kernel,
        stride: 1,
        padding: g.kernel - 1 - g.padding,
    };
    let flipped = flip_filters(weight, g.out_channels, g.in_channels, g.kernel);
    let bias = vec![0.0; g.in_channels];
    let epilogue = Epilogue {
        bias: &bias,
        residual: None,
        relu: false,
    };
    conv2d_with(grad_out, transposed, &flipped, epilogue, Product::best())
}

/// `[out, in, k, k]` → `[in, out, k, k]`, each filter turned by 180°.
fn flip_filters(weight: &[f32], out: usize, input: usize, k: usize) -> Vec<f32> {
    let taps = k * k;
    let mut flipped = vec![0.0; weight.len()];
    for o in 0..out {
        for i in 0..input {
            let from = &weight[(o * input + i) * taps..][..taps];
            let to = &mut flipped[(i * out + o) * taps..][..taps];
            to.iter_mut()
                .zip(from.iter().rev())
                .for_each(|(t, f)| *t = *f);
        }
    }
    flipped
}

/// Any stride: per image, the columns' gradient `weightᵀ · ∂out` (`[in * k * k, oh * ow]`),
/// each added back onto the input pixel it was gathered from. Images run on rayon's threads.
fn input_grad_by_col2im(weight: &[f32], g: ConvGeometry, grad_out: &[f32]) -> Vec<f32> {
    let (rows, depth, pixels) = (g.out_channels, g.patch_len(), g.out_pixels());
    let image_len = g.in_channels * g.height * g.width;
    let mut grad_in = vec![0.0; g.batch * image_len];
    grad_in
        .par_chunks_exact_mut(image_len.max(1))
        .zip(grad_out.par_chunks_exact((rows * pixels).max(1)))
        .for_each(|(image, grad)| {
            COLUMNS.with_borrow_mut(|columns| {
                let columns = scratch(columns, depth * pixels);
                weights_transposed_times(weight, grad, columns, (rows, depth, pixels));
                col2im_add(columns, g, image);
            });
        });
    grad_in
}

/// `columns[depth, pixels] = weight[rows, depth]ᵀ · grad[rows, pixels]`.
fn weights_transposed_times(
    weight: &[f32],
    grad: &[f32],
    columns: &mut [f32],
    (rows, depth, pixels): (usize, usize, usize),
) {
    assert!(weight.len() == rows * depth && grad.len() == rows * pixels);
    assert_eq!(columns.len(), depth * pixels);
    // SAFETY: lengths checked above; `weight` is read transposed (column stride `depth`, row
    // stride 1), the others row-major.
    unsafe {
        gemm::gemm(
            depth,
            pixels,
            rows,
            columns.as_mut_ptr(),
            1,
            pixels as isize,
            false,
            weight.as_ptr(),
            depth as isize,
            1,
            grad.as_ptr(),
            1,
            pixels as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// The inverse of im2col's gather, summing: each value of row `(c, ky, kx)`, column
/// `(oy, ox)` is added to the input pixel `(c, oy * stride + ky - padding, ox * stride + kx -
/// padding)` of `image`, when that pixel is inside the image.
fn col2im_add(columns: &[f32], g: ConvGeometry, image: &mut [f32]) {
    let (k, s, p) = (g.kernel, g.stride, g.padding);
    let (oh, ow, pixels) = (g.out_height(), g.out_width(), g.out_pixels());
    let plane_len = g.height * g.width;
    let taps = (0..g.in_channels)
        .flat_map(|c| (0..k).flat_map(move |ky| (0..k).map(move |kx| (c, ky, kx))));
    for ((c, ky, kx), row) in taps.zip(columns.chunks_exact(pixels.max(1))) {
        let plane = &mut image[c * plane_len..][..plane_len];
        // Output columns whose input column `ox * s + kx - p` lies inside the image.
        let first_ox = p.saturating_sub(kx).div_ceil(s);
        let end_ox = (g.width + p).saturating_sub(kx).div_ceil(s).min(ow);
        for oy in 0..oh {
            let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < g.height) else {
                continue;
            };
            let line = &mut plane[iy * g.width..][..g.width];
            let values = &row[oy * ow..][..ow];
            for ox in first_ox..end_ox {
                line[ox * s + kx - p] += values[ox];
            }
        }
    }
}

//! A square convolution over an NCHW batch with its epilogue (bias, residual add, ReLU) fused.
//! The work is split into tasks of cache-sized segments of output pixels (and, for the last,
//! small layers, groups of output channels), run on rayon's threads natively. Each task's
//! columns are either read in place from a padded copy of the input ([`PaddedInput`]: AVX-512,
//! output rows of whole registers) or made by im2col straight from NCHW (as onnxruntime's MLAS
//! does); then one matrix product ([`Product`]: the project's register tiles on AVX-512 and in
//! wasm, the `gemm` crate elsewhere) with the epilogue applied while the tile is in registers or
//! the segment in cache.

use gemm::Parallelism;

use std::ops::Range;

use super::microkernel::{self, Destination, NativeLanes, PackedWeights};
use super::padded::PaddedInput;
use super::tasks::{SharedOut, Task, run_segments, scratch};

/// Shape of one square convolution over an NCHW batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    /// The convolution of an input of dimensions `[batch, in, h, w]` into `out_channels`
    /// channels by a square kernel of this `(kernel, stride, padding)`.
    pub fn new(
        [batch, in_channels, height, width]: [usize; 4],
        out_channels: usize,
        (kernel, stride, padding): (usize, usize, usize),
    ) -> Self {
        Self {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel,
            stride,
            padding,
        }
    }

    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Length of one im2col column: the weights of one output channel.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    pub(super) fn out_pixels(&self) -> usize {
        self.out_height() * self.out_width()
    }

    fn in_pixels(&self) -> usize {
        self.height * self.width
    }

    /// A 1x1 convolution without stride or padding reads its input as the column matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// Output pixels per segment: the segment's columns (`patch_len` rows) fill about 128 KiB,
    /// well inside a core's L2, and a segment is at least 64 pixels so the product stays
    /// efficient.
    fn segment_len(&self) -> usize {
        const COLUMN_BYTES: usize = 128 * 1024;
        let fit = COLUMN_BYTES / (4 * self.patch_len().max(1));
        (fit / 16 * 16).max(64).min(self.out_pixels())
    }
}

/// What happens to each output value after the multiply-adds, while its segment is in cache.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    /// One value per output channel.
    pub bias: &'a [f32],
    /// Added before the ReLU (a residual connection); the output's shape.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// # Panics
    /// When the bias or the residual does not fit the output (a programming error).
    pub(super) fn check(&self, out_channels: usize, out_len: usize) {
        assert_eq!(self.bias.len(), out_channels);
        assert!(self.residual.is_none_or(|r| r.len() == out_len));
    }
}

/// How each segment's matrix product is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// The `gemm` crate, then the epilogue over the segment: natively on CPUs without AVX-512,
    /// where its AVX2 kernels are chosen at run time.
    Gemm,
    /// The project's register tiles with the epilogue in registers ([`microkernel`]): in wasm
    /// on simd128, natively on AVX-512 (`kernels/avx512.rs`).
    Tiles,
}

impl Product {
    /// The product for this build and CPU: the tiles in wasm and where the CPU has AVX-512,
    /// else gemm. A model's weights are prepared for it when it loads.
    pub fn best() -> Self {
        if cfg!(target_family = "wasm") || native_tiles() {
            Self::Tiles
        } else {
            Self::Gemm
        }
    }
}

/// Whether the register tiles run on this CPU's own wide registers (AVX-512).
fn native_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// `input` `[batch, in, h, w]`, `weight` `[out, in * k * k]` (row-major, the (in, ky, kx) order
/// of burn's and PyTorch's `[out, in, k, k]`) → `[batch, out, oh, ow]`, with the product chosen
/// by the caller (the tests run both).
pub fn conv2d_with(
    input: &[f32],
    geometry: ConvGeometry,
    weight: &[f32],
    epilogue: Epilogue<'_>,
    product: Product,
) -> Vec<f32> {
    let weights = Weights::new(weight, geometry.out_channels, geometry.patch_len(), product);
    conv2d_prepared(input, geometry, &weights, epilogue)
}

/// [`conv2d_with`] with weights already in the product's layout ([`Weights::prepared`]): what a
/// loaded model calls, so that the weights are not regrouped on every inference.
///
/// # Panics
/// When a slice's length does not match `geometry` (a programming error, not user input).
pub fn conv2d_prepared(
    input: &[f32],
    geometry: ConvGeometry,
    weights: &Weights<'_>,
    epilogue: Epilogue<'_>,
) -> Vec<f32> {
    let g = geometry;
    let out_len = g.batch * g.out_channels * g.out_pixels();
    assert_eq!(input.len(), g.batch * g.in_channels * g.in_pixels());
    assert_eq!(weights.shape(), (g.out_channels, g.patch_len()));
    epilogue.check(g.out_channels, out_len);
    let padded = padded_input(input, g, weights);
    run_segments(
        g.batch,
        g.out_pixels(),
        g.segment_len(),
        g.out_channels,
        out_len,
        |task, out| {
            // SAFETY: every task writes exactly the columns `task.units` of rows
            // `task.channels` of its own image `task.b`.
            unsafe { conv_segment(input, padded.as_ref(), g, weights, epilogue, task, out) };
        },
    )
}

/// Where the product reads the columns in place ([`PaddedInput`]: AVX-512 tiles, output rows of
/// whole registers), the input's padded copy; else `None` (im2col by segments).
fn padded_input(input: &[f32], g: ConvGeometry, weights: &Weights<'_>) -> Option<PaddedInput> {
    let tiles = matches!(weights, Weights::Packed(_)) && native_tiles();
    (tiles && PaddedInput::fits(&g)).then(|| PaddedInput::new(input, g))
}

/// A `[rows, depth]` weight matrix as the chosen product reads it.
pub enum Weights<'a> {
    Plain {
        values: &'a [f32],
        rows: usize,
        depth: usize,
    },
    Packed(PackedWeights<'a>),
}

impl<'a> Weights<'a> {
    /// From row-major `values`, regrouped for this call if the product needs it.
    pub fn new(values: &'a [f32], rows: usize, depth: usize, product: Product) -> Self {
        match product {
            Product::Gemm => Self::Plain {
                values,
                rows,
                depth,
            },
            Product::Tiles => Self::Packed(PackedWeights::new(values, rows, depth)),
        }
    }

    /// Row-major `[rows, depth]` `values` in the layout `product` reads: prepared once, when a
    /// model loads, then borrowed by [`Self::prepared`].
    pub fn prepare(values: &[f32], rows: usize, depth: usize, product: Product) -> Vec<f32> {
        match product {
            Product::Gemm => values.to_vec(),
            Product::Tiles => PackedWeights::pack(values, rows, depth),
        }
    }

    /// Length of [`Self::prepare`]'s result.
    pub fn prepared_len(rows: usize, depth: usize, product: Product) -> usize {
        match product {
            Product::Gemm => rows * depth,
            Product::Tiles => PackedWeights::packed_len(rows, depth),
        }
    }

    /// Borrows values from [`Self::prepare`] with the same product.
    ///
    /// # Panics
    /// When `values` is not [`Self::prepared_len`] long (a programming error).
    pub fn prepared(values: &'a [f32], rows: usize, depth: usize, product: Product) -> Self {
        assert_eq!(values.len(), Self::prepared_len(rows, depth, product));
        match product {
            Product::Gemm => Self::Plain {
                values,
                rows,
                depth,
            },
            Product::Tiles => Self::Packed(PackedWeights::from_packed(values, rows, depth)),
        }
    }

    /// `(rows, depth)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            &Self::Plain { rows, depth, .. } => (rows, depth),
            Self::Packed(packed) => packed.shape(),
        }
    }

    /// Rows `range` alone, borrowed.
    ///
    /// # Panics
    /// When the range starts inside a block of [`TILE_ROWS`] rows or ends past the last row (a
    /// programming error).
    pub(super) fn rows(&self, range: Range<usize>) -> Weights<'_> {
        match self {
            &Self::Plain { values, depth, .. } => Weights::Plain {
                values: &values[range.start * depth..range.end * depth],
                rows: range.len(),
                depth,
            },
            Self::Packed(packed) => Weights::Packed(packed.rows(range)),
        }
    }

    /// `to[rows, len] = epilogue(self · rhs[depth, len])`, `rhs` rows `rhs_stride` apart.
    ///
    /// # Safety
    /// `rhs` holds `depth` rows of `len` values `rhs_stride` apart; `to` holds `rows` rows of
    /// `len` values `to.stride` apart.
    pub(super) unsafe fn multiply(
        &self,
        rhs: *const f32,
        rhs_stride: usize,
        len: usize,
        to: Destination<'_>,
    ) {
        match self {
            Self::Packed(packed) => unsafe {
                #[cfg(target_arch = "x86_64")]
                if super::avx512::available() {
                    return super::avx512::multiply(packed, rhs, rhs_stride, len, to);
                }
                microkernel::multiply::<NativeLanes>(packed, rhs, rhs_stride, len, to);
            },
            &Self::Plain {
                values,
                rows,
                depth,
            } => {
                let shape = (rows, depth, len);
                unsafe { gemm_product(values, shape, rhs, rhs_stride, to.out, to.stride) };
                for c in 0..rows {
                    let row = c * to.stride;
                    // SAFETY: row `c`'s `len` values are the caller's (see above).
                    let values = unsafe { std::slice::from_raw_parts_mut(to.out.add(row), len) };
                    let residual = to
                        .residual
                        .map(|r| unsafe { std::slice::from_raw_parts(r.add(row), len) });
                    apply_epilogue(values, to.bias[c], residual, to.relu);
                }
            }
        }
    }
}

std::thread_local! {
    /// Each thread's im2col segment, reused across calls (a fresh 128 KiB allocation per segment
    /// would go to `mmap` and back).
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Output pixels `task.units` of channels `task.channels` of image `task.b`: columns, product,
/// epilogue.
///
/// # Safety
/// `out` points to the whole `[batch, out, oh, ow]` output, and no other thread writes these
/// values.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
unsafe fn conv_segment(
    input: &[f32],
    padded: Option<&PaddedInput>,
    g: ConvGeometry,
    weights: &Weights<'_>,
    epilogue: Epilogue<'_>,
    task: Task,
    out: SharedOut,
) {
    let Task {
        b,
        units: pixels,
        channels,
    } = task;
    let image = &input[b * g.in_channels * g.in_pixels()..][..g.in_channels * g.in_pixels()];
    let first = b * g.out_channels * g.out_pixels() + pixels.start;
    let len = pixels.len();
    let weights = weights.rows(channels.clone());
    // SAFETY: `out + first` with row stride `out_pixels` stays inside image `b`'s
    // `[out, oh, ow]` block for `out_channels` rows of `len` values, as does the residual; the
    // task's rows start at row `channels.start`.
    let to = unsafe {
        Destination {
            out: out.0.add(first),
            residual: epilogue.residual.map(|r| r[first..].as_ptr()),
            stride: g.out_pixels(),
            bias: epilogue.bias,
            relu: epilogue.relu,
        }
        .at(channels.start, 0)
    };
    #[cfg(target_arch = "x86_64")]
    if let (Some(padded), Weights::Packed(packed)) = (padded, &weights) {
        // SAFETY: `padded_input` made `padded` only for packed weights on an AVX-512 CPU; the
        // segments are whole registers of output rows (`segment_len` is a multiple of 16).
        return unsafe {
            super::avx512::multiply_padded(packed, padded, padded.image(b), pixels, to)
        };
    }
    if g.is_pointwise() {
        let rhs = &image[pixels.start..];
        unsafe { weights.multiply(rhs.as_ptr(), g.in_pixels(), len, to) };
    } else {
        COLUMNS.with_borrow_mut(|columns| {
            let columns = scratch(columns, g.patch_len() * len);
            im2col_segment(image, g, pixels.clone(), columns);
            unsafe { weights.multiply(columns.as_ptr(), len, len, to) };
        });
    }
}

/// `dst[m, n] = weight[m, k] · rhs[k, n]` by the `gemm` crate, `(m, k, n) = shape`, `rhs` rows
/// `rhs_stride` apart, `dst` rows `dst_stride` apart.
///
/// # Safety
/// `rhs` holds `k` rows of `n` values `rhs_stride` apart; `dst` holds `m` rows of `n` values
/// `dst_stride` apart.
unsafe fn gemm_product(
    weight: &[f32],
    (m, k, len): (usize, usize, usize),
    rhs: *const f32,
    rhs_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    assert_eq!(weight.len(), m * k);
    // SAFETY: the caller's contract; `weight` is `[m, k]` row-major (checked above).
    unsafe {
        gemm::gemm(
            m,
            len,
            k,
            dst,
            1,
            dst_stride as isize,
            false,
            weight.as_ptr(),
            1,
            k as isize,
            rhs,
            1,
            rhs_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Bias, residual and ReLU over one output row segment.
fn apply_epilogue(values: &mut [f32], bias: f32, residual: Option<&[f32]>, relu: bool) {
    match (residual, relu) {
        (Some(r), true) => values
            .iter_mut()
            .zip(r)
            .for_each(|(v, r)| *v = (*v + bias + r).max(0.0)),
        (Some(r), false) => values.iter_mut().zip(r).for_each(|(v, r)| *v += bias + r),
        (None, true) => values.iter_mut().for_each(|v| *v = (*v + bias).max(0.0)),
        (None, false) => values.iter_mut().for_each(|v| *v += bias),
    }
}

/// The im2col columns of output pixels `pixels` of one image: row `(c, ky, kx)` holds, for
/// each of those pixels, the input value under that tap (zero in the padding).
pub(super) fn im2col_segment(
    image: &[f32],
    g: ConvGeometry,
    pixels: std::ops::Range<usize>,
    columns: &mut [f32],
) {
    let (k, ow, len) = (g.kernel, g.out_width(), pixels.len());
    let taps = (0..g.in_channels)
        .flat_map(|c| (0..k).flat_map(move |ky| (0..k).map(move |kx| (c, ky, kx))));
    for ((c, ky, kx), row) in taps.zip(columns.chunks_exact_mut(len)) {
        let plane = &image[c * g.in_pixels()..][..g.in_pixels()];
        let mut p = pixels.start;
        while p < pixels.end {
            let (oy, ox) = (p / ow, p % ow);
            let run = (ow - ox).min(pixels.end - p);
            let dst = &mut row[p - pixels.start..][..run];
            let iy = (oy * g.stride + ky) as isize - g.padding as isize;
            if iy < 0 || iy as usize >= g.height {
                dst.fill(0.0);
            } else {
                let src = &plane[iy as usize * g.width..][..g.width];
                gather_row(dst, src, ox * g.stride + kx, g);
            }
            p += run;
        }
    }
}

/// `dst[j] = src[first + j * stride - padding]`, zero outside `src`.
fn gather_row(dst: &mut [f32], src: &[f32], first: usize, g: ConvGeometry) {
    let (stride, pad) = (g.stride, g.padding);
    if stride == 1 {
        // Pixels left of the image, then a straight copy, then pixels right of it.
        let lead = pad.saturating_sub(first).min(dst.len());
        let start = (first + lead) - pad;
        let body = (src.len().saturating_sub(start)).min(dst.len() - lead);
        dst[..lead].fill(0.0);
        dst[lead..lead + body].copy_from_slice(&src[start..start + body]);
        dst[lead + body..].fill(0.0);
    } else {
        for (j, d) in dst.iter_mut().enumerate() {
            let ix = (first + j * stride).wrapping_sub(pad);
            *d = src.get(ix).copied().unwrap_or(0.0);
        }
    }
}

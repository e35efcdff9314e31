//! The register tiles of [`super::microkernel`] on AVX-512, for native x86-64 CPUs that have it
//! (chosen at run time). The `gemm` crate's AVX-512 kernels pack both operands on every call,
//! which for this network's small products (16 to 128 output channels, a segment of at most a few
//! thousand pixels) is a pass over the columns as long as the product's own reads; and its
//! epilogue is a second pass. Here the weights are read as they were packed when the model loaded
//! ([`PackedWeights`]: blocks of 4 output channels), the columns in place, 16 pixels per register.
//! A tile is 4 output channels x 64 pixels: 16 accumulators, 4 column registers and a broadcast,
//! within AVX-512's 32 registers. The last columns of a row are a masked tile of fewer registers,
//! so no pixel is left to scalar code; bias, residual and ReLU are applied in registers before
//! the tile's one (masked) store.

use std::arch::x86_64::*;

use super::microkernel::{Destination, PackedWeights, TILE_ROWS};
use super::padded::PaddedInput;

/// f32 lanes in one register.
const LANES: usize = super::padded::LANES;
/// Registers of pixels in a full tile.
const WIDE: usize = 4;

/// Whether this CPU runs [`multiply`].
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// As [`super::microkernel::multiply`]: `out[r][j] = epilogue(Σ_d weight[r][d] ·
/// rhs[d * rhs_stride + j])` for every weight row `r` and `j < len`.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `rhs` holds `depth` rows of `len` values `rhs_stride`
/// apart; `to` holds (and, with a residual, reads) `rows` rows of `len` values `to.stride` apart.
#[target_feature(enable = "avx512f")]
pub unsafe fn multiply(
    weight: &PackedWeights<'_>,
    rhs: *const f32,
    rhs_stride: usize,
    len: usize,
    to: Destination<'_>,
) {
    let (weight_rows, _) = weight.shape();
    for block in 0..weight_rows.div_ceil(TILE_ROWS) {
        let rows = (weight_rows - block * TILE_ROWS).min(TILE_ROWS);
        let packed = weight.block(block);
        // SAFETY (all calls): columns [j, j + 64) and the masked rest lie within `len`, rows
        // within the weight's (the caller's contract).
        unsafe {
            let to = to.at(block * TILE_ROWS, 0);
            let mut j = 0;
            while j + WIDE * LANES <= len {
                tile::<WIDE>(packed, rhs.add(j), rhs_stride, rows, to.at(0, j), u16::MAX);
                j += WIDE * LANES;
            }
            let rest = len - j;
            // The last register of the rest holds `rest % 16` pixels (16 when it divides).
            let mask = match rest % LANES {
                0 => u16::MAX,
                partial => (1u16 << partial) - 1,
            };
            let (rhs, to) = (rhs.add(j), to.at(0, j));
            match rest.div_ceil(LANES) {
                0 => {}
                1 => tile::<1>(packed, rhs, rhs_stride, rows, to, mask),
                2 => tile::<2>(packed, rhs, rhs_stride, rows, to, mask),
                3 => tile::<3>(packed, rhs, rhs_stride, rows, to, mask),
                _ => tile::<4>(packed, rhs, rhs_stride, rows, to, mask),
            }
        }
    }
}

/// The same product with the columns read in place from a [`PaddedInput`] copy of one image
/// (no im2col): output pixels `pixels` (a range of whole rows' registers: its start and length
/// multiples of 16) of every weight row.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `image` is `input.image(b)` for the convolution the
/// weights belong to; `to` holds (and, with a residual, reads) `rows` rows of `pixels.len()`
/// values `to.stride` apart.
#[target_feature(enable = "avx512f")]
pub unsafe fn multiply_padded(
    weight: &PackedWeights<'_>,
    input: &PaddedInput,
    image: &[f32],
    pixels: std::ops::Range<usize>,
    to: Destination<'_>,
) {
    let (weight_rows, depth) = weight.shape();
    assert_eq!(input.taps().len(), depth);
    assert!(pixels.start.is_multiple_of(LANES) && pixels.len().is_multiple_of(LANES));
    for block in 0..weight_rows.div_ceil(TILE_ROWS) {
        let rows = (weight_rows - block * TILE_ROWS).min(TILE_ROWS);
        let packed = weight.block(block);
        // SAFETY: rows within the weight's, columns within `pixels` (the caller's contract).
        let to = unsafe { to.at(block * TILE_ROWS, 0) };
        let mut j = pixels.start;
        while j < pixels.end {
            let registers = ((pixels.end - j) / LANES).min(WIDE);
            let columns = |v: usize| input.pixel_offset(j + LANES * v);
            // SAFETY: each register's 16 pixels lie in one output row, so tap offset plus
            // pixel offset addresses 16 values inside `image` (`PaddedInput`'s layout).
            unsafe {
                let to = to.at(0, j - pixels.start);
                let image = image.as_ptr();
                match registers {
                    1 => tile_padded::<1>(packed, image, input.taps(), [columns(0)], rows, to),
                    2 => {
                        let at = [columns(0), columns(1)];
                        tile_padded::<2>(packed, image, input.taps(), at, rows, to);
                    }
                    3 => {
                        let at = [columns(0), columns(1), columns(2)];
                        tile_padded::<3>(packed, image, input.taps(), at, rows, to);
                    }
                    _ => {
                        let at = [columns(0), columns(1), columns(2), columns(3)];
                        tile_padded::<4>(packed, image, input.taps(), at, rows, to);
                    }
                }
            }
            j += registers * LANES;
        }
    }
}

/// `rows` (≤ 4) output channels x `V` registers of pixels, the last register's lanes limited to
/// `last_mask`.
///
/// # Safety
/// As [`multiply`], for the `16 * (V - 1) + last_mask.count_ones()` columns.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const V: usize>(
    packed: &[f32],
    rhs: *const f32,
    rhs_stride: usize,
    rows: usize,
    to: Destination<'_>,
    last_mask: u16,
) {
    let mask = |v: usize| if v + 1 == V { last_mask } else { u16::MAX };
    let mut acc = [[_mm512_setzero_ps(); V]; TILE_ROWS];
    for (d, w) in packed.chunks_exact(TILE_ROWS).enumerate() {
        // SAFETY: row `d` of `rhs` has these columns; masked-off lanes are not read.
        let column: [__m512; V] = std::array::from_fn(|v| unsafe {
            _mm512_maskz_loadu_ps(mask(v), rhs.add(d * rhs_stride + LANES * v))
        });
        accumulate(&mut acc, w, &column);
    }
    // SAFETY: the caller's contract.
    unsafe { finish(&acc, rows, to, mask) };
}

/// [`tile`] with register `v`'s columns at `image + taps[d] + at[v]` for weight column `d`.
///
/// # Safety
/// As [`multiply_padded`]: those 16 values are inside the image for every `d` and `v`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_padded<const V: usize>(
    packed: &[f32],
    image: *const f32,
    taps: &[usize],
    at: [usize; V],
    rows: usize,
    to: Destination<'_>,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; TILE_ROWS];
    for (w, &tap) in packed.chunks_exact(TILE_ROWS).zip(taps) {
        // SAFETY: the caller's contract.
        let column: [__m512; V] =
            std::array::from_fn(|v| unsafe { _mm512_loadu_ps(image.add(tap + at[v])) });
        accumulate(&mut acc, w, &column);
    }
    // SAFETY: the caller's contract.
    unsafe { finish(&acc, rows, to, |_| u16::MAX) };
}

/// One weight column's multiply-adds: `acc[r] += w[r] * column`.
#[target_feature(enable = "avx512f")]
#[inline]
fn accumulate<const V: usize>(acc: &mut [[__m512; V]; TILE_ROWS], w: &[f32], column: &[__m512; V]) {
    for (acc, &w) in acc.iter_mut().zip(w) {
        let a = _mm512_set1_ps(w);
        for v in 0..V {
            acc[v] = _mm512_fmadd_ps(a, column[v], acc[v]);
        }
    }
}

/// Bias, residual and ReLU in registers, then the tile's one store per register, lanes limited
/// to `mask(v)`.
///
/// # Safety
/// `to` holds (and, with a residual, reads) `rows` rows with these registers' columns.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn finish<const V: usize>(
    acc: &[[__m512; V]; TILE_ROWS],
    rows: usize,
    to: Destination<'_>,
    mask: impl Fn(usize) -> u16,
) {
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let bias = _mm512_set1_ps(to.bias[r]);
        for (v, &sum) in acc.iter().enumerate() {
            let offset = r * to.stride + LANES * v;
            let mut x = _mm512_add_ps(sum, bias);
            // SAFETY: row `r` of the destination has these columns (the caller's contract);
            // masked-off lanes are neither read nor written.
            unsafe {
                if let Some(residual) = to.residual {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask(v), residual.add(offset)));
                }
                if to.relu {
                    x = _mm512_max_ps(x, _mm512_setzero_ps());
                }
                _mm512_mask_storeu_ps(to.out.add(offset), mask(v), x);
            }
        }
    }
}

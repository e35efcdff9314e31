//! The weights' gradient on AVX-512: `sum[r, d] += Σ_p grad[r, p] · columns[d, p]`, both
//! operands read along their contiguous pixel axis. The `gemm` crate wants one of them
//! transposed and packs it one scalar at a time (a profile of a training step had over half
//! the weight gradient's time in that packing). Here a tile is 4 rows x 4 columns of the result:
//! 16 accumulators each summing 16 pixels per register, fed by 4 + 4 loads per 16 multiply-adds,
//! and reduced across lanes once per chunk of pixels.

use std::arch::x86_64::*;

const LANES: usize = 16;
/// Rows and columns of the result per tile.
const TILE: usize = 4;
/// Pixels summed in registers before the lanes are reduced and added to `sum`: the tile's 8
/// rows of 1024 pixels (32 KiB) stay in L1/L2 while all its column tiles pass over them.
const CHUNK: usize = 1024;

/// `sum[rows, depth] += grad[rows, pixels] · columns[depth, pixels]ᵀ`.
///
/// # Safety
/// The CPU has AVX-512F (`super::avx512::available`).
///
/// # Panics
/// When a slice's length does not match the shape (a programming error).
#[target_feature(enable = "avx512f")]
pub unsafe fn accumulate(
    sum: &mut [f32],
    grad: &[f32],
    columns: &[f32],
    (rows, depth, pixels): (usize, usize, usize),
) {
    assert!(sum.len() == rows * depth && grad.len() == rows * pixels);
    assert_eq!(columns.len(), depth * pixels);
    for start in (0..pixels).step_by(CHUNK) {
        let len = (pixels - start).min(CHUNK);
        for r in (0..rows).step_by(TILE) {
            for d in (0..depth).step_by(TILE) {
                let (tile_rows, tile_cols) = ((rows - r).min(TILE), (depth - d).min(TILE));
                // SAFETY: rows `r..r + tile_rows` of `grad` and `d..d + tile_cols` of `columns`
                // exist (the bounds above), each holding pixels `start..start + len`.
                let sums = unsafe {
                    let g = grad.as_ptr().add(r * pixels + start);
                    let c = columns.as_ptr().add(d * pixels + start);
                    if tile_rows == TILE && tile_cols == TILE {
                        tile(g, c, pixels, len)
                    } else {
                        edge_tile(g, c, pixels, len, tile_rows, tile_cols)
                    }
                };
                for (i, row) in sums.iter().enumerate().take(tile_rows) {
                    let out = &mut sum[(r + i) * depth + d..][..tile_cols];
                    out.iter_mut().zip(row).for_each(|(o, s)| *o += s);
                }
            }
        }
    }
}

/// The 4x4 sums of `len` pixels: `g` rows and `c` rows `stride` apart.
///
/// # Safety
/// AVX-512F; 4 rows of `len` values `stride` apart at `g` and at `c`.
#[target_feature(enable = "avx512f")]
unsafe fn tile(g: *const f32, c: *const f32, stride: usize, len: usize) -> [[f32; TILE]; TILE] {
    let mut acc = [[_mm512_setzero_ps(); TILE]; TILE];
    let mut p = 0;
    while p < len {
        let mask = lane_mask(len - p);
        let (mut gs, mut cs) = ([_mm512_setzero_ps(); TILE], [_mm512_setzero_ps(); TILE]);
        for (i, (g_i, c_i)) in gs.iter_mut().zip(cs.iter_mut()).enumerate() {
            // SAFETY: the masked lanes lie within row `i`'s `len` values (the caller's
            // contract).
            unsafe {
                *g_i = _mm512_maskz_loadu_ps(mask, g.add(i * stride + p));
                *c_i = _mm512_maskz_loadu_ps(mask, c.add(i * stride + p));
            }
        }
        for (acc_row, g) in acc.iter_mut().zip(gs) {
            for (a, c) in acc_row.iter_mut().zip(cs) {
                *a = _mm512_fmadd_ps(g, c, *a);
            }
        }
        p += LANES;
    }
    acc.map(|row| row.map(|a| _mm512_reduce_add_ps(a)))
}

/// A tile of fewer than 4 rows or columns (the last of a matrix whose side is not a multiple of
/// 4: the stem's 49 taps), one dot product per value.
///
/// # Safety
/// AVX-512F; `rows` rows of `len` values `stride` apart at `g`, `cols` rows at `c`.
#[target_feature(enable = "avx512f")]
unsafe fn edge_tile(
    g: *const f32,
    c: *const f32,
    stride: usize,
    len: usize,
    rows: usize,
    cols: usize,
) -> [[f32; TILE]; TILE] {
    let mut sums = [[0.0; TILE]; TILE];
    for (i, row) in sums.iter_mut().enumerate().take(rows) {
        for (j, value) in row.iter_mut().enumerate().take(cols) {
            let mut acc = _mm512_setzero_ps();
            let mut p = 0;
            while p < len {
                let mask = lane_mask(len - p);
                // SAFETY: the masked lanes lie within rows `i` and `j` (the caller's contract).
                unsafe {
                    let a = _mm512_maskz_loadu_ps(mask, g.add(i * stride + p));
                    let b = _mm512_maskz_loadu_ps(mask, c.add(j * stride + p));
                    acc = _mm512_fmadd_ps(a, b, acc);
                }
                p += LANES;
            }
            *value = _mm512_reduce_add_ps(acc);
        }
    }
    sums
}

/// All 16 lanes, or the first `left` when fewer are left.
fn lane_mask(left: usize) -> __mmask16 {
    if left >= LANES {
        u16::MAX
    } else {
        (1u16 << left) - 1
    }
}

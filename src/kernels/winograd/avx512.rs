//! Winograd's two transforms on AVX-512, for the layers whose tile rows are at most 16 tiles
//! (this network's: 16, 8 and 4 tiles) and whose sizes are even. The portable transforms run
//! 24 loops (input) and 14 (output) over each tile row of each channel; with 4 to 17 values
//! each, their set-up and scalar tails cost more than their arithmetic, and the transforms
//! took as long as the 16 products between them. Here a tile row is one register per value
//! of the 4x4 tile (masked to the row's tiles): the input transform is 16 loads, 32 additions
//! and 16 stores; the output transform 16 loads, 20 additions, an interleave of the even and
//! odd output columns, and the epilogue in registers.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Epilogue, POSITIONS, SharedOut, SplitInput, WinogradGeometry, plane_stride};

/// Tiles in one register.
const LANES: usize = 16;

/// Whether these transforms take `g`: on an AVX-512 CPU, even sizes, tile rows of at most 16.
pub fn fits(g: &WinogradGeometry) -> bool {
    crate::kernels::avx512::available()
        && g.height.is_multiple_of(2)
        && g.width.is_multiple_of(2)
        && g.tiles().1 <= LANES
}

/// The first `n` (≤ 16) lanes.
fn mask(n: usize) -> u16 {
    ((1u32 << n) - 1) as u16
}

/// As the portable `transform_input`.
///
/// # Safety
/// The CPU has AVX-512F and `g` [`fits`]; `transformed` is `[16, in, tiles]` for these tile
/// rows.
#[target_feature(enable = "avx512f")]
pub unsafe fn transform_input(
    split: &SplitInput,
    b: usize,
    g: WinogradGeometry,
    tile_rows: Range<usize>,
    transformed: &mut [f32],
) {
    let tw = g.tiles().1;
    let tiles = tile_rows.len() * tw;
    let plane = plane_stride(g.in_channels * tiles);
    assert_eq!(transformed.len(), POSITIONS * plane);
    let (m, out) = (mask(tw), transformed.as_mut_ptr());
    for c in 0..g.in_channels {
        for (r, ty) in tile_rows.clone().enumerate() {
            // d[i][j]: padded column 2t + j of the tile's row i, for the row's tiles t.
            let d: [[__m512; 4]; 4] = std::array::from_fn(|i| {
                let even = split.row(g.in_channels, b, c, false, 2 * ty + i).as_ptr();
                let odd = split.row(g.in_channels, b, c, true, 2 * ty + i).as_ptr();
                // SAFETY: a split row holds `tw + 1` values: indices `0..tw` and `1..=tw`.
                unsafe {
                    [
                        _mm512_maskz_loadu_ps(m, even),
                        _mm512_maskz_loadu_ps(m, odd),
                        _mm512_maskz_loadu_ps(m, even.add(1)),
                        _mm512_maskz_loadu_ps(m, odd.add(1)),
                    ]
                }
            });
            // Bᵀ down the rows, B along them (Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]).
            let down: [[__m512; 4]; 4] = [
                std::array::from_fn(|j| _mm512_sub_ps(d[0][j], d[2][j])),
                std::array::from_fn(|j| _mm512_add_ps(d[1][j], d[2][j])),
                std::array::from_fn(|j| _mm512_sub_ps(d[2][j], d[1][j])),
                std::array::from_fn(|j| _mm512_sub_ps(d[1][j], d[3][j])),
            ];
            let at = c * tiles + r * tw;
            for (k, x) in down.iter().enumerate() {
                let across = [
                    _mm512_sub_ps(x[0], x[2]),
                    _mm512_add_ps(x[1], x[2]),
                    _mm512_sub_ps(x[2], x[1]),
                    _mm512_sub_ps(x[1], x[3]),
                ];
                for (j, value) in across.into_iter().enumerate() {
                    // SAFETY: plane `4k + j` holds `tiles` values from `at` on (asserted above).
                    unsafe { _mm512_mask_storeu_ps(out.add((4 * k + j) * plane + at), m, value) };
                }
            }
        }
    }
}

/// As the portable `transform_output`.
///
/// # Safety
/// The CPU has AVX-512F and `g` [`fits`]; `products` is `[16, channels, tiles]` for these tile
/// rows; `out` points to one image's `[out, h, w]` output, and no other thread writes these
/// rows.
#[target_feature(enable = "avx512f")]
pub unsafe fn transform_output(
    products: &[f32],
    g: WinogradGeometry,
    tile_rows: Range<usize>,
    channels: Range<usize>,
    epilogue: Epilogue<'_>,
    out: SharedOut,
) {
    let (h, w) = (g.height, g.width);
    let tw = g.tiles().1;
    let tiles = tile_rows.len() * tw;
    let plane = plane_stride(channels.len() * tiles);
    assert_eq!(products.len(), POSITIONS * plane);
    assert!(tile_rows.end * 2 <= h);
    let m = mask(tw);
    // Output columns 0..16 and 16..32 of a row, from its tiles' even and odd outputs.
    let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let (low_mask, high_mask) = (mask(w.min(LANES)), mask(w.saturating_sub(LANES)));
    for (i, c) in channels.enumerate() {
        let bias = _mm512_set1_ps(epilogue.bias[c]);
        for (r, ty) in tile_rows.clone().enumerate() {
            let at = i * tiles + r * tw;
            // SAFETY: plane `e` holds `tiles` values from `at` on (asserted above).
            let v: [__m512; POSITIONS] = std::array::from_fn(|e| unsafe {
                _mm512_maskz_loadu_ps(m, products.as_ptr().add(e * plane + at))
            });
            // Aᵀ down the 4 rows of products, then A along them (Aᵀ = [1 1 1 0; 0 1 -1 -1]).
            let sum3 = |a, b, c| _mm512_add_ps(_mm512_add_ps(a, b), c);
            let diff3 = |a, b, c| _mm512_sub_ps(_mm512_sub_ps(a, b), c);
            let s0: [__m512; 4] = std::array::from_fn(|j| sum3(v[j], v[4 + j], v[8 + j]));
            let s1: [__m512; 4] = std::array::from_fn(|j| diff3(v[4 + j], v[8 + j], v[12 + j]));
            for (dy, s) in [s0, s1].iter().enumerate() {
                let even = sum3(s[0], s[1], s[2]);
                let odd = diff3(s[1], s[2], s[3]);
                let row = c * h * w + (2 * ty + dy) * w;
                let halves = [
                    (_mm512_permutex2var_ps(even, low, odd), low_mask, 0),
                    (_mm512_permutex2var_ps(even, high, odd), high_mask, LANES),
                ];
                for (values, lanes, column) in halves {
                    if lanes == 0 {
                        continue;
                    }
                    let mut x = _mm512_add_ps(values, bias);
                    // SAFETY: row `2ty + dy` of channel `c` has `w` values; the lanes past it
                    // are masked off. The row is this task's (the caller's contract).
                    unsafe {
                        if let Some(residual) = epilogue.residual {
                            let from = residual.as_ptr().add(row + column);
                            x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(lanes, from));
                        }
                        if epilogue.relu {
                            x = _mm512_max_ps(x, _mm512_setzero_ps());
                        }
                        _mm512_mask_storeu_ps(out.0.add(row + column), lanes, x);
                    }
                }
            }
        }
    }
}

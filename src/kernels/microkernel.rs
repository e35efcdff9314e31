//! The fused convolution's matrix product where the `gemm` crate is weak: in wasm. There, gemm's
//! simd128 kernel packs both operands on every call, tiles 12 output channels at a time (the
//! model's layers have 16 to 128, so many tiles are partial) and leaves the epilogue to a second
//! pass. Here a register tile of 4 output channels x 8 output pixels (8 accumulators of 4 lanes:
//! with the operands, within the 16 vector registers V8 maps simd128 to on x86) walks down the
//! shared dimension, reading the weights as broadcasts from a copy packed once per call
//! ([`PackedWeights`]) and the im2col columns in place; bias, residual and ReLU are applied in
//! registers before the tile's one store.
//!
//! The lanes are a small trait ([`Lanes`]), so the same tiling runs natively in the tests on
//! plain arrays ([`Portable`]) and in wasm on `v128` (`Simd128`). Natively the same tiling runs
//! on AVX-512 where the CPU has it (`super::avx512`, 16 lanes), else gemm's AVX2 kernels.

use std::borrow::Cow;

/// Output channels per register tile.
pub const TILE_ROWS: usize = 4;

/// Four f32 lanes: what the tile kernel needs of a SIMD vector.
pub trait Lanes: Copy {
    fn splat(value: f32) -> Self;
    /// # Safety
    /// `p` points to 4 readable values.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p` points to 1 readable value.
    unsafe fn load_splat(p: *const f32) -> Self;
    /// # Safety
    /// `p` points to 4 writable values.
    unsafe fn store(self, p: *mut f32);
    /// `self + a * b`.
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn add(self, other: Self) -> Self;
    fn max_zero(self) -> Self;
}

/// Plain arrays: the tiling's reference, run natively by the tests.
#[cfg_attr(
    all(target_family = "wasm", target_feature = "simd128"),
    allow(dead_code)
)]
#[derive(Clone, Copy)]
pub struct Portable([f32; 4]);

impl Lanes for Portable {
    fn splat(value: f32) -> Self {
        Self([value; 4])
    }

    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's contract.
        Self(unsafe { p.cast::<[f32; 4]>().read_unaligned() })
    }

    unsafe fn load_splat(p: *const f32) -> Self {
        Self::splat(unsafe { p.read() })
    }

    unsafe fn store(self, p: *mut f32) {
        unsafe { p.cast::<[f32; 4]>().write_unaligned(self.0) }
    }

    fn mul_add(self, a: Self, b: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] + a.0[i] * b.0[i]))
    }

    fn add(self, other: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }

    fn max_zero(self) -> Self {
        Self(self.0.map(|v| v.max(0.0)))
    }
}

#[cfg(all(target_family = "wasm", target_feature = "simd128"))]
pub use simd128::Simd128;

#[cfg(all(target_family = "wasm", target_feature = "simd128"))]
mod simd128 {
    use core::arch::wasm32::*;

    use super::Lanes;

    /// wasm's 128-bit vector. With the `relaxed-simd` target feature, the multiply-add is one
    /// fused instruction where the CPU has FMA; otherwise a multiply and an add.
    #[derive(Clone, Copy)]
    pub struct Simd128(v128);

    impl Lanes for Simd128 {
        #[inline(always)]
        fn splat(value: f32) -> Self {
            Self(f32x4_splat(value))
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller's contract; wasm loads need no alignment.
            Self(unsafe { v128_load(p.cast::<v128>()) })
        }

        #[inline(always)]
        unsafe fn load_splat(p: *const f32) -> Self {
            Self(unsafe { v128_load32_splat(p.cast::<u32>()) })
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { v128_store(p.cast::<v128>(), self.0) }
        }

        #[inline(always)]
        fn mul_add(self, a: Self, b: Self) -> Self {
            #[cfg(target_feature = "relaxed-simd")]
            let sum = f32x4_relaxed_madd(a.0, b.0, self.0);
            #[cfg(not(target_feature = "relaxed-simd"))]
            let sum = f32x4_add(self.0, f32x4_mul(a.0, b.0));
            Self(sum)
        }

        #[inline(always)]
        fn add(self, other: Self) -> Self {
            Self(f32x4_add(self.0, other.0))
        }

        /// `pmax` (one x86 `maxps`), not `max` (which V8 expands to handle NaN and -0).
        #[inline(always)]
        fn max_zero(self) -> Self {
            Self(f32x4_pmax(f32x4_splat(0.0), self.0))
        }
    }
}

/// The lanes the product runs on in this build.
#[cfg(all(target_family = "wasm", target_feature = "simd128"))]
pub type NativeLanes = Simd128;
#[cfg(not(all(target_family = "wasm", target_feature = "simd128")))]
pub type NativeLanes = Portable;

/// A `[rows, depth]` weight matrix regrouped as blocks of [`TILE_ROWS`] rows, depth-major inside
/// a block (`[block][depth][TILE_ROWS]`), the last block padded with zeros: each step of the tile
/// kernel reads its 4 weights from one 16-byte run. Packed once when a model loads
/// ([`PackedWeights::pack`]) and borrowed by every inference ([`PackedWeights::from_packed`]).
pub struct PackedWeights<'a> {
    rows: usize,
    depth: usize,
    values: Cow<'a, [f32]>,
}

impl<'a> PackedWeights<'a> {
    /// Packs row-major `weight` for this call only.
    pub fn new(weight: &[f32], rows: usize, depth: usize) -> Self {
        Self {
            rows,
            depth,
            values: Cow::Owned(Self::pack(weight, rows, depth)),
        }
    }

    /// Values already in the packed layout, from [`Self::pack`].
    ///
    /// # Panics
    /// When `packed` is not [`Self::packed_len`] long (a programming error).
    pub fn from_packed(packed: &'a [f32], rows: usize, depth: usize) -> Self {
        assert_eq!(packed.len(), Self::packed_len(rows, depth));
        Self {
            rows,
            depth,
            values: Cow::Borrowed(packed),
        }
    }

    /// Values in a packed `[rows, depth]` matrix, its last block padded.
    pub fn packed_len(rows: usize, depth: usize) -> usize {
        rows.div_ceil(TILE_ROWS) * depth * TILE_ROWS
    }

    /// Row-major `weight` `[rows, depth]` in the packed layout.
    ///
    /// # Panics
    /// When `weight` is not `rows * depth` long (a programming error).
    pub fn pack(weight: &[f32], rows: usize, depth: usize) -> Vec<f32> {
        assert_eq!(weight.len(), rows * depth);
        let mut values = vec![0.0; Self::packed_len(rows, depth)];
        for (r, row) in weight.chunks_exact(depth.max(1)).enumerate() {
            let block = &mut values[r / TILE_ROWS * depth * TILE_ROWS..][..depth * TILE_ROWS];
            for (d, &w) in row.iter().enumerate() {
                block[d * TILE_ROWS + r % TILE_ROWS] = w;
            }
        }
        values
    }

    /// `(rows, depth)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.depth)
    }

    /// Rows `range` alone, borrowed.
    ///
    /// # Panics
    /// When the range starts inside a block or ends past the last row (a programming error).
    pub fn rows(&self, range: std::ops::Range<usize>) -> PackedWeights<'_> {
        assert!(range.start.is_multiple_of(TILE_ROWS) && range.end <= self.rows);
        let rows = range.end.saturating_sub(range.start);
        let start = range.start * self.depth;
        let packed = &self.values[start..][..Self::packed_len(rows, self.depth)];
        PackedWeights::from_packed(packed, rows, self.depth)
    }

    pub(super) fn block(&self, b: usize) -> &[f32] {
        &self.values[b * self.depth * TILE_ROWS..][..self.depth * TILE_ROWS]
    }
}

/// Where a product's rows go and what is added on the way: output rows (and residual rows, same
/// layout) are `stride` values apart; `bias` has one value per weight row.
#[derive(Clone, Copy)]
pub struct Destination<'a> {
    pub out: *mut f32,
    pub residual: Option<*const f32>,
    pub stride: usize,
    pub bias: &'a [f32],
    pub relu: bool,
}

impl Destination<'_> {
    /// The same destination from row `row`, column `column` on.
    ///
    /// # Safety
    /// The offset stays inside the caller's buffers.
    pub(super) unsafe fn at(self, row: usize, column: usize) -> Self {
        let offset = row * self.stride + column;
        unsafe {
            Self {
                out: self.out.add(offset),
                residual: self.residual.map(|r| r.add(offset)),
                bias: &self.bias[row..],
                ..self
            }
        }
    }

    /// Bias, residual and ReLU on one value of row `r`, column `c` (relative to `self`).
    ///
    /// # Safety
    /// As [`Destination::at`].
    unsafe fn finish(&self, r: usize, c: usize, sum: f32) -> f32 {
        let residual = self
            .residual
            .map_or(0.0, |p| unsafe { *p.add(r * self.stride + c) });
        let v = sum + self.bias[r] + residual;
        if self.relu { v.max(0.0) } else { v }
    }
}

/// `out[r][j] = epilogue(Σ_d weight[r][d] · rhs[d * rhs_stride + j])` for every weight row `r`
/// and `j < len`.
///
/// # Safety
/// `rhs` holds `depth` rows of `len` values `rhs_stride` apart; `to` holds (and, with a residual,
/// reads) `rows` rows of `len` values `to.stride` apart.
pub unsafe fn multiply<L: Lanes>(
    weight: &PackedWeights<'_>,
    rhs: *const f32,
    rhs_stride: usize,
    len: usize,
    to: Destination<'_>,
) {
    for block in 0..weight.rows.div_ceil(TILE_ROWS) {
        let rows = (weight.rows - block * TILE_ROWS).min(TILE_ROWS);
        let packed = weight.block(block);
        let mut j = 0;
        // SAFETY (all three): column ranges [j, j + 8), [j, j + 4) and [j, len) lie within
        // `len`, rows within `weight.rows` (the caller's contract).
        unsafe {
            let to = to.at(block * TILE_ROWS, 0);
            while j + 8 <= len {
                tile::<L, 2>(packed, rhs.add(j), rhs_stride, rows, to.at(0, j));
                j += 8;
            }
            if j + 4 <= len {
                tile::<L, 1>(packed, rhs.add(j), rhs_stride, rows, to.at(0, j));
                j += 4;
            }
            if j < len {
                narrow_tile(packed, rhs.add(j), rhs_stride, rows, len - j, to.at(0, j));
            }
        }
    }
}

/// `rows` (≤ 4) output channels x `4 * V` pixels, accumulated in registers.
///
/// # Safety
/// As [`multiply`], for `4 * V` columns.
#[inline(always)]
unsafe fn tile<L: Lanes, const V: usize>(
    packed: &[f32],
    rhs: *const f32,
    rhs_stride: usize,
    rows: usize,
    to: Destination<'_>,
) {
    let mut acc = [[L::splat(0.0); V]; TILE_ROWS];
    for (d, w) in packed.chunks_exact(TILE_ROWS).enumerate() {
        // SAFETY: row `d` of `rhs` has these `4 * V` columns (the caller's contract).
        let column: [L; V] =
            std::array::from_fn(|v| unsafe { L::load(rhs.add(d * rhs_stride + 4 * v)) });
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `w` is `TILE_ROWS` long.
            let a = unsafe { L::load_splat(w.as_ptr().add(r)) };
            for v in 0..V {
                acc[v] = acc[v].mul_add(a, column[v]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let bias = L::splat(to.bias[r]);
        for (v, &sum) in acc.iter().enumerate() {
            let offset = r * to.stride + 4 * v;
            let mut x = sum.add(bias);
            // SAFETY: row `r` of the destination has these 4 columns (the caller's contract).
            unsafe {
                if let Some(residual) = to.residual {
                    x = x.add(L::load(residual.add(offset)));
                }
                if to.relu {
                    x = x.max_zero();
                }
                x.store(to.out.add(offset));
            }
        }
    }
}

/// The last `columns` (< 4) pixels, one value at a time.
///
/// # Safety
/// As [`multiply`], for `columns` columns.
unsafe fn narrow_tile(
    packed: &[f32],
    rhs: *const f32,
    rhs_stride: usize,
    rows: usize,
    columns: usize,
    to: Destination<'_>,
) {
    for r in 0..rows {
        for c in 0..columns {
            let sum: f32 = packed
                .chunks_exact(TILE_ROWS)
                .enumerate()
                .map(|(d, w)| w[r] * unsafe { *rhs.add(d * rhs_stride + c) })
                .sum();
            unsafe { *to.out.add(r * to.stride + c) = to.finish(r, c, sum) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The tiled product against a plain triple loop, on sizes that exercise every edge: rows
    /// not a multiple of 4, columns with 8-, 4- and 1-wide leftovers, strides wider than the
    /// columns, with and without residual and ReLU.
    #[test]
    fn tiles_match_a_plain_product_on_every_edge() {
        let mut rng = Rng::new(3);
        for (rows, depth, len) in [(1, 1, 1), (4, 9, 8), (5, 7, 13), (16, 144, 64), (3, 2, 31)] {
            let stride = len + 3;
            let mut random = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
            let (weight, rhs, bias) = (random(rows * depth), random(depth * stride), random(rows));
            let residual = random(rows * stride);
            for (with_residual, relu) in [(false, false), (true, true), (false, true)] {
                let mut out = vec![f32::NAN; rows * stride];
                let to = Destination {
                    out: out.as_mut_ptr(),
                    residual: with_residual.then_some(residual.as_ptr()),
                    stride,
                    bias: &bias,
                    relu,
                };
                let packed = PackedWeights::new(&weight, rows, depth);
                unsafe { multiply::<Portable>(&packed, rhs.as_ptr(), stride, len, to) };
                for r in 0..rows {
                    for j in 0..len {
                        let dot: f32 = (0..depth)
                            .map(|d| weight[r * depth + d] * rhs[d * stride + j])
                            .sum();
                        let v = dot
                            + bias[r]
                            + if with_residual {
                                residual[r * stride + j]
                            } else {
                                0.0
                            };
                        let want = if relu { v.max(0.0) } else { v };
                        let got = out[r * stride + j];
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{rows}x{depth}x{len} [{r}][{j}]: {got} vs {want}"
                        );
                    }
                    // Columns past `len` are not written.
                    assert!(
                        out[r * stride + len..(r + 1) * stride]
                            .iter()
                            .all(|v| v.is_nan())
                    );
                }
            }
        }
    }
}

//! Winograd F(2x2, 3x3) for the 3x3 stride-1 convolutions, which hold most of the network's
//! multiply-adds: each 2x2 block of outputs costs 16 products per (input, output) channel pair
//! instead of 36 (Lavin & Gray, 2015). Filters are transformed once, when the model is loaded.
//! The image is processed in segments of whole tile rows, sized so a segment's transformed
//! input and products stay in L2: each 4x4 input tile is transformed, the 16 transformed planes
//! are multiplied as 16 matrix products (the same product as the direct kernel), and the output
//! transform applies the epilogue.
//!
//! The input is padded and split into even and odd columns once per convolution
//! ([`SplitInput`]). Both transforms then run along whole tile rows, on contiguous arrays of one
//! value per tile, so the compiler vectorises them; on AVX-512 a tile row is one register per
//! value of the tile (`avx512.rs`). The first version, one scalar tile at a time with a 16-way
//! scatter, measured slower than the direct kernel.

use std::mem::MaybeUninit;
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
mod avx512;

use super::conv::{Epilogue, Product, Weights};
use super::microkernel::Destination;
use super::padded::split_pair;
use super::tasks::{SharedOut, Task, copy_planes, run_segments, scratch};

/// Number of transformed positions in a 4x4 tile.
const POSITIONS: usize = 16;

/// `weight` `[out, in, 3, 3]` → `[16, out, in]`: `G g Gᵀ` for each filter `g`.
pub fn transform_filters(weight: &[f32], out_channels: usize, in_channels: usize) -> Vec<f32> {
    assert_eq!(weight.len(), out_channels * in_channels * 9);
    let plane = out_channels * in_channels;
    let mut transformed = vec![0f32; POSITIONS * plane];
    for (pair, g) in weight.chunks_exact(9).enumerate() {
        // t = G g (4x3), then u = t Gᵀ (4x4), with G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1].
        let mut t = [[0f32; 3]; 4];
        for c in 0..3 {
            let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
            t[0][c] = g0;
            t[1][c] = 0.5 * (g0 + g1 + g2);
            t[2][c] = 0.5 * (g0 - g1 + g2);
            t[3][c] = g2;
        }
        for (r, row) in t.iter().enumerate() {
            let u = [
                row[0],
                0.5 * (row[0] + row[1] + row[2]),
                0.5 * (row[0] - row[1] + row[2]),
                row[2],
            ];
            for (c, value) in u.into_iter().enumerate() {
                transformed[(r * 4 + c) * plane + pair] = value;
            }
        }
    }
    transformed
}

/// Shape of one 3x3, stride-1, padding-1 convolution over an NCHW batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinogradGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
}

impl WinogradGeometry {
    fn tiles(&self) -> (usize, usize) {
        (self.height.div_ceil(2), self.width.div_ceil(2))
    }

    /// Tile rows per segment: the segment's transformed input and products (`16 x (in + out)`
    /// values per tile) fill about 256 KiB, inside a core's L2.
    fn segment_rows(&self) -> usize {
        const SEGMENT_BYTES: usize = 256 * 1024;
        let per_tile = 4 * POSITIONS * (self.in_channels + self.out_channels).max(1);
        (SEGMENT_BYTES / per_tile / self.tiles().1.max(1)).max(1)
    }
}

/// `input` `[batch, in, h, w]`, `filters` from [`transform_filters`] → `[batch, out, h, w]`,
/// with the product chosen by the caller (the tests run both).
pub fn conv3x3_with(
    input: &[f32],
    g: WinogradGeometry,
    filters: &[f32],
    epilogue: Epilogue<'_>,
    product: Product,
) -> Vec<f32> {
    let plane = g.out_channels * g.in_channels;
    assert_eq!(filters.len(), POSITIONS * plane);
    let weights: Vec<Weights<'_>> = filters
        .chunks_exact(plane.max(1))
        .map(|f| Weights::new(f, g.out_channels, g.in_channels, product))
        .collect();
    conv3x3_prepared(input, g, &weights, epilogue)
}

/// A 3x3 weight `[out, in, 3, 3]` transformed ([`transform_filters`]) and its 16 matrices put in
/// the layout `product` reads, one after the other: prepared once, when a model loads, then
/// borrowed by [`prepared_filters`].
pub fn prepare_filters(
    weight: &[f32],
    out_channels: usize,
    in_channels: usize,
    product: Product,
) -> Vec<f32> {
    let plane = out_channels * in_channels;
    transform_filters(weight, out_channels, in_channels)
        .chunks_exact(plane.max(1))
        .flat_map(|f| Weights::prepare(f, out_channels, in_channels, product))
        .collect()
}

/// The 16 matrices of [`prepare_filters`]' result, borrowed.
///
/// # Panics
/// When `values` does not hold 16 prepared `[out, in]` matrices (a programming error).
pub fn prepared_filters(
    values: &[f32],
    out_channels: usize,
    in_channels: usize,
    product: Product,
) -> Vec<Weights<'_>> {
    let len = Weights::prepared_len(out_channels, in_channels, product);
    assert_eq!(values.len(), POSITIONS * len);
    values
        .chunks_exact(len.max(1))
        .map(|f| Weights::prepared(f, out_channels, in_channels, product))
        .collect()
}

/// [`conv3x3_with`] with the 16 filter matrices already in the product's layout.
///
/// # Panics
/// When a slice's length does not match `g` (a programming error, not user input).
pub fn conv3x3_prepared(
    input: &[f32],
    g: WinogradGeometry,
    filters: &[Weights<'_>],
    epilogue: Epilogue<'_>,
) -> Vec<f32> {
    let pixels = g.height * g.width;
    let out_len = g.batch * g.out_channels * pixels;
    assert_eq!(input.len(), g.batch * g.in_channels * pixels);
    assert_eq!(filters.len(), POSITIONS);
    assert!(
        filters
            .iter()
            .all(|f| f.shape() == (g.out_channels, g.in_channels))
    );
    epilogue.check(g.out_channels, out_len);
    let (th, _) = g.tiles();
    let split = SplitInput::new(input, g);
    run_segments(
        g.batch,
        th,
        g.segment_rows(),
        g.out_channels,
        out_len,
        |task, out| {
            // SAFETY: each task writes exactly the output rows of its own tile rows and
            // channels of its image.
            unsafe { segment(&split, g, filters, epilogue, task, out) };
        },
    )
}

std::thread_local! {
    /// Each thread's transformed input `[16, in, tiles]` and products `[16, out, tiles]` (the
    /// 16 planes [`plane_stride`] apart) for
    /// one segment, reused across calls.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Tile rows `task.units` of channels `task.channels` of image `task.b`: input transform, 16
/// products, output transform. (Tasks that share tile rows each transform the input: only the
/// last, small layers are split by channels, where it is cheap.)
///
/// # Safety
/// `out` points to the whole `[batch, out, h, w]` output, and no other thread writes the output
/// rows of these tile rows and channels of image `b`.
unsafe fn segment(
    split: &SplitInput,
    g: WinogradGeometry,
    filters: &[Weights<'_>],
    epilogue: Epilogue<'_>,
    task: Task,
    out: SharedOut,
) {
    let Task {
        b,
        units: tile_rows,
        channels,
    } = task;
    let pixels = g.height * g.width;
    let tiles = tile_rows.len() * g.tiles().1;
    SCRATCH.with_borrow_mut(|(transformed, products)| {
        let transformed = scratch(transformed, POSITIONS * plane_stride(g.in_channels * tiles));
        let products = scratch(products, POSITIONS * plane_stride(channels.len() * tiles));
        #[cfg(target_arch = "x86_64")]
        let wide = avx512::fits(&g);
        #[cfg(not(target_arch = "x86_64"))]
        let wide = false;
        if wide {
            // SAFETY: `fits` checked the CPU and the sizes.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::transform_input(split, b, g, tile_rows.clone(), transformed)
            };
        } else {
            transform_input(split, b, g, tile_rows.clone(), transformed);
        }
        multiply(transformed, filters, channels.clone(), g, tiles, products);
        let first = b * g.out_channels * pixels;
        // SAFETY: image `b`'s `[out, h, w]` block; the rows written are this task's (see above).
        let to = SharedOut(unsafe { out.0.add(first) });
        let residual = epilogue
            .residual
            .map(|r| &r[first..][..g.out_channels * pixels]);
        let epilogue = Epilogue {
            residual,
            ..epilogue
        };
        if wide {
            // SAFETY: as above; the rest is this function's own contract.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::transform_output(products, g, tile_rows, channels, epilogue, to)
            };
        } else {
            unsafe { transform_output(products, g, tile_rows, channels, epilogue, to) };
        }
    });
}

/// The input zero-padded by one pixel and split into the even and odd columns of its padded
/// form, once per convolution, so that every tile row's transform reads its 4 input rows as
/// they are: tile `t` reads padded columns `2t..2t + 4`, that is `even[t]`, `odd[t]`,
/// `even[t + 1]`, `odd[t + 1]`. Layout `[batch, in, 2, rows, tw + 1]` with `rows = 2 * th + 2`
/// (one padding row above, and below up to the last tile's fourth row).
struct SplitInput {
    values: Vec<f32>,
    rows: usize,
    half: usize,
}

impl SplitInput {
    fn new(input: &[f32], g: WinogradGeometry) -> Self {
        let (th, tw) = g.tiles();
        let (rows, half) = (2 * th + 2, tw + 1);
        let mut values = vec![0f32; g.batch * g.in_channels * 2 * rows * half];
        copy_planes(
            input,
            g.height * g.width,
            &mut values,
            2 * rows * half,
            |plane, to| {
                for (y, row) in plane.chunks_exact(g.width.max(1)).enumerate() {
                    // Image row y is padded row y + 1, its columns padded columns 1 to w.
                    split_pair(row, 1, (&mut to[(y + 1) * half..], rows * half));
                }
            },
        );
        Self { values, rows, half }
    }

    /// Padded row `y`'s even (`odd == false`) or odd columns of channel `c` of image `b`, with
    /// `in_channels` channels per image.
    fn row(&self, in_channels: usize, b: usize, c: usize, odd: bool, y: usize) -> &[f32] {
        let plane = ((b * in_channels + c) * 2 + usize::from(odd)) * self.rows;
        &self.values[(plane + y) * self.half..][..self.half]
    }
}

/// Distance between two of the 16 planes of transformed inputs or of products: their length
/// plus a cache line. This network's planes are 8 KiB (channels x tiles of a segment); 16 of
/// them exactly 8 KiB apart fall in the same set of L1's ways, and the transforms, which read or
/// write all 16 at once, missed L1 on every access.
fn plane_stride(len: usize) -> usize {
    len + 16
}

/// Tile rows `tile_rows` of image `b` → `[16, in, tiles]`: `Bᵀ d B` for each 4x4 input tile `d`
/// (tiles start every 2 pixels, one pixel before their output block: the padding).
fn transform_input(
    split: &SplitInput,
    b: usize,
    g: WinogradGeometry,
    tile_rows: Range<usize>,
    transformed: &mut [f32],
) {
    let tw = g.tiles().1;
    let tiles = tile_rows.len() * tw;
    let plane = plane_stride(g.in_channels * tiles);
    let mut column = std::array::from_fn::<_, 4, _>(|_| [vec![0f32; tw + 1], vec![0f32; tw + 1]]);
    for c in 0..g.in_channels {
        for (r, ty) in tile_rows.clone().enumerate() {
            // Bᵀ down the 4 rows (Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]), even and odd
            // columns alike.
            for half in 0..2 {
                let d = |i: usize| split.row(g.in_channels, b, c, half == 1, 2 * ty + i);
                for (k, out) in column.iter_mut().enumerate() {
                    let (a, b, sign) = match k {
                        0 => (d(0), d(2), -1.0),
                        1 => (d(1), d(2), 1.0),
                        2 => (d(2), d(1), -1.0),
                        _ => (d(1), d(3), -1.0),
                    };
                    out[half]
                        .iter_mut()
                        .zip(a.iter().zip(b))
                        .for_each(|(o, (a, b))| *o = a + sign * b);
                }
            }
            // Then B along the row, one output plane per position.
            for (k, [even, odd]) in column.iter().enumerate() {
                let at = c * tiles + r * tw;
                let (e0, e1, o0, o1) = (&even[..tw], &even[1..], &odd[..tw], &odd[1..]);
                let rows: [(&[f32], &[f32], f32); 4] = [
                    (e0, e1, -1.0),
                    (o0, e1, 1.0),
                    (e1, o0, -1.0),
                    (o0, o1, -1.0),
                ];
                for (j, (a, b, sign)) in rows.into_iter().enumerate() {
                    let out = &mut transformed[(4 * k + j) * plane + at..][..tw];
                    zip_into(out, a, b, |a, b| a + sign * b);
                }
            }
        }
    }
}

#[inline(always)]
fn zip_into(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    out.iter_mut()
        .zip(a.iter().zip(b))
        .for_each(|(o, (&a, &b))| *o = f(a, b));
}

/// The 16 products `[channels, in] x [in, tiles]` → `[16, channels, tiles]`.
fn multiply(
    transformed: &[f32],
    filters: &[Weights<'_>],
    channels: Range<usize>,
    g: WinogradGeometry,
    tiles: usize,
    products: &mut [f32],
) {
    let (m, k, n) = (channels.len(), g.in_channels, tiles);
    let zeros = vec![0f32; m];
    for ((filter, dst), rhs) in filters
        .iter()
        .zip(products.chunks_exact_mut(plane_stride(m * n)))
        .zip(transformed.chunks_exact(plane_stride(k * n)))
    {
        let filter = filter.rows(channels.clone());
        let to = Destination {
            out: dst.as_mut_ptr(),
            residual: None,
            stride: n,
            bias: &zeros,
            relu: false,
        };
        // SAFETY: `rhs` is `[k, n]` and `dst` `[m, n]`, row-major.
        unsafe { filter.multiply(rhs.as_ptr(), n, n, to) };
    }
}

/// `[16, channels, tiles]` → output rows of `tile_rows` of `channels` in `[out, h, w]`:
/// `Aᵀ m A` with `Aᵀ = [1 1 1 0; 0 1 -1 -1]` for each tile, then bias, residual and ReLU.
///
/// # Safety
/// `out` points to one image's `[out, h, w]` output, and no other thread writes these rows.
unsafe fn transform_output(
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
    // Aᵀ down the 4 rows of products: two rows of 4 values per tile.
    let mut s: [[Vec<f32>; 4]; 2] =
        std::array::from_fn(|_| std::array::from_fn(|_| vec![0f32; tw]));
    let mut pair = [vec![0f32; tw], vec![0f32; tw]];
    for (i, c) in channels.enumerate() {
        let bias = epilogue.bias[c];
        for (r, ty) in tile_rows.clone().enumerate() {
            let m = |e: usize| &products[e * plane + i * tiles + r * tw..][..tw];
            for j in 0..4 {
                let [s0, s1] = &mut s;
                s0[j]
                    .iter_mut()
                    .zip(m(j).iter().zip(m(4 + j)).zip(m(8 + j)))
                    .for_each(|(o, ((a, b), c))| *o = a + b + c);
                s1[j]
                    .iter_mut()
                    .zip(m(4 + j).iter().zip(m(8 + j)).zip(m(12 + j)))
                    .for_each(|(o, ((a, b), c))| *o = a - b - c);
            }
            for (dy, s) in s.iter().enumerate() {
                let y = 2 * ty + dy;
                if y >= h {
                    continue;
                }
                // A along the row: the two outputs of each tile.
                zip3_into(&mut pair[0], &s[0], &s[1], &s[2], |a, b, c| a + b + c);
                zip3_into(&mut pair[1], &s[1], &s[2], &s[3], |a, b, c| a - b - c);
                let row = c * h * w + y * w;
                let residual = epilogue.residual.map(|res| &res[row..][..w]);
                // SAFETY: row `y` of channel `c` is this task's alone (the caller's contract);
                // it may not have been written yet, hence `MaybeUninit`.
                let to = unsafe {
                    std::slice::from_raw_parts_mut(out.0.add(row).cast::<MaybeUninit<f32>>(), w)
                };
                finish_row(to, &pair, bias, residual, epilogue.relu);
            }
        }
    }
}

#[inline(always)]
fn zip3_into(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    out.iter_mut()
        .zip(a.iter().zip(b).zip(c))
        .for_each(|(o, ((&a, &b), &c))| *o = f(a, b, c));
}

/// One output row from its tiles' even and odd outputs, plus bias, residual and ReLU.
fn finish_row(
    row: &mut [MaybeUninit<f32>],
    pair: &[Vec<f32>; 2],
    bias: f32,
    residual: Option<&[f32]>,
    relu: bool,
) {
    let mut outputs = row.chunks_exact_mut(2);
    for ((out, &even), &odd) in (&mut outputs).zip(&pair[0]).zip(&pair[1]) {
        out[0].write(even + bias);
        out[1].write(odd + bias);
    }
    if let [last] = outputs.into_remainder() {
        last.write(pair[0][pair[0].len() - 1] + bias);
    }
    // SAFETY: every value of the row was written just above.
    let row = unsafe { &mut *(row as *mut [MaybeUninit<f32>] as *mut [f32]) };
    if let Some(r) = residual {
        row.iter_mut().zip(r).for_each(|(v, r)| *v += r);
    }
    if relu {
        row.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

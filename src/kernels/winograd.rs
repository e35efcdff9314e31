//! Winograd F(2x2, 3x3) for the 3x3 stride-1 convolutions, which hold most of the network's
//! multiply-adds: each 2x2 block of outputs costs 16 products per (input, output) channel pair
//! instead of 36 (Lavin & Gray, 2015). Filters are transformed once, when the model is loaded;
//! each input 4x4 tile is transformed, the 16 transformed planes are multiplied as 16 matrix
//! products, and the output transform applies the same epilogue as the direct kernel.
//!
//! Not the default: as written (scalar transforms, one 16-way scatter per tile) the transforms
//! cost more than the products saved at this network's few channels, and it measured slower than
//! the direct kernel (`trainer bench infer`). Kept, tested and measured by the benchmark as the
//! starting point for vectorised transforms.

use gemm::Parallelism;

use super::conv::Epilogue;

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

    fn tile_count(&self) -> usize {
        let (th, tw) = self.tiles();
        th * tw
    }
}

/// `input` `[batch, in, h, w]`, `filters` from [`transform_filters`] → `[batch, out, h, w]`.
pub fn conv3x3(
    input: &[f32],
    g: WinogradGeometry,
    filters: &[f32],
    epilogue: Epilogue<'_>,
) -> Vec<f32> {
    let pixels = g.height * g.width;
    let out_len = g.batch * g.out_channels * pixels;
    assert_eq!(input.len(), g.batch * g.in_channels * pixels);
    assert_eq!(filters.len(), POSITIONS * g.out_channels * g.in_channels);
    epilogue.check(g.out_channels, out_len);
    let mut out = vec![0f32; out_len];
    let image_in = g.in_channels * pixels;
    let image_out = g.out_channels * pixels;
    for b in 0..g.batch {
        let transformed = transform_input(&input[b * image_in..][..image_in], g);
        let products = multiply(&transformed, filters, g);
        let residual = epilogue.residual.map(|r| &r[b * image_out..][..image_out]);
        let epilogue = Epilogue {
            residual,
            ..epilogue
        };
        transform_output(
            &products,
            g,
            epilogue,
            &mut out[b * image_out..][..image_out],
        );
    }
    out
}

/// One image `[in, h, w]` → `[16, in, tiles]`: `Bᵀ d B` for each 4x4 input tile `d` (tiles
/// start every 2 pixels, one pixel before the output block: the padding).
fn transform_input(image: &[f32], g: WinogradGeometry) -> Vec<f32> {
    let tiles = g.tile_count();
    let plane = g.in_channels * tiles;
    let mut transformed = vec![0f32; POSITIONS * plane];
    let (th, tw) = g.tiles();
    // The channel's plane with a zero border: one pixel before, enough after for the last tile.
    let (ph, pw) = (2 * th + 2, 2 * tw + 2);
    let mut padded = vec![0f32; ph * pw];
    for (c, channel) in image.chunks_exact(g.height * g.width).enumerate() {
        for (y, row) in channel.chunks_exact(g.width).enumerate() {
            padded[(y + 1) * pw + 1..][..g.width].copy_from_slice(row);
        }
        for ty in 0..th {
            for tx in 0..tw {
                let d = |i: usize, j: usize| padded[(2 * ty + i) * pw + 2 * tx + j];
                let v = input_tile(d);
                let at = c * tiles + ty * tw + tx;
                for (e, value) in v.into_iter().enumerate() {
                    transformed[e * plane + at] = value;
                }
            }
        }
    }
    transformed
}

/// `Bᵀ d B` with `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, row-major 4x4.
#[inline(always)]
fn input_tile(d: impl Fn(usize, usize) -> f32) -> [f32; 16] {
    let mut t = [[0f32; 4]; 4];
    for (j, column) in (0..4)
        .map(|j| [d(0, j), d(1, j), d(2, j), d(3, j)])
        .enumerate()
    {
        t[0][j] = column[0] - column[2];
        t[1][j] = column[1] + column[2];
        t[2][j] = column[2] - column[1];
        t[3][j] = column[1] - column[3];
    }
    let mut v = [0f32; 16];
    for (r, row) in t.iter().enumerate() {
        v[r * 4] = row[0] - row[2];
        v[r * 4 + 1] = row[1] + row[2];
        v[r * 4 + 2] = row[2] - row[1];
        v[r * 4 + 3] = row[1] - row[3];
    }
    v
}

/// The 16 products `[out, in] x [in, tiles]` → `[16, out, tiles]`.
fn multiply(transformed: &[f32], filters: &[f32], g: WinogradGeometry) -> Vec<f32> {
    let (m, k, n) = (g.out_channels, g.in_channels, g.tile_count());
    let mut products = vec![0f32; POSITIONS * m * n];
    let run = |(e, dst): (usize, &mut [f32])| {
        let (lhs, rhs) = (
            &filters[e * m * k..][..m * k],
            &transformed[e * k * n..][..k * n],
        );
        // SAFETY: `lhs` is `[m, k]`, `rhs` `[k, n]` and `dst` `[m, n]`, all row-major.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    };
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        products
            .par_chunks_exact_mut(m * n)
            .enumerate()
            .for_each(run);
    }
    #[cfg(target_family = "wasm")]
    products.chunks_exact_mut(m * n).enumerate().for_each(run);
    products
}

/// `[16, out, tiles]` → `[out, h, w]`: `Aᵀ m A` with `Aᵀ = [1 1 1 0; 0 1 -1 -1]` for each tile,
/// then bias, residual and ReLU.
fn transform_output(
    products: &[f32],
    g: WinogradGeometry,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
) {
    let (th, tw) = g.tiles();
    let tiles = th * tw;
    let plane = g.out_channels * tiles;
    let (h, w) = (g.height, g.width);
    for (c, channel) in out.chunks_exact_mut(h * w).enumerate() {
        let bias = epilogue.bias[c];
        for t in 0..tiles {
            let m = |e: usize| products[e * plane + c * tiles + t];
            let columns = [0, 1, 2, 3].map(|j| [m(j), m(4 + j), m(8 + j), m(12 + j)]);
            let s = [
                columns.map(|[m0, m1, m2, _]| m0 + m1 + m2),
                columns.map(|[_, m1, m2, m3]| m1 - m2 - m3),
            ];
            let (ty, tx) = (t / tw, t % tw);
            for (r, row) in s.iter().enumerate() {
                let y = 2 * ty + r;
                if y >= h {
                    continue;
                }
                let pair = [row[0] + row[1] + row[2], row[1] - row[2] - row[3]];
                for (dx, value) in pair.into_iter().enumerate() {
                    let x = 2 * tx + dx;
                    if x < w {
                        channel[y * w + x] = value + bias;
                    }
                }
            }
        }
        let residual = epilogue.residual.map(|r| &r[c * h * w..][..h * w]);
        finish(channel, residual, epilogue.relu);
    }
}

fn finish(values: &mut [f32], residual: Option<&[f32]>, relu: bool) {
    if let Some(r) = residual {
        values.iter_mut().zip(r).for_each(|(v, r)| *v += r);
    }
    if relu {
        values.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

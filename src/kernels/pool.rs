//! The stem's 3x3, stride-2, padding-1 max pool, without the argmax indices that burn's CPU
//! backend computes and inference throws away.

/// `input` `[planes, h, w]` (batch and channels flattened) → `[planes, oh, ow]` with
/// `oh = (h - 1) / 2 + 1` (and the same for `ow`). Padding never wins (it is minus infinity).
pub fn max_pool_3x3_s2(input: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(input.len(), planes * h * w);
    let (oh, ow) = pooled_size(h, w);
    let mut out = vec![0f32; planes * oh * ow];
    let run = |(plane, dst): (&[f32], &mut [f32])| pool_plane(plane, h, w, dst);
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        input
            .par_chunks_exact(h * w)
            .zip(out.par_chunks_exact_mut(oh * ow))
            .for_each(run);
    }
    #[cfg(target_family = "wasm")]
    input
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(oh * ow))
        .for_each(run);
    out
}

/// Output height and width of [`max_pool_3x3_s2`].
pub fn pooled_size(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(2), w.div_ceil(2))
}

/// One plane, a row of output at a time: the elementwise maximum of the (up to three) input rows
/// first, which vectorises, then the maximum of three neighbours at every other column. The
/// first version took each output's 3x3 window one value at a time and was a tenth of the whole
/// model's native inference time.
fn pool_plane(plane: &[f32], h: usize, w: usize, out: &mut [f32]) {
    let (_, ow) = pooled_size(h, w);
    let mut rows_max = vec![0f32; w];
    for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
        // Input rows 2*oy - 1 ..= 2*oy + 1, clipped to the image.
        let top = (2 * oy).saturating_sub(1);
        rows_max.copy_from_slice(&plane[top * w..][..w]);
        for y in top + 1..(2 * oy + 2).min(h) {
            let row = &plane[y * w..][..w];
            rows_max
                .iter_mut()
                .zip(row)
                .for_each(|(m, &v)| *m = m.max(v));
        }
        pool_row(&rows_max, out_row);
    }
}

/// `out[x] = max(v[2x - 1], v[2x], v[2x + 1])`, the columns outside `v` left out.
fn pool_row(v: &[f32], out: &mut [f32]) {
    for (ox, o) in out.iter_mut().enumerate() {
        let c = 2 * ox;
        let mut m = v[c];
        if c > 0 {
            m = m.max(v[c - 1]);
        }
        if let Some(&right) = v.get(c + 1) {
            m = m.max(right);
        }
        *o = m;
    }
}

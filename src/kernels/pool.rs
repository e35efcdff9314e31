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

fn pool_plane(plane: &[f32], h: usize, w: usize, out: &mut [f32]) {
    let (_, ow) = pooled_size(h, w);
    for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
        // Input rows 2*oy - 1 ..= 2*oy + 1, clipped to the image.
        let rows = (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h);
        out_row.fill(f32::NEG_INFINITY);
        for y in rows {
            let row = &plane[y * w..][..w];
            for (ox, o) in out_row.iter_mut().enumerate() {
                let cols = (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w);
                *o = row[cols].iter().fold(*o, |m, &v| m.max(v));
            }
        }
    }
}

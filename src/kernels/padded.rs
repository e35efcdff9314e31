//! A convolution's input laid out so that the product reads its columns in place, without
//! im2col (the idea of XNNPACK's indirect GEMM, with offsets in place of pointers). The input is
//! copied once per call, zero-padded and, for a stride `s` > 1, split into `s` column phases
//! (phase `p` holds padded columns `p, p + s, p + 2s, …`). Then, for every tap `(c, ky, kx)`,
//! the values under it for 16 consecutive output pixels of one output row are 16 consecutive
//! values of the copy, `tap_offset(c, ky, kx) + pixel_offset(oy, ox)` from its start: the copy
//! is the size of the input, where im2col's columns are `k² / s²` times that (9 to 12 for this
//! network's layers) and are written and read again for every segment.

use super::conv::ConvGeometry;
use super::tasks::copy_planes;

/// Pixels one register holds; an output row must be a whole number of them.
pub const LANES: usize = 16;

/// The padded, phase-split copy of a batch and the offsets that address it.
pub struct PaddedInput {
    values: Vec<f32>,
    image_len: usize,
    /// Per weight column `(c, ky, kx)`, in the weights' order: the tap's offset.
    taps: Vec<usize>,
    out_width: usize,
    /// Offset between two output rows: `stride` padded rows of one phase.
    row_step: usize,
}

impl PaddedInput {
    /// Whether `g` can be read this way: every output row a whole number of registers, so no
    /// register straddles two rows. Not for 1x1 convolutions: at stride 1 the product reads the
    /// input as it is; at stride 2 its im2col columns, a quarter of the input, are smaller than
    /// the copy.
    pub fn fits(g: &ConvGeometry) -> bool {
        g.out_width().is_multiple_of(LANES) && g.kernel > 1
    }

    /// Copies `input` `[batch, in, h, w]`.
    ///
    /// # Panics
    /// When `input` does not match `g` (a programming error).
    pub fn new(input: &[f32], g: ConvGeometry) -> Self {
        assert_eq!(input.len(), g.batch * g.in_channels * g.height * g.width);
        let s = g.stride;
        let padded_height = g.height + 2 * g.padding;
        let phase_width = (g.width + 2 * g.padding).div_ceil(s);
        let phase_len = padded_height * phase_width;
        let channel_len = s * phase_len;
        let image_len = g.in_channels * channel_len;
        let mut values = vec![0f32; g.batch * image_len];
        copy_planes(
            input,
            g.height * g.width,
            &mut values,
            channel_len,
            |plane, to| {
                for (y, row) in plane.chunks_exact(g.width).enumerate() {
                    let padded_row = (y + g.padding) * phase_width;
                    let to = &mut to[padded_row..];
                    match s {
                        1 => to[g.padding..][..g.width].copy_from_slice(row),
                        2 => split_pair(row, g.padding, (to, phase_len)),
                        _ => {
                            for phase in 0..s {
                                // The first input column of this phase, and where it goes.
                                let first = (phase + s - g.padding % s) % s;
                                let column = (first + g.padding) / s;
                                let from = row.iter().skip(first).step_by(s);
                                let to = to[phase * phase_len + column..].iter_mut();
                                to.zip(from).for_each(|(to, &value)| *to = value);
                            }
                        }
                    }
                }
            },
        );
        let k = g.kernel;
        let taps = (0..g.in_channels)
            .flat_map(|c| (0..k).flat_map(move |ky| (0..k).map(move |kx| (c, ky, kx))))
            .map(|(c, ky, kx)| c * channel_len + (kx % s) * phase_len + ky * phase_width + kx / s)
            .collect();
        Self {
            values,
            image_len,
            taps,
            out_width: g.out_width(),
            row_step: s * phase_width,
        }
    }

    /// The copy of image `b`.
    pub fn image(&self, b: usize) -> &[f32] {
        &self.values[b * self.image_len..][..self.image_len]
    }

    /// Offsets of the taps, in the order of the weights' columns.
    pub fn taps(&self) -> &[usize] {
        &self.taps
    }

    /// Offset of output pixel `p`'s first tap (`(c, ky, kx) = (0, 0, 0)`).
    pub fn pixel_offset(&self, p: usize) -> usize {
        (p / self.out_width) * self.row_step + p % self.out_width
    }
}

/// Stride 2: input columns `2i` and `2i + 1` go to padded columns `2i + padding` and
/// `2i + 1 + padding`, in the two phases. By pairs, so that the compiler vectorises the
/// de-interleaving (one value at a time, it is the layer's slowest part). `to` is the row's
/// start in phase 0, and the distance to phase 1.
pub(super) fn split_pair(row: &[f32], padding: usize, (to, phase_len): (&mut [f32], usize)) {
    let (phase0, phase1) = to.split_at_mut(phase_len);
    let (first, second) = if padding.is_multiple_of(2) {
        (phase0, phase1)
    } else {
        (phase1, phase0)
    };
    let (first, second) = (
        &mut first[padding / 2..],
        &mut second[padding.div_ceil(2)..],
    );
    let pairs = row.chunks_exact(2);
    if let [last] = pairs.remainder() {
        first[row.len() / 2] = *last;
    }
    for ((pair, a), b) in pairs.zip(first.iter_mut()).zip(second.iter_mut()) {
        *a = pair[0];
        *b = pair[1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tap of every output pixel reads what im2col would put there: the input value under
    /// it, or zero in the padding.
    #[test]
    fn offsets_address_the_value_under_each_tap() {
        let shapes = [
            (7, 32, 3, 1),
            (9, 64, 7, 2),
            (6, 32, 3, 2),
            (5, 31, 3, 2),
            (9, 48, 3, 3),
        ];
        for (h, w, k, stride) in shapes {
            let g = ConvGeometry {
                batch: 2,
                in_channels: 3,
                height: h,
                width: w,
                out_channels: 1,
                kernel: k,
                stride,
                padding: k / 2,
            };
            assert!(PaddedInput::fits(&g), "{g:?}");
            let input: Vec<f32> = (0..2 * 3 * h * w).map(|i| i as f32 + 1.0).collect();
            let padded = PaddedInput::new(&input, g);
            for b in 0..2 {
                let image = padded.image(b);
                for p in 0..g.out_height() * g.out_width() {
                    let (oy, ox) = (p / g.out_width(), p % g.out_width());
                    for (d, &tap) in padded.taps().iter().enumerate() {
                        let (c, ky, kx) = (d / (k * k), d / k % k, d % k);
                        let iy = (oy * stride + ky) as isize - g.padding as isize;
                        let ix = (ox * stride + kx) as isize - g.padding as isize;
                        let inside = (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                        let want = if inside {
                            input[((b * 3 + c) * h + iy as usize) * w + ix as usize]
                        } else {
                            0.0
                        };
                        assert_eq!(image[tap + padded.pixel_offset(p)], want, "{g:?} {p} {d}");
                    }
                }
            }
        }
    }
}

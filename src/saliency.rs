//! Turning a class activation map into something a person can look at: a colour heat map with
//! transparency (drawn over the X-ray by the page) or a blended overlay image (the CLI's `--cam`).

use crate::preprocess::resize;

/// The "inferno"-like colour ramp as (position, r, g, b) stops: dark purple → red → yellow.
const STOPS: [(f32, [f32; 3]); 6] = [
    (0.0, [0.0, 0.0, 4.0]),
    (0.2, [66.0, 10.0, 104.0]),
    (0.4, [147.0, 38.0, 103.0]),
    (0.6, [221.0, 81.0, 58.0]),
    (0.8, [252.0, 165.0, 10.0]),
    (1.0, [252.0, 255.0, 164.0]),
];

/// Colour of a CAM value in `[0, 1]` (values outside are clamped).
pub fn colormap(value: f32) -> [u8; 3] {
    let v = if value.is_finite() {
        value.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let i = STOPS
        .iter()
        .position(|(p, _)| *p >= v)
        .unwrap_or(STOPS.len() - 1)
        .max(1);
    let (p0, c0) = STOPS[i - 1];
    let (p1, c1) = STOPS[i];
    let t = (v - p0) / (p1 - p0);
    std::array::from_fn(|k| (c0[k] + t * (c1[k] - c0[k])).round() as u8)
}

/// A `size x size` RGBA heat map of a CAM: colour from [`colormap`], alpha rising with the value
/// so that cold areas leave the X-ray visible.
pub fn heatmap_rgba(cam: &[f32]) -> Vec<u8> {
    cam.iter()
        .flat_map(|&v| {
            let [r, g, b] = colormap(v);
            let a = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            [r, g, b, a]
        })
        .collect()
}

/// Blend the CAM over a greyscale image (`grey` in `[0, 1]`, `width x height`) with `opacity`
/// in `[0, 1]`; returns RGB bytes. The CAM is resized to the image with the same filter as the
/// preprocessing.
pub fn overlay_rgb(
    grey: &[f32],
    width: usize,
    height: usize,
    cam: &[f32],
    cam_size: usize,
    opacity: f32,
) -> Vec<u8> {
    let cam = resize(cam, cam_size, cam_size, width, height);
    grey.iter()
        .zip(&cam)
        .flat_map(|(&g, &c)| {
            let base = g.clamp(0.0, 1.0) * 255.0;
            let heat = colormap(c);
            let alpha = opacity.clamp(0.0, 1.0) * c.clamp(0.0, 1.0).sqrt();
            heat.map(|h| (base * (1.0 - alpha) + f32::from(h) * alpha).round() as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colormap_runs_from_dark_to_bright() {
        let luminance =
            |c: [u8; 3]| 0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32;
        let mut last = -1.0;
        for i in 0..=20 {
            let l = luminance(colormap(i as f32 / 20.0));
            assert!(l > last, "not increasing at {i}");
            last = l;
        }
        assert_eq!(colormap(-3.0), colormap(0.0));
        assert_eq!(colormap(f32::NAN), colormap(0.0));
        assert_eq!(colormap(9.0), [252, 255, 164]);
    }

    #[test]
    fn heatmap_is_transparent_where_the_cam_is_zero() {
        let rgba = heatmap_rgba(&[0.0, 1.0]);
        assert_eq!(rgba.len(), 8);
        assert_eq!(rgba[3], 0);
        assert_eq!(rgba[7], 255);
    }

    #[test]
    fn overlay_keeps_the_xray_where_the_cam_is_cold() {
        let grey = vec![0.5; 16];
        let mut cam = vec![0.0; 4];
        cam[3] = 1.0;
        let out = overlay_rgb(&grey, 4, 4, &cam, 2, 0.6);
        assert_eq!(out.len(), 48);
        assert_eq!(&out[..3], &[128, 128, 128]);
        assert_ne!(&out[45..48], &[128, 128, 128]);
        let none = overlay_rgb(&grey, 4, 4, &cam, 2, 0.0);
        assert!(none.iter().all(|&v| v == 128));
    }
}

//! On-the-fly augmentation of preprocessed (square, `[0, 1]`) training images.
//!
//! Each image is augmented with probability `p` (default 0.5); an augmented image gets all of the
//! following, each with its own random amount (ranges at strength 1):
//! - horizontal flip with probability 1/2: left and right effusions are both common, and portable
//!   films are sometimes mirrored;
//! - rotation within ±10°: patients are rarely positioned straighter than that;
//! - translation within ±10 % of the side: NIH films are not centred the same way;
//! - zoom within ±10 %: film size and distance vary;
//! - contrast within ±15 % and brightness within ±0.1 (of the `[0, 1]` range): exposure varies
//!   even after min-max normalisation;
//! - Gaussian noise with σ = 0.02: film grain and detector noise.
//!
//! Never a vertical flip: a chest film is never upside down, and where fluid collects (the
//! costophrenic angles, at the bottom) is part of what an effusion looks like.

use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct AugmentConfig {
    /// Probability that an image is augmented at all.
    pub probability: f32,
    pub max_rotation_deg: f32,
    /// As a fraction of the side.
    pub max_translate: f32,
    /// Zoom factor drawn from `1 ± max_zoom`.
    pub max_zoom: f32,
    pub max_brightness: f32,
    pub max_contrast: f32,
    pub noise_std: f32,
}

impl AugmentConfig {
    /// The defaults, scaled by `strength` (0 = off, 1 = default, 2 = twice as strong).
    pub fn with_strength(probability: f32, strength: f32) -> Self {
        Self {
            probability,
            max_rotation_deg: 10.0 * strength,
            max_translate: 0.10 * strength,
            max_zoom: 0.1 * strength,
            max_brightness: 0.1 * strength,
            max_contrast: 0.15 * strength,
            noise_std: 0.02 * strength,
        }
    }
}

/// Augment one `size x size` image in place (or leave it, with probability `1 - p`).
pub fn augment(image: &mut [f32], size: usize, cfg: &AugmentConfig, rng: &mut Rng) {
    if !rng.chance(cfg.probability) {
        return;
    }
    let flip = rng.chance(0.5);
    let angle = rng
        .range(-cfg.max_rotation_deg, cfg.max_rotation_deg)
        .to_radians();
    let zoom = 1.0 + rng.range(-cfg.max_zoom, cfg.max_zoom);
    let tx = rng.range(-cfg.max_translate, cfg.max_translate) * size as f32;
    let ty = rng.range(-cfg.max_translate, cfg.max_translate) * size as f32;
    let source = image.to_vec();
    affine(&source, image, size, flip, angle, zoom, tx, ty);
    let contrast = 1.0 + rng.range(-cfg.max_contrast, cfg.max_contrast);
    let brightness = rng.range(-cfg.max_brightness, cfg.max_brightness);
    for v in image.iter_mut() {
        let noise = if cfg.noise_std > 0.0 {
            rng.normal() * cfg.noise_std
        } else {
            0.0
        };
        *v = ((*v - 0.5) * contrast + 0.5 + brightness + noise).clamp(0.0, 1.0);
    }
}

/// Resample `src` into `dst` under flip, rotation about the centre, zoom and translation, with
/// bilinear interpolation and edge replication.
#[allow(clippy::too_many_arguments)]
pub fn affine(
    src: &[f32],
    dst: &mut [f32],
    size: usize,
    flip: bool,
    angle: f32,
    zoom: f32,
    tx: f32,
    ty: f32,
) {
    let c = (size as f32 - 1.0) / 2.0;
    let (sin, cos) = angle.sin_cos();
    let max = size as f32 - 1.0;
    let at = |x: usize, y: usize| src[y * size + x];
    for y in 0..size {
        for x in 0..size {
            // Inverse map: output → source.
            let dx = (x as f32 - c - tx) / zoom;
            let dy = (y as f32 - c - ty) / zoom;
            let mut sx = cos * dx + sin * dy;
            let sy = -sin * dx + cos * dy;
            if flip {
                sx = -sx;
            }
            let sx = (sx + c).clamp(0.0, max);
            let sy = (sy + c).clamp(0.0, max);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
            let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
            dst[y * size + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(size: usize, x: usize, y: usize) -> Vec<f32> {
        let mut v = vec![0.0; size * size];
        v[y * size + x] = 1.0;
        v
    }

    fn argmax(v: &[f32], size: usize) -> (usize, usize) {
        let i = v
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        (i % size, i / size)
    }

    #[test]
    fn identity_transform_changes_nothing() {
        let src: Vec<f32> = (0..64).map(|i| i as f32 / 63.0).collect();
        let mut dst = vec![0.0; 64];
        affine(&src, &mut dst, 8, false, 0.0, 1.0, 0.0, 0.0);
        for (a, b) in src.iter().zip(&dst) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn flip_is_horizontal_never_vertical() {
        let src = marker(9, 1, 2);
        let mut dst = vec![0.0; 81];
        affine(&src, &mut dst, 9, true, 0.0, 1.0, 0.0, 0.0);
        assert_eq!(argmax(&dst, 9), (7, 2));
        // Whatever the draw, the top of the image stays at the top: a marker near the top never
        // lands in the bottom half.
        let cfg = AugmentConfig::with_strength(1.0, 1.0);
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            let mut img = marker(32, 16, 3);
            augment(&mut img, 32, &cfg, &mut rng);
            let (_, y) = argmax(&img, 32);
            assert!(y < 16, "marker moved to row {y}");
        }
    }

    #[test]
    fn translation_moves_content() {
        let src = marker(16, 5, 5);
        let mut dst = vec![0.0; 256];
        affine(&src, &mut dst, 16, false, 0.0, 1.0, 3.0, -2.0);
        assert_eq!(argmax(&dst, 16), (8, 3));
    }

    #[test]
    fn probability_controls_the_augmented_fraction() {
        let cfg = AugmentConfig::with_strength(0.3, 1.0);
        let mut rng = Rng::new(11);
        let base: Vec<f32> = (0..256).map(|i| (i % 16) as f32 / 15.0).collect();
        let changed = (0..2000)
            .filter(|_| {
                let mut img = base.clone();
                augment(&mut img, 16, &cfg, &mut rng);
                img != base
            })
            .count();
        assert!((500..700).contains(&changed), "{changed} of 2000 augmented");
        let mut img = base.clone();
        augment(
            &mut img,
            16,
            &AugmentConfig::with_strength(0.0, 1.0),
            &mut rng,
        );
        assert_eq!(img, base);
        let mut img = base.clone();
        augment(
            &mut img,
            16,
            &AugmentConfig::with_strength(1.0, 1.0),
            &mut rng,
        );
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

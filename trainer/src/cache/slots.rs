//! A slot's bytes to and from the `[0, 1]` f32 model input, per storage type.
//!
//! Precision (values in `[0, 1]`, as preprocessing makes them):
//! - f32: exact (the bytes are the value's own).
//! - f16: round to nearest; below 1 the spacing is at most 2⁻¹¹, so the error is at most 2⁻¹²
//!   = 2.4e-4, a sixteenth of an 8-bit grey level.
//! - u8: `round(255 v) / 255`; error at most 1/510 = 2.0e-3, half an 8-bit grey level.
//!
//! Why that is enough: the NIH PNGs are 8-bit, so the source itself is quantised to steps of
//! 1/255 before min-max stretches them; training shifts brightness by up to ±0.1, scales
//! contrast by up to ±15 % and adds noise of σ = 0.02 (`crate::augment`): 10 to 400 times
//! these errors. A model trained on a compact cache
//! sees inputs within those bounds of the direct path's (measured by the parity test in
//! `cache::tests`), but its run is no longer bit-identical to one on the raw folder: use f32
//! where that matters.

use super::format::Storage;

/// Write `values` into `out` (`values.len() * storage.bytes_per_value()` bytes).
pub fn encode(values: &[f32], storage: Storage, out: &mut [u8]) {
    match storage {
        Storage::F32 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        Storage::F16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        Storage::U8 => {
            for (v, o) in values.iter().zip(out.iter_mut()) {
                *o = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

/// The f32 values of a slot's bytes.
pub fn decode(bytes: &[u8], storage: Storage) -> Vec<f32> {
    match storage {
        Storage::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Storage::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Storage::U8 => bytes.iter().map(|&b| f32::from(b) / 255.0).collect(),
    }
}

/// The largest error the storage type can make on a `[0, 1]` value (see the module comment).
pub fn error_bound(storage: Storage) -> f32 {
    match storage {
        Storage::F32 => 0.0,
        Storage::F16 => 1.0 / 4096.0,
        Storage::U8 => 1.0 / 510.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_stay_within_their_bound() {
        let values: Vec<f32> = (0..=10_000).map(|i| i as f32 / 10_000.0).collect();
        for storage in [Storage::F32, Storage::F16, Storage::U8] {
            let mut bytes = vec![0u8; values.len() * storage.bytes_per_value()];
            encode(&values, storage, &mut bytes);
            let back = decode(&bytes, storage);
            let worst = values
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // The bound plus an f32 rounding of the division by 255.
            assert!(worst <= error_bound(storage) + 1e-7, "{storage}: {worst}");
            assert!(back.iter().all(|v| (0.0..=1.0).contains(v)), "{storage}");
        }
    }
}

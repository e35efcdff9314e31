//! What the fuzz targets check, shared by `fuzz/fuzz_targets/*` and `tests/fuzz_regressions.rs`
//! (which replays every input the fuzzer ever found a problem with).

#![allow(dead_code)]

use std::sync::OnceLock;

use burn::tensor::Device;
use cxr::classifier::batch_input;
use cxr::decode::{DecodeLimits, decode_with_limits};
use cxr::model::{ResNet, ResNetConfig};
use cxr::preprocess::{preprocess_luma, preview};

/// The preprocessed cache's format (`trainer prepare`): compiled here on its own, as it needs
/// only serde, serde_json and thiserror.
#[path = "../../trainer/src/cache/format.rs"]
pub mod cache_format;

/// Model input side for the fuzzed pipeline (small, so each execution is quick).
const SIZE: usize = 32;

/// Smaller size limits than the product's (same code path), so that each execution stays fast:
/// a header may claim up to 8192² pixels, which is legal but slow to decode millions of times.
const LIMITS: DecodeLimits = DecodeLimits {
    max_side: 2048,
    max_pixels: 1 << 20,
    max_alloc: 64 << 20,
};

fn tiny_model() -> &'static (ResNet, Device) {
    static MODEL: OnceLock<(ResNet, Device)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let device = Device::flex();
        let config = ResNetConfig {
            in_channels: 1,
            stem_width: 4,
            widths: vec![4, 8],
            depths: vec![1, 1],
            num_classes: 2,
        };
        (config.init(&device), device)
    })
}

/// Raw bytes → decode → preview → min-max → resize → a tiny ResNet forward with CAM. Whatever
/// the bytes, a typed error or finite outputs in range; a panic is a finding.
pub fn image_pipeline(bytes: &[u8]) {
    let Ok(image) = decode_with_limits(bytes, &LIMITS) else {
        return;
    };
    assert_eq!(image.pixels.len(), image.width * image.height);
    let _ = preview(&image, 64);
    let Ok(input) = preprocess_luma(&image, SIZE) else {
        return;
    };
    assert_eq!(input.pixels.len(), SIZE * SIZE);
    assert!(
        input.pixels.iter().all(|p| (0.0..=1.0).contains(p)),
        "model input outside [0, 1]"
    );
    let (model, device) = tiny_model();
    let x = batch_input(input.pixels, 1, SIZE, device);
    let (logits, cam) = model.forward_with_cam(x);
    let logits: Vec<f32> = logits.into_data().try_to_vec::<f32>().expect("f32 logits");
    let cam: Vec<f32> = cam.into_data().try_to_vec::<f32>().expect("f32 CAM");
    assert!(
        logits.iter().chain(&cam).all(|v| v.is_finite()),
        "non-finite model output"
    );
}

/// Raw bytes → the `.cxrw` weight-file reader: a typed error or a model, never a panic.
pub fn weights_reader(bytes: &[u8]) {
    let _ = cxr::weights::decode(bytes, &Device::flex());
}

/// Raw bytes → a labels CSV (as text, the way the page reads it) matched against a few dropped
/// files: a typed error or a label set whose entries point at dropped files, never a panic.
pub fn labels_csv(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let names: Vec<String> = [
        "d/labels.csv",
        "d/a.png",
        "d/img/a.png",
        "d/img/b.dcm",
        "c.png",
    ]
    .map(String::from)
    .to_vec();
    let Ok(Some(set)) = cxr::labels::recognise(&names, &[(names[0].clone(), text)]) else {
        return;
    };
    assert!(!set.items.is_empty());
    assert!(
        set.items
            .iter()
            .all(|i| i.index < names.len() && i.label <= 1)
    );
    assert!(
        set.items.windows(2).all(|w| w[0].index < w[1].index),
        "one entry per file"
    );
    let positives = set.items.iter().filter(|i| i.label == 1).count();
    assert_eq!(set.positives, positives);
}

/// Raw bytes → the preprocessed cache's index parser (`cache.json`) and data-file header parser
/// (`pixels.bin`): a typed error or an index that keeps its rules, never a panic. A parsed index
/// accepts exactly its own data file: its header round-trips, and any other length is refused.
pub fn cache_index(bytes: &[u8]) {
    let _ = cache_format::Header::parse(bytes);
    let Ok(index) = cache_format::parse_index(bytes) else {
        return;
    };
    let count = index.items.len() as u64;
    assert!(index.done_count() <= count, "more slots done than items");
    assert!(index.items.iter().all(|i| i.label <= 1));
    let header = index.header();
    assert_eq!(cache_format::Header::parse(&header.encode()), Ok(header));
    let len = index.data_len();
    assert_eq!(index.check_data(&header, len), Ok(()));
    assert!(index.check_data(&header, len + 1).is_err());
    assert!(index.check_data(&header, len - 1).is_err());
    let other = cache_format::Header {
        id: header.id ^ 1,
        ..header
    };
    assert!(index.check_data(&other, len).is_err());
    for &[a, b] in &index.done {
        assert!(a < b && b <= count);
        assert!(cache_format::is_done(&index.done, [a, b]));
    }
}

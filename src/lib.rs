//! Chest X-ray pleural-effusion classifier: one crate for the trainer (native) and the page (wasm).
//!
//! - [`decode`]: file bytes (DICOM, PNG, JPEG, BMP, TIFF, WebP, GIF) → f32 luminance, with the
//!   size limits and the guards found by fuzzing.
//! - [`preprocess`]: decoded luminance → normalised model input (the one path everything uses).
//! - [`model`]: the ResNet and its class activation map.
//! - [`weights`]: the `.cxrw` weight file (model + description).
//! - [`calibration`]: logits → calibrated probability (Platt or temperature scaling), the
//!   reliability diagram, reading a probability at another prevalence.
//! - [`classifier`]: inference from bytes to a [`classifier::Prediction`].
//! - [`saliency`]: heat maps and overlays of the CAM.
//! - [`batch`]: batch results and their CSV export.
//! - [`ood`]: the not-a-chest-X-ray gate on the model's features.
//! - [`embedded`]: the default model compiled into the crate.
//! - `web` (wasm only): the wasm-bindgen surface of the page.

pub mod alloc_guard;
pub mod batch;
pub mod calibration;
pub mod classifier;
pub mod decode;
pub mod embedded;
pub mod error;
pub mod model;
pub mod model_card;
pub mod ood;
pub mod preprocess;
pub mod saliency;
pub mod weights;

#[cfg(target_family = "wasm")]
pub mod web;

/// The unit tests run with the guarded allocator, as the programs do (the wasm page in `web`,
/// the integration tests and fuzz targets in their own files, the trainer's binaries): the cap
/// of [`alloc_guard`] only holds where a program installs it.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc_guard::GuardedAlloc = alloc_guard::GuardedAlloc;

pub use classifier::{Classifier, Prediction};
pub use error::{CxrError, ImageError, WeightsError};
pub use model::{ResNet, ResNetConfig};
pub use weights::ModelInfo;

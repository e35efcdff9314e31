//! Chest X-ray pleural-effusion classifier: one crate for the trainer (native) and the page (wasm).
//!
//! - [`decode`]: file bytes (DICOM, PNG, JPEG, BMP, TIFF, WebP, GIF) → f32 luminance, with the
//!   size limits and the guards found by fuzzing.
//! - [`preprocess`]: decoded luminance → normalised model input (the one path everything uses).
//! - [`model`]: the ResNet and its class activation map.
//! - [`kernels`]: the project's own CPU inference kernels, a burn backend extension.
//! - [`weights`]: the `.cxrw` weight file (model + description).
//! - [`calibration`]: logits → calibrated probability (Platt or temperature scaling), the
//!   reliability diagram, reading a probability at another prevalence.
//! - [`classifier`]: inference from bytes to a [`classifier::Prediction`].
//! - [`saliency`]: heat maps and overlays of the CAM.
//! - [`batch`]: batch results and their CSV export.
//! - [`metrics`]: AUC, bootstrap CI, ROC, threshold choice (the trainer's and the page's).
//! - [`labels`]: which dropped files are labelled how (class folders or a labels CSV).
//! - [`validation`]: a streaming validation session on the user's own labelled images.
//! - [`plots`]: SVG charts (the ROC curve); [`rng`]: the seeded generator.
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
pub mod kernels;
pub mod labels;
pub mod metrics;
pub mod model;
pub mod model_card;
pub mod ood;
pub mod plots;
pub mod preprocess;
pub mod rng;
pub mod saliency;
pub mod validation;
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

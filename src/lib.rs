//! Chest X-ray pleural-effusion classifier: one crate for the trainer (native) and the page (wasm).
//!
//! - [`preprocess`]: file bytes → normalised model input (the one path everything uses).
//! - [`dicom`]: DICOM files (rescale, VOI window, MONOCHROME1) into that path.
//! - [`model`]: the ResNet and its class activation map.
//! - [`weights`]: the `.cxrw` weight file (model + description).
//! - [`classifier`]: inference from bytes to a [`classifier::Prediction`].
//! - [`saliency`]: heat maps and overlays of the CAM.
//! - [`batch`]: batch results and their CSV export.
//! - [`ood`]: the not-a-chest-X-ray gate on the model's features.
//! - [`embedded`]: the default model compiled into the crate.
//! - `web` (wasm only): the wasm-bindgen surface of the page.

pub mod alloc_guard;
pub mod batch;
pub mod classifier;
pub mod dicom;
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

/// Every binary that links this crate (trainer, tests, the wasm page) uses the guarded system
/// allocator, so decoders can be held to a size cap where a file's numbers size their buffers.
#[global_allocator]
static ALLOCATOR: alloc_guard::GuardedAlloc = alloc_guard::GuardedAlloc;

pub use classifier::{Classifier, Prediction};
pub use error::{CxrError, ImageError, WeightsError};
pub use model::{ResNet, ResNetConfig};
pub use weights::ModelInfo;

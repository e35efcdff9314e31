//! Typed errors. Every message is written for the person who dropped the file or ran the command:
//! it says what went wrong and what to do about it.

use thiserror::Error;

/// Why an image could not be turned into a model input.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ImageError {
    #[error(
        "The file is empty (0 bytes). Choose a chest X-ray image (DICOM, PNG, JPEG, BMP, TIFF, WebP or GIF)."
    )]
    Empty,

    #[error(
        "This file is not an image format that can be read{}. Supported: DICOM, PNG, JPEG, BMP, TIFF, WebP and GIF; export the X-ray as PNG or DICOM.",
        .detected.as_ref().map(|d| format!(" (it looks like {d})")).unwrap_or_default()
    )]
    UnsupportedFormat { detected: Option<String> },

    #[error(
        "The image format is known but this kind of image inside it cannot be read ({detail}). Export the X-ray as an 8- or 16-bit greyscale PNG."
    )]
    UnsupportedPixels { detail: String },

    #[error(
        "This DICOM file stores its pixels as {syntax}, which this build cannot decode. Export it from your DICOM viewer as uncompressed DICOM or as PNG."
    )]
    UnsupportedDicom { syntax: String },

    #[error(
        "The file is too large ({megabytes} MB; the limit is {max_megabytes} MB). A chest X-ray is rarely over 50 MB: export it as PNG or JPEG."
    )]
    FileTooLarge { megabytes: u64, max_megabytes: u64 },

    #[error(
        "The image file is damaged or incomplete and cannot be decoded ({reason}). Try exporting it again."
    )]
    Corrupt { reason: String },

    #[error(
        "The image is too large ({width}x{height} pixels). The limit is {max_side} pixels per side and {max_megapixels} megapixels; downscale it first."
    )]
    TooLarge {
        width: u64,
        height: u64,
        max_side: u32,
        max_megapixels: u32,
    },

    #[error(
        "The image is too large to decode within the memory limit. Downscale it or save it as 8-bit PNG."
    )]
    MemoryLimit,

    #[error("The image has no pixels (0x0). Choose another file.")]
    NoPixels,

    #[error("The image is blank: every pixel has the same value, so there is nothing to classify.")]
    Blank,

    #[error(
        "The image contains invalid pixel values (NaN or infinity). Export it again as an ordinary 8- or 16-bit image."
    )]
    NonFinite,
}

/// Why a weight file could not be read or written.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum WeightsError {
    #[error(
        "This is not a model weight file (bad header). Expected a .cxrw file written by `trainer export`."
    )]
    BadMagic,

    #[error(
        "The weight file has format version {found}; this build reads version {expected}. Re-export the model with this version of the trainer."
    )]
    Version { found: u32, expected: u32 },

    #[error("The weight file is truncated or damaged: {0}")]
    Truncated(String),

    #[error("The weight file's model description is invalid: {0}")]
    Config(String),

    #[error("The weights do not fit the architecture described in the file: {0}")]
    Mismatch(String),

    #[error("Could not read or write the weight file: {0}")]
    Io(String),
}

/// Any error of the classifier, from file to prediction.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CxrError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("The model failed to run: {0}")]
    Inference(String),
}

impl CxrError {
    /// A short machine-readable code for the kind of error (used by the page and `--json`).
    pub fn code(&self) -> &'static str {
        match self {
            CxrError::Image(e) => match e {
                ImageError::Empty => "empty",
                ImageError::UnsupportedFormat { .. } => "unsupported_format",
                ImageError::UnsupportedPixels { .. } => "unsupported_pixels",
                ImageError::UnsupportedDicom { .. } => "unsupported_dicom",
                ImageError::FileTooLarge { .. } => "file_too_large",
                ImageError::Corrupt { .. } => "corrupt",
                ImageError::TooLarge { .. } | ImageError::MemoryLimit => "too_large",
                ImageError::NoPixels => "no_pixels",
                ImageError::Blank => "blank",
                ImageError::NonFinite => "non_finite",
            },
            CxrError::Weights(_) => "weights",
            CxrError::Inference(_) => "inference",
        }
    }
}

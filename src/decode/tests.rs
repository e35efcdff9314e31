//! The limits shared by every format.

use super::*;

#[test]
fn every_error_has_an_actionable_message() {
    for e in [
        ImageError::Empty,
        ImageError::UnsupportedFormat { detected: None },
        ImageError::Corrupt { reason: "x".into() },
        too_large(20_000, 10, &DecodeLimits::DEFAULT),
        ImageError::MemoryLimit,
        ImageError::NoPixels,
        ImageError::Blank,
        ImageError::NonFinite,
        ImageError::UnsupportedPixels { detail: "x".into() },
        ImageError::FileTooLarge {
            megabytes: 900,
            max_megabytes: 512,
        },
    ] {
        let msg = e.to_string();
        assert!(msg.len() > 30 && msg.ends_with('.'), "{msg}");
    }
}

#[test]
fn files_over_the_size_limit_are_refused_before_decoding() {
    assert!(check_file_size(MAX_FILE_BYTES).is_ok());
    assert!(matches!(
        check_file_size(MAX_FILE_BYTES + 1),
        Err(ImageError::FileTooLarge { .. })
    ));
}

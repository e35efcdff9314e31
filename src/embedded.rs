//! The default model, compiled into the crate: `model/effusion.cxrw`, written by
//! `cargo run --release -p trainer -- export` (see the README for how it was trained).

/// Bytes of the embedded `.cxrw` weight file.
pub static MODEL: &[u8] = include_bytes!("../model/effusion.cxrw");

/// The model card of the embedded model, as Markdown.
pub static MODEL_CARD: &str = include_str!("../model/MODEL_CARD.md");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Classifier;
    use burn::module::Module;
    use burn::tensor::Device;

    #[test]
    fn embedded_weights_decode_into_their_architecture() {
        let device = Device::flex();
        let classifier = Classifier::embedded(&device).expect("embedded model loads");
        let info = classifier.info();
        let fresh = info.architecture.init(&device);
        assert_eq!(classifier.model().num_params(), fresh.num_params());
        assert_eq!(info.class_names, ["nofinding", "effusion"]);
        assert!(!MODEL_CARD.is_empty());
    }
}

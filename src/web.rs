//! The wasm-bindgen surface of the page: a thin boundary over [`crate::Classifier`]. Errors
//! become JS `Error`s carrying the same user-facing messages as the native tools.
//!
//! JS calls `init(backend)` once (it initialises the backend, loads the embedded weights and
//! warms the model up), then `classify(bytes)` for each file. Everything runs in a Web Worker, so
//! the page stays responsive.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::Device;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::classifier::{Classifier, batch_input};
use crate::decode::decode;
use crate::error::CxrError;
use crate::model::ConvKernel;
use crate::preprocess::{NormalizedImage, Preprocessed};
use crate::saliency::heatmap_rgba;

/// Largest side of the image shown on the page.
const PREVIEW_SIDE: usize = 1024;

struct State {
    classifier: Rc<Classifier>,
    backend: String,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A user-facing error that also carries [`CxrError::code`] as `error.code`, so the page and its
/// tests can tell the kinds apart without parsing the message.
fn coded_error(e: CxrError) -> JsValue {
    let error = js_sys::Error::new(&e.to_string());
    let _ = js_sys::Reflect::set(
        &error,
        &JsValue::from_str("code"),
        &JsValue::from_str(e.code()),
    );
    error.into()
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// The page's allocator: the system one, refusing single allocations over the cap that
/// [`crate::alloc_guard`] sets around parsing untrusted files.
#[cfg(target_family = "wasm")]
#[global_allocator]
static ALLOCATOR: crate::alloc_guard::GuardedAlloc = crate::alloc_guard::GuardedAlloc;

#[cfg(target_family = "wasm")]
unsafe extern "C" {
    /// Synthesised by wasm-ld: runs the static constructors (the `inventory` registrations of
    /// cubecl's IR crate, pliron).
    fn __wasm_call_ctors();
}

/// Runs once when the page instantiates the wasm. Calling the constructors here, once, is what
/// keeps wasm-ld from treating the module as a "command" and wrapping every export (each call
/// from JS, each JS value Rust creates) in a call to all of them: in the page's profile, that
/// wrapping took 12 of the 50 ms a 1024x1024 PNG spent in the worker (bench/RESULTS.md).
#[wasm_bindgen(start)]
pub fn start() {
    // SAFETY: wasm-bindgen calls the start function once, right after instantiation and before
    // any other export, so the constructors run exactly once and before anything reads what
    // they register.
    unsafe { __wasm_call_ctors() };
    console_error_panic_hook::set_once();
}

/// Result of `classify`, as a plain JS object.
#[derive(Serialize)]
struct WebPrediction {
    /// Calibrated when the model has a calibration (see [`crate::calibration`]).
    probability: f32,
    label: String,
    threshold: f32,
    uncalibrated_probability: f32,
    logits: [f32; 2],
    cam_size: usize,
    /// The CAM itself, `cam_size`² values scaled to 0..=255.
    #[serde(with = "serde_bytes_compat")]
    cam: Vec<u8>,
    /// The CAM drawn as RGBA (colour ramp, alpha rising with the value).
    #[serde(with = "serde_bytes_compat")]
    heatmap: Vec<u8>,
    original_width: usize,
    original_height: usize,
    /// `true` when the image looks unlike a frontal chest X-ray; `null` without a gate.
    ood: Option<bool>,
    ood_distance: Option<f32>,
    ood_threshold: Option<f32>,
    #[serde(with = "serde_bytes_compat")]
    preview: Vec<u8>,
    preview_width: usize,
    preview_height: usize,
    timings: Timings,
    backend: String,
}

/// Serialise bytes with `serialize_bytes`, which becomes a `Uint8Array` rather than an array of
/// numbers.
mod serde_bytes_compat {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }
}

#[derive(Serialize, Default)]
struct Timings {
    decode_ms: f64,
    preprocess_ms: f64,
    inference_ms: f64,
    saliency_ms: f64,
    total_ms: f64,
}

async fn device_for(backend: &str) -> Result<(Device, String), JsError> {
    match backend {
        #[cfg(feature = "wgpu")]
        "webgpu" => {
            let device = Device::wgpu_options()
                .init_async()
                .await
                .map_err(|e| js_error(format!("WebGPU could not be initialised: {e:?}")))?;
            Ok((device, "webgpu".into()))
        }
        "cpu" => Ok((Device::flex(), "cpu".into())),
        other => Err(js_error(format!(
            "unknown or unavailable backend `{other}` (use webgpu or cpu)"
        ))),
    }
}

async fn run(
    classifier: &Classifier,
    bytes: &[u8],
    backend: &str,
) -> Result<WebPrediction, CxrError> {
    let t0 = now_ms();
    let image = decode(bytes)?;
    let t_decoded = now_ms();
    let normalized = NormalizedImage::new(&image)?;
    drop(image);
    let input = normalized.model_input(classifier.info().input_size);
    let (preview_width, preview_height, preview) = normalized.preview(PREVIEW_SIDE);
    drop(normalized);
    let t1 = now_ms();
    let out = classifier.run(&input);
    let read = |e| CxrError::Inference(format!("{e:?}"));
    let logits = out.logits.into_data_async().await.map_err(read)?;
    let t2 = now_ms();
    let cam = out.cam.into_data_async().await.map_err(read)?;
    let features = out.features.into_data_async().await.map_err(read)?;
    let prediction = classifier.finish(&input, logits, cam, features)?;
    let heatmap = heatmap_rgba(&prediction.cam);
    let t3 = now_ms();
    Ok(WebPrediction {
        probability: prediction.probability,
        label: prediction.label,
        threshold: prediction.threshold,
        uncalibrated_probability: prediction.uncalibrated_probability,
        logits: prediction.logits,
        cam_size: prediction.cam_size,
        cam: prediction
            .cam
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect(),
        heatmap,
        original_width: prediction.original_width,
        original_height: prediction.original_height,
        ood: prediction.ood,
        ood_distance: prediction.ood_distance,
        ood_threshold: prediction.ood_threshold,
        preview,
        preview_width,
        preview_height,
        timings: Timings {
            decode_ms: t_decoded - t0,
            preprocess_ms: t1 - t_decoded,
            inference_ms: t2 - t1,
            saliency_ms: t3 - t2,
            total_ms: t3 - t0,
        },
        backend: backend.to_string(),
    })
}

fn current() -> Result<(Rc<Classifier>, String), JsError> {
    STATE.with(|s| {
        s.borrow()
            .as_ref()
            .map(|st| (st.classifier.clone(), st.backend.clone()))
            .ok_or_else(|| js_error("the model is not loaded yet; call init() first"))
    })
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsError> {
    // Plain objects for maps, Uint8Array for bytes (the heat map and preview travel as such).
    value
        .serialize(&serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true))
        .map_err(js_error)
}

/// Initialise `backend` ("webgpu" or "cpu"), load the embedded model and warm it up once.
/// Returns the model's description (name, input size, threshold, card, reference logits).
#[wasm_bindgen]
pub async fn init(backend: String) -> Result<JsValue, JsError> {
    let (device, backend) = device_for(&backend).await?;
    let classifier = Classifier::embedded(&device).map_err(js_error)?;
    // Warm-up: compiles kernels (WebGPU) and touches every weight once.
    let s = classifier.info().input_size;
    let warm = Preprocessed {
        pixels: (0..s * s).map(|i| (i % 7) as f32 / 7.0).collect(),
        size: s,
        original_width: s,
        original_height: s,
    };
    classifier
        .run(&warm)
        .logits
        .into_data_async()
        .await
        .map_err(|e| js_error(format!("{e:?}")))?;
    warm_up_preprocessing(s)?;
    // The page needs the description, not the gate's matrix (its result comes with each image).
    let mut shown = classifier.info().clone();
    shown.ood = None;
    let info = to_js(&shown)?;
    STATE.with(|st| {
        *st.borrow_mut() = Some(State {
            classifier: Rc::new(classifier),
            backend,
        })
    });
    Ok(info)
}

/// Run the normalisation, the resize and the preview once on a synthetic image, so the browser
/// compiles their loops to optimised code now rather than during the user's first drop
/// (measured: the first drop's preprocessing took 93 ms against 24 ms for the same file dropped
/// again). At 1024x1024, the NIH images' size, this also grows the wasm memory to what such a
/// drop needs: growing it during the first drop took 5 ms each time, twice (bench/RESULTS.md).
fn warm_up_preprocessing(input_size: usize) -> Result<(), JsError> {
    const SIDE: usize = 1024;
    let image = crate::decode::LumaImage {
        width: SIDE,
        height: SIDE,
        pixels: (0..SIDE * SIDE).map(|i| (i % 251) as f32).collect(),
    };
    let normalized = NormalizedImage::new(&image).map_err(js_error)?;
    normalized.model_input(input_size);
    normalized.preview(PREVIEW_SIDE);
    Ok(())
}

/// Classify the bytes of one file. Resolves to an object with `probability`, `label`,
/// `threshold`, `logits`, `cam_size`, `heatmap` (RGBA bytes, `cam_size`²), the original size,
/// `timings` and `backend`; rejects with an `Error` whose message is meant for the user and
/// whose `code` names the kind of error (`corrupt`, `blank`, `too_large`…).
#[wasm_bindgen]
pub async fn classify(bytes: Vec<u8>) -> Result<JsValue, JsValue> {
    let (classifier, backend) = current()?;
    let prediction = run(&classifier, &bytes, &backend)
        .await
        .map_err(coded_error)?;
    Ok(to_js(&prediction)?)
}

/// The model alone on an already preprocessed input (`input_size`² values in [0, 1], row-major)
/// → its two logits: no decoding, no CAM. For benchmarks against other runtimes and parity
/// checks; the page itself uses [`classify`]. `kernel` picks how the features are computed:
/// `"burn"` (burn's conv2d and BatchNorm), `"columns"` (im2col + matmul, then burn's BatchNorm),
/// or anything else for the classifier's own (on the CPU, the fused kernels with folded
/// BatchNorms), to measure them.
#[wasm_bindgen]
pub async fn forward_logits(pixels: Vec<f32>, kernel: String) -> Result<Vec<f32>, JsError> {
    let (classifier, _) = current()?;
    let s = classifier.info().input_size;
    if pixels.len() != s * s {
        return Err(js_error(format!(
            "expected {} values ({s}x{s}), got {}",
            s * s,
            pixels.len()
        )));
    }
    let x = batch_input(pixels, 1, s, classifier.device());
    let model = classifier.model();
    let features = match kernel.as_str() {
        "burn" => model.features_with(x, ConvKernel::Burn),
        "columns" => model.features_with(x, ConvKernel::Columns),
        _ => classifier.features(x),
    };
    let logits = model
        .classify_features(features)
        .into_data_async()
        .await
        .map_err(|e| js_error(format!("{e:?}")))?;
    logits
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| js_error(format!("{e:?}")))
}

/// CSV of a batch: `rows` is an array of objects with the fields of [`crate::batch::BatchRow`].
#[wasm_bindgen]
pub fn batch_csv(rows: JsValue) -> Result<String, JsError> {
    let rows: Vec<crate::batch::BatchRow> =
        serde_wasm_bindgen::from_value(rows).map_err(js_error)?;
    Ok(crate::batch::to_csv(&rows))
}

/// The loaded model's calibrated `probability` read at another `prevalence` of effusion (both
/// fractions in (0, 1)), by Bayes' rule on the odds: [`Classifier::probability_at_prevalence`].
#[wasm_bindgen]
pub fn probability_at_prevalence(probability: f64, prevalence: f64) -> Result<f64, JsError> {
    let (classifier, _) = current()?;
    classifier
        .probability_at_prevalence(probability, prevalence)
        .ok_or_else(|| {
            js_error(if classifier.info().calibration.is_none() {
                "this model's probability is not calibrated, so it holds at no known prevalence"
                    .to_string()
            } else {
                format!(
                    "enter a prevalence between 0 and 100 % (got {})",
                    100.0 * prevalence
                )
            })
        })
}

/// The model card of the embedded model, as Markdown.
#[wasm_bindgen]
pub fn model_card() -> String {
    crate::embedded::MODEL_CARD.to_string()
}

/// What validation mode needs of one file: the probability and the not-a-chest-X-ray flag.
#[derive(Serialize)]
struct Score {
    probability: f32,
    ood: Option<bool>,
}

/// Score the bytes of one file for validation mode: the same path as [`classify`], without
/// sending the preview and heat map back. Rejects as [`classify`] does (with `error.code`).
/// The score is the uncalibrated probability, the scale the model's threshold was chosen on and
/// `trainer evaluate` reports, so both give the same figures; calibration is monotone, so the
/// AUC, ROC, sensitivity and specificity are the same on either scale.
#[wasm_bindgen]
pub async fn score(bytes: Vec<u8>) -> Result<JsValue, JsValue> {
    let (classifier, backend) = current()?;
    let prediction = run(&classifier, &bytes, &backend)
        .await
        .map_err(coded_error)?;
    Ok(to_js(&Score {
        probability: prediction.uncalibrated_probability,
        ood: prediction.ood,
    })?)
}

/// Indices of the CSV files among the dropped files' `names` (the page reads only those).
#[wasm_bindgen]
pub fn csv_indices(names: Vec<String>) -> Vec<u32> {
    crate::labels::csv_names(&names)
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

/// The labelled set among the dropped files (`names`: relative paths), given the CSV files'
/// names and texts; `null` when they are not a labelled set. Rejects with the CSV's problem
/// (`error.code` = `labels`).
#[wasm_bindgen]
pub fn label_set(
    names: Vec<String>,
    csv_names: Vec<String>,
    csv_texts: Vec<String>,
) -> Result<JsValue, JsValue> {
    let csvs: Vec<(String, String)> = csv_names.into_iter().zip(csv_texts).collect();
    match crate::labels::recognise(&names, &csvs) {
        Ok(set) => Ok(to_js(&set)?),
        Err(e) => {
            let error = js_sys::Error::new(&e.to_string());
            let _ = js_sys::Reflect::set(&error, &"code".into(), &"labels".into());
            Err(error.into())
        }
    }
}

/// A validation session of the loaded model (see [`crate::validation::Session`]): add one
/// scored or unreadable file at a time, read the figures at any threshold.
#[wasm_bindgen]
pub struct Validation {
    session: crate::validation::Session,
    model: String,
}

#[wasm_bindgen]
impl Validation {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<Validation, JsError> {
        let (classifier, _) = current()?;
        Ok(Self {
            session: crate::validation::Session::new(classifier.info().threshold),
            model: classifier.info().name.clone(),
        })
    }

    pub fn add_scored(
        &mut self,
        label: u8,
        probability: f32,
        ood: Option<bool>,
    ) -> Result<(), JsError> {
        self.session
            .add_scored(label, probability, ood)
            .map_err(js_error)
    }

    pub fn add_unreadable(&mut self, file: String, code: String, message: String) {
        self.session.add_unreadable(file, code, message);
    }

    fn at(&self, threshold: Option<f32>) -> f32 {
        threshold.unwrap_or(self.session.model_threshold())
    }

    /// The figures at `threshold` (the model's when `undefined`); `with_ci` computes the
    /// bootstrap CI if not known yet.
    pub fn summary(&mut self, threshold: Option<f32>, with_ci: bool) -> Result<JsValue, JsError> {
        let t = self.at(threshold);
        to_js(&self.session.summary(t, with_ci))
    }

    pub fn threshold_for_sensitivity(&self, target: f64) -> f32 {
        self.session.threshold_for_sensitivity(target)
    }

    /// The ROC curve as SVG with the operating point at `threshold` marked.
    pub fn roc_svg(&mut self, threshold: Option<f32>) -> String {
        let t = self.at(threshold);
        self.session.roc_svg(t)
    }

    /// The report to export, as pretty JSON.
    pub fn report_json(&mut self, threshold: Option<f32>) -> String {
        let t = self.at(threshold);
        let value = self.session.report_json(t, &self.model);
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

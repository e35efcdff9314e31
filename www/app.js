// The page: file input (drop, picker, paste, sample) → worker → drawing. Logic lives in Rust.
import { createBatch, droppedFiles } from './batch.js';
import { createValidation } from './validate.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let worker = null;
let nextId = 1;
const pending = new Map();
let sampleName = null;
let modelReady = false;
let handled = 0;
let modelInfo = null;
let calibration = null; // the model's calibration (its prevalence), null when uncalibrated
let shownProbability = null;

function showError(message, code = 'error') {
  $('error').textContent = message;
  $('error').dataset.code = code;
  $('error').hidden = false;
}

function setStatus(text) { $('status').textContent = text; }

function onMessage(event) {
  const msg = event.data;
  if (msg.type === 'ready') {
    sampleName = msg.info.reference ? msg.info.reference.sample : 'sample.png';
    modelInfo = msg.info;
    $('backend').textContent = `${fallbackNote || msg.note} (${msg.wasm.name})`;
    modelReady = true;
    document.body.dataset.backend = msg.backend;
    document.body.dataset.wasm = msg.wasm.id;
    document.body.dataset.state = 'ready';
    $('sample').disabled = false;
    setStatus(msg.selfTest.ok ? 'Model ready.' : 'Model ready, but its self-test failed: results may be wrong.');
    calibration = msg.info.calibration || null;
    showCard(msg.info, msg.card);
  } else if (msg.type === 'fatal') {
    startFailed(msg.message);
  } else if (msg.type === 'crashed') {
    restartAfterCrash(`the model crashed on this file (${msg.message}) and was restarted`);
  } else {
    const done = pending.get(msg.id);
    pending.delete(msg.id);
    if (done) done(msg);
  }
}

// A GPU driver can crash the wasm instance outright; then start again on the CPU in a new worker.
function startFailed(message) {
  if (!modelReady && requestedBackend !== 'cpu') {
    startWorker('cpu', `the GPU path failed (${message}); using CPU`);
    return;
  }
  document.body.dataset.state = 'failed';
  setStatus('');
  showError(`The model could not start: ${message}`);
}

function restartAfterCrash(message) {
  const waiting = [...pending.values()];
  pending.clear();
  modelReady = false;
  document.body.dataset.state = 'loading';
  startWorker(requestedBackend, fallbackNote);
  for (const done of waiting) done({ type: 'error', message });
}

let requestedBackend = null;
let fallbackNote = null;
function startWorker(backend, note = null) {
  if (worker) worker.terminate();
  for (const done of pending.values()) done({ type: 'error', message: 'the model restarted; drop the file again' });
  pending.clear();
  requestedBackend = backend;
  fallbackNote = note;
  worker = new Worker(new URL('worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = onMessage;
  worker.onerror = (e) => {
    e.preventDefault();
    if (!modelReady) startFailed(e.message || 'the worker crashed');
    else restartAfterCrash(`the model worker failed (${e.message || 'unknown error'}) and was restarted`);
  };
  worker.postMessage({ type: 'init', backend, simd: params.get('simd') });
}
startWorker(params.get('backend') || 'auto');

// Offline use: a service worker caches the page, the wasm and the model (see sw.js).
if ('serviceWorker' in navigator && params.get('offline') !== 'off') {
  navigator.serviceWorker.register('sw.js')
    .then(() => navigator.serviceWorker.ready)
    .then(() => { $('offline').textContent = 'Saved for offline use: this page works without a network from now on.'; document.body.dataset.offline = 'ready'; })
    .catch((e) => { $('offline').textContent = `Offline use is not available here (${e.message}).`; });
}

function showCard(info, markdown) {
  const v = (info.card && info.card.validation) || {};
  const auc = typeof v.auc === 'number' ? v.auc.toFixed(3) : 'n/a';
  const ci = Array.isArray(v.auc_ci95) ? ` (95% CI ${v.auc_ci95[0].toFixed(3)}–${v.auc_ci95[1].toFixed(3)})` : '';
  const cv = info.card && info.card.cross_validation;
  const cvText = cv && typeof cv.auc === 'number'
    ? `Cross-validated AUC ${cv.auc.toFixed(3)}${Array.isArray(cv.auc_ci95) ? ` (95% CI ${cv.auc_ci95[0].toFixed(3)}–${cv.auc_ci95[1].toFixed(3)})` : ''} over ${cv.images} NIH images (${cv.folds} folds). `
    : '';
  $('card-summary').textContent = `${info.name}. ${cvText}Validation AUC ${auc}${ci} on ${v.images ?? '?'} NIH images; ` +
    `threshold ${info.card && info.card.calibration ? `${info.card.calibration.threshold.toFixed(3)} (calibrated)` : info.threshold}. Input ${info.input_size}×${info.input_size}. Not for clinical use.`;
  $('card-text').textContent = markdown;
}

function classify(bytes) {
  const id = nextId++;
  return new Promise((resolve) => {
    pending.set(id, resolve);
    worker.postMessage({ type: 'classify', id, bytes }, [bytes]);
  });
}

// The shown probability at the prevalence entered, computed in Rust (Bayes' rule on the odds).
async function updatePrevalence() {
  $('prevalence-row').hidden = !calibration;
  $('calibration-note').textContent = calibration
    ? `Calibrated: of X-rays like the training set's, where ${(100 * calibration.prevalence).toFixed(0)} % had effusion, about this fraction of those given this probability have effusion. Where effusion is rarer, the same image means less:`
    : 'This score is not calibrated: it is not the fraction of such X-rays that have effusion.';
  if (!calibration || shownProbability === null) return;
  const id = nextId++;
  const msg = await new Promise((resolve) => {
    pending.set(id, resolve);
    worker.postMessage({ type: 'prevalence', id, probability: shownProbability, prevalence: Number($('prevalence').value) / 100 });
  });
  const ok = msg.type === 'prevalence';
  $('post-test').textContent = ok ? `${(100 * msg.probability).toFixed(1)} %` : msg.message;
  $('post-test').dataset.value = ok ? String(msg.probability) : '';
}

function draw(canvas, width, height, rgba) {
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, rgba.byteLength), width, height), 0, 0);
}

function updateOverlay() {
  $('heat').style.opacity = $('overlay').checked ? $('opacity').value : 0;
}

async function handle(file, name) {
  if (!file) return;
  $('error').hidden = true;
  $('error').textContent = '';
  document.body.dataset.state = 'busy';
  setStatus(`Classifying ${name}…`);
  try {
    const msg = await classify(await file.arrayBuffer());
    if (msg.type === 'error') {
      showError(`${name}: ${msg.message}`, msg.code);
      setStatus('Ready for the next image.');
      return;
    }
    const r = msg.result;
    draw($('xray'), r.preview_width, r.preview_height, r.preview);
    draw($('heat'), r.cam_size, r.cam_size, r.heatmap);
    updateOverlay();
    const effusion = r.label === 'effusion';
    $('decision').textContent = effusion ? 'Effusion suspected' : 'No effusion detected';
    $('decision').className = effusion ? 'effusion' : 'nofinding';
    $('probability').textContent = `${(100 * r.probability).toFixed(1)} %`;
    $('threshold').textContent = `${(100 * r.threshold).toFixed(0)} %`;
    $('meter-fill').style.width = `${100 * r.probability}%`;
    $('meter-threshold').style.left = `${100 * r.threshold}%`;
    shownProbability = r.probability;
    await updatePrevalence();
    $('file-name').textContent = `${name} — ${r.original_width}×${r.original_height} px`;
    const t = r.timings;
    $('timings').textContent = `decode ${t.decode_ms.toFixed(0)} ms, preprocess ${t.preprocess_ms.toFixed(0)} ms, inference ${t.inference_ms.toFixed(0)} ms, saliency ${t.saliency_ms.toFixed(0)} ms (${r.backend})`;
    $('ood-warning').hidden = r.ood !== true;
    const result = $('result');
    result.dataset.ood = String(r.ood);
    result.dataset.probability = String(r.probability);
    result.dataset.label = r.label;
    result.dataset.backend = r.backend;
    result.hidden = false;
    setStatus('Done. Drop another image to classify it.');
  } catch (e) {
    showError(`${name}: ${e.message || e}`);
  } finally {
    document.body.dataset.state = modelReady ? 'ready' : 'loading';
    document.body.dataset.handled = String(++handled);
  }
}

function csv(rows) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, (msg) => (msg.type === 'csv' ? resolve(msg.csv) : reject(new Error(msg.message))));
    worker.postMessage({ type: 'csv', id, rows });
  });
}
const batch = createBatch({ classify, csv, showSingle: (file, name) => handle(file, name) });

// One request to the worker; resolves to its reply (or to an error reply if the worker restarts).
function ask(message) {
  const id = nextId++;
  return new Promise((resolve) => {
    pending.set(id, resolve);
    worker.postMessage({ ...message, id });
  });
}
const validation = createValidation({ ask, model: () => modelInfo });

// Memory figures for tests and the curious: the wasm instance's size, and the page's JS heap.
window.cxrMemory = () => new Promise((resolve) => {
  const id = nextId++;
  pending.set(id, (msg) => resolve({ wasmBytes: msg.wasmBytes, jsHeapBytes: performance.memory ? performance.memory.usedJSHeapSize : null }));
  worker.postMessage({ type: 'stats', id });
});

// One file: the single view; a labelled set (class folders or a labels CSV): validation mode;
// other sets of files: the batch table.
async function handleMany(items) {
  if (items.length === 1) { handle(items[0].file, items[0].name); return; }
  if (items.length === 0 || validation.isRunning()) return;
  const labels = await ask({ type: 'labels', files: items });
  if (labels.error) showError(`${labels.error.message} The files are shown as a batch instead.`, labels.error.code);
  if (labels.set) {
    $('batch').hidden = true;
    validation.run(items, labels.set);
  } else {
    $('validation').hidden = true;
    batch.run(items);
  }
}

for (const id of ['file', 'folder']) {
  $(id).addEventListener('change', (e) => {
    handleMany([...e.target.files].map((file) => ({ file, name: file.webkitRelativePath || file.name })));
    e.target.value = '';
  });
}
$('sample').addEventListener('click', async () => {
  try {
    const response = await fetch(sampleName);
    handle(await response.blob(), `${sampleName} (NIH ChestX-ray14 sample)`);
  } catch (e) { showError(`The sample could not be loaded: ${e.message}`); }
});
$('overlay').addEventListener('change', updateOverlay);
$('prevalence').addEventListener('input', () => { updatePrevalence().catch((e) => showError(`The prevalence could not be applied: ${e.message || e}`)); });
$('opacity').addEventListener('input', updateOverlay);
window.addEventListener('dragover', (e) => { e.preventDefault(); document.body.classList.add('dragging'); });
window.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
window.addEventListener('drop', (e) => {
  e.preventDefault();
  document.body.classList.remove('dragging');
  if (!e.dataTransfer || e.dataTransfer.items.length === 0) { showError('Nothing to classify was dropped: drop an image file.'); return; }
  droppedFiles(e.dataTransfer).then((items) => {
    if (items.length === 0) showError('Nothing to classify was dropped: drop an image file or a folder of them.');
    else handleMany(items);
  }, (err) => showError(`The dropped files could not be read: ${err.message || err}`));
});
window.addEventListener('paste', (e) => {
  const f = [...(e.clipboardData ? e.clipboardData.files : [])][0];
  if (f) handle(f, f.name || 'pasted image'); else showError('The clipboard holds no image.');
});

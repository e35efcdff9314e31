// Runs the wasm model off the main thread. Thin: backend choice, self-test, message passing.
import wasmInit, * as cxr from './pkg/cxr.js';
import './wasm-flavour.js';

const TOLERANCE = 0.05; // max |logit difference| from the logits recorded at export

async function chooseBackend(requested) {
  if (requested === 'cpu') return { backend: 'cpu', note: 'CPU (requested)' };
  const gpu = self.navigator && self.navigator.gpu;
  if (!gpu) return { backend: 'cpu', note: requested === 'webgpu' ? 'WebGPU requested but not available; using CPU' : 'no WebGPU; using CPU' };
  let adapter = null;
  try { adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' }); } catch (_) { /* no adapter */ }
  if (!adapter) return { backend: 'cpu', note: 'no WebGPU adapter; using CPU' };
  const fallback = adapter.info ? adapter.info.isFallbackAdapter : adapter.isFallbackAdapter;
  if (fallback && requested !== 'webgpu') return { backend: 'cpu', note: 'only a software WebGPU adapter (slower than CPU); using CPU' };
  return { backend: 'webgpu', note: 'WebGPU' };
}

async function selfTest(info) {
  if (!info.reference) return { ok: true, skipped: true };
  const response = await fetch(new URL(info.reference.sample, self.location.href));
  const bytes = new Uint8Array(await response.arrayBuffer());
  const result = await cxr.classify(bytes);
  const diff = Math.max(...result.logits.map((v, i) => Math.abs(v - info.reference.logits[i])));
  return { ok: diff <= TOLERANCE, diff, logits: result.logits, expected: info.reference.logits };
}

let wasmExports = null;

async function start(requested, simd) {
  const flavour = self.cxrWasmFlavour(simd);
  wasmExports = await wasmInit({ module_or_path: new URL(`./pkg/${flavour.file}`, import.meta.url) });
  let { backend, note } = await chooseBackend(requested);
  let info;
  try {
    info = await cxr.init(backend);
  } catch (e) {
    if (backend !== 'webgpu') throw e;
    note = `WebGPU failed (${e.message}); using CPU`;
    backend = 'cpu';
    info = await cxr.init('cpu');
  }
  let test = await selfTest(info);
  if (!test.ok && backend === 'webgpu') {
    note = `WebGPU gave wrong results in the self-test (logit difference ${test.diff.toFixed(3)}); using CPU`;
    backend = 'cpu';
    info = await cxr.init('cpu');
    test = await selfTest(info);
  }
  return { info, backend, note, wasm: flavour, selfTest: test, card: cxr.model_card() };
}

// Validation mode. Which dropped files are labelled is decided in Rust (cxr::labels) from their
// names and the text of the CSV files among them; the session (cxr::validation) keeps only scores
// and labels, one file at a time.
const MAX_CSV_BYTES = 64 * 1024 * 1024;
let validation = null;

async function labelSet(files) {
  const names = files.map((f) => f.name);
  const csv = [...cxr.csv_indices(names)].filter((i) => files[i].file.size <= MAX_CSV_BYTES);
  const texts = await Promise.all(csv.map((i) => files[i].file.text()));
  try {
    return { set: cxr.label_set(names, csv.map((i) => names[i]), texts) };
  } catch (e) {
    return { set: null, error: { message: e.message, code: e.code } };
  }
}

async function validate(msg) {
  const t = msg.threshold ?? undefined;
  if (msg.type === 'validate-start') {
    if (validation) validation.free();
    validation = new cxr.Validation();
  } else if (msg.type === 'validate-file') {
    try {
      const r = await cxr.score(new Uint8Array(await msg.file.arrayBuffer()));
      validation.add_scored(msg.label, r.probability, r.ood ?? undefined);
    } catch (e) {
      if (e instanceof WebAssembly.RuntimeError) throw e;
      validation.add_unreadable(msg.name, (e && e.code) || 'unreadable', (e && e.message) || String(e));
    }
  } else if (msg.type === 'validate-target') {
    return { threshold: validation.threshold_for_sensitivity(msg.target) };
  } else if (msg.type === 'validate-report') {
    return { json: validation.report_json(t) };
  }
  return { summary: validation.summary(t, Boolean(msg.withCi)), svg: validation.roc_svg(t) };
}

let ready = null;
self.onmessage = async (event) => {
  const msg = event.data;
  try {
    if (msg.type === 'init') {
      ready = start(msg.backend, msg.simd);
      self.postMessage({ type: 'ready', ...(await ready) });
    } else if (msg.type === 'classify') {
      await ready;
      const result = await cxr.classify(new Uint8Array(msg.bytes));
      self.postMessage({ type: 'result', id: msg.id, result }, [result.cam.buffer, result.heatmap.buffer, result.preview.buffer]);
    } else if (msg.type === 'stats') {
      // Memory of the model's wasm instance (for the bounded-memory check of batch mode).
      self.postMessage({ type: 'stats', id: msg.id, wasmBytes: wasmExports ? wasmExports.memory.buffer.byteLength : 0 });
    } else if (msg.type === 'labels') {
      await ready;
      self.postMessage({ type: 'labels', id: msg.id, ...(await labelSet(msg.files)) });
    } else if (msg.type.startsWith('validate')) {
      await ready;
      self.postMessage({ type: 'validate', id: msg.id, ...(await validate(msg)) });
    } else if (msg.type === 'prevalence') {
      await ready;
      self.postMessage({ type: 'prevalence', id: msg.id, probability: cxr.probability_at_prevalence(msg.probability, msg.prevalence) });
    } else if (msg.type === 'csv') {
      await ready;
      self.postMessage({ type: 'csv', id: msg.id, csv: cxr.batch_csv(msg.rows) });
    }
  } catch (e) {
    const message = (e && e.message) ? e.message : String(e);
    // A Rust panic aborts the wasm instance (RuntimeError): it cannot be used again.
    const crashed = e instanceof WebAssembly.RuntimeError;
    self.postMessage({ type: msg.type === 'init' ? 'fatal' : (crashed ? 'crashed' : 'error'), id: msg.id, message, code: (e && e.code) || (crashed ? 'crashed' : 'error') });
  }
};

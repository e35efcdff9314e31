// Runs the wasm model off the main thread. Thin: backend choice, self-test, message passing.
import wasmInit, * as cxr from './pkg/cxr.js';

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

async function start(requested) {
  wasmExports = await wasmInit();
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
  return { info, backend, note, selfTest: test, card: cxr.model_card() };
}

let ready = null;
self.onmessage = async (event) => {
  const msg = event.data;
  try {
    if (msg.type === 'init') {
      ready = start(msg.backend);
      self.postMessage({ type: 'ready', ...(await ready) });
    } else if (msg.type === 'classify') {
      await ready;
      const result = await cxr.classify(new Uint8Array(msg.bytes));
      self.postMessage({ type: 'result', id: msg.id, result }, [result.cam.buffer, result.heatmap.buffer, result.preview.buffer]);
    } else if (msg.type === 'stats') {
      // Memory of the model's wasm instance (for the bounded-memory check of batch mode).
      self.postMessage({ type: 'stats', id: msg.id, wasmBytes: wasmExports ? wasmExports.memory.buffer.byteLength : 0 });
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

// Browser half of ./build.sh bench: our wasm against onnxruntime-web (wasm execution provider,
// one thread, SIMD) on the same network and weights, in one headless Chromium. Prints one JSON
// object. Usage: node bench/browser.mjs OUT_DIR (holding model.onnx and input.bin), after
// ./build.sh (dist/) and npm install in bench/.
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serveStatic, CHROMIUM_FLAGS } from '../tests/browser/support.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const out = path.resolve(process.argv[2] || path.join(here, 'out'));
const RUNS = Number(process.env.RUNS || 30);
const COLD = Number(process.env.COLD_RUNS || 3);
const WEBGPU_TIMEOUT_MS = Number(process.env.WEBGPU_TIMEOUT_MS || 300_000);

const ortDist = path.join(here, 'node_modules/onnxruntime-web/dist');
const ORT_FILES = ['ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm'];
const site = path.join(out, 'site');
fs.rmSync(site, { recursive: true, force: true });
fs.mkdirSync(path.join(site, 'ort'), { recursive: true });
fs.cpSync(path.join(root, 'dist/pkg'), path.join(site, 'pkg'), { recursive: true });
for (const f of ORT_FILES) fs.copyFileSync(path.join(ortDist, f), path.join(site, 'ort', f));
fs.copyFileSync(path.join(out, 'model.onnx'), path.join(site, 'model.onnx'));
fs.copyFileSync(path.join(out, 'interop/input.bin'), path.join(site, 'input.bin'));
fs.copyFileSync(path.join(here, 'compare.html'), path.join(site, 'index.html'));
fs.copyFileSync(path.join(root, 'www/wasm-flavour.js'), path.join(site, 'wasm-flavour.js'));
// BASELINE=DIR: an earlier build's dist/pkg in DIR/pkg, measured beside ours for before/after.
const baseline = process.env.BASELINE ? path.resolve(process.env.BASELINE, 'pkg') : null;
if (baseline) fs.cpSync(baseline, path.join(site, 'base'), { recursive: true });

const size = (files) => {
  const bytes = files.map((f) => fs.readFileSync(f));
  return { raw: bytes.reduce((n, b) => n + b.length, 0), brotli: bytes.reduce((n, b) => n + zlib.brotliCompressSync(b).length, 0) };
};
const bundles = {
  // What a browser downloads: the glue and one of the two wasm builds (relaxed SIMD where it can).
  ours: size([path.join(site, 'pkg/cxr.js'), path.join(site, 'pkg/cxr_relaxed_bg.wasm')]),
  ours_simd128: size([path.join(site, 'pkg/cxr.js'), path.join(site, 'pkg/cxr_bg.wasm')]),
  ort_runtime: size(ORT_FILES.map((f) => path.join(site, 'ort', f))),
  ort_model: size([path.join(site, 'model.onnx')]),
};

const { server, origin } = await serveStatic(site);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [...CHROMIUM_FLAGS, '--enable-unsafe-webgpu'] });

async function fresh() {
  const context = await browser.newContext(); // empty HTTP cache: a first visit
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => window.benchReady === true);
  return { context, page };
}

const cold = { ours_cpu: [], ort_wasm: [] };
for (let i = 0; i < COLD; i++) {
  let { context, page } = await fresh();
  cold.ours_cpu.push(await page.evaluate(() => window.coldOurs('cpu')));
  await context.close();
  ({ context, page } = await fresh());
  cold.ort_wasm.push(await page.evaluate(() => window.coldOrt('wasm')));
  await context.close();
}

// Warm latency: both runtimes on one page, alternating.
const { context, page } = await fresh();
await page.evaluate(() => window.coldOurs('cpu'));
await page.evaluate(() => window.coldOrt('wasm'));
if (baseline && !(await page.evaluate(() => window.initBase()))) throw new Error(`baseline ${baseline} did not load`);
await page.evaluate(() => window.initPlain());
const warm = await page.evaluate((n) => window.alternate(n), RUNS);
const userAgent = await page.evaluate(() => navigator.userAgent);
await context.close();

// Our WebGPU path, where Chromium offers an adapter (headless Debian Chromium: SwiftShader, a
// software renderer, not a GPU).
let webgpu;
{
  const { context, page } = await fresh();
  const adapter = await page.evaluate(async () => {
    if (!navigator.gpu) return null;
    const a = await navigator.gpu.requestAdapter();
    return a ? { fallback: a.info ? a.info.isFallbackAdapter : a.isFallbackAdapter, vendor: a.info?.vendor, architecture: a.info?.architecture, description: a.info?.description } : null;
  });
  if (!adapter) {
    webgpu = { measured: false, reason: 'no WebGPU adapter' };
  } else {
    try {
      const result = await Promise.race([
        page.evaluate(() => window.coldOurs('webgpu')),
        new Promise((_, reject) => setTimeout(() => reject(new Error(`no result within ${WEBGPU_TIMEOUT_MS / 1000} s`)), WEBGPU_TIMEOUT_MS)),
      ]);
      const second = await page.evaluate(() => window.oursOnce());
      webgpu = { measured: true, adapter, cold: result, second_ms: second };
    } catch (e) {
      webgpu = { measured: false, adapter, reason: e.message };
    }
  }
  await context.close();
}

await browser.close();
server.close();
if (baseline) bundles.baseline = size([path.join(site, 'base/cxr.js'), path.join(site, 'base/cxr_bg.wasm')]);
console.log(JSON.stringify({ userAgent, runs: RUNS, cold_runs: COLD, bundles, cold, warm, webgpu }));

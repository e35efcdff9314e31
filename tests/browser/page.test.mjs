// End-to-end tests of the page in headless Debian Chromium (driven by playwright-core).
// dist/ is served under a sub-path by a tiny static server, as any static host would.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serveStatic, CHROMIUM_FLAGS } from './support.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dist = path.join(root, 'dist');
const fixtures = path.join(root, 'tests/fixtures');
const PREFIX = '/some/sub/path/';

let server, browser, gpuBrowser, origin;
const FLAGS = CHROMIUM_FLAGS;

before(async () => {
  ({ server, origin } = await serveStatic(dist, PREFIX));
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  browser = await chromium.launch({ executablePath, args: FLAGS });
  // WebGPU in headless Chromium here is SwiftShader: a software adapter, correct but slow.
  gpuBrowser = await chromium.launch({ executablePath, args: [...FLAGS, '--enable-unsafe-webgpu'] });
});

after(async () => {
  await browser?.close();
  await gpuBrowser?.close();
  server?.close();
});

async function openPage(query = '', extraArgs = null) {
  const page = await (extraArgs ? extraArgs : browser).newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${origin}${PREFIX}${query}`);
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 300_000 });
  return { page, requests, errors };
}

// Classify through `input#file`; resolves once the page has handled the file.
async function classifyFile(page, file) {
  const before = await page.evaluate(() => Number(document.body.dataset.handled || 0));
  await page.setInputFiles('input#file', file);
  await page.waitForFunction((n) => Number(document.body.dataset.handled || 0) > n && document.body.dataset.state === 'ready', before, { timeout: 120_000 });
}

async function shownResult(page) {
  return page.evaluate(() => {
    const r = document.querySelector('[data-testid=result]');
    return { probability: Number(r.dataset.probability), label: r.dataset.label, backend: r.dataset.backend,
      error: document.querySelector('[data-testid=error]').hidden ? '' : document.querySelector('[data-testid=error]').textContent };
  });
}

function nativePredictions(files) {
  const bin = process.env.TRAINER_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'release/trainer');
  try {
    return JSON.parse(execFileSync(bin, ['predict', '--json', ...files], { encoding: 'utf8' }));
  } catch (e) {
    if (e.stdout) return JSON.parse(e.stdout);
    throw e;
  }
}

const REAL = ['effusion10.png', 'effusion101.png', 'normal0.png', 'normal1.png'].map((f) => path.join(fixtures, f));

test('the page loads to ready on the CPU path, with the notice, the model card and a passed self-test', async () => {
  const { page, errors } = await openPage();
  assert.match(await page.textContent('[data-testid=notice]'), /Not for clinical use/);
  assert.match(await page.textContent('[data-testid=backend]'), /CPU.*\(wasm with relaxed SIMD\)/);
  // Chromium has relaxed SIMD: the worker loads that build of the wasm (www/wasm-flavour.js).
  assert.equal(await page.evaluate(() => document.body.dataset.wasm), 'relaxed-simd');
  assert.match(await page.textContent('[data-testid=model-card]'), /Cross-validated AUC 0\.\d+ \(95% CI 0\.\d+–0\.\d+\) over \d+ NIH images \(\d+ folds\)\. Validation AUC 0\.\d+/);
  assert.match(await page.textContent('[data-testid=status]'), /Model ready\./, 'self-test passed');
  assert.deepEqual(errors, []);
  await page.close();
});

test('parity: the page gives the probability of `trainer predict` on real X-rays (CPU path, both wasm builds)', async () => {
  const native = nativePredictions(REAL);
  // The relaxed-SIMD build (fused multiply-add) and, with ?simd=plain, the simd128 one.
  for (const [query, wasm] of [['?simd=plain', 'simd128'], ['', 'relaxed-simd']]) {
    const { page } = await openPage(query);
    assert.equal(await page.evaluate(() => document.body.dataset.wasm), wasm);
    for (const [i, file] of REAL.entries()) {
      await classifyFile(page, file);
      const shown = await shownResult(page);
      assert.equal(shown.backend, 'cpu');
      assert.ok(Math.abs(shown.probability - native[i].probability) < 1e-3, `${wasm} ${file}: page ${shown.probability}, native ${native[i].probability}`);
      assert.equal(shown.label, native[i].label, `${wasm} ${file}`);
      assert.ok(native[i].calibrated && Math.abs(native[i].probability - native[i].uncalibrated_probability) > 1e-3, 'calibrated natively');
    }
    if (wasm === 'simd128') await page.close();
    else await checkPrevalence(page);
  }
});

async function checkPrevalence(page) {
  // The prevalence field: the shown (calibrated) probability at 50 % is itself; at 10 %, Bayes' rule
  // on the odds; out of range, a message. The arithmetic is Rust's (web.rs); this checks the wiring.
  assert.match(await page.textContent('[data-testid=calibration-note]'), /where 50 % had effusion/);
  const p = (await shownResult(page)).probability;
  const odds = (p / (1 - p)) * (0.1 / 0.9);
  for (const [percent, want] of [['50', p], ['10', odds / (1 + odds)], ['0', null]]) {
    const before = await page.getAttribute('[data-testid=post-test]', 'data-value');
    await page.fill('[data-testid=prevalence]', percent);
    await page.waitForFunction((b) => document.querySelector('[data-testid=post-test]').dataset.value !== b, before);
    const value = await page.getAttribute('[data-testid=post-test]', 'data-value');
    if (want === null) assert.match(await page.textContent('[data-testid=post-test]'), /between 0 and 100 %/);
    else assert.ok(Math.abs(Number(value) - want) < 1e-9, `${percent} %: ${value} vs ${want}`);
  }
  await page.close();
}

test('parity on the WebGPU path (?backend=webgpu, software adapter), and auto treats it as no GPU', async () => {
  const native = nativePredictions(REAL.slice(0, 3));
  const { page, errors } = await openPage('?backend=webgpu', gpuBrowser);
  assert.match(await page.textContent('[data-testid=backend]'), /WebGPU/);
  assert.match(await page.textContent('[data-testid=status]'), /Model ready\./, 'self-test passed on WebGPU');
  for (const [i, file] of REAL.slice(0, 3).entries()) {
    await classifyFile(page, file);
    const shown = await shownResult(page);
    assert.equal(shown.backend, 'webgpu');
    assert.ok(Math.abs(shown.probability - native[i].probability) < 1e-3, `${file}: WebGPU ${shown.probability}, native ${native[i].probability}`);
  }
  assert.deepEqual(errors, []);
  await page.close();
  const auto = await openPage('', gpuBrowser);
  assert.match(await auto.page.textContent('[data-testid=backend]'), /software WebGPU adapter/);
  await auto.page.close();
});

test('the bad- and unusual-input corpus: clear errors, valid files classified as natively, the page never dies', async () => {
  // tests/inputs/manifest.json: the same corpus as `trainer predict` in trainer/tests/bad_input.rs.
  const inputs = path.join(root, 'tests/inputs');
  const manifest = JSON.parse(fs.readFileSync(path.join(inputs, 'manifest.json'), 'utf8'));
  const valid = manifest.filter((e) => e.expect === 'classify');
  const native = nativePredictions(valid.map((e) => path.join(inputs, e.file)));
  const { page, errors } = await openPage();
  for (const entry of manifest) {
    const started = Date.now();
    await classifyFile(page, path.join(inputs, entry.file));
    const shown = await shownResult(page);
    const seconds = (Date.now() - started) / 1000;
    if (entry.expect === 'classify') {
      assert.equal(shown.error, '', `${entry.file} (${entry.kind}) was refused: ${shown.error}`);
      const want = native[valid.indexOf(entry)].probability;
      assert.ok(Math.abs(shown.probability - want) < 1e-3, `${entry.file}: page ${shown.probability}, native ${want}`);
    } else {
      assert.ok(shown.error.length > 40, `${entry.file} (${entry.kind}): no clear error shown: '${shown.error}'`);
      const code = await page.evaluate(() => document.querySelector('[data-testid=error]').dataset.code);
      if (entry.code) assert.equal(code, entry.code, `${entry.file}: ${shown.error}`);
      await classifyFile(page, REAL[2]);
      assert.equal((await shownResult(page)).error, '', `a good file after ${entry.file}`);
    }
    assert.ok(seconds < 20, `${entry.file} took ${seconds} s`);
  }
  assert.deepEqual(errors, []);
  await page.close();
});

test('drop, paste and the sample all classify and draw the saliency; the overlay toggles', async () => {
  const { page } = await openPage();
  const bytes = [...fs.readFileSync(REAL[3])];
  for (const kind of ['drop', 'paste']) {
    const before = await page.evaluate(() => Number(document.body.dataset.handled || 0));
    await page.evaluate(({ bytes, kind }) => {
      const file = new File([new Uint8Array(bytes)], `${kind}.png`, { type: 'image/png' });
      const dt = new DataTransfer();
      dt.items.add(file);
      const event = kind === 'drop'
        ? new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true })
        : new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true });
      (kind === 'drop' ? document.getElementById('drop') : window).dispatchEvent(event);
    }, { bytes, kind });
    await page.waitForFunction((n) => Number(document.body.dataset.handled || 0) > n, before, { timeout: 120_000 });
    assert.match(await page.textContent('[data-testid=file-name]'), new RegExp(`^${kind}\\.png`));
    assert.equal((await shownResult(page)).error, '');
  }
  await page.click('[data-testid=sample]');
  await page.waitForFunction(() => document.getElementById('file-name').textContent.includes('NIH'), null, { timeout: 120_000 });
  const drawn = await page.evaluate(() => {
    const c = document.querySelector('canvas[data-testid=saliency]');
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let opaque = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) opaque++;
    return { w: c.width, h: c.height, opaque };
  });
  assert.equal(drawn.w, 256);
  assert.ok(drawn.opaque > 100, `saliency has ${drawn.opaque} visible pixels`);
  assert.equal(await page.evaluate(() => getComputedStyle(document.getElementById('heat')).opacity), '0.6');
  await page.click('[data-testid=overlay-toggle]');
  assert.equal(await page.evaluate(() => getComputedStyle(document.getElementById('heat')).opacity), '0');
  await page.close();
});

test('no request leaves the site origin during a whole visit (load, classify, an error, the sample)', async () => {
  const { page, requests } = await openPage();
  await classifyFile(page, REAL[0]);
  await classifyFile(page, path.join(root, 'tests/inputs/truncated.png'));
  assert.notEqual((await shownResult(page)).error, '');
  await page.click('[data-testid=sample]');
  await page.waitForFunction(() => document.getElementById('file-name').textContent.includes('NIH'), null, { timeout: 120_000 });
  assert.ok(requests.length > 3);
  for (const url of requests) {
    assert.ok(url.startsWith(origin) || url.startsWith('blob:') || url.startsWith('data:'), `request to another origin: ${url}`);
  }
  await page.close();
});

test('offline: after one visit the page reloads and classifies with the network off; it has a web app manifest', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(`${origin}${PREFIX}`);
  await page.waitForFunction(() => document.body.dataset.state === 'ready' && document.body.dataset.offline === 'ready', null, { timeout: 300_000 });
  const manifest = await page.evaluate(async () => {
    const link = document.querySelector('link[rel=manifest]');
    return (await fetch(link.href)).json();
  });
  assert.equal(manifest.display, 'standalone');
  assert.ok(manifest.icons.some((i) => i.sizes === '512x512'));
  // Only the wasm build this browser runs was downloaded and cached, not both.
  const cached = await page.evaluate(async () => {
    const names = [];
    for (const key of await caches.keys()) for (const r of await (await caches.open(key)).keys()) names.push(new URL(r.url).pathname);
    return names;
  });
  assert.ok(cached.some((n) => n.endsWith('/pkg/cxr_relaxed_bg.wasm')), cached.join(' '));
  assert.ok(!cached.some((n) => n.endsWith('/pkg/cxr_bg.wasm')), cached.join(' '));
  assert.ok(!requests.some((u) => u.endsWith('/pkg/cxr_bg.wasm')), 'the simd128 build was not fetched');
  await context.setOffline(true);
  await page.reload();
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 300_000 });
  assert.match(await page.textContent('[data-testid=status]'), /Model ready\./);
  await classifyFile(page, REAL[1]);
  const shown = await shownResult(page);
  assert.equal(shown.error, '');
  assert.ok(shown.probability >= 0 && shown.probability <= 1);
  for (const url of requests) assert.ok(url.startsWith(origin) || url.startsWith('blob:') || url.startsWith('data:'), url);
  await context.close();
});

test('batch: the whole corpus (61 files) at once gives a sortable table and a CSV with one right row per file', async () => {
  const inputs = path.join(root, 'tests/inputs');
  const manifest = JSON.parse(fs.readFileSync(path.join(inputs, 'manifest.json'), 'utf8'));
  const files = manifest.map((e) => path.join(inputs, e.file));
  const { page, errors } = await openPage();
  await page.setInputFiles('input#file', files);
  await page.waitForFunction(() => document.body.dataset.batch === 'done', null, { timeout: 300_000 });
  assert.equal(await page.locator('#batch-table tbody tr').count(), manifest.length);
  assert.match(await page.textContent('[data-testid=batch-progress]'), new RegExp(`^${manifest.length} of ${manifest.length} done`));
  // Sorting by probability (descending on the second click) puts the highest first.
  await page.click('#batch-table th[data-sort=probability]');
  await page.click('#batch-table th[data-sort=probability]');
  const shownOrder = await page.$$eval('#batch-table tbody tr', (trs) => trs.map((tr) => Number(tr.dataset.probability || -1)));
  assert.deepEqual(shownOrder, [...shownOrder].sort((a, b) => b - a));
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('[data-testid=batch-csv]')]);
  const csv = fs.readFileSync(await download.path(), 'utf8');
  const lines = csv.split('\r\n').filter((l) => l);
  assert.equal(lines[0], 'file,probability_effusion,label,threshold,not_a_chest_xray,error_code,error');
  assert.equal(lines.length, manifest.length + 1);
  const native = nativePredictions(files);
  for (const [i, entry] of manifest.entries()) {
    const fields = lines[i + 1].split(',');
    assert.equal(fields[0], entry.file);
    if (entry.expect === 'classify') {
      assert.ok(Math.abs(Number(fields[1]) - native[i].probability) < 1e-3, `${lines[i + 1]} vs ${native[i].probability}`);
    } else {
      assert.equal(fields[1], '', lines[i + 1]);
      if (entry.code) assert.equal(fields[5], entry.code, lines[i + 1]);
    }
  }
  // A click on a row shows that file in the single view, with its saliency.
  await page.click(`#batch-table tbody tr[data-file="grey8.png"]`);
  await page.waitForFunction(() => document.getElementById('file-name').textContent.startsWith('grey8.png'), null, { timeout: 60_000 });
  assert.deepEqual(errors, []);
  await page.close();
});

test('not-a-chest-X-ray: a cat photo gets the warning, a real X-ray does not', async () => {
  const { page, errors } = await openPage();
  await classifyFile(page, path.join(root, 'tests/ood/chelsea.png'));
  assert.equal((await shownResult(page)).error, '');
  assert.equal(await page.isVisible('[data-testid=ood-warning]'), true);
  assert.match(await page.textContent('[data-testid=ood-warning]'), /does not look like a frontal chest X-ray/);
  await classifyFile(page, REAL[0]);
  assert.equal(await page.isVisible('[data-testid=ood-warning]'), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test('DICOM dropped on the page: MONOCHROME1 16-bit and a real CT file are classified as natively', async () => {
  const files = ['xray16-monochrome1.dcm', 'dicom-without-extension', 'pydicom-CT_small.dcm'].map((f) => path.join(root, 'tests/inputs', f));
  const native = nativePredictions(files);
  const { page, errors } = await openPage();
  for (const [i, file] of files.entries()) {
    const before = await page.evaluate(() => Number(document.body.dataset.handled || 0));
    const bytes = [...fs.readFileSync(file)];
    await page.evaluate(({ bytes, name }) => {
      const dt = new DataTransfer();
      dt.items.add(new File([new Uint8Array(bytes)], name, { type: '' }));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, { bytes, name: path.basename(file) });
    await page.waitForFunction((n) => Number(document.body.dataset.handled || 0) > n, before, { timeout: 120_000 });
    const shown = await shownResult(page);
    assert.equal(shown.error, '', file);
    assert.ok(Math.abs(shown.probability - native[i].probability) < 1e-3, `${file}: page ${shown.probability}, native ${native[i].probability}`);
  }
  assert.deepEqual(errors, []);
  await page.close();
});

test('batch memory stays bounded: 500 files, wasm memory and JS heap flat after the first 100', async () => {
  const dir = fs.mkdtempSync('/tmp/cxr-batch500-');
  const sources = ['grey8.png', 'rgb.png', 'grey.jpg', 'xray16.dcm', 'truncated.png'].map((f) => fs.readFileSync(path.join(root, 'tests/inputs', f)));
  const exts = ['png', 'png', 'jpg', 'dcm', 'png'];
  const files = [];
  for (let i = 0; i < 500; i++) {
    const file = path.join(dir, `f${String(i).padStart(3, '0')}.${exts[i % 5]}`);
    fs.writeFileSync(file, sources[i % 5]);
    files.push(file);
  }
  const { page, errors } = await openPage();
  const run = async (list) => {
    await page.setInputFiles('input#file', list);
    await page.waitForFunction((n) => document.body.dataset.batch === 'done' && document.querySelectorAll('#batch-table tbody tr').length === n, list.length, { timeout: 600_000 });
    await page.evaluate(() => { if (window.gc) window.gc(); });
    return page.evaluate(() => window.cxrMemory());
  };
  const after100 = await run(files.slice(0, 100));
  const after500 = await run(files);
  console.log(`# memory after 100 files: wasm ${after100.wasmBytes} B, JS heap ${after100.jsHeapBytes} B; after 500: wasm ${after500.wasmBytes} B, JS heap ${after500.jsHeapBytes} B`);
  assert.ok(after500.wasmBytes <= after100.wasmBytes * 1.1, `wasm memory grew from ${after100.wasmBytes} to ${after500.wasmBytes}`);
  assert.ok(after500.jsHeapBytes - after100.jsHeapBytes < 40e6, `JS heap grew by ${after500.jsHeapBytes - after100.jsHeapBytes} bytes`);
  assert.equal(await page.locator('#batch-table tbody tr.failed').count(), 100);
  assert.deepEqual(errors, []);
  await page.close();
});

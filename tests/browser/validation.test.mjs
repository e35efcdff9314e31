// Validation mode in headless Chromium: a labelled folder dropped on the page gives the figures of
// `trainer evaluate --all --json` on the same folder, computed in the browser.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serveStatic, CHROMIUM_FLAGS } from './support.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const fixtures = path.join(root, 'tests/fixtures');
const PREFIX = '/some/sub/path/';
let server, browser, origin;

before(async () => {
  ({ server, origin } = await serveStatic(path.join(root, 'dist'), PREFIX));
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: CHROMIUM_FLAGS });
});

after(async () => {
  await browser?.close();
  server?.close();
});

async function openPage(context) {
  const page = await (context || browser).newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${origin}${PREFIX}`);
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 300_000 });
  return { page, requests, errors };
}

// The twelve real NIH X-rays of tests/fixtures in class folders, a broken PNG among the negatives
// and a note that is not an image (left out, as the trainer leaves it out).
function labelledFolder() {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'cxr-validation-')), 'site');
  const put = (cls, name, from) => {
    fs.mkdirSync(path.join(dir, cls), { recursive: true });
    fs.copyFileSync(from, path.join(dir, cls, name));
  };
  for (const f of ['effusion10.png', 'effusion101.png']) put('effusion', f, path.join(fixtures, f));
  for (const f of ['normal0.png', 'normal1.png']) put('nofinding', f, path.join(fixtures, f));
  for (const cls of ['effusion', 'nofinding']) {
    for (const f of fs.readdirSync(path.join(fixtures, 'validation', cls))) put(cls, f, path.join(fixtures, 'validation', cls, f));
  }
  put('nofinding', 'broken.png', path.join(root, 'tests/inputs/truncated.png'));
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'not an image');
  return dir;
}

function trainerEvaluate(dir) {
  const bin = process.env.TRAINER_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'release/trainer');
  return JSON.parse(execFileSync(bin, ['evaluate', '--all', '--json', '--backend', 'cpu', '--data', dir], { encoding: 'utf8' }));
}

async function validate(page, dir) {
  const runs = await page.evaluate(() => Number(document.querySelector('[data-testid=validation]').dataset.runs || 0));
  await page.setInputFiles('input#folder', dir);
  await page.waitForFunction((n) => {
    const d = document.querySelector('[data-testid=validation]').dataset;
    return Number(d.runs || 0) > n && d.state === 'done';
  }, runs, { timeout: 600_000 });
  return page.evaluate(() => {
    const d = document.querySelector('[data-testid=validation]').dataset;
    const n = (k) => (d[k] === '' ? null : Number(d[k]));
    return { auc: n('auc'), low: n('aucLow'), high: n('aucHigh'), images: n('images'), positives: n('positives'),
      sensitivity: n('sensitivity'), specificity: n('specificity'), threshold: n('threshold'), unreadable: n('unreadable'),
      local: !document.querySelector('[data-testid=local-choice]').hidden };
  });
}

const close = (a, b, tol, what) => assert.ok(Math.abs(a - b) <= tol, `${what}: page ${a}, trainer ${b}`);

test('validation: a labelled folder gives the AUC, CI, counts and rates of `trainer evaluate --all --json`; the ROC is drawn; a broken file is counted; the operating point survives a reload; nothing leaves the browser', async () => {
  const dir = labelledFolder();
  const native = trainerEvaluate(dir);
  const context = await browser.newContext({ acceptDownloads: true });
  const { page, requests, errors } = await openPage(context);
  const shown = await validate(page, dir);
  console.log(`# trainer evaluate: AUC ${native.auc} CI ${native.auc_ci95} on ${native.images} (${native.positives} effusion), ${native.unreadable} unreadable; page: AUC ${shown.auc} CI ${shown.low}–${shown.high}, ${shown.images} (${shown.positives}), ${shown.unreadable} unreadable`);
  close(shown.auc, native.auc, 1e-4, 'AUC');
  close(shown.low, native.auc_ci95[0], 1e-4, 'CI low');
  close(shown.high, native.auc_ci95[1], 1e-4, 'CI high');
  assert.deepEqual([shown.images, shown.positives, shown.unreadable], [native.images, native.positives, native.unreadable]);
  assert.equal(shown.unreadable, 1, 'the broken PNG is counted');
  close(shown.threshold, native.threshold, 1e-6, 'threshold');
  close(shown.sensitivity, native.sensitivity, 1e-9, 'sensitivity');
  close(shown.specificity, native.specificity, 1e-9, 'specificity');
  assert.equal(shown.local, false);
  assert.match(await page.textContent('[data-testid=validation-unreadable]'), /broken\.png/);
  assert.equal(await page.locator('svg[data-testid=roc] polyline').count(), 2, 'the ROC and the chance line are drawn');
  assert.equal(await page.isVisible('[data-testid=batch]'), false);

  // The site's own operating point: the threshold for a sensitivity of at least 0.5, kept across
  // a reload.
  await page.fill('[data-testid=target-sensitivity]', '0.5');
  await page.click('[data-testid=apply-target]');
  await page.waitForFunction(() => !document.querySelector('[data-testid=local-choice]').hidden, null, { timeout: 60_000 });
  const chosen = await page.evaluate(() => ({ ...document.querySelector('[data-testid=validation]').dataset }));
  assert.ok(Number(chosen.sensitivity) >= 0.5, chosen.sensitivity);
  assert.ok(Math.abs(Number(chosen.threshold) - native.threshold) > 1e-3, `${chosen.threshold}`);
  const [json] = await Promise.all([page.waitForEvent('download'), page.click('[data-testid=export-json]')]);
  const report = JSON.parse(fs.readFileSync(await json.path(), 'utf8'));
  close(report.auc, native.auc, 1e-4, 'exported AUC');
  assert.equal(report.operating_point, 'a local choice');
  assert.equal(report.unreadable_files[0].file, 'site/nofinding/broken.png');
  const [svg] = await Promise.all([page.waitForEvent('download'), page.click('[data-testid=export-svg]')]);
  assert.match(fs.readFileSync(await svg.path(), 'utf8'), /^<svg[^]*operating point[^]*<\/svg>/);

  await page.reload();
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 300_000 });
  const again = await validate(page, dir);
  assert.equal(again.local, true, 'the local choice is shown after a reload');
  close(again.threshold, Number(chosen.threshold), 1e-9, 'threshold after reload');
  assert.equal(again.sensitivity, Number(chosen.sensitivity));
  await page.click('[data-testid=reset-threshold]');
  await page.waitForFunction(() => document.querySelector('[data-testid=local-choice]').hidden, null, { timeout: 60_000 });
  close(Number(await page.getAttribute('[data-testid=validation]', 'data-threshold')), native.threshold, 1e-6, 'back to the model');
  assert.equal(await page.evaluate(() => localStorage.getItem('cxr-operating-point')), null);

  for (const url of requests) assert.ok(url.startsWith(origin) || url.startsWith('blob:') || url.startsWith('data:'), `request to another origin: ${url}`);
  assert.deepEqual(errors, []);
  await context.close();
});

test('validation from a labels CSV (file,label) gives the same figures as the class folders', async () => {
  const classes = labelledFolder();
  const flat = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'cxr-validation-csv-')), 'flat');
  fs.mkdirSync(path.join(flat, 'images'), { recursive: true });
  const rows = ['file,label'];
  for (const cls of ['effusion', 'nofinding']) {
    for (const f of fs.readdirSync(path.join(classes, cls))) {
      fs.copyFileSync(path.join(classes, cls, f), path.join(flat, 'images', f));
      rows.push(`images/${f},${cls}`);
    }
  }
  fs.writeFileSync(path.join(flat, 'labels.csv'), rows.join('\n'));
  const { page, errors } = await openPage();
  const byFolder = await validate(page, classes);
  const byCsv = await validate(page, flat);
  assert.deepEqual(byCsv, byFolder);
  assert.match(await page.textContent('#val-layout'), /labels CSV \(flat\/labels\.csv\)/);
  assert.deepEqual(errors, []);
  await page.close();
});

test('validation memory stays bounded: 500 labelled files, wasm memory and JS heap flat after the first 100', async () => {
  // The twelve real X-rays in their own classes, over and over, and every fifth file broken: no
  // image sits in both classes, so the bootstrap compares the same scores natively and here
  // (the trainer scores in batches, which moves a duplicate's score by float rounding).
  const real = [];
  for (const cls of ['effusion', 'nofinding']) {
    const dir = path.join(fixtures, 'validation', cls);
    for (const f of fs.readdirSync(dir)) real.push({ cls, bytes: fs.readFileSync(path.join(dir, f)) });
  }
  for (const f of ['effusion10.png', 'effusion101.png', 'normal0.png', 'normal1.png']) {
    real.push({ cls: f.startsWith('effusion') ? 'effusion' : 'nofinding', bytes: fs.readFileSync(path.join(fixtures, f)) });
  }
  const broken = fs.readFileSync(path.join(root, 'tests/inputs/truncated.png'));
  const folder = (n) => {
    const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), `cxr-validation${n}-`)), 'set');
    for (let i = 0; i < n; i++) {
      const { cls, bytes } = real[i % real.length];
      fs.mkdirSync(path.join(dir, cls), { recursive: true });
      fs.writeFileSync(path.join(dir, cls, `f${String(i).padStart(3, '0')}.png`), i % 5 === 4 ? broken : bytes);
    }
    return dir;
  };
  const { page, errors } = await openPage();
  const run = async (dir) => {
    const shown = await validate(page, dir);
    await page.evaluate(() => { if (window.gc) window.gc(); });
    return { shown, memory: await page.evaluate(() => window.cxrMemory()) };
  };
  const first = await run(folder(100));
  const dir500 = folder(500);
  const all = await run(dir500);
  console.log(`# validation memory after 100 files: wasm ${first.memory.wasmBytes} B, JS heap ${first.memory.jsHeapBytes} B; after 500: wasm ${all.memory.wasmBytes} B, JS heap ${all.memory.jsHeapBytes} B`);
  assert.deepEqual([all.shown.images, all.shown.unreadable], [400, 100]);
  // 400 scores: a bootstrap CI away from the clamps, the same in wasm as natively.
  const native = trainerEvaluate(dir500);
  console.log(`# 500 files: trainer AUC ${native.auc} CI ${native.auc_ci95}; page AUC ${all.shown.auc} CI ${all.shown.low}–${all.shown.high}`);
  close(all.shown.auc, native.auc, 1e-4, 'AUC');
  close(all.shown.low, native.auc_ci95[0], 1e-4, 'CI low');
  close(all.shown.high, native.auc_ci95[1], 1e-4, 'CI high');
  assert.equal(all.shown.unreadable, native.unreadable);
  assert.ok(all.memory.wasmBytes <= first.memory.wasmBytes * 1.1, `wasm memory grew from ${first.memory.wasmBytes} to ${all.memory.wasmBytes}`);
  assert.ok(all.memory.jsHeapBytes - first.memory.jsHeapBytes < 40e6, `JS heap grew by ${all.memory.jsHeapBytes - first.memory.jsHeapBytes} bytes`);
  assert.deepEqual(errors, []);
  await page.close();
});

// End-to-end tests of the page in headless Debian Chromium (driven by playwright-core).
// dist/ is served under a sub-path by a tiny static server, as any static host would.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dist = path.join(root, 'dist');
const fixtures = path.join(root, 'tests/fixtures');
const PREFIX = '/some/sub/path/';
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.png': 'image/png', '.json': 'application/json' };

let server, browser, origin;

before(async () => {
  server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (!url.pathname.startsWith(PREFIX)) { res.writeHead(404); return res.end(); }
    let file = path.join(dist, decodeURIComponent(url.pathname.slice(PREFIX.length)) || 'index.html');
    if (!file.startsWith(dist) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      if (fs.existsSync(path.join(file, 'index.html'))) file = path.join(file, 'index.html');
      else { res.writeHead(404); return res.end(); }
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${server.address().port}`;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
  });
});

after(async () => {
  await browser?.close();
  server?.close();
});

async function openPage(query = '') {
  const page = await browser.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${origin}${PREFIX}${query}`);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 180_000 });
  return { page, requests, errors };
}

async function classifyFile(page, file) {
  const before = await page.evaluate(() => document.getElementById('timings').textContent + '|' + (document.getElementById('error').hidden ? '' : document.getElementById('error').textContent));
  await page.setInputFiles('[data-testid=file-input]', file);
  await page.waitForFunction((b) => document.body.dataset.busy === 'false' &&
    (document.getElementById('timings').textContent + '|' + (document.getElementById('error').hidden ? '' : document.getElementById('error').textContent)) !== b,
  before, { timeout: 60_000 });
}

function nativeLogits(files) {
  const bin = process.env.TRAINER_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'release/trainer');
  const out = execFileSync(bin, ['predict', '--json', ...files], { encoding: 'utf8' });
  return JSON.parse(out);
}

test('the page loads the model on the CPU path, shows the notice and the model card', async () => {
  const { page, errors } = await openPage();
  assert.match(await page.textContent('[data-testid=notice]'), /Not for clinical use/);
  assert.match(await page.textContent('[data-testid=backend]'), /CPU/);
  assert.match(await page.textContent('[data-testid=model-card]'), /Validation AUC 0\.\d+/);
  assert.match(await page.textContent('[data-testid=status]'), /Model ready\./, 'self-test passed');
  assert.deepEqual(errors, []);
  await page.close();
});

test('the browser gives the same logits as the native code for the same PNG', async () => {
  const files = ['effusion10.png', 'normal0.png'].map((f) => path.join(fixtures, f));
  const native = nativeLogits(files);
  const { page } = await openPage();
  for (const [i, file] of files.entries()) {
    await classifyFile(page, file);
    const shown = await page.textContent('[data-testid=probability]');
    const p = parseFloat(shown) / 100;
    assert.ok(Math.abs(p - native[i].probability) < 0.001, `${file}: browser ${shown}, native ${native[i].probability}`);
    assert.equal(await page.getAttribute('body', 'data-label'), native[i].label);
  }
  await page.close();
});

test('a bad file shows a clear error and the next good file is classified', async () => {
  const { page } = await openPage();
  const bad = path.join(fs.mkdtempSync('/tmp/cxr-'), 'notes.png');
  fs.writeFileSync(bad, 'this is a text file renamed to png\n');
  await classifyFile(page, bad);
  const error = page.locator('[data-testid=error]');
  assert.ok(await error.isVisible());
  assert.match(await error.textContent(), /not an image format|text file/);
  await classifyFile(page, path.join(fixtures, 'effusion101.png'));
  assert.equal(await error.isVisible(), false);
  assert.match(await page.textContent('[data-testid=probability]'), /%/);
  await page.close();
});

test('drop, paste and the sample all classify; the overlay toggles', async () => {
  const { page } = await openPage();
  const bytes = [...fs.readFileSync(path.join(fixtures, 'normal1.png'))];
  for (const kind of ['drop', 'paste']) {
    await page.evaluate(({ bytes, kind }) => {
      const file = new File([new Uint8Array(bytes)], `${kind}.png`, { type: 'image/png' });
      const dt = new DataTransfer();
      dt.items.add(file);
      const event = kind === 'drop'
        ? new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true })
        : new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true });
      window.dispatchEvent(event);
    }, { bytes, kind });
    await page.waitForFunction((k) => document.getElementById('file-name').textContent.startsWith(`${k}.png`), kind, { timeout: 60_000 });
  }
  await page.click('[data-testid=sample]');
  await page.waitForFunction(() => document.getElementById('file-name').textContent.includes('NIH'), null, { timeout: 60_000 });
  assert.equal(await page.evaluate(() => getComputedStyle(document.getElementById('heat')).opacity), '0.6');
  await page.click('[data-testid=overlay-toggle]');
  assert.equal(await page.evaluate(() => getComputedStyle(document.getElementById('heat')).opacity), '0');
  const heat = await page.evaluate(() => { const c = document.getElementById('heat'); return [c.width, c.height]; });
  assert.deepEqual(heat, [256, 256]);
  await page.close();
});

test('no request leaves the site origin', async () => {
  const { page, requests } = await openPage();
  await classifyFile(page, path.join(fixtures, 'effusion10.png'));
  assert.ok(requests.length > 3);
  for (const url of requests) {
    assert.ok(url.startsWith(origin) || url.startsWith('blob:') || url.startsWith('data:'), `request to another origin: ${url}`);
  }
  await page.close();
});

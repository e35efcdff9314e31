// Page figures in headless Chromium (CPU path): load → ready, and drop → result for a 1024x1024
// PNG, median of several runs, plus the size of dist/. Run after ./build.sh: node bench/page.mjs
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serveStatic, png, CHROMIUM_FLAGS } from '../tests/browser/support.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const RUNS = Number(process.env.RUNS || 5);

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[s.length >> 1]; };
function walk(dir) { return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]); }

const { server, origin } = await serveStatic(dist);
const url = `${origin}/`;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: CHROMIUM_FLAGS });
const big = path.join(os.tmpdir(), 'cxr-bench-1024.png');
fs.writeFileSync(big, png(1024, 1024, (x, y) => (x * 3 + y * 5 + ((x * y) >> 7)) & 255));

const loads = [], results = [], inference = [];
for (let i = 0; i < RUNS; i++) {
  const page = await browser.newPage();
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 300_000 });
  loads.push(Date.now() - t0);
  const t1 = Date.now();
  await page.setInputFiles('input#file', big);
  await page.waitForFunction(() => document.body.dataset.handled === '1' && document.body.dataset.state === 'ready', null, { timeout: 120_000 });
  results.push(Date.now() - t1);
  inference.push(await page.evaluate(() => document.getElementById('timings').textContent));
  await page.close();
}
await browser.close();
server.close();

const files = walk(dist);
const total = files.reduce((n, f) => n + fs.statSync(f).size, 0);
const totalBr = files.reduce((n, f) => n + zlib.brotliCompressSync(fs.readFileSync(f)).length, 0);
const wasm = fs.readFileSync(path.join(dist, 'pkg/cxr_bg.wasm'));
const model = fs.statSync(path.join(root, 'model/effusion.cxrw')).size;
const mb = (n) => `${(n / 1e6).toFixed(2)} MB`;
console.log(`machine: ${os.cpus().length} x ${os.cpus()[0].model}, ${os.platform()} ${os.release()}`);
console.log(`headless Chromium, CPU path (wasm + simd128), ${RUNS} runs, medians`);
console.log(`| figure | value |\n|---|---|`);
console.log(`| navigation → model ready (init, warm-up, self-test) | ${median(loads)} ms |`);
console.log(`| file → result, 1024x1024 PNG (decode, preprocess, inference, CAM, drawing) | ${median(results)} ms |`);
console.log(`| page timings of the last run | ${inference[inference.length - 1]} |`);
console.log(`| cxr_bg.wasm (model embedded: ${mb(model)}) | ${mb(wasm.length)} raw, ${mb(zlib.brotliCompressSync(wasm).length)} brotli |`);
console.log(`| dist/ total (${files.length} files) | ${mb(total)} raw, ${mb(totalBr)} brotli |`);

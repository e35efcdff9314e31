// Page figures in headless Chromium (CPU path): load → ready, and drop → result for a 1024x1024
// PNG, median of several runs, plus the size of dist/. Run after ./build.sh: node bench/page.mjs
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const RUNS = Number(process.env.RUNS || 5);
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.png': 'image/png' };

function png(width, height, pixel) {
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(zlib.crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0); ihdr.writeUInt32BE(height, 4); ihdr[8] = 8;
  const raw = Buffer.alloc((width + 1) * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) raw[y * (width + 1) + 1 + x] = pixel(x, y);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[s.length >> 1]; };
function walk(dir) { return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]); }

const server = http.createServer((req, res) => {
  let file = path.join(dist, decodeURIComponent(new URL(req.url, 'http://x').pathname));
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
  if (!file.startsWith(dist) || !fs.existsSync(file)) { res.writeHead(404); return res.end(); }
  res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const url = `http://127.0.0.1:${server.address().port}/`;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'] });
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

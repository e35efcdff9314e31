// Usage: ./build.sh && (python3 -m http.server 8765 --bind 127.0.0.1 --directory dist &) && node docs/screenshot.mjs [URL] [OUT]
//
// Re-takes docs/page.png: opens the built page (default http://127.0.0.1:8765/) in headless
// Debian Chromium (/usr/bin/chromium, or $CHROMIUM) through playwright-core (npm ci), waits for
// the model, drops tests/fixtures/effusion10.png on the file input, waits for the result and its
// saliency map, and saves a PNG (840 px wide, down to the result; under 300 KB). Never downloads a browser.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const url = process.argv[2] || 'http://127.0.0.1:8765/';
const out = process.argv[3] || path.join(root, 'docs/page.png');
const image = path.join(root, 'tests/fixtures/effusion10.png');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
});
try {
  const page = await browser.newPage({ viewport: { width: 840, height: 900 } });
  await page.goto(url);
  // As the browser tests do: the page says `ready` once the model is loaded and self-tested.
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 300_000 });
  const before = await page.evaluate(() => Number(document.body.dataset.handled || 0));
  await page.setInputFiles('input#file', image);
  await page.waitForFunction(
    (n) => Number(document.body.dataset.handled || 0) > n && document.body.dataset.state === 'ready',
    before,
    { timeout: 120_000 },
  );
  await page.waitForSelector('[data-testid=result]:not([hidden])');
  await page.waitForSelector('[data-testid=saliency]');
  const shown = await page.evaluate(() => {
    const r = document.querySelector('[data-testid=result]');
    return { probability: r.dataset.probability, label: r.dataset.label, decision: document.querySelector('[data-testid=decision]').textContent };
  });
  console.log('result:', JSON.stringify(shown));
  // From the top of the page to the bottom of the result (the X-ray with its saliency map).
  const box = await page.locator('[data-testid=result]').boundingBox();
  await page.screenshot({ path: out, fullPage: true, clip: { x: 0, y: 0, width: 840, height: Math.ceil(box.y + box.height + 4) } });
  console.log('wrote', out);
} finally {
  await browser.close();
}

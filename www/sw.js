// Offline use: on install, caches the app shell, the wasm this browser runs (with the model
// inside; only that one of the two builds, see wasm-flavour.js) and the sample; then serves them
// cache-first, and caches whatever else of the site it fetches (the other build, with
// `?simd=plain`), so the page works with no network after the first visit. The cache name
// carries a build stamp (written by build.sh), so a new build replaces the old cache.
// Only same-origin GET requests are looked at; the page makes no others.
importScripts('wasm-flavour.js');
const CACHE = 'cxr-__BUILD__';
const FILES = ['./', 'index.html', 'app.js', 'batch.js', 'validate.js', 'worker.js', 'wasm-flavour.js', 'style.css', 'sample.png',
  'manifest.webmanifest', 'icon.svg', 'icon-192.png', 'icon-512.png', 'pkg/cxr.js', `pkg/${self.cxrWasmFlavour().file}`];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith('cxr-') && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin) return;
  // ignoreSearch: `?backend=cpu` is the same page.
  event.respondWith(caches.open(CACHE).then(async (cache) => {
    const hit = await cache.match(event.request, { ignoreSearch: true });
    if (hit) return hit;
    const response = await fetch(event.request);
    if (response.ok) cache.put(event.request, response.clone());
    return response;
  }));
});

// Offline use: on install, caches the app shell, the wasm (with the model inside) and the sample;
// then serves them cache-first, so the page works with no network after the first visit. The
// cache name carries a build stamp (written by build.sh), so a new build replaces the old cache.
// Only same-origin GET requests are looked at; the page makes no others.
const CACHE = 'cxr-__BUILD__';
const FILES = ['./', 'index.html', 'app.js', 'batch.js', 'validate.js', 'worker.js', 'style.css', 'sample.png', 'manifest.webmanifest',
  'icon.svg', 'icon-192.png', 'icon-512.png', 'pkg/cxr.js', 'pkg/cxr_bg.wasm'];

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
  event.respondWith(caches.open(CACHE)
    .then((cache) => cache.match(event.request, { ignoreSearch: true }))
    .then((hit) => hit || fetch(event.request)));
});

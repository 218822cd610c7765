// Service worker: keeps the app shell so the app opens with the network off after one visit.
// - The shell (below) is cached at install under a name that changes with every build (`stamp-sw.mjs`, a trunk
//   post-build hook, writes a hash of the shell files over BUILD_ID, so a new build also changes this file and
//   the browser installs the new worker); older shell caches are deleted on activation.
// - Shell requests and page navigations (`/`, `/?embed&allow=…`) are answered cache-first.
// - Everything else of this origin goes to the network first; the cache is only a fallback and nothing else is
//   ever stored in it: model files (the demo model, weights) are never cached here (weights live in IndexedDB).
// - Requests to other origins (model sources) and non-GET requests are not touched.
const BUILD_ID = 'dev';
const CACHE = `kontext-shell-${BUILD_ID}`;
const SHELL = ['index.html', 'boot.js', 'app.js', 'app_bg.wasm', 'worker.js', 'device-request.js', 'style.css', 'icon.svg',
  'manifest.webmanifest', 'icons/icon-192.png', 'icons/icon-512.png', 'icons/maskable-192.png', 'icons/maskable-512.png'];
const SHELL_URLS = new Set(SHELL.map((path) => new URL(path, self.registration.scope).href));

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL.map((path) => new Request(path, { cache: 'reload' }))))
    .then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((n) => n.startsWith('kontext-shell-') && n !== CACHE).map((n) => caches.delete(n))))
    .then(() => self.clients.claim()));
});

async function cacheFirst(request, key) {
  const cached = await caches.match(key, { cacheName: CACHE });
  return cached ?? fetch(request);
}

async function networkFirst(request) {
  try {
    return await fetch(request);
  } catch (error) {
    return (await caches.match(request, { cacheName: CACHE })) ?? Promise.reject(error);
  }
}

self.addEventListener('fetch', (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (request.method !== 'GET' || url.origin !== self.location.origin) return;
  if (request.mode === 'navigate' && url.pathname === new URL(self.registration.scope).pathname) {
    event.respondWith(cacheFirst(request, 'index.html'));
  } else if (SHELL_URLS.has(url.origin + url.pathname)) {
    event.respondWith(cacheFirst(request, url.origin + url.pathname));
  } else {
    event.respondWith(networkFirst(request));
  }
});

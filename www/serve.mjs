// Static server for the built app (dist/) on loopback, with the headers the app relies on.
// Usage: node www/serve.mjs DIR [HOST] [PORT]
import { createServer } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm', '.css': 'text/css; charset=utf-8', '.json': 'application/json',
  '.webmanifest': 'application/manifest+json', '.png': 'image/png', '.svg': 'image/svg+xml',
  '.safetensors': 'application/octet-stream', '.gguf': 'application/octet-stream',
};

// The page's <meta> policy plus what only a header can carry: frame-ancestors (the embed must be frameable).
export const CSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self' https: http://127.0.0.1:* http://localhost:* blob: data:; " +
  "img-src 'self' blob: data:; style-src 'self'; worker-src 'self'; font-src 'self'; manifest-src 'self'; object-src 'none'; " +
  "base-uri 'self'; form-action 'none'; frame-ancestors *";

export function startServer(root, host = '127.0.0.1', port = 8080) {
  const base = resolve(root);
  const server = createServer(async (req, res) => {
    try {
      const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
      let file = normalize(join(base, path));
      if (!file.startsWith(base)) { res.writeHead(403).end('forbidden'); return; }
      if ((await stat(file).catch(() => null))?.isDirectory()) file = join(file, 'index.html');
      const whole = await readFile(file);
      // One byte range (model downloads resume with it), else the whole file.
      const range = (req.headers.range ?? '').match(/^bytes=(\d+)-(\d*)$/);
      const [start, end] = range ? [Number(range[1]), range[2] === '' ? whole.length : Math.min(whole.length, Number(range[2]) + 1)] : [0, whole.length];
      if (range && start >= end) { res.writeHead(416, { 'Content-Range': `bytes */${whole.length}` }).end(); return; }
      const body = whole.subarray(start, end);
      res.writeHead(range ? 206 : 200, {
        'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream',
        'Content-Length': String(body.length),
        'Accept-Ranges': 'bytes',
        ...(range ? { 'Content-Range': `bytes ${start}-${end - 1}/${whole.length}` } : {}),
        'Cache-Control': 'no-cache',
        'Cross-Origin-Opener-Policy': 'same-origin',
        'X-Content-Type-Options': 'nosniff',
        'Content-Security-Policy': CSP,
      });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found');
    }
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok(server));
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [root = 'dist', host = '127.0.0.1', port = '8080'] = process.argv.slice(2);
  startServer(root, host, Number(port))
    .then(() => console.log(`kontext-web on http://${host}:${port}/`))
    .catch((e) => { console.error(`cannot serve on ${host}:${port}: ${e.message}`); process.exit(1); });
}

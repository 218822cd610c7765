// A test file server for the model store's downloads (tests/store.rs): deterministic bytes of any size, HTTP
// Range, CORS, and faults on request: `drop=N` cuts the connection after N body bytes on the first GET of that
// URL, `norange` ignores Range (answers 200 with the whole file). `/log?id=X` lists the requests whose URL had
// `id=X`, so a test can check what was fetched again.
//
//   node tests/e2e/drop-server.mjs [port]      (default 8791; `make test-wasm` starts it)
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';

/** Byte `i` of every served file (tests/store.rs computes the same). */
export function byteAt(i) {
  return (Math.imul(i, 2654435761) >>> 13) & 255;
}

function bytes(start, end) {
  const out = Buffer.alloc(end - start);
  for (let i = start; i < end; i++) out[i - start] = byteAt(i);
  return out;
}

const CORS = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Headers': 'Range',
  'Access-Control-Expose-Headers': 'Content-Range, Content-Length, Accept-Ranges',
};

export function startDropServer(port = 8791, host = '127.0.0.1') {
  const log = new Map();
  const dropped = new Set();
  const server = createServer((req, res) => {
    const url = new URL(req.url, `http://${host}`);
    const id = url.searchParams.get('id') ?? '';
    if (url.pathname === '/log') {
      res.writeHead(200, { ...CORS, 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
      res.end(JSON.stringify(log.get(id) ?? []));
      return;
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204, { ...CORS, 'Access-Control-Allow-Methods': 'GET, HEAD' });
      res.end();
      return;
    }
    const match = url.pathname.match(/^\/file\/(\d+)$/);
    if (!match) {
      res.writeHead(404, CORS);
      res.end();
      return;
    }
    const size = Number(match[1]);
    const range = req.headers.range ?? null;
    const entry = { method: req.method, range };
    if (!log.has(id)) log.set(id, []);
    log.get(id).push(entry);

    let start = 0, end = size, status = 200;
    const parsed = range && !url.searchParams.has('norange') ? range.match(/^bytes=(\d+)-(\d*)$/) : null;
    if (parsed) {
      start = Number(parsed[1]);
      end = parsed[2] === '' ? size : Math.min(size, Number(parsed[2]) + 1);
      if (start >= size || start >= end) {
        res.writeHead(416, { ...CORS, 'Content-Range': `bytes */${size}` });
        res.end();
        return;
      }
      status = 206;
    }
    entry.status = status;
    const headers = { ...CORS, 'Content-Type': 'application/octet-stream', 'Content-Length': String(end - start),
      'Accept-Ranges': url.searchParams.has('norange') ? 'none' : 'bytes', 'Cache-Control': 'no-store' };
    if (status === 206) headers['Content-Range'] = `bytes ${start}-${end - 1}/${size}`;
    res.writeHead(status, headers);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const drop = Number(url.searchParams.get('drop') ?? -1);
    const key = `${url.pathname}${url.search}`;
    if (drop >= 0 && !dropped.has(key)) {
      dropped.add(key);
      entry.dropped = drop;
      res.write(bytes(start, Math.min(end, start + drop)), () => setTimeout(() => res.socket.destroy(), 50));
      return;
    }
    res.end(bytes(start, end));
  });
  return new Promise((resolve) => server.listen(port, host, () => resolve(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const port = Number(process.argv[2] ?? 8791);
  const server = await startDropServer(port);
  console.log(`drop server on http://127.0.0.1:${server.address().port}/`);
}

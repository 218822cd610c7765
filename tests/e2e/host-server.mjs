// Model hosting as it really is, for the embed's `kontext:load` tests: a "hub" that answers every file with a
// redirect to a "CDN" on another origin, and a CDN that does not expose Content-Range or Content-Length to pages
// (no Access-Control-Expose-Headers), may refuse HEAD (signed URLs), drops the first connection of each large
// file part-way, can be slow, and can change a file's bytes and ETag between two requests.
import { createServer } from 'node:http';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

const CORS = { 'Access-Control-Allow-Origin': '*', 'Access-Control-Allow-Headers': 'Range' };

function listen(server) {
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(`http://127.0.0.1:${server.address().port}`)));
}

/** Serves the files `files(path) → Buffer | null` (paths relative to the model) as `${hub}/m/PATH`, each a 302 to
 * `${cdn}/blob/PATH?sig=…`. `control`: `dropAfter` (bytes of the first ranged download of each file over that size,
 * then the connection is cut; `null` for none), `refuseHead`, `pieceDelayMs`, `down` (both origins cut every connection),
 * `changed` (a set of paths whose bytes are inverted and whose ETag and Last-Modified change from then on),
 * `changeOnDrop` (a dropped file is changed at once). Every CDN request is
 * logged as `{ method, path, range, status, sent }`. */
export async function startHost(files) {
  const control = { dropAfter: null, refuseHead: true, pieceDelayMs: 0, down: false, changed: new Set(), changeOnDrop: false, log: [] };
  const dropped = new Set();
  const hub = createServer((req, res) => {
    if (control.down) { req.socket.destroy(); return; }
    if (req.method === 'OPTIONS') { res.writeHead(204, { ...CORS, 'Access-Control-Allow-Methods': 'GET, HEAD' }).end(); return; }
    const path = new URL(req.url, 'http://x').pathname.replace(/^\/m\//, '');
    if (!files(path)) { res.writeHead(404, CORS).end(); return; }
    res.writeHead(302, { ...CORS, Location: `${host.cdn}/blob/${path}?sig=${Date.now()}` }).end();
  });
  const cdn = createServer(async (req, res) => {
    if (control.down) { req.socket.destroy(); return; }
    if (req.method === 'OPTIONS') { res.writeHead(204, { ...CORS, 'Access-Control-Allow-Methods': 'GET' }).end(); return; }
    const path = new URL(req.url, 'http://x').pathname.replace(/^\/blob\//, '');
    const entry = { method: req.method, path, range: req.headers.range ?? null, status: 0, sent: 0 };
    control.log.push(entry);
    let bytes = files(path);
    if (!bytes) { entry.status = 404; res.writeHead(404, CORS).end(); return; }
    if (req.method === 'HEAD' && control.refuseHead) { entry.status = 405; res.writeHead(405, CORS).end(); return; }
    const changed = control.changed.has(path);
    if (changed) bytes = bytes.map((b) => b ^ 0xff);
    const size = bytes.length;
    let [start, end, status] = [0, size, 200];
    const range = (req.headers.range ?? '').match(/^bytes=(\d+)-(\d*)$/);
    if (range) {
      [start, end, status] = [Number(range[1]), range[2] === '' ? size : Math.min(size, Number(range[2]) + 1), 206];
      if (start >= end) { entry.status = 416; res.writeHead(416, { ...CORS, 'Content-Range': `bytes */${size}` }).end(); return; }
    }
    entry.status = status;
    res.writeHead(status, {
      ...CORS, 'Content-Type': 'application/octet-stream', 'Content-Length': String(end - start), 'Cache-Control': 'no-store',
      ETag: changed ? '"v2"' : '"v1"', 'Last-Modified': changed ? 'Thu, 03 Dec 2026 10:00:00 GMT' : 'Tue, 01 Dec 2026 10:00:00 GMT',
      ...(status === 206 ? { 'Content-Range': `bytes ${start}-${end - 1}/${size}` } : {}),
    });
    if (req.method === 'HEAD') { res.end(); return; }
    // Only a download is cut (a ranged GET of more than a byte), not a size probe.
    const download = req.method === 'GET' && status === 206 && end - start > 1;
    const drop = control.dropAfter !== null && size > control.dropAfter && !dropped.has(path) && download ? control.dropAfter : null;
    if (drop !== null) dropped.add(path);
    if (drop !== null && control.changeOnDrop) control.changed.add(path);
    for (let at = start; at < end; at += 65536) {
      let piece = bytes.subarray(at, Math.min(end, at + 65536));
      if (drop !== null && entry.sent + piece.length > drop) piece = piece.subarray(0, drop - entry.sent);
      entry.sent += piece.length;
      if (piece.length && !await new Promise((ok) => res.write(piece, () => ok(true)))) return;
      if (drop !== null && entry.sent >= drop) { entry.dropped = true; setTimeout(() => res.socket?.destroy(), 20); return; }
      if (control.pieceDelayMs) await new Promise((ok) => setTimeout(ok, control.pieceDelayMs));
      if (res.destroyed || control.down) { res.socket?.destroy(); return; }
    }
    res.end();
  });
  const host = { control, hubServer: hub, cdnServer: cdn, hub: await listen(hub), cdn: await listen(cdn) };
  host.close = () => { for (const s of [hub, cdn]) { s.closeAllConnections?.(); s.close(); } };
  return host;
}

/** The files of folder `root`, read on demand (paths with `..` refused). */
export function folderFiles(root) {
  return (path) => {
    if (path.includes('..')) return null;
    try { return statSync(join(root, path)).isFile() ? readFileSync(join(root, path)) : null; } catch { return null; }
  };
}

/** A safetensors file split in two shards with a diffusers index, as `{ index, shards: { name: Buffer } }`. */
export function shardSafetensors(bytes, stem) {
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  const data = bytes.subarray(8 + headerLength);
  const names = Object.keys(header).filter((n) => n !== '__metadata__').sort();
  const halves = [names.slice(0, names.length >> 1), names.slice(names.length >> 1)];
  const shards = {};
  const weightMap = {};
  halves.forEach((group, i) => {
    const name = `${stem}-0000${i + 1}-of-00002.safetensors`;
    const parts = [];
    const shardHeader = {};
    let offset = 0;
    for (const tensor of group) {
      const [begin, end] = header[tensor].data_offsets;
      shardHeader[tensor] = { ...header[tensor], data_offsets: [offset, offset + end - begin] };
      parts.push(data.subarray(begin, end));
      offset += end - begin;
      weightMap[tensor] = name;
    }
    let json = Buffer.from(JSON.stringify(shardHeader));
    json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(json.length));
    shards[name] = Buffer.concat([length, json, ...parts]);
  });
  const index = Buffer.from(JSON.stringify({ metadata: { total_size: data.length }, weight_map: weightMap }));
  return { index, shards };
}

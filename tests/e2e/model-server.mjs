// The test server of the model store's end-to-end tests: the tiny pack over HTTP with Range and CORS, slow
// enough to watch, with a cut connection on request, logging what it sends.
import { createServer } from 'node:http';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { PACK, unfoldModelPanel } from './browser.mjs';

export const CHUNK = 262144; // the 256 KiB chunk size offered in the custom-URL form
export const HUGE = 900_000_000_000; // the fake Content-Length of the "huge" source's DiT

/** Serves the tiny pack under /tiny/ and /copy/ (Range, CORS, slow enough to watch) and /huge/ (the same files, but a DiT
 * of HUGE bytes). `cutAfter` bytes of bodies in all, then the connection drops and the server stays down until
 * `down` is cleared. Every request is logged with the body bytes it sent. */
export function startModelServer() {
  const control = { log: [], sent: 0, cutAfter: null, down: false, pieceDelayMs: 8 };
  const server = createServer(async (req, res) => {
    const cors = {
      'Access-Control-Allow-Origin': '*',
      'Access-Control-Allow-Headers': 'Range',
      'Access-Control-Expose-Headers': 'Content-Range, Content-Length, Accept-Ranges',
    };
    if (req.method === 'OPTIONS') { res.writeHead(204, { ...cors, 'Access-Control-Allow-Methods': 'GET, HEAD' }).end(); return; }
    if (control.down) { req.socket.destroy(); return; }
    const url = new URL(req.url, 'http://x');
    const match = url.pathname.match(/^\/(tiny|copy|huge)\/(.+)$/);
    const path = match ? match[2] : '';
    let file;
    try { file = statSync(join(PACK, path)); } catch { file = null; }
    if (!match || !file?.isFile() || path.includes('..')) { res.writeHead(404, cors).end(); return; }
    const size = match[1] === 'huge' && path === 'transformer/diffusion_pytorch_model.safetensors' ? HUGE : file.size;
    const entry = { method: req.method, path, range: req.headers.range ?? null, sent: 0 };
    control.log.push(entry);
    let start = 0, end = size, status = 200;
    const parsed = (req.headers.range ?? '').match(/^bytes=(\d+)-(\d*)$/);
    if (parsed) {
      start = Number(parsed[1]);
      end = parsed[2] === '' ? size : Math.min(size, Number(parsed[2]) + 1);
      status = 206;
    }
    const headers = { ...cors, 'Content-Type': 'application/octet-stream', 'Content-Length': String(end - start),
      'Accept-Ranges': 'bytes', 'Cache-Control': 'no-store' };
    if (status === 206) headers['Content-Range'] = `bytes ${start}-${end - 1}/${size}`;
    res.writeHead(status, headers);
    if (req.method === 'HEAD') { res.end(); return; }
    const body = readFileSync(join(PACK, path)).subarray(start, end);
    for (let at = 0; at < body.length; at += 65536) {
      let piece = body.subarray(at, at + 65536);
      const cut = control.cutAfter !== null && control.sent + piece.length > control.cutAfter;
      if (cut) piece = piece.subarray(0, Math.max(0, control.cutAfter - control.sent));
      control.sent += piece.length;
      entry.sent += piece.length;
      if (piece.length) await new Promise((ok) => res.write(piece, ok));
      if (cut) {
        control.down = true;
        setTimeout(() => res.socket?.destroy(), 50);
        return;
      }
      await new Promise((ok) => setTimeout(ok, control.pieceDelayMs));
    }
    res.end();
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok({ server, control, url: `http://127.0.0.1:${server.address().port}` })));
}

/** Stores the pack from `base` through the custom-URL form, in 256 KiB chunks. */
export async function storeFromUrl(page, base) {
  await unfoldModelPanel(page);
  await page.check('#source-urls');
  await page.fill('#url-base', base);
  await page.selectOption('#url-chunk', String(CHUNK));
  await page.click('#url-store');
}

/** The row of stored model `id` in the model panel's list. */
export const row = (id) => `.stored-model[data-id="${id}"]`;

/** Waits until the running download or copy has stored its first bytes. */
export function transferStarted(page) {
  return page.waitForFunction(() => Number(document.querySelector('#transfer')?.dataset.done ?? 0) > 0, null, { timeout: 30_000 });
}

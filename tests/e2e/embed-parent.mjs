// A product page on another origin that embeds the app (`/?embed`) and talks to it with postMessage, for the embed
// API's end-to-end tests: it records every message the app posts (`window.messages`) and sends with `send(message)`.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { serveDist, launch, watchProblems } from './browser.mjs';
import { startHost } from './host-server.mjs';

const PARENT_HTML = `<!doctype html><meta charset="utf-8"><title>parent</title>
<iframe id="app" width="480" height="400" title="Kontext"></iframe>
<script>
  const app = new URLSearchParams(location.search).get('app');
  window.appOrigin = new URL(app).origin;
  window.messages = [];
  addEventListener('message', (e) => messages.push({ origin: e.origin, data: e.data, at: Date.now() }));
  document.getElementById('app').src = app;
  window.send = (message) => document.getElementById('app').contentWindow.postMessage(message, appOrigin);
</script>`;

/** Serves the parent page on a loopback port of its own (so on an origin other than the app's). */
export function startParent() {
  const server = createServer((req, res) => {
    if (req.url.startsWith('/favicon')) { res.writeHead(204).end(); return; }
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(PARENT_HTML);
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok({ server, url: `http://127.0.0.1:${server.address().port}/` })));
}

/** Opens `parent`'s page in `page`, embedding the app served at `appUrl` with the parent's origin allowed, and waits
 * for the app's `kontext:ready`. */
export async function openEmbedded(page, parent, appUrl) {
  const embedUrl = `${appUrl}?embed&allow=${encodeURIComponent(parent.url.slice(0, -1))}`;
  await page.goto(`${parent.url}?app=${encodeURIComponent(embedUrl)}`);
  await page.waitForFunction(() => window.messages.some((m) => m.data?.type === 'kontext:ready'), null, { timeout: 60_000 });
}

/** Waits for the app's answer of `type` to request `id` (or its error) and returns the message's data. */
export async function answer(page, id, type, timeout = 300_000) {
  const handle = await page.waitForFunction(([id, type]) => window.messages.find((m) => m.data?.id === id
    && (m.data.type === type || m.data.type === 'kontext:error'))?.data ?? null, [id, type], { timeout });
  return handle.jsonValue();
}

/** The `kontext:progress` messages of request `id`, each with the time it arrived (`at`, ms). */
export function progressOf(page, id) {
  return page.evaluate((id) => window.messages.filter((m) => m.data?.id === id && m.data.type === 'kontext:progress')
    .map((m) => ({ ...m.data, at: m.at })), id);
}

/** Sends `kontext:cancel` for `id` once a `kontext:progress` of `phase` with `done > 0` arrived, and returns the
 * milliseconds from the cancel to its answer, with the answer. */
export async function cancelDuring(page, id, phase, timeout = 300_000) {
  await page.waitForFunction(([id, phase]) => window.messages.some((m) => m.data?.id === id
    && m.data.type === 'kontext:progress' && m.data.phase === phase && m.data.done > 0), [id, phase], { timeout });
  const sent = await page.evaluate((id) => { send({ type: 'kontext:cancel', id }); return Date.now(); }, id);
  const handle = await page.waitForFunction(([id, sent]) => window.messages.find((m) => m.data?.id === id
    && m.data.type === 'kontext:error' && m.at >= sent) ?? null, [id, sent], { timeout: 30_000 });
  const message = await handle.jsonValue();
  return { millis: message.at - sent, answer: message.data };
}

/** Serves the app, a parent page and a model host for `files` (see host-server.mjs), and opens the parent in
 * Chromium with WebGPU, its problems collected in `problems`. `close()` ends them all. */
export async function openEmbedHarness(files, problems) {
  const app = await serveDist();
  const parent = await startParent();
  const host = await startHost(files);
  const browser = await launch({ webgpu: true });
  const page = watchProblems(await browser.context.newPage(), problems);
  await openEmbedded(page, parent, app.url);
  return {
    app, parent, host, browser, page,
    async close() {
      await browser.close();
      host.close();
      for (const s of [app, parent]) { s.server.closeAllConnections?.(); s.server.close(); }
    },
  };
}

/** Sends `kontext:edit` `id` with the PNG file `reference` and `options` (prompt, width, height, steps, seed…) and
 * returns the result's PNG as base64 (throws with the app's message on an error). */
export async function editPng(page, id, reference, options, timeout = 900_000) {
  return (await editResult(page, id, reference, options, timeout)).png;
}

/** `editPng`'s edit, answering `{ png, latents, latentsShape }`: with `returnLatents: true` in `options`, the final
 * packed latents as a plain array of numbers and their shape. */
export async function editResult(page, id, reference, options, timeout = 900_000) {
  const b64 = readFileSync(reference).toString('base64');
  await page.evaluate(([id, b64, options]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    send({ type: 'kontext:edit', id, images: [new Blob([bytes], { type: 'image/png' })], ...options });
  }, [id, b64, options]);
  const result = await page.waitForFunction((id) => window.messages.find((m) => m.data?.id === id && /result|error/.test(m.data.type))?.data ?? null,
    id, { timeout });
  const answer = await result.evaluate(async (r) => {
    if (r.type !== 'kontext:result') return { error: r.message };
    const bytes = new Uint8Array(await r.image.arrayBuffer());
    let s = ''; for (const b of bytes) s += String.fromCharCode(b);
    return { png: btoa(s), latents: r.latents ? Array.from(r.latents) : undefined, latentsShape: r.latentsShape };
  });
  if (answer.error !== undefined) throw new Error(`kontext:edit ${id}: ${answer.error}`);
  return answer;
}

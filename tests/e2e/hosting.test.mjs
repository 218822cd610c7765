// `kontext:load` against hosting as it really is (issue 14, points 5, 6 and 8), from a parent page on another
// origin: a hub that redirects every file to a CDN on a third origin, which hides Content-Range and Content-Length
// from the page, refuses HEAD, and drops the first connection of each large file. A sharded diffusers folder is
// stored chunk by chunk (resumed with Range, never re-fetched whole) and edits exactly like the unsharded demo pack;
// with the model host down, the same load is served from the store after the host page reloads; a load is cancelled
// within a second and the next one resumes; a file that changes between chunks is refused, its bytes not mixed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { maxPixelDifference, nativeEdit, PACK, REFERENCE } from './browser.mjs';
import { openEmbedHarness, openEmbedded, answer, progressOf, cancelDuring, editPng } from './embed-parent.mjs';
import { startHost, folderFiles, shardSafetensors } from './host-server.mjs';

const WEIGHTS = 'transformer/diffusion_pytorch_model.safetensors';
const PROMPT = 'Make the red square blue';
const [WIDTH, HEIGHT, SEED] = [96, 64, 77];

/** The tiny pack with its DiT as a sharded checkpoint (an index and two shards), as a file lookup. */
function shardedPack() {
  const pack = folderFiles(PACK);
  const { index, shards } = shardSafetensors(readFileSync(join(PACK, WEIGHTS)), 'diffusion_pytorch_model');
  const files = { [`${WEIGHTS}.index.json`]: index };
  for (const [name, bytes] of Object.entries(shards)) files[`transformer/${name}`] = bytes;
  return (path) => (path === WEIGHTS ? null : files[path] ?? pack(path));
}

let harness, page, host;
const problems = [];

before(async () => {
  harness = await openEmbedHarness(shardedPack(), problems);
  ({ page, host } = harness);
});
after(() => harness.close());

const gets = (log) => log.filter((e) => e.method === 'GET');

test('a sharded folder behind a redirecting CDN that hides its headers and drops connections is stored and edits like the demo pack', async () => {
  // Cut after 600 000 bytes, past two 256 KiB chunks, while the page keeps up with the stream.
  host.control.dropAfter = 600_000;
  host.control.pieceDelayMs = 5;
  await page.evaluate((base) => send({ type: 'kontext:load', id: 'sharded', source: { base }, chunkSize: 262144 }), `${host.hub}/m/`);
  const loaded = await answer(page, 'sharded', 'kontext:loaded', 180_000);
  assert.equal(loaded.type, 'kontext:loaded', loaded.message);
  host.control.pieceDelayMs = 0;
  const log = host.control.log;
  // The index was read and both shards stored; the single file the index stands for was never asked of the CDN.
  for (const shard of ['diffusion_pytorch_model-00001-of-00002.safetensors', 'diffusion_pytorch_model-00002-of-00002.safetensors']) {
    assert.ok(gets(log).some((e) => e.path === `transformer/${shard}` && e.status === 206), `${shard} not fetched: ${JSON.stringify(log)}`);
  }
  assert.ok(!log.some((e) => e.path === WEIGHTS));
  assert.ok(log.some((e) => e.method === 'HEAD' && e.status === 405), 'HEAD was refused and the size found another way');
  // Every dropped file was resumed with a Range from where its stored chunks end, not fetched again from byte 0.
  const dropped = gets(log).filter((e) => e.dropped);
  assert.ok(dropped.length >= 2, JSON.stringify(log));
  for (const cut of dropped) {
    const after = gets(log.slice(log.indexOf(cut) + 1)).filter((e) => e.path === cut.path && e.sent > 1);
    assert.ok(after.length > 0 && after.every((e) => /^bytes=[1-9]\d*-/.test(e.range ?? '')), `${cut.path}: ${JSON.stringify(after)}`);
  }
  const downloads = (await progressOf(page, 'sharded')).filter((p) => p.phase === 'downloading');
  assert.ok(downloads.length > 0 && downloads.at(-1).done === downloads.at(-1).total, JSON.stringify(downloads.slice(-3)));

  const png = await edit('sharded-edit');
  const native = nativeEdit(['--prompt', PROMPT, '--image', REFERENCE, '--width', String(WIDTH), '--height', String(HEIGHT),
    '--max-area', String(WIDTH * HEIGHT), '--steps', '2', '--guidance', '2.5', '--seed', String(SEED)]);
  assert.ok(await maxPixelDifference(page, png, native) <= 2);
});

/** A 2-step edit of the reference on the loaded model; its PNG as base64. */
const edit = (id) => editPng(page, id, REFERENCE, { prompt: PROMPT, width: WIDTH, height: HEIGHT, steps: 2, seed: SEED });

test('with the model host down, the host page reloads and the same kontext:load is served from the store', async () => {
  host.control.down = true;
  const before = host.control.log.length;
  await openEmbedded(page, harness.parent, harness.app.url);
  await page.evaluate((base) => send({ type: 'kontext:load', id: 'offline', source: { base } }), `${host.hub}/m/`);
  const loaded = await answer(page, 'offline', 'kontext:loaded', 120_000);
  assert.equal(loaded.type, 'kontext:loaded', loaded.message);
  assert.equal(host.control.log.length, before, 'nothing was asked of the CDN');
  assert.ok(!(await progressOf(page, 'offline')).some((p) => p.phase === 'downloading'));
  host.control.down = false;
});

test('a load is cancelled within a second while it downloads; the next load resumes from the stored chunks', async () => {
  const slow = await startHost(folderFiles(PACK));
  try {
    slow.control.pieceDelayMs = 40;
    slow.control.refuseHead = false;
    await page.evaluate((base) => send({ type: 'kontext:load', id: 'slow', source: { base }, chunkSize: 262144 }), `${slow.hub}/m/`);
    const { millis, answer: cancelled } = await cancelDuring(page, 'slow', 'downloading', 120_000);
    assert.deepEqual([cancelled.message, cancelled.cancelled], ['cancelled', true]);
    assert.ok(millis < 1000, `answered ${millis} ms after the cancel`);
    await page.waitForTimeout(500);
    const stored = (await progressOf(page, 'slow')).filter((p) => p.phase === 'downloading').at(-1).done;
    const mark = slow.control.log.length;
    slow.control.pieceDelayMs = 0;
    await page.evaluate((base) => send({ type: 'kontext:load', id: 'resumed', source: { base } }), `${slow.hub}/m/`);
    const loaded = await answer(page, 'resumed', 'kontext:loaded', 120_000);
    assert.equal(loaded.type, 'kontext:loaded', loaded.message);
    const total = (await progressOf(page, 'resumed')).filter((p) => p.phase === 'downloading').at(-1).total;
    const sent = gets(slow.control.log.slice(mark)).reduce((sum, e) => sum + e.sent, 0);
    assert.ok(sent <= total - stored + 262144 + 65536, `fetched ${sent} bytes again; ${stored} of ${total} were stored`);
  } finally {
    slow.close();
  }
});

test('a file that changes on the server between chunks is refused and its bytes are not mixed', async () => {
  const changing = await startHost(folderFiles(PACK));
  try {
    changing.control.dropAfter = 600_000;
    changing.control.pieceDelayMs = 5;
    changing.control.changeOnDrop = true;
    await page.evaluate((base) => send({ type: 'kontext:load', id: 'changed', source: { base }, chunkSize: 262144 }), `${changing.hub}/m/`);
    const failed = await answer(page, 'changed', 'kontext:loaded', 120_000);
    assert.equal(failed.type, 'kontext:error');
    assert.match(failed.message, /changed on the server since its download began \(it was "Tue, 01 Dec 2026 10:00:00 GMT", it is now "Thu, 03 Dec 2026 10:00:00 GMT"\)/);
    // The one request after the cut was refused on its headers, and not tried again.
    const log = changing.control.log;
    const cut = gets(log).find((e) => e.dropped);
    const later = gets(log.slice(log.indexOf(cut) + 1)).filter((e) => e.path === cut.path);
    assert.equal(later.length, 1, JSON.stringify(later));
    assert.match(later[0].range, /^bytes=[1-9]\d*-/, 'it resumed after stored chunks');
    assert.match(failed.message, /the stored copy was discarded: loading again downloads the new version/);
    // The next load of the same URLs starts afresh from the file the server has now, whole, and loads.
    changing.control.changed.clear();
    changing.control.dropAfter = null;
    changing.control.pieceDelayMs = 0;
    await page.evaluate((base) => send({ type: 'kontext:load', id: 'afresh', source: { base }, chunkSize: 262144 }), `${changing.hub}/m/`);
    const afresh = await answer(page, 'afresh', 'kontext:loaded', 120_000);
    assert.equal(afresh.type, 'kontext:loaded', afresh.message);
  } finally {
    changing.close();
  }
  assert.deepEqual(problems.filter((p) => !/Failed to load resource|ERR_CONNECTION|net::/.test(p)), []);
});

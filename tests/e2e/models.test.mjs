// The model store through the UI: a source too large for the quota is refused; the tiny pack is stored from a
// custom URL with measured progress, the connection is cut mid-file, a reload shows it partial, and Resume
// fetches exactly the missing bytes (counted on the server); Verify finds a damaged chunk and Resume fetches only
// that chunk; the stored model loads in the worker from IndexedDB after a memory check and runs a 1-step edit
// equal to the native CLI's (±2 LSB; another seed is not);
// pause / resume / cancel; a local folder and the demo pack are copied in; every control is labelled; deleting
// frees space. A partial model cannot be loaded.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { openApp, screenshot, setNumber, packBytes, resultPng, assertNativeImage, PACK, REFERENCE } from './browser.mjs';
import { startModelServer, storeFromUrl, row, transferStarted, CHUNK } from './model-server.mjs';

let models;
let browser;
let tinyId;
before(async () => {
  models = await startModelServer();
  browser = await openApp('#stored-empty');
});
after(async () => { await browser.close(); models.server.close(); });

const getBytes = (since) => models.control.log.slice(since).filter((e) => e.method === 'GET');
const networkNoise = (p) => /Failed to load resource|net::ERR_|Failed to fetch/.test(p);

test('a source larger than the storage quota is refused with a clear message, and nothing is stored', async () => {
  const { page } = browser;
  await storeFromUrl(page, `${models.url}/huge/`);
  await page.waitForSelector('#store-message[data-kind="error"]', { timeout: 30_000 });
  const message = await page.textContent('#store-message');
  assert.match(message, /^storage full: this download needs 900\.0 GB more but the browser lets this site store only .* more; delete models or free disk space$/);
  await screenshot(page, 'models-quota-refused');
  assert.equal(await page.locator('.stored-model').count(), 0);
  assert.ok(getBytes(0).length === 0, 'nothing was downloaded');
});

test('a custom URL download shows progress, survives a cut and a reload, and Resume fetches only the missing bytes', async () => {
  const { page } = browser;
  models.control.cutAfter = 2_500_000;
  await storeFromUrl(page, `${models.url}/tiny/`);
  await page.waitForSelector('#transfer[data-action="Downloading"]', { timeout: 30_000 });
  await page.waitForFunction(() => / of 4\.\d MB · [\d.]+ (KB|MB)\/s · \d+ s left$/.test(document.querySelector('#transfer-text')?.textContent ?? ''),
    null, { timeout: 30_000 });
  await screenshot(page, 'models-downloading');
  assert.match(await page.textContent('#storage-persist'), /Persistent storage (granted|not granted)/);
  // The server went down mid-file: three attempts fail, what was stored stays, the row says how to go on.
  await page.waitForSelector('.stored-model[data-state="partial"] .model-note[role="alert"]', { timeout: 60_000 });
  assert.match(await page.textContent('.stored-model .model-note'), /What was stored is kept: Resume continues from there\.$/);
  tinyId = await page.getAttribute('.stored-model', 'data-id');
  assert.match(tinyId, /^tiny-\d+$/);
  await page.reload();
  await page.waitForSelector(`${row(tinyId)}[data-state="partial"] .model-resume`);
  const stored = Number(await page.getAttribute(row(tinyId), 'data-stored'));
  const total = Number(await page.getAttribute(row(tinyId), 'data-total'));
  assert.equal(total, packBytes());
  assert.ok(stored > 0 && stored <= 2_500_000, `stored ${stored}`);
  assert.ok(stored < total, `stored ${stored} of ${total}`);
  assert.equal(await page.isDisabled(`${row(tinyId)} .model-load`), true, 'a partial model cannot be loaded');
  assert.match(await page.getAttribute(`${row(tinyId)} .model-load`, 'title'), /Only a complete model can be loaded/);
  await screenshot(page, 'models-partial-after-reload');

  models.control.down = false;
  models.control.cutAfter = null;
  const mark = models.control.log.length;
  await page.click(`${row(tinyId)} .model-resume`);
  await page.waitForSelector(`${row(tinyId)}[data-state="complete"]`, { timeout: 60_000 });
  const resumed = getBytes(mark);
  const fetched = resumed.reduce((sum, e) => sum + e.sent, 0);
  assert.equal(fetched, total - stored, 'Resume fetched exactly the missing bytes');
  for (const e of resumed) {
    assert.match(e.range, /^bytes=\d+-\d+$/);
    assert.equal(Number(e.range.match(/\d+/)[0]) % CHUNK, 0, `${e.path} resumed from a chunk border (${e.range})`);
  }
  assert.match(await page.textContent(`${row(tinyId)} .model-note`), /Stored and verified: 4\.\d MB\./);
});

test('Verify finds a damaged chunk and Resume fetches only that chunk', async () => {
  const { page } = browser;
  await page.click(`${row(tinyId)} .model-verify`);
  await page.waitForFunction((sel) => /Verified: all \d+ chunks match/.test(document.querySelector(sel)?.textContent ?? ''),
    `${row(tinyId)} .model-note`, { timeout: 30_000 });
  await page.evaluate(async ([id, size]) => {
    const db = await new Promise((ok, fail) => { const r = indexedDB.open('kontext-web'); r.onsuccess = () => ok(r.result); r.onerror = fail; });
    await new Promise((ok, fail) => {
      const tx = db.transaction(['chunks'], 'readwrite');
      tx.objectStore('chunks').put(new Uint8Array(size), [id, 'vae/diffusion_pytorch_model.safetensors', 1]);
      tx.oncomplete = ok; tx.onerror = fail;
    });
    db.close();
  }, [tinyId, CHUNK]);
  await page.click(`${row(tinyId)} .model-verify`);
  await page.waitForSelector(`${row(tinyId)}[data-state="partial"]`, { timeout: 30_000 });
  assert.match(await page.textContent(`${row(tinyId)} .model-note`),
    /^1 of \d+ chunks were damaged \(vae\/diffusion_pytorch_model\.safetensors chunk 1\); they were dropped: Resume fetches them again\.$/);
  assert.equal(await page.isDisabled(`${row(tinyId)} .model-load`), true, 'a damaged model cannot be loaded');
  await screenshot(page, 'models-damaged');
  const mark = models.control.log.length;
  await page.click(`${row(tinyId)} .model-resume`);
  await page.waitForSelector(`${row(tinyId)}[data-state="complete"]`, { timeout: 30_000 });
  const refetched = getBytes(mark);
  assert.deepEqual(refetched.map((e) => [e.path, e.range, e.sent]),
    [['vae/diffusion_pytorch_model.safetensors', `bytes=${CHUNK}-${2 * CHUNK - 1}`, CHUNK]]);
});

test('the stored model passes the memory check, loads from IndexedDB in the worker and runs a 1-step edit', async () => {
  const { page } = browser;
  // The GPU memory setting starts as a guess from the adapter, explained; below what an edit needs, the load is
  // refused with both figures before anything reaches the GPU.
  assert.match(await page.textContent('#gpu-memory-note'), /^A first guess: WebGPU does not tell a page how much memory the GPU has/);
  assert.ok(Number(await page.inputValue('#gpu-memory')) >= 2);
  await setNumber(page, '#gpu-memory', 0.01);
  assert.match(await page.textContent('#gpu-memory-note'), /^Your setting/);
  await page.click(`${row(tinyId)} .model-load`);
  await page.waitForSelector('#model-fit[data-verdict="refused"]', { timeout: 30_000 });
  assert.match(await page.textContent('#fit-refusal'), /an edit needs at least [\d.]+ MB of GPU memory, more than the 10\.0 MB available/);
  assert.notEqual(await page.getAttribute('#model-state', 'data-state'), 'loaded');
  await setNumber(page, '#gpu-memory', 4);
  await page.click(`${row(tinyId)} .model-load`);
  await page.waitForSelector('#model-fit[data-verdict="fits"]', { timeout: 30_000 });
  const fit = await page.textContent('#model-fit');
  assert.match(fit, /Weights on the GPU: DiT [\d.]+ MB, T5 [\d.]+ (KB|MB), CLIP [\d.]+ (KB|MB), VAE [\d.]+ MB\./);
  assert.match(fit, /Within 4\.0 GB of GPU memory, a 1024×1024 edit with one reference peaks at [\d.]+ MB \(/);
  assert.match(fit, /this adapter's largest buffer: [\d.]+ (MB|GB)/);
  assert.match(fit, /It fits this adapter's limits\./);
  await page.waitForSelector('#model-state[data-state="loaded"]', { timeout: 120_000 });
  assert.match(await page.textContent('#model-state'), /^Loaded: tiny · 4\.\d MB · DiT width 64, 2 double \+ 2 single blocks, 4 heads$/);
  await screenshot(page, 'models-loaded-from-store');
  await page.setInputFiles('#reference-input', REFERENCE);
  await page.waitForSelector('.thumbs img');
  await page.fill('#prompt', 'Make the red square blue');
  await setNumber(page, '#area', 128);
  await setNumber(page, '#steps', 1);
  await page.fill('#seed', '7');
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="done"]', { timeout: 300_000 });
  assert.match(await page.textContent('.result figcaption'), /144×96 · seed 7/);
  await screenshot(page, 'models-edit-from-store');
  await assertNativeImage(page, await resultPng(page), ['--prompt', 'Make the red square blue', '--image', REFERENCE,
    '--max-area', String(128 * 128), '--steps', '1', '--guidance', '2.5', '--seed', '7'], 8);
});

test('the same URLs are stored once; pause keeps the stored chunks, Resume finishes, Cancel stops and deletes', async () => {
  const { page } = browser;
  await storeFromUrl(page, `${models.url}/tiny/`);
  await page.waitForFunction(() => /is already stored\.$/.test(document.querySelector('#store-message')?.textContent ?? ''), null, { timeout: 30_000 });
  models.control.pieceDelayMs = 40;
  await storeFromUrl(page, `${models.url}/copy/`);
  await transferStarted(page);
  await page.click('#transfer-pause');
  await page.waitForSelector('#transfer', { state: 'detached', timeout: 30_000 });
  const paused = page.locator('.stored-model[data-state="partial"]');
  await paused.waitFor();
  const id = await paused.getAttribute('data-id');
  assert.notEqual(id, tinyId);
  assert.match(await page.textContent(`${row(id)} .model-note`), /Paused: Resume fetches only the missing chunks\./);
  await page.focus(`${row(id)} .model-resume`);
  await page.keyboard.press('Enter');
  await transferStarted(page);
  await page.click('#transfer-cancel');
  await page.waitForSelector(row(id), { state: 'detached', timeout: 30_000 });
  assert.match(await page.textContent('#store-message'), /Deleted; its space is free again\./);
  models.control.pieceDelayMs = 8;
});

test('a local folder in the diffusers layout and the demo pack are copied into the store', async () => {
  const { page } = browser;
  await page.check('#source-local');
  await page.setInputFiles('#local-folder', PACK);
  await page.waitForSelector('#local-folder-name');
  assert.match(await page.textContent('#local-folder-name'), /^Folder FLUX\.1-Kontext-dev-tiny: \d+ files$/);
  await page.click('#local-store');
  await page.waitForSelector('.stored-model[data-id^="flux-1-kontext-dev-tiny-"][data-state="complete"]', { timeout: 60_000 });
  await page.check('#source-demo');
  await page.click('#demo-store');
  await page.waitForSelector('.stored-model[data-id="demo"][data-state="complete"]', { timeout: 60_000 });
  assert.match(await page.textContent('.stored-model[data-id="demo"] .model-label'), /Demo model/);
  await page.check('#source-catalog');
  assert.match(await page.textContent('#catalog-total'), /about [\d.]+ GB\./);
  assert.match(await page.textContent('#catalog-licence'), /Non-Commercial License/);
  // Real models stream from the store to the GPU, so the catalog choice is planned within the GPU memory
  // setting: within 24 GB it fits, within 2 GB it cannot (T5 alone is larger).
  await setNumber(page, '#gpu-memory', 24);
  assert.match(await page.textContent('#catalog-fit'), /^Within 24\.0 GB of GPU memory, a 1024×1024 edit peaks at an estimated [\d.]+ GB \(/);
  await setNumber(page, '#gpu-memory', 2);
  assert.match(await page.textContent('#catalog-fit'), /cannot be loaded on this device yet: an edit needs at least [\d.]+ GB of GPU memory, more than the 2\.0 GB available/);
  await screenshot(page, 'models-list');
});

test('every control of the model panel has an accessible name', async () => {
  const { page } = browser;
  for (const source of ['#source-catalog', '#source-urls', '#source-local', '#source-demo']) {
    await page.check(source);
    const unnamed = await page.evaluate(() => [...document.querySelectorAll('#model-panel button, #model-panel input, #model-panel select, #model-panel a')]
      .filter((el) => {
        const labelled = el.labels?.length > 0 || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
        return !labelled && !(el.textContent ?? '').trim();
      })
      .map((el) => el.outerHTML.slice(0, 80)));
    assert.deepEqual(unnamed, [], source);
  }
  // The source radios are reachable and switch from the keyboard.
  await page.focus('#source-demo');
  await page.keyboard.press('ArrowLeft');
  assert.equal(await page.getAttribute('#source-form', 'data-source'), 'local');
});

test('deleting every model frees its space and empties the list', async () => {
  const { page } = browser;
  const usage = () => page.evaluate(async () => (await navigator.storage.estimate()).usage);
  const before = await usage();
  while (await page.locator('.stored-model .model-delete').count() > 0) {
    const count = await page.locator('.stored-model').count();
    await page.click('.stored-model .model-delete');
    await page.waitForFunction((n) => document.querySelectorAll('.stored-model').length < n, count, { timeout: 30_000 });
  }
  await page.waitForSelector('#stored-empty');
  let after = await usage();
  for (let i = 0; i < 30 && after >= before; i++) { await page.waitForTimeout(500); after = await usage(); }
  assert.ok(after < before, `usage ${before} → ${after}`);
  await page.waitForFunction((b) => Number(document.querySelector('#storage-summary')?.dataset.usage) < b, before, { timeout: 30_000 });
  await screenshot(page, 'models-deleted');
  assert.deepEqual(browser.problems.filter((p) => !networkNoise(p)), []);
});

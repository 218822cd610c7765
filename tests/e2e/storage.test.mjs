// Storage faults caused outside the page: a second tab resuming the model the first is downloading (it waits,
// nothing is fetched twice, the store ends verified), a chunk that vanished from IndexedDB (the load says so,
// Verify and Resume repair it), another tab upgrading the database mid-download (this tab lets it and says to
// reload), and the whole store cleared behind the page's back (the page notices and says what is gone).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { openApp, screenshot, packBytes } from './browser.mjs';
import { startModelServer, storeFromUrl, row, transferStarted } from './model-server.mjs';

let models;
let browser;
let second;
let modelId;
before(async () => {
  models = await startModelServer();
  browser = await openApp('#stored-empty');
  second = await browser.context.newPage();
  await second.goto(browser.url);
  await second.waitForSelector('#stored-empty');
});
after(async () => { await browser.close(); models.server.close(); });

const sentSince = (mark) => models.control.log.slice(mark).filter((e) => e.method === 'GET').reduce((sum, e) => sum + e.sent, 0);
/** What the browser does when the user comes back to a tab. */
const comeBack = (page) => page.evaluate(() => document.dispatchEvent(new Event('visibilitychange')));

/** Opens the app's database from a page, as another tab (or the browser) would: at `version` when given
 * (an upgrade), deleting the chunk whose key is `deleteChunk` when given. Returns the database's version. */
function onDatabase(page, { version = null, deleteChunk = null } = {}) {
  return page.evaluate(async ({ version, deleteChunk }) => {
    const db = await new Promise((ok, fail) => {
      const r = version ? indexedDB.open('kontext-web', version) : indexedDB.open('kontext-web');
      r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error);
      r.onblocked = () => fail(new Error('blocked by the app'));
    });
    try {
      if (deleteChunk) {
        await new Promise((ok, fail) => {
          const tx = db.transaction(['chunks'], 'readwrite');
          tx.objectStore('chunks').delete(deleteChunk);
          tx.oncomplete = ok; tx.onerror = () => fail(tx.error);
        });
      }
      return db.version;
    } finally { db.close(); }
  }, { version, deleteChunk });
}

test('a second tab resuming the model the first downloads waits for it; nothing is fetched twice', async () => {
  const { page } = browser;
  models.control.pieceDelayMs = 40;
  const mark = models.control.log.length;
  await storeFromUrl(page, `${models.url}/tiny/`);
  await transferStarted(page);
  modelId = await page.getAttribute('#stored-models .stored-model', 'data-id');

  await comeBack(second);
  await second.waitForSelector(`${row(modelId)}[data-state="partial"] .model-resume`, { timeout: 30_000 });
  await second.click(`${row(modelId)} .model-resume`);
  await second.waitForSelector('#transfer[data-action="Waiting for another tab"]', { timeout: 30_000 });
  assert.match(await second.textContent('#transfer-text'), /another tab is storing or verifying this model; this one goes on when it is done/);
  await screenshot(second, 'storage-second-tab-waits');

  await page.waitForSelector(`${row(modelId)}[data-state="complete"]`, { timeout: 120_000 });
  await second.waitForSelector(`${row(modelId)}[data-state="complete"]`, { timeout: 60_000 });
  assert.match(await second.textContent(`${row(modelId)} .model-note`), /Stored and verified: 4\.\d MB\./);
  assert.equal(sentSince(mark), packBytes(), 'every byte was fetched once');
  await second.click(`${row(modelId)} .model-verify`);
  await second.waitForFunction((sel) => /Verified: all \d+ chunks match/.test(document.querySelector(sel)?.textContent ?? ''),
    `${row(modelId)} .model-note`, { timeout: 60_000 });
  models.control.pieceDelayMs = 8;
});

test('a chunk that vanished from storage stops the load with a message; Verify and Resume fetch it again', async () => {
  const { page } = browser;
  await onDatabase(page, { deleteChunk: [modelId, 'transformer/diffusion_pytorch_model.safetensors', 3] });
  await page.click(`${row(modelId)} .model-load`);
  await page.waitForSelector('#model-state[data-state="failed"]', { timeout: 120_000 });
  assert.match(await page.textContent('#model-state'),
    /transformer\/diffusion_pytorch_model\.safetensors chunk 3 of model "[^"]+" is damaged in storage; verify the model to fetch it again/);
  await screenshot(page, 'storage-chunk-vanished');
  await page.click(`${row(modelId)} .model-verify`);
  await page.waitForSelector(`${row(modelId)}[data-state="partial"]`, { timeout: 60_000 });
  assert.match(await page.textContent(`${row(modelId)} .model-note`),
    /^1 of \d+ chunks were damaged \(transformer\/diffusion_pytorch_model\.safetensors chunk 3\); they were dropped/);
  const mark = models.control.log.length;
  await page.click(`${row(modelId)} .model-resume`);
  await page.waitForSelector(`${row(modelId)}[data-state="complete"]`, { timeout: 60_000 });
  assert.equal(sentSince(mark), 262144, 'only the vanished chunk was fetched');
  await page.click(`${row(modelId)} .model-load`);
  await page.waitForSelector('#model-state[data-state="loaded"]', { timeout: 120_000 });
});

test('another tab upgrading the database is never blocked by this one, which stops its download and says to reload', async () => {
  const { page } = browser;
  models.control.pieceDelayMs = 40;
  // A second copy (other URLs, so another model: the same URLs would find the one stored).
  await storeFromUrl(page, `${models.url}/copy/`);
  await transferStarted(page);
  assert.equal(await page.getAttribute('#transfer', 'data-action'), 'Downloading');
  // A newer kontext-web in the second tab opens the database at the next version: not blocked (the first tab
  // closed its connection at once).
  const version = await onDatabase(second, { version: 2 });
  assert.equal(version, 2);
  // The page says so at once; its next open of the old version is refused the same way.
  await page.waitForFunction(() => /upgraded (by a newer kontext-web|the model store).* reload this page/
    .test(document.querySelector('#store-message[data-kind="error"]')?.textContent ?? ''), null, { timeout: 30_000 });
  await page.waitForSelector('#transfer', { state: 'detached', timeout: 60_000 });
  const upgradedId = await page.evaluate((done) => [...document.querySelectorAll('.stored-model')].map((r) => r.dataset.id)
    .find((id) => id !== done), modelId);
  assert.match(await page.textContent(`${row(upgradedId)} .model-note`), /reload this page\. What was stored is kept/);
  await screenshot(page, 'storage-upgraded-elsewhere');
  models.control.pieceDelayMs = 8;
});

test('a store cleared behind the page is noticed, named, and can be filled again', async () => {
  const { page } = browser;
  // The upgraded database of the last test goes, as when the browser evicts the site's storage.
  const deleted = await second.evaluate(() => new Promise((ok, fail) => {
    const r = indexedDB.deleteDatabase('kontext-web');
    r.onsuccess = () => ok('deleted'); r.onerror = () => fail(r.error); r.onblocked = () => ok('blocked');
  }));
  assert.equal(deleted, 'deleted', 'no connection of the app held the deletion back');
  await page.click(`${row(modelId)} .model-load`);
  await page.waitForSelector('#model-fit[data-verdict="failed"]', { timeout: 30_000 });
  await page.waitForFunction(() => /^No longer stored: /.test(document.querySelector('#store-message')?.textContent ?? ''), null, { timeout: 30_000 });
  assert.match(await page.textContent('#store-message'),
    /^No longer stored: .*tiny.*\. The browser cleared this site's storage \(to free disk space, or site data was deleted\), or another tab deleted them; add them again to use them\./);
  await page.waitForSelector('#stored-empty');
  await screenshot(page, 'storage-cleared');
  await page.check('#source-demo');
  await page.click('#demo-store');
  await page.waitForSelector('.stored-model[data-id="demo"][data-state="complete"]', { timeout: 60_000 });
  await page.click('.stored-model[data-id="demo"] .model-load');
  await page.waitForSelector('#model-state[data-state="loaded"]', { timeout: 120_000 });
});

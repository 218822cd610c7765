// The promise of the PWA: after one visit with a model stored in IndexedDB, the app loads and edits with the
// network off — the shell from the service worker's cache, the weights from the model store.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serveDist, launch, screenshot, setNumber } from './browser.mjs';

let served;
let browser;
before(async () => {
  served = await serveDist();
  browser = await launch({ webgpu: true });
});
after(async () => { await browser.close(); served.server.close(); });

test('with the demo pack stored, the app reloads and edits with the network off', async () => {
  const { page, context } = browser;
  await page.goto(served.url);
  await page.waitForSelector('#model-panel');
  await page.waitForFunction(async () => (await navigator.serviceWorker.ready) && navigator.serviceWorker.controller !== null, null, { timeout: 60_000 });
  await page.check('#source-demo');
  await page.click('#demo-store');
  await page.waitForSelector('.stored-model[data-id="demo"][data-state="complete"]', { timeout: 60_000 });

  await context.setOffline(true);
  served.server.closeAllConnections();
  served.server.close();
  await page.reload();
  await page.waitForSelector('.stored-model[data-id="demo"][data-state="complete"]', { timeout: 60_000 });
  // Really offline: model files are never in the service worker's cache, and the network is gone.
  assert.equal(await page.evaluate(() => fetch('demo-model/vae/config.json').then(() => 'online', () => 'offline')), 'offline');
  await page.click('.stored-model[data-id="demo"] .model-load');
  await page.waitForSelector('#model-state[data-state="loaded"]', { timeout: 120_000 });
  await page.fill('#prompt', 'a yellow sun');
  await setNumber(page, '#area', 64);
  await setNumber(page, '#steps', 1);
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="done"]', { timeout: 120_000 });
  await screenshot(page, 'offline-edit');
  assert.deepEqual(browser.problems.filter((p) => /CSP|Content Security Policy|page error/.test(p)), []);
});

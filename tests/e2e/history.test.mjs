// References by drag & drop, paste and reordering; the history of results in IndexedDB: kept across a reload,
// re-run with the same seed gives the same image, delete removes it for good.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { openApp, screenshot, setNumber, loadDemo, resultPng, REFERENCE } from './browser.mjs';

const SECOND = 'tests/fixtures/tiny/golden/multiref_ref2.png';

let browser;
before(async () => { browser = await openApp('#reference-drop'); });
after(() => browser.close());

/** Dispatches `type` (drop or paste) carrying `files` ({name, mime, b64}) at `selector`. */
async function sendFiles(page, selector, type, files) {
  await page.evaluate(([selector, type, files]) => {
    const transfer = new DataTransfer();
    for (const f of files) {
      const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
      transfer.items.add(new File([bytes], f.name, { type: f.mime }));
    }
    const target = document.querySelector(selector);
    const event = type === 'drop'
      ? new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true })
      : new ClipboardEvent('paste', { clipboardData: transfer, bubbles: true, cancelable: true });
    target.dispatchEvent(event);
  }, [selector, type, files]);
}

const file = (path, name, mime = 'image/png') => ({ name, mime, b64: readFileSync(path).toString('base64') });
const names = (page) => page.$$eval('.thumbs img', (imgs) => imgs.map((img) => img.alt));

test('references come by drop and paste, are reordered from the keyboard, and non-images are refused', async () => {
  const { page } = browser;
  await sendFiles(page, '#reference-drop', 'drop', [file(REFERENCE, 'dropped.png'), file('README.md', 'notes.txt', 'text/plain')]);
  await page.waitForFunction(() => document.querySelectorAll('.thumbs img').length === 1);
  assert.match(await page.textContent('#reference-drop [role="alert"]'), /notes\.txt is not a PNG, JPEG or WebP image/);
  await sendFiles(page, 'body', 'paste', [file(SECOND, 'pasted.png')]);
  await page.waitForFunction(() => document.querySelectorAll('.thumbs img').length === 2);
  assert.deepEqual(await names(page), ['dropped.png', 'pasted.png']);
  assert.equal(await page.isDisabled('[aria-label="move dropped.png earlier"]'), true);
  await page.focus('[aria-label="move pasted.png earlier"]');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('.thumbs img')?.alt === 'pasted.png');
  assert.deepEqual(await names(page), ['pasted.png', 'dropped.png']);
  assert.equal(await page.isDisabled('[aria-label="move dropped.png later"]'), true, 'the last cannot move later');
  await page.click('[aria-label="move pasted.png later"]');
  await page.waitForFunction(() => document.querySelector('.thumbs img')?.alt === 'dropped.png');
  await page.click('[aria-label="move dropped.png later"]');
  await page.waitForFunction(() => document.querySelector('.thumbs img')?.alt === 'pasted.png');
  const stray = await page.$$eval('.thumbs li', (items) => items.map((li) => li.textContent.replace(/[◀▶✕\s]/g, '')));
  assert.deepEqual(stray, ['', ''], 'the thumbnails hold only their buttons');
  await screenshot(page, 'references');
  await page.click('[aria-label="remove pasted.png"]');
  await page.waitForFunction(() => document.querySelectorAll('.thumbs img').length === 1);
});

test('a result is kept in the history across a reload, re-runs to the same image, and is deleted for good', async () => {
  const { page } = browser;
  await loadDemo(page);
  await page.fill('#prompt', 'a blue square');
  await setNumber(page, '#area', 64);
  await setNumber(page, '#steps', 2);
  await page.fill('#seed', '99');
  await page.click('#generate');
  await page.waitForSelector('#job[data-state="done"]', { timeout: 300_000 });
  const first = await resultPng(page);
  await page.waitForSelector('#history li[data-id]');
  assert.match(await page.textContent('#history li'), /a blue square.*2 steps · guidance 2\.5 · seed 99/s);
  assert.equal(await page.locator('#history .history-references img').count(), 1);

  await page.reload();
  await page.waitForSelector('#history li[data-id]');
  assert.match(await page.textContent('#history li'), /a blue square/);
  await loadDemo(page);
  await page.click('#history .history-rerun');
  await page.waitForSelector('#job[data-state="running"]', { timeout: 10_000 });
  assert.equal(await page.inputValue('#prompt'), 'a blue square');
  assert.equal(await page.inputValue('#seed'), '99');
  await page.waitForSelector('#job[data-state="done"]', { timeout: 300_000 });
  assert.equal(await resultPng(page), first, 'the same recipe and seed give the same PNG');
  await page.waitForFunction(() => document.querySelectorAll('#history li[data-id]').length === 2);
  await screenshot(page, 'history');

  for (let left = 2; left > 0; left--) {
    await page.click('#history .history-delete');
    await page.waitForFunction((n) => document.querySelectorAll('#history li[data-id]').length === n - 1, left);
  }
  await page.reload();
  await page.waitForSelector('#history-empty');
  assert.deepEqual(browser.problems, []);
});

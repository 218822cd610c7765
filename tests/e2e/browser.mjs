// Shared helpers for the end-to-end tests: a loopback server on dist/ and Debian's Chromium with WebGPU on
// SwiftShader (or without WebGPU, to test the explanation users get).
import { chromium } from 'playwright-core';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../../www/serve.mjs';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = join(ROOT, 'tests', 'e2e', 'artifacts');

const BASE_ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run', '--disable-quic', '--disable-dev-shm-usage'];
const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'];

export async function serveDist() {
  const server = await startServer(join(ROOT, 'dist'), '127.0.0.1', 0);
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}

export async function launch({ webgpu = true } = {}) {
  const profile = await mkdtemp(join(tmpdir(), 'kontext-e2e-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [...BASE_ARGS, ...(webgpu ? WEBGPU_ARGS : [])],
  });
  const page = context.pages()[0] ?? await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  return {
    context, page, problems,
    async close() { await context.close(); await rm(profile, { recursive: true, force: true }); },
  };
}

/** Serves dist/, opens the app in Chromium with WebGPU and waits for `selector` on it. The result is `launch`'s
 * (page, context, problems) with the app's `url`; its `close()` ends the browser and the server. */
export async function openApp(selector) {
  const served = await serveDist();
  const browser = await launch({ webgpu: true });
  await browser.page.goto(served.url);
  if (selector) await browser.page.waitForSelector(selector);
  return { ...browser, url: served.url, async close() { await browser.close(); served.server.close(); } };
}

export async function screenshot(page, name) {
  await mkdir(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Types `value` into the number field `selector` and fires its change event, as a user leaving the field. */
export async function setNumber(page, selector, value) {
  await page.fill(selector, String(value));
  await page.dispatchEvent(selector, 'change');
}

// Shared helpers for the end-to-end tests: a loopback server on dist/ and Debian's Chromium with WebGPU on
// SwiftShader (or without WebGPU, to test the explanation users get); the demo pack and its file list (read from
// the Rust source); the native CLI; PSNR of two PNGs; the app's common steps.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir, homedir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../../www/serve.mjs';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = join(ROOT, 'tests', 'e2e', 'artifacts');

/** The tiny demo pack (diffusers layout), served with the app as demo-model/; paths are from the repository root. */
export const PACK = 'tests/fixtures/tiny/FLUX.1-Kontext-dev-tiny';
/** The real-width packs' ComfyUI file set (`make packs`): folder, and the file of each part. */
export const REAL_WIDTH_FILES = join(process.env.KONTEXT_REAL_WIDTH ?? join(homedir(), '.cache', 'kontext-web', 'packs', 'real_width'), 'bfl_gguf');
export const COMFY_FILES = { transformer: 'transformer_bfl-Q4_0.gguf', t5: 't5_encoder-Q8_0.gguf', clip: 'clip_l.safetensors', vae: 'ae.safetensors' };

/** Throws, naming `make packs`, when a file of the real-width ComfyUI set is missing. */
export function requireRealWidth() {
  for (const file of Object.values(COMFY_FILES)) {
    if (!existsSync(join(REAL_WIDTH_FILES, file))) throw new Error(`${join(REAL_WIDTH_FILES, file)} is missing: make the real-width packs with \`make packs\``);
  }
}

/** The tiny-types pack (`make packs`): the tiny model with its DiT as a GGUF of every type the reader supports. */
export const TINY_TYPES_PACK = process.env.KONTEXT_TINY_TYPES ?? join(homedir(), '.cache', 'kontext-web', 'packs', 'tiny_types');

/** The odd-widths pack (`make packs`): a tiny Kontext with widths the committed ones lack (heads of 48, …). */
export const ODD_WIDTHS_PACK = process.env.KONTEXT_ODD_WIDTHS ?? join(homedir(), '.cache', 'kontext-web', 'packs', 'odd_widths');

/** The reference image of the tiny model's goldens (96×64). */
export const REFERENCE = 'tests/fixtures/tiny/golden/reference_input.png';

const BASE_ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run', '--disable-quic', '--disable-dev-shm-usage'];
const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'];

export async function serveDist() {
  const server = await startServer(join(ROOT, 'dist'), '127.0.0.1', 0);
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}

/** Collects `page`'s uncaught errors and console errors into `problems`; returns the page. */
export function watchProblems(page, problems) {
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  return page;
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
  watchProblems(page, problems);
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

/** Opens the model panel when a loaded model has folded it to its status line. */
export async function unfoldModelPanel(page) {
  if (await page.isVisible('#model-panel-toggle[aria-expanded="false"]')) await page.click('#model-panel-toggle');
}

/** Clicks "Load the demo model" and waits until the worker has loaded it. */
export async function loadDemo(page) {
  await unfoldModelPanel(page);
  await page.click('#load-demo');
  await page.waitForSelector('#model-state[data-state="loaded"]', { timeout: 120_000 });
}

/** The result's kept PNG (the Download link's), as base64. */
export function resultPng(page) {
  return page.evaluate(async () => {
    const bytes = new Uint8Array(await (await fetch(document.querySelector('#download').href)).arrayBuffer());
    let s = ''; for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  });
}

/** The result canvas (`#result-canvas`, drawn by the worker) in `target` (a page or a frame) against a PNG given
 * as base64: both sizes, the largest channel difference, and (a negative control) the largest difference from the
 * PNG moved one pixel to the right. Both are read through a 2D canvas, the PNG without colour conversion. */
export function canvasAgainstPng(target, b64) {
  return target.evaluate(async (b64) => {
    const canvas = document.querySelector('#result-canvas');
    const png = await createImageBitmap(new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: 'image/png' }),
      { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    const [w, h] = [png.width, png.height];
    const pixels = (source, dx) => {
      const context = new OffscreenCanvas(w, h).getContext('2d');
      context.drawImage(source, dx, 0);
      return context.getImageData(0, 0, w, h).data;
    };
    const drawn = pixels(canvas, 0);
    const largest = (other) => {
      let most = 0;
      for (let y = 0; y < h; y++) for (let x = 1; x < w; x++) for (let c = 0; c < 3; c++) {
        const at = (y * w + x) * 4 + c;
        most = Math.max(most, Math.abs(drawn[at] - other[at]));
      }
      return most;
    };
    return { canvas: [canvas.width, canvas.height], png: [w, h], maxDiff: largest(pixels(png, 0)), shiftedDiff: largest(pixels(png, 1)) };
  }, b64);
}

/** The RGBA pixels of two PNGs given as base64, decoded by the browser in `page`: `[{ w, h, data }, …]`. */
function decodeTwo(page, a, b) {
  return page.evaluate(async (images) => Promise.all(images.map(async (b64) => {
    const bitmap = await createImageBitmap(new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: 'image/png' }));
    const ctx = new OffscreenCanvas(bitmap.width, bitmap.height).getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    return { w: bitmap.width, h: bitmap.height, data: Array.from(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data) };
  })), [a, b]);
}

/** PSNR in dB over the RGB channels of two PNGs given as base64, decoded by the browser in `page`: Infinity when
 * they are equal. Images of different sizes (width and height compared, not only the pixel count) throw. */
export async function psnr(page, a, b) {
  const [x, y] = await decodeTwo(page, a, b);
  if (x.w !== y.w || x.h !== y.h) throw new Error(`PSNR of two images of different sizes: ${x.w}×${x.h} vs ${y.w}×${y.h}`);
  let sum = 0, n = 0;
  for (let i = 0; i < x.data.length; i++) { if (i % 4 === 3) continue; const d = x.data[i] - y.data[i]; sum += d * d; n++; }
  const mse = sum / n;
  return mse === 0 ? Infinity : 10 * Math.log10(255 * 255 / mse);
}

/** The largest difference of one RGB channel between two PNGs given as base64, decoded by the browser in
 * `page`, in LSB (Infinity for images of different sizes). */
export async function maxPixelDifference(page, a, b) {
  const [x, y] = await decodeTwo(page, a, b);
  if (x.w !== y.w || x.h !== y.h) return Infinity;
  let max = 0;
  for (let i = 0; i < x.data.length; i++) if (i % 4 !== 3) max = Math.max(max, Math.abs(x.data[i] - y.data[i]));
  return max;
}

/** The native CLI as cargo builds it (`make test-e2e` does): `$CARGO_TARGET_DIR/debug/kontext`, the target
 * folder defaulting to ~/.cache/kontext-web/target as in the Makefile. */
export const KONTEXT = join(process.env.CARGO_TARGET_DIR ?? join(homedir(), '.cache', 'kontext-web', 'target'), 'debug', 'kontext');

/** Runs the native CLI with `args` in the repository root and returns its stdout; `options` go to
 * `execFileSync`. A non-zero exit throws with the CLI's stderr in the message. */
export function runNative(args, options = {}) {
  if (!existsSync(KONTEXT)) throw new Error(`no native CLI at ${KONTEXT}: build it with \`cargo build --bin kontext\``);
  return execFileSync(KONTEXT, args, { cwd: ROOT, stdio: 'pipe', encoding: 'utf8', ...options });
}

/** `kontext edit --model PACK --backend wgpu` with `args` (prompt, images, size, steps, seed…), writing into a
 * temporary folder; returns the PNG, as base64, to compare with the browser's. */
export function nativeEdit(args) {
  const dir = mkdtempSync(join(tmpdir(), 'kontext-native-'));
  try {
    const out = join(dir, 'native.png');
    runNative(['edit', '--model', PACK, '--backend', 'wgpu', ...args, '--out', out]);
    return readFileSync(out).toString('base64');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `nativeEdit` with `--dump`: the PNG (base64) and the final packed latents (`latents`, a Float32Array of
 * `[tokens × 64]`, with `shape`). `model`: the arguments that give the model (the demo pack's folder). */
export function nativeEditWithLatents(args, model = ['--model', PACK]) {
  const dir = mkdtempSync(join(tmpdir(), 'kontext-native-'));
  try {
    const [out, dump] = [join(dir, 'native.png'), join(dir, 'dump.safetensors')];
    runNative(['edit', ...model, '--backend', 'wgpu', ...args, '--out', out, '--dump', dump]);
    const { data, shape } = safetensorsF32(readFileSync(dump), 'latents');
    return { png: readFileSync(out).toString('base64'), latents: data, shape: shape.slice(-2) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The F32 tensor `name` of a safetensors file's bytes: `{ data: Float32Array, shape }`. */
export function safetensorsF32(bytes, name) {
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  const entry = header[name];
  if (entry?.dtype !== 'F32') throw new Error(`no F32 tensor ${name} in the file: ${Object.keys(header)}`);
  const [begin, end] = entry.data_offsets.map((o) => 8 + headerLength + o);
  const copy = Uint8Array.from(bytes.subarray(begin, end));
  return { data: new Float32Array(copy.buffer), shape: entry.shape };
}

/** The largest |a[i] − b[i]| of two equally long arrays (Infinity when their lengths differ). */
export function maxAbsDifference(a, b) {
  if (a.length !== b.length) return Infinity;
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

/** Asserts that `png` (base64, from the browser) is within ±2 LSB of `nativeEdit(args)`, and that the same
 * comparison fails against the native edit with `--seed` replaced by `otherSeed` (the negative control). */
export async function assertNativeImage(page, png, args, otherSeed) {
  const lsb = await maxPixelDifference(page, png, nativeEdit(args));
  assert.ok(lsb <= 2, `the image differs from the native one by ${lsb} LSB`);
  const seed = args.indexOf('--seed');
  if (seed < 0) throw new Error('assertNativeImage needs --seed in args');
  const other = args.map((a, i) => (i === seed + 1 ? String(otherSeed) : a));
  const wrong = await maxPixelDifference(page, png, nativeEdit(other));
  assert.ok(wrong > 2, `seed ${otherSeed} gives an image within ${wrong} LSB: the comparison cannot tell seeds apart`);
}

const LOADER = 'src/pipeline/loader.rs';

/** The files of a diffusers-layout folder that the app reads and stores, with their sizes in PACK: the list is
 * `DIFFUSERS_FILES` as LOADER declares it, read from the Rust source at test time (not copied here), and every
 * size is the file's on disk. Throws when the array cannot be read or names a file the pack lacks. */
export function packFiles() {
  const source = readFileSync(join(ROOT, LOADER), 'utf8');
  const array = source.match(/pub const DIFFUSERS_FILES: \[&str; (\d+)\] = \[([^\]]*)\];/);
  if (!array) throw new Error(`${LOADER}: no \`pub const DIFFUSERS_FILES: [&str; N] = [...];\` found to read the pack's file list from`);
  const body = array[2].replace(/\/\/[^\n]*/g, '');
  const paths = [...body.matchAll(/"([^"\\]*)"/g)].map((m) => m[1]);
  const rest = body.replace(/"([^"\\]*)"/g, '').replace(/[\s,]/g, '');
  if (rest !== '') throw new Error(`${LOADER}: DIFFUSERS_FILES holds something other than plain string literals: ${rest}`);
  if (paths.length !== Number(array[1]) || paths.length === 0) {
    throw new Error(`${LOADER}: DIFFUSERS_FILES declares ${array[1]} files but ${paths.length} were read`);
  }
  return paths.map((path) => {
    let size;
    try { size = statSync(join(ROOT, PACK, path)).size; } catch { throw new Error(`${path} is in DIFFUSERS_FILES (${LOADER}) but not in ${PACK}`); }
    return { path, size };
  });
}

/** Bytes of the pack's files that a diffusers-layout URL source stores (and fetches, once each). */
export function packBytes() {
  return packFiles().reduce((sum, f) => sum + f.size, 0);
}

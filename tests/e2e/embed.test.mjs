// The embed (`/?embed`) and its postMessage API, driven from a parent page on another origin: ready, load with
// progress, an edit with a PNG Blob whose latents and image equal the native CLI's for the same seed (≤ 5e-4, ±2 LSB;
// another seed, prompt or one reference fewer fails the same comparison), an edit with a step cache reusing the
// steps the native CLI reuses, a masked edit (mask, strength, crop, extra reference) equal to the native CLI's, cancel,
// bad requests answered with errors, messages from an origin not in `?allow=` ignored. Then the PWA: after one
// visit the app shell loads with the network off. No Content-Security-Policy violation anywhere.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { serveDist, launch, screenshot, watchProblems, packBytes, nativeEditWithLatents, maxAbsDifference, maxPixelDifference, canvasAgainstPng, REFERENCE } from './browser.mjs';
import { startParent, answer } from './embed-parent.mjs';

const PROMPT = 'Make the red square blue and add a small yellow sun in the sky';
const SEED = 1234;
const [WIDTH, HEIGHT] = [144, 96]; // the reference's 3:2 at 13 824 px: 54 noise + 54 reference tokens

const CSP_PROBE = () => {
  const report = (e) => console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`);
  document.addEventListener('securitypolicyviolation', report);
};

let app, parent, intruder, browser, parentPage;
const problems = [];
const watch = (page) => watchProblems(page, problems);

before(async () => {
  app = await serveDist();
  parent = await startParent();
  intruder = await startParent();
  browser = await launch({ webgpu: true });
  await browser.context.addInitScript(CSP_PROBE);
  parentPage = watch(await browser.context.newPage());
  const appOrigin = app.url.slice(0, -1);
  const embedUrl = `${app.url}?embed&allow=${encodeURIComponent(parent.url.slice(0, -1))}`;
  await parentPage.goto(`${parent.url}?app=${encodeURIComponent(embedUrl)}`);
  assert.notEqual(new URL(parent.url).origin, appOrigin);
});
after(async () => {
  await browser.close();
  for (const s of [app, parent, intruder]) { s.server.closeAllConnections?.(); s.server.close(); }
});

test('the embed says ready to its allowed parent and shows only the compact view', async () => {
  await parentPage.waitForFunction(() => window.messages.some((m) => m.data?.type === 'kontext:ready'), null, { timeout: 60_000 });
  const ready = await parentPage.evaluate(() => window.messages.filter((m) => m.data?.type === 'kontext:ready'));
  assert.equal(ready.length, 1);
  assert.equal(ready[0].origin, app.url.slice(0, -1));
  const frame = parentPage.frameLocator('#app');
  await frame.locator('#embed').waitFor();
  assert.equal(await frame.locator('#embed-cancel').isDisabled(), true);
  assert.equal(await frame.locator('#model-panel, #device-report, #editor').count(), 0);
});

test('bad requests from the allowed parent get an error with their id', async () => {
  await parentPage.evaluate(() => {
    send({ type: 'kontext:load', id: 'empty', source: {} });
    send({ type: 'kontext:edit', id: 'half-size', prompt: 'x', width: 64 });
    send({ type: 'kontext:frobnicate', id: 'unknown' });
    send({ type: 'kontext:edit', id: 'mag-without-ratios', prompt: 'x', cache: { kind: 'mag', threshold: 0.06 } });
    send({ type: 'kontext:edit', id: 'tea-cache', prompt: 'x', cache: { kind: 'tea', threshold: 0.1 } });
  });
  assert.match((await answer(parentPage, 'empty', 'kontext:loaded', 10_000)).message, /base folder URL or single-file URLs/);
  assert.match((await answer(parentPage, 'half-size', 'kontext:result', 10_000)).message, /both width and height/);
  assert.match((await answer(parentPage, 'unknown', 'kontext:result', 10_000)).message, /unknown message type kontext:frobnicate/);
  assert.match((await answer(parentPage, 'mag-without-ratios', 'kontext:result', 10_000)).message, /MagCache needs the model's magnitude ratios/);
  assert.match((await answer(parentPage, 'tea-cache', 'kontext:result', 10_000)).message, /unknown variant `tea`/);
});

test('kontext:load stores the demo model with progress in bytes, then kontext:loaded', async () => {
  await parentPage.evaluate((base) => send({ type: 'kontext:load', id: 'demo', source: { base } }), `${app.url}demo-model/`);
  const loaded = await answer(parentPage, 'demo', 'kontext:loaded', 120_000);
  assert.equal(loaded.type, 'kontext:loaded', loaded.message);
  const progress = await parentPage.evaluate(() => window.messages.filter((m) => m.data?.id === 'demo' && m.data.type === 'kontext:progress').map((m) => m.data));
  const downloads = progress.filter((p) => p.phase === 'downloading');
  assert.ok(downloads.length > 0 && downloads.every((p) => p.total === packBytes()), JSON.stringify(downloads));
  assert.equal(downloads.at(-1).done, packBytes());
  assert.ok(progress.every((p) => Number.isInteger(p.done) && Number.isInteger(p.total) && p.done <= p.total));
  // Uploads to the GPU are counted in bytes (the demo DiT alone is about 2 MB), each part up to its total.
  const uploads = progress.filter((p) => p.phase === 'loading' && p.total > 100_000);
  assert.ok(uploads.length >= 2 && uploads.some((p) => p.done === p.total) && uploads.some((p) => p.done < p.total),
    JSON.stringify(progress.filter((p) => p.phase === 'loading')));
});

test('kontext:edit with a PNG Blob and returnLatents returns a PNG Blob and the latents of the native CLI for the same seed (≤ 5e-4, ±2 LSB); another seed, prompt or one reference fewer does not', async () => {
  const reference = readFileSync(REFERENCE).toString('base64');
  await parentPage.evaluate(([b64, prompt, seed, width, height]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    send({ type: 'kontext:edit', id: 7, prompt, images: [new Blob([bytes], { type: 'image/png' })], width, height, steps: 4, guidance: 2.5, seed, returnLatents: true });
  }, [reference, PROMPT, SEED, WIDTH, HEIGHT]);
  const result = await parentPage.waitForFunction(() => window.messages.find((m) => m.data?.id === 7 && /result|error/.test(m.data.type))?.data ?? null,
    null, { timeout: 300_000 });
  const summary = await result.evaluate(async (r) => {
    if (r.type !== 'kontext:result') return { error: r.message };
    const bytes = new Uint8Array(await r.image.arrayBuffer());
    let s = ''; for (const b of bytes) s += String.fromCharCode(b);
    const bitmap = await createImageBitmap(r.image);
    return { isBlob: r.image instanceof Blob, mime: r.image.type, seed: r.seed, width: r.width, height: r.height, bitmap: [bitmap.width, bitmap.height], png: btoa(s),
      latentsType: r.latents?.constructor.name, latents: Array.from(r.latents ?? []), latentsShape: r.latentsShape };
  });
  assert.equal(summary.error, undefined, summary.error);
  assert.deepEqual([summary.isBlob, summary.mime, summary.seed, summary.width, summary.height, summary.bitmap],
    [true, 'image/png', SEED, WIDTH, HEIGHT, [WIDTH, HEIGHT]]);
  const phases = await parentPage.evaluate(() => window.messages.filter((m) => m.data?.id === 7 && m.data.type === 'kontext:progress').map((m) => m.data.phase));
  for (const phase of ['encoding text', 'encoding references', 'denoising', 'decoding']) assert.ok(phases.includes(phase), `no ${phase} progress: ${phases}`);
  await parentPage.frameLocator('#app').locator('#result-canvas[data-showing="result"]').waitFor();
  await screenshot(parentPage, 'embed-result');
  // The embed view shows the result on the canvas the worker drew: the kontext:result PNG's pixels (±1 LSB).
  const frame = parentPage.frames().find((f) => f.url().startsWith(app.url));
  const drawn = await canvasAgainstPng(frame, summary.png);
  console.log(`embed result canvas against the kontext:result PNG: ${JSON.stringify(drawn)}`);
  assert.deepEqual([drawn.canvas, drawn.png], [[WIDTH, HEIGHT], [WIDTH, HEIGHT]]);
  assert.ok(drawn.maxDiff <= 1, `the canvas differs from the PNG by ${drawn.maxDiff}`);
  assert.ok(drawn.shiftedDiff > 1, `the canvas is within ${drawn.shiftedDiff} of the PNG moved by a pixel: the check cannot tell`);

  const args = (prompt, seed, images) => ['--prompt', prompt, ...images.flatMap((i) => ['--image', i]), '--width', String(WIDTH),
    '--height', String(HEIGHT), '--max-area', String(WIDTH * HEIGHT), '--steps', '4', '--guidance', '2.5', '--seed', String(seed)];
  const native = nativeEditWithLatents(args(PROMPT, SEED, [REFERENCE]));
  assert.equal(summary.latentsType, 'Float32Array');
  assert.deepEqual(summary.latentsShape, native.shape);
  assert.deepEqual(native.shape, [(WIDTH / 16) * (HEIGHT / 16), 64]);
  const delta = maxAbsDifference(summary.latents, native.latents);
  assert.ok(delta <= 5e-4, `latents differ from the native run's by ${delta}`);
  const lsb = await maxPixelDifference(parentPage, summary.png, native.png);
  assert.ok(lsb <= 2, `the image differs from the native one by ${lsb} LSB`);
  // Negative controls: the same comparison fails for another seed, another prompt, one reference fewer.
  for (const [what, control] of [['another seed', args(PROMPT, SEED + 1, [REFERENCE])], ['another prompt', args('a yellow field', SEED, [REFERENCE])],
    ['one reference fewer', args(PROMPT, SEED, [])]]) {
    const wrong = maxAbsDifference(summary.latents, nativeEditWithLatents(control).latents);
    assert.ok(wrong > 5e-4, `${what}: latents within ${wrong} of the browser's; the comparison cannot tell`);
    console.log(`${what}: latents max |Δ| ${wrong}`);
  }
  console.log(`browser vs native: latents max |Δ| ${delta}, image ${lsb} LSB`);
});

test('kontext:edit with previews on and off, side by side: the per-step time of each and the buffers read back (the 2D canvas on this SwiftShader reads one per preview, the WebGPU canvas none)', async () => {
  const reference = readFileSync(REFERENCE).toString('base64');
  const run = (id, previews) => parentPage.evaluate(([b64, prompt, id, previews, width, height]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    send({ type: 'kontext:edit', id, prompt, images: [new Blob([bytes], { type: 'image/png' })], width, height, steps: 4, seed: 5, previews });
  }, [reference, PROMPT, id, previews, WIDTH, HEIGHT]);
  const answered = async (id) => (await parentPage.waitForFunction((id) => window.messages.find((m) => m.data?.id === id && /result|error/.test(m.data.type))?.data ?? null,
    id, { timeout: 300_000 })).evaluate((r) => (r.type !== 'kontext:result' ? { error: r.message }
    : { readbacks: r.readbacks, stepReadbacks: r.stepReadbacks, denoiseMillis: r.denoiseMillis }));
  await run('previews-off', false);
  const off = await answered('previews-off');
  await run('previews-on', true);
  const on = await answered('previews-on');
  assert.equal(off.error, undefined, off.error);
  assert.equal(on.error, undefined, on.error);
  console.log(`previews off: ${(off.denoiseMillis / 4).toFixed(0)} ms/step, readbacks ${off.readbacks} (${off.stepReadbacks} in the steps); `
    + `on: ${(on.denoiseMillis / 4).toFixed(0)} ms/step, readbacks ${on.readbacks} (${on.stepReadbacks} in the steps); `
    + `on/off ${(on.denoiseMillis / off.denoiseMillis).toFixed(3)}`);
  assert.ok(off.denoiseMillis > 0 && on.denoiseMillis > 0);
  // Without previews only the image is read back; with them, the 2D canvas path adds one readback per step here.
  assert.deepEqual([off.readbacks, off.stepReadbacks], [1, 0]);
  const frame = parentPage.frames().find((f) => f.url().startsWith(app.url));
  const path = await frame.evaluate(() => document.querySelector('#result-canvas')?.dataset.showing);
  assert.equal(path, 'result');
  assert.ok([[1, 0], [5, 4]].some(([all, steps]) => on.readbacks === all && on.stepReadbacks === steps), JSON.stringify(on));
});

test('kontext:edit with cache {kind: "fbc"} reuses the steps the native CLI and diffusers reuse (progress says reused) with the CLI\'s latents (≤ 5e-4); without the cache the latents differ', async () => {
  // The tiny golden call at 12 steps from seed 0 (diffusers' golden noise): FirstBlockCacheConfig(threshold=0.42)
  // reuses steps 2, 3, 5, 7 and 10 (tests/fixtures/tiny/golden/golden_cache_meta.json).
  const [width, height, steps, threshold] = [64, 80, 12, 0.42];
  const reference = readFileSync(REFERENCE).toString('base64');
  await parentPage.evaluate(([b64, prompt, width, height, steps, threshold]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    send({ type: 'kontext:edit', id: 'cached', prompt, images: [new Blob([bytes], { type: 'image/png' })], width, height, resize: 'none',
      steps, guidance: 2.5, seed: 0, cache: { kind: 'fbc', threshold }, returnLatents: true });
  }, [reference, PROMPT, width, height, steps, threshold]);
  const result = await parentPage.waitForFunction(() => window.messages.find((m) => m.data?.id === 'cached' && /result|error/.test(m.data.type))?.data ?? null,
    null, { timeout: 300_000 });
  const summary = await result.evaluate((r) => (r.type !== 'kontext:result' ? { error: r.message } : { latents: Array.from(r.latents ?? []) }));
  assert.equal(summary.error, undefined, summary.error);
  const reused = await parentPage.evaluate(() => window.messages
    .filter((m) => m.data?.id === 'cached' && m.data.type === 'kontext:progress' && m.data.phase === 'denoising' && m.data.reused)
    .map((m) => m.data.done - 1));
  assert.deepEqual(reused, [2, 3, 5, 7, 10]);

  const args = ['--prompt', PROMPT, '--image', REFERENCE, '--width', String(width), '--height', String(height), '--max-area', String(width * height),
    '--no-resize', '--steps', String(steps), '--guidance', '2.5', '--seed', '0'];
  const native = nativeEditWithLatents([...args, '--cache', `fbc:${threshold}`]);
  const delta = maxAbsDifference(summary.latents, native.latents);
  assert.ok(delta <= 5e-4, `latents differ from the native cached run's by ${delta}`);
  const uncached = maxAbsDifference(summary.latents, nativeEditWithLatents(args).latents);
  assert.ok(uncached > 5e-4, `the uncached native run is within ${uncached}: the comparison cannot tell`);
  console.log(`cached browser vs native: latents max |Δ| ${delta}; vs uncached ${uncached}`);
});

test('kontext:edit with a mask Blob, strength, maskCrop and maskReference equals the native CLI given the same mask file (latents ≤ 5e-4, image ±2 LSB), and without the mask it does not; a mask of another aspect answers kontext:error', async () => {
  // The inpainting goldens' crop case (tests/fixtures/tiny/golden/golden_inpaint_meta.json): a 13×13 square mask,
  // a crop padded by 5, an extra reference, strength 0.8, so 5 of the 6 steps run.
  const [steps, seed, strength, maskCrop] = [6, 42, 0.8, 5];
  const [mask, maskReference] = ['tests/fixtures/tiny/golden/inpaint_mask_small_square.png', 'tests/fixtures/tiny/golden/multiref_ref2.png'];
  const files = [REFERENCE, mask, maskReference].map((f) => readFileSync(f).toString('base64'));
  await parentPage.evaluate(([files, prompt, steps, seed, strength, maskCrop]) => {
    const [image, mask, reference] = files.map((b64) => new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: 'image/png' }));
    send({ type: 'kontext:edit', id: 'masked', prompt, images: [image], mask, maskReference: reference, strength, maskCrop, resize: 'none',
      steps, guidance: 2.5, seed, returnLatents: true });
  }, [files, PROMPT, steps, seed, strength, maskCrop]);
  const result = await parentPage.waitForFunction(() => window.messages.find((m) => m.data?.id === 'masked' && /result|error/.test(m.data.type))?.data ?? null,
    null, { timeout: 300_000 });
  const summary = await result.evaluate(async (r) => {
    if (r.type !== 'kontext:result') return { error: r.message };
    const bytes = new Uint8Array(await r.image.arrayBuffer());
    let s = ''; for (const b of bytes) s += String.fromCharCode(b);
    return { png: btoa(s), width: r.width, height: r.height, latents: Array.from(r.latents ?? []) };
  });
  assert.equal(summary.error, undefined, summary.error);
  assert.deepEqual([summary.width, summary.height], [96, 64], 'a masked edit keeps the image\'s size');
  const totals = await parentPage.evaluate(() => window.messages
    .filter((m) => m.data?.id === 'masked' && m.data.type === 'kontext:progress' && m.data.phase === 'denoising').map((m) => m.data.total));
  assert.deepEqual([...new Set(totals)], [5], 'strength 0.8 runs 5 of 6 steps');
  await parentPage.evaluate(([image, mask, prompt]) => {
    const blob = (b64) => new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: 'image/png' });
    send({ type: 'kontext:edit', id: 'bad-mask', prompt, images: [blob(image)], mask: blob(mask), steps: 2 });
  }, [files[0], files[2], PROMPT]);
  const bad = await answer(parentPage, 'bad-mask', 'kontext:error', 300_000);
  assert.match(bad.message, /the mask is 48×64 pixels and the image 96×64: the mask must have the image's aspect ratio/);

  const args = ['--prompt', PROMPT, '--image', REFERENCE, '--no-resize', '--steps', String(steps), '--guidance', '2.5', '--seed', String(seed)];
  const masked = ['--mask', mask, '--strength', String(strength), '--mask-crop', String(maskCrop), '--mask-reference', maskReference];
  const native = nativeEditWithLatents([...args, ...masked]);
  const delta = maxAbsDifference(summary.latents, native.latents);
  assert.ok(delta <= 5e-4, `latents differ from the native masked run's by ${delta}`);
  const lsb = await maxPixelDifference(parentPage, summary.png, native.png);
  assert.ok(lsb <= 2, `the pasted-back image differs from the native one by ${lsb} LSB`);
  const unmasked = maxAbsDifference(summary.latents, nativeEditWithLatents([...args, '--width', '96', '--height', '64']).latents);
  assert.ok(unmasked > 5e-4, `the unmasked native run is within ${unmasked}: the comparison cannot tell`);
  console.log(`masked browser vs native: latents max |Δ| ${delta}, image ${lsb} LSB; vs unmasked ${unmasked}`);
});

test('kontext:cancel stops a long edit within a step and the next edit runs', async () => {
  await parentPage.evaluate(() => send({ type: 'kontext:edit', id: 'long', prompt: 'a long one', width: 64, height: 64, steps: 60, seed: 5 }));
  await parentPage.waitForFunction(() => window.messages.some((m) => m.data?.id === 'long' && m.data.type === 'kontext:progress'
    && m.data.phase === 'denoising' && m.data.done >= 1), null, { timeout: 120_000 });
  await parentPage.evaluate(() => send({ type: 'kontext:cancel', id: 'long' }));
  const cancelled = await answer(parentPage, 'long', 'kontext:result', 60_000);
  assert.deepEqual([cancelled.type, cancelled.message, cancelled.cancelled], ['kontext:error', 'cancelled', true]);
  const steps = await parentPage.evaluate(() => Math.max(...window.messages.filter((m) => m.data?.id === 'long' && m.data.phase === 'denoising').map((m) => m.data.done)));
  assert.ok(steps < 60, `ran ${steps} steps`);
  await parentPage.evaluate(() => send({ type: 'kontext:edit', id: 'next', prompt: 'after the cancel', width: 64, height: 64, steps: 1 }));
  const next = await answer(parentPage, 'next', 'kontext:result', 120_000);
  assert.equal(next.type, 'kontext:result', next.message);
  assert.ok(Number.isSafeInteger(next.seed), 'a random seed is reported');
  assert.equal(await parentPage.frameLocator('#app').locator('#embed-status').getAttribute('data-state'), 'done');
  assert.deepEqual(problems, []);
});

test('kontext:load with gpuMemory plans each edit within it: one that cannot fit is refused before any upload, and the worker goes on', async () => {
  const base = `${app.url}demo-model/`;
  await parentPage.evaluate((base) => send({ type: 'kontext:load', id: 'tight', source: { base }, gpuMemory: 1048576 }), base);
  const tight = await answer(parentPage, 'tight', 'kontext:loaded', 120_000);
  assert.equal(tight.type, 'kontext:loaded', tight.message);
  await parentPage.evaluate(() => send({ type: 'kontext:edit', id: 'over', prompt: 'too big', width: 64, height: 64, steps: 1 }));
  const over = await answer(parentPage, 'over', 'kontext:result', 60_000);
  assert.equal(over.type, 'kontext:error');
  assert.match(over.message, /^a 64×64 edit needs [\d.]+ MiB of GPU memory \(.+\), more than the budget of 1\.00 MiB; nothing smaller fits either$/);
  assert.doesNotMatch(over.message, /--/, 'no CLI flags in the browser');
  await parentPage.evaluate((base) => send({ type: 'kontext:load', id: 'bad', source: { base }, gpuMemory: -5 }), base);
  assert.match((await answer(parentPage, 'bad', 'kontext:loaded', 10_000)).message, /gpuMemory must be a positive number of bytes/);
  await parentPage.evaluate((base) => send({ type: 'kontext:load', id: 'roomy', source: { base }, gpuMemory: 512 * 1048576 }), base);
  const roomy = await answer(parentPage, 'roomy', 'kontext:loaded', 120_000);
  assert.equal(roomy.type, 'kontext:loaded', roomy.message);
  await parentPage.evaluate(() => send({ type: 'kontext:edit', id: 'fits', prompt: 'within the budget', width: 64, height: 64, steps: 1 }));
  const fits = await answer(parentPage, 'fits', 'kontext:result', 120_000);
  assert.equal(fits.type, 'kontext:result', fits.message);
  assert.deepEqual(problems, []);
});

test('messages from an origin not in ?allow= are ignored: no ready, no answers', async () => {
  const page = watch(await browser.context.newPage());
  try {
    // The intruder embeds the app but is not in its allow list (only the parent is).
    const embedUrl = `${app.url}?embed&allow=${encodeURIComponent(parent.url.slice(0, -1))}`;
    await page.goto(`${intruder.url}?app=${encodeURIComponent(embedUrl)}`);
    await page.frameLocator('#app').locator('#embed').waitFor({ timeout: 60_000 });
    await page.evaluate(() => {
      send({ type: 'kontext:load', id: 'a', source: {} });
      send({ type: 'kontext:frobnicate', id: 'b' });
      send({ type: 'kontext:edit', id: 'c', prompt: 'x', width: 64, height: 64, steps: 1 });
    });
    // An allowed sender gets these errors at once (see above); give an ignored one ample time.
    await page.waitForTimeout(3_000);
    assert.deepEqual(await page.evaluate(() => window.messages), []);
    assert.equal(await page.frameLocator('#app').locator('#embed-status').getAttribute('data-state'), 'idle');
  } finally {
    await page.close();
  }
  assert.deepEqual(problems, []);
});

test('PWA: after one visit the app shell loads with the network off', async () => {
  const page = watch(await browser.context.newPage());
  await page.goto(app.url);
  await page.waitForSelector('#model-panel');
  const manifest = await page.evaluate(async () => (await fetch(document.querySelector('link[rel="manifest"]').href)).json());
  assert.deepEqual(manifest.icons.filter((i) => i.purpose === 'maskable').map((i) => i.sizes), ['192x192', '512x512']);
  await page.waitForFunction(async () => (await navigator.serviceWorker.ready) && navigator.serviceWorker.controller !== null, null, { timeout: 60_000 });
  const caches = await page.evaluate(async () => {
    const names = await caches.keys();
    const keys = await (await caches.open(names[0])).keys();
    return { names, paths: keys.map((r) => new URL(r.url).pathname).sort() };
  });
  assert.equal(caches.names.length, 1);
  assert.match(caches.names[0], /^kontext-shell-[0-9a-f]{16}$/);
  for (const path of ['/index.html', '/app.js', '/app_bg.wasm', '/worker.js', '/device-request.js', '/style.css', '/boot.js',
    '/manifest.webmanifest']) {
    assert.ok(caches.paths.includes(path), `${path} not cached: ${caches.paths}`);
  }
  assert.ok(!caches.paths.some((p) => p.includes('demo-model')), 'model files must not be cached');

  const online = problems.length;
  await browser.context.setOffline(true);
  app.server.closeAllConnections();
  app.server.close();
  await page.reload();
  await page.waitForSelector('#model-panel', { timeout: 60_000 });
  assert.equal(await page.textContent('h1'), 'Kontext');
  // The inference worker starts offline too (worker.js, app.js and the wasm come from the cache): its GPU
  // self-check passes. Model files were never cached, so they are not there.
  await page.waitForSelector('#self-check:not([data-state="running"])', { timeout: 240_000 });
  assert.equal(await page.getAttribute('#self-check', 'data-state'), 'passed');
  assert.equal(await page.evaluate(() => fetch('demo-model/vae/config.json').then(() => 'fetched', () => 'failed')), 'failed');
  await page.goto(`${app.url}?embed`);
  await page.waitForSelector('#embed', { timeout: 60_000 });
  await screenshot(page, 'embed-offline');
  // Offline, the browser logs failed network requests (the service worker's update check); only CSP matters here.
  assert.deepEqual(problems.slice(online).filter((p) => /CSP|Content Security Policy|page error/.test(p)), []);
  assert.deepEqual(problems.slice(0, online), []);
});

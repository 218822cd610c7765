// The usual files at tiny scale through the embed API from another origin: a DiT as a GGUF of every type the reader
// supports (F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K: the committed files and the tiny-types pack of
// `make packs`) and as BFL-named safetensors, with the T5 GGUF, loaded with per-part URLs over the demo pack's
// folder (stored, then streamed to the GPU) and edited with `returnLatents`.
// CLIP and the VAE come from the folder: a standalone `clip_l` or `ae` names no head count or norm groups, which
// are inferred as the real models' and are not the tiny ones' (the real-width ComfyUI set, with its `clip_l` and
// `ae`, is tests/e2e/real-width.test.mjs). Each edit's
// latents equal the native CLI's with the same files (max |Δ| ≤ 5e-4, on SwiftShader against lavapipe) and its
// image is within ±2 LSB; the latents of the DiT in another quantization fail that comparison. Last, the odd-widths
// pack (`make packs`: heads of 48, T5 attention narrower than its model, five CLIP heads, uneven VAE channels) as
// a folder, against the native CLI for the same seed, another seed being the control.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { nativeEditWithLatents, maxAbsDifference, maxPixelDifference, REFERENCE, TINY_TYPES_PACK, ODD_WIDTHS_PACK } from './browser.mjs';
import { openEmbedHarness, answer, editResult } from './embed-parent.mjs';
import { folderFiles } from './host-server.mjs';

const ROOT = 'tests/fixtures/tiny';
const FOLDER = 'FLUX.1-Kontext-dev-tiny';
const PARTS = { t5: 'bfl_gguf/t5_encoder-Q8_0.gguf' };
// The tiny-types pack's files are served (and found natively) under `types/`; its model folder is the demo's.
const TYPES = 'types/';
// The odd-widths pack's files are served under `odd/`.
const ODD = 'odd/';
const TRANSFORMERS = ['bfl_gguf/transformer_bfl-Q8_0.gguf', 'bfl_gguf/transformer_bfl-Q4_K_S.gguf', 'bfl_gguf/transformer_bfl-F16.gguf',
  'bfl_gguf/transformer_bfl.safetensors',
  ...['BF16', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K', 'Q5_K', 'Q6_K'].map((kind) => `${TYPES}bfl_gguf/transformer_bfl-${kind}.gguf`)];
/** A served path's file on this machine. */
const local = (path) => (path.startsWith(TYPES) ? join(TINY_TYPES_PACK, path.slice(TYPES.length)) : join(ROOT, path));
const [WIDTH, HEIGHT, SEED, PROMPT] = [144, 96, 5, 'Make the red square blue'];

let harness;
const problems = [];
const native = new Map();

/** The native CLI's edit with `transformer` and the other parts as files over the folder. */
function nativeWith(transformer) {
  if (!native.has(transformer)) {
    const files = ['--model', join(ROOT, FOLDER), '--transformer', local(transformer),
      ...Object.entries(PARTS).flatMap(([part, file]) => [`--${part}`, local(file)])];
    native.set(transformer, nativeEditWithLatents(['--prompt', PROMPT, '--image', REFERENCE, '--width', String(WIDTH), '--height',
      String(HEIGHT), '--max-area', String(WIDTH * HEIGHT), '--steps', '2', '--guidance', '2.5', '--seed', String(SEED)], files));
  }
  return native.get(transformer);
}

/** The browser's edit `result` equals the native run `expected` (latents ≤ 5e-4, image ±2 LSB) and is further than
 * that from `control`'s latents (the negative control); returns the three figures. */
async function assertLikeNative(page, result, expected, control) {
  assert.deepEqual(result.latentsShape, expected.shape);
  const delta = maxAbsDifference(result.latents, expected.latents);
  assert.ok(delta <= 5e-4, `latents differ from the native run's by ${delta}`);
  const lsb = await maxPixelDifference(page, result.png, expected.png);
  assert.ok(lsb <= 2, `the image differs from the native one by ${lsb} LSB`);
  const wrong = maxAbsDifference(result.latents, control.latents);
  assert.ok(wrong > 5e-4, `the control's latents are within ${wrong}: the comparison cannot tell`);
  return { delta, lsb, wrong };
}

before(async () => {
  for (const file of [...TRANSFORMERS.map(local), join(ODD_WIDTHS_PACK, 'golden/golden_meta.json')]) {
    if (!existsSync(file)) throw new Error(`${file} is missing: make the test packs with \`make packs\``);
  }
  const [demo, types, odd] = [folderFiles(ROOT), folderFiles(TINY_TYPES_PACK), folderFiles(ODD_WIDTHS_PACK)];
  harness = await openEmbedHarness((path) => (path.startsWith(TYPES) ? types(path.slice(TYPES.length))
    : path.startsWith(ODD) ? odd(path.slice(ODD.length)) : demo(path)), problems);
  harness.host.control.refuseHead = false; // hosting as it is has tests/e2e/hosting.test.mjs
});
after(() => harness.close());

for (const [i, transformer] of TRANSFORMERS.entries()) {
  test(`${transformer} with the T5 GGUF over the demo folder loads by per-part URLs and edits like the native CLI (latents ≤ 5e-4, ±2 LSB)`, async () => {
    const { page, host } = harness;
    const source = { base: `${host.hub}/m/${FOLDER}/`, transformer: `${host.hub}/m/${transformer}`,
      ...Object.fromEntries(Object.entries(PARTS).map(([part, file]) => [part, `${host.hub}/m/${file}`])) };
    await page.evaluate(([id, source]) => send({ type: 'kontext:load', id, source }), [`load-${i}`, source]);
    const loaded = await answer(page, `load-${i}`, 'kontext:loaded', 300_000);
    assert.equal(loaded.type, 'kontext:loaded', loaded.message);
    assert.match(loaded.description, /DiT width 64, 2 double \+ 2 single blocks, 4 heads/);

    const result = await editResult(page, `edit-${i}`, REFERENCE, { prompt: PROMPT, width: WIDTH, height: HEIGHT, steps: 2, guidance: 2.5, seed: SEED, returnLatents: true });
    // Negative control: the DiT in another quantization (Q4_K_S, or Q8_0 for Q4_K_S itself).
    const control = TRANSFORMERS[i === 1 ? 0 : 1];
    const { delta, lsb, wrong } = await assertLikeNative(page, result, nativeWith(transformer), nativeWith(control));
    console.log(`${transformer}: latents max |Δ| ${delta}, image ${lsb} LSB; against ${control}: ${wrong}`);
    assert.deepEqual(problems, []);
  });
}

test('the odd-widths folder (heads of 48, T5 attention narrower than its model) loads and edits like the native CLI (latents ≤ 5e-4, ±2 LSB; another seed is not)', async () => {
  const { page, host } = harness;
  const meta = JSON.parse(readFileSync(join(ODD_WIDTHS_PACK, 'golden/golden_meta.json'), 'utf8')).call;
  const reference = join(ODD_WIDTHS_PACK, 'golden/reference_input.png');
  await page.evaluate((source) => send({ type: 'kontext:load', id: 'load-odd', source }), { base: `${host.hub}/m/${ODD}${FOLDER}/` });
  const loaded = await answer(page, 'load-odd', 'kontext:loaded', 300_000);
  assert.equal(loaded.type, 'kontext:loaded', loaded.message);
  assert.match(loaded.description, /DiT width 96, 3 double \+ 1 single blocks, 2 heads/);
  const call = { prompt: meta.prompt, width: meta.width, height: meta.height, steps: meta.num_inference_steps, guidance: meta.guidance_scale };
  const result = await editResult(page, 'edit-odd', reference, { ...call, seed: SEED, returnLatents: true });
  const native = (seed) => nativeEditWithLatents(['--prompt', call.prompt, '--image', reference, '--width', String(call.width),
    '--height', String(call.height), '--max-area', String(call.width * call.height), '--steps', String(call.steps),
    '--guidance', String(call.guidance), '--seed', String(seed)], ['--model', join(ODD_WIDTHS_PACK, FOLDER)]);
  const { delta, lsb, wrong } = await assertLikeNative(page, result, native(SEED), native(SEED + 1));
  console.log(`odd widths: latents max |Δ| ${delta}, image ${lsb} LSB; another seed: ${wrong}`);
  assert.deepEqual(problems, []);
});

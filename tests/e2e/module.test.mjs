// The built app module, dist/app_bg.wasm: wasm-ld links it as a reactor (src/bin/app.rs runs the static
// constructors once), so the helpers that JavaScript calls at every crossing (wasm-bindgen's allocator, its
// externref table) are exported as they are. Linked as a command, each export was a wrapper that ran all of
// cubecl's ~4,900 constructors again, and most of the worker's time went there.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

test('the app module exports wasm-bindgen\'s helpers directly, not through wrappers that run the constructors again', async () => {
  const module = await WebAssembly.compile(readFileSync('dist/app_bg.wasm'));
  const names = WebAssembly.Module.exports(module).map((e) => e.name);
  for (const helper of ['__wbindgen_malloc', '__wbindgen_free', '__externref_table_alloc', '__externref_table_dealloc', '__wbindgen_start']) {
    assert.ok(names.includes(helper), `${helper} is not exported: ${names.join(', ')}`);
  }
  assert.deepEqual(names.filter((name) => name.includes('command_export')), []);
});

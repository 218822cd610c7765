// Trunk post-build hook. With `inject_scripts = false` trunk leaves the app's `<link data-trunk rel="rust">` in
// the page: remove it. Then write a hash of the built app shell into the staged sw.js as its BUILD_ID, so every
// build that changes the shell gets a new cache name and a new service worker.
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const dir = process.env.TRUNK_STAGING_DIR;
if (!dir) throw new Error('run by trunk (post_build hook): TRUNK_STAGING_DIR is not set');
const page = join(dir, 'index.html');
await writeFile(page, (await readFile(page, 'utf8')).replace(/\n[ \t]*<link data-trunk [^>]*>/g, '').replace(/\n(\s*\n)+/g, '\n'));
const files = ['index.html', 'boot.js', 'app.js', 'app_bg.wasm', 'worker.js', 'device-request.js', 'style.css', 'icon.svg',
  'manifest.webmanifest'];
const hash = createHash('sha256');
for (const file of files) hash.update(await readFile(join(dir, file)));
const id = hash.digest('hex').slice(0, 16);
const sw = join(dir, 'sw.js');
const source = await readFile(sw, 'utf8');
if (!source.includes("const BUILD_ID = 'dev';")) throw new Error('sw.js has no BUILD_ID line to stamp');
await writeFile(sw, source.replace("const BUILD_ID = 'dev';", `const BUILD_ID = '${id}';`));
console.log(`sw.js: cache kontext-shell-${id}`);

// Renders the PNG icons of the web app manifest from icon.svg with Debian's Chromium (playwright-core), once;
// the PNGs are committed. `purpose: "maskable"` icons keep the glyph inside the central 80% safe zone on a
// full-bleed background. Usage: node www/make-icons.mjs
import { chromium } from 'playwright-core';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const svg = await readFile(join(here, 'icon.svg'), 'utf8');
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage();
await mkdir(join(here, 'icons'), { recursive: true });
for (const size of [192, 512]) {
  for (const maskable of [false, true]) {
    const b64 = await page.evaluate(async ([svg, size, maskable]) => {
      const image = new Image();
      image.src = `data:image/svg+xml;base64,${btoa(svg)}`;
      await image.decode();
      const canvas = document.createElement('canvas');
      canvas.width = canvas.height = size;
      const ctx = canvas.getContext('2d');
      if (maskable) {
        ctx.fillStyle = '#1a1c21';
        ctx.fillRect(0, 0, size, size);
        const inner = size * 0.8;
        ctx.drawImage(image, (size - inner) / 2, (size - inner) / 2, inner, inner);
      } else {
        ctx.drawImage(image, 0, 0, size, size);
      }
      return canvas.toDataURL('image/png').split(',')[1];
    }, [svg, size, maskable]);
    const name = `${maskable ? 'maskable' : 'icon'}-${size}.png`;
    await writeFile(join(here, 'icons', name), Buffer.from(b64, 'base64'));
    console.log(name);
  }
}
await browser.close();

#!/usr/bin/env node
// The `federizer` command. From a source checkout it runs the TypeScript sources through tsx, so
// `npm ci` is the only build step; an image built with `npm run build` ships dist/ instead.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const source = fileURLToPath(new URL('../src/main.ts', import.meta.url));
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/main.ts');
} else {
  await import('../dist/main.js');
}

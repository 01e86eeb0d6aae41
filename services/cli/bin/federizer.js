#!/usr/bin/env node
// The `federizer` command. From a source checkout it runs the TypeScript sources through tsx, so
// `npm ci` is the only build step; `npm run build` bundles it into dist/federizer.mjs at the root, which the
// image runs directly and which this script falls back to where the sources are absent.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const source = fileURLToPath(new URL('../src/main.ts', import.meta.url));
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/main.ts');
} else {
  await import('../../../dist/federizer.mjs');
}

/**
 * `federizer up` builds the webmail when its build is missing or older than its sources, so that a fresh
 * clone shows the app after `npm ci && npm start`. Vite is loaded only then: a start with an up-to-date
 * build does not pay for it.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

const CONFIG_FILES = ['vite.config.ts', 'vite.config.mts', 'vite.config.js', 'vite.config.mjs'];
/** Inputs of the build: a change to any of them makes the build stale. */
const INPUT_DIRS = ['src', 'public', 'build', '../services/protocol/src'];
const ROOT_INPUTS = ['index.html', 'package.json', 'tsconfig.json', ...CONFIG_FILES];

export type WebmailBuildOutcome =
  | { readonly status: 'fresh' }
  | { readonly status: 'built'; readonly reason: string }
  | { readonly status: 'skipped'; readonly reason: string }
  | { readonly status: 'failed'; readonly reason: string };

async function mtime(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).mtimeMs;
  } catch {
    return undefined;
  }
}

/** The newest modification time under a directory (0 when it is missing or empty). */
async function newest(dir: string): Promise<number> {
  let latest = 0;
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const entry of entries) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) latest = Math.max(latest, await newest(path));
    else if (entry.isFile()) latest = Math.max(latest, (await mtime(path)) ?? 0);
  }
  return latest;
}

/** Why the build in `<root>/dist` must be redone, or undefined when it is up to date. */
export async function webmailBuildNeeded(root: string): Promise<string | undefined> {
  const built = await mtime(join(root, 'dist', 'index.html'));
  if (built === undefined) return 'webmail/dist/index.html is missing';
  let sources = 0;
  for (const dir of INPUT_DIRS) sources = Math.max(sources, await newest(join(root, dir)));
  for (const file of ROOT_INPUTS) sources = Math.max(sources, (await mtime(join(root, file))) ?? 0);
  return sources > built ? 'the webmail sources are newer than its build' : undefined;
}

export async function ensureWebmailBuilt(root: string): Promise<WebmailBuildOutcome> {
  const configs = await Promise.all(CONFIG_FILES.map((f) => mtime(join(root, f))));
  if (configs.every((m) => m === undefined))
    return { status: 'skipped', reason: `${root} has no vite.config yet, so the webmail cannot be built` };
  const reason = await webmailBuildNeeded(root);
  if (reason === undefined) return { status: 'fresh' };
  // The webmail's Vite config makes every build a production build by setting NODE_ENV, which would
  // otherwise stay set for the rest of this process (a test runner's NODE_ENV=test, say).
  const nodeEnv = process.env.NODE_ENV;
  try {
    const { build } = await import('vite');
    await build({ root, logLevel: 'warn', clearScreen: false });
  } catch (e) {
    return { status: 'failed', reason: (e as Error)?.message ?? String(e) };
  } finally {
    if (nodeEnv === undefined) delete process.env.NODE_ENV;
    else process.env.NODE_ENV = nodeEnv;
  }
  if ((await mtime(join(root, 'dist', 'index.html'))) === undefined)
    return { status: 'failed', reason: 'the build finished without writing dist/index.html' };
  return { status: 'built', reason };
}

/**
 * How `federizer up` decides to build the webmail, with a real Vite build of a small app in a temporary
 * directory: built when dist is missing, left alone while it is fresh, rebuilt when a source is newer,
 * skipped without a vite config, and a broken source reported rather than thrown.
 */
import { mkdir, mkdtemp, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureWebmailBuilt, webmailBuildNeeded } from '../src/federation/webmail-build.js';

describe('building the webmail before the federation starts', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'federizer-webmail-build-'));
    await mkdir(join(root, 'src'));
    await writeFile(
      join(root, 'index.html'),
      '<!doctype html><title>app</title><div id="root"></div><script type="module" src="/src/main.js"></script>',
    );
    await writeFile(join(root, 'src', 'main.js'), 'document.getElementById("root").textContent = "hello";\n');
  });
  afterAll(() => rm(root, { recursive: true, force: true }));

  it('skips, saying why, while there is no vite config', async () => {
    const outcome = await ensureWebmailBuilt(root);
    expect(outcome).toEqual({
      status: 'skipped',
      reason: `${root} has no vite.config yet, so the webmail cannot be built`,
    });
    await expect(stat(join(root, 'dist'))).rejects.toThrow(/ENOENT/);
  });

  it('builds when dist/index.html is missing, with hashed assets, and leaves NODE_ENV as it was', async () => {
    // Like the webmail's own config, this one makes every build a production build.
    await writeFile(
      join(root, 'vite.config.mjs'),
      'process.env.NODE_ENV = "production";\nexport default { logLevel: "silent" };\n',
    );
    const nodeEnv = process.env.NODE_ENV;
    expect(await webmailBuildNeeded(root)).toBe('webmail/dist/index.html is missing');
    expect(await ensureWebmailBuilt(root)).toEqual({ status: 'built', reason: 'webmail/dist/index.html is missing' });
    const assets = await readdir(join(root, 'dist', 'assets'));
    expect(assets.some((f) => /^index-[\w-]+\.js$/.test(f))).toBe(true);
    expect(process.env.NODE_ENV).toBe(nodeEnv);
  });

  it('leaves a fresh build alone', async () => {
    const before = (await stat(join(root, 'dist', 'index.html'))).mtimeMs;
    expect(await ensureWebmailBuilt(root)).toEqual({ status: 'fresh' });
    expect((await stat(join(root, 'dist', 'index.html'))).mtimeMs).toBe(before);
  });

  it('rebuilds when a source is newer than the build', async () => {
    // The build is made to look a minute old, rather than waiting for the clock to move past it.
    const earlier = new Date(Date.now() - 60_000);
    await utimes(join(root, 'dist', 'index.html'), earlier, earlier);
    await writeFile(join(root, 'src', 'main.js'), 'document.title = "changed";\n');
    expect(await webmailBuildNeeded(root)).toBe('the webmail sources are newer than its build');
    expect(await ensureWebmailBuilt(root)).toEqual({
      status: 'built',
      reason: 'the webmail sources are newer than its build',
    });
    expect(await webmailBuildNeeded(root)).toBeUndefined();
  });

  it('reports a build that fails instead of throwing', async () => {
    await rm(join(root, 'dist'), { recursive: true });
    await writeFile(join(root, 'src', 'main.js'), 'this is not JavaScript (\n');
    const outcome = await ensureWebmailBuilt(root);
    expect(outcome.status).toBe('failed');
    expect((outcome as { reason: string }).reason).toMatch(/main\.js/);
  });
});

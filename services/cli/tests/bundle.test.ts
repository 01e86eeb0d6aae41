/**
 * The production bundle (scripts/build.ts, `npm run build`), built into a temporary directory and run as
 * `node <outdir>/federizer.mjs`, the way the image runs it: no tsx, no TypeScript sources.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { isBuiltin } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXTERNAL, ROOT, buildBundle, type BuildResult } from '../../../scripts/build.js';

interface Outcome {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function runBundle(entry: string, args: readonly string[]): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile(process.execPath, [entry, ...args], { cwd: ROOT }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

const VECTORS = join(ROOT, 'test', 'vectors');

describe('the bundle of the federizer command', () => {
  let outdir: string;
  let built: BuildResult;
  beforeAll(async () => {
    outdir = await mkdtemp(join(tmpdir(), 'federizer-bundle-'));
    built = await buildBundle({ outdir });
  });
  afterAll(() => rm(outdir, { recursive: true, force: true }));

  it('writes the entry, the domain-process entry of `federizer up` and shared chunks into the outdir', async () => {
    const files = await readdir(outdir);
    expect(files).toEqual(
      expect.arrayContaining(['federizer.mjs', 'federizer.mjs.map', 'domain-process.js', 'domain-process.mjs']),
    );
    // Code splitting: the commands run.ts imports on demand are chunks of their own.
    expect(files.filter((f) => /^(up|auth|mailbox|protocol)-\w+\.mjs$/.test(f)).length).toBe(4);
  });

  it('bundles no tsx and imports nothing from node_modules but the listed externals', () => {
    const inputs = Object.keys(built.metafile.inputs);
    expect(inputs.filter((path) => path.includes('node_modules/tsx/'))).toEqual([]);
    const externals = new Set<string>();
    for (const output of Object.values(built.metafile.outputs))
      for (const imported of output.imports) if (imported.external) externals.add(imported.path);
    const packages = [...externals].filter((path) => !isBuiltin(path));
    const allowed = (path: string) =>
      EXTERNAL.some((pattern) => (pattern.endsWith('/*') ? path.startsWith(pattern.slice(0, -1)) : path === pattern));
    expect(packages.filter((path) => !allowed(path))).toEqual([]);
  });

  it('points every rewritten repository path (openapi documents, the webmail root) at a file that exists', async () => {
    const targets: string[] = [];
    for (const file of await readdir(outdir)) {
      if (!file.endsWith('.mjs')) continue;
      const code = await readFile(join(outdir, file), 'utf8');
      for (const m of code.matchAll(/new URL\("([^"]+)", import\.meta\.url\)/g))
        if (!/\.(ts|js)$/.test(m[1]!)) targets.push(fileURLToPath(new URL(m[1]!, `file://${outdir}/${file}`)));
    }
    expect(targets.map((t) => t.slice(ROOT.length)).sort()).toEqual([
      '/openapi/auth.openapi.json',
      '/openapi/mailbox.openapi.json',
      '/webmail/',
    ]);
    for (const target of targets) expect(existsSync(target), target).toBe(true);
  });

  it('answers --help', async () => {
    const { code, stdout } = await runBundle(built.entry, ['--help']);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^federizer — Internet mail as signed Placeholder Messages/);
    expect(stdout).toContain('federizer protocol digest FILE|-');
  });

  it('prints the digests of a test vector, equal to the vector’s expected ones', async () => {
    const vector = JSON.parse(await readFile(join(VECTORS, '02-origin-to-cc.expected.json'), 'utf8')) as {
      digest: unknown;
    };
    const { code, stdout, stderr } = await runBundle(built.entry, [
      'protocol',
      'digest',
      join(VECTORS, '02-origin-to-cc.message.json'),
    ]);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toEqual(vector.digest);
  });

  it('exits 2 on a file that is not a Placeholder Message (ProtocolError is one class across the chunks)', async () => {
    // run.ts maps ProtocolError to exit 2 with `instanceof`: a class duplicated in two chunks would give 1.
    const { code, stderr } = await runBundle(built.entry, ['protocol', 'digest', join(ROOT, 'package.json')]);
    expect(stderr).toBe('federizer: $: a message has an unknown member "name"\n');
    expect(code).toBe(2);
  });
});

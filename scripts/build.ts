/**
 * The production bundle of the `federizer` command: `npm run build` (then `node dist/federizer.mjs <command>`).
 *
 * Running the services from TypeScript through tsx costs each process ~40 MiB of RSS for tsx and its
 * transform cache (bench/mailbox-transfer.bench.ts); the bundle is plain ESM that Node loads directly. The
 * commands stay lazily loaded: run.ts imports each one on demand, and code splitting turns each into its own
 * chunk, so `federizer protocol digest` still does not load oidc-provider or knex.
 *
 * Usage: node --import tsx scripts/build.ts [--outdir DIR] [--no-webmail]
 */
import { chmod, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build as esbuild, type Metafile, type Plugin } from 'esbuild';

export const ROOT = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, '');
export const DEFAULT_OUTDIR = join(ROOT, 'dist');
/** `node dist/federizer.mjs <command>` runs the bundle. */
export const DEFAULT_ENTRY = join(DEFAULT_OUTDIR, 'federizer.mjs');

/**
 * Packages loaded from node_modules at run time rather than bundled, each for a reason:
 * - better-sqlite3: a native addon, found by its own `bindings` lookup next to its package.
 * - knex: services/common/src/sqlite-client.ts `require`s knex's better-sqlite3 dialect from node_modules, so
 *   a bundled knex would be a second copy beside it; external, knex also keeps resolving its drivers itself
 *   (it `require`s mysql, oracledb, tedious, sqlite3, ... by name, only for the dialect asked for).
 * - pg: knex's PostgreSQL dialect requires it from node_modules; one copy for both.
 * - vite (and its esbuild/rollup): only `federizer up` builds the webmail, through a dynamic import.
 * - optional modules bundled code tries inside a try/catch and does without: ws's accelerators
 *   (bufferutil, utf-8-validate), node-fetch's `encoding`, undici's SQLite cache store (`node:sqlite`, Node 22).
 */
export const EXTERNAL = [
  'better-sqlite3',
  'knex',
  'knex/*',
  'pg',
  'pg-native',
  'pg-query-stream',
  'vite',
  'esbuild',
  'lightningcss',
  'fsevents',
  'bufferutil',
  'utf-8-validate',
  'encoding',
  'node:sqlite',
];

/**
 * Bundled CommonJS (express, oidc-provider, pino, ...) calls `require` for Node's built-ins and reads
 * `__dirname`; in an ES module neither exists, so the bundle defines them once at the top of every file.
 * The shebang lets the file be linked as `federizer` (the image does).
 */
const BANNER = [
  '#!/usr/bin/env node',
  "import { createRequire as __federizerCreateRequire } from 'node:module';",
  "import { fileURLToPath as __federizerFileURLToPath } from 'node:url';",
  "import { dirname as __federizerDirname } from 'node:path';",
  'const require = __federizerCreateRequire(import.meta.url);',
  'const __filename = __federizerFileURLToPath(import.meta.url);',
  'const __dirname = __federizerDirname(__filename);',
].join('\n');

/**
 * Some modules find a data file or directory of the repository relative to their own source file
 * (`new URL('../../../openapi/mailbox.openapi.json', import.meta.url)`, the webmail root). In the bundle
 * `import.meta.url` is the chunk's, so such paths are rewritten to reach the same target from the outdir.
 * URLs naming code (.ts/.js, such as the `domain-process` entry of `federizer up`) are left alone: they
 * must resolve to the bundle's own files.
 */
function repositoryPaths(outdir: string): Plugin {
  const pattern = /new URL\((['"])(\.{1,2}\/[^'"]*)\1, import\.meta\.url\)/g;
  return {
    name: 'federizer-repository-paths',
    setup(build) {
      build.onLoad({ filter: /\.ts$/ }, async (args) => {
        if (args.path.includes(`${sep}node_modules${sep}`)) return undefined;
        const source = await readFile(args.path, 'utf8');
        if (!source.includes('import.meta.url')) return undefined;
        const contents = source.replace(pattern, (whole, quote: string, path: string) => {
          if (/\.(ts|js|mjs|cjs)$/.test(path)) return whole;
          const target = resolve(dirname(args.path), path);
          let fromOutdir = relative(outdir, target).split(sep).join('/');
          if (path.endsWith('/')) fromOutdir += '/';
          if (!fromOutdir.startsWith('.')) fromOutdir = `./${fromOutdir}`;
          return `new URL(${quote}${fromOutdir}${quote}, import.meta.url)`;
        });
        return { contents, loader: 'ts' };
      });
    },
  };
}

export interface BuildOptions {
  /** Where the bundle goes (default dist/); emptied first. */
  readonly outdir?: string;
  readonly sourcemap?: boolean;
}

export interface BuildResult {
  readonly outdir: string;
  /** The command's entry file: `node <entry> <command>`. */
  readonly entry: string;
  readonly metafile: Metafile;
}

/** Bundles the `federizer` command into `outdir` (federizer.mjs, domain-process.js and shared chunks). */
export async function buildBundle(options: BuildOptions = {}): Promise<BuildResult> {
  const outdir = resolve(options.outdir ?? DEFAULT_OUTDIR);
  await rm(outdir, { recursive: true, force: true });
  const result = await esbuild({
    absWorkingDir: ROOT,
    entryPoints: {
      federizer: join(ROOT, 'services/cli/src/main.ts'),
      // `federizer up` forks each domain with this file; local-federation.ts looks for `./domain-process.js`
      // beside itself, and the shim written below leads there.
      'domain-process': join(ROOT, 'services/cli/src/federation/domain-process.ts'),
    },
    outdir,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    outExtension: { '.js': '.mjs' },
    // Every chunk beside the entry: repositoryPaths and local-federation's `./domain-process.js` resolve
    // from a chunk's own URL, which must be the outdir.
    chunkNames: '[name]-[hash]',
    // Stack traces name the source files when Node runs with --enable-source-maps.
    sourcemap: options.sourcemap ?? true,
    banner: { js: BANNER },
    external: EXTERNAL,
    legalComments: 'linked',
    logLevel: 'warning',
    metafile: true,
    plugins: [repositoryPaths(outdir)],
  });
  // The chunks are ES modules whatever package.json is (or is not) above the outdir.
  await writeFile(join(outdir, 'package.json'), `${JSON.stringify({ type: 'module' })}\n`);
  await writeFile(join(outdir, 'domain-process.js'), "import './domain-process.mjs';\n");
  const entry = join(outdir, 'federizer.mjs');
  // Runnable as `./dist/federizer.mjs` and through a symlink on the PATH (the image links it as `federizer`).
  await chmod(entry, 0o755);
  return { outdir, entry, metafile: result.metafile };
}

/** The sizes of the entry and chunk files, largest first, for the build's summary. */
export function outputSizes(metafile: Metafile, outdir: string): [string, number][] {
  return Object.entries(metafile.outputs)
    .filter(([file]) => file.endsWith('.mjs'))
    .map(([file, out]): [string, number] => [relative(outdir, resolve(ROOT, file)), out.bytes])
    .sort((a, b) => b[1] - a[1]);
}

async function main(argv: readonly string[]): Promise<void> {
  const at = argv.indexOf('--outdir');
  const outdir = at >= 0 ? argv[at + 1] : undefined;
  if (at >= 0 && outdir === undefined) throw new TypeError('--outdir needs a directory');
  const started = performance.now();
  const { metafile, entry } = await buildBundle({ outdir });
  const sizes = outputSizes(metafile, dirname(entry));
  const total = sizes.reduce((sum, [, bytes]) => sum + bytes, 0);
  const ms = Math.round(performance.now() - started);
  process.stdout.write(
    `${relative(ROOT, entry)}: ${sizes.length} files, ${(total / 2 ** 20).toFixed(1)} MiB, ${ms} ms\n`,
  );
  for (const [file, bytes] of sizes.slice(0, 5)) process.stdout.write(`  ${file}  ${(bytes / 1024).toFixed(0)} KiB\n`);
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main(process.argv.slice(2));
}

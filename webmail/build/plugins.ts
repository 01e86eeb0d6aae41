/**
 * The webmail's build steps beyond Vite's own: the icons (drawn at build time), the service worker
 * (its own self-contained bundle, with the list of the app shell's files to precache), and the budget
 * of the JavaScript a first visit loads, reported with every build and enforced.
 */
import { createHash } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { build, type Logger, type Plugin, type ResolvedConfig } from 'vite';
import { iconFiles } from './icons.js';

/** Emits icon.svg and the PNGs into dist/, and serves them in development. */
export function icons(): Plugin {
  let files: Record<string, string | Buffer> | undefined;
  const all = () => (files ??= iconFiles());
  return {
    name: 'federizer-icons',
    configureServer(server) {
      server.middlewares.use((req, res, next) => {
        const file = all()[(req.url ?? '').replace(/^\//, '').split('?')[0]!];
        if (!file) return next();
        res.setHeader('content-type', req.url!.endsWith('.svg') ? 'image/svg+xml' : 'image/png');
        res.end(file);
      });
    },
    generateBundle() {
      for (const [fileName, source] of Object.entries(all())) this.emitFile({ type: 'asset', fileName, source });
    },
  };
}

function publicFiles(dir: string, base = dir): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? publicFiles(path, base) : [relative(base, path).split('\\').join('/')];
  });
}

/**
 * Builds src/sw/sw.ts into dist/sw.js (one file, not hashed: the browser checks it for updates) once
 * the app is written, with the app shell's files and a build id that changes whenever they do.
 */
export function serviceWorker(options: { entry: string }): Plugin {
  let config: ResolvedConfig;
  let shell: string[] = [];
  return {
    name: 'federizer-service-worker',
    apply: 'build',
    configResolved(resolved) {
      config = resolved;
    },
    writeBundle(_output, bundle) {
      const emitted = Object.keys(bundle).filter((f) => f !== 'index.html' && !f.endsWith('.map'));
      shell = ['/', ...[...emitted, ...publicFiles(config.publicDir)].map((f) => `/${f}`)].sort();
    },
    async closeBundle() {
      const buildId = createHash('sha256').update(shell.join('\n')).digest('hex').slice(0, 16);
      await build({
        configFile: false,
        logLevel: 'warn',
        root: config.root,
        define: {
          __SHELL_FILES__: JSON.stringify(shell),
          __BUILD_ID__: JSON.stringify(buildId),
        },
        build: {
          outDir: config.build.outDir,
          emptyOutDir: false,
          copyPublicDir: false,
          lib: {
            entry: resolve(config.root, options.entry),
            formats: ['iife'],
            name: 'federizerSw',
            fileName: () => 'sw.js',
          },
        },
      });
      config.logger.info(`service worker: sw.js, ${shell.length} app-shell files precached (build ${buildId})`);
    },
  };
}

/**
 * Prints the gzipped size of the JavaScript a first visit loads (the entry and its static imports;
 * chunks loaded on demand are listed apart), and fails the build above `limitBytes`.
 */
export function budget(options: { limitBytes: number }): Plugin {
  let logger: Logger;
  return {
    name: 'federizer-budget',
    apply: 'build',
    configResolved(resolved) {
      logger = resolved.logger;
    },
    writeBundle(_output, bundle) {
      const chunks = Object.values(bundle).filter((o) => o.type === 'chunk');
      const byName = new Map(chunks.map((c) => [c.fileName, c]));
      const initial = new Set<string>();
      const visit = (name: string) => {
        if (initial.has(name)) return;
        initial.add(name);
        for (const dep of byName.get(name)?.imports ?? []) visit(dep);
      };
      for (const c of chunks) if (c.isEntry) visit(c.fileName);
      const size = (name: string) => {
        const code = byName.get(name)!.code;
        return { raw: Buffer.byteLength(code), gzip: gzipSync(code, { level: 9 }).length };
      };
      const kb = (n: number) => `${(n / 1000).toFixed(1)} kB`;
      let total = 0;
      const lines = ['initial JavaScript (gzip):'];
      for (const name of [...initial].sort()) {
        const s = size(name);
        total += s.gzip;
        lines.push(`  ${name.padEnd(40)} ${kb(s.raw).padStart(10)} raw ${kb(s.gzip).padStart(10)} gzip`);
      }
      lines.push(
        `  ${'total'.padEnd(40)} ${''.padStart(14)} ${kb(total).padStart(10)} gzip of ${kb(options.limitBytes)} allowed`,
      );
      const lazy = chunks.filter((c) => !initial.has(c.fileName)).map((c) => c.fileName);
      if (lazy.length > 0) {
        lines.push('loaded on demand (gzip):');
        for (const name of lazy.sort()) lines.push(`  ${name.padEnd(40)} ${kb(size(name).gzip).padStart(10)}`);
      }
      logger.info(lines.join('\n'));
      if (total > options.limitBytes)
        throw new Error(`initial JavaScript is ${kb(total)} gzipped, above the budget of ${kb(options.limitBytes)}`);
    },
  };
}

/**
 * Runs the benchmarks: every `bench/*.bench.ts` module's `run()`, in file-name order, or only those whose
 * file name contains one of the command-line filters (`npm run bench -- digest`).
 */
import { readdirSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, platform, arch } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

interface BenchModule {
  run?: () => Promise<void> | void;
}

const here = dirname(fileURLToPath(import.meta.url));
const filters = process.argv.slice(2).filter((arg) => arg !== '--');
const all = readdirSync(here)
  .filter((file) => file.endsWith('.bench.ts'))
  .sort();
const selected = filters.length === 0 ? all : all.filter((file) => filters.some((f) => file.includes(f)));

const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU';
console.log(`node ${process.version} on ${platform()}/${arch()}, ${cpu}, ${availableParallelism()} cores`);
// Figures from a shared machine mean little without its load: print it, so a reader can judge.
console.log(
  `load average ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')} (1, 5, 15 min) at the start`,
);

if (selected.length === 0) {
  console.log(`no benchmark matches ${filters.join(', ')}; there are: ${all.join(', ') || 'none'}`);
  process.exitCode = 1;
}

for (const file of selected) {
  console.log(`\n== ${file.replace(/\.bench\.ts$/, '')} ==`);
  const mod = (await import(pathToFileURL(join(here, file)).href)) as BenchModule;
  if (typeof mod.run !== 'function') {
    console.log(`${file} exports no run() function; skipped`);
    continue;
  }
  await mod.run();
}

/**
 * A tiny benchmark harness: `measure` times a function over several rounds, `report` prints one line per
 * benchmark. Plain console output, no assertions: a missed target is reported, never thrown.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';

export interface MeasureOptions {
  /** Calls per timed round. */
  readonly iterations: number;
  /** Timed rounds; the report gives their median, min and max. Default 7. */
  readonly rounds?: number;
  /** Untimed calls before the first round, to let the JIT settle. Default: one round's worth. */
  readonly warmup?: number;
  /** Ops/second the benchmark should reach; printed with the result when given. */
  readonly target?: number;
}

export interface BenchResult {
  readonly name: string;
  readonly iterations: number;
  /** Ops/second of each timed round, in the order they ran. */
  readonly opsPerSecond: readonly number[];
  readonly target: number | undefined;
}

/** Keeps results reachable so the optimizer cannot drop the work that produced them. */
let sink: unknown;

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

/**
 * Runs `warmup` untimed calls, then `rounds` timed rounds of `iterations` calls each, and returns the
 * ops/second of every round. `fn` may be synchronous or return a promise (then each call is awaited).
 */
export async function measure(
  name: string,
  fn: () => unknown,
  { iterations, rounds = 7, warmup = iterations, target }: MeasureOptions,
): Promise<BenchResult> {
  if (!Number.isInteger(iterations) || iterations < 1) throw new RangeError(`${name}: iterations must be ≥ 1`);
  if (!Number.isInteger(rounds) || rounds < 1) throw new RangeError(`${name}: rounds must be ≥ 1`);
  const first = fn();
  const isAsync = isThenable(first);
  if (isAsync) sink = await first;
  else sink = first;

  const runSync = (n: number): void => {
    for (let i = 0; i < n; i++) sink = fn();
  };
  const runAsync = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) sink = await fn();
  };
  const run = isAsync ? runAsync : runSync;

  await run(Math.max(0, warmup - 1));
  const opsPerSecond: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const start = process.hrtime.bigint();
    await run(iterations);
    const ns = Number(process.hrtime.bigint() - start);
    opsPerSecond.push(ns > 0 ? (iterations * 1e9) / ns : Number.POSITIVE_INFINITY);
  }
  return { name, iterations, opsPerSecond, target };
}

/** The value `sink` holds, for callers that want to prove the work happened (and for the linter). */
export function lastResult(): unknown {
  return sink;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const twoDecimals = new Intl.NumberFormat('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });

/**
 * Prints one line per result: median ops/s (min, max over the rounds), median time per op in µs, and the
 * target comparison when a target was given, e.g.
 * `body digest  median 61,234 ops/s (min 58,901, max 62,010)  16.33 µs/op  (target ≥ 20,000: met, 3.06×)`.
 */
export function report(results: readonly BenchResult[]): void {
  const width = Math.max(0, ...results.map((r) => r.name.length));
  for (const r of results) {
    const mid = median(r.opsPerSecond);
    const min = Math.min(...r.opsPerSecond);
    const max = Math.max(...r.opsPerSecond);
    let line =
      `${r.name.padEnd(width)}  median ${integer.format(mid)} ops/s ` +
      `(min ${integer.format(min)}, max ${integer.format(max)})  ${twoDecimals.format(1e6 / mid)} µs/op`;
    if (r.target !== undefined) {
      const ratio = mid / r.target;
      line += `  (target ≥ ${integer.format(r.target)}: ${ratio >= 1 ? 'met' : 'NOT met'}, ${twoDecimals.format(ratio)}×)`;
    }
    console.log(line);
  }
}

/** The median of a non-empty list (the figure every benchmark quotes). */
export function medianOf(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('the median of no values');
  return median(values);
}

/** The 1, 5 and 15 minute load averages, for the lines that frame a benchmark's figures. */
export function loadAverageText(): string {
  return `load average ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')} (1, 5, 15 min)`;
}

/**
 * The peak resident set size of a process (Linux `VmHWM` of /proc/<pid>/status), in bytes; undefined where
 * /proc is not there. Since `resetPeakRss`, when that was called.
 */
export async function peakRss(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kib = /^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1];
    return kib === undefined ? undefined : Number(kib) * 1024;
  } catch {
    return undefined;
  }
}

/**
 * Lowers a process's peak resident set size to its current one (writing 5 to /proc/<pid>/clear_refs), so
 * that `peakRss` afterwards is the peak of what follows: one phase of a benchmark, not the whole run.
 * False when this is not possible (another system, or not permitted): the peak then covers the whole life.
 */
export async function resetPeakRss(pid: number): Promise<boolean> {
  try {
    await writeFile(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Bytes as MiB with one decimal, e.g. `97.3 MiB`. */
export function mibText(bytes: number | undefined): string {
  return bytes === undefined ? 'n/a' : `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}

/** A measured figure against its target: `met, 1.52×` or `NOT met, 0.80×`; `lowerIsBetter` for times. */
export function versusTarget(value: number, target: number, lowerIsBetter = false): string {
  const ratio = lowerIsBetter ? target / value : value / target;
  return `${ratio >= 1 ? 'met' : 'NOT met'}, ${twoDecimals.format(ratio)}×`;
}

/** The current resident set size of a process (Linux `VmRSS`), in bytes; undefined where /proc is not there. */
export async function currentRss(pid: number): Promise<number | undefined> {
  try {
    const kib = /^VmRSS:\s+(\d+) kB$/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kib === undefined ? undefined : Number(kib) * 1024;
  } catch {
    return undefined;
  }
}

/**
 * The CPU time a process has used so far, in user and system mode, in seconds (Linux /proc/<pid>/stat, in the
 * kernel's 100 ticks per second); undefined where /proc is not there. Unlike a rate, it hardly depends on
 * how busy the rest of a shared machine is.
 */
export async function cpuSeconds(pid: number): Promise<{ user: number; system: number } | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces: count the fields after its closing parenthesis.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { user: Number(fields[11]) / 100, system: Number(fields[12]) / 100 };
  } catch {
    return undefined;
  }
}

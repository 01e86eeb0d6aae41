/**
 * A progress bar for large transfers, drawn on stderr only when stderr is a terminal: a script that reads
 * stdout, or a log that captures stderr, never sees carriage returns and escape codes.
 */

export interface Progress {
  advance(bytes: number): void;
  /** Draws the final state and ends the line. */
  done(): void;
  /** Ends the line where it is, so that an error message starts on a line of its own. */
  abandon(): void;
}

export interface ProgressTarget {
  write(chunk: string): unknown;
  readonly isTTY?: boolean;
  readonly columns?: number;
}

/** Smaller transfers finish before a bar would tell anyone anything. */
export const PROGRESS_THRESHOLD = 1024 * 1024;
const REDRAW_MS = 100;

const NONE: Progress = { advance: () => undefined, done: () => undefined, abandon: () => undefined };

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** The bar's line for `done` of `total` bytes after `elapsedMs`, fitted to `columns`. */
export function progressLine(label: string, done: number, total: number, elapsedMs: number, columns: number): string {
  const fraction = total === 0 ? 1 : Math.min(done / total, 1);
  const percent = `${Math.floor(fraction * 100)}%`.padStart(4);
  const rate = elapsedMs > 0 ? `${formatBytes(Math.round((done * 1000) / elapsedMs))}/s` : '';
  const figures = ` ${percent}  ${formatBytes(done)} / ${formatBytes(total)}  ${rate}`;
  const room = Math.max(columns - figures.length - 4, 10);
  const name = label.length > Math.floor(room / 2) ? `…${label.slice(-(Math.floor(room / 2) - 1))}` : label;
  const width = Math.max(room - name.length, 5);
  const filled = Math.round(fraction * width);
  return `${name} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}]${figures}`;
}

export function progressBar(
  target: ProgressTarget,
  label: string,
  total: number,
  now: () => number = Date.now,
): Progress {
  if (target.isTTY !== true || total < PROGRESS_THRESHOLD) return NONE;
  const started = now();
  let done = 0;
  let drawnAt = -Infinity;
  let finished = false;
  const draw = () => {
    drawnAt = now();
    // \r back to the start of the line, ESC[K clears what a longer previous line left.
    target.write(`\r${progressLine(label, done, total, drawnAt - started, target.columns ?? 80)}\u001b[K`);
  };
  return {
    advance(bytes) {
      done += bytes;
      if (now() - drawnAt >= REDRAW_MS) draw();
    },
    done() {
      if (finished) return;
      finished = true;
      draw();
      target.write('\n');
    },
    abandon() {
      if (finished) return;
      finished = true;
      target.write('\n');
    },
  };
}

/**
 * The terminal view of a domain's logs: pino's JSON lines shortened to `[domain] LEVEL service: message`,
 * with the fields a reader needs; anything else a child process writes is passed through, prefixed.
 */

const LEVELS: Readonly<Record<number, string>> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};
const STANDARD = new Set(['level', 'time', 'pid', 'hostname', 'name', 'msg', 'domain', 'err', 'v']);
const MAX_FIELD = 200;

function field(value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > MAX_FIELD ? `${text.slice(0, MAX_FIELD)}…` : text;
}

export function formatLogLine(domain: string, line: string): string {
  let entry: Record<string, unknown> | undefined;
  if (line.startsWith('{')) {
    try {
      entry = JSON.parse(line) as Record<string, unknown>;
    } catch {
      entry = undefined;
    }
  }
  if (entry === undefined || typeof entry.level !== 'number') return `[${domain}] ${line}\n`;
  const level = LEVELS[entry.level] ?? String(entry.level);
  const parts = [`[${domain}]`, level.padEnd(5), `${String(entry.name ?? 'federizer')}:`, String(entry.msg ?? '')];
  const err = entry.err as { message?: string; type?: string } | undefined;
  if (err?.message) parts.push(`— ${err.type && err.type !== 'Error' ? `${err.type}: ` : ''}${err.message}`);
  const extra = Object.entries(entry)
    .filter(([key]) => !STANDARD.has(key))
    .map(([key, value]) => `${key}=${field(value)}`);
  if (extra.length > 0) parts.push(`(${extra.join(' ')})`);
  return `${parts.join(' ')}\n`;
}

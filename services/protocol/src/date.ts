/** RFC 5322 §3.3 date-time, as the protocol writes it: `Sun, 22 Dec 2024 20:49:35 +0100`. */
import { ProtocolError } from './errors.js';

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'] as const;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'] as const;

const pad = (n: number, width = 2): string => String(n).padStart(width, '0');

/** Formats an instant in the given zone offset (minutes east of UTC, default UTC). */
export function formatDate(date: Date, offsetMinutes = 0): string {
  if (!Number.isFinite(date.getTime())) throw new TypeError('invalid date');
  const local = new Date(date.getTime() + offsetMinutes * 60_000);
  const sign = offsetMinutes < 0 ? '-' : '+';
  const abs = Math.abs(offsetMinutes);
  return (
    `${DAYS[local.getUTCDay()]}, ${local.getUTCDate()} ${MONTHS[local.getUTCMonth()]} ${local.getUTCFullYear()} ` +
    `${pad(local.getUTCHours())}:${pad(local.getUTCMinutes())}:${pad(local.getUTCSeconds())} ${sign}${pad(Math.floor(abs / 60))}${pad(abs % 60)}`
  );
}

// The day and month names are case-insensitive, as every quoted string of RFC 5234's ABNF (§2.3).
const DATE_TIME =
  /^\s*(?:(Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s*,\s*)?(\d{1,2})\s+(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+(\d{4})\s+(\d{2}):(\d{2})(?::(\d{2}))?\s+([+-])(\d{2})(\d{2})\s*$/i;
const nameIndex = (names: readonly string[], name: string) =>
  names.findIndex((n) => n.toLowerCase() === name.toLowerCase());

/** Parses the RFC 5322 date-time form (no obsolete zones). Throws ProtocolError('invalid_header'). */
export function parseDate(value: string): Date {
  // RFC 5322 §3.3 allows CFWS after the zone, e.g. "+0100 (CET)"; the comment carries no meaning.
  const m = DATE_TIME.exec(value.replace(/\s*\([^()]*\)\s*$/, ''));
  if (!m) throw new ProtocolError('invalid_header', `Date: ${JSON.stringify(value)} is not an RFC 5322 date-time`);
  const [, day, dd, mon, yyyy, hh, mi, ss, sign, zh, zm] = m;
  const month = nameIndex(MONTHS, mon!);
  const utc = Date.UTC(Number(yyyy), month, Number(dd), Number(hh), Number(mi), Number(ss ?? 0));
  const offset = (sign === '-' ? -1 : 1) * (Number(zh) * 60 + Number(zm));
  const parsed = new Date(utc - offset * 60_000);
  const check = new Date(utc);
  const valid =
    check.getUTCDate() === Number(dd) && Number(hh) < 24 && Number(mi) < 60 && Number(ss ?? 0) < 61 && Number(zm) < 60;
  if (!valid) throw new ProtocolError('invalid_header', `Date: ${JSON.stringify(value)} names no real moment`);
  if (day !== undefined && check.getUTCDay() !== nameIndex(DAYS, day)) {
    throw new ProtocolError('invalid_header', `Date: ${JSON.stringify(value)} has the wrong day of the week`);
  }
  return parsed;
}

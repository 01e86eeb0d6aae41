/** `federizer mail list` without --json: one line per message, for people. */
import type { FullMessage } from './mailbox-client.js';

/** East Asian wide and fullwidth characters and emoji take two columns of a terminal. */
const WIDE =
  /[\u1100-\u115f\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6\u{20000}-\u{3fffd}]|\p{Emoji_Presentation}/u;
/** Combining marks, format characters (zero-width joiner, ...) and variation selectors take none. */
const ZERO_WIDTH = /[\p{Mn}\p{Me}\p{Cf}\ufe00-\ufe0f]/u;

function charWidth(ch: string): number {
  return ZERO_WIDTH.test(ch) ? 0 : WIDE.test(ch) ? 2 : 1;
}

/** The columns `text` takes on a terminal, so that the columns of the table line up. */
export function displayWidth(text: string): number {
  let width = 0;
  for (const ch of text) width += charWidth(ch);
  return width;
}

/**
 * One line of at most `width` columns. Whitespace runs become one space, and control characters, which a
 * received header may hold (C1, say), become U+FFFD: they would drive the terminal, not be shown.
 */
function clip(text: string, width: number): string {
  const clean = text.replace(/\s+/g, ' ').replace(/\p{Cc}/gu, '\ufffd');
  if (displayWidth(clean) <= width) return clean;
  let out = '';
  let used = 0;
  for (const ch of clean) {
    const w = charWidth(ch);
    if (used + w > width - 1) break;
    out += ch;
    used += w;
  }
  return `${out}…`;
}

/** `YYYY-MM-DD HH:MM` in UTC: the same on every machine, sortable. */
function when(ms: number): string {
  return new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
}

/** `2/3 held`, `1 failed`: what the mailbox holds of the message's resources. */
export function resourceState(resources: FullMessage['resources']): string {
  if (resources.length === 0) return '-';
  const held = resources.filter((r) => r.status === 'held').length;
  const failed = resources.filter((r) => r.status === 'failed').length;
  return `${held}/${resources.length} held${failed > 0 ? `, ${failed} failed` : ''}`;
}

export function messageTable(messages: readonly FullMessage[]): string {
  if (messages.length === 0) return 'No messages.\n';
  const rows = messages.map((m) => [
    when(m.date),
    clip(m.from, 32),
    clip(m.subject === '' ? '(no subject)' : m.subject, 40),
    resourceState(m.resources),
    clip(m.messageId, Infinity),
  ]);
  const head = ['DATE (UTC)', 'FROM', 'SUBJECT', 'RESOURCES', 'MESSAGE-ID'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => displayWidth(r[i]!))));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c + ' '.repeat(widths[i]! - displayWidth(c))))
      .join('  ')
      .trimEnd();
  return `${[head, ...rows].map(line).join('\n')}\n`;
}

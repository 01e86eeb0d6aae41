/** `federizer mail list` without --json: one line per message, for people. */
import type { FullMessage } from './mailbox-client.js';

function clip(text: string, width: number): string {
  const chars = [...text.replace(/\s+/g, ' ')];
  return chars.length <= width ? chars.join('') : `${chars.slice(0, width - 1).join('')}…`;
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
    m.messageId,
  ]);
  const head = ['DATE (UTC)', 'FROM', 'SUBJECT', 'RESOURCES', 'MESSAGE-ID'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => [...r[i]!].length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c + ' '.repeat(widths[i]! - [...c].length)))
      .join('  ')
      .trimEnd();
  return `${[head, ...rows].map(line).join('\n')}\n`;
}

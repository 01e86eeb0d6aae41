import { describe, expect, it } from 'vitest';
import { formatLogLine } from './log-format.js';

describe('formatLogLine', () => {
  it('shortens a pino line to domain, level, service and message, keeping the fields a reader needs', () => {
    const line = JSON.stringify({
      level: 40,
      time: 1,
      pid: 7,
      hostname: 'h',
      name: 'mailbox',
      domain: 'example.com',
      msg: 'transfer will be retried',
      attempt: 2,
      err: { type: 'TypeError', message: 'fetch failed' },
    });
    expect(formatLogLine('example.com', line)).toBe(
      '[example.com] WARN  mailbox: transfer will be retried — TypeError: fetch failed (attempt=2)\n',
    );
  });

  it('passes anything else through, prefixed, and cuts long fields', () => {
    expect(formatLogLine('example.net', 'a plain line {')).toBe('[example.net] a plain line {\n');
    expect(formatLogLine('example.net', '{"not":"pino"}')).toBe('[example.net] {"not":"pino"}\n');
    const long = formatLogLine('x.org', JSON.stringify({ level: 50, msg: 'm', detail: 'y'.repeat(500) }));
    expect(long).toMatch(/^\[x\.org\] ERROR federizer: m \(detail=y{200}…\)\n$/);
  });
});

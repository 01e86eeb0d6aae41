import { describe, expect, it } from 'vitest';
import { formatSqlStats, type SqlStats } from './sqlite-client.js';

describe('formatSqlStats (FEDERIZER_SQL_STATS=1)', () => {
  it('prints the total, then each table, then each statement, most expensive first', () => {
    const stats: SqlStats = new Map([
      ['select * from `mail_jobs` where `id` = ?', { count: 4, ns: 400_000n }],
      ['insert into `mail_jobs` (`id`) values (?)', { count: 1, ns: 3_000_000n }],
      ['BEGIN;', { count: 2, ns: 20_000n }],
    ]);
    const lines = formatSqlStats(stats).trimEnd().split('\n');
    expect(lines[0]).toBe('SQL total 3 ms, 7 statements (ms, count, mean, per table then per statement)');
    // Tables by count: mail_jobs (5 statements, 3.4 ms, 680 µs each), then BEGIN.
    expect(lines[1]).toMatch(/^\s+3\s+5\s+680us mail_jobs$/);
    expect(lines[2]).toMatch(/^\s+0\s+2\s+10us BEGIN;$/);
    expect(lines.slice(3).map((l) => l.replace(/^.*us /, ''))).toEqual([
      'insert into `mail_jobs` (`id`) values (?)',
      'select * from `mail_jobs` where `id` = ?',
      'BEGIN;',
    ]);
  });
});

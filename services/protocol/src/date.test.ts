/** PROTOCOL §1 date header values: RFC 5322 §3.3 date-time, against date.ts. */
import { describe, expect, it } from 'vitest';
import { formatDate, parseDate } from './date.js';
import { ProtocolError } from './errors.js';

function thrown(f: () => unknown): ProtocolError {
  let error: unknown;
  try {
    f();
  } catch (e) {
    error = e;
  }
  expect(error, 'expected a ProtocolError to be thrown').toBeInstanceOf(ProtocolError);
  return error as ProtocolError;
}

const INSTANT = new Date('2024-12-22T19:49:35Z');

describe('formatDate (RFC 5322 §3.3)', () => {
  it('PROTOCOL §1: the example value, +0100', () => {
    expect(formatDate(INSTANT, 60)).toBe('Sun, 22 Dec 2024 20:49:35 +0100');
  });

  it('UTC by default, written +0000', () => {
    expect(formatDate(INSTANT)).toBe('Sun, 22 Dec 2024 19:49:35 +0000');
  });

  it('a negative offset, -0500', () => {
    expect(formatDate(INSTANT, -300)).toBe('Sun, 22 Dec 2024 14:49:35 -0500');
  });

  it('offsets with minutes: +0530, -0930, +0545', () => {
    expect(formatDate(INSTANT, 330)).toBe('Mon, 23 Dec 2024 01:19:35 +0530');
    expect(formatDate(INSTANT, -570)).toBe('Sun, 22 Dec 2024 10:19:35 -0930');
    expect(formatDate(INSTANT, 345)).toBe('Mon, 23 Dec 2024 01:34:35 +0545');
  });

  it('the local date (weekday, day, month, year) moves with the offset across a year boundary', () => {
    const t = new Date('2024-12-31T23:30:05Z');
    expect(formatDate(t, 60)).toBe('Wed, 1 Jan 2025 00:30:05 +0100');
    expect(formatDate(new Date('2025-01-01T00:10:00Z'), -60)).toBe('Tue, 31 Dec 2024 23:10:00 -0100');
  });

  it('§3.3: hour, minute, second and zone are two/four digits; seconds are truncated, not rounded', () => {
    expect(formatDate(new Date('2025-03-04T05:06:07.999Z'))).toBe('Tue, 4 Mar 2025 05:06:07 +0000');
  });

  it('§3.3: the output matches the date-time grammar', () => {
    const grammar =
      /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}$/;
    for (let i = 0; i < 50; i++) {
      const t = new Date(Date.UTC(2000, 0, 1) + i * 7_919_000_033);
      expect(formatDate(t, ((i * 97) % 1440) - 720)).toMatch(grammar);
    }
  });

  it('an invalid Date is refused', () => {
    expect(() => formatDate(new Date(Number.NaN))).toThrow();
  });
});

describe('parseDate (RFC 5322 §3.3)', () => {
  it('PROTOCOL §1: the example value names 2024-12-22T19:49:35Z', () => {
    expect(parseDate('Sun, 22 Dec 2024 20:49:35 +0100').toISOString()).toBe('2024-12-22T19:49:35.000Z');
  });

  it('round trip: parseDate(formatDate(d, offset)) is d, for many offsets', () => {
    for (const offset of [0, 60, -300, 330, -570, 840, -720, 345]) {
      for (let i = 0; i < 20; i++) {
        const d = new Date(Date.UTC(1999, 11, 31, 22) + i * 3_600_000 * 37 + i * 61_000);
        expect(parseDate(formatDate(d, offset)).getTime()).toBe(d.getTime());
      }
    }
  });

  it('§3.3: the day of the week is optional', () => {
    expect(parseDate('22 Dec 2024 20:49:35 +0100').toISOString()).toBe('2024-12-22T19:49:35.000Z');
  });

  it('§3.3: seconds are optional', () => {
    expect(parseDate('Sun, 22 Dec 2024 20:49 +0100').toISOString()).toBe('2024-12-22T19:49:00.000Z');
  });

  it('§3.3: a single-digit day', () => {
    expect(parseDate('Wed, 1 Jan 2025 00:30:05 +0100').toISOString()).toBe('2024-12-31T23:30:05.000Z');
  });

  it('§3.3: -0000 is UTC', () => {
    expect(parseDate('Sun, 22 Dec 2024 19:49:35 -0000').toISOString()).toBe('2024-12-22T19:49:35.000Z');
  });

  it('§3.3: 29 Feb in a leap year is a real date', () => {
    expect(parseDate('Thu, 29 Feb 2024 12:00:00 +0000').toISOString()).toBe('2024-02-29T12:00:00.000Z');
  });

  it('§3.3: a trailing comment (CFWS) after the zone is allowed', () => {
    expect(parseDate('Sun, 22 Dec 2024 20:49:35 +0100 (CET)').toISOString()).toBe('2024-12-22T19:49:35.000Z');
  });

  it('§3.3: the wrong day of the week is rejected', () => {
    const err = thrown(() => parseDate('Mon, 22 Dec 2024 20:49:35 +0100'));
    expect(err.code).toBe('invalid_header');
    expect(err.message).toMatch(/day of the week/);
  });

  it('§3.3: the weekday is the local one: Mon 23 Dec at +0530 is Sun 22 Dec in UTC', () => {
    expect(parseDate('Mon, 23 Dec 2024 01:19:35 +0530').toISOString()).toBe('2024-12-22T19:49:35.000Z');
    expect(thrown(() => parseDate('Sun, 23 Dec 2024 01:19:35 +0530')).code).toBe('invalid_header');
  });

  it.each([
    ['31 Feb', 'Sat, 31 Feb 2024 12:00:00 +0000'],
    ['31 Feb without a weekday', '31 Feb 2024 12:00:00 +0000'],
    ['29 Feb in a common year', '29 Feb 2023 12:00:00 +0000'],
    ['31 Apr', '31 Apr 2024 12:00:00 +0000'],
    ['day 0', '0 Jan 2024 12:00:00 +0000'],
    ['day 32', '32 Jan 2024 12:00:00 +0000'],
    ['hour 24', 'Sun, 22 Dec 2024 24:00:00 +0000'],
    ['minute 60', 'Sun, 22 Dec 2024 20:60:00 +0000'],
    ['second 61', 'Sun, 22 Dec 2024 20:49:61 +0000'],
    ['zone minutes 60', 'Sun, 22 Dec 2024 20:49:35 +0160'],
  ])('§3.3: a date naming no real moment is rejected (%s)', (_label, value) => {
    expect(thrown(() => parseDate(value)).code).toBe('invalid_header');
  });

  it.each([
    ['an ISO 8601 date', '2024-12-22T19:49:35Z'],
    ['a numeric month', 'Sun, 22 12 2024 20:49:35 +0100'],
    ['a zone without sign', 'Sun, 22 Dec 2024 20:49:35 0100'],
    ['a zone of three digits', 'Sun, 22 Dec 2024 20:49:35 +100'],
    ['no zone', 'Sun, 22 Dec 2024 20:49:35'],
    ['an unknown weekday', 'Sno, 22 Dec 2024 20:49:35 +0100'],
    ['the empty string', ''],
  ])('§3.3: a value that is not a date-time is rejected (%s)', (_label, value) => {
    expect(thrown(() => parseDate(value)).code).toBe('invalid_header');
  });
});

/** RFC 9110 §14.1.2 and §14.2 single byte ranges, with the examples of the RFC where it gives them. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseRange } from './range.js';
import type { ParsedRange } from './range.js';

const range = (start: number, end: number): ParsedRange => ({ kind: 'range', start, end });
const NONE: ParsedRange = { kind: 'none' };
const UNSATISFIABLE: ParsedRange = { kind: 'unsatisfiable' };

describe('parseRange', () => {
  it.each<[string, number, ParsedRange]>([
    // RFC 9110 §14.1.2 examples, for a representation of 10000 bytes
    ['bytes=0-499', 10_000, range(0, 499)],
    ['bytes=500-999', 10_000, range(500, 999)],
    ['bytes=-500', 10_000, range(9500, 9999)],
    ['bytes=9500-', 10_000, range(9500, 9999)],
    ['bytes=0-0', 10_000, range(0, 0)],
    ['bytes=-1', 10_000, range(9999, 9999)],
    ['bytes=0-', 10_000, range(0, 9999)],
  ])('RFC 9110 §14.1.2: %s of %i bytes', (header, size, expected) => {
    expect(parseRange(header, size)).toEqual(expected);
  });

  it.each<[string, number, ParsedRange]>([
    ['bytes=0-99', 50, range(0, 49)],
    ['bytes=10-10000', 100, range(10, 99)],
    ['bytes=99-99', 100, range(99, 99)],
    ['bytes=0-99999999999999999999999999', 100, range(0, 99)],
  ])('RFC 9110 §14.1.2: a last-pos past the end is clamped to size-1 (%s of %i bytes)', (header, size, expected) => {
    expect(parseRange(header, size)).toEqual(expected);
  });

  it.each<[string, number, ParsedRange]>([
    ['bytes=-500', 100, range(0, 99)],
    ['bytes=-100', 100, range(0, 99)],
    ['bytes=-99999999999999999999999999', 100, range(0, 99)],
  ])('RFC 9110 §14.1.2: a suffix longer than the representation selects all of it (%s of %i)', (header, size, e) => {
    expect(parseRange(header, size)).toEqual(e);
  });

  it.each<[string, number]>([
    ['bytes=100-', 100],
    ['bytes=100-200', 100],
    ['bytes=99999999999999999999999999-', 100],
    ['bytes=-0', 100],
    ['bytes=1-', 0],
    ['bytes=-0', 0],
  ])('RFC 9110 §14.1.1: %s of %i bytes is unsatisfiable (416)', (header, size) => {
    expect(parseRange(header, size)).toEqual(UNSATISFIABLE);
  });

  it('RFC 9110 §14.1.1: a suffix of an empty representation selects nothing, so the whole (empty) one is served', () => {
    expect(parseRange('bytes=-5', 0)).toEqual(NONE);
  });

  it('RFC 9110 §14.2: bytes=0- (and 0-N) of an empty representation, a resume from nothing held, is served whole, not 416', () => {
    // Unsatisfiable by §14.1.1, but a fetcher that always asks from the bytes it holds would otherwise be
    // answered 416 for ever; a server may ignore Range (§14.2).
    expect(parseRange('bytes=0-', 0)).toEqual(NONE);
    expect(parseRange('bytes=0-0', 0)).toEqual(NONE);
  });

  it.each(['bytes=0-1,5-6', 'bytes=0-1, 5-6', 'bytes=-1,0-0', 'bytes=0-1,200-300', 'bytes=0-1,abc'])(
    'RFC 9110 §14.2: several ranges (%s) are ignored and the whole representation is served',
    (header) => {
      expect(parseRange(header, 1000)).toEqual(NONE);
    },
  );

  it.each([
    undefined,
    '',
    'bytes',
    'bytes=',
    'bytes=,',
    'bytes=-',
    'bytes=abc',
    'bytes=a-b',
    'bytes=5-1',
    'bytes=1-2-3',
    'bytes=+1-2',
    'bytes=1.5-2',
    'bytes=0x10-',
    'bytes=１-２',
    'bytes 0-1',
    'bytes:0-1',
    '=0-1',
    'bytes =0-1',
    'items=0-1',
    'none',
  ])('RFC 9110 §14.2: a malformed or foreign Range (%j) is ignored', (header) => {
    expect(parseRange(header, 1000)).toEqual(NONE);
  });

  it.each<[string, ParsedRange]>([
    ['BYTES=0-9', range(0, 9)],
    ['Bytes=0-9', range(0, 9)],
    ['  bytes=0-9  ', range(0, 9)],
    ['bytes=0-9,', range(0, 9)],
    ['bytes=, 0-9 ,', range(0, 9)],
  ])('RFC 9110 §14.1, §5.6.1: %j is one range (case-insensitive unit, empty list elements)', (header, expected) => {
    expect(parseRange(header, 1000)).toEqual(expected);
  });

  it('a size that is not a byte count is a caller mistake', () => {
    expect(() => parseRange('bytes=0-1', -1)).toThrow(TypeError);
    expect(() => parseRange('bytes=0-1', 1.5)).toThrow(TypeError);
    expect(() => parseRange('bytes=0-1', Number.NaN)).toThrow(TypeError);
  });

  it('RFC 9110 §14.1.2: every range answered lies within the representation', () => {
    const position = fc.oneof(fc.nat(), fc.bigInt({ min: 0n, max: 10n ** 30n }).map(String));
    const header = fc.oneof(
      fc.tuple(position, fc.option(position)).map(([first, last]) => `bytes=${first}-${last ?? ''}`),
      position.map((suffix) => `bytes=-${suffix}`),
    );
    fc.assert(
      fc.property(header, fc.nat({ max: 1_000_000 }), (h, size) => {
        const parsed = parseRange(h, size);
        if (parsed.kind === 'range') {
          expect(Number.isSafeInteger(parsed.start) && Number.isSafeInteger(parsed.end)).toBe(true);
          expect(0 <= parsed.start && parsed.start <= parsed.end && parsed.end < size).toBe(true);
        }
        if (size > 0 && parsed.kind === 'none') {
          // Only an invalid int-range (last-pos < first-pos) is ignored among these.
          const [first, last] = h.slice('bytes='.length).split('-');
          expect(BigInt(last!) < BigInt(first!)).toBe(true);
        }
      }),
    );
  });
});

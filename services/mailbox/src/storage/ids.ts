/**
 * Row ids for messages, shares and jobs: a 48-bit millisecond timestamp and 80 random bits, written as 26
 * characters of lower-case Crockford base32 (the ULID layout). Fixed width and an alphabet in ASCII order
 * make the string order the time order, so `order by id` lists by arrival and a cursor is just an id.
 */
import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
export const ID_LENGTH = 26;
export const ID_PATTERN = /^[0-7][0-9a-hjkmnp-tv-z]{25}$/;

const RANDOM_BITS = 80n;
const RANDOM_LIMIT = 1n << RANDOM_BITS;
const MAX_TIME = 2 ** 48;

function random80(): bigint {
  return BigInt(`0x${randomBytes(10).toString('hex')}`);
}

function encode(value: bigint): string {
  let out = '';
  let v = value;
  for (let i = 0; i < ID_LENGTH; i++) {
    out = ALPHABET[Number(v & 31n)] + out;
    v >>= 5n;
  }
  return out;
}

/**
 * A generator of ids that also increase within one millisecond and when the clock steps back: the random
 * part of the previous id is incremented instead of drawn anew. Ids from different generators (replicas)
 * stay unique through their random parts.
 */
export function createIdGenerator(now: () => number): () => string {
  let lastMs = -1;
  let last = 0n;
  return () => {
    let ms = Math.floor(now());
    if (!Number.isSafeInteger(ms) || ms < 0 || ms >= MAX_TIME) throw new TypeError(`clock out of range: ${ms}`);
    let random: bigint;
    if (ms <= lastMs) {
      ms = lastMs;
      random = last + 1n;
      if (random >= RANDOM_LIMIT) {
        ms = lastMs + 1;
        random = random80();
      }
    } else {
      random = random80();
    }
    lastMs = ms;
    last = random;
    return encode((BigInt(ms) << RANDOM_BITS) | random);
  };
}

/** The millisecond timestamp an id was made at. */
export function idTime(id: string): number {
  if (!ID_PATTERN.test(id)) throw new TypeError(`not an id: ${JSON.stringify(id)}`);
  let v = 0;
  for (const c of id.slice(0, 10)) v = v * 32 + ALPHABET.indexOf(c);
  return v;
}

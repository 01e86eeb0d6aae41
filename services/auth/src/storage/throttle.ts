/**
 * Exponential backoff of password attempts, per account and per client address, in the `login_throttle`
 * table so every replica of the AS sees the same counters. An attempt is reserved before the password is
 * checked: one statement per key counts it and says whether it may go ahead, so concurrent attempts cannot
 * all pass a check made before any of them was counted (each is counted, and only as many go ahead as would
 * one after the other). A throttled attempt is refused before the password is checked, so guessing costs the
 * attacker time instead of costing the server scrypt work.
 */
import { isIPv4, isIPv6 } from 'node:net';
import type { Knex } from 'knex';
import { dbNumber } from '@federizer/common';

/** Failures that cost nothing: typos should not lock anyone out. */
export const THROTTLE_FREE_FAILURES = 3;
export const THROTTLE_MAX_DELAY_MS = 15 * 60 * 1000;
/** An entry is forgotten this long after its last failure. */
export const THROTTLE_FORGET_AFTER_MS = 24 * 3600 * 1000;

const KEY = /^(account|ip):.{1,300}$/s;

export function accountThrottleKey(address: string): string {
  return `account:${address.toLowerCase()}`;
}

/**
 * The client address's key. An IPv6 client is keyed by its /64: a single host is usually given a whole /64
 * (RFC 6177, RFC 7934 §6), so keying by the full address would give an attacker 2^64 fresh buckets. An
 * IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, as a dual-stack socket reports IPv4 clients) is its IPv4
 * address.
 */
export function ipThrottleKey(ip: string): string {
  if (isIPv6(ip)) {
    const groups = ipv6Groups(ip);
    if (groups !== undefined) {
      const mapped = groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff;
      if (mapped) return `ip:${groups[6]! >> 8}.${groups[6]! & 0xff}.${groups[7]! >> 8}.${groups[7]! & 0xff}`;
      return `ip:${groups
        .slice(0, 4)
        .map((g) => g.toString(16))
        .join(':')}::/64`;
    }
  }
  return `ip:${isIPv4(ip) ? ip : ip.toLowerCase()}`;
}

/** The eight 16-bit groups of an IPv6 address (node:net's isIPv6 has accepted it), zone dropped. */
function ipv6Groups(ip: string): number[] | undefined {
  let text = ip.split('%')[0]!;
  const dotted = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(2).map(Number) as [number, number, number, number];
    text = `${dotted[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const head = halves[0] === '' ? [] : halves[0]!.split(':');
  const tail = halves.length === 2 && halves[1] !== '' ? halves[1]!.split(':') : [];
  const zeros = 8 - head.length - tail.length;
  if (halves.length === 1 ? zeros !== 0 : zeros < 1) return undefined;
  const groups = [...head, ...Array<string>(halves.length === 2 ? zeros : 0).fill('0'), ...tail].map((g) =>
    Number.parseInt(g, 16),
  );
  return groups.length === 8 && groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : undefined;
}

/** The wait imposed after the n-th consecutive failure: none for the free ones, then 2, 4, 8 ... seconds. */
export function throttleDelayMs(failures: number): number {
  if (failures <= THROTTLE_FREE_FAILURES) return 0;
  // Capped before exponentiating so a huge failure count cannot overflow to Infinity.
  const exponent = Math.min(failures - THROTTLE_FREE_FAILURES, 30);
  return Math.min(2 ** exponent * 1000, THROTTLE_MAX_DELAY_MS);
}

/**
 * `throttleDelayMs(n)` in SQL, for the failure count `n` an SQL expression (with its bindings): a CASE over
 * the few counts below the cap, the same on SQLite and PostgreSQL (which have no common power function).
 */
function delaySql(n: string, bindings: readonly Knex.Value[]): { sql: string; bindings: Knex.Value[] } {
  let sql = `case when ${n} <= ${THROTTLE_FREE_FAILURES} then 0`;
  const all: Knex.Value[] = [...bindings];
  for (let count = THROTTLE_FREE_FAILURES + 1; throttleDelayMs(count) < THROTTLE_MAX_DELAY_MS; count++) {
    sql += ` when ${n} = ${count} then ${throttleDelayMs(count)}`;
    all.push(...bindings);
  }
  return { sql: `${sql} else ${THROTTLE_MAX_DELAY_MS} end`, bindings: all };
}

interface ThrottleRow {
  key: string;
  failures: unknown;
  next_allowed_at: unknown;
  updated_at: unknown;
}

/** One key's share of an admitted attempt: what `release` needs to take it back. */
interface Reserved {
  readonly key: string;
  /** The attempt's time (epoch ms). */
  readonly at: number;
  /** The next_allowed_at the reservation wrote. */
  readonly nextAllowedAt: number;
}

/**
 * The answer of `reserve`: the attempt may go ahead (and is counted as a failure until released), or must
 * wait `retryAfterSeconds` (and was not counted).
 */
export type Reservation =
  | { readonly allowed: true; readonly reserved: readonly Reserved[] }
  | { readonly allowed: false; readonly retryAfterSeconds: number };

export class LoginThrottle {
  readonly #knex: Knex;

  constructor(knex: Knex) {
    this.#knex = knex;
  }

  /** Allowed when no key is waiting; otherwise the longest wait among the keys, in whole seconds. Reads only. */
  async check(keys: readonly string[], now: Date): Promise<{ allowed: boolean; retryAfterSeconds: number }> {
    const unique = validKeys(keys);
    if (unique.length === 0) return { allowed: true, retryAfterSeconds: 0 };
    const ms = now.getTime();
    const rows = (await this.#knex('login_throttle')
      .select('key', 'failures', 'next_allowed_at', 'updated_at')
      .whereIn('key', unique)) as ThrottleRow[];
    let waitMs = 0;
    for (const row of rows) {
      if (dbNumber(row.updated_at) <= ms - THROTTLE_FORGET_AFTER_MS) continue;
      waitMs = Math.max(waitMs, dbNumber(row.next_allowed_at) - ms);
    }
    return waitMs > 0
      ? { allowed: false, retryAfterSeconds: Math.ceil(waitMs / 1000) }
      : { allowed: true, retryAfterSeconds: 0 };
  }

  /**
   * Reserves an attempt under every key, in the order given (put the client address first: an address that
   * must wait then touches no account's counter). Under each key one statement both decides and counts: a
   * key that is not waiting counts the attempt as a failure and starts the backoff that failure would start;
   * a waiting key changes nothing. When a key refuses, the keys reserved before it are released and the
   * answer is the longest wait. A password that then fails leaves the reservation as its failure; a success
   * or an error releases it (`release`).
   */
  async reserve(keys: readonly string[], now: Date): Promise<Reservation> {
    const ms = now.getTime();
    const reserved: Reserved[] = [];
    for (const key of validKeys(keys)) {
      let one: Reserved | undefined;
      try {
        one = await this.#reserveOne(key, ms);
      } catch (error) {
        // The caller gets no reservation to release: the keys counted so far are taken back here.
        await this.release({ allowed: true, reserved }).catch(() => undefined);
        throw error;
      }
      if (one === undefined) {
        await this.release({ allowed: true, reserved });
        const wait = await this.check(keys, now);
        // The key that refused may have been released or cleared since: a second is still the honest answer.
        return { allowed: false, retryAfterSeconds: Math.max(wait.retryAfterSeconds, 1) };
      }
      reserved.push(one);
    }
    return { allowed: true, reserved };
  }

  async #reserveOne(key: string, ms: number): Promise<Reserved | undefined> {
    const staleBefore = ms - THROTTLE_FORGET_AFTER_MS;
    // The failure count this attempt makes: a stale entry starts over.
    const count = 'case when ?? <= ? then 1 else ?? + 1 end';
    const countBindings: Knex.Value[] = ['login_throttle.updated_at', staleBefore, 'login_throttle.failures'];
    const delay = delaySql(`(${count})`, countBindings);
    const rows = (await this.#knex('login_throttle')
      .insert({ key, failures: 1, next_allowed_at: ms + throttleDelayMs(1), updated_at: ms })
      .onConflict('key')
      .merge({
        failures: this.#knex.raw(count, countBindings),
        next_allowed_at: this.#knex.raw(`cast(? as bigint) + ${delay.sql}`, [ms, ...delay.bindings]),
        updated_at: ms,
      })
      // Only a key that is not waiting (or whose entry is stale) counts the attempt; otherwise no row changes
      // and none is returned. PostgreSQL evaluates this on the latest version of the row, under its lock.
      .where((q) =>
        q.where('login_throttle.updated_at', '<=', staleBefore).orWhere('login_throttle.next_allowed_at', '<=', ms),
      )
      .returning(['next_allowed_at'])) as { next_allowed_at: unknown }[];
    return rows.length === 0 ? undefined : { key, at: ms, nextAllowedAt: dbNumber(rows[0]!.next_allowed_at) };
  }

  /**
   * Takes back the attempts a reservation counted: each key's count goes down by one, and the wait the
   * reservation started is lifted again unless a later attempt has pushed it on since. Used when the
   * password was right (for the client address: its account is cleared with `recordSuccess`) and when the
   * attempt did not happen after all.
   */
  async release(reservation: Reservation): Promise<void> {
    if (!reservation.allowed) return;
    for (const { key, at, nextAllowedAt } of reservation.reserved) {
      await this.#knex('login_throttle')
        .where({ key })
        .update({
          failures: this.#knex.raw('case when ?? > 0 then ?? - 1 else 0 end', [
            'login_throttle.failures',
            'login_throttle.failures',
          ]),
          next_allowed_at: this.#knex.raw('case when ?? = ? then ? else ?? end', [
            'login_throttle.next_allowed_at',
            nextAllowedAt,
            at,
            'login_throttle.next_allowed_at',
          ]),
        });
    }
  }

  /**
   * Forgets the keys. Pass the account key only: clearing the IP key on a success would let an attacker
   * holding one valid account reset the IP's counter between guesses at others.
   */
  async recordSuccess(keys: readonly string[]): Promise<void> {
    const unique = validKeys(keys);
    if (unique.length > 0) await this.#knex('login_throttle').whereIn('key', unique).delete();
  }
}

function validKeys(keys: readonly string[]): string[] {
  for (const key of keys) {
    if (typeof key !== 'string' || !KEY.test(key)) {
      throw new TypeError(`throttle keys are "account:<address>" or "ip:<address>", not ${JSON.stringify(key)}`);
    }
  }
  return [...new Set(keys)];
}

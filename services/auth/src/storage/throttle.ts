/**
 * Exponential backoff of password attempts, per account and per client IP, in the `login_throttle` table
 * so every replica of the AS sees the same counters. A throttled attempt is refused before the password is
 * checked, so guessing costs the attacker time instead of costing the server scrypt work.
 */
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

export function ipThrottleKey(ip: string): string {
  return `ip:${ip}`;
}

/** The wait imposed after the n-th consecutive failure: none for the free ones, then 2, 4, 8 ... seconds. */
export function throttleDelayMs(failures: number): number {
  if (failures <= THROTTLE_FREE_FAILURES) return 0;
  // Capped before exponentiating so a huge failure count cannot overflow to Infinity.
  const exponent = Math.min(failures - THROTTLE_FREE_FAILURES, 30);
  return Math.min(2 ** exponent * 1000, THROTTLE_MAX_DELAY_MS);
}

interface ThrottleRow {
  key: string;
  failures: unknown;
  next_allowed_at: unknown;
  updated_at: unknown;
}

export class LoginThrottle {
  readonly #knex: Knex;

  constructor(knex: Knex) {
    this.#knex = knex;
  }

  /** Allowed when no key is waiting; otherwise the longest wait among the keys, in whole seconds. */
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

  async recordFailure(keys: readonly string[], now: Date): Promise<void> {
    const ms = now.getTime();
    const staleBefore = ms - THROTTLE_FORGET_AFTER_MS;
    for (const key of validKeys(keys)) {
      // The count is incremented atomically (concurrent failures each count); a stale entry starts over.
      const rows = (await this.#knex('login_throttle')
        .insert({ key, failures: 1, next_allowed_at: ms, updated_at: ms })
        .onConflict('key')
        .merge({
          failures: this.#knex.raw('case when ?? <= ? then 1 else ?? + 1 end', [
            'login_throttle.updated_at',
            staleBefore,
            'login_throttle.failures',
          ]),
          next_allowed_at: this.#knex.raw('case when ?? <= ? then ? else ?? end', [
            'login_throttle.updated_at',
            staleBefore,
            ms,
            'login_throttle.next_allowed_at',
          ]),
          updated_at: ms,
        })
        .returning('failures')) as { failures: unknown }[];
      const failures = dbNumber(rows[0]?.failures);
      const delay = throttleDelayMs(failures);
      if (delay === 0) continue;
      // Only ever pushed later: of two concurrent failures, the one with the smaller count may write last.
      await this.#knex('login_throttle')
        .where({ key })
        .andWhere('next_allowed_at', '<', ms + delay)
        .update({ next_allowed_at: ms + delay });
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

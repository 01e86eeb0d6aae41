import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Knex } from 'knex';
import { createKnex, migrateLatest } from '@federizer/common';
// Test helpers are not part of @federizer/common's public entry point.
import { testDatabases } from '../../../common/src/testing/databases.js';
import { AUTH_MIGRATIONS_TABLE, authMigrations } from './migrations.js';
import { LoginThrottle, accountThrottleKey, ipThrottleKey, throttleDelayMs } from './throttle.js';

const T0 = Date.UTC(2030, 0, 15, 12, 0, 0);
const at = (ms: number) => new Date(T0 + ms);
const ACCOUNT = accountThrottleKey('Alice@Example.com');
const IP = ipThrottleKey('192.0.2.7');

describe('throttleDelayMs', () => {
  it('is free for three failures, then doubles from 2 s up to 15 min', () => {
    expect([0, 1, 2, 3].map(throttleDelayMs)).toEqual([0, 0, 0, 0]);
    expect([4, 5, 6, 12].map(throttleDelayMs)).toEqual([2_000, 4_000, 8_000, 512_000]);
    expect(throttleDelayMs(13)).toBe(900_000);
    expect(throttleDelayMs(1_000_000)).toBe(900_000);
  });

  it('builds the two key kinds; an IPv6 client is keyed by its /64, an IPv4-mapped one by its IPv4 address', () => {
    expect(ACCOUNT).toBe('account:alice@example.com');
    expect(IP).toBe('ip:192.0.2.7');
    expect(ipThrottleKey('2001:db8:1:2:3:4:5:6')).toBe('ip:2001:db8:1:2::/64');
    expect(ipThrottleKey('2001:DB8:1:2::ffff')).toBe('ip:2001:db8:1:2::/64');
    expect(ipThrottleKey('2001:db8::1')).toBe('ip:2001:db8:0:0::/64');
    expect(ipThrottleKey('::1')).toBe('ip:0:0:0:0::/64');
    expect(ipThrottleKey('fe80::1%eth0')).toBe('ip:fe80:0:0:0::/64');
    expect(ipThrottleKey('64:ff9b::192.0.2.1')).toBe('ip:64:ff9b:0:0::/64');
    expect(ipThrottleKey('::ffff:192.0.2.7')).toBe('ip:192.0.2.7');
    expect(ipThrottleKey('2001:db8:1:3::1')).not.toBe(ipThrottleKey('2001:db8:1:2::1'));
  });
});

describe.each(testDatabases())('LoginThrottle on $name', (database) => {
  let knex: Knex;
  let destroyDatabase: () => Promise<void>;
  let throttle: LoginThrottle;

  beforeAll(async () => {
    const created = await database.create();
    destroyDatabase = created.destroy;
    knex = createKnex(created.config);
    await migrateLatest(knex, authMigrations, AUTH_MIGRATIONS_TABLE);
    throttle = new LoginThrottle(knex);
  });

  afterAll(async () => {
    await knex?.destroy();
    await destroyDatabase?.();
  });

  beforeEach(async () => {
    await knex('login_throttle').delete();
  });

  const failures = async (key: string) =>
    Number(((await knex('login_throttle').where({ key }).first()) as { failures: unknown } | undefined)?.failures ?? 0);

  /** An attempt whose password turns out wrong: reserved, and the reservation kept. */
  const fail = (keys: string[], ms: number) => throttle.reserve(keys, at(ms));

  it('admits the first three attempts freely, the fourth starts a backoff, and a waiting key admits nothing', async () => {
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });
    for (let i = 0; i < 3; i++) expect((await fail([ACCOUNT], 0)).allowed).toBe(true);
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });

    expect((await fail([ACCOUNT], 0)).allowed).toBe(true); // 4th: admitted, and 2 s to wait after it
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: false, retryAfterSeconds: 2 });
    expect(await fail([ACCOUNT], 0)).toEqual({ allowed: false, retryAfterSeconds: 2 });
    expect(await fail([ACCOUNT], 1_001)).toEqual({ allowed: false, retryAfterSeconds: 1 });
    expect(await failures(ACCOUNT)).toBe(4); // refused attempts are not counted

    expect((await fail([ACCOUNT], 2_000)).allowed).toBe(true); // 5th: 4 s
    expect(await fail([ACCOUNT], 2_000)).toEqual({ allowed: false, retryAfterSeconds: 4 });
    expect((await fail([ACCOUNT], 6_000)).allowed).toBe(true); // 6th: 8 s
    expect(await throttle.check([ACCOUNT], at(6_000))).toEqual({ allowed: false, retryAfterSeconds: 8 });
  });

  it('caps the wait at 15 minutes', async () => {
    let t = 0;
    for (let i = 1; i <= 30; i++) {
      expect((await fail([ACCOUNT], t)).allowed, `attempt ${i}`).toBe(true);
      t += throttleDelayMs(i);
    }
    expect(await failures(ACCOUNT)).toBe(30);
    expect(await throttle.check([ACCOUNT], at(t - 900_000))).toEqual({ allowed: false, retryAfterSeconds: 900 });
    expect(await throttle.check([ACCOUNT], at(t))).toEqual({ allowed: true, retryAfterSeconds: 0 });
  });

  it('RFC 6819 §4.4.3.6 (online password guessing): concurrent attempts are each decided and counted atomically — 40 at once admit exactly the 4 that would pass one after another', async () => {
    const answers = await Promise.all(Array.from({ length: 40 }, () => fail([IP, ACCOUNT], 0)));
    expect(answers.filter((a) => a.allowed)).toHaveLength(4);
    for (const refused of answers.filter((a) => !a.allowed))
      expect(refused).toEqual({ allowed: false, retryAfterSeconds: 2 });
    expect(await failures(ACCOUNT)).toBe(4);
    expect(await failures(IP)).toBe(4);
  });

  it('answers the longest wait among the keys, counts nothing when one refuses, and keeps keys apart', async () => {
    for (let i = 0; i < 4; i++) await fail([IP, ACCOUNT], 0); // both: 2 s
    await fail([IP], 2_000); // IP: 5 failures, 4 s from 2 s
    expect(await throttle.check([ACCOUNT], at(2_000))).toEqual({ allowed: true, retryAfterSeconds: 0 });
    // The IP refuses: the account, reserved first here, is released again.
    expect(await fail([ACCOUNT, IP], 2_000)).toEqual({ allowed: false, retryAfterSeconds: 4 });
    expect(await failures(ACCOUNT)).toBe(4);
    expect(await throttle.check([ACCOUNT], at(2_000))).toEqual({ allowed: true, retryAfterSeconds: 0 });
    expect((await fail([accountThrottleKey('bob@example.com')], 2_000)).allowed).toBe(true);
    expect(await throttle.reserve([], at(0))).toEqual({ allowed: true, reserved: [] });
  });

  it('a released reservation takes its count back and lifts the wait it started', async () => {
    for (let i = 0; i < 3; i++) await fail([IP], 0);
    const fourth = await throttle.reserve([IP], at(0));
    expect(await throttle.check([IP], at(0))).toEqual({ allowed: false, retryAfterSeconds: 2 });
    await throttle.release(fourth);
    expect(await failures(IP)).toBe(3);
    expect(await throttle.check([IP], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });
  });

  it('forgets a key on success', async () => {
    for (let i = 0; i < 4; i++) await fail([IP, ACCOUNT], 0);
    await throttle.recordSuccess([ACCOUNT]);
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });
    expect((await throttle.check([IP], at(0))).allowed).toBe(false);
    // the next failure counts from one again
    await fail([ACCOUNT], 0);
    expect(await failures(ACCOUNT)).toBe(1);
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });
  });

  it('forgets entries 24 hours after their last failure', async () => {
    let t = 0;
    for (let i = 1; i <= 20; i++) {
      await fail([ACCOUNT], t);
      t += throttleDelayMs(i);
    }
    const day = t + 24 * 3600_000;
    expect((await throttle.check([ACCOUNT], at(day - 1))).allowed).toBe(true); // the 15 min passed long ago
    await fail([ACCOUNT], day);
    // counting starts over: one failure is free
    expect(await throttle.check([ACCOUNT], at(day))).toEqual({ allowed: true, retryAfterSeconds: 0 });
    expect(await failures(ACCOUNT)).toBe(1);

    // a failure less than 24 h ago still counts
    for (let i = 0; i < 4; i++) await fail([IP], 0);
    await fail([IP], 24 * 3600_000 - 1);
    expect(await throttle.check([IP], at(24 * 3600_000 - 1))).toEqual({ allowed: false, retryAfterSeconds: 4 });
  });

  it('refuses keys of unknown kinds as a caller mistake', async () => {
    await expect(throttle.check(['alice@example.com'], at(0))).rejects.toThrow(TypeError);
    await expect(throttle.reserve(['user:alice'], at(0))).rejects.toThrow(TypeError);
    await expect(throttle.recordSuccess(['ip:'])).rejects.toThrow(TypeError);
  });
});

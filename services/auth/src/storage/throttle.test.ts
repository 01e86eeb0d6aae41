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

  it('builds the two key kinds', () => {
    expect(ACCOUNT).toBe('account:alice@example.com');
    expect(IP).toBe('ip:192.0.2.7');
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

  it('lets the first three failures pass, then backs off exponentially', async () => {
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });
    for (let i = 0; i < 3; i++) await throttle.recordFailure([ACCOUNT], at(0));
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });

    await throttle.recordFailure([ACCOUNT], at(0)); // 4th: 2 s
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: false, retryAfterSeconds: 2 });
    expect(await throttle.check([ACCOUNT], at(1_001))).toEqual({ allowed: false, retryAfterSeconds: 1 });
    expect(await throttle.check([ACCOUNT], at(2_000))).toEqual({ allowed: true, retryAfterSeconds: 0 });

    await throttle.recordFailure([ACCOUNT], at(2_000)); // 5th: 4 s
    expect(await throttle.check([ACCOUNT], at(2_000))).toEqual({ allowed: false, retryAfterSeconds: 4 });
    await throttle.recordFailure([ACCOUNT], at(6_000)); // 6th: 8 s
    expect(await throttle.check([ACCOUNT], at(6_000))).toEqual({ allowed: false, retryAfterSeconds: 8 });
  });

  it('caps the wait at 15 minutes', async () => {
    for (let i = 0; i < 30; i++) await throttle.recordFailure([ACCOUNT], at(i));
    expect(await throttle.check([ACCOUNT], at(29))).toEqual({ allowed: false, retryAfterSeconds: 900 });
    expect(await throttle.check([ACCOUNT], at(29 + 900_000))).toEqual({ allowed: true, retryAfterSeconds: 0 });
  });

  it('answers the longest wait among the keys, and keeps keys apart', async () => {
    for (let i = 0; i < 5; i++) await throttle.recordFailure([ACCOUNT, IP], at(0)); // 4 s
    for (let i = 0; i < 2; i++) await throttle.recordFailure([IP], at(0)); // IP: 7 failures, 16 s
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: false, retryAfterSeconds: 4 });
    expect(await throttle.check([ACCOUNT, IP], at(0))).toEqual({ allowed: false, retryAfterSeconds: 16 });
    expect(await throttle.check([accountThrottleKey('bob@example.com')], at(0))).toEqual({
      allowed: true,
      retryAfterSeconds: 0,
    });
    expect(await throttle.check([], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });
  });

  it('forgets a key on success', async () => {
    for (let i = 0; i < 6; i++) await throttle.recordFailure([ACCOUNT, IP], at(0));
    await throttle.recordSuccess([ACCOUNT]);
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });
    expect((await throttle.check([IP], at(0))).allowed).toBe(false);
    // the next failure counts from one again
    await throttle.recordFailure([ACCOUNT], at(0));
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: true, retryAfterSeconds: 0 });
  });

  it('forgets entries 24 hours after their last failure', async () => {
    for (let i = 0; i < 20; i++) await throttle.recordFailure([ACCOUNT], at(0));
    const day = 24 * 3600_000;
    expect((await throttle.check([ACCOUNT], at(day - 1))).allowed).toBe(true); // the 15 min passed long ago
    await throttle.recordFailure([ACCOUNT], at(day));
    // counting starts over: one failure is free
    expect(await throttle.check([ACCOUNT], at(day))).toEqual({ allowed: true, retryAfterSeconds: 0 });
    const row = (await knex('login_throttle').where({ key: ACCOUNT }).first()) as { failures: unknown };
    expect(Number(row.failures)).toBe(1);

    // a failure less than 24 h ago still counts
    for (let i = 0; i < 4; i++) await throttle.recordFailure([IP], at(0));
    await throttle.recordFailure([IP], at(day - 1));
    expect(await throttle.check([IP], at(day - 1))).toEqual({ allowed: false, retryAfterSeconds: 4 });
  });

  it('counts every one of concurrent failures', async () => {
    await Promise.all(Array.from({ length: 10 }, () => throttle.recordFailure([ACCOUNT], at(0))));
    const row = (await knex('login_throttle').where({ key: ACCOUNT }).first()) as { failures: unknown };
    expect(Number(row.failures)).toBe(10);
    // 10 failures: 2^7 s, whichever of the concurrent writes landed last
    expect(await throttle.check([ACCOUNT], at(0))).toEqual({ allowed: false, retryAfterSeconds: 128 });
  });

  it('refuses keys of unknown kinds as a caller mistake', async () => {
    await expect(throttle.check(['alice@example.com'], at(0))).rejects.toThrow(TypeError);
    await expect(throttle.recordFailure(['user:alice'], at(0))).rejects.toThrow(TypeError);
    await expect(throttle.recordSuccess(['ip:'])).rejects.toThrow(TypeError);
  });
});

import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Knex } from 'knex';
import { createKnex, dbNumber, migrateLatest } from '@federizer/common';
// Test helpers are not part of @federizer/common's public entry point.
import { testDatabases } from '../../../common/src/testing/databases.js';
import { AUTH_MIGRATIONS_TABLE, authMigrations } from './migrations.js';
import { UserStore, UserStoreError, verifyPasswordHash, type UserStoreErrorCode } from './users.js';

const T0 = new Date('2030-01-15T12:00:00.000Z');

async function expectCode(promise: Promise<unknown>, code: UserStoreErrorCode): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(UserStoreError);
  expect((error as UserStoreError).code).toBe(code);
}

describe.each(testDatabases())('UserStore on $name', (database) => {
  let knex: Knex;
  let destroyDatabase: () => Promise<void>;
  let clock: Date;
  let users: UserStore;

  beforeAll(async () => {
    const created = await database.create();
    destroyDatabase = created.destroy;
    knex = createKnex(created.config);
    await migrateLatest(knex, authMigrations, AUTH_MIGRATIONS_TABLE);
  });

  afterAll(async () => {
    await knex?.destroy();
    await destroyDatabase?.();
  });

  beforeEach(async () => {
    clock = T0;
    users = new UserStore(knex, { domain: 'Example.com', now: () => clock });
    await knex('users').delete();
  });

  it('creates, gets, lists, updates and deletes users', async () => {
    const alice = await users.create({ address: 'Alice@Example.com', displayName: 'Alice', password: 'correct horse' });
    expect(alice).toEqual({
      address: 'alice@example.com',
      displayName: 'Alice',
      forwardingPolicy: 'manual',
      sendQuotaPerDay: 1000,
      disabled: false,
      createdAt: T0,
      updatedAt: T0,
    });
    expect(await users.get('ALICE@example.COM')).toEqual(alice);
    expect(await users.get('nobody@example.com')).toBeUndefined();
    expect(await users.get('not an address')).toBeUndefined();

    await users.create({
      address: 'carol@example.com',
      password: 'password3',
      forwardingPolicy: 'none',
      sendQuotaPerDay: 5,
    });
    await users.create({ address: 'bob@example.com', password: 'password2', forwardingPolicy: 'any' });
    const page1 = await users.list({ limit: 2 });
    expect(page1.map((u) => u.address)).toEqual(['alice@example.com', 'bob@example.com']);
    const page2 = await users.list({ after: page1[1]?.address, limit: 2 });
    expect(page2.map((u) => [u.address, u.forwardingPolicy, u.sendQuotaPerDay, u.displayName])).toEqual([
      ['carol@example.com', 'none', 5, ''],
    ]);
    await expect(users.list({ limit: 0 })).rejects.toThrow(TypeError);

    clock = new Date(T0.getTime() + 60_000);
    const updated = await users.update('alice@example.com', {
      displayName: 'Alice A.',
      forwardingPolicy: 'any',
      sendQuotaPerDay: 10,
      disabled: true,
    });
    expect(updated).toEqual({
      ...alice,
      displayName: 'Alice A.',
      forwardingPolicy: 'any',
      sendQuotaPerDay: 10,
      disabled: true,
      updatedAt: clock,
    });
    expect(await users.get('alice@example.com')).toEqual(updated);
    expect((await users.update('alice@example.com', { disabled: false })).disabled).toBe(false);

    await users.delete('Alice@example.com');
    expect(await users.get('alice@example.com')).toBeUndefined();
    await expectCode(users.delete('alice@example.com'), 'user_not_found');
    await expectCode(users.update('alice@example.com', { displayName: 'x' }), 'user_not_found');
    await expectCode(users.setPassword('alice@example.com', 'long enough'), 'user_not_found');
  });

  it('refuses duplicates, invalid or foreign addresses, weak passwords, bad policies and quotas', async () => {
    await users.create({ address: 'dave@example.com', password: 'password1' });
    await expectCode(users.create({ address: 'DAVE@example.com', password: 'password1' }), 'user_exists');
    await expectCode(users.create({ address: 'dave@example.org', password: 'password1' }), 'wrong_domain');
    await expectCode(users.create({ address: 'dave@sub.example.com', password: 'password1' }), 'wrong_domain');
    for (const address of [
      'dave',
      'Dave <d@example.com>',
      ' d@example.com',
      'a@b@example.com',
      '"a b"@example.com',
      '',
    ]) {
      await expectCode(users.create({ address, password: 'password1' }), 'invalid_address');
    }
    await expectCode(users.create({ address: 'erin@example.com', password: 'seven77' }), 'weak_password');
    await expectCode(users.setPassword('dave@example.com', 'short'), 'weak_password');
    await expectCode(
      users.create({ address: 'erin@example.com', password: 'password1', forwardingPolicy: 'auto' as never }),
      'invalid_policy',
    );
    await expectCode(
      users.create({ address: 'erin@example.com', password: 'password1', sendQuotaPerDay: -1 }),
      'invalid_quota',
    );
    await expectCode(
      users.create({ address: 'erin@example.com', password: 'password1', sendQuotaPerDay: 1.5 }),
      'invalid_quota',
    );
    await expectCode(users.update('dave@example.com', { forwardingPolicy: 'all' as never }), 'invalid_policy');
    await expectCode(users.update('dave@example.com', { sendQuotaPerDay: Number.NaN }), 'invalid_quota');
    expect(await users.get('erin@example.com')).toBeUndefined();
  });

  it('verifies passwords: right, wrong, disabled, unknown', async () => {
    await users.create({ address: 'frank@example.com', password: 'pässwörd-1' });
    expect((await users.verifyPassword('Frank@Example.com', 'pässwörd-1'))?.address).toBe('frank@example.com');
    // NFC and NFD spellings of the same password are the same password
    expect(await users.verifyPassword('frank@example.com', 'pässwörd-1'.normalize('NFD'))).toBeDefined();
    expect(await users.verifyPassword('frank@example.com', 'pässwörd-2')).toBeUndefined();
    expect(await users.verifyPassword('frank@example.com', '')).toBeUndefined();
    expect(await users.verifyPassword('ghost@example.com', 'pässwörd-1')).toBeUndefined();

    await users.update('frank@example.com', { disabled: true });
    expect(await users.verifyPassword('frank@example.com', 'pässwörd-1')).toBeUndefined();
    await users.update('frank@example.com', { disabled: false });

    await users.setPassword('frank@example.com', 'new password');
    expect(await users.verifyPassword('frank@example.com', 'pässwörd-1')).toBeUndefined();
    expect(await users.verifyPassword('frank@example.com', 'new password')).toBeDefined();
  });

  it('stores scrypt hashes with their parameters', async () => {
    await users.create({ address: 'heidi@example.com', password: 'password1' });
    await users.create({ address: 'ivan@example.com', password: 'password1' });
    const rows = (await knex('users').select('password_hash').orderBy('address')) as { password_hash: string }[];
    for (const { password_hash } of rows) {
      expect(password_hash).toMatch(/^scrypt\$32768\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/);
      expect(await verifyPasswordHash('password1', password_hash)).toBe(true);
    }
    // salted: the same password hashes differently
    expect(rows[0]?.password_hash).not.toBe(rows[1]?.password_hash);
    expect(JSON.stringify(await users.get('heidi@example.com'))).not.toContain('scrypt');
    // malformed or absurd stored values never verify (and never run away with memory)
    expect(await verifyPasswordHash('password1', 'plain')).toBe(false);
    expect(
      await verifyPasswordHash('password1', 'scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA$' + 'A'.repeat(43)),
    ).toBe(false);
  });

  it('reads a token exchange subject: the user and whether the grant stands, in one answer', async () => {
    const mia = await users.create({ address: 'mia@example.com', password: 'password1' });
    const grant = (id: string, expiresAt: number | null) =>
      knex('oidc_payloads').insert({ kind: 'Grant', id, payload: '{}', grant_id: null, expires_at: expiresAt });
    const at = T0.getTime();
    await grant('g-live', at + 1000);
    await grant('g-forever', null);
    await grant('g-expired', at);
    // Another model's row with the grant's id is not the grant.
    await knex('oidc_payloads').insert({ kind: 'Session', id: 'g-session', payload: '{}', expires_at: at + 1000 });
    try {
      expect(await users.getWithGrant('MIA@example.com', 'g-live', at)).toEqual({ user: mia, grantActive: true });
      expect(await users.getWithGrant('mia@example.com', 'g-forever', at)).toEqual({ user: mia, grantActive: true });
      // expires_at is the last millisecond it is not yet valid at, as the adapter's find has it
      expect(await users.getWithGrant('mia@example.com', 'g-expired', at)).toEqual({ user: mia, grantActive: false });
      expect(await users.getWithGrant('mia@example.com', 'g-live', at + 1000)).toEqual({
        user: mia,
        grantActive: false,
      });
      expect(await users.getWithGrant('mia@example.com', 'g-session', at)).toEqual({ user: mia, grantActive: false });
      expect(await users.getWithGrant('mia@example.com', 'g-missing', at)).toEqual({ user: mia, grantActive: false });
      // an unknown user is refused as such, whatever the grant
      expect(await users.getWithGrant('nobody@example.com', 'g-live', at)).toEqual({
        user: undefined,
        grantActive: false,
      });
      await users.update('mia@example.com', { disabled: true });
      expect((await users.getWithGrant('mia@example.com', 'g-live', at)).user?.disabled).toBe(true);
    } finally {
      await knex('oidc_payloads').delete();
    }
  });

  it('counts sends per UTC day and never exceeds the quota under 20 concurrent consumers', async () => {
    await users.create({ address: 'judy@example.com', password: 'password1', sendQuotaPerDay: 7 });
    const results = await Promise.all(
      Array.from({ length: 20 }, () => users.consumeSendQuota('judy@example.com', 1, T0)),
    );
    expect(results.filter((r) => r.allowed)).toHaveLength(7);
    expect(
      results
        .filter((r) => r.allowed)
        .map((r) => r.used)
        .sort((a, b) => a - b),
    ).toEqual([1, 2, 3, 4, 5, 6, 7]);
    for (const r of results) expect(r.limit).toBe(7);
    for (const r of results.filter((x) => !x.allowed)) expect(r.used).toBe(7);

    // counts larger than one: all or nothing
    await users.create({ address: 'ken@example.com', password: 'password1', sendQuotaPerDay: 10 });
    const batches = await Promise.all(
      Array.from({ length: 20 }, () => users.consumeSendQuota('ken@example.com', 3, T0)),
    );
    expect(batches.filter((r) => r.allowed)).toHaveLength(3);
    expect(await users.consumeSendQuota('ken@example.com', 1, T0)).toEqual({ allowed: true, used: 10, limit: 10 });
    expect(await users.consumeSendQuota('ken@example.com', 11, new Date('2030-01-16T00:00:00Z'))).toEqual({
      allowed: false,
      used: 0,
      limit: 10,
    });
  });

  it('counts a send under a grant only when the user exists, is enabled, has a send left and the grant stands', async () => {
    await users.create({ address: 'nora@example.com', password: 'password1', sendQuotaPerDay: 3 });
    const at = T0.getTime();
    await knex('oidc_payloads').insert([
      { kind: 'Grant', id: 'n-live', payload: '{}', grant_id: null, expires_at: at + 1000 },
      { kind: 'Grant', id: 'n-forever', payload: '{}', grant_id: null, expires_at: null },
      { kind: 'Grant', id: 'n-expired', payload: '{}', grant_id: null, expires_at: at },
      // another model's row with the grant's id is not the grant
      { kind: 'Session', id: 'n-session', payload: '{}', grant_id: null, expires_at: at + 1000 },
    ]);
    const used = async () =>
      (
        (await knex('send_counters').where({ address: 'nora@example.com' }).select('day', 'count')) as {
          day: string;
          count: unknown;
        }[]
      ).map((r) => [r.day, dbNumber(r.count)]);
    try {
      const send = (address: string, grantId: string, count = 1, when = T0, grantNow = at) =>
        users.consumeSendQuotaUnderGrant(address, grantId, count, when, grantNow);
      // refusals count nothing, whichever condition fails
      expect(await send('nora@example.com', 'n-expired')).toBe(false);
      expect(await send('nora@example.com', 'n-live', 1, T0, at + 1000)).toBe(false);
      expect(await send('nora@example.com', 'n-session')).toBe(false);
      expect(await send('nora@example.com', 'n-missing')).toBe(false);
      expect(await send('nobody@example.com', 'n-live')).toBe(false);
      expect(await send('nora@example.com', 'n-live', 4)).toBe(false);
      expect(await used()).toEqual([]);
      // the address is compared as stored (lower case), and the count is kept with consumeSendQuota's
      expect(await send('NORA@example.com', 'n-live')).toBe(true);
      expect(await send('nora@example.com', 'n-forever', 2)).toBe(true);
      expect(await used()).toEqual([['2030-01-15', 3]]);
      expect(await send('nora@example.com', 'n-live')).toBe(false);
      expect(await users.consumeSendQuota('nora@example.com', 1, T0)).toEqual({ allowed: false, used: 3, limit: 3 });
      // a new UTC day starts a new count; the limit is read as it is now
      const nextDay = new Date(T0.getTime() + 24 * 3600 * 1000);
      await users.update('nora@example.com', { sendQuotaPerDay: 1 });
      expect(await send('nora@example.com', 'n-live', 1, nextDay)).toBe(true);
      expect(await send('nora@example.com', 'n-live', 1, nextDay)).toBe(false);
      await users.update('nora@example.com', { sendQuotaPerDay: 100, disabled: true });
      expect(await send('nora@example.com', 'n-live')).toBe(false);
      expect(await used()).toEqual([
        ['2030-01-15', 3],
        ['2030-01-16', 1],
      ]);
      await expect(send('nora@example.com', 'n-live', 0)).rejects.toThrow(TypeError);
    } finally {
      await knex('oidc_payloads').delete();
    }
  });

  it('never counts more sends under a grant than the quota, under 20 concurrent exchanges', async () => {
    await users.create({ address: 'olga@example.com', password: 'password1', sendQuotaPerDay: 7 });
    await knex('oidc_payloads').insert({
      kind: 'Grant',
      id: 'o-live',
      payload: '{}',
      grant_id: null,
      expires_at: null,
    });
    try {
      const results = await Promise.all(
        Array.from({ length: 20 }, () =>
          users.consumeSendQuotaUnderGrant('olga@example.com', 'o-live', 1, T0, T0.getTime()),
        ),
      );
      expect(results.filter(Boolean)).toHaveLength(7);
      expect(await users.consumeSendQuota('olga@example.com', 1, T0)).toEqual({ allowed: false, used: 7, limit: 7 });
    } finally {
      await knex('oidc_payloads').delete();
    }
  });

  it('starts a new count at midnight UTC and follows quota changes', async () => {
    await users.create({ address: 'leo@example.com', password: 'password1', sendQuotaPerDay: 2 });
    const late = new Date('2030-01-15T23:59:59.999Z');
    const midnight = new Date('2030-01-16T00:00:00.000Z');
    expect(await users.consumeSendQuota('leo@example.com', 2, late)).toEqual({ allowed: true, used: 2, limit: 2 });
    expect(await users.consumeSendQuota('leo@example.com', 1, late)).toEqual({ allowed: false, used: 2, limit: 2 });
    expect(await users.consumeSendQuota('leo@example.com', 1, midnight)).toEqual({ allowed: true, used: 1, limit: 2 });

    await users.update('leo@example.com', { sendQuotaPerDay: 3 });
    expect(await users.consumeSendQuota('leo@example.com', 1, late)).toEqual({ allowed: true, used: 3, limit: 3 });
    await users.update('leo@example.com', { sendQuotaPerDay: 0 });
    expect(await users.consumeSendQuota('leo@example.com', 1, midnight)).toEqual({ allowed: false, used: 1, limit: 0 });

    await users.update('leo@example.com', { sendQuotaPerDay: 100, disabled: true });
    expect((await users.consumeSendQuota('leo@example.com', 1, midnight)).allowed).toBe(false);

    await expectCode(users.consumeSendQuota('nobody@example.com', 1, midnight), 'user_not_found');
    await expect(users.consumeSendQuota('leo@example.com', 0, midnight)).rejects.toThrow(TypeError);

    // the counters go with the user
    await users.delete('leo@example.com');
    expect(await knex('send_counters').where({ address: 'leo@example.com' }).select()).toEqual([]);
  });
});

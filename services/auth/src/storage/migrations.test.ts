import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Knex } from 'knex';
import { exportJWK, generateKeyPair } from 'jose';
import Provider from 'oidc-provider';
import { createKnex, migrateLatest } from '@federizer/common';
// Test helpers are not part of @federizer/common's public entry point.
import { testDatabases } from '../../../common/src/testing/databases.js';
import { providerReplayKey } from '../provider.js';
import { KnexReplayStore, adapterFactory, endSignIns } from './adapter.js';
import { AUTH_MIGRATIONS_TABLE, authMigrations } from './migrations.js';

/** The migrations up to and including `name`, as a database that last ran that release has them. */
function upTo(name: string) {
  return authMigrations.slice(0, authMigrations.findIndex((m) => m.name === name) + 1);
}

describe.each(testDatabases())('AS migrations on $name', (database) => {
  let knex: Knex;
  let destroyDatabase: () => Promise<void>;

  beforeEach(async () => {
    const created = await database.create();
    destroyDatabase = created.destroy;
    knex = createKnex(created.config);
  });

  afterEach(async () => {
    await knex?.destroy();
    await destroyDatabase?.();
  });

  it('0002 carries the replay records oidc-provider kept in oidc_payloads over to the replay table', async () => {
    await migrateLatest(knex, upTo('0001_initial'), AUTH_MIGRATIONS_TABLE);
    // The provider as it ran before 0002: its own ReplayDetection model, stored through the adapter, whose
    // rows then had no account_id (0004).
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    const provider = new Provider('http://as.example.test', {
      adapter: (name: string) =>
        Object.assign(adapterFactory(knex)(name), {
          upsert: async (id: string, payload: object, expiresIn: number) =>
            void (await knex('oidc_payloads').insert({
              kind: name,
              id,
              payload: JSON.stringify(payload),
              expires_at: Date.now() + expiresIn * 1000,
            })),
        }),
      jwks: { keys: [{ ...(await exportJWK(privateKey)), alg: 'ES256', use: 'sig', kid: 'k1' }] },
      clientDefaults: { id_token_signed_response_alg: 'ES256' },
      features: { devInteractions: { enabled: false } },
    });
    const seconds = Math.floor(Date.now() / 1000);
    expect(await provider.ReplayDetection.unique('mta.example.com', 'used-before', seconds + 90)).toBe(true);
    expect(await provider.ReplayDetection.unique('mta.example.com', 'expired', seconds - 1)).toBe(true);
    await knex('oidc_payloads').insert({ kind: 'Grant', id: 'g1', payload: '{}', expires_at: null });

    expect(await migrateLatest(knex, upTo('0002_provider_replays_in_replay_table'), AUTH_MIGRATIONS_TABLE)).toEqual([
      '0002_provider_replays_in_replay_table',
    ]);
    const rows = (await knex('replay').select('key', 'expires_at')) as { key: string; expires_at: unknown }[];
    expect(rows.map((r) => r.key)).toEqual([providerReplayKey('mta.example.com', 'used-before')]);
    // oidc_payloads keeps milliseconds, the replay table seconds: the same moment, rounded up.
    expect(Math.abs(Number(rows[0]!.expires_at) - (seconds + 90))).toBeLessThanOrEqual(1);
    const kinds = (await knex('oidc_payloads').select('kind')) as { kind: string }[];
    expect(kinds.map((r) => r.kind)).toEqual(['Grant']);
    // What the upgraded AS asks (recordReplaysIn in provider.ts): the jti used before the upgrade is refused.
    const replay = new KnexReplayStore(knex);
    expect(await replay.checkAndRecord(providerReplayKey('mta.example.com', 'used-before'), seconds + 90)).toBe(false);
    expect(await replay.checkAndRecord(providerReplayKey('mta.example.com', 'expired'), seconds + 90)).toBe(true);
  });

  it('0003 keeps every replay record through the change of the table, which still refuses them', async () => {
    await migrateLatest(knex, upTo('0002_provider_replays_in_replay_table'), AUTH_MIGRATIONS_TABLE);
    const seconds = Math.floor(Date.now() / 1000);
    const replay = new KnexReplayStore(knex);
    for (const key of ['jkt-1:jti-1', 'jkt-2:jti-2', providerReplayKey('mta.example.com', 'a')])
      expect(await replay.checkAndRecord(key, seconds + 90)).toBe(true);
    const before = (await knex('replay').select('key', 'expires_at').orderBy('key')) as Record<string, unknown>[];

    expect(await migrateLatest(knex, upTo('0003_replay_table_single_btree'), AUTH_MIGRATIONS_TABLE)).toEqual([
      '0003_replay_table_single_btree',
    ]);
    const after = (await knex('replay').select('key', 'expires_at').orderBy('key')) as Record<string, unknown>[];
    expect(after.map((r) => [r.key, Number(r.expires_at)])).toEqual(before.map((r) => [r.key, Number(r.expires_at)]));
    for (const { key } of after) expect(await replay.checkAndRecord(key as string, seconds + 90)).toBe(false);
    // The key is still the primary key: of 20 concurrent inserts of one new key, one wins.
    const results = await Promise.all(Array.from({ length: 20 }, () => replay.checkAndRecord('new-key', seconds + 90)));
    expect(results.filter(Boolean)).toHaveLength(1);
    const indexes =
      database.name === 'sqlite'
        ? ((await knex.raw("select name from sqlite_master where type = 'index' and tbl_name = 'replay'")) as {
            name: string;
          }[])
        : (
            (await knex.raw(
              "select indexname as name from pg_indexes where tablename = 'replay' and schemaname = current_schema()",
            )) as { rows: { name: string }[] }
          ).rows;
    expect(indexes.map((i) => i.name)).not.toContain('replay_expires_at_idx');
  });

  it('0004 copies the account of the rows written before into account_id, so their sign-ins can be ended', async () => {
    await migrateLatest(knex, upTo('0003_replay_table_single_btree'), AUTH_MIGRATIONS_TABLE);
    const rows: [kind: string, id: string, payload: object, grantId?: string][] = [
      ['Session', 's-ann', { accountId: 'ann@example.com', authorizations: { webmail: { grantId: 'g-ann' } } }],
      ['Grant', 'g-ann', { accountId: 'ann@example.com', clientId: 'webmail' }],
      ['RefreshToken', 'rt-ann', { accountId: 'ann@example.com', grantId: 'g-ann' }, 'g-ann'],
      ['Interaction', 'i-ann', { result: { login: { accountId: 'ann@example.com' } } }],
      ['Interaction', 'i-ann-2', { session: { accountId: 'ann@example.com', uid: 'u' } }],
      ['Session', 's-ben', { accountId: 'ben@example.com' }],
      ['Grant', 'g-ben', { accountId: 'ben@example.com' }],
      ['RefreshToken', 'rt-ben', { accountId: 'ben@example.com', grantId: 'g-ben' }, 'g-ben'],
      ['Interaction', 'i-anon', { params: { client_id: 'webmail' } }],
    ];
    // More rows than the migration reads at a time, so it pages.
    for (let i = 0; i < 1100; i++)
      rows.push(['Session', `s-${String(i).padStart(4, '0')}`, { accountId: 'cid@example.com' }]);
    for (let i = 0; i < rows.length; i += 200) {
      await knex('oidc_payloads').insert(
        rows.slice(i, i + 200).map(([kind, id, payload, grantId]) => ({
          kind,
          id,
          payload: JSON.stringify(payload),
          grant_id: grantId ?? null,
          expires_at: null,
        })),
      );
    }

    // Expired: nothing reads it any more, and the migration leaves it to the pruning.
    await knex('oidc_payloads').insert({
      kind: 'Session',
      id: 's-ann-expired',
      payload: JSON.stringify({ accountId: 'ann@example.com' }),
      expires_at: Date.now() - 1000,
    });

    expect(await migrateLatest(knex, authMigrations, AUTH_MIGRATIONS_TABLE)).toEqual(['0004_payload_account_id']);
    const accounts = new Map(
      ((await knex('oidc_payloads').select('kind', 'id', 'account_id')) as Record<string, unknown>[]).map((r) => [
        `${String(r.kind)} ${String(r.id)}`,
        r.account_id,
      ]),
    );
    expect(accounts.get('Session s-ann')).toBe('ann@example.com');
    expect(accounts.get('RefreshToken rt-ann')).toBe('ann@example.com');
    expect(accounts.get('Interaction i-ann')).toBe('ann@example.com');
    expect(accounts.get('Interaction i-ann-2')).toBe('ann@example.com');
    expect(accounts.get('Interaction i-anon')).toBeNull();
    expect(accounts.get('Session s-ann-expired')).toBeNull();
    expect(accounts.get('Session s-1099')).toBe('cid@example.com');
    expect([...accounts.values()].filter((a) => a === 'cid@example.com')).toHaveLength(1100);

    expect(await endSignIns(knex, 'ann@example.com')).toBe(5);
    const left = (
      (await knex('oidc_payloads')
        .select('id')
        .whereNot({ account_id: 'cid@example.com' })
        .orWhereNull('account_id')) as {
        id: string;
      }[]
    ).map((r) => r.id);
    expect(left.sort()).toEqual(['g-ben', 'i-anon', 'rt-ben', 's-ann-expired', 's-ben']);
  });
});

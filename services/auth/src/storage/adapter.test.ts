import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Knex } from 'knex';
import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors } from 'oidc-provider';
import { createKnex, migrateLatest } from '@federizer/common';
// Test helpers are not part of @federizer/common's public entry point.
import { testDatabases } from '../../../common/src/testing/databases.js';
import { KnexAdapter, KnexReplayStore, adapterFactory, pruneExpired } from './adapter.js';
import { AUTH_MIGRATIONS_TABLE, authMigrations } from './migrations.js';

const T0 = Date.UTC(2030, 0, 15, 12, 0, 0);

describe.each(testDatabases())('storage adapter on $name', (database) => {
  let knex: Knex;
  let destroyDatabase: () => Promise<void>;
  let clock: number;
  const now = () => clock;
  const adapter = (name: string) => new KnexAdapter(knex, name, { now });

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
    await knex('oidc_payloads').delete();
    await knex('replay').delete();
  });

  describe('oidc-provider adapter', () => {
    it('stores and finds payloads by id, within their model', async () => {
      const payload = {
        jti: 'a1',
        kind: 'AccessToken',
        accountId: 'alice@example.com',
        scope: 'openid',
        extra: { n: 1 },
      };
      await adapter('AccessToken').upsert('a1', payload, 60);
      expect(await adapter('AccessToken').find('a1')).toEqual(payload);
      expect(await adapter('RefreshToken').find('a1')).toBeUndefined();
      expect(await adapter('AccessToken').find('missing')).toBeUndefined();
    });

    it('never returns an expired payload, by id, uid or user code', async () => {
      await adapter('Session').upsert('s1', { uid: 'u1', accountId: 'alice@example.com' }, 10);
      await adapter('DeviceCode').upsert('d1', { userCode: 'ABCD-EFGH', grantId: 'g1' }, 10);
      await adapter('Client').upsert('c1', { client_id: 'c1' });

      clock = T0 + 9_999;
      expect(await adapter('Session').find('s1')).toBeDefined();
      expect(await adapter('Session').findByUid('u1')).toBeDefined();
      expect(await adapter('DeviceCode').findByUserCode('ABCD-EFGH')).toBeDefined();

      clock = T0 + 10_000;
      expect(await adapter('Session').find('s1')).toBeUndefined();
      expect(await adapter('Session').findByUid('u1')).toBeUndefined();
      expect(await adapter('DeviceCode').findByUserCode('ABCD-EFGH')).toBeUndefined();
      // Without expiresIn a payload is kept until destroyed.
      clock = T0 + 10 * 365 * 24 * 3600 * 1000;
      expect(await adapter('Client').find('c1')).toEqual({ client_id: 'c1' });
    });

    it('keeps payloads for the clock tolerance past their expiry', async () => {
      const tolerant = new KnexAdapter(knex, 'AccessToken', { now, clockToleranceSeconds: 5 });
      await tolerant.upsert('a1', { jti: 'a1' }, 10);
      clock = T0 + 14_999;
      expect(await tolerant.find('a1')).toBeDefined();
      clock = T0 + 15_000;
      expect(await tolerant.find('a1')).toBeUndefined();
    });

    it('finds by uid and user code only within the model', async () => {
      await adapter('Session').upsert('s1', { uid: 'u1' }, 60);
      await adapter('DeviceCode').upsert('d1', { userCode: 'WXYZ' }, 60);
      expect(await adapter('Session').findByUid('u1')).toEqual({ uid: 'u1' });
      expect(await adapter('Interaction').findByUid('u1')).toBeUndefined();
      expect(await adapter('DeviceCode').findByUserCode('WXYZ')).toEqual({ userCode: 'WXYZ' });
      expect(await adapter('Session').findByUserCode('WXYZ')).toBeUndefined();
      expect(await adapter('Session').findByUid('nope')).toBeUndefined();
    });

    it('marks a payload consumed with epoch seconds, keeping the rest', async () => {
      const payload = { jti: 'c1', grantId: 'g1', accountId: 'alice@example.com' };
      await adapter('AuthorizationCode').upsert('c1', payload, 60);
      clock = T0 + 2_500;
      await adapter('AuthorizationCode').consume('c1');
      expect(await adapter('AuthorizationCode').find('c1')).toEqual({
        ...payload,
        consumed: Math.floor((T0 + 2_500) / 1000),
      });
      // something absent is not consumed, and nothing else is touched
      await expect(adapter('AuthorizationCode').consume('missing')).rejects.toMatchObject({ error: 'invalid_grant' });
      await expect(adapter('RefreshToken').consume('c1')).rejects.toMatchObject({ error: 'invalid_grant' });
      expect((await adapter('AuthorizationCode').find('c1'))?.consumed).toBe(Math.floor((T0 + 2_500) / 1000));
    });

    it('RFC 6749 §4.1.2, RFC 9700 §4.14.2: a code or refresh token is consumed once; of concurrent consumptions exactly one wins, the others are refused with invalid_grant and revoke the grant', async () => {
      const rt = adapter('RefreshToken');
      await adapter('Grant').upsert('g1', { jti: 'g1', accountId: 'alice@example.com' }, 60);
      await rt.upsert('r1', { grantId: 'g1' }, 60);
      await adapter('AccessToken').upsert('a1', { grantId: 'g1' }, 60);
      await adapter('RefreshToken').upsert('other', { grantId: 'g2' }, 60);
      const outcomes = await Promise.allSettled(Array.from({ length: 10 }, () => rt.consume('r1')));
      expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
      for (const o of outcomes.filter((o) => o.status === 'rejected'))
        expect((o as PromiseRejectedResult).reason).toMatchObject({
          error: 'invalid_grant',
          error_detail: 'refresh token already used',
        });
      expect(await rt.find('r1')).toBeUndefined();
      expect(await adapter('AccessToken').find('a1')).toBeUndefined();
      expect(await adapter('Grant').find('g1')).toBeUndefined();
      expect(await rt.find('other')).toEqual({ grantId: 'g2' });
    });

    it('destroys one payload of one model', async () => {
      await adapter('AccessToken').upsert('x', { jti: 'x' }, 60);
      await adapter('RefreshToken').upsert('x', { jti: 'x' }, 60);
      await adapter('AccessToken').destroy('x');
      expect(await adapter('AccessToken').find('x')).toBeUndefined();
      expect(await adapter('RefreshToken').find('x')).toEqual({ jti: 'x' });
      await adapter('AccessToken').destroy('x');
    });

    it('revokes a grant across the grantable models, and nothing else', async () => {
      await adapter('AccessToken').upsert('at1', { grantId: 'g1' }, 60);
      await adapter('RefreshToken').upsert('rt1', { grantId: 'g1' }, 60);
      await adapter('AuthorizationCode').upsert('ac1', { grantId: 'g1' }, 60);
      await adapter('DeviceCode').upsert('dc1', { grantId: 'g1', userCode: 'U1' }, 60);
      await adapter('BackchannelAuthenticationRequest').upsert('br1', { grantId: 'g1' }, 60);
      await adapter('AccessToken').upsert('at2', { grantId: 'g2' }, 60);
      await adapter('Grant').upsert('g1', { jti: 'g1', accountId: 'alice@example.com' }, 60);
      await adapter('Interaction').upsert('i1', { grantId: 'g1', uid: 'i1' }, 60);

      await adapter('RefreshToken').revokeByGrantId('g1');

      for (const [model, id] of [
        ['AccessToken', 'at1'],
        ['RefreshToken', 'rt1'],
        ['AuthorizationCode', 'ac1'],
        ['DeviceCode', 'dc1'],
        ['BackchannelAuthenticationRequest', 'br1'],
      ] as const) {
        expect(await adapter(model).find(id), model).toBeUndefined();
      }
      expect(await adapter('DeviceCode').findByUserCode('U1')).toBeUndefined();
      expect(await adapter('AccessToken').find('at2')).toEqual({ grantId: 'g2' });
      expect(await adapter('Grant').find('g1')).toBeDefined();
      expect(await adapter('Interaction').find('i1')).toBeDefined();
      await adapter('AccessToken').revokeByGrantId('g1'); // idempotent
    });

    it('overwrites on upsert: payload, indexes, expiry and consumption', async () => {
      const session = adapter('Session');
      await session.upsert('s1', { uid: 'old', accountId: 'a' }, 10);
      await session.upsert('s1', { uid: 'new', accountId: 'b' });
      expect(await session.find('s1')).toEqual({ uid: 'new', accountId: 'b' });
      expect(await session.findByUid('old')).toBeUndefined();
      expect(await session.findByUid('new')).toEqual({ uid: 'new', accountId: 'b' });
      clock = T0 + 3600_000;
      expect(await session.find('s1')).toBeDefined(); // no longer expires

      await session.upsert('s1', { uid: 'new' }, 1);
      clock += 1_000;
      expect(await session.find('s1')).toBeUndefined(); // expires again

      const rt = adapter('RefreshToken');
      await rt.upsert('r1', { grantId: 'g1' }, 60);
      await rt.consume('r1');
      const consumed = await rt.find('r1');
      await rt.upsert('r1', { grantId: 'g1', rotations: 1 }, 60);
      expect(await rt.find('r1')).toEqual({ grantId: 'g1', rotations: 1 });
      await rt.upsert('r1', { ...consumed, rotations: 2 }, 60);
      expect((await rt.find('r1'))?.consumed).toBe(consumed?.consumed);

      const count = (await knex('oidc_payloads').where({ kind: 'Session', id: 's1' }).count({ n: '*' })) as {
        n: unknown;
      }[];
      expect(Number(count[0]?.n)).toBe(1);
    });

    it('survives payloads oidc-provider may hold: unicode, nesting, large values', async () => {
      const payload = {
        accountId: 'žluťoučký@example.com',
        claims: { userinfo: { email: null, name: { essential: true } } },
        params: { state: 'x'.repeat(20_000) },
        amr: ['pwd'],
      };
      await adapter('Interaction').upsert('i1', payload, 60);
      expect(await adapter('Interaction').find('i1')).toEqual(payload);
    });

    it('serves a real oidc-provider: save, find, consume, session by uid, grant revocation', async () => {
      const { privateKey } = await generateKeyPair('ES256', { extractable: true });
      const provider = new Provider('http://as.example.test', {
        adapter: adapterFactory(knex),
        jwks: { keys: [{ ...(await exportJWK(privateKey)), alg: 'ES256', use: 'sig', kid: 'k1' }] },
        clientDefaults: { id_token_signed_response_alg: 'ES256' },
        features: { devInteractions: { enabled: false } },
        ttl: { Grant: 3600, RefreshToken: 3600, Session: 3600 },
        clients: [
          {
            client_id: 'webmail',
            token_endpoint_auth_method: 'none',
            redirect_uris: ['http://webmail.example.test/cb'],
            grant_types: ['authorization_code', 'refresh_token'],
          },
        ],
      });
      const client = await provider.Client.find('webmail');
      if (!client) throw new Error('client not found');

      const grant = new provider.Grant({ accountId: 'alice@example.com', clientId: 'webmail' });
      grant.addOIDCScope('openid offline_access');
      const grantId = await grant.save();
      const refreshToken = new provider.RefreshToken({
        accountId: 'alice@example.com',
        client,
        grantId,
        gty: 'authorization_code',
        scope: 'openid offline_access',
      });
      const value = await refreshToken.save();

      const found = await provider.RefreshToken.find(value);
      expect(found?.accountId).toBe('alice@example.com');
      expect(found?.isValid).toBe(true);
      await found?.consume();
      const reused = await provider.RefreshToken.find(value);
      expect(reused?.consumed).toEqual(expect.any(Number));
      expect(reused?.isValid).toBe(false);

      // @types/oidc-provider omits the payload Session takes and the ttl Session#save requires at run time.
      const SessionModel = provider.Session as unknown as new (payload: object) => {
        save(ttl: number): Promise<string>;
      };
      await new SessionModel({ jti: 'sess1', uid: 'uid1', accountId: 'alice@example.com' }).save(3600);
      expect((await provider.Session.findByUid('uid1'))?.accountId).toBe('alice@example.com');

      await provider.RefreshToken.revokeByGrantId(grantId);
      expect(await provider.RefreshToken.find(value)).toBeUndefined();
      expect(await provider.Grant.find(grantId)).toBeDefined();

      // A second consumption (a request that found the token unused too) is refused, and revokes the grant.
      const second = new provider.RefreshToken({
        accountId: 'alice@example.com',
        client,
        grantId,
        gty: 'authorization_code',
        scope: 'openid',
      });
      const token = await provider.RefreshToken.find(await second.save());
      await token?.consume();
      await expect(token?.consume()).rejects.toBeInstanceOf(errors.InvalidGrant);
      expect(await provider.Grant.find(grantId)).toBeUndefined();
    });
  });

  describe('pruneExpired', () => {
    it('deletes what expired in every table, and only that', async () => {
      await adapter('AccessToken').upsert('old', {}, 10);
      await adapter('AccessToken').upsert('live', {}, 1000);
      await adapter('Client').upsert('forever', {});
      const replay = new KnexReplayStore(knex, { now: () => Math.floor(clock / 1000) });
      await replay.checkAndRecord('old-jti', T0 / 1000 + 10);
      await replay.checkAndRecord('live-jti', T0 / 1000 + 1000);
      await knex('login_throttle').insert([
        { key: 'ip:192.0.2.1', failures: 5, next_allowed_at: T0, updated_at: T0 - 25 * 3600_000 },
        { key: 'ip:192.0.2.2', failures: 5, next_allowed_at: T0, updated_at: T0 - 3600_000 },
      ]);
      await knex('users').insert({
        address: 'prune@example.com',
        password_hash: 'x',
        created_at: T0,
        updated_at: T0,
      });
      await knex('send_counters').insert([
        { address: 'prune@example.com', day: '2030-01-13', count: 1 },
        { address: 'prune@example.com', day: '2030-01-14', count: 1 },
        { address: 'prune@example.com', day: '2030-01-15', count: 1 },
      ]);

      const result = await pruneExpired(knex, new Date(T0 + 100_000));
      expect(result).toEqual({ oidcPayloads: 1, replay: 1, loginThrottle: 1, sendCounters: 1 });
      const ids = (await knex('oidc_payloads').select('id').orderBy('id')) as { id: string }[];
      expect(ids.map((r) => r.id)).toEqual(['forever', 'live']);
      const keys = (await knex('replay').select('key')) as { key: string }[];
      expect(keys.map((r) => r.key)).toEqual(['live-jti']);
      const days = (await knex('send_counters').select('day').orderBy('day')) as { day: string }[];
      expect(days.map((r) => r.day)).toEqual(['2030-01-14', '2030-01-15']);

      await knex('login_throttle').delete();
      await knex('users').delete();
    });
  });

  describe('KnexReplayStore', () => {
    let seconds: number;
    const store = () => new KnexReplayStore(knex, { now: () => seconds });

    beforeEach(() => {
      seconds = T0 / 1000;
    });

    it('on PostgreSQL records with an asynchronous commit, on SQLite in one statement', async () => {
      const statements: string[] = [];
      const listen = (q: { sql: string }) => statements.push(q.sql);
      knex.on('query', listen);
      try {
        expect(await store().checkAndRecord('jti-commit', seconds + 60)).toBe(true);
      } finally {
        knex.off('query', listen);
      }
      // One statement on both; on PostgreSQL it turns synchronous_commit off for its own transaction.
      expect(statements).toHaveLength(1);
      const asyncCommit = statements[0]!.includes("set_config('synchronous_commit', 'off', true)");
      expect(asyncCommit).toBe(database.name === 'postgres');
      expect(statements[0]).toMatch(/^insert/i);
    });

    it('accepts a key once while it lives', async () => {
      expect(await store().checkAndRecord('jti-1', seconds + 60)).toBe(true);
      expect(await store().checkAndRecord('jti-1', seconds + 60)).toBe(false);
      expect(await store().checkAndRecord('jti-2', seconds + 60)).toBe(true);
    });

    it('gives exactly one true to 20 concurrent identical keys', async () => {
      const replay = store();
      const results = await Promise.all(
        Array.from({ length: 20 }, () => replay.checkAndRecord('same-jti', seconds + 60)),
      );
      expect(results.filter(Boolean)).toHaveLength(1);
    });

    it('gives exactly one true to 20 concurrent takeovers of an expired key', async () => {
      await store().checkAndRecord('expiring', seconds + 10);
      seconds += 10;
      const replay = store();
      const results = await Promise.all(
        Array.from({ length: 20 }, () => replay.checkAndRecord('expiring', seconds + 60)),
      );
      expect(results.filter(Boolean)).toHaveLength(1);
    });

    it('lets a key be reused once it expired', async () => {
      expect(await store().checkAndRecord('jti', seconds + 10)).toBe(true);
      seconds += 9;
      expect(await store().checkAndRecord('jti', seconds + 10)).toBe(false);
      seconds += 1; // expiresAt reached: expired, as in MemoryReplayStore
      expect(await store().checkAndRecord('jti', seconds + 10)).toBe(true);
      expect(await store().checkAndRecord('jti', seconds + 10)).toBe(false);
    });

    it('refuses malformed input as a caller mistake', async () => {
      await expect(store().checkAndRecord('', seconds)).rejects.toThrow(TypeError);
      await expect(store().checkAndRecord('k', 1.5)).rejects.toThrow(TypeError);
    });
  });
});

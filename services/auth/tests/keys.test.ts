/**
 * Signing-key rotation (PROTOCOL.md §4.6): retired keys stay in the JWKS so what was signed before a rotation
 * still verifies; new tokens use the new key; replicas sharing the database follow a rotation; retired keys
 * leave the JWKS once the share window and a day have passed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as client from 'openid-client';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose';
import type { Knex } from 'knex';
import { createKnex, migrateLatest, silentLogger } from '@federizer/common';
import { testDatabases } from '../../common/src/testing/databases.js';
import { AUTH_MIGRATIONS_TABLE, AuthService, KeyRing, authMigrations } from '../src/index.js';
import { ADMIN_TOKEN, startFederation, type Federation, type TestDomain } from './harness.js';
import { BrowserAgent, closeLocalHttp, localFetch, publicClient, signInWithCode } from './browser-agent.js';

const DAY_MS = 24 * 3600 * 1000;
const COOKIE_KEYS = ['test-cookie-key-0123456789abcdef'];

/** Polls `probe` until it answers true, for at most `ms`; the outcome, not the time taken, is what counts. */
async function eventually(probe: () => Promise<boolean>, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await probe()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function jwksOf(url: string): Promise<JSONWebKeySet> {
  const res = await localFetch(url);
  expect(res.status).toBe(200);
  return (await res.json()) as JSONWebKeySet;
}

const kids = (set: JSONWebKeySet) => set.keys.map((k) => k.kid);

describe.each(testDatabases())('signing keys on $name', (database) => {
  let fed: Federation;
  let d: TestDomain;
  let webmail: client.Configuration;
  let users = 0;
  let addresses = 0;

  beforeAll(async () => {
    // Behind a proxy (trustProxy), so each test's user agent can come from its own address (X-Forwarded-For).
    fed = await startFederation(['example.com'], { database: database.create, config: { trustProxy: true } });
    d = fed.domains['example.com']!;
    webmail = await publicClient(d.issuer, 'webmail');
  });
  afterAll(async () => {
    await fed?.close();
    await closeLocalHttp();
  });

  const agent = () => new BrowserAgent({ headers: { 'x-forwarded-for': `192.0.2.${++addresses}` } });
  async function signIn() {
    const user = { address: `keys${++users}@example.com`, password: `password-${users}-of-keys` };
    await d.createUser(user.address, user.password);
    return { user, ...(await signInWithCode(webmail, d.webmailRedirectUri, user, agent())) };
  }

  async function rotate(): Promise<string> {
    const res = await d.admin('/keys/rotate', { method: 'POST' });
    expect(res.status).toBe(200);
    const { kid } = (await res.json()) as { kid: string };
    expect(kid).toEqual(expect.any(String));
    return kid;
  }

  const jwksUri = () => webmail.serverMetadata().jwks_uri!;

  it('PROTOCOL §4.6: after a rotation the retired key stays in the JWKS, so tokens signed before still verify', async () => {
    const before = await signIn();
    const oldKid = decodeProtectedHeader(before.tokens.id_token!).kid!;
    expect(decodeProtectedHeader(before.tokens.access_token).kid).toBe(oldKid);

    const newKid = await rotate();
    expect(newKid).not.toBe(oldKid);

    const published = await jwksOf(jwksUri());
    expect(kids(published)).toEqual(expect.arrayContaining([oldKid, newKid]));
    for (const key of published.keys) expect(key).not.toHaveProperty('d');
    const keySet = createLocalJWKSet(published);
    await expect(
      jwtVerify(before.tokens.id_token!, keySet, { issuer: d.issuer, audience: 'webmail', algorithms: ['ES256'] }),
    ).resolves.toBeDefined();
    await expect(
      jwtVerify(before.tokens.access_token, keySet, {
        issuer: d.issuer,
        audience: d.mailboxResource,
        typ: 'at+jwt',
        algorithms: ['ES256'],
      }),
    ).resolves.toBeDefined();
  });

  it('after a rotation new ID tokens and access tokens (also from refreshes) carry the new kid', async () => {
    const before = await signIn();
    const newKid = await rotate();
    const after = await signIn();
    const keySet = createLocalJWKSet(await jwksOf(jwksUri()));
    for (const token of [after.tokens.id_token!, after.tokens.access_token])
      expect(decodeProtectedHeader(token)).toMatchObject({ alg: 'ES256', kid: newKid });
    await jwtVerify(after.tokens.id_token!, keySet, { issuer: d.issuer, audience: 'webmail' });

    // A grant from before the rotation refreshes into tokens signed with the new key.
    const refreshed = await client.refreshTokenGrant(webmail, before.tokens.refresh_token!, undefined, {
      DPoP: before.DPoP,
    });
    expect(decodeProtectedHeader(refreshed.access_token).kid).toBe(newKid);
    expect(decodeProtectedHeader(refreshed.id_token!).kid).toBe(newKid);
    await jwtVerify(refreshed.access_token, keySet, { issuer: d.issuer, audience: d.mailboxResource, typ: 'at+jwt' });
  });

  it('GET /admin/v1/keys lists the current key first and the retired ones with their retirement time', async () => {
    const previous = d.as.keys.current.kid;
    const newKid = await rotate();
    const res = await d.admin('/keys');
    expect(res.status).toBe(200);
    const { keys } = (await res.json()) as {
      keys: { kid: string; alg: string; current: boolean; activatedAt: string; retiredAt: string | null }[];
    };
    expect(keys[0]).toMatchObject({ kid: newKid, alg: 'ES256', current: true, retiredAt: null });
    expect(keys.filter((k) => k.current)).toHaveLength(1);
    const retired = keys.find((k) => k.kid === previous);
    expect(retired).toMatchObject({ current: false, alg: 'ES256' });
    expect(Date.parse(retired!.retiredAt!)).toBeGreaterThanOrEqual(Date.parse(retired!.activatedAt));
    expect(JSON.stringify(keys)).not.toMatch(/"d"|private/i);
    // The admin list and the published JWKS are the same set.
    expect(new Set(kids(await jwksOf(jwksUri())))).toEqual(new Set(keys.map((k) => k.kid)));
    // Without the admin token: 401.
    expect((await fetch(`${d.as.url}/admin/v1/keys/rotate`, { method: 'POST' })).status).toBe(401);
  });

  it('a second AuthService sharing the database picks up a rotation made by the first at its next key check', async () => {
    const secrets = { adminToken: ADMIN_TOKEN, cookieKeys: COOKIE_KEYS };
    const replica = await AuthService.start({ ...d.config, port: 0, keyCheckSeconds: 1 }, secrets, {
      knex: d.as.knex,
      logger: silentLogger(),
    });
    try {
      expect(kids(await jwksOf(`${replica.url}/jwks`))).toEqual(kids(await jwksOf(jwksUri())));
      const newKid = await rotate();
      const followed = await eventually(async () => (await jwksOf(`${replica.url}/jwks`)).keys[0]?.kid === newKid);
      expect(followed, `the replica's JWKS never showed ${newKid} first`).toBe(true);
      expect(kids(await jwksOf(`${replica.url}/jwks`))).toEqual(kids(await jwksOf(jwksUri())));
      const ready = (await (await fetch(`${replica.url}/readyz`)).json()) as { kid: string };
      expect(ready.kid).toBe(newKid);
    } finally {
      await replica.close();
    }
  });

  describe('retention', () => {
    let knex: Knex;
    let destroy: () => Promise<void>;
    beforeAll(async () => {
      const db = await database.create();
      destroy = db.destroy;
      knex = createKnex(db.config);
      await migrateLatest(knex, authMigrations, AUTH_MIGRATIONS_TABLE);
    });
    afterAll(async () => {
      await knex?.destroy();
      await destroy?.();
    });

    it('PROTOCOL §4.6: a retired key is kept for the share window + 1 day after retirement, then dropped', async () => {
      const shareWindowSeconds = 7 * 24 * 3600;
      const T0 = Date.UTC(2030, 0, 1);
      const ring = await KeyRing.load(knex, { alg: 'ES256', rotationSeconds: 30 * 24 * 3600, shareWindowSeconds }, T0);
      const first = ring.current.kid;
      const retiredAt = T0 + 3600_000;
      const second = await ring.rotate(retiredAt);
      expect(await ring.refresh(retiredAt)).toBe(true);
      expect(ring.keys.map((k) => k.kid)).toEqual([second, first]);
      expect(ring.keys[1]!.retiredAt).toBe(retiredAt);

      const end = retiredAt + shareWindowSeconds * 1000 + DAY_MS;
      expect(await ring.refresh(end - 1000)).toBe(false);
      expect(ring.jwks.keys.map((k) => k.kid)).toEqual([second, first]);

      expect(await ring.refresh(end + 1000)).toBe(true);
      expect(ring.jwks.keys.map((k) => k.kid)).toEqual([second]);
      expect(ring.current.kid).toBe(second);
      // Gone from the database too, so no replica publishes it again.
      expect((await knex('signing_keys').select('kid')).map((r: { kid: string }) => r.kid)).toEqual([second]);
      const reloaded = await KeyRing.load(
        knex,
        { alg: 'ES256', rotationSeconds: 30 * 24 * 3600, shareWindowSeconds },
        end,
      );
      expect(reloaded.keys.map((k) => k.kid)).toEqual([second]);
    });
  });

  describe('scheduled rotation', () => {
    let knex: Knex;
    let destroy: () => Promise<void>;
    beforeAll(async () => {
      const db = await database.create();
      destroy = db.destroy;
      knex = createKnex(db.config);
      await migrateLatest(knex, authMigrations, AUTH_MIGRATIONS_TABLE);
    });
    afterAll(async () => {
      await knex?.destroy();
      await destroy?.();
    });

    it('PROTOCOL §8.4, docs §4.6: the next key is published an hour before it signs, so no cached JWKS misses it', async () => {
      const HOUR = 3600_000;
      const options = { alg: 'ES256' as const, rotationSeconds: 30 * 24 * 3600, shareWindowSeconds: 7 * 24 * 3600 };
      const T0 = Date.UTC(2031, 0, 1);
      const due = T0 + options.rotationSeconds * 1000;
      const ring = await KeyRing.load(knex, options, T0);
      const first = ring.current.kid;

      expect(await ring.refresh(due - 2 * HOUR)).toBe(false);
      expect(ring.jwks.keys.map((k) => k.kid)).toEqual([first]);

      // An hour before it is due, the next key is in the JWKS, but the current one still signs.
      expect(await ring.refresh(due - HOUR)).toBe(true);
      const [current, next] = ring.keys;
      expect(current!.kid).toBe(first);
      expect(ring.current.kid).toBe(first);
      expect(next!).toMatchObject({ activatedAt: due, retiredAt: null });
      expect(ring.jwks.keys.map((k) => k.kid)).toEqual([first, next!.kid]);
      expect(await ring.refresh(due - 1000)).toBe(false);

      // A replica starting in between publishes the same two keys and signs with the same one.
      const replica = await KeyRing.load(knex, options, due - HOUR / 2);
      expect(replica.jwks.keys.map((k) => k.kid)).toEqual([first, next!.kid]);
      expect(replica.current.kid).toBe(first);

      // Its time come, the next key signs and the previous one retires (and stays published).
      expect(await ring.refresh(due + 1000)).toBe(true);
      expect(ring.current.kid).toBe(next!.kid);
      expect(ring.keys.map((k) => [k.kid, k.retiredAt])).toEqual([
        [next!.kid, null],
        [first, due + 1000],
      ]);
      expect(await replica.refresh(due + 2000)).toBe(true);
      expect(replica.current.kid).toBe(next!.kid);
    });

    it('a key due long ago (the AS was down) is replaced an hour after the AS is back, not at once', async () => {
      await knex('signing_keys').delete();
      const options = { alg: 'ES256' as const, rotationSeconds: 30 * 24 * 3600, shareWindowSeconds: 7 * 24 * 3600 };
      const T0 = Date.UTC(2032, 0, 1);
      const ring = await KeyRing.load(knex, options, T0);
      const first = ring.current.kid;
      const back = T0 + 2 * options.rotationSeconds * 1000;
      expect(await ring.refresh(back)).toBe(true);
      expect(ring.current.kid).toBe(first);
      expect(ring.keys[1]).toMatchObject({ activatedAt: back + 3600_000 });
    });
  });

  describe('retention, as the running service sees it', () => {
    let clockFed: Federation;
    let clock = Date.now();
    let shifted = false;
    beforeAll(async () => {
      clockFed = await startFederation(['example.org'], {
        database: database.create,
        config: { keyCheckSeconds: 1 },
        now: () => (shifted ? clock : Date.now()),
      });
    });
    afterAll(() => clockFed?.close());

    it('the JWKS drops a retired key at the first key check after the share window + 1 day', async () => {
      const o = clockFed.domains['example.org']!;
      const oldKid = o.as.keys.current.kid;
      const res = await o.admin('/keys/rotate', { method: 'POST' });
      const { kid: newKid } = (await res.json()) as { kid: string };
      expect(kids(await jwksOf(`${o.as.url}/jwks`))).toEqual([newKid, oldKid]);
      clock = Date.now() + o.config.shareWindowSeconds * 1000 + DAY_MS + 60_000;
      shifted = true;
      const dropped = await eventually(async () => !kids(await jwksOf(`${o.as.url}/jwks`)).includes(oldKid));
      expect(dropped, `${oldKid} is still published`).toBe(true);
      expect(kids(await jwksOf(`${o.as.url}/jwks`))).toEqual([newKid]);
    });
  });
});

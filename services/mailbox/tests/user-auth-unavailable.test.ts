/**
 * The client API's authentication (PROTOCOL.md §9: DPoP-bound access tokens of the domain's own AS) when the
 * token or the proof cannot be checked at all: the AS does not answer for its keys, or the DPoP replay store
 * fails. Nothing is wrong with the request, so the answer is 503 `temporarily_unavailable` with Retry-After,
 * never a 401, which the webmail takes for a session to renew. A token or proof found wrong is still 401.
 * Real HTTP: the AS's metadata and JWKS are served by a server of this test, then that server is stopped.
 */
import express, { type Request, type Response } from 'express';
import { exportJWK, generateKeyPair, type CryptoKey } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listen, type RunningServer } from '@federizer/common';
import {
  MemoryReplayStore,
  createDpopProof,
  generateDpopKey,
  signJwt,
  type DpopKey,
  type ReplayStore,
} from '@federizer/protocol';
import { IssuerKeys, requireUser } from '../src/api/user-auth.js';

const RESOURCE = 'https://mail.example.com/api/v1';

describe('client API authentication when the check itself fails', () => {
  let as: RunningServer;
  let issuer: string;
  let signingKey: CryptoKey;
  let dpop: DpopKey;
  let api: RunningServer;
  let publicUrl: string;
  /** What the middleware uses: replaced per test. */
  let keys: IssuerKeys;
  let replay: ReplayStore;

  const httpGet = (url: string, init: { redirect: 'manual'; headers: Record<string, string> }) => fetch(url, init);

  async function token(kid = 'k1'): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return signJwt(
      {
        iss: issuer,
        aud: RESOURCE,
        sub: 'alice@example.com',
        client_id: 'webmail',
        scope: 'openid mailbox',
        cnf: { jkt: dpop.jkt },
        iat: now,
        exp: now + 300,
        jti: `t-${Math.random()}`,
      },
      { typ: 'at+jwt', alg: 'ES256', key: signingKey, kid },
    );
  }

  async function call(accessToken: string): Promise<globalThis.Response> {
    const url = `${publicUrl}/api/v1/session`;
    const proof = await createDpopProof(dpop, { htm: 'GET', htu: url, accessToken });
    return fetch(url, { headers: { authorization: `DPoP ${accessToken}`, dpop: proof } });
  }

  beforeAll(async () => {
    const pair = await generateKeyPair('ES256', { extractable: true });
    signingKey = pair.privateKey;
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    dpop = await generateDpopKey('ES256');
    const asApp = express();
    asApp.get('/.well-known/oauth-authorization-server', (_req, res) =>
      res.json({ issuer, jwks_uri: `${issuer}/jwks`, token_endpoint: `${issuer}/token` }),
    );
    asApp.get('/jwks', (_req, res) => res.json({ keys: [jwk] }));
    as = await listen(asApp, { port: 0 });
    issuer = as.url;

    const app = express();
    app.use(
      '/api/v1',
      (req: Request, res: Response, next) =>
        void requireUser({ issuer, resource: RESOURCE, publicUrl, keys, replay })(req, res, next),
    );
    app.get('/api/v1/session', (req, res) => res.json({ address: req.user!.address }));
    api = await listen(app, { port: 0 });
    publicUrl = api.url;
  });
  afterAll(async () => {
    await api?.close();
    await as?.close();
  });

  it('accepts a good token and proof (the baseline)', async () => {
    keys = new IssuerKeys(issuer, httpGet);
    replay = new MemoryReplayStore();
    const res = await call(await token());
    expect(res.status, await res.clone().text()).toBe(200);
    expect(await res.json()).toEqual({ address: 'alice@example.com' });
  });

  it('RFC 9449 §11.1: a replay store that fails answers 503 temporarily_unavailable, not 401', async () => {
    keys = new IssuerKeys(issuer, httpGet);
    replay = { checkAndRecord: () => Promise.reject(new Error('SQLITE_IOERR: disk I/O error')) };
    const res = await call(await token());
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(res.headers.get('www-authenticate')).toBeNull();
    expect(await res.json()).toMatchObject({
      error: 'temporarily_unavailable',
      error_description: expect.stringMatching(/DPoP proof could not be checked now: SQLITE_IOERR/),
    });
  });

  it('a replayed proof is still refused with 401 invalid_dpop_proof (RFC 9449 §11.1)', async () => {
    keys = new IssuerKeys(issuer, httpGet);
    replay = new MemoryReplayStore();
    const accessToken = await token();
    const url = `${publicUrl}/api/v1/session`;
    const proof = await createDpopProof(dpop, { htm: 'GET', htu: url, accessToken });
    const headers = { authorization: `DPoP ${accessToken}`, dpop: proof };
    expect((await fetch(url, { headers })).status).toBe(200);
    const again = await fetch(url, { headers });
    expect(again.status).toBe(401);
    expect(await again.json()).toMatchObject({ error: 'invalid_dpop_proof' });
  });

  it('a forged token is still refused with 401 invalid_token', async () => {
    keys = new IssuerKeys(issuer, httpGet);
    replay = new MemoryReplayStore();
    const good = await token();
    const forged = `${good.slice(0, good.lastIndexOf('.'))}.${'A'.repeat(86)}`;
    const res = await call(forged);
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ error: 'invalid_token' });
  });

  it('an AS that does not answer for its keys gives 503, and the same token passes once it answers', async () => {
    replay = new MemoryReplayStore();
    let down = true;
    keys = new IssuerKeys(issuer, (url, init) =>
      down ? Promise.reject(new TypeError('fetch failed: ECONNREFUSED')) : httpGet(url, init),
    );
    const accessToken = await token();
    const res = await call(accessToken);
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({
      error: 'temporarily_unavailable',
      error_description: expect.stringMatching(/access token could not be checked now: .*ECONNREFUSED/),
    });
    down = false;
    expect((await call(accessToken)).status).toBe(200);
  });
});

/**
 * The client API's resources through real HTTP: a user of example.com signs in at the domain's real AS
 * (authorization code, PKCE, DPoP) and uploads and downloads with DPoP proofs, as the webmail does.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { exportJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKnex, silentLogger } from '@federizer/common';
import { contentId, createDpopProof, jwkThumbprint, type DpopKey } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { freePort, hostOf, startFederation, type Federation } from '../../auth/tests/harness.js';
import { signIn, testHttp } from '../../auth/tests/exchange-client.js';
import { MailboxService, mailboxConfig, wellKnown } from '../src/index.js';
import { documented } from './openapi-check.js';

describe.each(testDatabases())('the resources API ($name)', (database) => {
  let fed: Federation;
  let mailbox: MailboxService;
  let blobDir: string;
  let publicUrl: string;
  let token: string;
  let key: DpopKey;
  const http = testHttp();

  /** One API request as the webmail makes it: the access token and a fresh DPoP proof with its ath. */
  async function api(
    path: string,
    init: { method?: string; body?: Uint8Array | string; headers?: Record<string, string> } = {},
  ) {
    const method = init.method ?? 'GET';
    const url = `${publicUrl}/api/v1${path}`;
    const proof = await createDpopProof(key, { htm: method, htu: url, accessToken: token });
    const res = await http.fetch(url, {
      method,
      body: init.body,
      headers: { authorization: `DPoP ${token}`, dpop: proof, ...init.headers },
    });
    return documented(method, url, res);
  }

  beforeAll(async () => {
    const port = await freePort();
    publicUrl = `http://${hostOf('mail', 'example.com')}:${port}`;
    fed = await startFederation(['example.com'], {
      database: database.create,
      config: { mailboxResource: `${publicUrl}/api/v1` },
    });
    const domain = fed.domains['example.com']!;
    await domain.createUser('alice@example.com', 'alice password');
    await domain.createUser('bob@example.com', 'bob password');
    blobDir = await mkdtemp(join(tmpdir(), 'federizer-blobs-'));
    const db = await database.create();
    const { config, secrets } = mailboxConfig(
      {
        domain: 'example.com',
        publicUrl,
        issuer: domain.issuer,
        blobDir,
        dev: true,
        port,
        maxResourceSize: 1024 * 1024,
        quotaBytes: 3 * 1024 * 1024,
      },
      { mtaClientSecret: 'unused in these tests' },
    );
    const knex = createKnex(db.config);
    mailbox = await MailboxService.start(config, secrets, { knex, logger: silentLogger() });
    const session = await signIn(domain, http, 'alice@example.com', 'alice password');
    token = session.accessToken;
    const publicJwk = await exportJWK(session.dpopKey.publicKey);
    key = { alg: 'ES256', privateKey: session.dpopKey.privateKey, publicJwk, jkt: await jwkThumbprint(publicJwk) };
    return async () => {
      await mailbox.close();
      await knex.destroy();
      await db.destroy();
      await fed.close();
      await rm(blobDir, { recursive: true, force: true });
    };
  });
  afterAll(() => http.close());

  it('PROTOCOL §8: /.well-known/federizer publishes the domain, its AS and its MTA client id', async () => {
    const res = await http.fetch(`${publicUrl}/.well-known/federizer`);
    expect(await res.json()).toEqual(wellKnown(mailbox.config));
  });

  it('upload streams, answers the Content-ID, and the download is the same bytes with ETag and Repr-Digest (§9)', async () => {
    const bytes = randomBytes(300_000);
    const up = await api('/resources', { method: 'POST', body: bytes, headers: { 'content-type': 'image/png' } });
    expect(up.status).toBe(201);
    const { contentId: cid, size } = (await up.json()) as { contentId: string; size: number };
    expect(cid).toBe(contentId(bytes));
    expect(size).toBe(bytes.length);
    const down = await api(`/resources/${cid.slice(1, -1)}`);
    expect(down.status).toBe(200);
    // PROTOCOL §9, literally: the ETag is the Content-ID (angle brackets are etagc characters, RFC 9110 §8.8.3).
    expect(down.headers.get('etag')).toBe(`"${cid}"`);
    expect(down.headers.get('cache-control')).toBe('private, immutable');
    expect(down.headers.get('content-type')).toBe('image/png');
    expect(down.headers.get('repr-digest')).toBe(
      `sha-256=:${Buffer.from(cid.slice(1, -1), 'base64url').toString('base64')}:`,
    );
    expect(Buffer.from(await down.arrayBuffer()).equals(bytes)).toBe(true);
  });

  it('RFC 9110 §14: a Range request gets 206 with exactly those bytes; an impossible one gets 416', async () => {
    const bytes = randomBytes(10_000);
    const { contentId: cid } = (await (await api('/resources', { method: 'POST', body: bytes })).json()) as {
      contentId: string;
    };
    const part = await api(`/resources/${cid.slice(1, -1)}`, { headers: { range: 'bytes=100-199' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe('bytes 100-199/10000');
    expect(Buffer.from(await part.arrayBuffer()).equals(bytes.subarray(100, 200))).toBe(true);
    expect((await api(`/resources/${cid.slice(1, -1)}`, { headers: { range: 'bytes=20000-' } })).status).toBe(416);
    // The bracket-less entity tag answered before this one is still recognized, for clients that cached it.
    expect(
      (await api(`/resources/${cid.slice(1, -1)}`, { headers: { 'if-none-match': `"${cid.slice(1, -1)}"` } })).status,
    ).toBe(304);
  });

  /** A fresh resource of `size` random bytes, and the path of its download. */
  async function uploaded(size: number): Promise<{ bytes: Buffer; cid: string; path: string }> {
    const bytes = randomBytes(size);
    const { contentId: cid } = (await (await api('/resources', { method: 'POST', body: bytes })).json()) as {
      contentId: string;
    };
    return { bytes, cid, path: `/resources/${cid.slice(1, -1)}` };
  }

  it('RFC 9111 §5.2.2.5 / RFC 9110 §15.5.17: a 416, a 404 and a 412 are not cacheable: no-store, no ETag, no immutable', async () => {
    const { path } = await uploaded(1_000);
    const refused = await api(path, { headers: { range: 'bytes=5000-' } });
    expect(refused.status).toBe(416);
    expect(refused.headers.get('content-range')).toBe('bytes */1000');
    expect(refused.headers.get('cache-control')).toBe('no-store');
    expect(refused.headers.get('etag')).toBeNull();
    expect(refused.headers.get('repr-digest')).toBeNull();
    expect(await refused.json()).toMatchObject({ error: 'range_not_satisfiable' });
    for (const missing of [`/resources/${'A'.repeat(42)}E`, '/resources/not-a-digest']) {
      const res = await api(missing);
      expect(res.status, missing).toBe(404);
      expect(res.headers.get('cache-control'), missing).toBe('no-store');
      expect(res.headers.get('etag'), missing).toBeNull();
    }
    const failed = await api(path, { headers: { 'if-match': '"something else"' } });
    expect(failed.status).toBe(412);
    expect(failed.headers.get('cache-control')).toBe('no-store');
    expect(failed.headers.get('etag')).toBeNull();
  });

  it('RFC 9110 §14.2: Range is for GET only; a HEAD with a Range answers 200 with the whole Content-Length', async () => {
    const { cid, path } = await uploaded(2_000);
    for (const range of ['bytes=0-99', 'bytes=5000-', 'bytes=-10']) {
      const head = await api(path, { method: 'HEAD', headers: { range } });
      expect(head.status, range).toBe(200);
      expect(head.headers.get('content-length'), range).toBe('2000');
      expect(head.headers.get('content-range'), range).toBeNull();
      expect(head.headers.get('etag'), range).toBe(`"${cid}"`);
      expect(head.headers.get('cache-control'), range).toBe('private, immutable');
    }
  });

  it('RFC 9110 §13.1.5: If-Range honours the Range only when it strongly matches the entity tag', async () => {
    const { bytes, cid, path } = await uploaded(3_000);
    const digest = cid.slice(1, -1);
    const ranged = async (ifRange: string) => api(path, { headers: { range: 'bytes=10-19', 'if-range': ifRange } });
    for (const tag of [`"${cid}"`, `"${digest}"`]) {
      const part = await ranged(tag);
      expect(part.status, tag).toBe(206);
      expect(Buffer.from(await part.arrayBuffer()).equals(bytes.subarray(10, 20)), tag).toBe(true);
    }
    // A weak tag, another tag, or a date (a resource has no Last-Modified): the whole resource.
    for (const tag of [`W/"${cid}"`, '"another"', 'Tue, 15 Nov 1994 08:12:31 GMT']) {
      const whole = await ranged(tag);
      expect(whole.status, tag).toBe(200);
      expect(whole.headers.get('content-range'), tag).toBeNull();
      expect(Buffer.from(await whole.arrayBuffer()).equals(bytes), tag).toBe(true);
    }
    // Several ranges are not served as multipart/byteranges: the whole resource answers them.
    const several = await api(path, { headers: { range: 'bytes=0-1,5-6' } });
    expect(several.status).toBe(200);
    expect((await several.arrayBuffer()).byteLength).toBe(3_000);
  });

  it('RFC 9110 §13.1.2: If-None-Match compares weakly (W/ and * answer 304); a 304 has ETag and Cache-Control only', async () => {
    const { cid, path } = await uploaded(500);
    const digest = cid.slice(1, -1);
    for (const header of [`"${cid}"`, `W/"${cid}"`, `W/"${digest}"`, '*', `"other", W/"${cid}"`]) {
      for (const method of ['GET', 'HEAD']) {
        const res = await api(path, { method, headers: { 'if-none-match': header } });
        expect(res.status, `${method} ${header}`).toBe(304);
        expect(res.headers.get('etag'), header).toBe(`"${cid}"`);
        expect(res.headers.get('cache-control'), header).toBe('private, immutable');
        expect(res.headers.get('content-type'), header).toBeNull();
        expect(res.headers.get('repr-digest'), header).toBeNull();
      }
    }
    expect((await api(path, { headers: { 'if-none-match': '"other"' } })).status).toBe(200);
  });

  it('RFC 9110 §13.1.1: If-Match compares strongly; a tag that does not match (and is not *) answers 412', async () => {
    const { cid, path } = await uploaded(500);
    for (const header of [`"${cid}"`, `"${cid.slice(1, -1)}"`, '*', `"other", "${cid}"`]) {
      expect((await api(path, { headers: { 'if-match': header } })).status, header).toBe(200);
    }
    for (const header of ['"other"', `W/"${cid}"`]) {
      const res = await api(path, { headers: { 'if-match': header } });
      expect(res.status, header).toBe(412);
      expect(await res.json(), header).toMatchObject({ error: 'precondition_failed' });
    }
    expect((await api(path, { method: 'HEAD', headers: { 'if-match': '"other"' } })).status).toBe(412);
  });

  it('the same bytes uploaded twice are held once (deduplicated per account)', async () => {
    const bytes = randomBytes(5_000);
    const first = (await (await api('/resources', { method: 'POST', body: bytes })).json()) as { contentId: string };
    const used = (await (await api('/session')).json()) as { storageUsed: number };
    const second = (await (await api('/resources', { method: 'POST', body: bytes })).json()) as { contentId: string };
    expect(second.contentId).toBe(first.contentId);
    expect(((await (await api('/session')).json()) as { storageUsed: number }).storageUsed).toBe(used.storageUsed);
  });

  it('an oversize upload is refused with 413 and leaves no partial file behind', async () => {
    const res = await api('/resources', { method: 'POST', body: randomBytes(1024 * 1024 + 1) });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: string }).error).toBe('too_large');
    expect(await readdir(join(blobDir, 'tmp'))).toEqual([]);
  });

  it('a path-traversal Content-ID is not found, never a file read', async () => {
    for (const bad of ['..%2F..%2Fetc%2Fpasswd', '%3C..%2F..%3E', 'A'.repeat(43)]) {
      const res = await api(`/resources/${bad}`);
      expect(res.status, bad).toBe(404);
    }
  });

  it('a resource is served only to an account that holds it: knowing the Content-ID grants nothing', async () => {
    const bytes = randomBytes(1_000);
    const { contentId: cid } = (await (await api('/resources', { method: 'POST', body: bytes })).json()) as {
      contentId: string;
    };
    const bob = await signIn(fed.domains['example.com']!, http, 'bob@example.com', 'bob password');
    const bobJwk = await exportJWK(bob.dpopKey.publicKey);
    const bobKey: DpopKey = {
      alg: 'ES256',
      privateKey: bob.dpopKey.privateKey,
      publicJwk: bobJwk,
      jkt: await jwkThumbprint(bobJwk),
    };
    const url = `${publicUrl}/api/v1/resources/${cid.slice(1, -1)}`;
    const res = await http.fetch(url, {
      headers: {
        authorization: `DPoP ${bob.accessToken}`,
        dpop: await createDpopProof(bobKey, { htm: 'GET', htu: url, accessToken: bob.accessToken }),
      },
    });
    expect(res.status).toBe(404);
  });

  it('RFC 9449 §7: no token, a Bearer token, a proof for another URL, or a replayed proof are refused with 401', async () => {
    const url = `${publicUrl}/api/v1/session`;
    expect((await http.fetch(url)).status).toBe(401);
    expect((await http.fetch(url, { headers: { authorization: `Bearer ${token}` } })).status).toBe(401);
    const wrongHtu = await createDpopProof(key, { htm: 'GET', htu: `${publicUrl}/api/v1/other`, accessToken: token });
    const refused = await http.fetch(url, { headers: { authorization: `DPoP ${token}`, dpop: wrongHtu } });
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toMatch(/error="invalid_dpop_proof"/);
    const proof = await createDpopProof(key, { htm: 'GET', htu: url, accessToken: token });
    expect((await http.fetch(url, { headers: { authorization: `DPoP ${token}`, dpop: proof } })).status).toBe(200);
    expect((await http.fetch(url, { headers: { authorization: `DPoP ${token}`, dpop: proof } })).status).toBe(401);
  });
});

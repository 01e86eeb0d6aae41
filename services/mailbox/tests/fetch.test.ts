/**
 * PROTOCOL.md §6, the fetch, over real HTTP between two real domains. Alice of example.com sends Bob of
 * example.net a message with External Resources while example.net's fetcher is paused, so that the test
 * drives the fetch itself: it takes the envelope Bob's mailbox stored, gets a real fetch access token from
 * example.net's AS (the MTA's RFC 8693 exchange with DPoP, through openid-client) and asks example.com's fetch
 * endpoint for the bytes. The happy path first, then one request per check of §6.3 that breaks only that
 * check. Then the receiving side: the fetcher publishes the bytes, fetches a Content-ID once however many
 * messages and recipients reference it, and never publishes bytes whose digest is not the Content-ID.
 *
 * A few tokens need one claim wrong while everything else stays real (an expired `exp`, a foreign `azp`):
 * those are the AS's own token with that claim changed, signed again with the AS's real signing key.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listen, silentLogger, type HttpClient, type RunningServer } from '@federizer/common';
import {
  contentId,
  createDpopProof,
  decodeJwt,
  dpopKeyOf,
  generateDpopKey,
  type Block,
  type CreateDpopProofOptions,
  type DpopKey,
  type MailboxMetadata,
} from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { MtaClient, fetchParams, testHttp } from '../../auth/tests/exchange-client.js';
import {
  AccountStore,
  DiskBlobStore,
  ExchangeFailure,
  Fetcher,
  JobQueue,
  MessageStore,
  type AsClient,
  type FetchJob,
} from '../src/index.js';
import { openMailboxDatabase, testClock, type MailboxTestDatabase } from '../src/storage/testing.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';
import {
  allHeld,
  fetchRequestsServed,
  readMessage,
  received,
  reprDigest,
  resign,
  sendMessage,
  until,
  upload,
  type Received,
  type Sent,
  type Uploaded,
} from './fetch-helpers.js';
import { documented } from './openapi-check.js';

interface ErrorBody {
  error: string;
  error_description?: string;
}

/** A message Alice sent Bob and the envelope his mailbox stored (without its receive block). */
interface Delivered extends Sent {
  readonly envelope: Block[];
  readonly inBob: Received;
}

describe.each(testDatabases())('fetch between two real domains ($name)', (database) => {
  let fed: MailFederation;
  let http: HttpClient;
  let alice: UserClient;
  let bob: UserClient;
  let carol: UserClient;
  /** example.com's mailbox document: its `resource` (the token's audience) and `fetch_endpoint`. */
  let origin: MailboxMetadata;
  let netMta: MtaClient;
  let text: Uploaded;
  let photo: Uploaded;
  let m1: Delivered;
  /** A real fetch access token of example.net's AS for m1, and the DPoP key it is bound to. */
  let issued: { token: string; key: DpopKey };

  const net = () => fed.domains['example.net']!.mailbox;
  const com = () => fed.domains['example.com']!.mailbox;
  const netSigningKeys = () => fed.auth.domains['example.net']!.as.keys.keys;

  async function deliverToBob(subject: string, resources: readonly Uploaded[], to = ['bob@example.net']) {
    const sent = await sendMessage(alice, { to, subject, resources });
    const inBob = await received(bob, sent.messageId);
    return { ...sent, envelope: inBob.envelope, inBob };
  }

  /** A real fetch exchange at an AS (example.net's by default) for the newest assertion of `envelope`. */
  async function fetchToken(
    m: { envelope: readonly Block[]; messageId: string },
    options: { mta?: MtaClient; audience?: string; messageId?: string } = {},
  ): Promise<{ token: string; key: DpopKey }> {
    const assertion = (m.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    const exchanged = await (options.mta ?? netMta).exchange(
      fetchParams(assertion, options.audience ?? origin.resource, options.messageId ?? m.messageId, 'example.com'),
    );
    return { token: exchanged.token, key: await dpopKeyOf(exchanged.dpopKey) };
  }

  function proof(key: DpopKey, token: string, changes: Partial<CreateDpopProofOptions> = {}): Promise<string> {
    return createDpopProof(key, { htm: 'POST', htu: origin.fetch_endpoint, accessToken: token, ...changes });
  }

  /**
   * POST to example.com's fetch endpoint. By default: m1's envelope, the photo's Content-ID, domain
   * example.net, m1's token with a fresh proof. `token: null` / `proof: null` leave the header out.
   */
  async function postFetch(
    options: {
      token?: string | null;
      key?: DpopKey;
      proof?: string | null;
      body?: unknown;
      rawBody?: string;
      range?: string;
    } = {},
  ): Promise<Response> {
    const token = options.token === undefined ? issued.token : options.token;
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (token !== null) headers.authorization = `DPoP ${token}`;
    const dpop =
      options.proof === undefined ? await proof(options.key ?? issued.key, token ?? issued.token) : options.proof;
    if (dpop !== null) headers.dpop = dpop;
    if (options.range !== undefined) headers.range = options.range;
    const body =
      options.rawBody ??
      JSON.stringify(options.body ?? { envelope: m1.envelope, content_id: photo.contentId, domain: 'example.net' });
    return documented(
      'POST',
      origin.fetch_endpoint,
      await http.fetch(origin.fetch_endpoint, { method: 'POST', headers, body }),
    );
  }

  /** The refusal: its status, its `error`, and for a 401 the RFC 9449 `WWW-Authenticate` naming that error. */
  async function expectRefused(res: Response, status: number, error: string, why?: RegExp): Promise<ErrorBody> {
    const isJson = (res.headers.get('content-type') ?? '').includes('json');
    const text = isJson
      ? await res.text()
      : `${res.headers.get('content-type')} (${(await res.arrayBuffer()).byteLength} bytes)`;
    expect(res.status, text).toBe(status);
    const body = JSON.parse(text) as ErrorBody;
    expect(body.error, text).toBe(error);
    if (why !== undefined) expect(body.error_description, text).toMatch(why);
    if (status === 401) expect(res.headers.get('www-authenticate')).toMatch(new RegExp(`^DPoP error="${error}"`));
    return body;
  }

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net'], { database: database.create });
    http = testHttp();
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password');
    await fed.auth.domains['example.net']!.createUser('carol@example.net', 'carol password');
    // The test drives the fetch: example.net's fetcher claims nothing until it is resumed.
    net().fetcher.pause();
    [alice, bob, carol] = await Promise.all([
      fed.user('alice@example.com', 'alice password'),
      fed.user('bob@example.net', 'bob password'),
      fed.user('carol@example.net', 'carol password'),
    ]);
    origin = (await (
      await http.fetch(`${fed.domains['example.com']!.publicUrl}/.well-known/federizer`)
    ).json()) as MailboxMetadata;
    netMta = await MtaClient.connect(fed.auth.domains['example.net']!, http);
    text = await upload(alice, Buffer.from('Hi Bob,\n\nthe plan for Friday is attached.\n\nAlice\n'), 'text/plain');
    photo = await upload(alice, randomBytes(40_000), 'image/png');
    m1 = await deliverToBob('The plan', [text, photo]);
    issued = await fetchToken(m1);
  });
  afterAll(async () => {
    await http?.close();
    await fed?.close();
  });

  describe('the origin fetch endpoint', () => {
    it('the envelope Bob stored is exactly the transferred one: [A1, H0], all resources pending', () => {
      expect(m1.envelope).toHaveLength(2);
      expect('jwt-assertion' in m1.envelope[0]!).toBe(true);
      expect(m1.inBob.resources.map((r) => r.status)).toEqual(['pending', 'pending']);
    });

    it('PROTOCOL §6.4: 200 streams the exact bytes with Content-Length, Repr-Digest and Accept-Ranges', async () => {
      const res = await postFetch();
      const bytes = Buffer.from(await res.arrayBuffer());
      expect(res.status).toBe(200);
      expect(bytes.equals(photo.bytes)).toBe(true);
      expect(res.headers.get('content-length')).toBe(String(photo.size));
      expect(res.headers.get('repr-digest')).toBe(reprDigest(photo.bytes));
      expect(res.headers.get('accept-ranges')).toBe('bytes');
      // One token serves every resource of the message (§6.1).
      const second = await postFetch({
        body: { envelope: m1.envelope, content_id: text.contentId, domain: 'example.net' },
      });
      expect(second.status).toBe(200);
      expect(Buffer.from(await second.arrayBuffer()).equals(text.bytes)).toBe(true);
      expect(second.headers.get('repr-digest')).toBe(reprDigest(text.bytes));
      // §6.4: the media type as the message declares it: no charset added to a text type that has none.
      expect(second.headers.get('content-type')).toBe('text/plain');
    });

    it("PROTOCOL §6.4: a complete fetch shows in Alice's deliveries as fetched by example.net", async () => {
      const delivery = await until('the delivery marked fetched', async () => {
        const d = (await (await alice.api(`/messages/${m1.sentId}/deliveries`)).json()) as {
          deliveries: { recipient: string; status: string; fetchedBy?: string }[];
        };
        return d.deliveries.find((x) => x.recipient === 'bob@example.net' && x.status === 'fetched');
      });
      expect(delivery).toMatchObject({ recipient: 'bob@example.net', status: 'fetched', fetchedBy: 'example.net' });
    });

    it('PROTOCOL §6.2: a Range header is honoured: bytes=10- answers 206 with the rest', async () => {
      const res = await postFetch({ range: 'bytes=10-' });
      const bytes = Buffer.from(await res.arrayBuffer());
      expect(res.status).toBe(206);
      expect(bytes.equals(photo.bytes.subarray(10))).toBe(true);
      expect(res.headers.get('content-range')).toBe(`bytes 10-${photo.size - 1}/${photo.size}`);
      expect(res.headers.get('content-length')).toBe(String(photo.size - 10));
      // §6.4: for a 206 the digest is still the one of the whole resource.
      expect(res.headers.get('repr-digest')).toBe(reprDigest(photo.bytes));
      expect(res.headers.get('accept-ranges')).toBe('bytes');
    });

    it('PROTOCOL §6.3: an unsatisfiable range answers 416', async () => {
      const res = await postFetch({ range: `bytes=${photo.size}-` });
      expect(res.status).toBe(416);
      expect(res.headers.get('content-range')).toBe(`bytes */${photo.size}`);
      await res.arrayBuffer();
    });

    it("PROTOCOL §6.4: Content-Type is the resource's media type (the second element of the leaf's Content-Type)", async () => {
      const res = await postFetch();
      await res.arrayBuffer();
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('image/png');
    });

    it('PROTOCOL §6.4: a message stored before media types were kept with its resources (migration 0003) answers it too', async () => {
      const references = com()
        .knex('mail_message_resources')
        .where({ content_id: photo.contentId })
        .whereIn('message', com().knex('mail_shares').select('message').where({ message_id: m1.messageId }));
      expect(await references.clone().update({ media_type: null })).toBe(1);
      try {
        const res = await postFetch();
        await res.arrayBuffer();
        expect(res.status).toBe(200);
        expect(res.headers.get('content-type')).toBe('image/png');
        expect(res.headers.get('content-length')).toBe(String(photo.size));
      } finally {
        await references.clone().update({ media_type: 'image/png' });
      }
    });

    describe('PROTOCOL §6.2: the request body', () => {
      it('PROTOCOL §6.2: a body that is not {envelope, content_id, domain} answers 400 invalid_request', async () => {
        await expectRefused(await postFetch({ rawBody: '' }), 400, 'invalid_request');
        await expectRefused(
          await postFetch({ body: { envelope: m1.envelope, domain: 'example.net' } }),
          400,
          'invalid_request',
        );
        await expectRefused(
          await postFetch({ body: { envelope: 'A1', content_id: photo.contentId, domain: 'example.net' } }),
          400,
          'invalid_request',
        );
        // A domain DNS cannot be asked about is the request's fault, not a passing outage (503).
        await expectRefused(
          await postFetch({ body: { envelope: m1.envelope, content_id: photo.contentId, domain: 'example..net' } }),
          400,
          'invalid_request',
          /not a domain name/,
        );
      });

      it('PROTOCOL §6.2: a malformed envelope answers 400 invalid_message', async () => {
        await expectRefused(
          await postFetch({
            body: { envelope: [{ headers: 'nothing' }], content_id: photo.contentId, domain: 'example.net' },
          }),
          400,
          'invalid_message',
        );
        // Two valid-looking blocks in the wrong order: the origin block is not last.
        await expectRefused(
          await postFetch({
            body: { envelope: [...m1.envelope].reverse(), content_id: photo.contentId, domain: 'example.net' },
          }),
          400,
          'invalid_message',
        );
      });
    });

    describe('PROTOCOL §6.3 check 2: the access token', () => {
      it('PROTOCOL §6.3: the request must carry Authorization: DPoP <token> (401 invalid_token)', async () => {
        await expectRefused(await postFetch({ token: null }), 401, 'invalid_token');
        // A Bearer token is not a DPoP token.
        const headers = {
          'content-type': 'application/json',
          authorization: `Bearer ${issued.token}`,
          dpop: await proof(issued.key, issued.token),
        };
        const res = await documented(
          'POST',
          origin.fetch_endpoint,
          await http.fetch(origin.fetch_endpoint, {
            method: 'POST',
            headers,
            body: JSON.stringify({ envelope: m1.envelope, content_id: photo.contentId, domain: 'example.net' }),
          }),
        );
        await expectRefused(res, 401, 'invalid_token');
      });

      it('PROTOCOL §6.3: the token must be typ at+jwt (an assertion presented as an access token: 401)', async () => {
        const assertion = (m1.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
        expect(decodeJwt(assertion).header.typ).not.toBe('at+jwt');
        await expectRefused(await postFetch({ token: assertion }), 401, 'invalid_token', /typ/);
      });

      it('PROTOCOL §6.3: the header must not choose the key (a token with jku/jwk: 401)', async () => {
        const token = resign(issued.token, netSigningKeys(), {
          header: { jku: `${fed.auth.domains['example.net']!.issuer}/jwks` },
        });
        await expectRefused(await postFetch({ token }), 401, 'invalid_token');
      });

      it("PROTOCOL §6.3: iss must be the issuer DNS names for domain (example.net's token, domain example.com: 401)", async () => {
        await expectRefused(
          await postFetch({ body: { envelope: m1.envelope, content_id: photo.contentId, domain: 'example.com' } }),
          401,
          'invalid_token',
          /iss/,
        );
      });

      it("PROTOCOL §6.3: the signature must verify with the issuer's JWKS (401)", async () => {
        const [h, p, s] = issued.token.split('.');
        const flipped = `${s!.startsWith('A') ? 'B' : 'A'}${s!.slice(1)}`;
        await expectRefused(await postFetch({ token: `${h}.${p}.${flipped}` }), 401, 'invalid_token');
      });

      it('PROTOCOL §6.3: the token must not be expired (exp in the past, signed by the real AS key: 401)', async () => {
        const now = Math.floor(Date.now() / 1000);
        const token = resign(issued.token, netSigningKeys(), { claims: { iat: now - 900, exp: now - 300 } });
        await expectRefused(await postFetch({ token }), 401, 'invalid_token', /expired/);
      });

      it("PROTOCOL §6.3: aud must include the origin's resource (a token for example.net's own resource: 401)", async () => {
        const other = await fetchToken(m1, { audience: `${fed.domains['example.net']!.publicUrl}/api/v1` });
        expect(decodeJwt(other.token).payload.aud).not.toBe(origin.resource);
        await expectRefused(await postFetch({ token: other.token, key: other.key }), 401, 'invalid_token', /not for/);
      });

      it('PROTOCOL §6.3: scope must include internet_mail (401)', async () => {
        const token = resign(issued.token, netSigningKeys(), { claims: { scope: 'mailbox' } });
        await expectRefused(await postFetch({ token }), 401, 'invalid_token', /scope/);
      });
    });

    describe('PROTOCOL §6.3 check 1: the DPoP proof (401 invalid_dpop_proof)', () => {
      it('PROTOCOL §6.3: a DPoP proof is required', async () => {
        await expectRefused(await postFetch({ proof: null }), 401, 'invalid_dpop_proof');
      });

      it('PROTOCOL §6.3: the proof htu must be the fetch endpoint', async () => {
        const dpop = await proof(issued.key, issued.token, { htu: origin.transfer_endpoint });
        await expectRefused(await postFetch({ proof: dpop }), 401, 'invalid_dpop_proof');
      });

      it('PROTOCOL §6.3: the proof htm must be POST', async () => {
        const dpop = await proof(issued.key, issued.token, { htm: 'GET' });
        await expectRefused(await postFetch({ proof: dpop }), 401, 'invalid_dpop_proof');
      });

      it('PROTOCOL §6.3: the proof ath must be the hash of the presented token', async () => {
        const other = await fetchToken(m1);
        // A proof made with the token's own key, but for another token.
        const dpop = await proof(issued.key, issued.token, { accessToken: other.token });
        await expectRefused(await postFetch({ proof: dpop }), 401, 'invalid_dpop_proof');
      });

      it('PROTOCOL §6.3: a proof is used once (a replayed proof is refused)', async () => {
        const dpop = await proof(issued.key, issued.token);
        const first = await postFetch({ proof: dpop });
        await first.arrayBuffer();
        expect(first.status).toBe(200);
        await expectRefused(await postFetch({ proof: dpop }), 401, 'invalid_dpop_proof');
      });

      it("PROTOCOL §6.3: the proof's key must be the token's cnf.jkt", async () => {
        const stranger = await generateDpopKey();
        expect(stranger.jkt).not.toBe(issued.key.jkt);
        await expectRefused(await postFetch({ key: stranger }), 401, 'invalid_dpop_proof');
      });
    });

    describe("PROTOCOL §6.3 check 3: the token's client", () => {
      // The AS always issues azp = client_id = its MTA; only a re-signed token can carry another one.
      it('PROTOCOL §6.3: azp must be the mta_client_id of _federizer._rs._tcp.<domain> (401 invalid_token)', async () => {
        const token = resign(issued.token, netSigningKeys(), { claims: { azp: 'webmail' } });
        await expectRefused(await postFetch({ token }), 401, 'invalid_token');
      });

      it('PROTOCOL §6.3: client_id must be the mta_client_id of _federizer._rs._tcp.<domain> (401 invalid_token)', async () => {
        const token = resign(issued.token, netSigningKeys(), { claims: { client_id: 'webmail' } });
        await expectRefused(await postFetch({ token }), 401, 'invalid_token');
      });
    });

    describe('PROTOCOL §6.3 checks 5–8: the message, the domain, the resource, the share', () => {
      it("PROTOCOL §6.3: message_id of the token must be the envelope's Message-ID (403)", async () => {
        const other = await fetchToken(m1, { messageId: `<not-this-one-${Date.now()}@example.com>` });
        await expectRefused(await postFetch({ token: other.token, key: other.key }), 403, 'access_denied', /message/);
      });

      it('PROTOCOL §6.3: the origin block must be the stored one (an altered H0: 404 unknown_message)', async () => {
        const h0 = m1.envelope[1] as { headers: Record<string, string>[] };
        const altered = {
          headers: h0.headers.map((h) => ('Subject' in h ? { Subject: 'Something else entirely' } : h)),
        };
        expect(JSON.stringify(altered)).not.toBe(JSON.stringify(h0));
        await expectRefused(
          await postFetch({
            body: { envelope: [m1.envelope[0], altered], content_id: photo.contentId, domain: 'example.net' },
          }),
          404,
          'unknown_message',
        );
      });

      it('PROTOCOL §6.3: domain must be a recipient domain of the envelope (403)', async () => {
        // example.com's own MTA, with a real token of example.com's AS: iss and azp hold for example.com,
        // which is not a recipient domain of m1.
        const comMta = await MtaClient.connect(fed.auth.domains['example.com']!, http);
        const own = await fetchToken(m1, { mta: comMta });
        await expectRefused(
          await postFetch({
            token: own.token,
            key: own.key,
            body: { envelope: m1.envelope, content_id: photo.contentId, domain: 'example.com' },
          }),
          403,
          'access_denied',
          /recipient/,
        );
      });

      it('PROTOCOL §6.3: content_id must be referenced by the message (404)', async () => {
        // Held by example.com (Alice uploaded it), but not a part of m1.
        const unrelated = await upload(alice, randomBytes(1000), 'application/octet-stream');
        await expectRefused(
          await postFetch({ body: { envelope: m1.envelope, content_id: unrelated.contentId, domain: 'example.net' } }),
          404,
          'unknown_resource',
        );
        // Not held anywhere either.
        await expectRefused(
          await postFetch({
            body: { envelope: m1.envelope, content_id: contentId('never uploaded'), domain: 'example.net' },
          }),
          404,
          'unknown_resource',
        );
      });

      it('PROTOCOL §6.3: the share must not be revoked (after Alice unsends: 410 withdrawn)', async () => {
        const secret = await upload(alice, randomBytes(2000), 'application/octet-stream');
        const m = await deliverToBob('Oops', [secret]);
        const token = await fetchToken(m);
        const body = { envelope: m.envelope, content_id: secret.contentId, domain: 'example.net' };
        const before = await postFetch({ ...token, body, range: 'bytes=0-0' }); // a range: not a complete fetch
        await before.arrayBuffer();
        expect(before.status).toBe(206);
        const unsent = (await (
          await alice.api(`/messages/${m.sentId}/unsend`, { method: 'POST', json: {} })
        ).json()) as {
          withdrawn: string[];
        };
        expect(unsent.withdrawn).toEqual(['bob@example.net']);
        await expectRefused(await postFetch({ ...token, body }), 410, 'withdrawn');
      });

      it('PROTOCOL §6.3: the share must not be expired (410 share_expired)', async () => {
        // The share window is 7 days and the harness does not configure it: the stored share's expiry is moved
        // into the past in example.com's database, as the passing of the window would.
        const late = await upload(alice, randomBytes(2000), 'application/octet-stream');
        const m = await deliverToBob('Late', [late]);
        const token = await fetchToken(m);
        const body = { envelope: m.envelope, content_id: late.contentId, domain: 'example.net' };
        const before = await postFetch({ ...token, body, range: 'bytes=0-0' });
        await before.arrayBuffer();
        expect(before.status).toBe(206);
        const moved = await com()
          .knex('mail_shares')
          .where({ message_id: m.messageId })
          .update({ expires_at: Date.now() - 60_000 });
        expect(moved).toBe(1);
        await expectRefused(await postFetch({ ...token, body }), 410, 'share_expired');
      });
    });
  });

  describe("the receiving mailbox's fetcher", () => {
    it("PROTOCOL §6.5: once resumed, the fetcher fetches m1 and Bob's resources become held", async () => {
      net().fetcher.resume();
      await net().fetcher.poll();
      const m = await allHeld(bob, m1.inBob.id);
      expect(m.resources.map((r) => r.status)).toEqual(['held', 'held']);
      const got = Buffer.from(await (await bob.api(`/resources/${photo.contentId.slice(1, -1)}`)).arrayBuffer());
      expect(got.equals(photo.bytes)).toBe(true);
      expect(await (await bob.api(`/resources/${text.contentId.slice(1, -1)}`)).text()).toBe(text.bytes.toString());
      // Every queued fetch has run (the withdrawn and expired ones were refused for good).
      await until('no fetch pending at example.net', async () =>
        ((await net().jobs.depth()).fetch ?? 0) === 0 ? true : undefined,
      );
    });

    it('PROTOCOL §6.5: a Content-ID referenced by two messages, to Bob and to Carol, is fetched once', async () => {
      net().fetcher.pause();
      const shared = await upload(alice, randomBytes(30_000), 'image/jpeg');
      const first = await deliverToBob('Shared 1', [shared]);
      const second = await sendMessage(alice, {
        to: ['bob@example.net', 'carol@example.net'],
        subject: 'Shared 2',
        resources: [shared],
      });
      const secondForBob = await received(bob, second.messageId);
      const secondForCarol = await received(carol, second.messageId);
      expect(secondForCarol.resources).toMatchObject([{ contentId: shared.contentId, status: 'pending' }]);
      const job = await net().jobs.find<FetchJob>('fetch', shared.contentId);
      expect(job).toMatchObject({ status: 'pending', attempts: 0 });

      const served = await fetchRequestsServed(http, com().url);
      net().fetcher.resume();
      await net().fetcher.poll();
      await allHeld(bob, first.inBob.id);
      await allHeld(bob, secondForBob.id);
      await allHeld(carol, secondForCarol.id);
      expect(await fetchRequestsServed(http, com().url)).toBe(served + 1);
      expect(await net().jobs.find('fetch', shared.contentId)).toMatchObject({ status: 'done', attempts: 1 });
      const got = Buffer.from(await (await carol.api(`/resources/${shared.contentId.slice(1, -1)}`)).arrayBuffer());
      expect(got.equals(shared.bytes)).toBe(true);
    });

    it('PROTOCOL §6.5: a Content-ID the mailbox already holds is never fetched again', async () => {
      const served = await fetchRequestsServed(http, com().url);
      // The photo of m1 is held by example.net now; Carol is sent it in a new message.
      const sent = await sendMessage(alice, { to: ['carol@example.net'], subject: 'Again', resources: [photo] });
      const got = await received(carol, sent.messageId);
      expect(got.resources).toMatchObject([{ contentId: photo.contentId, status: 'held' }]);
      await net().fetcher.poll();
      expect(await fetchRequestsServed(http, com().url)).toBe(served);
      const bytes = Buffer.from(await (await carol.api(`/resources/${photo.contentId.slice(1, -1)}`)).arrayBuffer());
      expect(bytes.equals(photo.bytes)).toBe(true);
      expect((await readMessage(carol, got.id)).resources[0]!.status).toBe('held');
    });
  });
});

/**
 * The fetcher against an origin that misbehaves: a tiny HTTP server plays example.com's fetch endpoint, the AS
 * is a stub that hands out a token, and the fetcher works on its own queue, blob store and database.
 */
describe.each(testDatabases())('the fetcher against a misbehaving origin ($name)', (database) => {
  const clock = testClock(Date.now());
  let db: MailboxTestDatabase;
  let blobDir: string;
  let blobs: DiskBlobStore;
  let jobs: JobQueue;
  let messages: MessageStore;
  let accounts: AccountStore;
  let http: HttpClient;
  let fetcher: Fetcher;
  let server: RunningServer;
  /** What the fake origin answers; every request it saw. */
  let answer: (req: IncomingMessage, res: ServerResponse) => void;
  const seen: { range: string | undefined; authorization: string | undefined; dpop: boolean; body: string }[] = [];
  const issued = () =>
    Promise.resolve({ token: 'a-token-from-the-stub-as', issuedTokenType: 'access_token', expiresIn: 300 });
  /** What this domain's AS answers the fetch exchange. */
  let exchange: () => Promise<{ token: string; issuedTokenType: string; expiresIn: number }> = issued;

  const envelope: Block[] = [
    { 'jwt-assertion': 'eyJhbGciOiJFUzI1NiJ9.e30.c2lnbmF0dXJl' },
    {
      headers: [
        { From: 'alice@example.com' },
        { To: 'bob@example.net' },
        { Subject: 'Wrong bytes' },
        { 'Message-ID': '<wrong-bytes@example.com>' },
      ],
    },
  ];

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    blobDir = await mkdtemp(join(tmpdir(), 'federizer-fetcher-'));
    blobs = new DiskBlobStore(blobDir);
    jobs = new JobQueue(db.knex, { now: clock.now });
    messages = new MessageStore(db.knex, { now: clock.now });
    accounts = new AccountStore(db.knex, { now: clock.now });
    http = testHttp();
    server = await listen((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (chunk: string) => (body += chunk));
      req.on('end', () => {
        seen.push({
          range: req.headers.range,
          authorization: req.headers.authorization,
          dpop: typeof req.headers.dpop === 'string',
          body,
        });
        answer(req, res);
      });
    });
    const metadata: MailboxMetadata = {
      domain: 'example.com',
      authorization_server: 'http://as.example-com.localhost',
      mta_client_id: 'mta.example.com',
      resource: `${server.url}/api/v1`,
      transfer_endpoint: `${server.url}/federation/v1/transfer`,
      fetch_endpoint: `${server.url}/federation/v1/fetch`,
      api: `${server.url}/api/v1`,
      webmail: `${server.url}/`,
      max_resource_size: 5 * 1024 ** 3,
    };
    const as = { fetch: () => exchange() } as unknown as AsClient;
    fetcher = new Fetcher({
      domain: 'example.net',
      jobs,
      blobs,
      messages,
      as,
      mailboxOf: (domain) =>
        domain === 'example.com' ? Promise.resolve(metadata) : Promise.reject(new Error(`no ${domain}`)),
      http,
      logger: silentLogger(),
      now: clock.now,
      maxResourceSize: 5 * 1024 ** 3,
    });
  });
  afterAll(async () => {
    await fetcher?.stop();
    await server?.close(0);
    await http?.close();
    await db?.destroy();
    if (blobDir !== undefined) await rm(blobDir, { recursive: true, force: true });
  });

  async function queue(bytes: Buffer): Promise<FetchJob> {
    const job: FetchJob = {
      messageId: '<wrong-bytes@example.com>',
      envelope,
      contentId: contentId(bytes),
      size: bytes.length,
    };
    await jobs.enqueue('fetch', job.contentId, 'example.com', job);
    return job;
  }

  it('PROTOCOL §6.5: a fetched resource whose digest does not match is rejected, retried, never published', async () => {
    const right = randomBytes(5000);
    const wrong = randomBytes(5000); // the declared size, other bytes
    const job = await queue(right);
    seen.length = 0;
    answer = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(wrong.length) });
      res.end(wrong);
    };
    await fetcher.poll();
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ authorization: 'DPoP a-token-from-the-stub-as', dpop: true, range: undefined });
    expect(JSON.parse(seen[0]!.body)).toEqual({ envelope, content_id: job.contentId, domain: 'example.net' });
    const after = await jobs.find('fetch', job.contentId);
    expect(after).toMatchObject({ status: 'pending', attempts: 1 });
    expect(after!.lastError).toMatch(/do not hash|digest/i);
    expect(after!.nextAttemptAt).toBeGreaterThan(clock.now());
    expect(await blobs.has(job.contentId)).toBe(false);

    // The retry, once due: the wrong bytes were discarded, so it starts over (no Range) and publishes the right ones.
    clock.advance(after!.nextAttemptAt - clock.now() + 1);
    answer = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(right.length) });
      res.end(right);
    };
    await fetcher.poll();
    expect(seen).toHaveLength(2);
    expect(seen[1]!.range).toBeUndefined();
    expect(await jobs.find('fetch', job.contentId)).toMatchObject({ status: 'done', attempts: 2 });
    expect(await blobs.has(job.contentId)).toBe(true);
  });

  it('PROTOCOL §6.5: the fetcher stops reading once more bytes arrive than the declared size', async () => {
    const declared = randomBytes(1000);
    const job = await queue(declared);
    seen.length = 0;
    // 32 MiB where 1000 bytes were declared: an origin that never stops sending.
    const chunk = randomBytes(64 * 1024);
    const total = 512;
    let written = 0;
    let completed = false;
    answer = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.on('finish', () => (completed = true));
      const pump = () => {
        while (written < total) {
          written++;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
    };
    await fetcher.poll();
    expect(seen).toHaveLength(1);
    expect(await blobs.has(job.contentId)).toBe(false);
    const after = await jobs.find('fetch', job.contentId);
    expect(after!.status).not.toBe('done');
    // Had the fetcher read on to the end of the answer, the origin would have finished sending all of it.
    expect({ completed, chunksWritten: written }).toMatchObject({ completed: false });
  });

  const partials = async () => readdir(join(blobDir, 'partial')).catch(() => [] as string[]);

  it('an AS that cannot verify the assertion now (503, 400 temporarily_unavailable, no answer) is retried, not failed', async () => {
    for (const failure of [
      new ExchangeFailure('temporarily_unavailable', 'cannot discover the issuer of example.com', 503),
      new ExchangeFailure('temporarily_unavailable', 'cannot discover the issuer of example.com', 400),
      new ExchangeFailure('some_new_error', 'a code this client does not know', 400),
      new ExchangeFailure('temporarily_unavailable', 'the AS did not answer: fetch failed', 0, undefined, {
        cause: Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' }),
      }),
    ]) {
      const bytes = randomBytes(100);
      const job = await queue(bytes);
      exchange = () => Promise.reject(failure);
      seen.length = 0;
      await fetcher.poll();
      expect(seen).toHaveLength(0);
      const after = await jobs.find('fetch', job.contentId);
      expect(after, failure.message).toMatchObject({ status: 'pending', attempts: 1 });
      expect(after!.lastError).toContain(failure.error);
    }
    exchange = issued;
  });

  it('only an OAuth error defined as final (RFC 6749 §5.2: invalid_grant) fails the fetch, leaving no partial file', async () => {
    const bytes = randomBytes(100);
    const job = await queue(bytes);
    exchange = () => Promise.reject(new ExchangeFailure('invalid_grant', 'subject_token: expired', 400));
    try {
      await fetcher.poll();
    } finally {
      exchange = issued;
    }
    const after = await jobs.find('fetch', job.contentId);
    expect(after).toMatchObject({ status: 'failed' });
    expect(after!.lastError).toMatch(/invalid_grant/);
    expect(await partials()).not.toContain(job.contentId.slice(1, -1));
  });

  it('an origin refusing the fetch for good (403) leaves no partial file behind', async () => {
    const bytes = randomBytes(100);
    const job = await queue(bytes);
    answer = (_req, res) => {
      res.writeHead(403, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'access_denied', error_description: 'not a recipient domain' }));
    };
    await fetcher.poll();
    expect(await jobs.find('fetch', job.contentId)).toMatchObject({ status: 'failed' });
    expect(await partials()).not.toContain(job.contentId.slice(1, -1));
  });

  /** A received message referencing the bytes, waiting for their fetch, as the transfer endpoint stores it. */
  async function receivedWaiting(address: string, bytes: Buffer, size = bytes.length): Promise<string> {
    const { id } = await messages.createReceived({
      address,
      messageId: `<${randomBytes(6).toString('hex')}@example.com>`,
      threadId: '<t@example.com>',
      envelope,
      body: { parts: [] },
      date: clock.now(),
      transferEht: 'eht',
      resources: [{ contentId: contentId(bytes), size, status: 'pending' }],
    });
    return id;
  }

  const statusOf = async (id: string) => (await messages.resourcesOf(id))[0]?.status;

  it('a message stored after the fetch of its bytes completed is held once the fetch is queued again, without a request', async () => {
    const bytes = randomBytes(300);
    const bob = await receivedWaiting('bob@example.net', bytes);
    const job = await queue(bytes);
    answer = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length) });
      res.end(bytes);
    };
    seen.length = 0;
    await fetcher.poll();
    expect(seen).toHaveLength(1);
    expect(await statusOf(bob)).toBe('held');
    expect(await jobs.find('fetch', job.contentId)).toMatchObject({ status: 'done' });
    // Carol's copy was stored after that fetch read the references (a transfer racing its end): it missed her.
    const carol = await receivedWaiting('carol@example.net', bytes);
    expect(await statusOf(carol)).toBe('pending');
    // What the transfer endpoint does once her copy is stored: the fetch was done, so it is queued again.
    expect(await jobs.requeue('fetch', job.contentId, 'example.com', job)).toBe('requeued');
    await fetcher.poll();
    expect(seen).toHaveLength(1); // the bytes are held: no request to the origin
    expect(await statusOf(carol)).toBe('held');
    expect(await accounts.resource('carol@example.net', job.contentId)).toMatchObject({ size: 300, refs: 1 });
    expect(await jobs.find('fetch', job.contentId)).toMatchObject({ status: 'done' });
  });

  it('a fetch queued again for bytes held whose size its message misstates fails, and the bytes stay held', async () => {
    const bytes = randomBytes(200);
    const bob = await receivedWaiting('bob@example.net', bytes);
    const job = await queue(bytes);
    answer = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length) });
      res.end(bytes);
    };
    await fetcher.poll();
    expect(await statusOf(bob)).toBe('held');
    // PROTOCOL §6.5: bytes are held only with the size their message declares; this one declares 201.
    const carol = await receivedWaiting('carol@example.net', bytes, 201);
    expect(await jobs.requeue('fetch', job.contentId, 'example.com', { ...job, size: 201 })).toBe('requeued');
    seen.length = 0;
    await fetcher.poll();
    expect(seen).toHaveLength(0);
    const after = await jobs.find('fetch', job.contentId);
    expect(after).toMatchObject({ status: 'failed' });
    expect(after!.lastError).toMatch(/declares 201 bytes/);
    expect(await statusOf(carol)).toBe('failed');
    expect(await statusOf(bob)).toBe('held');
    expect(await blobs.has(job.contentId)).toBe(true);
  });
});

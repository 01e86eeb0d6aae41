/**
 * The origin's fetch endpoint (PROTOCOL §6.3, §7.5) over real HTTP between three real domains: Alice of
 * example.com writes to Bob of example.net, who forwards to bobby@example.org. The test drives the fetches
 * itself with real access tokens from the fetching domains' ASes.
 *
 * - RFC 7519 §2: a DPoP proof whose `iat` has a fraction is accepted; docs/protocol.md §10.3: so is a `jti`
 *   of kilobytes (its record is a hash).
 * - docs/protocol.md §6.3: only a broken rule refuses. The replay store's database failing answers 503
 *   `temporarily_unavailable` with Retry-After, which the fetcher retries, never a final 401.
 * - PROTOCOL §7.5 "at fetch the origin assertion must be unexpired", with the 30 s tolerance of §7.5: a direct
 *   copy `[A1, H0]` and a forwarded one `[A2, H1, A1, H0]` whose A1 expired both answer 410 `share_expired`,
 *   even when the stored share's window is longer than A1's lifetime.
 *
 * The mailboxes' share window (30 days) outlasts the AS's assertions (7 days), so the share alone never
 * decides. example.com's mailbox runs on a clock the last cases move past A1's `exp`.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HttpClient } from '@federizer/common';
import {
  createDpopProof,
  decodeJwt,
  dpopKeyOf,
  type Block,
  type CreateDpopProofOptions,
  type DpopKey,
  type MailboxMetadata,
} from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { MtaClient, fetchParams, testHttp } from '../../auth/tests/exchange-client.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';
import { received, resign, sendMessage, until, upload, type Uploaded } from './fetch-helpers.js';
import { documented } from './openapi-check.js';

const DAY = 24 * 3600;

interface Issued {
  readonly token: string;
  readonly key: DpopKey;
}

interface ErrorBody {
  error: string;
  error_description: string;
}

describe.each(testDatabases())('fetch: proofs, internal failures, the origin assertion ($name)', (database) => {
  let fed: MailFederation;
  let http: HttpClient;
  let alice: UserClient;
  let bob: UserClient;
  let bobby: UserClient;
  let origin: MailboxMetadata;
  let netMta: MtaClient;
  let orgMta: MtaClient;
  let photo: Uploaded;
  /** Alice's message to Bob, and the envelope his mailbox stored (without its receive block). */
  let direct: { messageId: string; envelope: Block[] };
  /** The same message forwarded by Bob: bobby's envelope [A2, H1, A1, H0]. */
  let forwarded: { messageId: string; envelope: Block[] };
  /** What example.com's mailbox takes for now, ahead of the wall clock by this many ms. */
  let offsetMs = 0;

  const com = () => fed.domains['example.com']!.mailbox;
  const originSeconds = () => Math.floor((Date.now() + offsetMs) / 1000);
  const a1Exp = () => decodeJwt((direct.envelope[0] as { 'jwt-assertion': string })['jwt-assertion']).payload.exp!;

  /** A real fetch access token of the fetching domain's AS for the newest assertion of the envelope. */
  async function fetchToken(mta: MtaClient, envelope: readonly Block[], senderDomain: string): Promise<Issued> {
    const assertion = (envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    const messageId = direct.messageId;
    const exchanged = await mta.exchange(fetchParams(assertion, origin.resource, messageId, senderDomain));
    return { token: exchanged.token, key: await dpopKeyOf(exchanged.dpopKey) };
  }

  /**
   * POST to example.com's fetch endpoint, the photo of the envelope for `domain`, with a fresh proof made on
   * example.com's clock (and the token's exp moved with that clock, signed again with its AS's real key).
   */
  async function postFetch(
    issued: Issued,
    envelope: readonly Block[],
    domain: string,
    proof: Partial<CreateDpopProofOptions> = {},
  ): Promise<Response> {
    const now = originSeconds();
    const token =
      offsetMs === 0
        ? issued.token
        : resign(issued.token, fed.auth.domains[domain]!.as.keys.keys, { claims: { iat: now, exp: now + 300 } });
    const dpop = await createDpopProof(issued.key, {
      htm: 'POST',
      htu: origin.fetch_endpoint,
      accessToken: token,
      now,
      ...proof,
    });
    const res = await http.fetch(origin.fetch_endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `DPoP ${token}`, dpop },
      body: JSON.stringify({ envelope, content_id: photo.contentId, domain }),
    });
    return documented('POST', origin.fetch_endpoint, res);
  }

  async function expectBytes(res: Response): Promise<void> {
    const body = Buffer.from(await res.arrayBuffer());
    expect(res.status, body.toString('utf8').slice(0, 300)).toBe(200);
    expect(body.equals(photo.bytes)).toBe(true);
  }

  async function expectError(res: Response, status: number, error: string): Promise<ErrorBody> {
    const text = await res.text();
    expect(res.status, text).toBe(status);
    const body = JSON.parse(text) as ErrorBody;
    expect(body.error, text).toBe(error);
    return body;
  }

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net', 'example.org'], {
      database: database.create,
      config: { shareWindowSeconds: 30 * DAY },
    });
    http = testHttp();
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password');
    await fed.auth.domains['example.org']!.createUser('bobby@example.org', 'bobby password');
    [alice, bob, bobby] = await Promise.all([
      fed.user('alice@example.com', 'alice password'),
      fed.user('bob@example.net', 'bob password'),
      fed.user('bobby@example.org', 'bobby password'),
    ]);
    origin = (await (
      await http.fetch(`${fed.domains['example.com']!.publicUrl}/.well-known/federizer`)
    ).json()) as MailboxMetadata;
    netMta = await MtaClient.connect(fed.auth.domains['example.net']!, http);
    orgMta = await MtaClient.connect(fed.auth.domains['example.org']!, http);

    photo = await upload(alice, randomBytes(20_000), 'image/png');
    const sent = await sendMessage(alice, { to: ['bob@example.net'], subject: 'Forward me', resources: [photo] });
    const inBob = await received(bob, sent.messageId);
    direct = { messageId: sent.messageId, envelope: inBob.envelope };
    const res = await bob.api(`/messages/${inBob.id}/forward`, { method: 'POST', json: { to: 'bobby@example.org' } });
    expect(res.status, await res.clone().text()).toBe(202);
    const inBobby = await received(bobby, sent.messageId);
    forwarded = { messageId: sent.messageId, envelope: inBobby.envelope };
    expect(direct.envelope).toHaveLength(2);
    expect(forwarded.envelope).toHaveLength(4);
  });
  afterAll(async () => {
    await http?.close();
    await fed?.close();
  });

  it('RFC 7519 §2, PROTOCOL §6.3: a DPoP proof whose iat has a fraction is accepted (200), and only once', async () => {
    const issued = await fetchToken(netMta, direct.envelope, 'example.com');
    const proof = { now: Date.now() / 1000 - 0.5, jti: `fractional-${randomBytes(8).toString('hex')}` };
    await expectBytes(await postFetch(issued, direct.envelope, 'example.net', proof));
    await expectError(await postFetch(issued, direct.envelope, 'example.net', proof), 401, 'invalid_dpop_proof');
  });

  it('docs/protocol.md §10.3: a DPoP proof whose jti has 4 000 characters is accepted (200)', async () => {
    const issued = await fetchToken(netMta, direct.envelope, 'example.com');
    await expectBytes(await postFetch(issued, direct.envelope, 'example.net', { jti: 'j'.repeat(4000) }));
  });

  it('PROTOCOL §6.3: the replay store’s database failing answers 503 temporarily_unavailable with Retry-After, not 401', async () => {
    const issued = await fetchToken(netMta, direct.envelope, 'example.com');
    // A real database failure: the table the replay store writes to is gone for a moment.
    await com().knex.schema.renameTable('mail_replay', 'mail_replay_away');
    try {
      const res = await postFetch(issued, direct.envelope, 'example.net');
      const body = await expectError(res, 503, 'temporarily_unavailable');
      expect(body.error_description).toMatch(/try again later/);
      expect(res.headers.get('retry-after')).toBe('30');
      expect(res.headers.get('cache-control')).toBe('no-store');
      expect(res.headers.get('www-authenticate')).toBeNull();
    } finally {
      await com().knex.schema.renameTable('mail_replay_away', 'mail_replay');
    }
    // The fetcher's retry, once the database is back, gets the bytes.
    await expectBytes(await postFetch(issued, direct.envelope, 'example.net'));
  });

  it('a share ends when its A1 expires: the sent copy is stored with expires_at = A1 exp, not the longer window', async () => {
    const row = (await com().knex('mail_shares').first('expires_at').where({ message_id: direct.messageId })) as {
      expires_at: unknown;
    };
    expect(Number(row.expires_at)).toBe(a1Exp() * 1000);
  });

  describe('PROTOCOL §7.5: at fetch the origin assertion A1 must be unexpired (30 s tolerance)', () => {
    let netToken: Issued;
    let orgToken: Issued;

    beforeAll(async () => {
      netToken = await fetchToken(netMta, direct.envelope, 'example.com');
      orgToken = await fetchToken(orgMta, forwarded.envelope, 'example.net');
      // The share's window outlasts A1 (a share stored before its end followed A1's exp, or by a mailbox whose
      // window is longer than the AS's assertions): only A1's exp can end the fetch.
      await com()
        .knex('mail_shares')
        .where({ message_id: direct.messageId })
        .update({ expires_at: Date.now() + 60 * DAY * 1000 });
      await fed.stop('example.com');
      await fed.restart('example.com', { now: () => Date.now() + offsetMs });
      await until('example.com answers', async () =>
        (await http.fetch(`${fed.domains['example.com']!.publicUrl}/healthz`)).ok ? true : undefined,
      );
    });

    /** example.com's clock at A1's exp plus `seconds`. */
    const at = (seconds: number) => {
      offsetMs = (a1Exp() + seconds) * 1000 - Date.now();
    };

    it('within the tolerance (exp + 25 s), the direct and the forwarded copy are still served', async () => {
      at(25);
      await expectBytes(await postFetch(netToken, direct.envelope, 'example.net'));
      await expectBytes(await postFetch(orgToken, forwarded.envelope, 'example.org'));
    });

    it('past it (exp + 35 s), a direct copy [A1, H0] answers 410 share_expired', async () => {
      at(35);
      const body = await expectError(await postFetch(netToken, direct.envelope, 'example.net'), 410, 'share_expired');
      expect(body.error_description).toMatch(/origin assertion/);
    });

    it('past it (exp + 35 s), a forwarded copy [A2, H1, A1, H0] answers the same 410 share_expired', async () => {
      at(35);
      const body = await expectError(
        await postFetch(orgToken, forwarded.envelope, 'example.org'),
        410,
        'share_expired',
      );
      expect(body.error_description).toMatch(/origin assertion/);
    });
  });
});

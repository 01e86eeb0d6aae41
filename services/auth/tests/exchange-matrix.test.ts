/**
 * The negative matrix of the token exchanges (PROTOCOL.md §4.5, §6.1, §7, §10; docs/protocol.md §4.5, §6.1,
 * §7.2, §10.3): every case is a request a real client (openid-client, `private_key_jwt`, DPoP) sends, built
 * from valid material with exactly one thing wrong, and must be refused with the right OAuth error code and
 * an `error_description` that says why. Every refusal is also counted by
 * `federizer_auth_token_exchange_failures_total{error=...}`.
 *
 * Time is never waited for: the federation's clock is `Date.now() + offset`, and a test that needs a token
 * to have expired moves the offset (and the DPoP proof's `iat` with it).
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignJWT } from 'jose';
import * as oidc from 'openid-client';
import type { HttpClient } from '@federizer/common';
import {
  assertionDigest,
  contentId,
  decodeJwt,
  externalContentType,
  prepareForward,
  prepareSend,
  receiveBlock,
  validateMessage,
  withAssertion,
  type Header,
  type Message,
  type OutgoingCopy,
} from '@federizer/protocol';
import type { AuthService } from '../src/index.js';
import { testDatabases } from '../../common/src/testing/databases.js';
import { freePort, startFederation, type Federation, type TestDomain } from './harness.js';
import {
  ExchangeRefused,
  MtaClient,
  TOKEN_TYPE,
  fetchParams,
  forwardParams,
  metricValue,
  publicJwkOf,
  restartAuthServer,
  sendParams,
  signIn,
  testHttp,
  type ExchangeOptions,
  type Refusal,
  type UserSession,
} from './exchange-client.js';

const PASSWORD = 'correct horse battery staple';
const FAILURES = 'federizer_auth_token_exchange_failures_total';

function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | undefined;
  return () => (result ??= fn());
}

let serial = 0;

/** A draft of `from` (whose domain names the Message-ID) to `to`, made into its To/Cc copy (§4.2–4.3). */
function copyOf(from: string, to: string): OutgoingCopy {
  const domain = from.slice(from.lastIndexOf('@') + 1).replace(/>$/, '');
  const bytes = `message ${++serial}`;
  const draft: Message = validateMessage({
    envelope: [
      {
        headers: [
          { 'Message-ID': `<matrix-${serial}-${Date.now()}@${domain}>` },
          { From: from },
          { To: to },
          { Subject: `case ${serial}` },
        ],
      },
    ],
    body: {
      parts: [
        {
          headers: [
            { 'Content-Disposition': 'inline' },
            { 'Content-ID': contentId(bytes) },
            { 'Content-Type': externalContentType(Buffer.byteLength(bytes), 'text/plain') },
          ],
        },
      ],
    },
  });
  return prepareSend(draft, { date: new Date() })[0]!;
}

/** The copy's exchange headers with one header's value replaced. */
function withValue(headers: readonly Header[], name: string, value: string): Header[] {
  return headers.map((h) => (Object.hasOwn(h, name) ? { [name]: value } : h));
}

/** What the receiving mailbox stores (§5.5): its receive block over the envelope as it arrived. */
function stored(copy: OutgoingCopy, assertion: string, receiverDomain: string): Message {
  const messageId = copy.exchangeHeaders[0]!['Message-ID'] as string;
  const senderDomain = messageId.slice(messageId.indexOf('@') + 1, -1);
  return {
    envelope: [
      receiveBlock({ messageId, assertion, senderDomain, receiverDomain, date: new Date() }),
      ...withAssertion(copy.message, assertion).envelope,
    ],
    body: copy.message.body,
  };
}

describe.each(testDatabases())('the token exchange refuses, each time for exactly one reason ($name)', ({ create }) => {
  const clock = { offsetMs: 0 };
  const now = () => Date.now() + clock.offsetMs;
  let fed: Federation;
  let http: HttpClient;
  let com: TestDomain;
  let net: TestDomain;
  let org: TestDomain;
  let comMta: MtaClient;
  let netMta: MtaClient;
  let orgMta: MtaClient;
  let restarted: AuthService | undefined;

  beforeAll(async () => {
    fed = await startFederation(['example.com', 'example.net', 'example.org'], { database: create, now });
    [com, net, org] = ['example.com', 'example.net', 'example.org'].map((name) => fed.domains[name]!) as [
      TestDomain,
      TestDomain,
      TestDomain,
    ];
    http = testHttp();
    await com.createUser('alice@example.com', PASSWORD, { displayName: 'Alice' });
    await com.createUser('carol@example.com', PASSWORD, { sendQuotaPerDay: 1 });
    await com.createUser('dave@example.com', PASSWORD);
    await com.createUser('erin@example.com', PASSWORD, { sendQuotaPerDay: 1 });
    await com.createUser('eve@example.com', PASSWORD);
    await net.createUser('bob@example.net', PASSWORD);
    await net.createUser('frank@example.net', PASSWORD);
    await net.createUser('grace@example.net', PASSWORD);
    for (const [address, policy] of [
      ['bob@example.net', 'any'],
      ['frank@example.net', 'none'],
      ['grace@example.net', 'manual'],
    ] as const) {
      const res = await net.admin(`/users/${encodeURIComponent(address)}`, {
        method: 'PATCH',
        body: JSON.stringify({ forwardingPolicy: policy }),
      });
      expect(res.status).toBe(200);
    }
    [comMta, netMta, orgMta] = (await Promise.all([com, net, org].map((d) => MtaClient.connect(d, http)))) as [
      MtaClient,
      MtaClient,
      MtaClient,
    ];
  });

  afterAll(async () => {
    await restarted?.close();
    await http?.close();
    await fed?.close();
  });

  const alice = once(() => signIn(com, http, 'alice@example.com', PASSWORD));

  /** A valid send of alice's copy to three example.net users: the material most cases start from. */
  const aliceSent = once(async () => {
    const copy = copyOf('Alice <alice@example.com>', 'bob@example.net, frank@example.net, grace@example.net');
    const a1 = await comMta.send((await alice()).accessToken, copy.exchangeHeaders);
    return { copy, a1: a1.token };
  });

  /** An assertion issued by example.net's AS: bob sends to alice. */
  const bobSent = once(async () => {
    const bob = await signIn(net, http, 'bob@example.net', PASSWORD);
    const copy = copyOf('bob@example.net', 'alice@example.com');
    const a = await netMta.send(bob.accessToken, copy.exchangeHeaders);
    return { copy, assertion: a.token, messageId: copy.exchangeHeaders[0]!['Message-ID'] as string };
  });

  /** Sends a request that must be refused; checks the answer and that the failure metric counted it. */
  async function expectRefused(
    mta: MtaClient,
    params: Record<string, string>,
    expected: { status?: number; error: string; description: RegExp },
    options: ExchangeOptions = {},
  ): Promise<Refusal> {
    const before = await metricValue(mta.domain, FAILURES, { error: expected.error });
    const refusal = await mta.refused(params, options);
    expect({ status: refusal.status, error: refusal.error, error_description: refusal.error_description }).toEqual({
      status: expected.status ?? 400,
      error: expected.error,
      error_description: expect.stringMatching(expected.description) as unknown as string,
    });
    expect(await metricValue(mta.domain, FAILURES, { error: expected.error })).toBe(before + 1);
    return refusal;
  }

  // -------------------------------------------------------------------------------------------------
  // The send exchange (§4.5)

  describe('send', () => {
    it('PROTOCOL §4.5: From must be the user (RFC 8693 §2.2.2: invalid_request)', async () => {
      const { copy } = await aliceSent();
      const headers = withValue(copy.exchangeHeaders, 'From', 'Mallory <mallory@example.com>');
      await expectRefused(comMta, sendParams((await alice()).accessToken, headers), {
        error: 'invalid_request',
        description: /From mallory@example\.com is not the address of the signed-in user alice@example\.com/,
      });
    });

    it('PROTOCOL §4.5: a From in another letter case is still the user (§2.6 comparison)', async () => {
      const { copy } = await aliceSent();
      const headers = withValue(copy.exchangeHeaders, 'From', '"Alice" <Alice@EXAMPLE.com>');
      const issued = await comMta.send((await alice()).accessToken, headers);
      expect(issued.trace.status).toBe(200);
    });

    it('PROTOCOL §4.5: the Message-ID must be of the AS’s domain (invalid_request)', async () => {
      const { copy } = await aliceSent();
      const headers = withValue(copy.exchangeHeaders, 'Message-ID', '<matrix-foreign@example.net>');
      await expectRefused(comMta, sendParams((await alice()).accessToken, headers), {
        error: 'invalid_request',
        description: /Message-ID domain example\.net is not example\.com/,
      });
    });

    it('PROTOCOL §4.5 (docs §4.5 check 4): the Message-ID must have the msg-id form of §2.3 (invalid_request)', async () => {
      const { copy } = await aliceSent();
      // `a..b` is not a dot-atom-text: every receiver refuses such a block (invalid_header), so the AS must not sign it.
      const headers = withValue(copy.exchangeHeaders, 'Message-ID', '<matrix..dots@example.com>');
      await expectRefused(comMta, sendParams((await alice()).accessToken, headers), {
        error: 'invalid_request',
        description: /Message-ID/,
      });
    });

    it('PROTOCOL §4.5: headers in the wrong order (invalid_request)', async () => {
      const { copy } = await aliceSent();
      const [id, from, ...digests] = copy.exchangeHeaders;
      await expectRefused(comMta, sendParams((await alice()).accessToken, [from!, id!, ...digests]), {
        error: 'invalid_request',
        description:
          /headers must name exactly \["Message-ID","From","Recipients-Digest","Body-Digest"\] in that order, not \["From","Message-ID"/,
      });
    });

    it('PROTOCOL §4.5: headers missing one (invalid_request)', async () => {
      const { copy } = await aliceSent();
      const headers = copy.exchangeHeaders.filter((h) => !Object.hasOwn(h, 'Body-Digest'));
      await expectRefused(comMta, sendParams((await alice()).accessToken, headers), {
        error: 'invalid_request',
        description: /headers must name exactly .* not \["Message-ID","From","Recipients-Digest"\]/,
      });
    });

    it('PROTOCOL §4.5: headers with an extra one (invalid_request)', async () => {
      const { copy } = await aliceSent();
      const headers = [...copy.exchangeHeaders, { Subject: 'one more' }];
      await expectRefused(comMta, sendParams((await alice()).accessToken, headers), {
        error: 'invalid_request',
        description: /headers must name exactly .* not \[.*"Body-Digest","Subject"\]/,
      });
    });

    it('PROTOCOL §4.5: without headers (invalid_request)', async () => {
      const { copy } = await aliceSent();
      const params = sendParams((await alice()).accessToken, copy.exchangeHeaders);
      delete params.headers;
      await expectRefused(comMta, params, { error: 'invalid_request', description: /headers is required/ });
    });

    it('PROTOCOL §4.5 (docs §4.5 check 4): headers with a duplicate member name (invalid_request)', async () => {
      const { copy } = await aliceSent();
      // JSON parsers disagree on duplicates (first or last wins): the AS must refuse them, not pick one.
      const id = copy.exchangeHeaders[0]!['Message-ID'] as string;
      const rest = JSON.stringify(copy.exchangeHeaders.slice(1)).slice(1);
      const params = sendParams((await alice()).accessToken, copy.exchangeHeaders);
      params.headers = `[{"Message-ID":"<matrix-other@example.net>","Message-ID":${JSON.stringify(id)}},${rest}`;
      expect(() => JSON.parse(params.headers!) as unknown).not.toThrow();
      await expectRefused(comMta, params, { error: 'invalid_request', description: /duplicate|Message-ID/ });
    });

    it('PROTOCOL §4.5: a scope other than internet_mail (invalid_scope)', async () => {
      const { copy } = await aliceSent();
      const params = { ...sendParams((await alice()).accessToken, copy.exchangeHeaders), scope: 'mailbox' };
      await expectRefused(comMta, params, {
        error: 'invalid_scope',
        description: /scope must be internet_mail, not "mailbox"/,
      });
    });

    it('RFC 8693 §2.1: an unsupported pair of token types (invalid_request)', async () => {
      const { copy } = await aliceSent();
      const params = {
        ...sendParams((await alice()).accessToken, copy.exchangeHeaders),
        requested_token_type: TOKEN_TYPE.accessToken,
      };
      await expectRefused(comMta, params, {
        error: 'invalid_request',
        description:
          /no exchange from urn:ietf:params:oauth:token-type:access_token to urn:ietf:params:oauth:token-type:access_token/,
      });
    });

    it('PROTOCOL §4.5: an expired subject token (RFC 8693 §2.2.2: invalid_request)', async () => {
      const session = await signIn(com, http, 'alice@example.com', PASSWORD);
      const { copy } = await aliceSent();
      const { exp } = decodeJwt(session.accessToken).payload as { exp: number };
      expect(exp - decodeJwt(session.accessToken).payload.iat!).toBe(com.config.userAccessTokenSeconds);
      const refusedAt = async (seconds: number) => {
        // The AS's clock moves to `seconds`; the proof's iat moves with it (it must be within 60 s of the AS's now).
        clock.offsetMs = seconds * 1000 - Date.now();
        try {
          await expectRefused(
            comMta,
            sendParams(session.accessToken, copy.exchangeHeaders),
            {
              error: 'invalid_request',
              description: new RegExp(`subject_token: the token expired at ${exp}, now is ${seconds}`),
            },
            { modifyProof: (_h, payload) => void (payload.iat = Math.floor(now() / 1000)) },
          );
        } finally {
          clock.offsetMs = 0;
        }
      };
      await refusedAt(exp + 1);
      // The same token, before it expires, is accepted: expiry was the one reason.
      expect((await comMta.send(session.accessToken, copy.exchangeHeaders)).trace.status).toBe(200);
      // Accepted once, it is still refused from exp on (exp itself is already too late, RFC 7519 §4.1.4).
      await refusedAt(exp);
      expect((await comMta.send(session.accessToken, copy.exchangeHeaders)).trace.status).toBe(200);
    });

    it('PROTOCOL §4.5: a revoked grant — the refresh token revoked (sign-out), then its access token as subject (RFC 8693 §2.2.2: invalid_request)', async () => {
      const dave: UserSession = await signIn(com, http, 'dave@example.com', PASSWORD);
      const copy = copyOf('dave@example.com', 'bob@example.net');
      expect((await comMta.send(dave.accessToken, copy.exchangeHeaders)).trace.status).toBe(200);
      expect(dave.refreshToken).toEqual(expect.any(String));
      await oidc.tokenRevocation(dave.config, dave.refreshToken!, { token_type_hint: 'refresh_token' });
      await expectRefused(comMta, sendParams(dave.accessToken, copy.exchangeHeaders), {
        error: 'invalid_request',
        description: /subject_token: the grant it was issued under was revoked/,
      });
    });

    it('PROTOCOL §4.5: a grant ended by a password reset (admin API) — the access token issued before it is refused as subject', async () => {
      await com.createUser('heidi@example.com', PASSWORD);
      const heidi = await signIn(com, http, 'heidi@example.com', PASSWORD);
      const copy = copyOf('heidi@example.com', 'bob@example.net');
      expect((await comMta.send(heidi.accessToken, copy.exchangeHeaders)).trace.status).toBe(200);
      const reset = await com.admin(`/users/${encodeURIComponent('heidi@example.com')}/password`, {
        method: 'PUT',
        body: JSON.stringify({ password: `${PASSWORD} again` }),
      });
      expect(reset.status).toBe(204);
      await expectRefused(comMta, sendParams(heidi.accessToken, copy.exchangeHeaders), {
        error: 'invalid_request',
        description: /subject_token: the grant it was issued under was revoked/,
      });
    });

    it('PROTOCOL §4.5: the send quota exceeded (429 quota_exceeded with Retry-After)', async () => {
      const carol = await signIn(com, http, 'carol@example.com', PASSWORD);
      const copy = copyOf('carol@example.com', 'bob@example.net');
      expect((await comMta.send(carol.accessToken, copy.exchangeHeaders)).trace.status).toBe(200);
      const refusal = await expectRefused(comMta, sendParams(carol.accessToken, copy.exchangeHeaders), {
        status: 429,
        error: 'quota_exceeded',
        description: /carol@example\.com has used 1 of 1 sends allowed today/,
      });
      const retryAfter = refusal.headers.get('retry-after');
      expect(retryAfter).toMatch(/^\d+$/);
      expect(Number(retryAfter)).toBeGreaterThan(0);
      expect(Number(retryAfter)).toBeLessThanOrEqual(24 * 3600);
    });

    it('PROTOCOL §4.5: a refused send counts nothing against the quota — the one send erin has today still goes through', async () => {
      const erin = await signIn(com, http, 'erin@example.com', PASSWORD);
      const copy = copyOf('erin@example.com', 'bob@example.net');
      await expectRefused(
        comMta,
        sendParams(erin.accessToken, withValue(copy.exchangeHeaders, 'From', 'Mallory <mallory@example.com>')),
        { error: 'invalid_request', description: /From mallory@example\.com is not the address of the signed-in user/ },
      );
      await expectRefused(
        comMta,
        sendParams(erin.accessToken, withValue(copy.exchangeHeaders, 'Message-ID', '<matrix-erin@example.net>')),
        { error: 'invalid_request', description: /Message-ID domain example\.net is not example\.com/ },
      );
      expect((await comMta.send(erin.accessToken, copy.exchangeHeaders)).trace.status).toBe(200);
      await expectRefused(comMta, sendParams(erin.accessToken, copy.exchangeHeaders), {
        status: 429,
        error: 'quota_exceeded',
        description: /erin@example\.com has used 1 of 1 sends allowed today/,
      });
    });

    it('PROTOCOL §4.5: a user disabled after signing in is refused before the request is looked at (RFC 8693 §2.2.2: invalid_request); enabled again, only a new sign-in sends', async () => {
      const eve = await signIn(com, http, 'eve@example.com', PASSWORD);
      const copy = copyOf('eve@example.com', 'bob@example.net');
      const disable = async (disabled: boolean) =>
        expect(
          (await com.admin('/users/eve%40example.com', { method: 'PATCH', body: JSON.stringify({ disabled }) })).status,
        ).toBe(200);
      await disable(true);
      try {
        // The subject is checked first (§4.5 lists it before the headers): a wrong From does not change the answer.
        for (const headers of [copy.exchangeHeaders, withValue(copy.exchangeHeaders, 'From', 'mallory@example.com')]) {
          await expectRefused(comMta, sendParams(eve.accessToken, headers), {
            error: 'invalid_request',
            description: /subject_token: the user eve@example\.com is unknown or disabled/,
          });
        }
      } finally {
        await disable(false);
      }
      // Disabling ended eve's grants (admin API): enabled again, the token of before still cannot send, and
      // the description now names the grant; a new sign-in sends.
      await expectRefused(comMta, sendParams(eve.accessToken, copy.exchangeHeaders), {
        error: 'invalid_request',
        description: /subject_token: the grant it was issued under was revoked/,
      });
      const again = await signIn(com, http, 'eve@example.com', PASSWORD);
      expect((await comMta.send(again.accessToken, copy.exchangeHeaders)).trace.status).toBe(200);
    });

    it('PROTOCOL §4.5 check 1, RFC 6749 §5.2: a client that is not the MTA — the webmail — is not authorized for the grant type (unauthorized_client)', async () => {
      const { copy } = await aliceSent();
      // oidc-provider refuses a grant type the client is not registered for before the exchange runs; its
      // invalid_request is answered as the unauthorized_client RFC 6749 §5.2 names for this case.
      const webmail = await MtaClient.connect(com, http, { clientId: 'webmail', clientAuth: () => oidc.None() });
      await expectRefused(webmail, sendParams((await alice()).accessToken, copy.exchangeHeaders), {
        error: 'unauthorized_client',
        description: /^requested grant type is not allowed for this client$/,
      });
    });
  });

  // -------------------------------------------------------------------------------------------------
  // The MTA's client authentication (private_key_jwt, RFC 7523)

  describe('client assertion', () => {
    /** A private_key_jwt client assertion of example.com's MTA, as openid-client makes one (RFC 7523 §3). */
    async function mtaAssertion(): Promise<string> {
      const seconds = Math.floor(Date.now() / 1000);
      return new SignJWT({ jti: randomUUID() })
        .setProtectedHeader({ alg: 'ES256', kid: com.mtaKey.jwk.kid })
        .setIssuer(com.config.mta.clientId)
        .setSubject(com.config.mta.clientId)
        .setAudience(com.issuer)
        .setIssuedAt(seconds)
        .setExpirationTime(seconds + 60)
        .sign(com.mtaKey.privateKey);
    }

    it('RFC 7523 §3: a client assertion used a second time — its jti was seen (401 invalid_client)', async () => {
      const { copy } = await aliceSent();
      const params = sendParams((await alice()).accessToken, copy.exchangeHeaders);
      const assertion = await mtaAssertion();
      const reuse: ExchangeOptions = { tamper: ({ form }) => form.set('client_assertion', assertion) };
      // The same request with this assertion is served once: reuse is the one thing wrong the second time.
      expect((await comMta.exchange(params, reuse)).trace.status).toBe(200);
      const refusal = await expectRefused(
        comMta,
        params,
        { status: 401, error: 'invalid_client', description: /^client authentication failed$/ },
        reuse,
      );
      expect(refusal.trace.form!.get('client_assertion')).toBe(assertion);
    });

    it('RFC 7523 §3: one client assertion in 8 requests at once is accepted exactly once (an atomic replay check)', async () => {
      const { copy } = await aliceSent();
      const params = sendParams((await alice()).accessToken, copy.exchangeHeaders);
      const assertion = await mtaAssertion();
      const outcomes = await Promise.all(
        Array.from({ length: 8 }, () =>
          comMta.exchange(params, { tamper: ({ form }) => form.set('client_assertion', assertion) }).then(
            (issued) => issued.trace.status,
            (e: unknown) => (e instanceof ExchangeRefused ? `${e.refusal.status} ${e.refusal.error}` : e),
          ),
        ),
      );
      expect(outcomes.filter((o) => o === 200)).toHaveLength(1);
      expect(outcomes.filter((o) => o === '401 invalid_client')).toHaveLength(7);
    });
  });

  // -------------------------------------------------------------------------------------------------
  // DPoP at the token endpoint (§4.5 check 3, docs §10.3)

  describe('DPoP', () => {
    it('RFC 9449 §11.1: a replayed DPoP proof — the same proof sent twice (invalid_dpop_proof)', async () => {
      const { copy } = await aliceSent();
      const params = sendParams((await alice()).accessToken, copy.exchangeHeaders);
      const first = await comMta.exchange(params);
      const proof = first.trace.dpop!;
      const replay: ExchangeOptions = { tamper: ({ headers }) => void (headers.dpop = proof) };
      const refusal = await expectRefused(
        comMta,
        params,
        { error: 'invalid_dpop_proof', description: /DPoP proof: jti \S+ was already used/ },
        replay,
      );
      expect(refusal.trace.dpop).toBe(proof);
    });

    it('RFC 9449 §4.3: the proof’s htu is another endpoint (invalid_dpop_proof)', async () => {
      const { copy } = await aliceSent();
      const other = comMta.server.revocation_endpoint!;
      await expectRefused(
        comMta,
        sendParams((await alice()).accessToken, copy.exchangeHeaders),
        { error: 'invalid_dpop_proof', description: /DPoP proof: htu \S+\/token\/revocation does not match/ },
        { modifyProof: (_h, payload) => void (payload.htu = other) },
      );
    });

    it('PROTOCOL docs §10.2: htu is compared with the token endpoint the AS publishes, not a forwarded host (invalid_dpop_proof)', async () => {
      const { copy } = await aliceSent();
      // A proof made for another server's token endpoint, sent to this AS's real endpoint with the other
      // host in X-Forwarded-Host: "a server compares against the public URL of its endpoint (the one
      // published in its documents), not against what a proxy in front of it forwarded".
      const foreign = 'http://attacker.example/token';
      expect(comMta.server.token_endpoint).not.toBe(foreign);
      await expectRefused(
        comMta,
        sendParams((await alice()).accessToken, copy.exchangeHeaders),
        { error: 'invalid_dpop_proof', description: /htu/ },
        {
          modifyProof: (_h, payload) => void (payload.htu = foreign),
          tamper: ({ headers }) => void (headers['x-forwarded-host'] = new URL(foreign).host),
        },
      );
    });

    it('RFC 9449 §4.3: the proof’s htm is not POST (invalid_dpop_proof)', async () => {
      const { copy } = await aliceSent();
      await expectRefused(
        comMta,
        sendParams((await alice()).accessToken, copy.exchangeHeaders),
        { error: 'invalid_dpop_proof', description: /DPoP proof: htm GET does not match POST/ },
        { modifyProof: (_h, payload) => void (payload.htm = 'GET') },
      );
    });

    it('PROTOCOL §4.4: no DPoP header (invalid_dpop_proof)', async () => {
      const { copy } = await aliceSent();
      await expectRefused(
        comMta,
        sendParams((await alice()).accessToken, copy.exchangeHeaders),
        { error: 'invalid_dpop_proof', description: /requires a DPoP proof/ },
        { withoutDpop: true },
      );
    });

    it('RFC 9449 §4.3: a proof signed by a key other than its embedded jwk (invalid_dpop_proof)', async () => {
      const { copy } = await aliceSent();
      const otherJwk = await publicJwkOf(await oidc.randomDPoPKeyPair('ES256'));
      await expectRefused(
        comMta,
        sendParams((await alice()).accessToken, copy.exchangeHeaders),
        { error: 'invalid_dpop_proof', description: /DPoP proof: signature does not verify/ },
        { modifyProof: (header) => void (header.jwk = otherJwk) },
      );
    });
  });

  // -------------------------------------------------------------------------------------------------
  // Subject assertions of the fetch and forward exchanges (§6.1, §7)

  describe('subject assertions', () => {
    it('PROTOCOL §6.1/§5.3: an assertion from an issuer that DNS does not name for sender_domain (RFC 8693 §2.2.2: invalid_request)', async () => {
      const { assertion, messageId } = await bobSent();
      expect(decodeJwt(assertion).payload.iss).toBe(net.issuer);
      await expectRefused(orgMta, fetchParams(assertion, net.mailboxResource, messageId, 'example.com'), {
        error: 'invalid_request',
        description: new RegExp(
          `subject_token: iss "${net.issuer}" is not ${com.issuer}, the issuer _federizer\\._as\\._tcp\\.example\\.com leads to \\(issuer_mismatch\\)`,
        ),
      });
      // The same assertion for the domain that did issue it is accepted: the issuer was the one reason.
      const fetched = await orgMta.exchange(fetchParams(assertion, net.mailboxResource, messageId, 'example.net'));
      expect(fetched.trace.status).toBe(200);
    });

    it('PROTOCOL §6.1/§8: a sender domain whose AS does not answer is a temporary refusal (503 temporarily_unavailable), not invalid_request', async () => {
      const { assertion, messageId } = await bobSent();
      // The sender domain's SRV record names an AS on a port where nothing listens: discovery cannot finish.
      const down = 'down.example.net';
      fed.dns.setRecords(`_federizer._as._tcp.${down}`, 'SRV', [
        { priority: 10, weight: 5, port: await freePort(), target: 'as.down-example-net.localhost' },
      ]);
      const refusal = await expectRefused(orgMta, fetchParams(assertion, net.mailboxResource, messageId, down), {
        status: 503,
        error: 'temporarily_unavailable',
        description: /subject_token: .*\(discovery_failed\)/,
      });
      expect(refusal.headers.get('retry-after')).toBe('30');
    });

    it('PROTOCOL §5.2 check 2: an `alg: none` assertion (RFC 8693 §2.2.2: invalid_request)', async () => {
      const { copy, a1 } = await aliceSent();
      const [, payload] = a1.split('.');
      const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'eh+jwt' })).toString('base64url');
      const unsigned = `${header}.${payload}.`;
      const messageId = copy.exchangeHeaders[0]!['Message-ID'] as string;
      await expectRefused(orgMta, fetchParams(unsigned, com.mailboxResource, messageId, 'example.com'), {
        error: 'invalid_request',
        description: /subject_token: alg "none" is not one of ES256, EdDSA, RS256 \(alg_not_allowed\)/,
      });
    });

    it('PROTOCOL §5.2 check 2: a user’s access token presented as an assertion (RFC 8693 §2.2.2: invalid_request, typ)', async () => {
      const { copy } = await aliceSent();
      const token = (await alice()).accessToken;
      expect(decodeJwt(token).header.typ).toBe('at+jwt');
      const messageId = copy.exchangeHeaders[0]!['Message-ID'] as string;
      await expectRefused(orgMta, fetchParams(token, com.mailboxResource, messageId, 'example.com'), {
        error: 'invalid_request',
        description: /subject_token: an assertion has typ eh\+jwt, not "at\+jwt" \(invalid_typ\)/,
      });
    });

    it('PROTOCOL §6.1: a fetch without audience (invalid_target)', async () => {
      const { copy, a1 } = await aliceSent();
      const params: Record<string, string> = fetchParams(
        a1,
        com.mailboxResource,
        copy.exchangeHeaders[0]!['Message-ID'] as string,
        'example.com',
      );
      delete params.audience;
      await expectRefused(orgMta, params, {
        error: 'invalid_target',
        description: /audience is required: the origin mailbox's resource/,
      });
    });

    it('PROTOCOL §7: forwarding denied by the policy `none` (access_denied)', async () => {
      const { copy, a1 } = await aliceSent();
      const prepared = prepareForward(stored(copy, a1, 'example.net'), {
        date: new Date(),
        forwardedFrom: 'frank@example.net',
        forwardedTo: 'frank@example.org',
      });
      await expectRefused(netMta, forwardParams(a1, prepared.exchangeHeaders, 'example.com'), {
        error: 'access_denied',
        description: /the forwarding policy of frank@example\.net \(none\) does not allow (automatic )?forwarding/,
      });
    });

    it('PROTOCOL §7: the policy `manual` refuses forward_type=auto (access_denied) and allows manual', async () => {
      const { copy, a1 } = await aliceSent();
      const prepared = prepareForward(stored(copy, a1, 'example.net'), {
        date: new Date(),
        forwardedFrom: 'grace@example.net',
        forwardedTo: 'grace@example.org',
      });
      const params = forwardParams(a1, prepared.exchangeHeaders, 'example.com');
      await expectRefused(
        netMta,
        { ...params, forward_type: 'auto' },
        {
          error: 'access_denied',
          description: /the forwarding policy of grace@example\.net \(manual\) does not allow automatic forwarding/,
        },
      );
      const manual = await netMta.exchange({ ...params, forward_type: 'manual' });
      expect(manual.trace.status).toBe(200);
    });

    it('PROTOCOL §7: a Forwarded-From who is no user of this domain makes the subject unacceptable by policy (RFC 8693 §2.2.2: invalid_request)', async () => {
      const { copy, a1 } = await aliceSent();
      const prepared = prepareForward(stored(copy, a1, 'example.net'), {
        date: new Date(),
        forwardedFrom: 'nobody-here@example.net',
        forwardedTo: 'someone@example.org',
      });
      await expectRefused(netMta, forwardParams(a1, prepared.exchangeHeaders, 'example.com'), {
        error: 'invalid_request',
        description: /Forwarded-From nobody-here@example\.net is not a user of example\.net/,
      });
    });

    it('PROTOCOL §7: a forward whose JWT-Assertion-Digest is not the subject’s digest (RFC 8693 §2.2.2: invalid_request)', async () => {
      const { copy, a1 } = await aliceSent();
      // Another valid assertion of alice's: the forward block names a1, but the subject token is this one.
      const other = (await comMta.send((await alice()).accessToken, copy.exchangeHeaders)).token;
      expect(assertionDigest(other)).not.toBe(assertionDigest(a1));
      const prepared = prepareForward(stored(copy, a1, 'example.net'), {
        date: new Date(),
        forwardedFrom: 'bob@example.net',
        forwardedTo: 'bobby@example.org',
      });
      await expectRefused(netMta, forwardParams(other, prepared.exchangeHeaders, 'example.com'), {
        error: 'invalid_request',
        description: /JWT-Assertion-Digest is not the digest of subject_token/,
      });
      // With its own assertion as the subject, the same forward is issued: the digest was the one reason.
      const issued = await netMta.exchange(forwardParams(a1, prepared.exchangeHeaders, 'example.com'));
      expect(issued.trace.status).toBe(200);
    });
  });

  // -------------------------------------------------------------------------------------------------
  // Last, since it replaces example.com's AS for the rest of the suite.

  it('PROTOCOL §4.5 / docs §10.3, RFC 7523 §3: a DPoP proof, or a client assertion, replayed after the AS restarted on the same database is still refused', async () => {
    const { copy } = await aliceSent();
    const params = sendParams((await alice()).accessToken, copy.exchangeHeaders);
    const first = await comMta.exchange(params);
    const proof = first.trace.dpop!;
    restarted = await restartAuthServer(com, now);
    expect(restarted.url).toBe(com.as.url);
    // A new MTA process too: the connections to the stopped AS are gone.
    const freshHttp = testHttp();
    try {
      const mta = await MtaClient.connect(com, freshHttp);
      await expectRefused(
        mta,
        params,
        { error: 'invalid_dpop_proof', description: /DPoP proof: jti \S+ was already used/ },
        { tamper: ({ headers }) => void (headers.dpop = proof) },
      );
      const assertion = first.trace.form!.get('client_assertion')!;
      await expectRefused(
        mta,
        params,
        { status: 401, error: 'invalid_client', description: /^client authentication failed$/ },
        { tamper: ({ form }) => form.set('client_assertion', assertion) },
      );
      // The restarted AS serves the same exchange with a fresh proof and a fresh assertion.
      expect((await mta.exchange(params)).trace.status).toBe(200);
    } finally {
      await freshHttp.close();
    }
  });
});

/**
 * The three token exchanges end to end (PROTOCOL.md §4.4–4.6 send, §7 forward, §6.1 fetch), with real
 * clients against real Authorization Servers: alice@example.com signs in through the login form, the MTA of
 * example.com exchanges her access token for the assertion A1 of her message, example.net's MTA exchanges
 * A1 for the forward assertion A2 when bob forwards the message, and example.org's MTA exchanges A2 for an
 * RFC 9068 access token to fetch the message's resources from example.com. Every issued token is checked
 * claim by claim, and each chain is validated as a receiver would, through DNS and HTTP discovery.
 */
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HttpClient } from '@federizer/common';
import {
  FORWARD_EHL,
  ORIGIN_EHL,
  assertionDigest,
  contentId,
  decodeJwt,
  externalContentType,
  prepareForward,
  prepareSend,
  receiveBlock,
  validateChain,
  validateMessage,
  withAssertion,
  type Discovery,
  type Header,
  type Message,
  type OutgoingCopy,
} from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { startFederation, type Federation, type TestDomain } from './harness.js';
import {
  MtaClient,
  TOKEN_TYPE,
  federationDiscovery,
  fetchParams,
  forwardParams,
  signIn,
  testHttp,
  thumbprint,
  type Exchanged,
} from './exchange-client.js';

const WEEK = 7 * 24 * 3600;
const MESSAGE_ID = '<exchange-flow-1@example.com>';

/** `eht` computed here from the definition (§3.4): B64U(SHA-256(JCS(E))), independently of the library. */
function ehtOf(headers: readonly Header[]): string {
  return createHash('sha256').update(canonicalize(headers)!, 'utf8').digest('base64url');
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

/** Runs `fn` once; later calls share its promise, so each test can also run alone. */
function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | undefined;
  return () => (result ??= fn());
}

function draft(): Message {
  const bytes = 'Hello Bob, the report is attached.';
  return validateMessage({
    envelope: [
      {
        headers: [
          { 'Message-ID': MESSAGE_ID },
          { From: 'Alice Example <alice@example.com>' },
          { To: 'Bob <bob@example.net>' },
          { Subject: 'The report' },
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
}

async function jwksOf(http: HttpClient, mta: MtaClient): Promise<{ keys: JWK[] }> {
  const res = await http.fetch(mta.server.jwks_uri!);
  expect(res.status).toBe(200);
  return (await res.json()) as { keys: JWK[] };
}

describe.each(testDatabases())('the token exchanges end to end ($name)', ({ create }) => {
  let fed: Federation;
  let http: HttpClient;
  let discovery: Discovery;
  let com: TestDomain;
  let net: TestDomain;
  let org: TestDomain;

  beforeAll(async () => {
    fed = await startFederation(['example.com', 'example.net', 'example.org'], { database: create });
    [com, net, org] = ['example.com', 'example.net', 'example.org'].map((name) => fed.domains[name]!) as [
      TestDomain,
      TestDomain,
      TestDomain,
    ];
    http = testHttp();
    discovery = federationDiscovery(fed, http);
    await com.createUser('alice@example.com', 'correct horse battery staple', { displayName: 'Alice Example' });
    await net.createUser('bob@example.net', 'correct horse battery staple', { displayName: 'Bob' });
    // §7: Bob forwards automatically; the policy is set the way an operator sets it, through the admin API.
    const res = await net.admin('/users/bob%40example.net', {
      method: 'PATCH',
      body: JSON.stringify({ forwardingPolicy: 'any' }),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { forwardingPolicy: string }).forwardingPolicy).toBe('any');
  });

  afterAll(async () => {
    await http?.close();
    await fed?.close();
  });

  // The steps of the flow, each run once and shared by the tests that need them.
  const sent = once(async () => {
    const session = await signIn(com, http, 'alice@example.com', 'correct horse battery staple');
    const [copy] = prepareSend(draft(), { date: new Date() }) as [OutgoingCopy];
    const mta = await MtaClient.connect(com, http);
    const before = nowSeconds();
    const a1 = await mta.send(session.accessToken, copy.exchangeHeaders);
    const after = nowSeconds();
    return { session, copy, mta, a1, before, after };
  });

  const forwarded = once(async () => {
    const { copy, a1 } = await sent();
    // What example.net stored on acceptance (§5.5): its receive block on top of the envelope as it arrived.
    const stored: Message = {
      envelope: [
        receiveBlock({
          messageId: MESSAGE_ID,
          assertion: a1.token,
          senderDomain: 'example.com',
          receiverDomain: 'example.net',
          date: new Date(),
        }),
        ...withAssertion(copy.message, a1.token).envelope,
      ],
      body: copy.message.body,
    };
    const prepared = prepareForward(stored, {
      date: new Date(),
      forwardedFrom: 'Bob <bob@example.net>',
      forwardedTo: 'bobby@example.org',
    });
    const mta = await MtaClient.connect(net, http);
    const before = nowSeconds();
    const a2 = await mta.exchange(forwardParams(prepared.subjectAssertion, prepared.exchangeHeaders, 'example.com'));
    const after = nowSeconds();
    return { prepared, mta, a2, before, after };
  });

  it('PROTOCOL §4.4–4.6: the send exchange turns alice’s access token into the eh+jwt assertion A1 of her copy', async () => {
    const { session, copy, mta, a1, before, after } = await sent();

    // The subject is a real user token: an RFC 9068 access token of example.com for the mailbox.
    const user = decodeJwt(session.accessToken);
    expect(user.header.typ).toBe('at+jwt');
    expect(user.payload).toMatchObject({ iss: com.issuer, sub: 'alice@example.com', aud: com.mailboxResource });

    // RFC 8693 §2.2.1 answer, as the server wrote it.
    expect(a1.trace.status).toBe(200);
    expect(a1.trace.body).toEqual({
      access_token: a1.token,
      issued_token_type: TOKEN_TYPE.jwt,
      token_type: 'N_A',
      expires_in: WEEK,
    });

    // §4.6 JOSE header: exactly alg, typ, kid — and the kid is a key of the AS's published JWKS.
    const header = decodeProtectedHeader(a1.token);
    expect(Object.keys(header).sort()).toEqual(['alg', 'kid', 'typ']);
    expect(header).toMatchObject({ typ: 'eh+jwt', alg: 'ES256' });
    const jwks = await jwksOf(http, mta);
    expect(jwks.keys.map((k) => k.kid)).toContain(header.kid);
    const { payload } = await jwtVerify(a1.token, createLocalJWKSet(jwks), {
      typ: 'eh+jwt',
      algorithms: ['ES256'],
      issuer: com.issuer,
    });

    // §4.6 claims, every one.
    expect(Object.keys(payload).sort()).toEqual(['azp', 'cnf', 'eh', 'exp', 'iat', 'iss', 'jti', 'scope']);
    expect(payload.iss).toBe(com.issuer);
    expect(payload.iss).toBe(mta.server.issuer);
    expect(payload.azp).toBe('mta.example.com');
    expect(payload.scope).toBe('internet_mail');
    expect(payload.cnf).toEqual({ jkt: await thumbprint(a1.dpopKey) });
    expect(a1.jkt).toBe((payload.cnf as { jkt: string }).jkt);
    expect(copy.exchangeHeaders.map((h) => Object.keys(h)[0])).toEqual([...ORIGIN_EHL]);
    const sentHeaders = JSON.parse(a1.trace.form!.get('headers')!) as Header[];
    expect(payload.eh).toEqual({ eht: ehtOf(sentHeaders), ehl: [...ORIGIN_EHL] });
    expect(payload.iat).toBeGreaterThanOrEqual(before);
    expect(payload.iat).toBeLessThanOrEqual(after);
    expect(payload.exp).toBe(payload.iat! + WEEK);
    expect(typeof payload.jti).toBe('string');
    expect(payload.jti).not.toBe('');

    // What the MTA sent: the four header objects of H0, a fresh DPoP proof, and private_key_jwt.
    expect(a1.trace.form!.get('client_assertion_type')).toBe('urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
    expect(decodeJwt(a1.trace.dpop!).header.jwk).toBeDefined();

    // §4.7/§5: the copy with A1 on top is a valid chain for a receiver that discovers example.com by DNS.
    const message = withAssertion(copy.message, a1.token);
    const chain = await validateChain(message.envelope, {
      trust: discovery,
      now: nowSeconds(),
      mode: 'transfer',
      body: message.body,
    });
    expect(chain.messageId).toBe(MESSAGE_ID);
    expect(chain.hops).toHaveLength(1);
    expect(chain.origin).toMatchObject({ kind: 'origin', sender: 'alice@example.com', senderDomain: 'example.com' });
    expect(chain.origin.recipients).toEqual(['bob@example.net']);
  });

  it('PROTOCOL §7: bob forwards; example.net exchanges A1 for the forward assertion A2 and the 2-hop chain validates', async () => {
    const { a1 } = await sent();
    const { prepared, mta, a2, before, after } = await forwarded();
    expect(prepared.subjectAssertion).toBe(a1.token);
    expect(prepared.exchangeHeaders).toEqual([
      { 'Message-ID': MESSAGE_ID },
      { 'Forwarded-From': 'Bob <bob@example.net>' },
      { 'Recipients-Digest': expect.stringMatching(/^<[A-Za-z0-9_-]{43}>$/) as unknown as string },
      { 'JWT-Assertion-Digest': assertionDigest(a1.token) },
    ]);

    expect(a2.trace.body).toEqual({
      access_token: a2.token,
      issued_token_type: TOKEN_TYPE.jwt,
      token_type: 'N_A',
      expires_in: WEEK,
    });
    const header = decodeProtectedHeader(a2.token);
    expect(header).toMatchObject({ typ: 'eh+jwt', alg: 'ES256' });
    const { payload } = await jwtVerify(a2.token, createLocalJWKSet(await jwksOf(http, mta)), {
      typ: 'eh+jwt',
      issuer: net.issuer,
    });
    expect(payload).toMatchObject({
      iss: net.issuer,
      azp: 'mta.example.net',
      scope: 'internet_mail',
      cnf: { jkt: await thumbprint(a2.dpopKey) },
      eh: { eht: ehtOf(prepared.exchangeHeaders), ehl: [...FORWARD_EHL] },
    });
    expect(payload.iat).toBeGreaterThanOrEqual(before);
    expect(payload.iat).toBeLessThanOrEqual(after);
    expect(payload.exp).toBe(payload.iat! + WEEK);
    expect(payload.jti).not.toBe(decodeJwt(a1.token).payload.jti);

    // §7.3–7.4: [A2, H1, A1, H0], validated oldest first, each issuer found through DNS.
    const message = withAssertion(prepared.message, a2.token);
    expect(message.envelope).toHaveLength(4);
    const chain = await validateChain(message.envelope, {
      trust: discovery,
      now: nowSeconds(),
      mode: 'transfer',
      body: message.body,
    });
    expect(chain.hops.map((h) => [h.kind, h.senderDomain, h.claims.iss])).toEqual([
      ['origin', 'example.com', com.issuer],
      ['forward', 'example.net', net.issuer],
    ]);
    expect(chain.newest.sender).toBe('bob@example.net');
    expect(chain.newest.recipients).toEqual(['bobby@example.org']);
  });

  it('PROTOCOL §6.1: example.org exchanges A2 for an RFC 9068 at+jwt access token to fetch from example.com', async () => {
    const { a2 } = await forwarded();
    const mta = await MtaClient.connect(org, http);
    const before = nowSeconds();
    const fetched: Exchanged = await mta.exchange(
      fetchParams(a2.token, com.mailboxResource, MESSAGE_ID, 'example.net'),
    );
    const after = nowSeconds();

    expect(fetched.trace.status).toBe(200);
    expect(fetched.trace.body).toMatchObject({
      access_token: fetched.token,
      issued_token_type: TOKEN_TYPE.accessToken,
      token_type: 'DPoP',
    });
    expect(fetched.result.token_type).toBe('dpop');

    const header = decodeProtectedHeader(fetched.token);
    expect(header).toMatchObject({ typ: 'at+jwt', alg: 'ES256' });
    expect(header.kid).toEqual(expect.any(String));
    const jwks = await jwksOf(http, mta);
    expect(jwks.keys.map((k) => k.kid)).toContain(header.kid);
    const { payload } = await jwtVerify(fetched.token, createLocalJWKSet(jwks), {
      typ: 'at+jwt',
      issuer: org.issuer,
      audience: com.mailboxResource,
    });
    expect(payload).toMatchObject({
      iss: org.issuer,
      aud: com.mailboxResource,
      azp: 'mta.example.org',
      client_id: 'mta.example.org',
      sub: 'mta.example.org',
      scope: 'internet_mail',
      message_id: MESSAGE_ID,
      cnf: { jkt: await thumbprint(fetched.dpopKey) },
    });
    expect(payload.iat).toBeGreaterThanOrEqual(before);
    expect(payload.iat).toBeLessThanOrEqual(after);
    // "a lifetime of minutes (it SHOULD NOT exceed 15 minutes)"
    expect(payload.exp! - payload.iat!).toBeGreaterThanOrEqual(60);
    expect(payload.exp! - payload.iat!).toBeLessThanOrEqual(15 * 60);
    expect(fetched.trace.body!.expires_in).toBe(payload.exp! - payload.iat!);
    expect(payload.jti).toEqual(expect.any(String));
    // The DPoP key of the fetch is fresh: neither the sender's nor the forwarder's.
    const jktOf = (token: string) => (decodeJwt(token).payload.cnf as { jkt: string }).jkt;
    const { a1 } = await sent();
    expect(new Set([jktOf(fetched.token), jktOf(a2.token), jktOf(a1.token)]).size).toBe(3);
  });
});

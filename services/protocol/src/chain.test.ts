import { exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_SHARE_WINDOW_SECONDS, assertionClaims, validateChain, type AssertionInput } from './chain.js';
import { contentId } from './digests.js';
import { prepareForward, prepareSend, receiveBlock, withAssertion } from './envelope.js';
import { isProtocolError, type ProtocolErrorCode } from './errors.js';
import { signJwt } from './jwt.js';
import { externalContentType } from './mime.js';
import { FORWARD_EHL, ORIGIN_EHL, type Block, type Body, type Header, type Message } from './message.js';
import { StaticTrust } from './trust.js';

const DOMAINS = ['example.com', 'example.net', 'example.org', 'example.edu'] as const;
type Domain = (typeof DOMAINS)[number];
const T0 = 1_750_000_000;
const HOUR = 3600;

interface DomainKeys {
  key: CryptoKey;
  jwk: JWK;
}
let keys: Record<Domain, DomainKeys>;
let stranger: DomainKeys;

const issuer = (d: string) => `https://as.${d}`;
const mta = (d: string) => `mta.${d}`;

async function newKey(kid: string): Promise<DomainKeys> {
  const { privateKey, publicKey } = await generateKeyPair('ES256');
  return { key: privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } };
}

beforeAll(async () => {
  keys = Object.fromEntries(await Promise.all(DOMAINS.map(async (d) => [d, await newKey(`${d}-1`)]))) as typeof keys;
  stranger = await newKey('example.com-1'); // same kid as example.com's key, different key
});

function trust(): StaticTrust {
  return new StaticTrust(
    Object.fromEntries(
      DOMAINS.map((d) => [d, { issuer: issuer(d), mtaClientId: mta(d), jwks: { keys: [keys[d].jwk] } }]),
    ),
  );
}

/** Everything about one assertion that a test may bend; defaults give a valid one. */
interface Bend {
  claims?: (c: Record<string, unknown>) => void;
  header?: Record<string, unknown>;
  signer?: DomainKeys;
  headers?: (h: Header[]) => Header[];
}

async function sign(
  domain: Domain,
  headers: readonly Header[],
  ehl: readonly string[],
  iat: number,
  bend: Bend = {},
): Promise<string> {
  const input: AssertionInput = {
    iss: issuer(domain),
    azp: mta(domain),
    jkt: 'jkt-of-the-dpop-key',
    headers: bend.headers ? bend.headers([...headers]) : headers,
    ehl,
    iat,
    jti: `jti-${Math.random()}`,
  };
  const claims = assertionClaims(input) as unknown as Record<string, unknown>;
  bend.claims?.(claims);
  const signer = bend.signer ?? keys[domain];
  if (bend.header === undefined)
    return signJwt(claims, { typ: 'eh+jwt', alg: 'ES256', key: signer.key, kid: signer.jwk.kid! });
  const header = { alg: 'ES256', typ: 'eh+jwt', kid: signer.jwk.kid, ...bend.header };
  const { CompactSign } = await import('jose');
  return new CompactSign(new TextEncoder().encode(JSON.stringify(claims)))
    .setProtectedHeader(header as never)
    .sign(signer.key);
}

const draft = (): Message => ({
  envelope: [
    {
      headers: [
        { From: 'Alice <alice@example.com>' },
        { To: 'Bob <bob@example.net>' },
        { Cc: 'carol@example.net' },
        { Subject: 'Chains' },
        { 'Message-ID': '<m1@example.com>' },
      ],
    },
  ],
  body: {
    parts: [
      {
        headers: [
          { 'Content-Disposition': 'inline' },
          { 'Content-ID': contentId('hello') },
          { 'Content-Type': externalContentType(5, 'text/plain') },
        ],
      },
    ],
  },
});

interface ChainBends {
  origin?: Bend;
  hop1?: Bend;
  hop2?: Bend;
  hop1From?: string;
}

/** alice@example.com → bob@example.net, forwarded to bobby@example.org, forwarded to bo@example.edu. */
async function buildChain(hops: 1 | 2 | 3, bends: ChainBends = {}): Promise<Message> {
  const copy = prepareSend(draft(), { date: new Date(T0 * 1000) })[0]!;
  let message = withAssertion(
    copy.message,
    await sign('example.com', copy.exchangeHeaders, ORIGIN_EHL, T0, bends.origin),
  );
  const route: [Domain, Domain, string, string, Bend | undefined][] = [
    ['example.net', 'example.com', bends.hop1From ?? 'Bob <bob@example.net>', 'Bobby <bobby@example.org>', bends.hop1],
    ['example.org', 'example.net', 'bobby@example.org', 'bo@example.edu', bends.hop2],
  ];
  for (const [at, from, forwardedFrom, forwardedTo, bend] of route.slice(0, hops - 1)) {
    const a = (message.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    const stored: Message = {
      envelope: [
        receiveBlock({
          messageId: '<m1@example.com>',
          assertion: a,
          senderDomain: from,
          receiverDomain: at,
          date: new Date(T0 * 1000),
        }),
        ...message.envelope,
      ],
      body: message.body,
    };
    const fwd = prepareForward(stored, { date: new Date((T0 + 60) * 1000), forwardedFrom, forwardedTo });
    message = withAssertion(fwd.message, await sign(at, fwd.exchangeHeaders, FORWARD_EHL, T0 + 60, bend));
  }
  return message;
}

async function validate(
  message: Message,
  opts: { now?: number; mode?: 'transfer' | 'fetch'; maxHops?: number; body?: boolean } = {},
) {
  return validateChain(message.envelope, {
    trust: trust(),
    now: opts.now ?? T0 + 120,
    mode: opts.mode ?? 'transfer',
    maxHops: opts.maxHops,
    body: opts.body === false ? undefined : message.body,
  });
}

async function rejection(promise: Promise<unknown>): Promise<ProtocolErrorCode> {
  try {
    await promise;
  } catch (e) {
    if (isProtocolError(e)) return e.code;
    throw e;
  }
  throw new Error('expected a rejection');
}

const replaceBlock = (m: Message, index: number, block: Block): Message => ({
  ...m,
  envelope: m.envelope.map((b, i) => (i === index ? block : b)),
});
const headersAt = (m: Message, index: number) => (m.envelope[index] as { headers: Header[] }).headers;

describe('validateChain: valid chains', () => {
  it('accepts an origin copy and reports its hop', async () => {
    const chain = await validate(await buildChain(1));
    expect(chain.messageId).toBe('<m1@example.com>');
    expect(chain.hops).toHaveLength(1);
    expect(chain.origin.sender).toBe('alice@example.com');
    expect(chain.origin.recipients).toEqual(['bob@example.net', 'carol@example.net']);
  });

  it('accepts a three-hop forward chain, walking from the origin', async () => {
    const chain = await validate(await buildChain(3));
    expect(chain.hops.map((h) => h.senderDomain)).toEqual(['example.com', 'example.net', 'example.org']);
    expect(chain.newest.recipients).toEqual(['bo@example.edu']);
  });

  it('PROTOCOL §7: at transfer only the newest assertion must be unexpired', async () => {
    const m = await buildChain(2, { origin: { claims: (c) => (c.exp = T0 + HOUR) } });
    await expect(validate(m, { now: T0 + 2 * HOUR, mode: 'transfer' })).resolves.toBeDefined();
  });

  it('accepts a fetch without a body (the fetch request carries the envelope only)', async () => {
    await expect(validate(await buildChain(2), { mode: 'fetch', body: false })).resolves.toBeDefined();
  });
});

describe('validateChain: each check on its own', () => {
  it('PROTOCOL §7 structure: pairs of (assertion, headers)', async () => {
    const m = await buildChain(1);
    expect(await rejection(validate({ ...m, envelope: m.envelope.slice(1) }))).toBe('invalid_chain');
    expect(await rejection(validate({ ...m, envelope: [m.envelope[1]!, m.envelope[0]!] }))).toBe('invalid_chain');
  });

  it('PROTOCOL §7 structure: a forward block holds Forwarded-From and no From', async () => {
    const m = await buildChain(2);
    const h = headersAt(m, 1).filter((x) => !Object.hasOwn(x, 'Forwarded-From'));
    expect(await rejection(validate(replaceBlock(m, 1, { headers: h })))).toBe('invalid_chain');
  });

  it('PROTOCOL §7: at most 8 hops (here a limit of 2)', async () => {
    expect(await rejection(validate(await buildChain(3), { maxHops: 2 }))).toBe('chain_too_long');
  });

  it('every block names the same Message-ID', async () => {
    const m = await buildChain(2);
    const h = headersAt(m, 1).map((x) =>
      Object.hasOwn(x, 'Message-ID') ? { 'Message-ID': '<other@example.net>' } : x,
    );
    expect(await rejection(validate(replaceBlock(m, 1, { headers: h })))).toBe('message_id_mismatch');
  });

  it('a signed block holds each digest header once', async () => {
    const m = await buildChain(1);
    const h = headersAt(m, 1);
    expect(await rejection(validate(replaceBlock(m, 1, { headers: [...h, { 'Body-Digest': '<x>' }] })))).toBe(
      'duplicate_header',
    );
  });

  it('PROTOCOL §5.2: typ must be eh+jwt (an access token is not an assertion)', async () => {
    expect(await rejection(validate(await buildChain(1, { origin: { header: { typ: 'at+jwt' } } })))).toBe(
      'invalid_typ',
    );
  });

  it('PROTOCOL §5.2: alg none is refused', async () => {
    const m = await buildChain(1);
    const token = (m.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    const [, payload] = token.split('.');
    const none = `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'eh+jwt' })).toString('base64url')}.${payload}.sig`;
    expect(await rejection(validate(replaceBlock(m, 0, { 'jwt-assertion': none })))).toBe('alg_not_allowed');
  });

  it('PROTOCOL §5.2: no jku/x5u (a token may not name its own key)', async () => {
    expect(
      await rejection(validate(await buildChain(1, { origin: { header: { jku: 'https://evil.example/jwks' } } }))),
    ).toBe('forbidden_header_parameter');
  });

  it('PROTOCOL §5.3: iss must be the issuer DNS names for the sender domain', async () => {
    expect(
      await rejection(validate(await buildChain(1, { origin: { claims: (c) => (c.iss = issuer('example.net')) } }))),
    ).toBe('issuer_mismatch');
  });

  it('PROTOCOL §5.3: a sender domain without SRV records is refused', async () => {
    const m = await buildChain(1);
    const h = headersAt(m, 1).map((x) => (Object.hasOwn(x, 'From') ? { From: 'mallory@unknown.example' } : x));
    expect(await rejection(validate(replaceBlock(m, 1, { headers: h })))).toBe('discovery_no_records');
  });

  it('PROTOCOL §5.4: the signature must verify with the issuer JWKS', async () => {
    expect(await rejection(validate(await buildChain(1, { origin: { signer: stranger } })))).toBe('invalid_signature');
  });

  it('PROTOCOL §5.5: an expired newest assertion is refused at transfer', async () => {
    expect(await rejection(validate(await buildChain(1), { now: T0 + DEFAULT_SHARE_WINDOW_SECONDS + HOUR }))).toBe(
      'token_expired',
    );
  });

  it('PROTOCOL §7: at fetch the origin assertion must be unexpired', async () => {
    const m = await buildChain(2, { origin: { claims: (c) => (c.exp = T0 + HOUR) } });
    expect(await rejection(validate(m, { now: T0 + 2 * HOUR, mode: 'fetch' }))).toBe('token_expired');
  });

  it('PROTOCOL §5.5: iat in the future is refused', async () => {
    expect(
      await rejection(validate(await buildChain(1, { origin: { claims: (c) => (c.iat = T0 + HOUR) } }), { now: T0 })),
    ).toBe('token_not_yet_valid');
  });

  it('PROTOCOL §5.5: scope must be internet_mail', async () => {
    expect(await rejection(validate(await buildChain(1, { origin: { claims: (c) => (c.scope = 'openid') } })))).toBe(
      'invalid_scope',
    );
  });

  it('PROTOCOL §4.6: ehl must be the origin list for an origin block', async () => {
    const bend: Bend = {
      claims: (c) => ((c.eh as { ehl: string[] }).ehl = ['Message-ID', 'From', 'Recipients-Digest']),
    };
    expect(await rejection(validate(await buildChain(1, { origin: bend })))).toBe('ehl_mismatch');
  });

  it('PROTOCOL §5.7: azp must be the MTA client id the sender domain publishes', async () => {
    expect(
      await rejection(validate(await buildChain(1, { origin: { claims: (c) => (c.azp = 'someone-else') } }))),
    ).toBe('azp_mismatch');
  });

  it('PROTOCOL §5.8: eht recomputed from the block (a From changed after signing)', async () => {
    const m = await buildChain(1);
    const h = headersAt(m, 1).map((x) => (Object.hasOwn(x, 'From') ? { From: 'Mallory <alice@example.com>' } : x));
    expect(await rejection(validate(replaceBlock(m, 1, { headers: h })))).toBe('eht_mismatch');
  });

  it('PROTOCOL §5.8: Recipients-Digest recomputed (a To changed after signing)', async () => {
    const m = await buildChain(1);
    const h = headersAt(m, 1).map((x) => (Object.hasOwn(x, 'To') ? { To: 'mallory@example.net' } : x));
    expect(await rejection(validate(replaceBlock(m, 1, { headers: h })))).toBe('recipients_digest_mismatch');
  });

  it('PROTOCOL §5.8: Body-Digest recomputed (a body part changed after signing)', async () => {
    const m = await buildChain(1);
    const body: Body = {
      parts: [
        {
          headers: [
            { 'Content-Disposition': 'inline' },
            { 'Content-ID': contentId('evil') },
            { 'Content-Type': externalContentType(4, 'text/plain') },
          ],
        },
      ],
    };
    expect(await rejection(validate({ ...m, body }))).toBe('body_digest_mismatch');
  });

  it('PROTOCOL §7: a forward block names the digest of the previous assertion', async () => {
    const bend: Bend = {
      headers: (h) =>
        h.map((x) =>
          Object.hasOwn(x, 'JWT-Assertion-Digest') ? { 'JWT-Assertion-Digest': `<${'A'.repeat(43)}>` } : x,
        ),
    };
    const m = await buildChain(2, { hop1: bend });
    const h = headersAt(m, 1).map((x) =>
      Object.hasOwn(x, 'JWT-Assertion-Digest') ? { 'JWT-Assertion-Digest': `<${'A'.repeat(43)}>` } : x,
    );
    expect(await rejection(validate(replaceBlock(m, 1, { headers: h })))).toBe('assertion_digest_mismatch');
  });

  it('PROTOCOL §7: the forwarder was a recipient of the previous hop', async () => {
    expect(await rejection(validate(await buildChain(2, { hop1From: 'Dan <dan@example.net>' })))).toBe(
      'forwarder_not_recipient',
    );
  });

  it('errors name the block they come from', async () => {
    const m = await buildChain(2, { hop1: { claims: (c) => (c.azp = 'x') } });
    await expect(validate(m)).rejects.toThrow(/^envelope\[0\]: azp/);
  });
});

/**
 * Builds the protocol test vectors from fixed keys and fixed times. Ed25519 signatures are deterministic,
 * so every assertion here is reproducible byte for byte: `npm run vectors` rewrites the files and
 * test/vectors.test.ts checks that the committed files are exactly what the code builds.
 */
import { readFileSync } from 'node:fs';
import { importJWK, type CryptoKey, type JWK } from 'jose';
import {
  StaticTrust,
  FORWARD_EHL,
  ORIGIN_EHL,
  assertionDigest,
  contentId,
  decodeJwt,
  digestReport,
  externalContentType,
  jwkThumbprint,
  prepareForward,
  prepareSend,
  receiveBlock,
  signAssertion,
  withAssertion,
  type Header,
  type Message,
  type Part,
} from '@federizer/protocol';

export const VECTOR_DIR = new URL('./', import.meta.url);
const keys = JSON.parse(readFileSync(new URL('keys.json', VECTOR_DIR), 'utf8')) as Record<string, JWK>;

/** Sun, 22 Dec 2024 20:49:35 +0100, the moment of the design document's example. */
export const SENT_AT = 1734896975;
export const FORWARDED_AT = SENT_AT + 11 * 60 + 59;

export const DOMAINS = {
  'example.com': {
    issuer: 'https://as.example.com',
    mtaClientId: 'mta.example.com',
    key: 'as.example.com',
    dpop: 'mta.example.com.dpop',
  },
  'example.net': {
    issuer: 'https://as.example.net',
    mtaClientId: 'mta.example.net',
    key: 'as.example.net',
    dpop: 'mta.example.net.dpop',
  },
  'example.org': {
    issuer: 'https://as.example.org',
    mtaClientId: 'mta.example.org',
    key: 'as.example.org',
    dpop: 'mta.example.org.dpop',
  },
} as const;

export type Domain = keyof typeof DOMAINS;

function publicJwk(name: string): JWK {
  const { d: _d, ...pub } = keys[name]!;
  return pub;
}

/** The TrustResolver the vectors verify against: what DNS discovery would answer for each domain. */
export function vectorTrust(): StaticTrust {
  return new StaticTrust(
    Object.fromEntries(
      Object.entries(DOMAINS).map(([domain, d]) => [
        domain,
        { issuer: d.issuer, mtaClientId: d.mtaClientId, jwks: { keys: [publicJwk(d.key)] } },
      ]),
    ),
  );
}

async function signAs(
  domain: Domain,
  input: { headers: readonly Header[]; ehl: readonly string[]; iat: number; jti: string },
): Promise<string> {
  const d = DOMAINS[domain];
  const jwk = keys[d.key]!;
  const key = (await importJWK(jwk, 'EdDSA')) as CryptoKey;
  return signAssertion(
    {
      iss: d.issuer,
      azp: d.mtaClientId,
      jkt: await jwkThumbprint(publicJwk(d.dpop)),
      headers: input.headers,
      ehl: input.ehl,
      iat: input.iat,
      jti: input.jti,
    },
    { key, alg: 'EdDSA', kid: jwk.kid! },
  );
}

const text = 'Hi Bob,\n\nthe view from our hotel in Venice.\n\nAlice\n';
const html = '<p>Hi Bob,</p><p>the view from our hotel in Venice.</p><p>Alice</p>\n';
// Not a real PNG: the vectors need fixed bytes, and their digest is all the protocol looks at.
const photo = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 31 + 7) % 256));

export const RESOURCES = { 'text.txt': text, 'text.html': html, 'Venice.png': photo.toString('base64') };

function leaf(bytes: string | Buffer, mediaType: string, disposition: string): Part {
  const size = typeof bytes === 'string' ? Buffer.byteLength(bytes) : bytes.length;
  return {
    headers: [
      { 'Content-Disposition': disposition },
      { 'Content-ID': contentId(bytes) },
      { 'Content-Type': externalContentType(size, mediaType) },
    ],
  };
}

export const draft: Message = {
  envelope: [
    {
      headers: [
        { From: 'Alice <alice@example.com>' },
        { Subject: 'Vacation photo' },
        { To: 'Bob <bob@example.net>' },
        { Cc: '"Carol, the Photographer" <carol@example.net>' },
        { Bcc: 'dave@example.org, Erin Ä. Öberg <erin@example.org>' },
        { 'Message-ID': '<b07d0cdf-c6f4-4f67-b24c-cc847a4c2df4@example.com>' },
        { 'X-Thread-ID': '<68fb9177-6853-466a-8f7d-c96fbb885f81@example.com>' },
        { 'Content-Type': 'multipart/mixed' },
      ],
    },
  ],
  body: {
    parts: [
      {
        headers: [{ 'Content-Type': 'multipart/alternative' }],
        parts: [leaf(text, 'text/plain; charset=UTF-8', 'inline'), leaf(html, 'text/html; charset=UTF-8', 'inline')],
      },
      leaf(photo, 'image/png', 'attachment; filename="Venice.png"'),
    ],
  },
};

export interface Vector {
  readonly name: string;
  readonly description: string;
  readonly message: Message;
  readonly expected: Record<string, unknown>;
}

function assertionFacts(message: Message) {
  return message.envelope.flatMap((block, index) => {
    if (!('jwt-assertion' in block)) return [];
    const token = block['jwt-assertion'];
    const { header, payload } = decodeJwt(token);
    return [{ index, digest: assertionDigest(token), header, claims: payload }];
  });
}

export async function buildVectors(): Promise<Vector[]> {
  const date = new Date(SENT_AT * 1000);
  const copies = prepareSend(draft, { date, offsetMinutes: 60 });
  const signed = await Promise.all(
    copies.map(async (copy, i) =>
      withAssertion(
        copy.message,
        await signAs('example.com', {
          headers: copy.exchangeHeaders,
          ehl: ORIGIN_EHL,
          iat: SENT_AT,
          jti: `vector-origin-${i}`,
        }),
      ),
    ),
  );
  const toCc = signed[0]!;
  const a1 = (toCc.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
  const received: Message = {
    envelope: [
      receiveBlock({
        messageId: '<b07d0cdf-c6f4-4f67-b24c-cc847a4c2df4@example.com>',
        assertion: a1,
        senderDomain: 'example.com',
        receiverDomain: 'example.net',
        date: new Date((SENT_AT + 519) * 1000),
        offsetMinutes: 60,
      }),
      ...toCc.envelope,
    ],
    body: toCc.body,
  };
  const forward = prepareForward(received, {
    date: new Date(FORWARDED_AT * 1000),
    offsetMinutes: 60,
    forwardedFrom: 'Bob <bob@example.net>',
    forwardedTo: 'Bobby <bobby@example.org>',
  });
  const a2 = await signAs('example.net', {
    headers: forward.exchangeHeaders,
    ehl: FORWARD_EHL,
    iat: FORWARDED_AT,
    jti: 'vector-forward-1',
  });
  const chain = withAssertion(forward.message, a2);

  const vector = (
    name: string,
    description: string,
    message: Message,
    extra: Record<string, unknown> = {},
  ): Vector => ({
    name,
    description,
    message,
    expected: { digest: digestReport(message), assertions: assertionFacts(message), ...extra },
  });
  return [
    vector(
      '01-draft',
      'A draft as the webmail posts it: one headers block, no Date, no digests yet (eht is null).',
      draft,
    ),
    vector(
      '02-origin-to-cc',
      'The To/Cc copy after send (§4): Date, Recipients-Digest and Body-Digest stamped, no Bcc, signed by as.example.com.',
      toCc,
      {
        recipients: copies[0]!.recipients,
      },
    ),
    ...signed.slice(1).map((m, i) =>
      vector(
        `03-origin-bcc-${i + 1}`,
        `The copy for Bcc recipient ${copies[i + 1]!.recipients[0]} (§4.3): its Bcc names that recipient alone.`,
        m,
        {
          recipients: copies[i + 1]!.recipients,
        },
      ),
    ),
    vector('04-received', 'The To/Cc copy as example.net stores it (§5): its receive block on top.', received),
    vector(
      '05-forward-chain',
      'Bob forwards to bobby@example.org (§7): the envelope example.org receives, [A2, H1, A1, H0].',
      chain,
      {
        recipients: forward.recipients,
        validateAt: FORWARDED_AT + 60,
      },
    ),
  ];
}

export function keysForDocs(): Record<string, JWK> {
  return keys;
}

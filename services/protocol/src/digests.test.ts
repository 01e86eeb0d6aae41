/**
 * PROTOCOL §1 and §3 digests, computed independently here (a small RFC 8785 canonicalizer for strings,
 * arrays and objects, and node:crypto), then compared with digests.ts and report.ts.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  ContentIdHasher,
  assertionDigest,
  bodyDigest,
  contentId,
  contentIdOfStream,
  eht,
  ehtOrUndefined,
  jcs,
  jcsText,
  recipientsDigest,
} from './digests.js';
import { ProtocolError } from './errors.js';
import { FORWARD_EHL, ORIGIN_EHL } from './message.js';
import type { Body, Header, Message, Part } from './message.js';
import { digestReport } from './report.js';

// ---------------------------------------------------------------------------------------------------------
// the reference: RFC 8785 for the subset the protocol hashes (strings, arrays, objects)

/**
 * RFC 8785 §3.2: strings serialized as ECMAScript JSON.stringify does (§3.2.2.2), object members sorted by
 * their names as arrays of UTF-16 code units (§3.2.3), no white space.
 */
function canonical(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const names = Object.keys(value).sort(compareUtf16);
    const record = value as Record<string, unknown>;
    return `{${names.map((n) => `${JSON.stringify(n)}:${canonical(record[n])}`).join(',')}}`;
  }
  throw new TypeError(`outside the reference subset: ${typeof value}`);
}

function compareUtf16(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = a.charCodeAt(i) - b.charCodeAt(i);
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

const sha256b64u = (data: string | Uint8Array): string => createHash('sha256').update(data).digest('base64url');
/** `<B64U(H(JCS(v)))>` */
const digestOf = (v: unknown): string => `<${sha256b64u(Buffer.from(canonical(v), 'utf8'))}>`;
/** `B64U(H(JCS(v)))`, the eht form. */
const ehtOf = (v: unknown): string => sha256b64u(Buffer.from(canonical(v), 'utf8'));

// ---------------------------------------------------------------------------------------------------------
// fixtures

const JWS1 = 'eyJhbGciOiJFUzI1NiIsInR5cCI6ImVoK2p3dCJ9.eyJpc3MiOiJodHRwczovL2FzLmV4YW1wbGUuY29tIn0.c2lnLTE';
const JWS2 = 'eyJhbGciOiJFUzI1NiIsInR5cCI6ImVoK2p3dCJ9.eyJpc3MiOiJodHRwczovL2FzLmV4YW1wbGUubmV0In0.c2lnLTI';

const externalBody = (size: number): string =>
  `message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"; size="${size}"`;

function leaf(data: string, media: string, disposition = 'inline'): Part {
  return {
    headers: [
      { 'Content-Disposition': disposition },
      { 'Content-ID': `<${sha256b64u(Buffer.from(data, 'utf8'))}>` },
      { 'Content-Type': [externalBody(Buffer.byteLength(data)), media] as [string, string] },
    ],
  };
}

const BODY: Body = {
  parts: [
    {
      headers: [{ 'Content-Type': 'multipart/alternative' }],
      parts: [leaf('Grüße 😀', 'text/plain; charset=utf-8'), leaf('<p>Grüße</p>', 'text/html')],
    },
    leaf('%PDF', 'application/pdf', 'attachment; filename="résumé \\"final\\".pdf"'),
  ],
};

const H0: Header[] = [
  { Date: 'Sun, 22 Dec 2024 20:49:35 +0100' },
  { 'Recipients-Digest': '<placeholder-recipients>' },
  { 'Body-Digest': '<placeholder-body>' },
  { 'Message-ID': '<m1@example.com>' },
  { From: 'Alice Example <alice@example.com>' },
  { Bcc: 'Eve <eve@example.org>' },
  { Subject: 'Hi' },
  { Cc: '"Doe, Jane" <jane@example.net>' },
  { To: 'Bob <bob@example.net>, carol@example.org' },
];

const RECEIVE: Header[] = [
  { 'Message-ID': '<m1@example.com>' },
  { 'JWT-Assertion-Digest': `<${sha256b64u(JWS1)}>` },
  { Received: 'from example.com by example.net; Sun, 22 Dec 2024 20:50:00 +0000' },
];

const H1: Header[] = [
  { Date: 'Sun, 22 Dec 2024 21:00:00 +0000' },
  { 'Recipients-Digest': '<placeholder-forward>' },
  { 'Forwarded-To': 'Dave <dave@example.org>' },
  { 'Forwarded-From': 'Bob <bob@example.net>' },
  ...RECEIVE,
];

function thrown(f: () => unknown): ProtocolError {
  let error: unknown;
  try {
    f();
  } catch (e) {
    error = e;
  }
  expect(error, 'expected a ProtocolError to be thrown').toBeInstanceOf(ProtocolError);
  return error as ProtocolError;
}

// ---------------------------------------------------------------------------------------------------------

describe('the reference canonicalizer itself (RFC 8785)', () => {
  it('§3.2.3: the RFC sorting example', () => {
    const value = {
      '\u20ac': 'Euro Sign',
      '\r': 'Carriage Return',
      '\ufb33': 'Hebrew Letter Dalet With Dagesh',
      '1': 'One',
      '\ud83d\ude00': 'Emoji: Grinning Face',
      '\u0080': 'Control',
      '\u00f6': 'Latin Small Letter O With Diaeresis',
    };
    expect(canonical(value)).toBe(
      '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",' +
        '"\u20ac":"Euro Sign","\ud83d\ude00":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    );
    expect(jcs(value).toString('utf8')).toBe(canonical(value));
  });

  it('§3.2.3: keys are ordered by UTF-16 code units, not code points ("\\u{1F600}" before "\\uE000")', () => {
    const value = { '\uE000': 'private use', '\u{1F600}': 'grinning face' };
    // code point order would put U+E000 first; UTF-16 order compares 0xD83D with 0xE000
    expect(canonical(value)).toBe('{"\u{1F600}":"grinning face","\uE000":"private use"}');
    expect(jcs(value).toString('utf8')).toBe('{"\u{1F600}":"grinning face","\uE000":"private use"}');
  });

  it('§3.2.2.2: string escapes (control characters, quote, backslash; "/" and U+2028 literal)', () => {
    const value = ['\u0000\u001f\b\t\n\f\r"\\', '/', '\u2028é😀'];
    expect(canonical(value)).toBe('["\\u0000\\u001f\\b\\t\\n\\f\\r\\"\\\\","/","\u2028é😀"]');
    expect(jcs(value).toString('utf8')).toBe(canonical(value));
  });

  it('JCS is UTF-8 bytes', () => {
    expect([...jcs(['é'])]).toEqual([0x5b, 0x22, 0xc3, 0xa9, 0x22, 0x5d]);
  });
});

describe('Body-Digest (PROTOCOL §3)', () => {
  it('is <B64U(H(JCS(body)))> over the whole body object', () => {
    const value = bodyDigest(BODY);
    expect(value).toBe(digestOf(BODY));
    expect(value).toMatch(/^<[A-Za-z0-9_-]{43}>$/);
  });

  it('does not depend on the order in which members were written', () => {
    const reordered = {
      parts: BODY.parts.map((p) => ({ ...(p.parts ? { parts: p.parts } : {}), headers: p.headers })),
    };
    expect(bodyDigest(reordered)).toBe(bodyDigest(BODY));
  });

  it('UTF-16 key order shows through in the body digest', () => {
    const body = { parts: [{ headers: [{ '\uE000': 'a', '\u{1F600}': 'b' } as Header] }] };
    expect(bodyDigest(body)).toBe(`<${sha256b64u('{"parts":[{"headers":[{"\u{1F600}":"b","\uE000":"a"}]}]}')}>`);
  });

  it('changes with any value', () => {
    const changed = structuredClone(BODY) as { parts: { headers: Record<string, unknown>[] }[] };
    changed.parts[1]!.headers[0] = { 'Content-Disposition': 'attachment; filename="other.pdf"' };
    expect(bodyDigest(changed as Body)).not.toBe(bodyDigest(BODY));
  });
});

describe('Recipients-Digest (PROTOCOL §3)', () => {
  it('origin: R = [To, Cc, Bcc] in that order, whatever their order in the block, values as written', () => {
    expect(recipientsDigest(H0, 'origin')).toBe(
      digestOf([
        { To: 'Bob <bob@example.net>, carol@example.org' },
        { Cc: '"Doe, Jane" <jane@example.net>' },
        { Bcc: 'Eve <eve@example.org>' },
      ]),
    );
  });

  it('origin: absent headers are left out', () => {
    const toOnly: Header[] = [{ From: 'alice@example.com' }, { To: 'Bob <bob@example.net>' }];
    expect(recipientsDigest(toOnly, 'origin')).toBe(digestOf([{ To: 'Bob <bob@example.net>' }]));
    const ccBcc: Header[] = [{ Bcc: 'eve@example.org' }, { Cc: 'jane@example.net' }];
    expect(recipientsDigest(ccBcc, 'origin')).toBe(digestOf([{ Cc: 'jane@example.net' }, { Bcc: 'eve@example.org' }]));
  });

  it('origin: values are exactly as written (display names, spacing, case are covered)', () => {
    const a: Header[] = [{ To: 'Bob <bob@example.net>' }];
    const b: Header[] = [{ To: 'bob@example.net' }];
    const c: Header[] = [{ To: 'Bob <bob@EXAMPLE.net>' }];
    expect(recipientsDigest(a, 'origin')).toBe(digestOf(a));
    expect(recipientsDigest(b, 'origin')).toBe(digestOf(b));
    expect(new Set([a, b, c].map((h) => recipientsDigest(h, 'origin'))).size).toBe(3);
  });

  it('forward: R = [{"Forwarded-To": value}] only, even if the block holds To/Cc/Bcc', () => {
    const block: Header[] = [...H1, { To: 'x@example.com' }, { Cc: 'y@example.com' }];
    expect(recipientsDigest(block, 'forward')).toBe(digestOf([{ 'Forwarded-To': 'Dave <dave@example.org>' }]));
  });

  it('origin ignores Forwarded-To', () => {
    expect(recipientsDigest([{ 'Forwarded-To': 'dave@example.org' }, { To: 'bob@example.net' }], 'origin')).toBe(
      digestOf([{ To: 'bob@example.net' }]),
    );
  });
});

describe('JWT-Assertion-Digest (PROTOCOL §3)', () => {
  it('is <B64U(H(ASCII(compact JWS)))>', () => {
    expect(assertionDigest(JWS1)).toBe(`<${sha256b64u(Buffer.from(JWS1, 'ascii'))}>`);
    expect(assertionDigest(JWS2)).not.toBe(assertionDigest(JWS1));
  });
});

describe('eht (PROTOCOL §3)', () => {
  const originBlock: Header[] = [
    { Date: 'Sun, 22 Dec 2024 20:49:35 +0100' },
    { 'Recipients-Digest': '<rd>' },
    { 'Body-Digest': '<bd>' },
    { 'Message-ID': '<m1@example.com>' },
    { From: 'Alice Example <alice@example.com>' },
    { To: 'bob@example.net' },
  ];

  it('is B64U(H(JCS(E))) without brackets, E in ehl order (not block order)', () => {
    const expected = ehtOf([
      { 'Message-ID': '<m1@example.com>' },
      { From: 'Alice Example <alice@example.com>' },
      { 'Recipients-Digest': '<rd>' },
      { 'Body-Digest': '<bd>' },
    ]);
    expect(eht(originBlock, ORIGIN_EHL)).toBe(expected);
    expect(ehtOrUndefined(originBlock, ORIGIN_EHL)).toBe(expected);
    expect(expected).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('a different ehl order gives a different eht', () => {
    const reversed = [...ORIGIN_EHL].reverse();
    expect(eht(originBlock, reversed)).toBe(ehtOf(reversed.map((n) => originBlock.find((h) => Object.hasOwn(h, n))!)));
    expect(eht(originBlock, reversed)).not.toBe(eht(originBlock, ORIGIN_EHL));
  });

  it('forward ehl over a forward block', () => {
    expect(eht(H1, FORWARD_EHL)).toBe(
      ehtOf([
        { 'Message-ID': '<m1@example.com>' },
        { 'Forwarded-From': 'Bob <bob@example.net>' },
        { 'Recipients-Digest': '<placeholder-forward>' },
        { 'JWT-Assertion-Digest': `<${sha256b64u(JWS1)}>` },
      ]),
    );
  });

  it('only the named headers count', () => {
    expect(eht([...originBlock, { Subject: 'changed' }], ORIGIN_EHL)).toBe(eht(originBlock, ORIGIN_EHL));
  });

  it.each(ORIGIN_EHL.map((n) => [n]))('a block without %s: ehtOrUndefined is undefined, eht throws', (name) => {
    const block = originBlock.filter((h) => !Object.hasOwn(h, name));
    expect(ehtOrUndefined(block, ORIGIN_EHL)).toBeUndefined();
    const err = thrown(() => eht(block, ORIGIN_EHL));
    expect(err.code).toBe('missing_header');
    expect(err.message).toContain(name);
  });
});

describe('Content-ID (PROTOCOL §2)', () => {
  const bytes = new Uint8Array(100_000).map((_, i) => (i * 31 + 7) % 256);
  const expected = `<${sha256b64u(bytes)}>`;

  it('is <B64U(H(resource bytes))>', () => {
    expect(contentId(bytes)).toBe(expected);
    expect(contentId(new Uint8Array(0))).toBe('<47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU>');
    expect(contentId('abc')).toBe(`<${sha256b64u(Buffer.from('abc', 'utf8'))}>`);
  });

  it('hashes only the bytes of a view, not the whole underlying buffer', () => {
    const big = new Uint8Array(64).fill(9);
    const view = big.subarray(8, 24);
    expect(contentId(view)).toBe(`<${sha256b64u(Buffer.from(view))}>`);
  });

  async function* chunked(data: Uint8Array, sizes: number[]): AsyncGenerator<Uint8Array> {
    let at = 0;
    let i = 0;
    while (at < data.length) {
      const n = sizes[i++ % sizes.length]!;
      yield data.subarray(at, at + n);
      at += n;
    }
  }

  it('contentIdOfStream: many chunks give the same Content-ID and size as one buffer', async () => {
    expect(await contentIdOfStream(chunked(bytes, [1, 7, 4096, 3, 65_536]))).toEqual({
      contentId: expected,
      size: bytes.length,
    });
    expect(await contentIdOfStream(chunked(bytes, [bytes.length]))).toEqual({ contentId: expected, size: 100_000 });
  });

  it('contentIdOfStream: an empty stream', async () => {
    expect(await contentIdOfStream(chunked(new Uint8Array(0), [1]))).toEqual({
      contentId: '<47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU>',
      size: 0,
    });
  });

  it('ContentIdHasher: chunked updates equal one buffer', () => {
    const hasher = new ContentIdHasher();
    for (let at = 0; at < bytes.length; at += 333) hasher.update(bytes.subarray(at, at + 333));
    expect(hasher.size).toBe(bytes.length);
    expect(hasher.contentId()).toBe(expected);
  });
});

describe('digestReport (what `federizer protocol digest` prints)', () => {
  const chain: Message = {
    envelope: [
      {
        headers: [
          { 'Message-ID': '<m1@example.com>' },
          { 'JWT-Assertion-Digest': `<${sha256b64u(JWS2)}>` },
          { Received: 'from example.net by example.org; Sun, 22 Dec 2024 21:01:00 +0000' },
        ],
      },
      { 'jwt-assertion': JWS2 },
      { headers: H1 },
      { 'jwt-assertion': JWS1 },
      { headers: H0 },
    ],
    body: BODY,
  };

  it('one entry per headers block holding From or Forwarded-From, with its index; receive blocks skipped', () => {
    const report = digestReport(chain);
    expect(report.bodyDigest).toBe(digestOf(BODY));
    expect(report.blocks).toEqual([
      {
        index: 2,
        ehl: [...FORWARD_EHL],
        recipientsDigest: digestOf([{ 'Forwarded-To': 'Dave <dave@example.org>' }]),
        eht: ehtOf([
          { 'Message-ID': '<m1@example.com>' },
          { 'Forwarded-From': 'Bob <bob@example.net>' },
          { 'Recipients-Digest': '<placeholder-forward>' },
          { 'JWT-Assertion-Digest': `<${sha256b64u(JWS1)}>` },
        ]),
      },
      {
        index: 4,
        ehl: [...ORIGIN_EHL],
        recipientsDigest: digestOf([
          { To: 'Bob <bob@example.net>, carol@example.org' },
          { Cc: '"Doe, Jane" <jane@example.net>' },
          { Bcc: 'Eve <eve@example.org>' },
        ]),
        eht: ehtOf([
          { 'Message-ID': '<m1@example.com>' },
          { From: 'Alice Example <alice@example.com>' },
          { 'Recipients-Digest': '<placeholder-recipients>' },
          { 'Body-Digest': '<placeholder-body>' },
        ]),
      },
    ]);
  });

  it('eht is null when the block lacks Body-Digest (a draft)', () => {
    const draftHeaders: Header[] = [
      { 'Message-ID': '<m1@example.com>' },
      { From: 'alice@example.com' },
      { To: 'bob@example.net' },
    ];
    const report = digestReport({ envelope: [{ headers: draftHeaders }], body: BODY });
    expect(report.blocks).toEqual([
      {
        index: 0,
        ehl: [...ORIGIN_EHL],
        recipientsDigest: digestOf([{ To: 'bob@example.net' }]),
        eht: null,
      },
    ]);
  });

  it('an envelope with only a receive block and assertions reports no blocks', () => {
    const report = digestReport({ envelope: [chain.envelope[0]!, chain.envelope[1]!], body: BODY });
    expect(report.blocks).toEqual([]);
    expect(report.bodyDigest).toBe(bodyDigest(BODY));
  });
});

describe('jcs against an independent RFC 8785 implementation (the canonicalize package)', () => {
  it('RFC 8785: the same canonical text for 20,000 arbitrary JSON values', async () => {
    const { default: canonicalize } = await import('canonicalize');
    const fc = await import('fast-check');
    fc.assert(
      fc.property(fc.jsonValue(), (v) => canonicalize(v) === jcsText(v)),
      { numRuns: 20_000, seed: 8785 },
    );
  });

  it('RFC 8785 §3.2.2: NaN, Infinity and lone surrogates have no canonical form', () => {
    expect(() => jcsText(Number.NaN)).toThrow(TypeError);
    expect(() => jcsText({ a: Number.POSITIVE_INFINITY })).toThrow(TypeError);
    expect(() => jcsText(['\uD800'])).toThrow(TypeError);
  });
});

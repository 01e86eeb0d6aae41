/**
 * The validating parser against PROTOCOL.md §2–3 (and RFC 5322 / RFC 2045 / RFC 2183 where the protocol
 * defers to them). Every rejection breaks exactly one rule of an otherwise valid message and checks the
 * error code, the path and the rule named in the message.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ProtocolError } from './errors.js';
import type { ProtocolErrorCode } from './errors.js';
import { SINGLETON_HEADERS } from './message.js';
import { parseParameterized } from './mime.js';
import { DEFAULT_LIMITS, parseMessage, validateMessage } from './parse.js';
import type { ParseOptions } from './parse.js';

// ---------------------------------------------------------------------------------------------------------
// fixtures

type H = Record<string, unknown>;
interface MPart {
  headers: H[];
  parts?: MPart[];
}
interface MMessage {
  envelope: Record<string, unknown>[];
  body: { parts: MPart[] };
}

const b64u = (s: string): string => Buffer.from(s, 'utf8').toString('base64url');
const cidOf = (data: string): string => `<${createHash('sha256').update(data, 'utf8').digest('base64url')}>`;
const externalBody = (size: number | string): string =>
  `message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"; size="${size}"`;

/** A compact JWS-shaped string (three base64url segments). */
const JWS1 = `${b64u('{"alg":"ES256","typ":"eh+jwt","kid":"k1"}')}.${b64u('{"iss":"https://as.example.com"}')}.${b64u('signature-1')}`;
const JWS2 = `${b64u('{"alg":"ES256","typ":"eh+jwt","kid":"k2"}')}.${b64u('{"iss":"https://as.example.net"}')}.${b64u('signature-2')}`;
const DIGEST = `<${createHash('sha256').update('x').digest('base64url')}>`;

function leaf(data = 'hello', disposition = 'inline', media = 'text/plain; charset=utf-8'): MPart {
  return {
    headers: [
      { 'Content-Disposition': disposition },
      { 'Content-ID': cidOf(data) },
      { 'Content-Type': [externalBody(Buffer.byteLength(data, 'utf8')), media] },
    ],
  };
}

const BASE: H[] = [
  { 'Message-ID': '<m1@example.com>' },
  { From: 'Alice <alice@example.com>' },
  { To: 'Bob <bob@example.net>' },
];

/** A draft: one headers block, one leaf part. */
function draft(extra: H[] = []): MMessage {
  return {
    envelope: [{ headers: [...BASE.map((h) => ({ ...h })), { Subject: 'Hello' }, ...extra] }],
    body: { parts: [leaf()] },
  };
}

function withEnvelopeHeaders(headers: H[]): MMessage {
  const m = draft();
  m.envelope = [{ headers }];
  return m;
}

function withLeafHeaders(headers: H[]): MMessage {
  const m = draft();
  m.body.parts = [{ headers }];
  return m;
}

function originBlock(): H[] {
  return [
    { Date: 'Sun, 22 Dec 2024 20:49:35 +0100' },
    { 'Recipients-Digest': DIGEST },
    { 'Body-Digest': DIGEST },
    { 'Message-ID': '<m1@example.com>' },
    { From: 'Alice <alice@example.com>' },
    { To: 'Bob <bob@example.net>, "Doe, Jane" <jane@example.net>' },
    { Cc: 'carol@example.org' },
    { Subject: 'Hello' },
  ];
}

function receiveBlock(from: string, by: string): H[] {
  return [
    { 'Message-ID': '<m1@example.com>' },
    { 'JWT-Assertion-Digest': DIGEST },
    { Received: `from ${from} by ${by}; Sun, 22 Dec 2024 20:50:00 +0000` },
  ];
}

/** What MBX3 stores after a forward hop: receive block, A2, H1, A1, H0 (PROTOCOL.md §5, §7). */
function forwardChain(): MMessage {
  return {
    envelope: [
      { headers: receiveBlock('example.net', 'example.org') },
      { 'jwt-assertion': JWS2 },
      {
        headers: [
          { Date: 'Sun, 22 Dec 2024 21:00:00 +0000' },
          { 'Recipients-Digest': DIGEST },
          { 'Forwarded-To': 'Dave <dave@example.org>' },
          { 'Forwarded-From': 'Bob <bob@example.net>' },
          ...receiveBlock('example.com', 'example.net'),
        ],
      },
      { 'jwt-assertion': JWS1 },
      { headers: originBlock() },
    ],
    body: { parts: [leaf()] },
  };
}

// ---------------------------------------------------------------------------------------------------------
// helpers

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

function parseRejects(input: string | Uint8Array, options?: ParseOptions): ProtocolError {
  return thrown(() => parseMessage(input, options));
}

/**
 * The value breaks exactly one rule: both entry points (JSON text and an already-decoded value) reject it
 * with that code, and the message starts with the path and names the rule.
 */
function expectRule(value: unknown, code: ProtocolErrorCode, path: string, rule: RegExp): void {
  const errors = [thrown(() => parseMessage(JSON.stringify(value))), thrown(() => validateMessage(value))];
  for (const err of errors) {
    expect(err.code).toBe(code);
    expect(err.path).toBe(path);
    expect(err.message.startsWith(`${path}: `), err.message).toBe(true);
    expect(err.message).toMatch(rule);
  }
}

function expectValid(value: MMessage): void {
  expect(parseMessage(JSON.stringify(value))).toEqual(value);
  expect(validateMessage(value)).toBe(value);
}

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const PARSE_MODULE = new URL('./parse.ts', import.meta.url).href;

/**
 * Runs parseMessage on each input in a fresh Node process (through tsx, as the services run), so that a
 * stack overflow or a crash cannot take the test worker down with it. Reports each outcome.
 */
function parseInChild(inputs: { text: string; format: 'json' | 'yaml' | 'auto' }[]): {
  status: number | null;
  results: { code: string | null; protocolError: boolean; ms: number }[];
  stderr: string;
} {
  const script = `
    const { parseMessage } = await import(${JSON.stringify(PARSE_MODULE)});
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    const inputs = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    for (const { text, format } of inputs) {
      const t = performance.now();
      let out;
      try {
        parseMessage(text, { format });
        out = { code: null, protocolError: false };
      } catch (e) {
        out = { code: e?.code ?? null, protocolError: e?.name === 'ProtocolError' };
      }
      process.stdout.write(JSON.stringify({ ...out, ms: performance.now() - t }) + '\\n');
    }
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: REPO_ROOT,
    input: JSON.stringify(inputs),
    encoding: 'utf8',
    timeout: 60_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  if (r.error) throw r.error;
  const results = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { code: string | null; protocolError: boolean; ms: number });
  return { status: r.status, results, stderr: r.stderr.slice(0, 500) };
}

// ---------------------------------------------------------------------------------------------------------
// valid messages

describe('parseMessage: valid messages (PROTOCOL §2)', () => {
  it('PROTOCOL §2: a JSON draft with one headers block and one leaf part', () => {
    expectValid(draft());
  });

  it('PROTOCOL §4.7: an origin copy [jwt-assertion, headers] with Date and digests', () => {
    expectValid({ envelope: [{ 'jwt-assertion': JWS1 }, { headers: originBlock() }], body: { parts: [leaf()] } });
  });

  it('PROTOCOL §7: a 5-block forward chain [receive, A2, H1, A1, H0]', () => {
    const m = forwardChain();
    expect(m.envelope).toHaveLength(5);
    expectValid(m);
  });

  it('PROTOCOL §5: a repeated Received header is fine (it is not a singleton)', () => {
    expectValid(
      withEnvelopeHeaders([
        ...BASE,
        { Received: 'from example.com by example.net; Sun, 22 Dec 2024 20:49:35 +0000' },
        { Received: 'from example.net by example.org; Sun, 22 Dec 2024 20:50:35 +0000' },
      ]),
    );
  });

  it('PROTOCOL §2: nested multipart parts, with leaves at several depths', () => {
    const m = draft();
    m.body.parts = [
      {
        headers: [{ 'Content-Type': 'multipart/alternative' }],
        parts: [
          leaf('plain text'),
          {
            headers: [{ 'Content-Type': 'multipart/related' }],
            parts: [leaf('<p>html</p>', 'inline', 'text/html'), leaf('PNG', 'inline', 'image/png')],
          },
        ],
      },
      leaf('%PDF-1.7', 'attachment; filename="report.pdf"', 'application/pdf'),
    ];
    expectValid(m);
  });

  it('RFC 6532: non-ASCII UTF-8 values survive, read from UTF-8 bytes', () => {
    const m = draft([{ 'X-Note': 'Grüße aus Köln — 日本語 😀' }]);
    m.envelope = [
      {
        headers: [
          { 'Message-ID': '<m1@example.com>' },
          { From: 'Jörg Müller <jörg@bücher.example>' },
          { To: '"Ðoe, Jäne" <jäne@example.net>' },
          { Subject: 'Grüße 😀' },
        ],
      },
    ];
    m.body.parts = [leaf('données', 'attachment; filename="résumé.pdf"', 'application/pdf')];
    const bytes = new TextEncoder().encode(JSON.stringify(m));
    const parsed = parseMessage(bytes);
    expect(parsed).toEqual(m);
    const first = parsed.envelope[0] as { headers: H[] };
    expect(first.headers[3]).toEqual({ Subject: 'Grüße 😀' });
  });

  it('RFC 5322 §2.2: a horizontal tab (WSP) inside a value is allowed', () => {
    expectValid(draft([{ 'X-Tabbed': 'a\tb' }]));
  });

  it('RFC 2045 §5.1 / RFC 2183 §2: type, subtype, parameter names and disposition types are case-insensitive; token or quoted-string values', () => {
    const m = draft();
    m.body.parts = [
      {
        headers: [
          { 'Content-Disposition': 'Attachment; filename="a b.txt"' },
          { 'Content-ID': cidOf('hello') },
          {
            'Content-Type': [
              'Message/External-Body; ACCESS-TYPE=x-content-addressed-uri; Hash-Algorithm=sha256; SIZE=5',
              'Text/Plain',
            ],
          },
        ],
      },
    ];
    expectValid(m);
  });

  it('the limits are inclusive: exactly maxHeaders, maxParts, maxBlocks and maxDepth pass', () => {
    const limits = { maxHeaders: 8, maxParts: 4, maxBlocks: 5, maxDepth: 3 };
    const m = forwardChain();
    m.envelope[0] = {
      headers: [
        ...receiveBlock('a.example', 'b.example').slice(0, 2),
        ...Array.from({ length: 6 }, () => ({ R: 'x' })),
      ],
    };
    // depth 3 and 4 parts in all: container > container > leaf, plus one more leaf at the top
    m.body.parts = [{ headers: [], parts: [{ headers: [], parts: [leaf()] }] }, leaf('second')];
    expect(parseMessage(JSON.stringify(m), { limits })).toEqual(m);
    expect(validateMessage(m, limits)).toBe(m);
  });
});

const draftYaml = (subject: string): string => `envelope:
  - headers:
      - Message-ID: <m1@example.com>
      - From: Alice <alice@example.com>
      - To: Bob <bob@example.net>
      - Subject: ${subject}
body:
  parts:
    - headers:
        - Content-Disposition: inline
        - Content-ID: ${cidOf('hello')}
        - Content-Type:
            - ${externalBody(5)}
            - text/plain; charset=utf-8
`;
const DRAFT_YAML = draftYaml('Hello');

describe('parseMessage: YAML is an equivalent rendering (PROTOCOL §2)', () => {
  const yaml = draftYaml;

  it('a YAML draft parses to the same message as its JSON form', () => {
    expect(parseMessage(yaml('Hello'))).toEqual(draft());
    expect(parseMessage(yaml('Hello'), { format: 'yaml' })).toEqual(draft());
  });

  it('a YAML `Subject: 123` stays the string "123"', () => {
    const first = parseMessage(yaml('123')).envelope[0] as { headers: H[] };
    expect(first.headers[3]).toEqual({ Subject: '123' });
  });

  it('a YAML `Subject: null` stays the string "null"', () => {
    const first = parseMessage(yaml('null')).envelope[0] as { headers: H[] };
    expect(first.headers[3]).toEqual({ Subject: 'null' });
  });

  it('a YAML `Subject: true` stays the string "true"', () => {
    const first = parseMessage(yaml('true')).envelope[0] as { headers: H[] };
    expect(first.headers[3]).toEqual({ Subject: 'true' });
  });
});

// ---------------------------------------------------------------------------------------------------------
// reading: syntax, encoding, size, depth

describe('parseMessage: syntax and encoding', () => {
  it('JSON: text that is not JSON is rejected', () => {
    const err = parseRejects('{"envelope": [');
    expect(err.code).toBe('invalid_syntax');
    expect(err.message).toMatch(/not valid JSON/);
  });

  it('JSON: forcing format json on YAML text is rejected', () => {
    const err = parseRejects('envelope: []', { format: 'json' });
    expect(err.code).toBe('invalid_syntax');
    expect(err.message).toMatch(/JSON/);
  });

  it('YAML: text that is not YAML is rejected', () => {
    const err = parseRejects('envelope: [unclosed\nbody: {', { format: 'yaml' });
    expect(err.code).toBe('invalid_syntax');
    expect(err.message).toMatch(/not valid YAML/);
  });

  it.each([
    ['a stray 0xFF byte', [0x7b, 0xff, 0x7d]],
    ['an overlong encoding of "/"', [0x7b, 0xc0, 0xaf, 0x7d]],
    ['an encoded UTF-16 surrogate (CESU-8)', [0x7b, 0xed, 0xa0, 0x80, 0x7d]],
    ['a truncated multi-byte sequence', [0x7b, 0x22, 0xe2, 0x82, 0x22, 0x7d]],
  ])('RFC 3629: invalid UTF-8 bytes are rejected (%s)', (_label, bytes) => {
    const err = parseRejects(new Uint8Array(bytes));
    expect(err.code).toBe('invalid_encoding');
    expect(err.message).toMatch(/not valid UTF-8/);
  });

  it('a lone UTF-16 surrogate in the text is rejected', () => {
    const text = JSON.stringify(draft()).replace('Hello', 'Hel\uD800lo');
    const err = parseRejects(text);
    expect(err.code).toBe('invalid_encoding');
    expect(err.message).toMatch(/lone UTF-16 surrogate/);
  });

  it('a lone surrogate written as a JSON escape (\\ud800) is rejected, naming the header', () => {
    const text = JSON.stringify(draft()).replace('Hello', 'Hel\\ud800lo');
    const err = parseRejects(text);
    expect(err.code).toBe('invalid_encoding');
    expect(err.path).toBe('envelope[0].headers[3]');
    expect(err.message).toMatch(/^envelope\[0\]\.headers\[3\]: Subject: .*lone UTF-16 surrogate/);
  });
});

describe('parseMessage: message too large (checked before parsing)', () => {
  const max = DEFAULT_LIMITS.maxBytes;

  it('a text of maxBytes + 1 bytes is rejected as too large, not as a syntax error', () => {
    const text = `{${'x'.repeat(max)}`;
    expect(Buffer.byteLength(text)).toBe(max + 1);
    const err = parseRejects(text);
    expect(err.code).toBe('message_too_large');
    expect(err.message).toMatch(new RegExp(`at most ${max} bytes`));
  });

  it('bytes over the limit are rejected as too large before decoding (even when not UTF-8)', () => {
    const bytes = new Uint8Array(max + 1).fill(0xff);
    const err = parseRejects(bytes);
    expect(err.code).toBe('message_too_large');
  });

  it('the limit counts UTF-8 bytes, not characters', () => {
    const m = draft([{ 'X-Euro': '€'.repeat(Math.ceil(max / 3)) }]);
    const text = JSON.stringify(m);
    expect(text.length).toBeLessThan(max);
    expect(Buffer.byteLength(text)).toBeGreaterThan(max);
    expect(parseRejects(text).code).toBe('message_too_large');
    expect(parseRejects(new TextEncoder().encode(text)).code).toBe('message_too_large');
  });

  it('a message of exactly maxBytes passes; one byte more is rejected', () => {
    const text = JSON.stringify(draft());
    const maxBytes = Buffer.byteLength(text);
    expect(parseMessage(text, { limits: { maxBytes } })).toEqual(draft());
    const bigger = text.replace('Hello', 'Hello!');
    const err = parseRejects(bigger, { limits: { maxBytes } });
    expect(err.code).toBe('message_too_large');
    expect(err.message).toMatch(new RegExp(`at most ${maxBytes} bytes`));
  });
});

describe('parseMessage: nesting too deep', () => {
  it('100,000 nested "[" are rejected quickly with message_too_deep, not a stack overflow', () => {
    const err = parseRejects('['.repeat(100_000));
    expect(err.code).toBe('message_too_deep');
  });

  it('100,000 nested JSON objects are rejected quickly with message_too_deep', () => {
    const err = parseRejects(new TextEncoder().encode('{"a":'.repeat(100_000)));
    expect(err.code).toBe('message_too_deep');
  });

  it('parts nested deeper than maxDepth are rejected, naming the part', () => {
    let part: MPart = leaf();
    for (let i = 0; i < DEFAULT_LIMITS.maxDepth; i++) part = { headers: [], parts: [part] };
    const m = draft();
    m.body.parts = [part];
    const path = `body.parts[0]${'.parts[0]'.repeat(DEFAULT_LIMITS.maxDepth)}`;
    expectRule(m, 'message_too_deep', path, new RegExp(`nest at most ${DEFAULT_LIMITS.maxDepth} levels`));
  });

  it('YAML: 100,000 nested "[" are rejected quickly with message_too_deep, not a stack overflow', () => {
    const { status, results, stderr } = parseInChild([{ text: '['.repeat(100_000), format: 'yaml' }]);
    expect(status, stderr).toBe(0);
    expect(results[0]).toMatchObject({ protocolError: true, code: 'message_too_deep' });
  });

  it('YAML: 100,000 nested block sequences ("- - - ...") are rejected quickly with message_too_deep', () => {
    const { status, results, stderr } = parseInChild([{ text: `${'- '.repeat(100_000)}x`, format: 'yaml' }]);
    expect(status, stderr).toBe(0);
    expect(results[0]).toMatchObject({ protocolError: true, code: 'message_too_deep' });
  });

  it('YAML: a deeply nested input leaves the process able to parse the next YAML message', () => {
    const { status, results, stderr } = parseInChild([
      { text: '['.repeat(100_000), format: 'yaml' },
      { text: `${'- '.repeat(1_000)}x`, format: 'yaml' },
      { text: DRAFT_YAML, format: 'yaml' },
    ]);
    expect(status, `the parsing process died: ${stderr}`).toBe(0);
    expect(results).toHaveLength(3);
    expect(results[0]!.protocolError).toBe(true);
    expect(results[1]!.protocolError).toBe(true);
    expect(results[2]!.code).toBeNull();
  });
});

describe('parseMessage: limits on parts, headers, blocks and header length', () => {
  it(`PROTOCOL §2 limits: more than maxParts (${DEFAULT_LIMITS.maxParts}) parts are rejected`, () => {
    const m = draft();
    m.body.parts = Array.from({ length: DEFAULT_LIMITS.maxParts + 1 }, () => leaf());
    expectRule(
      m,
      'too_many_parts',
      `body.parts[${DEFAULT_LIMITS.maxParts}]`,
      new RegExp(`at most ${DEFAULT_LIMITS.maxParts} parts`),
    );
  });

  it('multipart containers count as parts too', () => {
    const m = draft();
    m.body.parts = [{ headers: [], parts: [leaf(), leaf()] }];
    expectValid(m);
    expect(() => validateMessage(m, { maxParts: 3 })).not.toThrow();
    const err = thrown(() => validateMessage(m, { maxParts: 2 }));
    expect(err.code).toBe('too_many_parts');
    expect(err.path).toBe('body.parts[0].parts[1]');
  });

  it(`more than maxHeaders (${DEFAULT_LIMITS.maxHeaders}) headers in a block are rejected`, () => {
    const headers = [
      ...BASE,
      ...Array.from({ length: DEFAULT_LIMITS.maxHeaders + 1 - BASE.length }, () => ({ Received: 'x' })),
    ];
    expectRule(
      withEnvelopeHeaders(headers),
      'too_many_headers',
      'envelope[0].headers',
      new RegExp(`at most ${DEFAULT_LIMITS.maxHeaders} headers`),
    );
  });

  it('more than maxHeaders headers in a part are rejected', () => {
    const headers = [
      ...leaf().headers,
      ...Array.from({ length: DEFAULT_LIMITS.maxHeaders - 2 }, () => ({ 'X-Pad': 'x' })),
    ];
    expectRule(
      withLeafHeaders(headers),
      'too_many_headers',
      'body.parts[0].headers',
      new RegExp(`at most ${DEFAULT_LIMITS.maxHeaders} headers`),
    );
  });

  it(`more than maxBlocks (${DEFAULT_LIMITS.maxBlocks}) blocks are rejected`, () => {
    const m = draft();
    m.envelope = Array.from({ length: DEFAULT_LIMITS.maxBlocks + 1 }, (_, i) =>
      i % 2 === 0 ? { headers: BASE } : { 'jwt-assertion': JWS1 },
    );
    expectRule(m, 'too_many_blocks', 'envelope', new RegExp(`at most ${DEFAULT_LIMITS.maxBlocks} blocks`));
  });

  it('a header longer than maxHeaderLength (name and value together) is rejected', () => {
    const value = 'y'.repeat(DEFAULT_LIMITS.maxHeaderLength - 'Subject'.length + 1);
    expectRule(
      withEnvelopeHeaders([...BASE, { Subject: value }]),
      'header_too_long',
      'envelope[0].headers[3]',
      new RegExp(`Subject: a header is at most ${DEFAULT_LIMITS.maxHeaderLength} characters`),
    );
  });

  it('a header of exactly maxHeaderLength characters passes', () => {
    const value = 'y'.repeat(DEFAULT_LIMITS.maxHeaderLength - 'Subject'.length);
    expectValid(withEnvelopeHeaders([...BASE, { Subject: value }]));
  });

  it('an assertion longer than maxHeaderLength is rejected', () => {
    const long = `${'a'.repeat(DEFAULT_LIMITS.maxHeaderLength)}.b.c`;
    const m = draft();
    m.envelope = [{ 'jwt-assertion': long }, { headers: originBlock() }];
    expectRule(
      m,
      'header_too_long',
      'envelope[0].jwt-assertion',
      new RegExp(`at most ${DEFAULT_LIMITS.maxHeaderLength} characters`),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------
// shape

describe('parseMessage: message, envelope and block shape (PROTOCOL §2)', () => {
  it('PROTOCOL §2: a message is an object', () => {
    expectRule([draft()], 'invalid_shape', '$', /a message must be a JSON object/);
  });

  it('PROTOCOL §2: a top-level member other than envelope and body is rejected', () => {
    expectRule({ ...draft(), extra: 'x' }, 'invalid_shape', '$', /unknown member "extra"/);
  });

  it('PROTOCOL §2: a message without envelope is rejected', () => {
    expectRule({ body: draft().body }, 'invalid_shape', '$', /needs a member "envelope"/);
  });

  it('PROTOCOL §2: a message without body is rejected', () => {
    expectRule({ envelope: draft().envelope }, 'invalid_shape', '$', /needs a member "body"/);
  });

  it('PROTOCOL §2: the envelope is an array', () => {
    expectRule({ ...draft(), envelope: { headers: BASE } }, 'invalid_shape', 'envelope', /must be an array/);
  });

  it('PROTOCOL §2: an empty envelope is rejected', () => {
    expectRule({ ...draft(), envelope: [] }, 'invalid_shape', 'envelope', /at least one block/);
  });

  it('PROTOCOL §2: a body without parts is rejected', () => {
    expectRule({ ...draft(), body: {} }, 'invalid_shape', 'body', /needs a member "parts"/);
  });

  it('PROTOCOL §2: a block with two members (headers and jwt-assertion) is rejected', () => {
    const m = draft();
    m.envelope = [{ headers: BASE, 'jwt-assertion': JWS1 }];
    expectRule(m, 'invalid_shape', 'envelope[0]', /exactly one member, "headers" or "jwt-assertion"/);
  });

  it('PROTOCOL §2: a block that is neither headers nor jwt-assertion is rejected', () => {
    const m = draft();
    m.envelope = [{ header: BASE }];
    expectRule(m, 'invalid_shape', 'envelope[0]', /exactly one member, "headers" or "jwt-assertion"/);
  });

  it('PROTOCOL §2: an empty headers block is rejected', () => {
    const m = draft();
    m.envelope = [{ headers: [] }];
    expectRule(m, 'invalid_shape', 'envelope[0].headers', /at least one header/);
  });

  it.each([
    ['two segments', 'abc.def'],
    ['four segments', 'a.b.c.d'],
    ['an empty segment', 'a..c'],
    ['a space', 'a b.c.d'],
    ['standard base64 characters', 'a+b.c/d.e'],
    ['padding', 'YQ==.Yg.Yw'],
    ['the empty string', ''],
  ])('RFC 7515 §7.1: a jwt-assertion that is not a compact JWS is rejected (%s)', (_label, jws) => {
    const m = draft();
    m.envelope = [{ 'jwt-assertion': jws }, { headers: originBlock() }];
    expectRule(m, 'invalid_shape', 'envelope[0].jwt-assertion', /compact JWS/);
  });

  it('PROTOCOL §2: a jwt-assertion that is not a string is rejected', () => {
    const m = draft();
    m.envelope = [{ 'jwt-assertion': ['a', 'b', 'c'] }, { headers: originBlock() }];
    expectRule(m, 'invalid_shape', 'envelope[0].jwt-assertion', /an assertion is a string/);
  });

  it('PROTOCOL §2: a part with a member other than headers and parts is rejected', () => {
    const m = draft();
    m.body.parts = [{ ...leaf(), body: 'inline text' } as MPart];
    expectRule(m, 'invalid_shape', 'body.parts[0]', /unknown member "body"/);
  });

  it('PROTOCOL §2: a multipart part with `parts: []` is rejected', () => {
    const m = draft();
    m.body.parts = [{ headers: [{ 'Content-Type': 'multipart/mixed' }], parts: [] }];
    expectRule(m, 'invalid_shape', 'body.parts[0].parts', /at least one part/);
  });
});

describe('parseMessage: header objects (PROTOCOL §2, RFC 5322 §2.2)', () => {
  it('PROTOCOL §2: a header object with no key is rejected', () => {
    expectRule(
      withEnvelopeHeaders([...BASE.slice(0, 2), {}, BASE[2]!]),
      'invalid_header',
      'envelope[0].headers[2]',
      /a header object has exactly one key/,
    );
  });

  it('PROTOCOL §2: a header object with two keys is rejected', () => {
    expectRule(
      withEnvelopeHeaders([...BASE.slice(0, 2), { To: 'bob@example.net', Subject: 'Hi' }]),
      'invalid_header',
      'envelope[0].headers[2]',
      /^envelope\[0\]\.headers\[2\]: a header object has exactly one key$/,
    );
  });

  it('PROTOCOL §2: a header that is not an object is rejected', () => {
    expectRule(
      withEnvelopeHeaders([...BASE, 'Subject: Hi' as unknown as H]),
      'invalid_header',
      'envelope[0].headers[3]',
      /object/,
    );
  });

  it.each([
    ['a space', 'X Foo'],
    ['a colon', 'X:Foo'],
    ['the empty name', ''],
    ['a non-ASCII letter', 'Sübject'],
    ['a control character', 'X\u0001Foo'],
  ])('RFC 5322 §3.6.8: a header name with %s is rejected', (_label, name) => {
    expectRule(
      withEnvelopeHeaders([...BASE, { [name]: 'value' }]),
      'invalid_header',
      'envelope[0].headers[3]',
      /is not a header name/,
    );
  });

  it.each([
    ['a number', 42],
    ['null', null],
    ['a boolean', true],
    ['an object', { text: 'Hi' }],
  ])('PROTOCOL §2: a header value that is %s is rejected', (_label, value) => {
    expectRule(
      withEnvelopeHeaders([...BASE, { Subject: value }]),
      'invalid_header',
      'envelope[0].headers[3]',
      /Subject: a header value is a string/,
    );
  });

  it('PROTOCOL §2: an array value in an envelope header (To) is rejected', () => {
    expectRule(
      withEnvelopeHeaders([BASE[0]!, BASE[1]!, { To: ['bob@example.net', 'carol@example.org'] }]),
      'invalid_header',
      'envelope[0].headers[2]',
      /To: only the Content-Type of a leaf part has an array value/,
    );
  });

  it('PROTOCOL §2: an array Content-Type in an envelope block is rejected', () => {
    expectRule(
      withEnvelopeHeaders([...BASE, { 'Content-Type': [externalBody(5), 'text/plain'] }]),
      'invalid_header',
      'envelope[0].headers[3]',
      /only the Content-Type of a leaf part has an array value/,
    );
  });

  it('PROTOCOL §2: an array Content-Type on a multipart (non-leaf) part is rejected', () => {
    const m = draft();
    m.body.parts = [{ headers: [{ 'Content-Type': [externalBody(5), 'text/plain'] }], parts: [leaf()] }];
    expectRule(
      m,
      'invalid_header',
      'body.parts[0].headers[0]',
      /only the Content-Type of a leaf part has an array value/,
    );
  });

  it('PROTOCOL §2: an array value in another header of a leaf part is rejected', () => {
    expectRule(
      withLeafHeaders([...leaf().headers, { 'Content-Language': ['en', 'de'] }]),
      'invalid_header',
      'body.parts[0].headers[3]',
      /Content-Language: only the Content-Type of a leaf part has an array value/,
    );
  });

  it.each([
    ['CRLF (header injection)', 'Hello\r\nBcc: eve@example.org'],
    ['a bare LF', 'Hello\nWorld'],
    ['a bare CR', 'Hello\rWorld'],
    ['NUL', 'Hello\u0000'],
    ['DEL', 'Hello\u007f'],
  ])('RFC 5322 §2.2: %s in a header value is rejected', (_label, value) => {
    expectRule(
      withEnvelopeHeaders([...BASE, { Subject: value }]),
      'invalid_header',
      'envelope[0].headers[3]',
      /Subject: control characters/,
    );
  });

  it('RFC 5322 §2.2: CR/LF inside a leaf Content-Type element is rejected', () => {
    expectRule(
      withLeafHeaders([
        { 'Content-Disposition': 'inline' },
        { 'Content-ID': cidOf('hello') },
        { 'Content-Type': [externalBody(5), 'text/plain\r\nX-Evil: 1'] },
      ]),
      'invalid_header',
      'body.parts[0].headers[2]',
      /control characters/,
    );
  });
});

describe('parseMessage: envelope header rules (PROTOCOL §3)', () => {
  const singletonValue: Record<(typeof SINGLETON_HEADERS)[number], [string, string]> = {
    From: ['Alice <alice@example.com>', 'Mallory <mallory@example.com>'],
    To: ['bob@example.net', 'carol@example.org'],
    Cc: ['bob@example.net', 'carol@example.org'],
    Bcc: ['bob@example.net', 'carol@example.org'],
    'Forwarded-From': ['bob@example.net', 'mallory@example.net'],
    'Forwarded-To': ['dave@example.org', 'eve@example.org'],
    'Message-ID': ['<m1@example.com>', '<m2@example.com>'],
  };

  it.each(SINGLETON_HEADERS.map((name) => [name]))('PROTOCOL §3: %s appears at most once in a block', (name) => {
    const [first, second] = singletonValue[name];
    const headers: H[] = [
      { Subject: 'Hi' },
      { [name]: first },
      { Received: 'from example.com by example.net; Sun, 22 Dec 2024 20:49:35 +0000' },
      { [name]: second },
    ];
    expectRule(
      withEnvelopeHeaders(headers),
      'duplicate_header',
      'envelope[0].headers[3]',
      new RegExp(`^envelope\\[0\\]\\.headers\\[3\\]: ${name} appears more than once in a block`),
    );
  });

  it.each([
    ['Date', 'garbage', /Date: "garbage" is not an RFC 5322 date-time/],
    ['Date', 'Sun, 22 Dec 2024 20:49:35 GMT', /is not an RFC 5322 date-time/],
    ['Date', 'Mon, 22 Dec 2024 20:49:35 +0100', /the wrong day of the week/],
    ['Date', 'Sun, 31 Feb 2024 20:49:35 +0100', /names no real moment/],
    ['Received', 'from example.com by example.net', /Received ends with "; " and the date/],
    [
      'Received',
      'from example.com by example.net; yesterday',
      /Received: the date "yesterday" is not an RFC 5322 date-time/,
    ],
  ] as const)('docs/protocol.md §1: a %s of %j is refused (invalid_header)', (name, value, message) => {
    expectRule(withEnvelopeHeaders([...BASE, { [name]: value }]), 'invalid_header', 'envelope[0].headers[3]', message);
  });

  it('docs/protocol.md §1: dates in the RFC 5322 form without obsolete syntax are read, names in any case', () => {
    for (const value of [
      'Sun, 22 Dec 2024 20:49:35 +0100',
      'sun, 22 DEC 2024 20:49:35 +0100',
      '22 Dec 2024 20:49 -0000',
      'Sun, 22 Dec 2024 20:49:35 +0100 (CET)',
    ]) {
      expectValid(
        withEnvelopeHeaders([...BASE, { Date: value }, { Received: `from a.example by b.example; ${value}` }]),
      );
    }
  });

  it('PROTOCOL §3: a singleton header may appear once in each of several blocks', () => {
    expectValid(forwardChain());
  });

  it('PROTOCOL §3 (docs/protocol.md): field names are case-insensitive (RFC 5322 §1.2.2), so FROM beside From is refused: protocol headers have one spelling', () => {
    const headers: H[] = [...BASE, { FROM: 'Mallory <mallory@example.com>' }];
    expectRule(
      withEnvelopeHeaders(headers),
      'invalid_header',
      'envelope[0].headers[3]',
      /must be spelled exactly so, not FROM/,
    );
  });

  it('docs/protocol.md: a protocol header in another spelling is refused even alone (from, message-id)', () => {
    const headers: H[] = [BASE[0]!, { from: 'Alice <alice@example.com>' }, BASE[2]!];
    expectRule(
      withEnvelopeHeaders(headers),
      'invalid_header',
      'envelope[0].headers[1]',
      /From must be spelled exactly so/,
    );
  });

  it('PROTOCOL §3: From holds one mailbox; two mailboxes are rejected', () => {
    expectRule(
      withEnvelopeHeaders([BASE[0]!, { From: 'alice@example.com, mallory@example.com' }, BASE[2]!]),
      'invalid_address',
      'envelope[0].headers[1]',
      /^envelope\[0\]\.headers\[1\]: From: exactly one mailbox expected/,
    );
  });

  it('PROTOCOL §3: Forwarded-From holds one mailbox; two mailboxes are rejected', () => {
    expectRule(
      withEnvelopeHeaders([...BASE, { 'Forwarded-From': 'bob@example.net, mallory@example.net' }]),
      'invalid_address',
      'envelope[0].headers[3]',
      /Forwarded-From: exactly one mailbox expected/,
    );
  });

  it('RFC 5322 §3.4: a malformed From is rejected', () => {
    expectRule(
      withEnvelopeHeaders([BASE[0]!, { From: 'Alice alice@example.com' }, BASE[2]!]),
      'invalid_address',
      'envelope[0].headers[1]',
      /From: /,
    );
  });

  it.each(['To', 'Cc', 'Bcc', 'Forwarded-To'])('RFC 5322 §3.4: a malformed %s is rejected', (name) => {
    expectRule(
      withEnvelopeHeaders([BASE[0]!, BASE[1]!, { [name]: 'Bob <bob@example.net' }]),
      'invalid_address',
      'envelope[0].headers[2]',
      new RegExp(`^envelope\\[0\\]\\.headers\\[2\\]: ${name}: `),
    );
  });

  it('RFC 5322 §3.4: an address list without an "@" is rejected', () => {
    expectRule(
      withEnvelopeHeaders([BASE[0]!, BASE[1]!, { To: 'bob, carol@example.org' }]),
      'invalid_address',
      'envelope[0].headers[2]',
      /To: /,
    );
  });

  it.each([
    ['no angle brackets', 'm1@example.com'],
    ['no "@"', '<m1.example.com>'],
    ['no closing bracket', '<m1@example.com'],
    ['a space inside', '<m 1@example.com>'],
    ['two "@"', '<m1@a@example.com>'],
    ['an empty id', '<>'],
    ['an empty id-left', '<@example.com>'],
  ])('RFC 5322 §3.6.4: a malformed Message-ID is rejected (%s)', (_label, value) => {
    expectRule(
      withEnvelopeHeaders([{ 'Message-ID': value }, BASE[1]!, BASE[2]!]),
      'invalid_header',
      'envelope[0].headers[0]',
      /Message-ID must be an RFC 5322 msg-id/,
    );
  });

  it.each([
    ['a comma in id-left (not atext)', '<a,b@example.com>'],
    ['an empty dot-atom label in id-left', '<a..b@example.com>'],
    ['an empty dot-atom label in id-right', '<a@example..com>'],
  ])('RFC 5322 §3.6.4: id-left and id-right are dot-atom-text; a Message-ID with %s is rejected', (_label, value) => {
    expectRule(
      withEnvelopeHeaders([{ 'Message-ID': value }, BASE[1]!, BASE[2]!]),
      'invalid_header',
      'envelope[0].headers[0]',
      /Message-ID must be an RFC 5322 msg-id/,
    );
  });
});

// ---------------------------------------------------------------------------------------------------------
// leaf parts

describe('parseMessage: leaf parts (PROTOCOL §2, RFC 2045, RFC 2183)', () => {
  it.each(['Content-ID', 'Content-Type', 'Content-Disposition'])(
    'PROTOCOL §2: a leaf part without %s is rejected',
    (name) => {
      const headers = leaf().headers.filter((h) => !Object.hasOwn(h, name));
      expectRule(
        withLeafHeaders(headers),
        'missing_header',
        'body.parts[0].headers',
        new RegExp(`a leaf part needs a ${name} header`),
      );
    },
  );

  it('PROTOCOL §2: a leaf part with two Content-ID headers is rejected', () => {
    expectRule(
      withLeafHeaders([...leaf().headers, { 'Content-ID': cidOf('other') }]),
      'duplicate_header',
      'body.parts[0].headers[3]',
      /^body\.parts\[0\]\.headers\[3\]: Content-ID appears more than once in a part/,
    );
  });

  it('PROTOCOL §2: a leaf part with two Content-Type headers is rejected', () => {
    expectRule(
      withLeafHeaders([...leaf().headers, { 'Content-Type': [externalBody(5), 'text/html'] }]),
      'duplicate_header',
      'body.parts[0].headers[3]',
      /Content-Type appears more than once in a part/,
    );
  });

  it('PROTOCOL §2: a leaf part with two Content-Disposition headers is rejected', () => {
    expectRule(
      withLeafHeaders([...leaf().headers, { 'Content-Disposition': 'attachment' }]),
      'duplicate_header',
      'body.parts[0].headers[3]',
      /Content-Disposition appears more than once in a part/,
    );
  });

  const valid43 = createHash('sha256').update('hello').digest('base64url');
  it.each([
    ['no angle brackets', valid43],
    ['a path traversal', '<../../etc/passwd>'],
    ['a 43-character path traversal', `<${'../'.repeat(14)}.>`],
    ['42 characters', `<${valid43.slice(0, 42)}>`],
    ['44 characters', `<${valid43}A>`],
    ['base64 padding', `<${valid43.slice(0, 42)}=>`],
    ['standard base64 "+" and "/"', `<+/${valid43.slice(2)}>`],
    ['a last character that cannot end a SHA-256 encoding', `<${valid43.slice(0, 42)}B>`],
    ['an empty id', '<>'],
    ['spaces inside the brackets', `< ${valid43} >`],
    ['an addr-spec form', '<part1@example.com>'],
  ])('PROTOCOL §2: a Content-ID is "<" + 43 base64url characters of a SHA-256 + ">"; %s is rejected', (_l, cid) => {
    expectRule(
      withLeafHeaders([{ 'Content-Disposition': 'inline' }, { 'Content-ID': cid }, leaf().headers[2]!]),
      'invalid_content_id',
      'body.parts[0].headers[1]',
      /Content-ID must be <B64U\(SHA-256\(resource\)\)>/,
    );
  });

  it('PROTOCOL §2: every base64url character that can end a SHA-256 encoding is accepted', () => {
    for (const last of 'AEIMQUYcgkosw048') {
      const cid = `<${valid43.slice(0, 42)}${last}>`;
      expect(() =>
        validateMessage(withLeafHeaders([leaf().headers[0]!, { 'Content-ID': cid }, leaf().headers[2]!])),
      ).not.toThrow();
    }
  });

  it('PROTOCOL §2: a leaf Content-Type that is a string is rejected', () => {
    expectRule(
      withLeafHeaders([leaf().headers[0]!, leaf().headers[1]!, { 'Content-Type': 'text/plain' }]),
      'invalid_content_type',
      'body.parts[0].headers[2]',
      /Content-Type of a leaf part is \[external-body type, media type of the resource\]/,
    );
  });

  it.each([
    ['one element', [externalBody(5)]],
    ['three elements', [externalBody(5), 'text/plain', 'text/html']],
  ])('PROTOCOL §2: a leaf Content-Type array with %s is rejected', (_label, value) => {
    expectRule(
      withLeafHeaders([leaf().headers[0]!, leaf().headers[1]!, { 'Content-Type': value }]),
      'invalid_content_type',
      'body.parts[0].headers[2]',
      /exactly two strings/,
    );
  });

  it('PROTOCOL §2: a leaf Content-Type element that is not a string is rejected', () => {
    expectRule(
      withLeafHeaders([leaf().headers[0]!, leaf().headers[1]!, { 'Content-Type': [externalBody(5), 5] }]),
      'invalid_content_type',
      'body.parts[0].headers[2]',
      /Content-Type\[1\] must be a string/,
    );
  });

  it('RFC 2045 §5.1, RFC 822 §3.4.3: comments between the tokens of the typed values are allowed and mean nothing', () => {
    const headers = [
      { 'Content-Disposition': 'attachment (a file); filename="notes (draft).txt" (the name)' },
      leaf().headers[1]!,
      {
        'Content-Type': [
          'message/external-body; (how) access-type="x-content-addressed-uri"; hash-algorithm=sha256 (SHA-2); size=5',
          'text/plain (Plain text \\(really\\)); charset = utf-8 (Unicode)',
        ],
      },
    ];
    expectValid(withLeafHeaders(headers));
    expect(parseParameterized('attachment (a file); filename="notes (draft).txt" (the name)', false)).toEqual({
      value: 'attachment',
      params: new Map([['filename', 'notes (draft).txt']]),
    });
    expect(parseParameterized('text/plain (Plain (nested) text); charset=utf-8', true).params.get('charset')).toBe(
      'utf-8',
    );
    // A comment left open is no value at all.
    expectRule(
      withLeafHeaders([
        leaf().headers[0]!,
        leaf().headers[1]!,
        { 'Content-Type': [externalBody(5), 'text/plain (oops'] },
      ]),
      'invalid_content_type',
      'body.parts[0].headers[2]',
      /Content-Type\[1\]: a comment "\(" is not closed/,
    );
  });

  it('RFC 2045 §5.1: the resource media type (second element) must be type/subtype', () => {
    expectRule(
      withLeafHeaders([leaf().headers[0]!, leaf().headers[1]!, { 'Content-Type': [externalBody(5), 'text'] }]),
      'invalid_content_type',
      'body.parts[0].headers[2]',
      /Content-Type\[1\]: expected a media type/,
    );
  });

  it.each([
    ['a type other than message/external-body', 'text/plain; access-type="x-content-addressed-uri"; size="5"'],
    ['a wrong access-type', 'message/external-body; access-type="URL"; hash-algorithm="sha256"; size="5"'],
    ['no access-type', 'message/external-body; hash-algorithm="sha256"; size="5"'],
    [
      'a wrong hash-algorithm',
      'message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha1"; size="5"',
    ],
    ['no hash-algorithm', 'message/external-body; access-type="x-content-addressed-uri"; size="5"'],
    ['no size', 'message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"'],
    ['a negative size', externalBody('-1')],
    ['an exponent size', externalBody('1e3')],
    ['a hexadecimal size', externalBody('0x10')],
    ['a fractional size', externalBody('1.5')],
    ['an empty size', externalBody('')],
    ['a size beyond 2^53', externalBody('99999999999999999')],
  ])('PROTOCOL §2: an external-body Content-Type with %s is rejected', (_label, value) => {
    expectRule(
      withLeafHeaders([leaf().headers[0]!, leaf().headers[1]!, { 'Content-Type': [value, 'text/plain'] }]),
      'invalid_content_type',
      'body.parts[0].headers[2]',
      /^body\.parts\[0\]\.headers\[2\]: Content-Type\[0\]: /,
    );
  });

  it.each([
    ['form-data', 'form-data; name="x"'],
    ['a disposition with a suffix', 'inline-ish'],
    ['an empty value', ''],
    ['a parameter without a type', 'filename="a.txt"'],
  ])('RFC 2183 / PROTOCOL §2: Content-Disposition other than inline or attachment is rejected (%s)', (_l, value) => {
    expectRule(
      withLeafHeaders([{ 'Content-Disposition': value }, leaf().headers[1]!, leaf().headers[2]!]),
      'invalid_content_disposition',
      'body.parts[0].headers[0]',
      /^body\.parts\[0\]\.headers\[0\]: Content-Disposition/,
    );
  });
});

// ---------------------------------------------------------------------------------------------------------
// duplicate members, YAML specifics

describe('parseMessage: duplicate member names and YAML hazards', () => {
  it('RFC 8259 §4 / PROTOCOL §2: duplicate member names in a header object are rejected', () => {
    const text = JSON.stringify(draft()).replace(
      '{"From":"Alice <alice@example.com>"}',
      '{"From":"Alice <alice@example.com>","From":"Mallory <mallory@example.com>"}',
    );
    expect(text).toContain('"From":"Mallory');
    const err = parseRejects(text);
    expect(err.code).toBe('invalid_shape');
    expect(err.message).toMatch(/member "From" appears twice in one object/);
  });

  it('duplicate member names are rejected when one of them is written with escapes ("\\u0046rom")', () => {
    const text = JSON.stringify(draft()).replace(
      '{"From":"Alice <alice@example.com>"}',
      '{"From":"Alice <alice@example.com>","\\u0046rom":"Mallory <mallory@example.com>"}',
    );
    const err = parseRejects(text);
    expect(err.code).toBe('invalid_shape');
    expect(err.message).toMatch(/member "From" appears twice/);
  });

  it('duplicate top-level members ("envelope" twice) are rejected', () => {
    const m = draft();
    const text = `{"envelope":${JSON.stringify(m.envelope)},"envelope":[{"headers":[{"From":"m@example.com"}]}],"body":${JSON.stringify(m.body)}}`;
    const err = parseRejects(text);
    expect(err.code).toBe('invalid_shape');
    expect(err.message).toMatch(/member "envelope" appears twice/);
  });

  it('the same member name in different objects is fine', () => {
    expectValid(forwardChain());
  });

  it('YAML: duplicate keys are rejected', () => {
    const yaml = `envelope:
  - headers:
      - Message-ID: <m1@example.com>
        Message-ID: <m2@example.com>
body:
  parts: []
`;
    const err = parseRejects(yaml);
    expect(err.code).toBe('invalid_syntax');
    expect(err.message).toMatch(/not valid YAML: .*unique/);
  });

  it('docs/protocol.md §2.2: an alias bomb ("billion laughs") is rejected: message YAML has no anchors or aliases', () => {
    const names = 'abcdefghi';
    const lines = [`a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]`];
    for (let i = 1; i < names.length; i++) {
      lines.push(
        `${names[i]}: &${names[i]} [${Array(9)
          .fill(`*${names[i - 1]}`)
          .join(',')}]`,
      );
    }
    const err = parseRejects(lines.join('\n'), { format: 'yaml' });
    expect(err.code).toBe('invalid_syntax');
    expect(err.message).toMatch(/anchors|aliases/);
  });
});

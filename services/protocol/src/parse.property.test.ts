/**
 * Property tests of the validating parser (PROTOCOL.md §2–3) with fast-check.
 *
 * - valid Placeholder Messages, generated with realistic headers, read back from their JSON and YAML renderings
 *   with every digest unchanged;
 * - mutated renderings (text, byte and structure mutations), arbitrary JSON values, arbitrary strings and bytes:
 *   `parseMessage` / `validateMessage` either accept something that really is a message or throw a ProtocolError,
 *   never anything else, and never take long;
 * - duplicate member names are rejected in JSON and YAML alike.
 *
 * Reproduce a failure with the seed fast-check prints: `FC_SEED=<seed> npx vitest run <this file>`.
 * `FC_SCALE=10` multiplies every run count for a longer fuzzing session.
 */
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatDate } from './date.js';
import { assertionDigest, bodyDigest, contentId, recipientsDigest } from './digests.js';
import { ProtocolError, type ProtocolErrorCode } from './errors.js';
import type { Block, Header, Message, Part } from './message.js';
import { externalContentType } from './mime.js';
import { DEFAULT_LIMITS, parseMessage, validateMessage, type InputFormat, type ParseLimits } from './parse.js';
import { messageToJson, messageToYaml } from './render.js';
import { digestReport } from './report.js';

const SEED = process.env.FC_SEED ? Number(process.env.FC_SEED) : 0x5ede1;
const SCALE = Number(process.env.FC_SCALE ?? '1') || 1;
/** fast-check parameters: a fixed seed (printed with any failure) and the run count, scaled by FC_SCALE. */
const runs = (numRuns: number) => ({ numRuns: Math.max(1, Math.round(numRuns * SCALE)), seed: SEED });

/** Per-test time limit for vitest, scaled with the run counts. */
const TIMEOUT = 60_000 * Math.max(1, SCALE);

/** One parse of a small input must never take this long (the inputs here are at most a few hundred KB). */
const BUDGET_MS = 2_000;

/** The codes a parsing or validation failure may carry (the first group of ProtocolErrorCode). */
const PARSE_CODES: readonly ProtocolErrorCode[] = [
  'message_too_large',
  'message_too_deep',
  'too_many_parts',
  'too_many_headers',
  'too_many_blocks',
  'header_too_long',
  'invalid_encoding',
  'invalid_syntax',
  'invalid_shape',
  'invalid_header',
  'duplicate_header',
  'missing_header',
  'invalid_content_id',
  'invalid_content_type',
  'invalid_content_disposition',
  'invalid_address',
];

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/** A header object built with CreateDataProperty, so that even `__proto__` becomes an own member. */
function hdr(name: string, value: string | readonly string[]): Header {
  return Object.fromEntries([[name, value]]) as Header;
}

function b64u(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64url');
}

function describeThrown(e: unknown): string {
  if (e instanceof Error) return `${e.constructor.name}: ${e.message}\n${e.stack ?? ''}`;
  try {
    return `a thrown non-Error ${typeof e}: ${String(e)}`;
  } catch {
    return `a thrown non-Error ${typeof e}`;
  }
}

type Outcome = { ok: true; message: Message } | { ok: false; error: ProtocolError };

/**
 * Runs one parser call and checks the contract every caller relies on: it returns a message or throws a
 * ProtocolError with a code and a message, and it returns quickly. Anything else fails the property.
 */
function outcome(call: () => Message): Outcome {
  const started = performance.now();
  let result: Outcome;
  try {
    result = { ok: true, message: call() };
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw new Error(`the parser threw ${describeThrown(e)}`, { cause: e });
    const code: unknown = e.code;
    if (typeof code !== 'string' || code === '') throw new Error(`a ProtocolError without a code: ${e.message}`);
    if (!PARSE_CODES.includes(e.code)) throw new Error(`unexpected code ${e.code}: ${e.message}`);
    if (typeof e.message !== 'string' || e.message === '') throw new Error(`a ProtocolError (${e.code}) without text`);
    result = { ok: false, error: e };
  }
  const elapsed = performance.now() - started;
  if (elapsed > BUDGET_MS) throw new Error(`one parser call took ${elapsed.toFixed(0)} ms`);
  return result;
}

function sameValue(actual: unknown, expected: unknown, what: string): void {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new Error(`${what} differs:\n  got      ${JSON.stringify(actual)}\n  expected ${JSON.stringify(expected)}`);
  }
}

// An independent statement of the structural rules of PROTOCOL.md §2–3, as a second opinion on anything the
// parser accepts. It checks shapes and the leaf headers, not the address grammar (that is address.ts's job).
const SINGLETONS = new Set(['From', 'To', 'Cc', 'Bcc', 'Forwarded-From', 'Forwarded-To', 'Message-ID']);
const FIELD_NAME = /^[!-9;-~]+$/;
// eslint-disable-next-line no-control-regex -- control characters are what it looks for
const CONTROL_BUT_TAB = /[\u0000-\u0008\u000a-\u001f\u007f]/;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function headerProblem(h: unknown, leaf: boolean): string | undefined {
  if (!isRecord(h) || Object.keys(h).length !== 1) return 'a header is an object with one member';
  const [name, value] = Object.entries(h)[0]!;
  if (!FIELD_NAME.test(name)) return `bad header name ${JSON.stringify(name)}`;
  const values = Array.isArray(value) ? value : [value];
  if (Array.isArray(value) && !(leaf && name === 'Content-Type' && value.length === 2)) return 'array value';
  for (const s of values) {
    if (typeof s !== 'string') return `${name}: not a string`;
    if (CONTROL_BUT_TAB.test(s) || !s.isWellFormed()) return `${name}: control character or lone surrogate`;
  }
  return undefined;
}

function partProblem(p: unknown, depth: number, count: { parts: number }): string | undefined {
  if (depth > 16 || ++count.parts > 1000) return 'too deep or too many parts';
  if (!isRecord(p) || !Array.isArray(p.headers)) return 'a part has a headers array';
  if (Object.keys(p).some((k) => k !== 'headers' && k !== 'parts')) return 'unknown member in a part';
  const leaf = !Object.hasOwn(p, 'parts');
  for (const h of p.headers) {
    const problem = headerProblem(h, leaf);
    if (problem) return problem;
  }
  if (leaf) {
    const headers = p.headers as Header[];
    const one = (name: string) => {
      const found = headers.filter((h) => Object.hasOwn(h, name));
      return found.length === 1 ? found[0]![name] : undefined;
    };
    const cid = one('Content-ID');
    const type = one('Content-Type');
    const disposition = one('Content-Disposition');
    if (typeof cid !== 'string' || !/^<[A-Za-z0-9_-]{43}>$/.test(cid)) return 'leaf Content-ID';
    if (!Array.isArray(type) || !/^\s*message\/external-body\s*;/i.test(type[0]!)) return 'leaf Content-Type';
    if (!/;\s*size\s*=\s*"?\d+"?\s*(;|$)/i.test(type[0]!) || !/^\s*[^\s/;]+\/[^\s/;]+/.test(type[1]!)) {
      return 'leaf Content-Type parameters';
    }
    if (typeof disposition !== 'string' || !/^\s*(inline|attachment)\s*(;|$)/i.test(disposition)) {
      return 'leaf Content-Disposition';
    }
    return undefined;
  }
  if (!Array.isArray(p.parts) || p.parts.length === 0) return 'a multipart part holds parts';
  for (const child of p.parts) {
    const problem = partProblem(child, depth + 1, count);
    if (problem) return problem;
  }
  return undefined;
}

function specProblem(m: unknown): string | undefined {
  if (!isRecord(m) || Object.keys(m).sort().join() !== 'body,envelope') return 'a message is {envelope, body}';
  if (!Array.isArray(m.envelope) || m.envelope.length === 0 || m.envelope.length > 64) return 'envelope';
  for (const b of m.envelope) {
    if (!isRecord(b) || Object.keys(b).length !== 1) return 'a block has one member';
    if (Object.hasOwn(b, 'jwt-assertion')) {
      const jws = b['jwt-assertion'];
      if (typeof jws !== 'string' || !/^[\w-]+\.[\w-]+\.[\w-]+$/.test(jws)) return 'compact JWS';
      continue;
    }
    if (!Array.isArray(b.headers) || b.headers.length === 0) return 'a headers block holds headers';
    const seen = new Set<string>();
    for (const h of b.headers) {
      const problem = headerProblem(h, false);
      if (problem) return problem;
      const name = Object.keys(h as object)[0]!;
      if (SINGLETONS.has(name)) {
        if (seen.has(name)) return `${name} twice in a block`;
        seen.add(name);
      }
    }
  }
  if (!isRecord(m.body) || Object.keys(m.body).join() !== 'parts' || !Array.isArray(m.body.parts)) return 'body';
  const count = { parts: 0 };
  for (const p of m.body.parts) {
    const problem = partProblem(p, 1, count);
    if (problem) return problem;
  }
  return undefined;
}

/**
 * What must hold for any message the parser accepted: validateMessage agrees, the independent rules agree,
 * its digests can be computed, and both renderings read back to the very same value.
 */
function checkAccepted(message: Message, limits: Partial<ParseLimits> = {}): void {
  const again = outcome(() => validateMessage(message, limits));
  if (!again.ok) throw new Error(`validateMessage rejects what parseMessage accepted: ${again.error.message}`);
  const problem = specProblem(message);
  if (problem !== undefined) throw new Error(`accepted a message that breaks §2–3: ${problem}`);
  const report = digestReport(message);
  for (const [text, format] of [
    [messageToJson(message), 'json'],
    [messageToYaml(message), 'yaml'],
  ] as const) {
    const back = outcome(() => parseMessage(text, { format }));
    if (!back.ok) throw new Error(`the ${format} rendering of an accepted message is rejected: ${back.error.message}`);
    sameValue(back.message, message, `the ${format} reading`);
    sameValue(digestReport(back.message), report, `the digests of the ${format} reading`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitraries for valid Placeholder Messages
// ---------------------------------------------------------------------------------------------------------------

/** Unicode text without control characters (C0, DEL, C1), well formed, from every plane. */
const cleanText = (maxLength: number, minLength = 0) =>
  fc
    .oneof(
      fc.string({ unit: 'binary', minLength, maxLength }),
      fc.string({ unit: 'grapheme', minLength, maxLength }),
      fc.constantFrom(
        'Quarterly report Q3 — final',
        'Re: Fwd: 会议纪要 (2024-12-22)',
        'Ünïcödé façade naïveté',
        'Приглашение на встречу',
        '🎉 Party at 8 🎂',
        'مرحبا بالعالم',
        'שלום עולם',
        'ζωή είναι ωραία',
        'null',
        'true',
        '123',
        '- not a list',
        'key: not a map',
        '"quoted" and \'single\'',
        '# not a comment',
        '  leading and trailing spaces  ',
        '',
      ),
    )
    .map((s) => s.replace(/\p{Cc}/gu, ''))
    .filter((s) => s.length >= minLength);

const asciiLetters = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';
/** One non-ASCII code point that is neither a control character nor a surrogate. */
const nonAsciiChar = fc
  .integer({ min: 0xa0, max: 0x10ffff })
  .filter((cp) => cp < 0xd800 || cp > 0xdfff)
  .map((cp) => String.fromCodePoint(cp));
const atextChar = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...asciiLetters, ...'0123456789') },
  { weight: 1, arbitrary: fc.constantFrom(..."!#$%&'*+-/=?^_`{|}~") },
  { weight: 2, arbitrary: nonAsciiChar },
);
/** An RFC 5322 atom with RFC 6532 UTF-8. */
const atom = fc.string({ unit: atextChar, minLength: 1, maxLength: 10 });
const letters = fc.string({ unit: fc.constantFrom(...asciiLetters), minLength: 1, maxLength: 8 });

const label = fc.oneof(
  fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/),
  fc.constantFrom('bücher', 'münchen', '例え', 'пример', 'xn--bcher-kva'),
);
const domain = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('example.com', 'example.net', 'example.org', 'mail.example.co.uk') },
  { weight: 2, arbitrary: fc.domain() },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.array(label, { minLength: 1, maxLength: 3 }), fc.constantFrom('com', 'de', 'jp', 'рф'))
      .map(([labels, tld]) => [...labels, tld].join('.')),
  },
);
const localPart = fc.oneof(
  fc.array(atom, { minLength: 1, maxLength: 3 }).map((atoms) => atoms.join('.')),
  fc.constantFrom('alice', 'bob', 'carol.smith', 'jürgen', '山田', 'user+tag', "o'neil"),
);
const addrSpec = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(localPart, domain).map(([l, d]) => `${l}@${d}`) },
  { weight: 1, arbitrary: fc.emailAddress() },
);

const quoted = (s: string) => `"${s.replace(/[\\"]/g, '\\$&')}"`;
const displayName = fc.oneof(
  fc.constantFrom('Jürgen Müller', '山田 太郎', 'Zoë Saldaña', 'Ævar Arnfjörð', 'Δημήτρης', 'Алиса', 'John Q. Public'),
  fc.array(atom, { minLength: 1, maxLength: 3 }).map((words) => words.join(' ')),
  cleanText(24, 1).map(quoted),
  fc.constantFrom('"O\'Brien, Pat"', '"Smith, John (Sales)"', '"\\"Nick\\" Name"', '"a\\\\b"'),
);
const mailbox = fc.oneof(
  { weight: 2, arbitrary: addrSpec },
  { weight: 1, arbitrary: addrSpec.map((a) => `<${a}>`) },
  { weight: 4, arbitrary: fc.tuple(displayName, addrSpec).map(([n, a]) => `${n} <${a}>`) },
  {
    weight: 1,
    arbitrary: fc.tuple(addrSpec, cleanText(16)).map(([a, c]) => `${a} (${c.replace(/[()\\]/g, '')})`),
  },
);
const addressList = fc.oneof(
  { weight: 5, arbitrary: fc.array(mailbox, { minLength: 1, maxLength: 4 }).map((l) => l.join(', ')) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(letters, fc.array(mailbox, { maxLength: 3 }))
      .map(([group, members]) => `${group}: ${members.join(', ')};`),
  },
);

const messageId = fc
  .tuple(fc.oneof(fc.uint8Array({ minLength: 6, maxLength: 18 }).map(b64u), fc.uuid()), domain)
  .map(([left, d]) => `<${left}@${d}>`);
const dateValue = fc
  .tuple(
    fc.date({ min: new Date('1990-01-01T00:00:00Z'), max: new Date('2099-12-31T23:59:59Z'), noInvalidDate: true }),
    fc.integer({ min: -12 * 60, max: 14 * 60 }),
  )
  .map(([d, offset]) => formatDate(d, offset));

/** A compact JWS shaped like the protocol's assertions (the signature is random bytes: nothing verifies it). */
const compactJws = fc
  .record({
    alg: fc.constantFrom('ES256', 'EdDSA', 'RS256'),
    kid: fc.uint8Array({ minLength: 4, maxLength: 12 }).map(b64u),
    iss: domain.map((d) => `https://as.${d}`),
    iat: fc.integer({ min: 1_600_000_000, max: 2_000_000_000 }),
    eht: fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b64u),
    sig: fc.uint8Array({ minLength: 64, maxLength: 64 }),
  })
  .map(({ alg, kid, iss, iat, eht, sig }) =>
    [
      b64u(Buffer.from(JSON.stringify({ alg, typ: 'eh+jwt', kid }))),
      b64u(
        Buffer.from(
          JSON.stringify({
            iss,
            azp: 'mta',
            scope: 'internet_mail',
            eh: { eht, ehl: ['Message-ID', 'From', 'Recipients-Digest', 'Body-Digest'] },
            iat,
            exp: iat + 604_800,
          }),
        ),
      ),
      b64u(sig),
    ].join('.'),
  );

const extensionHeader = fc.oneof(
  cleanText(40).map((v) => hdr('X-Mailer', v)),
  messageId.map((v) => hdr('In-Reply-To', v)),
  fc.array(messageId, { minLength: 1, maxLength: 3 }).map((ids) => hdr('References', ids.join(' '))),
  mailbox.map((v) => hdr('Reply-To', v)),
  fc.constantFrom('en', 'de-CH', 'ja').map((v) => hdr('Content-Language', v)),
  fc.tuple(letters, cleanText(30)).map(([n, v]) => hdr(`X-${n}`, v)),
);

const mediaType = fc.oneof(
  fc.constantFrom(
    'text/plain; charset=utf-8',
    'text/html; charset="utf-8"',
    'image/png',
    'image/jpeg',
    'application/pdf',
    'application/vnd.openxmlformats-officedocument.wordprocessingml.document',
    'message/rfc822',
    'text/calendar; method=REQUEST; charset=UTF-8',
    'application/octet-stream',
    'audio/ogg; codecs=opus',
  ),
  fc
    .tuple(letters, letters, fc.option(fc.tuple(letters, cleanText(12))))
    .map(([t, s, p]) => `${t}/${s}${p ? `; ${p[0]}=${quoted(p[1])}` : ''}`),
);

/** RFC 5987 ext-value: every byte but ALPHA / DIGIT / "-" / "." / "_" / "~" percent-encoded. */
const rfc5987 = (s: string) =>
  [...Buffer.from(s, 'utf8')]
    .map((b) => (/[A-Za-z0-9._~-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16)}`))
    .join('');
const filename = fc.oneof(
  fc.constantFrom('report.pdf', 'Übersicht 2024.xlsx', '写真 (1).jpg', 'résumé.docx', 'a "quoted" name.txt'),
  fc.tuple(cleanText(20, 1), fc.constantFrom('.pdf', '.png', '.txt', '.tar.gz', '')).map(([n, e]) => n + e),
);
const disposition = fc.oneof(
  fc.constant('inline'),
  filename.map((f) => `inline; filename=${quoted(f)}`),
  filename.map((f) => `attachment; filename=${quoted(f)}`),
  filename.map((f) => `attachment; filename*=UTF-8''${rfc5987(f)}`),
  fc.constant('attachment'),
);

const leafPart: fc.Arbitrary<Part> = fc
  .record({
    bytes: fc.uint8Array({ maxLength: 96 }),
    declaredSize: fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.maxSafeNat() }),
    media: mediaType,
    disposition,
    extra: fc.uniqueArray(
      fc.oneof(
        cleanText(30).map((v) => hdr('Content-Description', v)),
        fc.constantFrom('en', 'fr').map((v) => hdr('Content-Language', v)),
      ),
      { maxLength: 2, selector: (h) => Object.keys(h)[0] },
    ),
    order: fc.integer({ min: 0, max: 5 }),
  })
  .map(({ bytes, declaredSize, media, disposition, extra, order }) => {
    const headers = [
      hdr('Content-Disposition', disposition),
      hdr('Content-ID', contentId(bytes)),
      hdr('Content-Type', externalContentType(declaredSize ?? bytes.length, media)),
    ];
    // a realistic order most of the time, some rotation of it otherwise
    const rotated = [...headers.slice(order % 3), ...headers.slice(0, order % 3)];
    return { headers: [...rotated, ...extra] };
  });

const { part } = fc.letrec<{ part: Part; multipart: Part }>((tie) => ({
  part: fc.oneof({ maxDepth: 3, depthSize: 'small' }, leafPart, tie('multipart')),
  multipart: fc
    .tuple(
      fc.constantFrom('multipart/mixed', 'multipart/alternative', 'multipart/related; type="text/html"'),
      fc.array(tie('part'), { minLength: 1, maxLength: 3 }),
    )
    .map(([type, parts]) => ({ headers: [hdr('Content-Type', type)], parts })),
}));
const body = fc.array(part, { minLength: 1, maxLength: 3 }).map((parts) => ({ parts }));

const originFields = fc.record({
  messageId,
  from: mailbox,
  to: addressList,
  cc: fc.option(addressList),
  bcc: fc.option(fc.oneof(mailbox, fc.constant(''))),
  subject: fc.option(cleanText(60), { freq: 8 }),
  date: dateValue,
  extra: fc.array(extensionHeader, { maxLength: 3 }),
});
const forwardFields = fc.record({ to: addressList, from: mailbox, date: dateValue, jws: compactJws });

interface ValidCase {
  readonly message: Message;
  readonly kind: string;
}

/**
 * A valid Placeholder Message: a draft, an origin copy, a received copy, or a copy forwarded through up to
 * three hops (PROTOCOL.md §4–§7), with real Body-Digest, Recipients-Digest and JWT-Assertion-Digest values.
 */
const validMessage: fc.Arbitrary<ValidCase> = fc
  .record({
    body,
    origin: originFields,
    a1: compactJws,
    stage: fc.constantFrom('draft', 'origin', 'received', 'forwarded'),
    hops: fc.array(forwardFields, { minLength: 1, maxLength: 3 }),
    received: fc.tuple(domain, domain, dateValue),
  })
  .map(({ body, origin, a1, stage, hops, received }) => {
    const addressing = [
      hdr('Message-ID', origin.messageId),
      hdr('From', origin.from),
      hdr('To', origin.to),
      ...(origin.cc === null ? [] : [hdr('Cc', origin.cc)]),
      ...(origin.bcc === null ? [] : [hdr('Bcc', origin.bcc)]),
      ...(origin.subject === null ? [] : [hdr('Subject', origin.subject)]),
      ...origin.extra,
    ];
    if (stage === 'draft') return { kind: stage, message: { envelope: [{ headers: addressing }], body } };
    const h0 = [
      hdr('Date', origin.date),
      hdr('Recipients-Digest', recipientsDigest(addressing, 'origin')),
      hdr('Body-Digest', bodyDigest(body)),
      ...addressing,
    ];
    const envelope: Block[] = [{ 'jwt-assertion': a1 }, { headers: h0 }];
    const receiveBlock = (assertion: string) => [
      hdr('Message-ID', origin.messageId),
      hdr('JWT-Assertion-Digest', assertionDigest(assertion)),
      hdr('Received', `from ${received[0]} by ${received[1]}; ${received[2]}`),
    ];
    if (stage === 'received') envelope.unshift({ headers: receiveBlock(a1) });
    if (stage === 'forwarded') {
      let previous = a1;
      for (const hop of hops) {
        const recv = receiveBlock(previous);
        const forwardTo = hdr('Forwarded-To', hop.to);
        const h1 = [
          hdr('Date', hop.date),
          hdr('Recipients-Digest', recipientsDigest([forwardTo], 'forward')),
          forwardTo,
          hdr('Forwarded-From', hop.from),
          ...recv,
        ];
        envelope.unshift({ 'jwt-assertion': hop.jws }, { headers: h1 });
        previous = hop.jws;
      }
      envelope.unshift({ headers: receiveBlock(previous) });
    }
    return { kind: stage, message: { envelope, body } };
  });

// ---------------------------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------------------------

/** Strings that break things: syntax of both formats, escapes, controls, lone surrogates, odd Unicode. */
const NASTY = [
  '{',
  '}',
  '[',
  ']',
  '"',
  "'",
  ':',
  ',',
  ': ',
  '- ',
  '\n',
  '\r\n',
  '\t',
  ' ',
  '\\',
  '\\u',
  '\\ud800',
  '\\u0000',
  '#',
  '&a ',
  '*a',
  '&a',
  '!!int ',
  '!!binary ',
  '!tag ',
  '? ',
  '|',
  '>',
  '%YAML 1.1\n---\n',
  '@',
  '`',
  '<<: ',
  '---\n',
  '...\n',
  'null',
  'true',
  '0',
  '-1e999',
  '\u0000',
  '\u0007',
  '\u007f',
  '\u0085',
  '\u2028',
  '\ufeff',
  '\ud800',
  '\udfff',
  '😀',
  '<',
  '>',
  '@example.com',
  '"From"',
  '"__proto__"',
  '"constructor"',
  '{"a":1}',
  '[[[[',
  ']]]]',
  '{}',
  '[]',
  '""',
];
const anyCodeUnit = fc.integer({ min: 0, max: 0xffff }).map((u) => String.fromCharCode(u));
const nastyText = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...NASTY) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 8 }) },
  { weight: 1, arbitrary: fc.string({ unit: anyCodeUnit, maxLength: 4 }) },
);
const nastyString = fc.oneof(
  { weight: 4, arbitrary: nastyText },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      'alice@example.com\r\nBcc: mallory@evil.example',
      'x\u0000y',
      '<not-a-content-id>',
      '<AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB>',
      'message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"; size="-1"',
      'message/external-body; size="1"',
      'attachment; filename="unterminated',
      'form-data',
      'a@b, c@d',
      '"unterminated <a@b>',
      '(((((comment',
      '',
    ),
  },
  // around the 64 KiB header limit (name and value together)
  { weight: 1, arbitrary: fc.integer({ min: 65_500, max: 65_540 }).map((n) => 'x'.repeat(n)) },
);
const INVALID_UTF8: readonly (readonly number[])[] = [
  [0xff],
  [0xfe],
  [0x80],
  [0xbf],
  [0xc0, 0xaf],
  [0xc1, 0xbf],
  [0xe0, 0x80, 0xaf],
  [0xed, 0xa0, 0x80],
  [0xed, 0xbf, 0xbf],
  [0xf4, 0x90, 0x80, 0x80],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
  [0xe2, 0x82],
  [0xf0, 0x9f, 0x98],
  [0xef, 0xbb, 0xbf],
];

type TextMutation =
  | { kind: 'delete'; at: number; len: number }
  | { kind: 'insert'; at: number; text: string }
  | { kind: 'replace'; at: number; len: number; text: string }
  | { kind: 'truncate'; at: number }
  | { kind: 'dupHeader'; which: number; inObject: boolean }
  | { kind: 'nest'; at: number; depth: number; open: string; close: string };

type ByteMutation =
  | { kind: 'insertBytes'; at: number; bytes: readonly number[] }
  | { kind: 'setByte'; at: number; value: number }
  | { kind: 'deleteBytes'; at: number; len: number }
  | { kind: 'truncateBytes'; at: number };

const position = fc.nat({ max: 1_000_000 });
const textMutation: fc.Arbitrary<TextMutation> = fc.oneof(
  fc.record({ kind: fc.constant('delete'), at: position, len: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ kind: fc.constant('insert'), at: position, text: nastyText }),
  fc.record({ kind: fc.constant('replace'), at: position, len: fc.integer({ min: 1, max: 16 }), text: nastyText }),
  fc.record({ kind: fc.constant('truncate'), at: position }),
  fc.record({ kind: fc.constant('dupHeader'), which: fc.nat(), inObject: fc.boolean() }),
  fc
    .record({
      at: position,
      depth: fc.oneof(
        { weight: 9, arbitrary: fc.integer({ min: 1, max: 60 }) },
        { weight: 1, arbitrary: fc.integer({ min: 60, max: 3_000 }) },
      ),
      style: fc.constantFrom<[string, string]>(
        ['[', ']'],
        ['{"a":', '}'],
        ['{"parts":[', ']}'],
        ['{a: ', '}'],
        ['[', ''],
        ['- ', ''],
      ),
    })
    .map(({ at, depth, style }) => ({ kind: 'nest' as const, at, depth, open: style[0], close: style[1] })),
);
const byteMutation: fc.Arbitrary<ByteMutation> = fc.oneof(
  fc.record({
    kind: fc.constant('insertBytes'),
    at: position,
    bytes: fc.oneof(
      fc.constantFrom(...INVALID_UTF8),
      fc.uint8Array({ minLength: 1, maxLength: 8 }).map((b) => [...b]),
    ),
  }),
  fc.record({ kind: fc.constant('setByte'), at: position, value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('deleteBytes'), at: position, len: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('truncateBytes'), at: position }),
);

const JSON_HEADER = /\{\s*"((?:[^"\\]|\\.)*)"\s*:\s*("(?:[^"\\]|\\.)*"|\[[^\]]*\])\s*\}/g;
const YAML_HEADER = /^( *)- ([^\s:#'"][^:\n]*): (.*)$/gm;

function duplicateHeader(text: string, which: number, inObject: boolean): string {
  const json = [...text.matchAll(JSON_HEADER)];
  if (json.length > 0) {
    const m = json[which % json.length]!;
    const end = m.index + m[0].length;
    const copy = inObject ? `{"${m[1]}":${m[2]},"${m[1]}":${m[2]}}` : `${m[0]},${m[0]}`;
    return text.slice(0, m.index) + copy + text.slice(end);
  }
  const yaml = [...text.matchAll(YAML_HEADER)];
  if (yaml.length === 0) return text;
  const m = yaml[which % yaml.length]!;
  const end = m.index + m[0].length;
  const line = inObject ? `\n${m[1]}  ${m[2]}: ${m[3]}` : `\n${m[0]}`;
  return text.slice(0, end) + line + text.slice(end);
}

function applyText(text: string, mutation: TextMutation): string {
  const at = 'at' in mutation ? mutation.at % (text.length + 1) : 0;
  switch (mutation.kind) {
    case 'delete':
      return text.slice(0, at) + text.slice(at + mutation.len);
    case 'insert':
      return text.slice(0, at) + mutation.text + text.slice(at);
    case 'replace':
      return text.slice(0, at) + mutation.text + text.slice(at + mutation.len);
    case 'truncate':
      return text.slice(0, at);
    case 'dupHeader':
      return duplicateHeader(text, mutation.which, mutation.inObject);
    case 'nest':
      return (
        text.slice(0, at) +
        mutation.open.repeat(mutation.depth) +
        '"x"' +
        mutation.close.repeat(mutation.depth) +
        text.slice(at)
      );
  }
}

function applyBytes(bytes: Uint8Array, mutation: ByteMutation): Uint8Array {
  const at = mutation.at % (bytes.length + 1);
  switch (mutation.kind) {
    case 'insertBytes':
      return Buffer.concat([bytes.subarray(0, at), Uint8Array.from(mutation.bytes), bytes.subarray(at)]);
    case 'setByte': {
      if (bytes.length === 0) return bytes;
      const copy = Uint8Array.from(bytes);
      copy[at % bytes.length] = mutation.value;
      return copy;
    }
    case 'deleteBytes':
      return Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + mutation.len)]);
    case 'truncateBytes':
      return bytes.subarray(0, at);
  }
}

// Structure mutations work on a copy of the message as a plain JSON value.
type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Slot = { parent: Json[] | { [key: string]: Json }; key: string | number; value: Json };

function slots(value: Json, out: Slot[] = []): Slot[] {
  if (Array.isArray(value)) {
    value.forEach((v, i) => {
      out.push({ parent: value, key: i, value: v });
      slots(v, out);
    });
  } else if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      out.push({ parent: value, key: k, value: v });
      slots(v, out);
    }
  }
  return out;
}

function put(slot: Slot, value: Json): void {
  if (Array.isArray(slot.parent)) slot.parent[slot.key as number] = value;
  else Object.defineProperty(slot.parent, slot.key, { value, enumerable: true, writable: true, configurable: true });
}

type StructureMutation =
  | { kind: 'dupHeader'; pick: number; to: number }
  | { kind: 'swapArrayString'; pick: number; variant: number }
  | { kind: 'nest'; pick: number; depth: number; variant: number }
  | { kind: 'replace'; pick: number; value: Json }
  | { kind: 'replaceString'; pick: number; value: string }
  | { kind: 'removeMember'; pick: number; which: number }
  | { kind: 'addMember'; pick: number; name: string; value: Json }
  | { kind: 'renameHeader'; pick: number; name: string }
  | { kind: 'splice'; pick: number; start: number; count: number };

const memberName = fc.oneof(
  fc.constantFrom(
    'From',
    'To',
    'Bcc',
    'Message-ID',
    'Content-ID',
    'Content-Type',
    'Content-Disposition',
    'parts',
    'headers',
    'jwt-assertion',
    'envelope',
    'body',
    '__proto__',
    'constructor',
    'toString',
    'hasOwnProperty',
    '',
    'X Y',
    'X:Y',
    'Ünïcode',
  ),
  fc.string({ maxLength: 8 }),
);
const structureMutation: fc.Arbitrary<StructureMutation> = fc.oneof(
  fc.record({ kind: fc.constant('dupHeader'), pick: fc.nat(), to: fc.nat() }),
  fc.record({ kind: fc.constant('swapArrayString'), pick: fc.nat(), variant: fc.nat() }),
  fc.record({
    kind: fc.constant('nest'),
    pick: fc.nat(),
    depth: fc.integer({ min: 1, max: 40 }),
    variant: fc.nat(),
  }),
  fc.record({
    kind: fc.constant('replace'),
    pick: fc.nat(),
    value: fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json>,
  }),
  fc.record({ kind: fc.constant('replaceString'), pick: fc.nat(), value: nastyString }),
  fc.record({ kind: fc.constant('removeMember'), pick: fc.nat(), which: fc.nat() }),
  fc.record({
    kind: fc.constant('addMember'),
    pick: fc.nat(),
    name: memberName,
    value: fc.oneof(fc.constant([] as Json), fc.jsonValue({ maxDepth: 2 }) as fc.Arbitrary<Json>),
  }),
  fc.record({ kind: fc.constant('renameHeader'), pick: fc.nat(), name: memberName }),
  fc.record({ kind: fc.constant('splice'), pick: fc.nat(), start: fc.nat(), count: fc.integer({ min: 1, max: 3 }) }),
);

function applyStructure(root: Json, m: StructureMutation): void {
  const all = slots(root);
  const pick = <T>(list: T[]): T | undefined => (list.length === 0 ? undefined : list[m.pick % list.length]);
  switch (m.kind) {
    case 'dupHeader': {
      const lists = all.filter((s) => s.key === 'headers' && Array.isArray(s.value)).map((s) => s.value as Json[]);
      const list = pick(lists);
      if (!list || list.length === 0) return;
      list.splice(m.to % (list.length + 1), 0, structuredClone(list[m.pick % list.length]!));
      return;
    }
    case 'swapArrayString': {
      const slot = pick(all.filter((s) => Array.isArray(s.value) || typeof s.value === 'string'));
      if (!slot) return;
      if (Array.isArray(slot.value)) {
        const first = slot.value[0];
        put(slot, m.variant % 2 === 0 ? JSON.stringify(slot.value) : typeof first === 'string' ? first : '');
      } else {
        const s = slot.value as string;
        put(slot, m.variant % 3 === 0 ? [s] : m.variant % 3 === 1 ? [s, s] : []);
      }
      return;
    }
    case 'nest': {
      const slot = pick(all);
      if (!slot) return;
      let v: Json = slot.value;
      for (let i = 0; i < m.depth; i++) {
        if (m.variant % 3 === 0) v = [v];
        else if (m.variant % 3 === 1) v = { parts: [v] };
        else v = { headers: [{ 'Content-Type': 'multipart/mixed' }], parts: [v] };
      }
      put(slot, v);
      return;
    }
    case 'replace':
    case 'replaceString': {
      const slot = pick(all);
      if (slot) put(slot, m.value);
      return;
    }
    case 'removeMember': {
      const objects = [root, ...all.map((s) => s.value)].filter((v) => isRecord(v)) as { [key: string]: Json }[];
      const target = pick(objects);
      const keys = target ? Object.keys(target) : [];
      if (target && keys.length > 0) delete target[keys[m.which % keys.length]!];
      return;
    }
    case 'addMember': {
      const objects = [root, ...all.map((s) => s.value)].filter((v) => isRecord(v)) as { [key: string]: Json }[];
      const target = pick(objects);
      if (target) {
        Object.defineProperty(target, m.name, { value: m.value, enumerable: true, writable: true, configurable: true });
      }
      return;
    }
    case 'renameHeader': {
      const headers = all.filter(
        (s) => Array.isArray(s.parent) && isRecord(s.value) && Object.keys(s.value).length === 1,
      );
      const slot = pick(headers);
      if (!slot) return;
      const [[, value]] = Object.entries(slot.value as object) as [[string, Json]];
      put(slot, Object.fromEntries([[m.name, value]]) as Json);
      return;
    }
    case 'splice': {
      const arrays = all.map((s) => s.value).filter((v) => Array.isArray(v)) as Json[][];
      const target = pick(arrays);
      if (target && target.length > 0) target.splice(m.start % target.length, m.count);
      return;
    }
  }
}

function onlyStringScalars(v: unknown): boolean {
  if (typeof v === 'string') return true;
  if (Array.isArray(v)) return v.every(onlyStringScalars);
  if (isRecord(v)) return Object.values(v).every(onlyStringScalars);
  return false;
}

const formatOption = fc.constantFrom<InputFormat | undefined>(undefined, 'auto', 'json', 'yaml');
const smallLimits: fc.Arbitrary<Partial<ParseLimits>> = fc.record(
  {
    maxBytes: fc.integer({ min: 0, max: DEFAULT_LIMITS.maxBytes }),
    maxDepth: fc.integer({ min: 0, max: DEFAULT_LIMITS.maxDepth }),
    maxParts: fc.integer({ min: 0, max: 40 }),
    maxHeaders: fc.integer({ min: 0, max: 20 }),
    maxBlocks: fc.integer({ min: 0, max: 12 }),
    maxHeaderLength: fc.integer({ min: 0, max: 400 }),
  },
  { requiredKeys: [] },
);

/** Usually the default limits (null), sometimes small ones. */
const maybeLimits = fc.oneof({ weight: 5, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: smallLimits });

/** Parses any input, checks the contract, and when the input was JSON text checks it read exactly that JSON. */
function parseAny(input: string | Uint8Array, format: InputFormat | undefined, limits?: Partial<ParseLimits>): Outcome {
  const result = outcome(() => parseMessage(input, { format, limits }));
  if (result.ok) {
    checkAccepted(result.message, limits);
    const text =
      typeof input === 'string'
        ? input.replace(/^\uFEFF/, '')
        : new TextDecoder('utf-8', { fatal: true }).decode(input);
    if (format === 'json' || ((format ?? 'auto') === 'auto' && /^\s*[{[]/.test(text))) {
      sameValue(result.message, JSON.parse(text), 'the JSON reading');
    }
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------------------

describe('parseMessage: valid Placeholder Messages', () => {
  it(
    'every valid message reads back from its JSON and YAML renderings with identical digests',
    () => {
      fc.assert(
        fc.property(validMessage, ({ message }) => {
          // the generator itself: accepted as a value, and its own digest headers are right
          const direct = outcome(() => validateMessage(message));
          if (!direct.ok) throw new Error(`validateMessage rejects a generated message: ${direct.error.message}`);
          const expected = digestReport(message);
          const origin = message.envelope.findLast((b) => 'headers' in b);
          const bd = origin && 'headers' in origin ? origin.headers.find((h) => 'Body-Digest' in h) : undefined;
          if (bd !== undefined) expect(bd['Body-Digest']).toBe(expected.bodyDigest);

          const json = messageToJson(message);
          const yaml = messageToYaml(message);
          const readings: [string, string | Uint8Array, InputFormat | undefined][] = [
            ['json', json, 'json'],
            ['json (bytes, BOM, auto)', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(json)]), 'auto'],
            ['yaml', yaml, undefined],
            ['yaml (bytes)', Buffer.from(yaml), 'yaml'],
          ];
          const parsed = new Map<string, Message>();
          for (const [label, input, format] of readings) {
            const r = outcome(() => parseMessage(input, { format }));
            if (!r.ok) throw new Error(`the ${label} rendering is rejected: ${r.error.message}`);
            sameValue(digestReport(r.message), expected, `the digests of the ${label} reading`);
            sameValue(r.message, message, `the ${label} reading`);
            parsed.set(label, r.message);
          }
          // JSON -> YAML -> JSON and YAML -> JSON -> YAML keep every digest
          const viaYaml = outcome(() => parseMessage(messageToYaml(parsed.get('json')!)));
          const viaJson = outcome(() => parseMessage(messageToJson(parsed.get('yaml')!)));
          for (const r of [viaYaml, viaJson]) {
            if (!r.ok) throw new Error(`a re-rendering is rejected: ${r.error.message}`);
            sameValue(digestReport(r.message), expected, 'the digests after a JSON ↔ YAML round trip');
          }
        }),
        runs(400),
      );
    },
    TIMEOUT,
  );

  it(
    'everything validateMessage accepts, however odd, survives both renderings',
    () => {
      // Beyond realistic mail: any header name the grammar allows, any value without forbidden controls
      // (tabs, C1 controls, U+2028, BOMs, NEL included), any block layout.
      const value = fc
        .string({ unit: 'binary', maxLength: 20 })
        .map((s) => s.replace(new RegExp(CONTROL_BUT_TAB.source, 'g'), ''));
      const name = fc.string({
        unit: fc.constantFrom(...'!"#$%&\'()*+,-./0123456789;<=>?@AZaz[\\]^_`{|}~'),
        minLength: 1,
        maxLength: 8,
      });
      const header = fc
        .tuple(name, value)
        .filter(([n]) => !['From', 'To', 'Cc', 'Bcc', 'Forwarded-From', 'Forwarded-To', 'Message-ID'].includes(n))
        .map(([n, v]) => hdr(n, v));
      const block = fc.oneof(
        fc.array(header, { minLength: 1, maxLength: 5 }).map((headers) => ({ headers }) as Block),
        compactJws.map((jws) => ({ 'jwt-assertion': jws }) as Block),
      );
      const oddMessage = fc
        .tuple(fc.array(block, { minLength: 1, maxLength: 4 }), body, fc.array(header, { maxLength: 3 }))
        .map(([envelope, b, extra]) => {
          const leaf = b.parts.find((p) => !p.parts);
          if (leaf) (leaf.headers as Header[]).push(...extra);
          return { envelope, body: b } as Message;
        });
      fc.assert(
        fc.property(oddMessage, (message) => {
          const direct = outcome(() => validateMessage(message));
          if (!direct.ok) return; // e.g. an extra Content-ID made the leaf invalid: not this property's concern
          checkAccepted(message);
        }),
        runs(300),
      );
    },
    TIMEOUT,
  );
});

describe('parseMessage: mutated, arbitrary and hostile input', () => {
  it(
    'mutated renderings of valid messages: a real message or a ProtocolError, never anything else',
    () => {
      const mutatedInput = fc.record({
        valid: validMessage,
        structure: fc.array(structureMutation, { maxLength: 3 }),
        rendering: fc.constantFrom('json', 'compact', 'yaml'),
        text: fc.array(textMutation, { maxLength: 4 }),
        bytes: fc.array(byteMutation, { maxLength: 2 }),
        format: formatOption,
        limits: maybeLimits,
      });
      fc.assert(
        fc.property(mutatedInput, ({ valid, structure, rendering, text, bytes, format, limits }) => {
          const value = structuredClone(valid.message) as unknown as Json;
          for (const m of structure) applyStructure(value, m);
          const limitsOrDefault = limits ?? undefined;

          if (structure.length > 0) {
            const v = outcome(() => validateMessage(value, limitsOrDefault));
            if (v.ok && limits !== null) checkAccepted(v.message); // parseAny checks it otherwise
            if (limits === null) {
              // differential: validating the value and parsing its renderings agree on acceptance
              const j = parseAny(JSON.stringify(value), 'json');
              if (j.ok !== v.ok) throw new Error(`validateMessage ${v.ok} but JSON parse ${j.ok}`);
              if (rendering === 'yaml' && onlyStringScalars(value)) {
                const y = parseAny(messageToYaml(value as unknown as Message), 'yaml');
                if (y.ok !== v.ok) throw new Error(`validateMessage ${v.ok} but YAML parse ${y.ok}`);
              }
            }
          }

          let rendered =
            rendering === 'yaml'
              ? messageToYaml(value as unknown as Message)
              : rendering === 'compact'
                ? JSON.stringify(value)
                : messageToJson(value as unknown as Message);
          for (const m of text) rendered = applyText(rendered, m);
          let input: string | Uint8Array = rendered;
          if (bytes.length > 0) {
            let b: Uint8Array = Buffer.from(rendered, 'utf8');
            for (const m of bytes) b = applyBytes(b, m);
            input = b;
          }
          parseAny(input, format, limitsOrDefault);
        }),
        runs(2_500),
      );
    },
    TIMEOUT,
  );

  it(
    'arbitrary JSON values, as values and as JSON and YAML text',
    () => {
      fc.assert(
        fc.property(fc.jsonValue(), formatOption, (value, format) => {
          const v = outcome(() => validateMessage(value));
          if (v.ok) checkAccepted(v.message);
          parseAny(JSON.stringify(value) ?? 'null', format);
          parseAny(messageToYaml(value as unknown as Message), format);
        }),
        runs(2_000),
      );
    },
    TIMEOUT,
  );

  it(
    'arbitrary JavaScript values handed to validateMessage',
    () => {
      const anything = fc.anything({
        withBigInt: true,
        withBoxedValues: true,
        withDate: true,
        withMap: true,
        withNullPrototype: true,
        withObjectString: true,
        withSet: true,
        withSparseArray: true,
        withTypedArray: true,
        maxDepth: 4,
      });
      const shaped = fc.record({ envelope: anything, body: anything });
      fc.assert(
        fc.property(fc.oneof(anything, shaped), (value) => {
          const v = outcome(() => validateMessage(value));
          if (v.ok) checkAccepted(v.message); // only a real message may pass
        }),
        runs(1_000),
      );
    },
    TIMEOUT,
  );

  it(
    'arbitrary strings: Unicode, lone surrogates, syntax soup',
    () => {
      const syntaxSoup = fc.string({
        unit: fc.constantFrom(...'{}[]",:-?&*!|>#\'%@` \n\tabyz0'.split(''), '\\u', 'From', 'envelope', 'body'),
        maxLength: 80,
      });
      const text = fc.oneof(
        fc.string({ unit: 'binary', maxLength: 200 }),
        fc.string({ unit: 'grapheme', maxLength: 100 }),
        fc.string({ unit: anyCodeUnit, maxLength: 100 }),
        syntaxSoup,
        fc.json(),
      );
      fc.assert(
        fc.property(text, formatOption, maybeLimits, (input, format, limits) => {
          parseAny(input, format, limits ?? undefined);
        }),
        runs(2_500),
      );
    },
    TIMEOUT,
  );

  it(
    'arbitrary bytes, invalid UTF-8 included',
    () => {
      const bytes = fc.oneof(
        fc.uint8Array({ maxLength: 300 }),
        fc
          .array(
            fc.oneof(
              fc.constantFrom(...INVALID_UTF8),
              fc.uint8Array({ maxLength: 6 }).map((b) => [...b]),
            ),
            {
              maxLength: 20,
            },
          )
          .map((chunks) => Uint8Array.from(chunks.flat())),
      );
      fc.assert(
        fc.property(bytes, formatOption, (input, format) => {
          parseAny(input, format);
        }),
        runs(1_500),
      );
    },
    TIMEOUT,
  );

  it(
    'pathological inputs: deep nesting, alias bombs, cycles, size limits',
    () => {
      const leaf = `{"headers":[{"Content-Disposition":"inline"},{"Content-ID":"${contentId('x')}"},{"Content-Type":${JSON.stringify(externalContentType(1, 'text/plain'))}}]}`;
      const chain = (depth: number) => {
        let p = leaf;
        for (let i = 1; i < depth; i++) p = `{"headers":[{"Content-Type":"multipart/mixed"}],"parts":[${p}]}`;
        return `{"envelope":[{"headers":[{"From":"a@example.com"}]}],"body":{"parts":[${p}]}}`;
      };
      const laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
      for (let i = 1; i < 10; i++)
        laughs.push(
          `${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${`*${String.fromCharCode(96 + i)},`.repeat(9).slice(0, -1)}]`,
        );
      const inputs: [string, string | Uint8Array, InputFormat | undefined][] = [
        ['deep JSON arrays', '['.repeat(200_000), undefined],
        ['deep JSON objects', '{"a":'.repeat(100_000) + '1' + '}'.repeat(100_000), 'json'],
        ['deep YAML flow', '['.repeat(50_000), 'yaml'],
        ['deep YAML block', '- '.repeat(50_000) + 'x', 'yaml'],
        ['deep YAML maps', Array.from({ length: 2_000 }, (_, i) => `${' '.repeat(i)}a:`).join('\n'), 'yaml'],
        ['billion laughs', laughs.join('\n'), 'yaml'],
        ['self alias', 'envelope: &a [*a]\nbody: {parts: []}', 'yaml'],
        ['alias cycle', '&a [*a]', 'yaml'],
        ['parts 16 deep', chain(16), 'json'],
        ['parts 17 deep', chain(17), 'json'],
        ['1 MB + 1', ' '.repeat(DEFAULT_LIMITS.maxBytes) + '{}', undefined],
        ['1 MB of 3-byte characters', '€'.repeat(Math.ceil(DEFAULT_LIMITS.maxBytes / 3) + 1), undefined],
        ['lone surrogate', '{"envelope":"\ud800"}', undefined],
        ['escaped lone surrogate', '{"envelope":[{"headers":[{"Subject":"\\ud800"}]}],"body":{"parts":[]}}', 'json'],
        ['NUL', '\u0000', undefined],
        ['empty', '', undefined],
        ['BOM only', '\ufeff', undefined],
        ['invalid UTF-8', Uint8Array.from([0x7b, 0xff, 0x7d]), undefined],
        ['YAML directive soup', '%YAML 1.1\n%TAG ! tag:x,2024:\n--- !x\n...\n---\n', 'yaml'],
        ['many documents', '---\n{}\n---\n{}\n', 'yaml'],
        [
          'long address list',
          `{"envelope":[{"headers":[{"To":"${'a@b.c,'.repeat(10_000)}"}]}],"body":{"parts":[]}}`,
          'json',
        ],
        [
          'nested comments',
          `{"envelope":[{"headers":[{"From":"${'('.repeat(60_000)}"}]}],"body":{"parts":[]}}`,
          'json',
        ],
      ];
      const outcomes: Record<string, string> = {};
      for (const [label, input, format] of inputs) {
        const r = parseAny(input, format);
        outcomes[label] = r.ok ? 'accepted' : r.error.code;
      }
      expect(outcomes['parts 16 deep']).toBe('accepted');
      expect(outcomes['parts 17 deep']).toBe('message_too_deep');
      expect(outcomes['deep JSON arrays']).toBe('message_too_deep');
      expect(outcomes['1 MB + 1']).toBe('message_too_large');
      expect(outcomes['1 MB of 3-byte characters']).toBe('message_too_large');
      expect(outcomes['lone surrogate']).toBe('invalid_encoding');
      expect(outcomes['invalid UTF-8']).toBe('invalid_encoding');
    },
    TIMEOUT,
  );
});

describe('parseMessage: duplicate member names (two readers must never see different headers)', () => {
  const withReplacement = fc.record({ valid: validMessage, other: mailbox, which: fc.nat() });
  /** A value the parser would accept for that header on its own, so only the duplication can be the reason. */
  const replacementFor = (name: string, other: string): string =>
    ['From', 'To', 'Cc', 'Bcc', 'Forwarded-From', 'Forwarded-To', 'Reply-To'].includes(name)
      ? other
      : name === 'Message-ID'
        ? '<other@evil.example>'
        : name === 'Content-ID'
          ? contentId('other bytes')
          : name === 'Content-Disposition'
            ? 'attachment; filename="invoice.pdf.exe"'
            : 'overwritten';

  it(
    'JSON: a member repeated in a header object is rejected',
    () => {
      fc.assert(
        fc.property(withReplacement, ({ valid, other, which }) => {
          const text = JSON.stringify(valid.message);
          const headers = [...text.matchAll(/\{"([^"\\]+)":("(?:[^"\\]|\\.)*")\}/g)];
          const m = headers[which % headers.length]!;
          const dup = `{"${m[1]}":${m[2]},"${m[1]}":${JSON.stringify(replacementFor(m[1]!, other))}}`;
          const r = outcome(() => parseMessage(text.slice(0, m.index) + dup + text.slice(m.index + m[0].length)));
          expect(r.ok ? 'accepted' : r.error.code).toBe('invalid_shape');
        }),
        runs(300),
      );
    },
    TIMEOUT,
  );

  it(
    'YAML: a key repeated in a header mapping is rejected',
    () => {
      fc.assert(
        fc.property(withReplacement, ({ valid, other, which }) => {
          const text = messageToYaml(valid.message);
          const lines = [...text.matchAll(/^( *- )([A-Za-z][\w-]*): (.*)$/gm)];
          const m = lines[which % lines.length]!;
          const end = m.index + m[0].length;
          const dup = `\n${' '.repeat(m[1]!.length)}${m[2]}: ${JSON.stringify(replacementFor(m[2]!, other))}`;
          const r = outcome(() => parseMessage(text.slice(0, end) + dup + text.slice(end), { format: 'yaml' }));
          expect(r.ok ? 'accepted' : r.error.code).toBe('invalid_syntax');
        }),
        runs(300),
      );
    },
    TIMEOUT,
  );

  // Known to fail (see the report): the yaml library's `uniqueKeys` compares key nodes, and an alias node is not
  // equal to the scalar it names, so `&k From: a` followed by `*k : b` passes; toJS then keeps the last value.
  it(
    'YAML: a key repeated through an alias (&k From: … / *k : …) is rejected',
    () => {
      fc.assert(
        fc.property(withReplacement, ({ valid, other, which }) => {
          const text = messageToYaml(valid.message);
          // header lines only (envelope headers are indented 6, part headers 8 or more)
          const lines = [...text.matchAll(/^( {6,}- )([A-Za-z][\w-]*): (.*)$/gm)];
          const m = lines[which % lines.length]!;
          const end = m.index + m[0].length;
          const anchored = `${m[1]}&k ${m[2]}: ${m[3]}`;
          const dup = `\n${' '.repeat(m[1]!.length)}*k : ${JSON.stringify(replacementFor(m[2]!, other))}`;
          const input = text.slice(0, m.index) + anchored + dup + text.slice(end);
          const r = outcome(() => parseMessage(input, { format: 'yaml' }));
          if (r.ok) {
            const seen = JSON.stringify(r.message).includes(JSON.stringify(replacementFor(m[2]!, other)));
            throw new Error(
              `accepted a YAML mapping with the key ${m[2]} twice (the ${seen ? 'second' : 'first'} value won):\n${input}`,
            );
          }
        }),
        runs(200),
      );
    },
    TIMEOUT,
  );
});

/**
 * Building envelopes (PROTOCOL.md §4.2–4.3, the §5 receive block, the §7 forward block) against envelope.ts.
 * Digests are recomputed here independently (RFC 8785 for strings/arrays/objects, node:crypto).
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseAddressList } from './address.js';
import {
  draftHeaders,
  prepareForward,
  prepareSend,
  receiveBlock,
  transmittedEnvelope,
  withAssertion,
} from './envelope.js';
import { ProtocolError } from './errors.js';
import { FORWARD_EHL, ORIGIN_EHL } from './message.js';
import type { Body, Header, HeadersBlock, Message } from './message.js';
import { validateMessage } from './parse.js';

// ---------------------------------------------------------------------------------------------------------
// independent digests

function canonical(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const record = value as Record<string, unknown>;
    // Array.prototype.sort without a comparator compares UTF-16 code units, as RFC 8785 §3.2.3 requires
    const names = Object.keys(record).sort();
    return `{${names.map((n) => `${JSON.stringify(n)}:${canonical(record[n])}`).join(',')}}`;
  }
  throw new TypeError(`outside the reference subset: ${typeof value}`);
}
const sha = (data: string): string => createHash('sha256').update(data, 'utf8').digest('base64url');
const digestOf = (v: unknown): string => `<${sha(canonical(v))}>`;

// ---------------------------------------------------------------------------------------------------------
// fixtures

const JWS1 = 'eyJhbGciOiJFUzI1NiIsInR5cCI6ImVoK2p3dCJ9.eyJpc3MiOiJodHRwczovL2FzLmV4YW1wbGUuY29tIn0.c2lnLTE';
const JWS2 = 'eyJhbGciOiJFUzI1NiIsInR5cCI6ImVoK2p3dCJ9.eyJpc3MiOiJodHRwczovL2FzLmV4YW1wbGUubmV0In0.c2lnLTI';
const NOW = new Date('2024-12-22T19:49:35Z');
const DATE_PLUS_ONE = 'Sun, 22 Dec 2024 20:49:35 +0100';

const BODY: Body = {
  parts: [
    {
      headers: [
        { 'Content-Disposition': 'inline' },
        { 'Content-ID': `<${sha('hello')}>` },
        {
          'Content-Type': [
            'message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"; size="5"',
            'text/plain',
          ],
        },
      ],
    },
  ],
};

const TO = 'Bob <bob@example.net>, carol@example.org';
const CC = '"Doe, Jane" <jane@example.net>';

function draft(extra: Header[] = [], bcc?: string): Message {
  const headers: Header[] = [
    { 'Message-ID': '<m1@example.com>' },
    { From: 'Alice <alice@example.com>' },
    { To: TO },
    ...(bcc === undefined ? [] : [{ Bcc: bcc }]),
    { Cc: CC },
    { Subject: 'Hello' },
    ...extra,
  ];
  return { envelope: [{ headers }], body: BODY };
}

const headersOf = (m: Message, i = 0): readonly Header[] => (m.envelope[i] as HeadersBlock).headers;
const valueOf = (headers: readonly Header[], name: string): string | undefined => {
  const h = headers.find((x) => Object.hasOwn(x, name));
  return h === undefined ? undefined : (h[name] as string);
};
const names = (headers: readonly Header[]): string[] => headers.map((h) => Object.keys(h)[0]!);

/** [To, Cc, Bcc] present in a block, in that order (PROTOCOL §3), values as written. */
function expectedRecipientsDigest(headers: readonly Header[]): string {
  const r = ['To', 'Cc', 'Bcc'].flatMap((n) => {
    const v = valueOf(headers, n);
    return v === undefined ? [] : [{ [n]: v }];
  });
  return digestOf(r);
}

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

describe('prepareSend (PROTOCOL §4.2): Date, Recipients-Digest, Body-Digest on top', () => {
  it('prepends exactly Date, Recipients-Digest, Body-Digest, in that order, above the draft headers', () => {
    const d = draft();
    const [copy] = prepareSend(d, { date: NOW, offsetMinutes: 60 });
    const headers = headersOf(copy!.message);
    expect(names(headers).slice(0, 3)).toEqual(['Date', 'Recipients-Digest', 'Body-Digest']);
    expect(headers.slice(3)).toEqual(headersOf(d));
    expect(headers[0]).toEqual({ Date: DATE_PLUS_ONE });
    expect(headers[1]).toEqual({ 'Recipients-Digest': digestOf([{ To: TO }, { Cc: CC }]) });
    expect(headers[2]).toEqual({ 'Body-Digest': digestOf(BODY) });
  });

  it('the Date is UTC by default', () => {
    const [copy] = prepareSend(draft(), { date: NOW });
    expect(headersOf(copy!.message)[0]).toEqual({ Date: 'Sun, 22 Dec 2024 19:49:35 +0000' });
  });

  it('the copy is one headers block with the same body, and is a valid message', () => {
    const [copy] = prepareSend(draft(), { date: NOW });
    expect(copy!.message.envelope).toHaveLength(1);
    expect(copy!.message.body).toEqual(BODY);
    expect(() => validateMessage(copy!.message)).not.toThrow();
  });

  it('the draft is not modified', () => {
    const d = draft([], 'eve@example.org');
    const before = structuredClone(d);
    prepareSend(d, { date: NOW });
    expect(d).toEqual(before);
  });

  it('exchangeHeaders are the four ORIGIN_EHL header objects, in that order, with the copy’s values (§4.4)', () => {
    const [copy] = prepareSend(draft(), { date: NOW, offsetMinutes: 60 });
    const headers = headersOf(copy!.message);
    expect(copy!.exchangeHeaders).toEqual([
      { 'Message-ID': '<m1@example.com>' },
      { From: 'Alice <alice@example.com>' },
      { 'Recipients-Digest': valueOf(headers, 'Recipients-Digest') },
      { 'Body-Digest': digestOf(BODY) },
    ]);
    expect(copy!.exchangeHeaders.map((h) => Object.keys(h)[0])).toEqual([...ORIGIN_EHL]);
  });

  it('a draft that already has a Date is rejected', () => {
    const err = thrown(() => prepareSend(draft([{ Date: DATE_PLUS_ONE }]), { date: NOW }));
    expect(err.code).toBe('invalid_chain');
    expect(err.message).toMatch(/Date/);
    expect(thrown(() => draftHeaders(draft([{ Date: DATE_PLUS_ONE }]))).code).toBe('invalid_chain');
  });

  it.each([
    ['Recipients-Digest', `<${'R'.repeat(43)}>`],
    ['Body-Digest', `<${'B'.repeat(43)}>`],
    ['JWT-Assertion-Digest', `<${'J'.repeat(43)}>`],
    ['Received', 'from example.com by example.net; Sun, 22 Dec 2024 20:49:35 +0100'],
    ['Forwarded-From', 'bob@example.net'],
    ['Forwarded-To', 'bobby@example.org'],
  ])('PROTOCOL §4.1: a draft holding %s, which only mailboxes write, is rejected', (name, value) => {
    const err = thrown(() => prepareSend(draft([{ [name]: value }]), { date: NOW }));
    expect(err.code).toBe('invalid_header');
    expect(err.message).toContain(`no ${name} header`);
  });

  it('PROTOCOL §2: a draft has exactly one headers block; an envelope with an assertion is rejected', () => {
    const sent: Message = { envelope: [{ 'jwt-assertion': JWS1 }, ...draft().envelope], body: BODY };
    expect(thrown(() => prepareSend(sent, { date: NOW })).code).toBe('invalid_chain');
  });

  it('a draft without From, or without Message-ID, is rejected', () => {
    const noFrom: Message = { envelope: [{ headers: headersOf(draft()).filter((h) => !('From' in h)) }], body: BODY };
    const noId: Message = {
      envelope: [{ headers: headersOf(draft()).filter((h) => !('Message-ID' in h)) }],
      body: BODY,
    };
    expect(thrown(() => prepareSend(noFrom, { date: NOW })).code).toBe('missing_header');
    expect(thrown(() => prepareSend(noId, { date: NOW })).code).toBe('missing_header');
  });
});

describe('prepareSend (PROTOCOL §4.3): one copy per distinct view of the recipients', () => {
  // Bob is in To and in Bcc; Dave appears twice (domain case differs); Eve once.
  const BCC = 'dave@example.net, Eve <eve@example.org>, bob@example.net, Dave <dave@EXAMPLE.NET>';
  const copies = () => prepareSend(draft([], BCC), { date: NOW, offsetMinutes: 60 });

  it('one To/Cc copy plus one copy per distinct Bcc recipient', () => {
    const c = copies();
    expect(c).toHaveLength(4);
    expect(c.map((x) => x.view)).toEqual([
      'to-cc',
      { bcc: 'dave@example.net' },
      { bcc: 'eve@example.org' },
      { bcc: 'bob@example.net' },
    ]);
  });

  it('the To/Cc copy carries no Bcc and goes to the To/Cc recipients', () => {
    const toCc = copies()[0]!;
    const headers = headersOf(toCc.message);
    expect(names(headers)).not.toContain('Bcc');
    expect([...toCc.recipients].sort()).toEqual(['bob@example.net', 'carol@example.org', 'jane@example.net']);
    expect(valueOf(headers, 'Recipients-Digest')).toBe(digestOf([{ To: TO }, { Cc: CC }]));
  });

  it('each Bcc copy holds Bcc with that recipient alone, keeps To and Cc, and goes to that recipient only', () => {
    for (const copy of copies().slice(1)) {
      const headers = headersOf(copy.message);
      const view = copy.view as { bcc: string };
      expect(names(headers).filter((n) => n === 'Bcc')).toHaveLength(1);
      const bcc = parseAddressList(valueOf(headers, 'Bcc')!);
      expect(bcc.map((m) => m.address.toLowerCase())).toEqual([view.bcc]);
      expect(valueOf(headers, 'To')).toBe(TO);
      expect(valueOf(headers, 'Cc')).toBe(CC);
      expect(copy.recipients).toEqual([view.bcc]);
      expect(() => validateMessage(copy.message)).not.toThrow();
    }
  });

  it('each copy has its own Recipients-Digest over its own To, Cc, Bcc', () => {
    const c = copies();
    for (const copy of c) {
      const headers = headersOf(copy.message);
      expect(valueOf(headers, 'Recipients-Digest')).toBe(expectedRecipientsDigest(headers));
      expect(copy.exchangeHeaders[2]).toEqual({ 'Recipients-Digest': valueOf(headers, 'Recipients-Digest') });
    }
    expect(new Set(c.map((x) => valueOf(headersOf(x.message), 'Recipients-Digest'))).size).toBe(4);
  });

  it('every copy shares Date, Body-Digest and the body', () => {
    for (const copy of copies()) {
      const headers = headersOf(copy.message);
      expect(valueOf(headers, 'Date')).toBe(DATE_PLUS_ONE);
      expect(valueOf(headers, 'Body-Digest')).toBe(digestOf(BODY));
      expect(copy.message.body).toEqual(BODY);
    }
  });

  it('PROTOCOL §4.3: a Bcc recipient who is also in To gets a Bcc copy too ("each Bcc recipient gets a copy")', () => {
    const c = prepareSend(draft([], 'Bob <bob@example.net>'), { date: NOW });
    expect(c.map((x) => x.view)).toEqual(['to-cc', { bcc: 'bob@example.net' }]);
    expect(names(headersOf(c[0]!.message))).not.toContain('Bcc');
    expect(valueOf(headersOf(c[1]!.message), 'Bcc')).toBe('Bob <bob@example.net>');
    expect(c[0]!.recipients).toContain('bob@example.net');
    expect(c[1]!.recipients).toEqual(['bob@example.net']);
  });

  it('PROTOCOL §4.3: a Bcc recipient who is also in Cc gets a Bcc copy too', () => {
    const c = prepareSend(draft([], 'jane@example.net'), { date: NOW });
    expect(c.map((x) => x.view)).toEqual(['to-cc', { bcc: 'jane@example.net' }]);
  });

  it('only Bcc recipients: no To/Cc copy, one copy each', () => {
    const d: Message = {
      envelope: [
        {
          headers: [
            { 'Message-ID': '<m2@example.com>' },
            { From: 'alice@example.com' },
            { To: 'undisclosed-recipients:;' },
            { Bcc: 'x@example.net, y@example.org' },
          ],
        },
      ],
      body: BODY,
    };
    const c = prepareSend(d, { date: NOW });
    expect(c.map((x) => x.view)).toEqual([{ bcc: 'x@example.net' }, { bcc: 'y@example.org' }]);
    for (const copy of c) {
      const headers = headersOf(copy.message);
      expect(valueOf(headers, 'Recipients-Digest')).toBe(
        digestOf([{ To: 'undisclosed-recipients:;' }, { Bcc: valueOf(headers, 'Bcc') }]),
      );
    }
  });

  it('a draft without any recipient is rejected', () => {
    const d: Message = {
      envelope: [{ headers: [{ 'Message-ID': '<m3@example.com>' }, { From: 'alice@example.com' }] }],
      body: BODY,
    };
    expect(thrown(() => prepareSend(d, { date: NOW })).code).toBe('missing_header');
  });
});

describe('withAssertion and receiveBlock (PROTOCOL §4.7, §5)', () => {
  it('§4.7: the stored copy is [{"jwt-assertion": A1}, {"headers": H0}]', () => {
    const [copy] = prepareSend(draft(), { date: NOW });
    const stored = withAssertion(copy!.message, JWS1);
    expect(stored.envelope).toEqual([{ 'jwt-assertion': JWS1 }, { headers: headersOf(copy!.message) }]);
    expect(stored.body).toEqual(BODY);
  });

  it('§5: the receive block is Message-ID, JWT-Assertion-Digest of A1, Received "from X by Y; <date>"', () => {
    const block = receiveBlock({
      messageId: '<m1@example.com>',
      assertion: JWS1,
      senderDomain: 'example.com',
      receiverDomain: 'example.net',
      date: NOW,
      offsetMinutes: 60,
    });
    expect(block).toEqual({
      headers: [
        { 'Message-ID': '<m1@example.com>' },
        { 'JWT-Assertion-Digest': `<${sha(JWS1)}>` },
        { Received: `from example.com by example.net; ${DATE_PLUS_ONE}` },
      ],
    });
  });
});

describe('prepareForward (PROTOCOL §7)', () => {
  function received(): Message {
    const [copy] = prepareSend(draft(), { date: NOW });
    const stored = withAssertion(copy!.message, JWS1);
    const r = receiveBlock({
      messageId: '<m1@example.com>',
      assertion: JWS1,
      senderDomain: 'example.com',
      receiverDomain: 'example.net',
      date: new Date('2024-12-22T19:50:00Z'),
    });
    return { envelope: [r, ...stored.envelope], body: stored.body };
  }

  const FWD_TO = 'Dave <dave@example.org>, "Roe, Erin" <erin@example.org>';
  const FWD_FROM = 'Bob <bob@example.net>';
  const forward = () =>
    prepareForward(received(), {
      date: new Date('2024-12-22T21:00:00Z'),
      forwardedFrom: FWD_FROM,
      forwardedTo: FWD_TO,
    });

  it('prepends Date, Recipients-Digest, Forwarded-To, Forwarded-From on top of the receive block', () => {
    const r = received();
    const p = forward();
    const headers = headersOf(p.message);
    expect(headers.slice(0, 4)).toEqual([
      { Date: 'Sun, 22 Dec 2024 21:00:00 +0000' },
      { 'Recipients-Digest': digestOf([{ 'Forwarded-To': FWD_TO }]) },
      { 'Forwarded-To': FWD_TO },
      { 'Forwarded-From': FWD_FROM },
    ]);
    expect(headers.slice(4)).toEqual(headersOf(r));
  });

  it('the older blocks stay as they were: [H1, A1, H0]', () => {
    const r = received();
    const p = forward();
    expect(p.message.envelope).toHaveLength(3);
    expect(p.message.envelope.slice(1)).toEqual(r.envelope.slice(1));
    expect(p.message.body).toEqual(r.body);
  });

  it('returns the FORWARD_EHL exchange headers and A1 as the subject assertion', () => {
    const p = forward();
    expect(p.exchangeHeaders).toEqual([
      { 'Message-ID': '<m1@example.com>' },
      { 'Forwarded-From': FWD_FROM },
      { 'Recipients-Digest': digestOf([{ 'Forwarded-To': FWD_TO }]) },
      { 'JWT-Assertion-Digest': `<${sha(JWS1)}>` },
    ]);
    expect(p.exchangeHeaders.map((h) => Object.keys(h)[0])).toEqual([...FORWARD_EHL]);
    expect(p.subjectAssertion).toBe(JWS1);
    expect([...p.recipients].sort()).toEqual(['dave@example.org', 'erin@example.org']);
  });

  it('with A2 on top the transfer envelope is [A2, H1, A1, H0], a valid message', () => {
    const p = forward();
    const out = withAssertion(p.message, JWS2);
    expect(out.envelope.map((b) => ('jwt-assertion' in b ? 'A' : 'H'))).toEqual(['A', 'H', 'A', 'H']);
    expect(out.envelope[0]).toEqual({ 'jwt-assertion': JWS2 });
    expect(out.envelope[2]).toEqual({ 'jwt-assertion': JWS1 });
    expect(() => validateMessage(out)).not.toThrow();
  });

  it('a message that does not start with a receive block and its assertion is rejected', () => {
    const [copy] = prepareSend(draft(), { date: NOW });
    const opts = { date: NOW, forwardedFrom: FWD_FROM, forwardedTo: FWD_TO };
    expect(thrown(() => prepareForward(withAssertion(copy!.message, JWS1), opts)).code).toBe('invalid_chain');
    expect(thrown(() => prepareForward(copy!.message, opts)).code).toBe('invalid_chain');
  });

  it('a forward with no Forwarded-To recipient is rejected', () => {
    const err = thrown(() =>
      prepareForward(received(), { date: NOW, forwardedFrom: FWD_FROM, forwardedTo: 'undisclosed-recipients:;' }),
    );
    expect(err.code).toBe('missing_header');
  });
});

describe('transmittedEnvelope (PROTOCOL §6.2)', () => {
  const [copy] = prepareSend(draft(), { date: NOW });
  const atOrigin = withAssertion(copy!.message, JWS1);
  const recv = (assertion: string, from: string, by: string) =>
    receiveBlock({ messageId: '<m1@example.com>', assertion, senderDomain: from, receiverDomain: by, date: NOW });

  it('the origin copy [A1, H0] travels unchanged', () => {
    expect(transmittedEnvelope(atOrigin)).toEqual(atOrigin.envelope);
  });

  it('at the first recipient, [receive, A1, H0] travels as [A1, H0]', () => {
    const stored: Message = { envelope: [recv(JWS1, 'example.com', 'example.net'), ...atOrigin.envelope], body: BODY };
    expect(transmittedEnvelope(stored)).toEqual(atOrigin.envelope);
  });

  it('after a forward hop, [receive, A2, H1, A1, H0] travels as [A2, H1, A1, H0]: only the own block goes', () => {
    const atMbx2: Message = { envelope: [recv(JWS1, 'example.com', 'example.net'), ...atOrigin.envelope], body: BODY };
    const p = prepareForward(atMbx2, { date: NOW, forwardedFrom: 'bob@example.net', forwardedTo: 'dave@example.org' });
    const sent = withAssertion(p.message, JWS2);
    const atMbx3: Message = { envelope: [recv(JWS2, 'example.net', 'example.org'), ...sent.envelope], body: BODY };
    expect(transmittedEnvelope(atMbx3)).toEqual(sent.envelope);
    expect(transmittedEnvelope(sent)).toEqual(sent.envelope);
  });
});

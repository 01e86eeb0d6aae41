/**
 * Scenario 2: Cc and Bcc (PROTOCOL.md §4.3). Alice writes to Bob (To) and Carol (Cc), both of example.net,
 * with Bobby of example.org and Erin of example.net in Bcc. Erin shares her domain with the visible
 * recipients, the case where a careless mailbox would hand one copy to all; Bobby is the only recipient of
 * his domain, whose mailbox then fetches with nothing but his Bcc copy. Bob and Carol must never see a Bcc
 * recipient (no header, no envelope block, no assertion claim, no resource they can read names them);
 * each Bcc recipient gets a copy whose Bcc names themselves alone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  decodeJwt,
  headerValue,
  isAssertionBlock,
  isHeadersBlock,
  recipientsDigest,
  type Header,
} from '@federizer/protocol';
import {
  arrived,
  deliveries,
  draft,
  list,
  makePng,
  messageIdOf,
  render,
  send,
  startScenario,
  until,
  upload,
  verifyChain,
  type Scenario,
  type Stored,
} from './helpers.js';

/**
 * The Bcc recipients as a reader could find them: a name or an address, as a word. Not as any substring:
 * base64url (the assertion, the digests, the Content-IDs) spells out a short word now and then; a run once
 * failed on "...ugdxBerinVf..." in the JWT.
 */
const HIDDEN: Readonly<Record<string, RegExp>> = { bobby: /\bbobby\b/i, erin: /\berin\b/i };

/** Every string a reader of the stored message can see: the JSON, and the decoded assertions. */
function readable(m: Stored): string {
  const assertions = m.envelope.filter(isAssertionBlock).map((b) => {
    const { header, payload } = decodeJwt(b['jwt-assertion']);
    return JSON.stringify({ header, payload });
  });
  return [JSON.stringify(m), ...assertions].join('\n').toLowerCase();
}

function originHeaders(m: Stored): readonly Header[] {
  const origin = m.envelope.at(-1)!;
  if (!isHeadersBlock(origin)) throw new Error('no origin block');
  return origin.headers;
}

describe('scenario 2: Cc and Bcc', () => {
  let s: Scenario;
  let messageId: string;
  let sentId: string;
  let copies: number;
  const text = 'Dear all,\n\nthe minutes of Monday, and the whiteboard.\n';
  const photo = makePng(40, 30);

  beforeAll(async () => {
    s = await startScenario({ processes: false });
    await s.createUser('carol@example.net', { displayName: 'Carol' });
    await s.createUser('erin@example.net', { displayName: 'Erin' });
    const alice = await s.user('alice@example.com');
    const message = draft({
      from: 'Alice <alice@example.com>',
      to: 'Bob <bob@example.net>',
      cc: 'Carol <carol@example.net>',
      bcc: 'Bobby <bobby@example.org>, erin@example.net',
      subject: 'Minutes',
      parts: [
        { resource: await upload(alice, text, 'text/plain; charset=utf-8') },
        { resource: await upload(alice, photo, 'image/png'), filename: 'whiteboard.png' },
      ],
    });
    messageId = messageIdOf(message);
    const sent = await send(alice, message);
    sentId = sent.id;
    copies = sent.copies;
  });
  afterAll(() => s?.close());

  it('one signed copy for To and Cc, and one per Bcc recipient (PROTOCOL §4.3)', () => {
    expect(copies).toBe(3);
  });

  for (const visible of ['bob@example.net', 'carol@example.net']) {
    it(`${visible} (${visible.startsWith('bob@') ? 'To' : 'Cc'}) reads the message and never sees a Bcc recipient`, async () => {
      const user = await s.user(visible);
      const m = await arrived(user, messageId, { held: true });
      const h = originHeaders(m);
      expect(headerValue(h, 'Bcc')).toBeUndefined();
      expect(headerValue(h, 'To')).toBe('Bob <bob@example.net>');
      expect(headerValue(h, 'Cc')).toBe('Carol <carol@example.net>');
      // The signed Recipients-Digest covers To and Cc only: nobody else was a recipient of this copy.
      expect(headerValue(h, 'Recipients-Digest')).toBe(recipientsDigest(h, 'origin'));
      const chain = await verifyChain(s, m);
      expect([...chain.origin.recipients].sort()).toEqual(['bob@example.net', 'carol@example.net']);
      const seen = readable(m);
      for (const hidden of Object.values(HIDDEN)) expect(seen).not.toMatch(hidden);
      // No Bcc header, nor its name among the assertion's signed headers (a JSON string: quoted).
      expect(seen).not.toContain('"bcc"');
      // Nor in the resources they can download.
      const view = await render(user, m);
      expect(view.text).toBe(text);
      for (const part of view.parts)
        for (const hidden of Object.values(HIDDEN)) expect(hidden.test(part.bytes.toString('latin1'))).toBe(false);
      // One copy only: the Bcc copies that reached the same domain are not theirs.
      expect((await list(user)).filter((x) => x.messageId === messageId)).toHaveLength(1);
    });
  }

  for (const [hidden, name] of [
    ['bobby@example.org', 'Bobby <bobby@example.org>'],
    ['erin@example.net', 'erin@example.net'],
  ] as const) {
    it(`${hidden} (Bcc) gets a copy naming only themselves in Bcc, with every resource`, async () => {
      const user = await s.user(hidden);
      const m = await arrived(user, messageId, { held: true });
      const h = originHeaders(m);
      expect(headerValue(h, 'Bcc')).toBe(name);
      expect(headerValue(h, 'Recipients-Digest')).toBe(recipientsDigest(h, 'origin'));
      // The Bcc copy shows the visible recipients, and of the hidden ones only its own.
      expect([...(await verifyChain(s, m)).origin.recipients].sort()).toEqual(
        ['bob@example.net', 'carol@example.net', hidden].sort(),
      );
      const other = Object.keys(HIDDEN).find((x) => !hidden.startsWith(x))!;
      expect(readable(m)).not.toMatch(HIDDEN[other]!);
      const view = await render(user, m);
      expect(view.text).toBe(text);
      expect(view.attachments[0]!.bytes.equals(photo)).toBe(true);
    });
  }

  it("Bobby's mailbox fetched with his Bcc copy alone: Alice sees him fetched by example.org", async () => {
    const alice = await s.user('alice@example.com');
    const bobby = await until('the Bcc delivery to example.org fetched', async () => {
      const d = (await deliveries(alice, sentId)).find((x) => x.recipient === 'bobby@example.org');
      return d?.status === 'fetched' ? d : undefined;
    });
    expect(bobby.fetchedBy).toBe('example.org');
  });

  // Erin's mailbox holds her copy and every resource (one fetch serves the domain, PROTOCOL §6.4), so her
  // delivery is complete; the sender's status must say so, or an unsend would "withdraw" a message Erin
  // has already read.
  it('Alice sees every recipient fetched, each by their own domain', async () => {
    const alice = await s.user('alice@example.com');
    let last: unknown;
    const all = await until(
      'four deliveries fetched',
      async () => {
        const d = await deliveries(alice, sentId);
        last = d.map((x) => `${x.recipient} ${x.status}`);
        return d.length === 4 && d.every((x) => x.status === 'fetched') ? d : undefined;
      },
      20_000,
    ).catch((e: Error) => {
      throw new Error(`${e.message}; deliveries: ${JSON.stringify(last)}`);
    });
    expect(all.map((d) => [d.recipient, d.fetchedBy]).sort()).toEqual([
      ['bob@example.net', 'example.net'],
      ['bobby@example.org', 'example.org'],
      ['carol@example.net', 'example.net'],
      ['erin@example.net', 'example.net'],
    ]);
  });
});

/**
 * The size of a message as it is transferred, checked when it is sent, across two real domains (real ASes,
 * real HTTP, SQLite and PostgreSQL). The rule: bad input gets a clear, specific error and loses nothing.
 * The send's HTTP body is limited to `maxMessageBytes`, but a copy to another domain is transferred with
 * the assertion block its AS signed (about a kilobyte), and the receiver counts that against the same
 * limit: a message within a kilobyte of the limit was accepted (202), then refused by every receiver with
 * 413. It is now measured as it will be transferred and refused with 413 `too_large` before anything is
 * stored or queued; one exactly at the limit is sent, and the receiver accepts it. A forward adds its hop's
 * blocks (PROTOCOL.md §7) to a message that arrived within the limit: it is measured the same way.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { externalContentType, type Message } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';

const LIMIT = 16 * 1024;

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.each(testDatabases())('the size of a message as transferred, checked at send ($name)', (database) => {
  let fed: MailFederation;
  let alice: UserClient;
  let bob: UserClient;
  let resource: { contentId: string; size: number };

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net'], {
      database: database.create,
      config: { maxMessageBytes: LIMIT },
    });
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password', { forwardingPolicy: 'any' });
    alice = await fed.user('alice@example.com', 'alice password');
    bob = await fed.user('bob@example.net', 'bob password');
    const up = await alice.api('/resources', {
      method: 'POST',
      raw: 'Hello Bob\n',
      headers: { 'content-type': 'text/plain; charset=utf-8' },
    });
    resource = (await up.json()) as { contentId: string; size: number };
  });
  afterAll(() => fed?.close());

  /** A draft to Bob with a header of `padding` characters: the knob of its size. */
  function draft(padding: number): Message {
    return {
      envelope: [
        {
          headers: [
            { From: 'Alice <alice@example.com>' },
            { To: 'Bob <bob@example.net>' },
            { Subject: 'Sizes' },
            { 'Message-ID': `<${randomUUID()}@example.com>` },
            { 'X-Padding': 'p'.repeat(padding) },
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': resource.contentId },
              { 'Content-Type': externalContentType(resource.size, 'text/plain; charset=utf-8') },
            ],
          },
        ],
      },
    };
  }

  /** The size of a sent message's copy as the outbox transfers it: its `message` member, as the receiver counts. */
  async function transferredSize(sentId: string, message: Message): Promise<number> {
    const [share] = await fed.domains['example.com']!.mailbox.shares.sharesOf(sentId);
    return Buffer.byteLength(JSON.stringify({ envelope: share!.envelope, body: message.body }), 'utf8');
  }

  async function counts() {
    const knex = fed.domains['example.com']!.mailbox.knex;
    return {
      sent: (await knex('mail_messages').where({ address: 'alice@example.com', mailbox: 'sent' })).length,
      shares: (await knex('mail_shares')).length,
      transfers: (await knex('mail_jobs').where({ kind: 'transfer' })).length,
    };
  }

  it('the rule: a message within the limit by its HTTP body but over it as transferred is 413 too_large at send, nothing stored or queued; one exactly at the limit is sent and accepted', async () => {
    // What the transferred copy adds to the padding: measured on one sent.
    const probe = draft(1_000);
    const probeSent = await alice.api('/messages/send', { method: 'POST', json: { message: probe } });
    expect(probeSent.status, await probeSent.clone().text()).toBe(202);
    const probeId = ((await probeSent.json()) as { id: string }).id;
    const overhead = (await transferredSize(probeId, probe)) - 1_000;
    expect(overhead).toBeGreaterThan(700); // the assertion alone is several hundred bytes

    // Exactly at the limit once transferred: sent, transferred, and the receiver accepts it.
    const atLimit = draft(LIMIT - overhead);
    const sent = await alice.api('/messages/send', { method: 'POST', json: { message: atLimit } });
    expect(sent.status, await sent.clone().text()).toBe(202);
    const sentId = ((await sent.json()) as { id: string }).id;
    expect(await transferredSize(sentId, atLimit)).toBe(LIMIT);
    const delivery = await until('the transfer accepted by example.net', async () => {
      const d = (await (await alice.api(`/messages/${sentId}/deliveries`)).json()) as {
        deliveries: { status: string; detail?: string }[];
      };
      return d.deliveries.find((x) => x.status !== 'queued');
    });
    expect(delivery.status, delivery.detail).toMatch(/^(transferred|fetched)$/);

    // One byte more: its HTTP body is well within the limit, the transferred copy is one byte over.
    const over = draft(LIMIT - overhead + 1);
    const body = JSON.stringify({ message: over });
    expect(Buffer.byteLength(body)).toBeLessThan(LIMIT - 500);
    const before = await counts();
    const refused = await alice.api('/messages/send', { method: 'POST', json: { message: over } });
    expect(refused.status).toBe(413);
    const problem = (await refused.json()) as { error: string; error_description: string };
    expect(problem.error).toBe('too_large');
    expect(problem.error_description).toContain(`would be ${LIMIT + 1} bytes as transferred`);
    expect(problem.error_description).toContain(`at most ${LIMIT} bytes`);
    expect(await counts()).toEqual(before);
  });

  it('the rule, for a saved draft: sending one too large as transferred is 413 too_large, and the draft is kept', async () => {
    const probe = draft(1_000);
    const probeSent = await alice.api('/messages/send', { method: 'POST', json: { message: probe } });
    const overhead = (await transferredSize(((await probeSent.json()) as { id: string }).id, probe)) - 1_000;
    const saved = await alice.api('/drafts', { method: 'POST', json: { message: draft(LIMIT - overhead + 1) } });
    expect(saved.status, await saved.clone().text()).toBe(201);
    const { id } = (await saved.json()) as { id: string };
    const before = await counts();
    const refused = await alice.api(`/drafts/${id}/send`, { method: 'POST' });
    expect(refused.status).toBe(413);
    expect(((await refused.json()) as { error: string }).error).toBe('too_large');
    expect(await counts()).toEqual(before);
    expect((await alice.api(`/messages/${id}`)).status).toBe(200);
  });

  it('the rule, before signing: a copy over the limit even without its assertion is refused before the AS signs anything', async () => {
    const signed = async () => {
      const text = await (await fetch(`${fed.auth.domains['example.com']!.as.url}/metrics`)).text();
      return text
        .split('\n')
        .filter((l) => l.startsWith('federizer_auth_tokens_issued_total{') && l.includes('exchange="send"'))
        .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
    };
    const signedBefore = await signed();
    const before = await counts();
    // An HTTP body of exactly the limit: accepted by the parser, but its copy (with the Date the mailbox
    // stamps) is over the limit by more than the least an assertion block adds, before any is signed.
    const base = Buffer.byteLength(JSON.stringify({ message: draft(0) }));
    const message = draft(LIMIT - base);
    expect(Buffer.byteLength(JSON.stringify({ message }))).toBe(LIMIT);
    const refused = await alice.api('/messages/send', { method: 'POST', json: { message } });
    expect(refused.status).toBe(413);
    expect(((await refused.json()) as { error: string }).error).toBe('too_large');
    expect(await counts()).toEqual(before);
    expect(await signed()).toBe(signedBefore);
    // The count does count signatures: a message that fits is signed once.
    expect((await alice.api('/messages/send', { method: 'POST', json: { message: draft(10) } })).status).toBe(202);
    expect(await signed()).toBe(signedBefore + 1);
  });
  /** Sends `message` and waits until it is in Bob's inbox; answers its id there. */
  async function received(message: Message): Promise<string> {
    const sent = await alice.api('/messages/send', { method: 'POST', json: { message } });
    expect(sent.status, await sent.clone().text()).toBe(202);
    const messageId = (message.envelope[0] as { headers: Record<string, string>[] }).headers.find(
      (h) => 'Message-ID' in h,
    )!['Message-ID'];
    return until("the message in Bob's inbox", async () => {
      const list = (await (await bob.api('/messages?mailbox=inbox')).json()) as {
        messages: { id: string; messageId: string }[];
      };
      return list.messages.find((m) => m.messageId === messageId)?.id;
    });
  }

  async function netCounts() {
    const knex = fed.domains['example.net']!.mailbox.knex;
    return {
      shares: (await knex('mail_shares')).length,
      transfers: (await knex('mail_jobs').where({ kind: 'transfer' })).length,
    };
  }

  it('the rule, for a forward: a message that arrived at the limit is 413 too_large to forward, nothing queued; a smaller one forwards', async () => {
    const probe = draft(1_000);
    const probeSent = await alice.api('/messages/send', { method: 'POST', json: { message: probe } });
    const overhead = (await transferredSize(((await probeSent.json()) as { id: string }).id, probe)) - 1_000;
    const atLimit = await received(draft(LIMIT - overhead));
    const before = await netCounts();
    const refused = await bob.api(`/messages/${atLimit}/forward`, {
      method: 'POST',
      json: { to: 'alice@example.com' },
    });
    expect(refused.status).toBe(413);
    const problem = (await refused.json()) as { error: string; error_description: string };
    expect(problem.error).toBe('too_large');
    expect(problem.error_description).toMatch(
      /as transferred.*at most 16384 bytes: with this hop's blocks it cannot be forwarded/,
    );
    expect(await netCounts()).toEqual(before);
    // A message with room for the hop's blocks is forwarded.
    const small = await received(draft(1_000));
    const forwarded = await bob.api(`/messages/${small}/forward`, {
      method: 'POST',
      json: { to: 'alice@example.com' },
    });
    expect(forwarded.status, await forwarded.clone().text()).toBe(202);
  });

  it('the rule, for an automatic forward: the message too large to forward stays in the inbox and a notice says why', async () => {
    const rule = await bob.api('/forwarding', {
      method: 'PUT',
      json: { targets: ['alice@example.com'], keepCopy: false, enabled: true },
    });
    expect(rule.status, await rule.clone().text()).toBe(200);
    try {
      const start = await netCounts();
      const probe = draft(1_000);
      const probeSent = await alice.api('/messages/send', { method: 'POST', json: { message: probe } });
      const overhead = (await transferredSize(((await probeSent.json()) as { id: string }).id, probe)) - 1_000;
      // The probe fits: it is forwarded, a share of its own.
      await until('the probe forwarded', async () =>
        (await netCounts()).shares === start.shares + 1 ? true : undefined,
      );
      const before = await netCounts();
      await received(draft(LIMIT - overhead));
      const notice = await until('the notice', async () => {
        const list = (await (await bob.api('/messages?mailbox=inbox')).json()) as {
          messages: { id: string; subject: string }[];
        };
        return list.messages.find((m) => m.subject === 'Auto-forwarding failed');
      });
      const full = (await (await bob.api(`/messages/${notice.id}`)).json()) as {
        resources: { contentId: string }[];
      };
      const text = await (await bob.api(`/resources/${full.resources[0]!.contentId.slice(1, -1)}`)).text();
      expect(text).toMatch(/Reason: the message would be \d+ bytes as transferred/);
      expect(text).toContain('The message is kept in your inbox.');
      // The message at the limit added nothing to forward.
      expect(await netCounts()).toEqual(before);
    } finally {
      await bob.api('/forwarding', { method: 'PUT', json: { targets: [], keepCopy: true, enabled: false } });
    }
  });
});

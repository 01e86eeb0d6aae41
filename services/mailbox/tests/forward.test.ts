/**
 * Forwarding across three real domains (PROTOCOL.md §7, §6.5): Alice of example.com writes to Bob of
 * example.net, who forwards to his other address bobby@example.org, by hand or through a forwarding rule.
 * bobby's mailbox receives the two-hop chain `[A2, H1, A1, H0]` under its receive block and fetches the
 * resources from example.com, the origin. A rule without a copy makes example.net a pure relay: it never
 * fetches. The AS of example.net enforces Bob's forwarding policy (`any`, `manual`, `none`).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { externalContentType, headerValue, isHeadersBlock, type Block, type Message } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Summary {
  id: string;
  messageId: string;
  subject: string;
  mailbox: string;
}

interface Full extends Summary {
  envelope: Block[];
  body: Message['body'];
  resources: { contentId: string; status: string }[];
}

async function list(user: UserClient, mailbox: string): Promise<Summary[]> {
  const res = await user.api(`/messages?mailbox=${mailbox}&limit=200`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { messages: Summary[] }).messages;
}

async function read(user: UserClient, id: string): Promise<Full> {
  const res = await user.api(`/messages/${id}`);
  expect(res.status).toBe(200);
  return (await res.json()) as Full;
}

/** The message with that Message-ID in the mailbox, once it is there. */
function arrival(user: UserClient, messageId: string, mailbox = 'inbox'): Promise<Summary> {
  return until(`${messageId} in ${user.address}'s ${mailbox}`, async () =>
    (await list(user, mailbox)).find((m) => m.messageId === messageId),
  );
}

/** Every resource of the message held by the user's mailbox. */
function fetched(user: UserClient, id: string): Promise<Full> {
  return until(`the resources of ${id} held for ${user.address}`, async () => {
    const m = await read(user, id);
    return m.resources.length > 0 && m.resources.every((r) => r.status === 'held') ? m : undefined;
  });
}

describe.each(testDatabases())('forwarding across three domains ($name)', (database) => {
  let fed: MailFederation;
  let alice: UserClient;
  let bob: UserClient;
  let carol: UserClient;
  let bobby: UserClient;

  const net = () => fed.domains['example.net']!.mailbox;

  async function policy(forwardingPolicy: 'any' | 'manual' | 'none'): Promise<void> {
    const res = await fed.auth.domains['example.net']!.admin('/users/bob%40example.net', {
      method: 'PATCH',
      body: JSON.stringify({ forwardingPolicy }),
    });
    expect(res.status, await res.clone().text()).toBe(200);
  }

  async function rule(body: { targets: string[]; keepCopy: boolean; enabled: boolean }): Promise<void> {
    const res = await bob.api('/forwarding', { method: 'PUT', json: body });
    expect(res.status, await res.clone().text()).toBe(200);
  }

  /** Alice uploads fresh bytes and sends them to Bob; answers the Message-ID and the resource. */
  async function aliceWritesToBob(subject: string): Promise<{ messageId: string; contentId: string; bytes: Buffer }> {
    const bytes = randomBytes(3000);
    const up = await alice.api('/resources', {
      method: 'POST',
      raw: bytes,
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(up.status).toBe(201);
    const { contentId, size } = (await up.json()) as { contentId: string; size: number };
    const messageId = `<${randomUUID()}@example.com>`;
    const draft: Message = {
      envelope: [
        {
          headers: [
            { From: 'Alice <alice@example.com>' },
            { To: 'Bob <bob@example.net>' },
            { Subject: subject },
            { 'Message-ID': messageId },
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'attachment; filename="data.bin"' },
              { 'Content-ID': contentId },
              { 'Content-Type': externalContentType(size, 'application/octet-stream') },
            ],
          },
        ],
      },
    };
    const sent = await alice.api('/messages/send', { method: 'POST', json: { message: draft } });
    expect(sent.status, await sent.clone().text()).toBe(202);
    return { messageId, contentId, bytes };
  }

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net', 'example.org'], { database: database.create });
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password');
    await fed.auth.domains['example.net']!.createUser('carol@example.net', 'carol password');
    await fed.auth.domains['example.org']!.createUser('bobby@example.org', 'bobby password');
    alice = await fed.user('alice@example.com', 'alice password');
    bob = await fed.user('bob@example.net', 'bob password');
    carol = await fed.user('carol@example.net', 'carol password');
    bobby = await fed.user('bobby@example.org', 'bobby password');
  });
  afterAll(() => fed?.close());

  it('Bob forwards a message he received by hand: bobby gets the two-hop chain and fetches from example.com', async () => {
    const { messageId, contentId, bytes } = await aliceWritesToBob('Photos, please forward');
    const received = await arrival(bob, messageId);
    await fetched(bob, received.id);

    const res = await bob.api(`/messages/${received.id}/forward`, {
      method: 'POST',
      json: { to: 'Bobby <bobby@example.org>, carol@example.net' },
    });
    expect(res.status, await res.clone().text()).toBe(202);
    const answer = (await res.json()) as { messageId: string; deliveries: { recipient: string; status: string }[] };
    expect(answer.messageId).toBe(messageId);
    // carol's mailbox is Bob's: it has the message and the bytes at once, so her delivery is fetched already.
    expect(answer.deliveries).toEqual([
      { recipient: 'bobby@example.org', domain: 'example.org', status: 'queued', updatedAt: expect.any(Number) },
      {
        recipient: 'carol@example.net',
        domain: 'example.net',
        status: 'fetched',
        fetchedBy: 'example.net',
        fetchedAt: expect.any(Number),
        updatedAt: expect.any(Number),
      },
    ]);

    // bobby: his receive block, then [A2, H1, A1, H0]; H1 is Bob's receive block grown into a forward block.
    const atBobby = await fetched(bobby, (await arrival(bobby, messageId)).id);
    expect(atBobby.envelope).toHaveLength(5);
    const [receive, a2, h1, a1, h0] = atBobby.envelope as [Block, Block, Block, Block, Block];
    expect(isHeadersBlock(receive) && headerValue(receive.headers, 'Received')).toMatch(
      /^from example\.net by example\.org;/,
    );
    expect('jwt-assertion' in a2 && 'jwt-assertion' in a1).toBe(true);
    const h1Headers = (h1 as { headers: Record<string, string>[] }).headers;
    expect(h1Headers.slice(2, 4)).toEqual([
      { 'Forwarded-To': 'Bobby <bobby@example.org>, carol@example.net' },
      { 'Forwarded-From': 'Bob <bob@example.net>' },
    ]);
    expect(headerValue(h1Headers, 'Received')).toMatch(/^from example\.com by example\.net;/);
    expect(isHeadersBlock(h0) && headerValue(h0.headers, 'From')).toBe('Alice <alice@example.com>');
    const download = await bobby.api(`/resources/${contentId.slice(1, -1)}`);
    expect(download.status).toBe(200);
    expect(Buffer.from(await download.arrayBuffer()).equals(bytes)).toBe(true);

    // carol, a target of Bob's own domain, gets it at once, with the bytes example.net already holds.
    const atCarol = await fetched(carol, (await arrival(carol, messageId)).id);
    expect(atCarol.envelope).toHaveLength(5);
    expect(await (await carol.api(`/resources/${contentId.slice(1, -1)}`)).arrayBuffer()).toEqual(
      new Uint8Array(bytes).buffer,
    );

    // The forward's deliveries are listed with the message Bob forwarded.
    const deliveries = await until('the forward transferred to example.org', async () => {
      const d = (await (await bob.api(`/messages/${received.id}/deliveries`)).json()) as {
        deliveries: { recipient: string; status: string }[];
      };
      const toBobby = d.deliveries.find((x) => x.recipient === 'bobby@example.org');
      return toBobby?.status === 'transferred' ? d.deliveries : undefined;
    });
    expect(deliveries.find((x) => x.recipient === 'carol@example.net')?.status).toBe('fetched');
  });

  it('a rule without a copy makes example.net a pure relay: bobby fetches from example.com, example.net never does', async () => {
    await policy('any');
    await rule({ targets: ['bobby@example.org'], keepCopy: false, enabled: true });
    try {
      const { messageId, contentId, bytes } = await aliceWritesToBob('Relayed');
      const atBobby = await fetched(bobby, (await arrival(bobby, messageId)).id);
      expect(atBobby.envelope).toHaveLength(5);
      const h1 = (atBobby.envelope[2] as { headers: Record<string, string>[] }).headers;
      expect(headerValue(h1, 'Forwarded-From')).toBe('Bob <bob@example.net>');
      expect(headerValue(h1, 'Forwarded-To')).toBe('bobby@example.org');
      const download = await bobby.api(`/resources/${contentId.slice(1, -1)}`);
      expect(Buffer.from(await download.arrayBuffer()).equals(bytes)).toBe(true);

      // example.net kept nothing: no copy for Bob once the transfer is done, no fetch, no bytes.
      await until('the relayed message gone from example.net', async () =>
        (await net().messages.byMessageId('bob@example.net', messageId)).length === 0 ? true : undefined,
      );
      expect((await list(bob, 'inbox')).some((m) => m.messageId === messageId)).toBe(false);
      expect(await net().jobs.find('fetch', contentId)).toBeUndefined();
      expect(await net().blobs.has(contentId)).toBe(false);
      expect(await net().accounts.holders(contentId)).toEqual([]);
    } finally {
      await rule({ targets: [], keepCopy: true, enabled: false });
    }
  });

  it('a pure relay loses nothing across a restart: its clean-up is a job in the database, done by the next instance', async () => {
    await policy('any');
    await rule({ targets: ['bobby@example.org'], keepCopy: false, enabled: true });
    // The forward stays queued until example.net restarts.
    net().outbox.pause();
    try {
      const { messageId, contentId, bytes } = await aliceWritesToBob('Relayed across a restart');
      const relayed = await until('the relayed message in the trash of example.net', async () =>
        (await net().messages.byMessageId('bob@example.net', messageId)).find((m) => m.mailbox === 'trash'),
      );
      expect(await net().jobs.find('relay', relayed.id)).toMatchObject({
        status: 'pending',
        payload: { address: 'bob@example.net', id: relayed.id },
      });

      await fed.stop('example.net');
      await fed.restart('example.net');

      const atBobby = await fetched(bobby, (await arrival(bobby, messageId)).id);
      expect(atBobby.envelope).toHaveLength(5);
      const download = await bobby.api(`/resources/${contentId.slice(1, -1)}`);
      expect(Buffer.from(await download.arrayBuffer()).equals(bytes)).toBe(true);
      // The new instance finished what the old one started: the relayed copy is deleted, never fetched.
      await until('the relay job done by the restarted mailbox', async () =>
        (await net().jobs.find('relay', relayed.id))?.status === 'done' ? true : undefined,
      );
      expect(await net().messages.byMessageId('bob@example.net', messageId)).toEqual([]);
      expect(await net().jobs.find('fetch', contentId)).toBeUndefined();
      expect(await net().blobs.has(contentId)).toBe(false);
    } finally {
      net().outbox.resume();
      await rule({ targets: [], keepCopy: true, enabled: false });
    }
  });

  it('a relay whose transfer fails gives the message back to Bob, fetched after all', async () => {
    await policy('any');
    await rule({ targets: ['nobody@example.org'], keepCopy: false, enabled: true });
    try {
      const { messageId, contentId } = await aliceWritesToBob('Relayed to nobody');
      // example.org has no such user (404): the transfer fails for good, and Bob is told.
      const back = await arrival(bob, messageId);
      expect(back.mailbox).toBe('inbox');
      await fetched(bob, back.id);
      expect(await net().blobs.has(contentId)).toBe(true);
      await until('the delivery-failure notice', async () =>
        (await list(bob, 'inbox')).find((m) => m.subject.startsWith('Undeliverable')),
      );
      const d = (await (await bob.api(`/messages/${back.id}/deliveries`)).json()) as {
        deliveries: { recipient: string; status: string }[];
      };
      expect(d.deliveries).toMatchObject([{ recipient: 'nobody@example.org', status: 'failed' }]);
    } finally {
      await rule({ targets: [], keepCopy: true, enabled: false });
    }
  });

  it('an automatic forward the policy denies: Bob keeps the message and finds a notice', async () => {
    await policy('manual');
    await rule({ targets: ['bobby@example.org'], keepCopy: false, enabled: true });
    try {
      const { messageId, contentId } = await aliceWritesToBob('Not to be relayed');
      const kept = await arrival(bob, messageId);
      const notice = await until("the notice in Bob's inbox", async () =>
        (await list(bob, 'inbox')).find((m) => m.subject === 'Auto-forwarding denied by policy'),
      );
      const text = await (async () => {
        const n = await read(bob, notice.id);
        const cid = n.body.parts[0]!.headers.find((h) => 'Content-ID' in h)!['Content-ID'] as string;
        return (await bob.api(`/resources/${cid.slice(1, -1)}`)).text();
      })();
      expect(text).toContain('denied by policy');
      expect(text).toContain(messageId);
      // Kept, so fetched as any message Bob keeps; and nothing went to example.org.
      await fetched(bob, kept.id);
      expect(await net().blobs.has(contentId)).toBe(true);
      expect((await list(bobby, 'inbox')).some((m) => m.messageId === messageId)).toBe(false);
      const d = (await (await bob.api(`/messages/${kept.id}/deliveries`)).json()) as { deliveries: unknown[] };
      expect(d.deliveries).toEqual([]);
    } finally {
      await rule({ targets: [], keepCopy: true, enabled: false });
    }
  });

  it("a manual forward under the policy none is refused with the AS's reason", async () => {
    const { messageId } = await aliceWritesToBob('Keep it to yourself');
    const received = await arrival(bob, messageId);
    await policy('none');
    try {
      const res = await bob.api(`/messages/${received.id}/forward`, {
        method: 'POST',
        json: { to: 'bobby@example.org' },
      });
      expect(res.status).toBe(403);
      const body = (await res.json()) as { error: string; error_description: string };
      expect(body.error).toBe('forwarding_denied');
      expect(body.error_description).toContain('forwarding policy of bob@example.net (none)');
      expect((await net().shares.sharesOf(received.id)).length).toBe(0);
    } finally {
      await policy('manual');
    }
  });

  it('refuses what cannot be forwarded: a sent message, a bad list, yourself, an unknown id', async () => {
    const { messageId } = await aliceWritesToBob('Edge cases');
    const received = await arrival(bob, messageId);
    const forward = (id: string, json: unknown) => bob.api(`/messages/${id}/forward`, { method: 'POST', json });
    expect((await forward(received.id, { to: 'not an address' })).status).toBe(400);
    expect((await forward(received.id, { to: 'bob@example.net' })).status).toBe(400);
    expect((await forward(received.id, { to: 'bobby@example.org', cc: 'x' })).status).toBe(400);
    expect((await forward(received.id, {})).status).toBe(400);
    expect((await forward('0'.repeat(26), { to: 'bobby@example.org' })).status).toBe(404);
    // Alice's own sent copy is not a received message.
    const sent = (await list(alice, 'sent')).find((m) => m.messageId === messageId)!;
    const res = await alice.api(`/messages/${sent.id}/forward`, { method: 'POST', json: { to: 'bob@example.net' } });
    expect(res.status).toBe(409);
    expect(((await res.json()) as { error: string }).error).toBe('not_received');
  });
});

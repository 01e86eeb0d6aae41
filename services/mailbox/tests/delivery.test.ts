/**
 * The design's delivery scenario across two real domains (PROTOCOL.md §4–§6): Alice of example.com sends
 * Bob of example.net a text and a photo. Her mailbox has the AS sign the copy and transfers it; Bob's
 * mailbox checks it, stores the Placeholder, exchanges the assertion for an access token at its own AS and
 * fetches both resources from example.com, which records them as fetched. Bob's client then rebuilds the
 * message from the Placeholder and downloads the photo. Everything over HTTP, DNS included.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { contentId, externalContentType, type Message } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';

// promtool comes from Debian's prometheus package, which .ci/run installs.
const promtool = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' }).stdout.trim() || undefined;

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.each(testDatabases())('delivery between two domains ($name)', (database) => {
  let fed: MailFederation;
  let alice: UserClient;
  let bob: UserClient;

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net'], { database: database.create });
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password');
    alice = await fed.user('alice@example.com', 'alice password');
    bob = await fed.user('bob@example.net', 'bob password');
  });
  afterAll(() => fed?.close());

  it("Alice sends text and a photo; Bob's mailbox fetches both; Bob reads the text and downloads the photo", async () => {
    const text = 'Hi Bob,\n\nthe view from our hotel in Venice.\n\nAlice\n';
    const photo = randomBytes(200_000);
    const upText = (await (
      await alice.api('/resources', {
        method: 'POST',
        raw: text,
        headers: { 'content-type': 'text/plain; charset=utf-8' },
      })
    ).json()) as { contentId: string; size: number };
    const upPhoto = (await (
      await alice.api('/resources', { method: 'POST', raw: photo, headers: { 'content-type': 'image/png' } })
    ).json()) as { contentId: string; size: number };
    expect(upPhoto.contentId).toBe(contentId(photo));
    const messageId = `<${randomUUID()}@example.com>`;
    const draft: Message = {
      envelope: [
        {
          headers: [
            { From: 'Alice <alice@example.com>' },
            { To: 'Bob <bob@example.net>' },
            { Subject: 'Vacation photo' },
            { 'Message-ID': messageId },
            { 'Content-Type': 'multipart/mixed' },
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': upText.contentId },
              { 'Content-Type': externalContentType(upText.size, 'text/plain; charset=UTF-8') },
            ],
          },
          {
            headers: [
              { 'Content-Disposition': 'attachment; filename="Venice.png"' },
              { 'Content-ID': upPhoto.contentId },
              { 'Content-Type': externalContentType(upPhoto.size, 'image/png') },
            ],
          },
        ],
      },
    };
    const sent = await alice.api('/messages/send', { method: 'POST', json: { message: draft } });
    expect(sent.status, await sent.clone().text()).toBe(202);
    const { id: sentId } = (await sent.json()) as { id: string };

    // Bob's inbox shows the message, and both resources become held once his mailbox has fetched them.
    const inboxEntry = await until("the message in Bob's inbox", async () => {
      const list = (await (await bob.api('/messages?mailbox=inbox')).json()) as {
        messages: { id: string; messageId: string }[];
      };
      return list.messages.find((m) => m.messageId === messageId);
    });
    const full = await until('both resources fetched', async () => {
      const m = (await (await bob.api(`/messages/${inboxEntry.id}`)).json()) as {
        envelope: unknown[];
        body: Message['body'];
        resources: { contentId: string; status: string }[];
      };
      return m.resources.every((r) => r.status === 'held') ? m : undefined;
    });
    expect(full.envelope).toHaveLength(3); // receive block, A1, H0

    // Bob's client rebuilds the message from the Placeholder: the inline text, then the attachment.
    const inline = full.body.parts.find((p) => p.headers.some((h) => h['Content-Disposition'] === 'inline'))!;
    const textCid = inline.headers.find((h) => 'Content-ID' in h)!['Content-ID'] as string;
    expect(await (await bob.api(`/resources/${textCid.slice(1, -1)}`)).text()).toBe(text);
    const got = Buffer.from(await (await bob.api(`/resources/${upPhoto.contentId.slice(1, -1)}`)).arrayBuffer());
    expect(got.equals(photo)).toBe(true);

    // Alice sees the delivery status: fetched by example.net.
    const deliveries = await until('the delivery marked fetched', async () => {
      const d = (await (await alice.api(`/messages/${sentId}/deliveries`)).json()) as {
        deliveries: { recipient: string; status: string; fetchedBy?: string }[];
      };
      return d.deliveries.find((x) => x.status === 'fetched');
    });
    expect(deliveries).toMatchObject({ recipient: 'bob@example.net', fetchedBy: 'example.net' });

    // The operators' view: the transfer and the fetched bytes are counted, and the exposition is valid.
    const origin = await (await fetch(`${fed.domains['example.com']!.mailbox.url}/metrics`)).text();
    const receiver = await (await fetch(`${fed.domains['example.net']!.mailbox.url}/metrics`)).text();
    expect(origin).toMatch(/federizer_mailbox_deliveries_total\{outcome="transferred",service="mailbox"\} [1-9]/);
    expect(
      Number(/federizer_mailbox_fetched_bytes_total\{service="mailbox"\} (\d+)/.exec(receiver)?.[1]),
    ).toBeGreaterThanOrEqual(photo.length);
    expect(receiver).toMatch(/federizer_mailbox_queue_depth\{kind="fetch",service="mailbox"\} 0/);
    if (promtool) {
      for (const exposition of [origin, receiver]) {
        const result = spawnSync(promtool, ['check', 'metrics'], { input: exposition, encoding: 'utf8' });
        expect(result.status, result.stdout + result.stderr).toBe(0);
      }
    }
  });

  it('unsend before the fetch: the origin answers 410 and the resource is never delivered', async () => {
    // Pause Bob's fetcher so the unsend wins the race, then let it run again.
    const net = fed.domains['example.net']!.mailbox;
    net.fetcher.pause();
    const secret = randomBytes(1000);
    const up = (await (await alice.api('/resources', { method: 'POST', raw: secret })).json()) as {
      contentId: string;
      size: number;
    };
    const messageId = `<${randomUUID()}@example.com>`;
    const draft: Message = {
      envelope: [
        {
          headers: [
            { From: 'alice@example.com' },
            { To: 'bob@example.net' },
            { Subject: 'oops' },
            { 'Message-ID': messageId },
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'attachment; filename="secret.bin"' },
              { 'Content-ID': up.contentId },
              { 'Content-Type': externalContentType(up.size, 'application/octet-stream') },
            ],
          },
        ],
      },
    };
    const { id } = (await (await alice.api('/messages/send', { method: 'POST', json: { message: draft } })).json()) as {
      id: string;
    };
    const entry = await until("the Placeholder in Bob's inbox", async () => {
      const list = (await (await bob.api('/messages?mailbox=inbox')).json()) as {
        messages: { id: string; messageId: string }[];
      };
      return list.messages.find((m) => m.messageId === messageId);
    });
    const unsent = (await (await alice.api(`/messages/${id}/unsend`, { method: 'POST', json: {} })).json()) as {
      withdrawn: string[];
    };
    expect(unsent.withdrawn).toContain('bob@example.net');
    net.fetcher.resume();
    await net.fetcher.poll();
    const m = await until('the fetch refused', async () => {
      const r = (await (await bob.api(`/messages/${entry.id}`)).json()) as {
        resources: { status: string; failure?: string }[];
      };
      return r.resources[0]!.status === 'failed' ? r : undefined;
    });
    expect(m.resources[0]!.status).toBe('failed');
    expect(m.resources[0]!.failure).toMatch(/\/federation\/v1\/fetch answered 410 Gone: .*"error":"withdrawn"/);
    expect((await bob.api(`/resources/${up.contentId.slice(1, -1)}`)).status).toBe(404);
  });
});

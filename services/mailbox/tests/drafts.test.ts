/**
 * Drafts through the client API across real domains: create (the Message-ID generated when absent, the
 * checks of §4.1), replace, delete, and send from a draft, which goes the way of `POST /messages/send`:
 * the copy in Sent, transfers to example.net and example.org, whose mailboxes fetch the attachment.
 * A draft counts as a reference to the resources it names.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { externalContentType, headerValue, type Header, type Message } from '@federizer/protocol';
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

interface Stored extends Summary {
  envelope: { headers: Header[] }[];
  body: Message['body'];
  resources: { contentId: string; status: string }[];
}

function draft(headers: Header[], resource?: { contentId: string; size: number }): Message {
  return {
    envelope: [{ headers }],
    body: {
      parts: resource
        ? [
            {
              headers: [
                { 'Content-Disposition': 'attachment; filename="notes.txt"' },
                { 'Content-ID': resource.contentId },
                { 'Content-Type': externalContentType(resource.size, 'text/plain; charset=UTF-8') },
              ],
            },
          ]
        : [],
    },
  };
}

describe.each(testDatabases())('drafts ($name)', (database) => {
  let fed: MailFederation;
  let alice: UserClient;
  let bob: UserClient;
  let bobby: UserClient;

  const com = () => fed.domains['example.com']!.mailbox;

  async function upload(text: string): Promise<{ contentId: string; size: number }> {
    const res = await alice.api('/resources', {
      method: 'POST',
      raw: text,
      headers: { 'content-type': 'text/plain; charset=utf-8' },
    });
    expect(res.status).toBe(201);
    return (await res.json()) as { contentId: string; size: number };
  }

  async function list(user: UserClient, mailbox: string): Promise<Summary[]> {
    return ((await (await user.api(`/messages?mailbox=${mailbox}&limit=200`)).json()) as { messages: Summary[] })
      .messages;
  }

  async function refs(contentId: string): Promise<number | undefined> {
    return (await com().accounts.resource('alice@example.com', contentId))?.refs;
  }

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net', 'example.org'], { database: database.create });
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password');
    await fed.auth.domains['example.org']!.createUser('bobby@example.org', 'bobby password');
    alice = await fed.user('alice@example.com', 'alice password');
    bob = await fed.user('bob@example.net', 'bob password');
    bobby = await fed.user('bobby@example.org', 'bobby password');
  });
  afterAll(() => fed?.close());

  it('creates a draft with a generated Message-ID, replaces it, and deletes it; the draft references its resource', async () => {
    const notes = await upload(`notes ${randomUUID()}`);
    expect(await refs(notes.contentId)).toBe(0);

    const created = await alice.api('/drafts', {
      method: 'POST',
      json: { message: draft([{ From: 'Alice <alice@example.com>' }, { Subject: 'First thoughts' }], notes) },
    });
    expect(created.status, await created.clone().text()).toBe(201);
    const first = (await created.json()) as {
      id: string;
      messageId: string;
      message: { envelope: { headers: Header[] }[] };
    };
    expect(first.messageId).toMatch(/^<[0-9a-f-]{36}@example\.com>$/);
    expect(created.headers.get('location')).toBe(`/api/v1/messages/${first.id}`);
    expect(headerValue(first.message.envelope[0]!.headers, 'Message-ID')).toBe(first.messageId);
    const stored = (await (await alice.api(`/messages/${first.id}`)).json()) as Stored;
    expect(stored).toMatchObject({ mailbox: 'drafts', messageId: first.messageId, subject: 'First thoughts' });
    expect(stored.resources).toEqual([{ contentId: notes.contentId, size: notes.size, status: 'held' }]);
    expect((await list(alice, 'drafts')).map((m) => m.id)).toContain(first.id);
    expect(await refs(notes.contentId)).toBe(1);

    // Replaced: a new version under a new id, the Message-ID kept, the old one gone.
    const replaced = await alice.api(`/drafts/${first.id}`, {
      method: 'PUT',
      json: {
        message: draft(
          [{ From: 'Alice <alice@example.com>' }, { To: 'bob@example.net' }, { Subject: 'Second thoughts' }],
          notes,
        ),
      },
    });
    expect(replaced.status, await replaced.clone().text()).toBe(200);
    const second = (await replaced.json()) as { id: string; replaced: string; messageId: string };
    expect(second).toMatchObject({ replaced: first.id, messageId: first.messageId });
    expect(second.id).not.toBe(first.id);
    expect((await alice.api(`/messages/${first.id}`)).status).toBe(404);
    expect(((await (await alice.api(`/messages/${second.id}`)).json()) as Stored).subject).toBe('Second thoughts');
    expect(await refs(notes.contentId)).toBe(1);

    // A version without the resource releases it.
    const third = await alice.api(`/drafts/${second.id}`, {
      method: 'PUT',
      json: { message: draft([{ From: 'alice@example.com' }, { Subject: 'No attachment' }]) },
    });
    expect(third.status).toBe(200);
    const { id: thirdId } = (await third.json()) as { id: string };
    expect(await refs(notes.contentId)).toBe(0);

    expect((await alice.api(`/drafts/${thirdId}`, { method: 'DELETE' })).status).toBe(204);
    expect((await alice.api(`/messages/${thirdId}`)).status).toBe(404);
    expect((await alice.api(`/drafts/${thirdId}`, { method: 'DELETE' })).status).toBe(404);
  });

  it('refuses what is not a draft of the signed-in user', async () => {
    const notes = await upload(`more notes ${randomUUID()}`);
    const post = (message: unknown) => alice.api('/drafts', { method: 'POST', json: { message } });
    const error = async (res: Response) => ({ status: res.status, ...((await res.json()) as { error: string }) });

    expect(await error(await post(draft([{ From: 'bob@example.net' }, { Subject: 'x' }])))).toMatchObject({
      status: 403,
      error: 'from_not_user',
    });
    expect(
      await error(await post(draft([{ Date: 'Sun, 22 Dec 2024 20:49:35 +0100' }, { From: 'alice@example.com' }]))),
    ).toMatchObject({ status: 400, error: 'invalid_message' });
    expect(
      await error(
        await post(draft([{ From: 'alice@example.com' }, { 'Message-ID': `<${randomUUID()}@example.net>` }])),
      ),
    ).toMatchObject({ status: 400, error: 'invalid_message' });
    expect(
      await error(await post(draft([{ From: 'alice@example.com' }], { contentId: notes.contentId, size: 1 }))),
    ).toMatchObject({ status: 400, error: 'resource_size_mismatch' });
    const foreign = { contentId: `<${randomBytes(32).toString('base64url')}>`, size: 5 };
    expect(await error(await post(draft([{ From: 'alice@example.com' }], foreign)))).toMatchObject({
      status: 400,
      error: 'resource_not_held',
    });
    expect(
      await error(
        await post({
          envelope: [{ headers: [{ From: 'alice@example.com' }] }, { headers: [{ Subject: 'x' }] }],
          body: { parts: [] },
        }),
      ),
    ).toMatchObject({ status: 400, error: 'invalid_message' });
    expect((await alice.api('/drafts', { method: 'POST', json: { nope: 1 } })).status).toBe(400);

    // Another kind of message, or another user's draft, is no draft here.
    const { id } = (await (
      await alice.api('/drafts', { method: 'POST', json: { message: draft([{ From: 'alice@example.com' }]) } })
    ).json()) as { id: string };
    expect((await bob.api(`/drafts/${id}`, { method: 'DELETE' })).status).toBe(404);
    expect((await bob.api(`/drafts/${id}/send`, { method: 'POST' })).status).toBe(404);
    // A draft without recipients cannot be sent, and stays a draft.
    const refused = await alice.api(`/drafts/${id}/send`, { method: 'POST' });
    expect(refused.status).toBe(400);
    expect(((await (await alice.api(`/messages/${id}`)).json()) as Stored).mailbox).toBe('drafts');
  });

  it('sends a stored draft as /messages/send would: Sent holds the copy, two domains receive and fetch, the draft is gone', async () => {
    const text = `Hello from a draft ${randomUUID()}\n`;
    const notes = await upload(text);
    const created = await alice.api('/drafts', {
      method: 'POST',
      json: {
        message: draft(
          [
            { From: 'Alice <alice@example.com>' },
            { To: 'Bob <bob@example.net>' },
            { Cc: 'bobby@example.org' },
            { Subject: 'Sent from a draft' },
          ],
          notes,
        ),
      },
    });
    expect(created.status).toBe(201);
    const { id, messageId } = (await created.json()) as { id: string; messageId: string };

    const sent = await alice.api(`/drafts/${id}/send`, { method: 'POST' });
    expect(sent.status, await sent.clone().text()).toBe(202);
    const result = (await sent.json()) as {
      id: string;
      messageId: string;
      draft: string;
      deliveries: { recipient: string; status: string }[];
    };
    expect(result).toMatchObject({ messageId, draft: id });
    expect(result.deliveries.map((d) => [d.recipient, d.status]).sort()).toEqual([
      ['bob@example.net', 'queued'],
      ['bobby@example.org', 'queued'],
    ]);
    expect((await alice.api(`/messages/${id}`)).status).toBe(404);
    const copy = (await (await alice.api(`/messages/${result.id}`)).json()) as Stored;
    expect(copy).toMatchObject({ mailbox: 'sent', messageId, subject: 'Sent from a draft' });
    expect(headerValue(copy.envelope[0]!.headers, 'Date')).toBeDefined();
    // The sent copy references the resource now; the draft no longer does.
    expect(await refs(notes.contentId)).toBe(1);

    for (const user of [bob, bobby]) {
      const entry = await until(`the message at ${user.address}`, async () =>
        (await list(user, 'inbox')).find((m) => m.messageId === messageId),
      );
      await until(`the resource fetched for ${user.address}`, async () => {
        const m = (await (await user.api(`/messages/${entry.id}`)).json()) as Stored;
        return m.resources.every((r) => r.status === 'held') ? m : undefined;
      });
      expect(await (await user.api(`/resources/${notes.contentId.slice(1, -1)}`)).text()).toBe(text);
    }
  });
});

/** The open conversation against real domains: read marks, the text, deliveries and unsend. */
import { describe, expect, it, vi } from 'vitest';
import { buildDraft, newMessageId } from '../api/draft.js';
import type { SignedIn } from '../testing/federation.js';
import { useAliceAndBob } from '../testing/alice-and-bob.js';
import { MailActions } from './mail-actions.js';
import { MailStore } from './mail-store.js';
import { MessageCache } from './message-cache.js';
import { ReaderStore } from './reader-store.js';
import { SyncEngine } from './sync-engine.js';

/** Waits long enough for a shared, loaded machine. */
const PATIENCE = { timeout: 15_000 };

const world = useAliceAndBob();

async function reader(user: SignedIn) {
  const mail = new MailStore();
  const cache = new MessageCache(user.api, user.db);
  const sync = new SyncEngine({ api: user.api, db: user.db, mail, cache });
  await sync.syncOnce();
  const actions = new MailActions(user.api, user.db, mail);
  return { mail, sync, reader: new ReaderStore({ mail, cache, api: user.api, actions }) };
}

async function send(to: string, subject: string): Promise<string> {
  const text = await world.alice.api.upload(new Blob([`About ${subject}`]), { mediaType: 'text/plain; charset=UTF-8' });
  const draft = buildDraft({
    from: world.alice.address,
    to,
    cc: '',
    bcc: '',
    subject,
    messageId: newMessageId('example.com'),
    text,
    attachments: [],
  });
  return (await world.alice.api.send(draft)).id;
}

describe('ReaderStore', () => {
  it('opens a received conversation: rebuilt, its text read, and marked read here and at the mailbox', async () => {
    await send('bob@example.net', 'Read me');
    const r = await reader(world.bob);
    await vi.waitFor(
      async () => {
        await r.sync.syncOnce();
        expect(r.mail.conversations('inbox').find((c) => c.subject === 'Read me')).toBeDefined();
      },
      { timeout: 20_000 },
    );
    const conversation = r.mail.conversations('inbox').find((c) => c.subject === 'Read me')!;
    const id = conversation.latest.id;
    // Once Bob's mailbox fetched the text, the replica learns it (the app's sync loop does this on its own).
    await vi.waitFor(
      async () => expect((await world.bob.api.getMessage(id)).resources.every((x) => x.status === 'held')).toBe(true),
      PATIENCE,
    );
    await r.sync.syncOnce();
    r.reader.open(conversation.threadId, 'inbox');
    await vi.waitFor(() => {
      const [entry] = r.reader.state.entries;
      const part = entry?.view?.content[0]?.part;
      expect(part && r.reader.state.bodies[part.contentId]).toEqual({ status: 'ready', text: 'About Read me' });
    }, PATIENCE);
    await vi.waitFor(async () => expect((await world.bob.api.getMessage(id)).seen).toBe(true), PATIENCE);
    expect(r.mail.unreadCounts().inbox).toBe(0);
    expect(r.reader.state.entries[0]!.sent).toBeUndefined();
    r.reader.close();
  });

  it('shows where a sent copy stands and withdraws it before it is transferred', async () => {
    // A domain nobody runs: the transfer waits in the outbox, so the copy can still be withdrawn.
    const id = await send('carol@nowhere.example', 'Take it back');
    const r = await reader(world.alice);
    const summary = r.mail.get(id)!;
    r.reader.open(summary.threadId, 'sent');
    await vi.waitFor(
      () =>
        expect(r.reader.state.entries[0]?.sent?.deliveries).toEqual([
          expect.objectContaining({
            recipient: 'carol@nowhere.example',
            status: expect.stringMatching(/queued|failed/),
          }),
        ]),
      PATIENCE,
    );
    await r.reader.unsend(id);
    const sent = r.reader.state.entries[0]!.sent!;
    expect(sent.unsent).toEqual({ withdrawn: ['carol@nowhere.example'], fetched: [], unknown: [] });
    expect(sent.deliveries?.map((d) => d.status)).toEqual(['withdrawn']);
    r.reader.close();
  });
});

/**
 * The sync between two real domains: Alice of example.com sends, Bob of example.net sees the message
 * arrive through the long poll without starting anything again, then its text and attachment once his
 * mailbox fetched them; what was synced stays readable with the network gone.
 */
import { IDBFactory } from 'fake-indexeddb';
import { describe, expect, it, vi } from 'vitest';
import { MailboxClient } from '../api/client.js';
import { buildDraft, newMessageId } from '../api/draft.js';
import { rebuildMessage } from '../api/message-view.js';
import type { Message, MessageSummary } from '../api/types.js';
import { localFetch, type SignedIn } from '../testing/federation.js';
import { useAliceAndBob } from '../testing/alice-and-bob.js';
import { LocalDb, StoppedError } from './local-db.js';
import { MailStore } from './mail-store.js';
import { MessageCache } from './message-cache.js';
import { SyncEngine } from './sync-engine.js';

const world = useAliceAndBob();

function replica(user: SignedIn, db: LocalDb = user.db, api: MailboxClient = user.api) {
  const mail = new MailStore();
  const cache = new MessageCache(api, db);
  const arrived: MessageSummary[] = [];
  const sync = new SyncEngine({ api, db, mail, cache, waitSeconds: 5, onNewMail: (m) => arrived.push(...m) });
  return { mail, cache, sync, arrived };
}

async function send(from: SignedIn, to: string, subject: string, text: string): Promise<string> {
  const body = await from.api.upload(new Blob([text]), { mediaType: 'text/plain; charset=UTF-8' });
  const photo = await from.api.upload(new Blob([new Uint8Array(2048).fill(7)]), { mediaType: 'image/png' });
  const draft = buildDraft({
    from: from.address,
    to,
    cc: '',
    bcc: '',
    subject,
    messageId: newMessageId(from.config.domain),
    text: body,
    attachments: [{ resource: photo, filename: 'photo.png' }],
  });
  return (await from.api.send(draft)).messageId;
}

/** The network is gone: nothing answers where the mailbox was (port 9, discard, is closed here). */
const offline = () =>
  new MailboxClient({ apiBase: 'http://127.0.0.1:9/api/v1', tokens: world.bob.auth, fetch: localFetch });

describe('SyncEngine', () => {
  it('shows new mail from another domain without a restart, then its resources once fetched', async () => {
    const bobs = replica(world.bob);
    await bobs.sync.start();
    await vi.waitFor(() => expect(bobs.sync.state.status).toBe('live'), { timeout: 10_000 });
    expect(bobs.mail.conversations('inbox')).toEqual([]);

    const messageId = await send(world.alice, 'Bob <bob@example.net>', 'Vacation photo', 'Look at this!');
    await vi.waitFor(() => expect(bobs.mail.conversations('inbox')).toHaveLength(1), { timeout: 20_000 });
    const [conversation] = bobs.mail.conversations('inbox');
    expect(conversation).toMatchObject({ subject: 'Vacation photo', unread: 1, senders: ['alice@example.com'] });
    expect(conversation!.latest.messageId).toBe(messageId);
    expect(bobs.mail.unreadCounts().inbox).toBe(1);
    expect(bobs.arrived.map((m) => m.messageId)).toEqual([messageId]);

    // The fetch of the resources shows as an update of the same message.
    const id = conversation!.latest.id;
    await vi.waitFor(
      async () => {
        const kept = await world.bob.db.get<Message>('messages', id);
        expect(kept?.resources.map((r) => r.status)).toEqual(['held', 'held']);
      },
      { timeout: 20_000 },
    );
    const view = rebuildMessage((await world.bob.db.get<Message>('messages', id))!);
    await expect(bobs.cache.text(view.content[0]!.part)).resolves.toBe('Look at this!');
    bobs.sync.stop();

    // Offline: a new page on the same IndexedDB shows the mailbox and the text without any request.
    const later = replica(world.bob, await LocalDb.open(world.bob.indexedDB), offline());
    await later.sync.loadLocal();
    expect(later.mail.conversations('inbox').map((c) => c.latest.messageId)).toEqual([messageId]);
    const again = rebuildMessage(await later.cache.message(id));
    await expect(later.cache.text(again.content[0]!.part)).resolves.toBe('Look at this!');
    expect(again.attachments.map((a) => a.filename)).toEqual(['photo.png']);
  });

  it.each([
    ['a state this account never reached (410 cannot_calculate_changes)', '999999'],
    ['a state the server never issues (400 invalid_state)', 'not-a-state'],
  ])('starts over from GET /state when it holds %s', async (_what, state) => {
    await send(world.alice, 'bob@example.net', `Resync ${state}`, 'text');
    const alices = replica(world.alice);
    await world.alice.db.setKv('sync', { state });
    await world.alice.db.write(['summaries'], (t) => t.objectStore('summaries').clear());
    await alices.sync.start();
    await vi.waitFor(
      () => expect(alices.mail.conversations('sent').map((c) => c.subject)).toContain(`Resync ${state}`),
      {
        timeout: 10_000,
      },
    );
    // A state the mailbox issued (it may have moved on since, as Bob fetches).
    const kept = (await world.alice.db.kv<{ state: string }>('sync'))!.state;
    expect(kept).not.toBe(state);
    await expect(world.alice.api.changes(kept)).resolves.toMatchObject({ hasMore: false });
    alices.sync.stop();
  });

  it.each([
    ['the first full synchronization (a page of GET /messages)', '/messages?mailbox=inbox', false],
    ['a round of changes (POST /messages/get)', '/messages/get', true],
  ])('writes nothing back after sign-out when %s finishes after the store was cleared', async (_what, held, synced) => {
    const db = await LocalDb.open(new IDBFactory());
    if (synced) {
      await replica(world.bob, db).sync.syncOnce();
      await db.write(['summaries'], (t) => t.objectStore('summaries').clear());
    }
    // The request is answered by the real mailbox, but its answer is held back until the sign-out is over.
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let heldRequests = 0;
    const slow: typeof fetch = async (input, init) => {
      const res = await localFetch(input, init);
      if (String(input).includes(held)) {
        heldRequests++;
        await gate;
      }
      return res;
    };
    const api = new MailboxClient({ apiBase: world.bob.api.apiBase, tokens: world.bob.auth, fetch: slow });
    const session = new AbortController();
    const mail = new MailStore();
    const sync = new SyncEngine({
      api,
      db: db.scoped(session.signal),
      mail,
      cache: new MessageCache(api, db),
      waitSeconds: 5,
      signal: session.signal,
    });
    // A long poll once synchronized: the mail sent below is read as a change.
    const settled = sync.syncOnce(synced ? 5 : 0);
    if (synced) await send(world.alice, 'bob@example.net', 'Arrives while signing out', 'text');
    await vi.waitFor(() => expect(heldRequests).toBe(1), { timeout: 20_000 });

    // Sign-out: the session's signal aborts, then the local store is cleared.
    session.abort();
    await db.clear();
    release();
    await expect(settled).rejects.toBeInstanceOf(StoppedError);

    expect(await db.getAll('summaries')).toEqual([]);
    expect(await db.getAll('messages')).toEqual([]);
    expect(await db.kv('sync')).toBeUndefined();
    expect(mail.state.version).toBe(0);
  });

  it('refuses writes through a handle whose signal has aborted, and only through it', async () => {
    const db = await LocalDb.open(new IDBFactory());
    const stop = new AbortController();
    const scoped = db.scoped(stop.signal);
    await scoped.setKv('sync', { state: '1' });
    stop.abort();
    await expect(scoped.setKv('sync', { state: '2' })).rejects.toThrow(/^stopped: not writing kv$/);
    expect(() => scoped.assertLive()).toThrow(StoppedError);
    await db.setKv('sync', { state: '3' });
    expect(await scoped.kv('sync')).toEqual({ state: '3' });
  });

  it('reports being offline and keeps what it has', async () => {
    const db = await LocalDb.open(new IDBFactory());
    await replica(world.bob, db).sync.syncOnce();
    const synced = new MailStore();
    synced.replaceAll(await db.getAll<MessageSummary>('summaries'));
    const r = replica(world.bob, db, offline());
    await r.sync.start();
    await vi.waitFor(() => expect(r.sync.state.status).toBe('offline'), { timeout: 10_000 });
    expect(r.sync.state.error).toMatch(/could not be reached/);
    expect(r.mail.conversations('inbox')).toEqual(synced.conversations('inbox'));
    r.sync.stop();
  });
});

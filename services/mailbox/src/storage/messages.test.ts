import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { externalContentType, type Part } from '@federizer/protocol';
import { AccountStore } from './accounts.js';
import { ChangeLog } from './changes.js';
import { isMailStoreError } from './errors.js';
import { ID_LENGTH, ID_PATTERN, createIdGenerator, idTime } from './ids.js';
import { JobQueue, completeLeasedJob } from './jobs.js';
import { MAX_FAILURE, MessageStore, type MailboxName, type NewMessage, type NewReceivedMessage } from './messages.js';
import {
  T0,
  cid,
  clearMailboxTables,
  openMailboxDatabase,
  statementsOf,
  testClock,
  testDatabases,
  warmPool,
  type MailboxTestDatabase,
} from './testing.js';

const ALICE = 'alice@example.com';
const BOB = 'bob@example.net';

let counter = 0;
function draft(address: string, overrides: Partial<NewMessage> = {}): NewMessage {
  counter++;
  return {
    address,
    mailbox: 'inbox',
    messageId: `<m${counter}@example.com>`,
    threadId: `<m${counter}@example.com>`,
    envelope: [{ headers: [{ From: 'Carol <carol@example.org>' }, { Subject: `n${counter}` }] }],
    body: { parts: [{ headers: [{ 'Content-Type': 'text/plain' }] }] },
    subject: `n${counter}`,
    from: 'Carol <carol@example.org>',
    date: T0,
    ...overrides,
  };
}

describe('ids', () => {
  it('are fixed width, unique, and sort as strings in time order, even within one millisecond', () => {
    const clock = testClock();
    const next = createIdGenerator(clock.now);
    const ids: string[] = [];
    for (let i = 0; i < 1000; i++) {
      if (i % 100 === 0) clock.advance(1);
      ids.push(next());
    }
    clock.advance(-5000); // a clock stepping back does not break the order
    ids.push(next());
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
    for (const id of ids) expect(id).toMatch(ID_PATTERN);
    expect(ids[0]).toHaveLength(ID_LENGTH);
    expect(idTime(ids[0] as string)).toBe(T0 + 1);
  });
});

describe.each(testDatabases())('MessageStore on $name', (database) => {
  let db: MailboxTestDatabase;
  const clock = testClock();
  let messages: MessageStore;
  let changes: ChangeLog;

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    messages = new MessageStore(db.knex, { now: clock.now });
    changes = new ChangeLog(db.knex, { now: clock.now });
  });

  afterAll(async () => {
    await db?.destroy();
  });

  beforeEach(async () => {
    await clearMailboxTables(db.knex);
    clock.set(T0);
  });

  it('stores a message with its resources and records its creation', async () => {
    const a = cid('a');
    const b = cid('b');
    const input = draft(ALICE, {
      mailbox: 'drafts',
      resources: [
        { contentId: a, size: 10, status: 'held' },
        { contentId: b, size: 32, status: 'pending' },
        { contentId: a, size: 10, status: 'held' },
      ],
    });
    const id = await messages.create(input);
    expect(id).toMatch(ID_PATTERN);
    expect(await messages.get(ALICE, id)).toEqual({
      id,
      address: ALICE,
      mailbox: 'drafts',
      messageId: input.messageId,
      threadId: input.threadId,
      transferEht: undefined,
      subject: input.subject,
      from: input.from,
      date: T0,
      receivedAt: T0,
      seen: false,
      flagged: false,
      size: 42,
      envelope: input.envelope,
      body: input.body,
    });
    expect(await messages.get(BOB, id)).toBeUndefined();
    expect(await messages.resourcesOf(id)).toEqual(
      [
        { contentId: a, size: 10, status: 'held', updatedAt: T0 },
        { contentId: b, size: 32, status: 'pending', updatedAt: T0 },
      ].sort((x, y) => (x.contentId < y.contentId ? -1 : 1)),
    );
    expect(await changes.since(ALICE, '0')).toMatchObject({ created: [id], updated: [], destroyed: [] });
  });

  it('locks a known account once per transaction, with no insert of its row', async () => {
    await new AccountStore(db.knex).ensure(ALICE);
    const sql = await statementsOf(db.knex, () =>
      messages.create(draft(ALICE, { resources: [{ contentId: cid('a'), size: 1, status: 'held' }] })),
    );
    // SQLite's one connection serializes the transaction without a lock; PostgreSQL locks the row once,
    // although both the message and its change log entry take the account lock.
    const accountStatements = sql.filter((q) => /mail_accounts/.test(q));
    expect(accountStatements).toHaveLength(database.name === 'postgres' ? 1 : 0);
    expect(accountStatements.every((q) => /^select .* for update$/i.test(q))).toBe(true);
  });

  it('reads a batch of messages with their resources as get and resourcesOf do, in two statements', async () => {
    const a = cid('a');
    const b = cid('b');
    const ids: string[] = [];
    for (let i = 0; i < 70; i++) {
      const resources =
        i % 3 === 0
          ? []
          : [
              { contentId: b, size: 2, status: 'pending' as const },
              { contentId: a, size: 1, status: 'held' as const },
            ];
      ids.push(await messages.create(draft(ALICE, { resources })));
    }
    const bobs = await messages.create(draft(BOB));
    const wanted = [...ids, bobs, '0'.repeat(ids[0]!.length)];
    let found: Awaited<ReturnType<MessageStore['getMany']>> | undefined;
    const sql = await statementsOf(db.knex, async () => {
      found = await messages.getMany(ALICE, wanted);
    });
    expect(sql).toHaveLength(2);
    // Another account's message and an unknown id are absent, as `get` answers them.
    expect([...found!.keys()].sort()).toEqual([...ids].sort());
    for (const id of ids) {
      expect(found!.get(id)).toEqual({
        message: await messages.get(ALICE, id),
        resources: await messages.resourcesOf(id),
      });
    }
    expect(await messages.getMany(ALICE, [])).toEqual(new Map());
    expect(await messages.getMany(BOB, [ids[0]!])).toEqual(new Map());
  });

  it('pages through 250 messages newest first, without duplicates or gaps', async () => {
    const created: string[] = [];
    for (let i = 0; i < 250; i++) {
      if (i % 7 === 0) clock.advance(1); // several per millisecond, too
      created.push(await messages.create(draft(ALICE)));
      if (i % 50 === 0) await messages.create(draft(ALICE, { mailbox: 'archive' }));
      if (i % 60 === 0) await messages.create(draft(BOB));
    }
    const seen: string[] = [];
    let before: string | undefined;
    let pages = 0;
    do {
      const page = await messages.list(ALICE, { mailbox: 'inbox', before, limit: 40 });
      seen.push(...page.messages.map((m) => m.id));
      // Mail arriving while the client pages does not disturb the older pages.
      if (pages === 2) await messages.create(draft(ALICE));
      before = page.next;
      pages++;
    } while (before !== undefined);
    expect(pages).toBe(7);
    expect(seen).toEqual([...created].reverse());
  });

  it('ends with no cursor when the last page is exactly full', async () => {
    for (let i = 0; i < 4; i++) await messages.create(draft(ALICE));
    const first = await messages.list(ALICE, { mailbox: 'inbox', limit: 2 });
    const second = await messages.list(ALICE, { mailbox: 'inbox', limit: 2, before: first.next });
    expect(second.messages).toHaveLength(2);
    expect(second.next).toBeUndefined();
    expect(await messages.list(ALICE, { mailbox: 'trash' })).toEqual({ messages: [], next: undefined });
  });

  it('refuses a cursor it did not issue', async () => {
    for (const before of ['', 'garbage', Buffer.from('m1.not-an-id').toString('base64url'), 'x'.repeat(100)]) {
      const error = await messages.list(ALICE, { mailbox: 'inbox', before }).catch((e: unknown) => e);
      expect(isMailStoreError(error, 'invalid_cursor')).toBe(true);
    }
    await expect(messages.list(ALICE, { mailbox: 'spam' as MailboxName })).rejects.toThrow(TypeError);
    await expect(messages.list(ALICE, { mailbox: 'inbox', limit: 0 })).rejects.toThrow(TypeError);
  });

  it('lists a thread across mailboxes, oldest first, for one account only', async () => {
    const root = await messages.create(draft(ALICE, { threadId: '<root@example.org>', mailbox: 'inbox' }));
    clock.advance(10);
    const reply = await messages.create(draft(ALICE, { threadId: '<root@example.org>', mailbox: 'sent' }));
    clock.advance(10);
    await messages.create(draft(ALICE, { threadId: '<other@example.org>' }));
    await messages.create(draft(BOB, { threadId: '<root@example.org>' }));
    const thread = await messages.thread(ALICE, '<root@example.org>');
    expect(thread.map((m) => [m.id, m.mailbox])).toEqual([
      [root, 'inbox'],
      [reply, 'sent'],
    ]);
    expect(await messages.thread(ALICE, '<nothing@example.org>')).toEqual([]);
  });

  it('marks seen and flagged, moves and trashes, recording a change only when something changed', async () => {
    const id = await messages.create(draft(ALICE));
    const state = await changes.state(ALICE);
    expect(await messages.update(ALICE, id, { seen: true, flagged: true })).toMatchObject({
      seen: true,
      flagged: true,
    });
    const afterFlags = await changes.state(ALICE);
    expect(afterFlags).not.toBe(state);
    await messages.update(ALICE, id, { seen: true });
    expect(await changes.state(ALICE)).toBe(afterFlags);
    expect(await messages.update(ALICE, id, { mailbox: 'archive' })).toMatchObject({ mailbox: 'archive' });
    expect(await messages.trash(ALICE, id)).toMatchObject({ mailbox: 'trash', seen: true });
    expect(await messages.get(ALICE, id)).toMatchObject({ mailbox: 'trash', seen: true, flagged: true });
    expect(await changes.since(ALICE, state)).toMatchObject({ created: [], updated: [id], destroyed: [] });

    const error = await messages.update(BOB, id, { seen: false }).catch((e: unknown) => e);
    expect(isMailStoreError(error, 'message_not_found')).toBe(true);
    await expect(messages.update(ALICE, id, { mailbox: 'nowhere' as MailboxName })).rejects.toThrow(TypeError);
  });

  it('deletes a message with its resource rows and records its destruction', async () => {
    const id = await messages.create(draft(ALICE, { resources: [{ contentId: cid(1), size: 1, status: 'held' }] }));
    const state = await changes.state(ALICE);
    expect(await messages.delete(BOB, id)).toBe(false);
    expect(await messages.delete(ALICE, id)).toBe(true);
    expect(await messages.delete(ALICE, id)).toBe(false);
    expect(await messages.get(ALICE, id)).toBeUndefined();
    expect(await messages.resourcesOf(id)).toEqual([]);
    expect(await changes.since(ALICE, state)).toMatchObject({ created: [], updated: [], destroyed: [id] });
  });

  it('stores a received message once, even for 20 concurrent identical transfers', async () => {
    await warmPool(db);
    const received: NewReceivedMessage = {
      ...draft(BOB),
      transferEht: 'eht-of-the-transfer',
      resources: [{ contentId: cid('r'), size: 5, status: 'pending' }],
    };
    const results = await Promise.all(Array.from({ length: 20 }, () => messages.createReceived(received)));
    const ids = new Set(results.map((r) => r.id));
    expect(ids.size).toBe(1);
    expect(results.filter((r) => r.created)).toHaveLength(1);
    const [id] = [...ids] as [string];
    expect(await messages.get(BOB, id)).toMatchObject({ mailbox: 'inbox', transferEht: 'eht-of-the-transfer' });
    const rows = (await db.knex('mail_messages').where({ address: BOB }).count({ n: '*' }).first()) as { n: unknown };
    expect(Number(rows.n)).toBe(1);
    expect(await changes.since(BOB, '0')).toMatchObject({ created: [id], updated: [], destroyed: [] });
    // Another eht (a later forward hop) or another recipient is another message.
    expect((await messages.createReceived({ ...received, transferEht: 'other' })).created).toBe(true);
    expect((await messages.createReceived({ ...received, address: 'carol@example.net' })).created).toBe(true);
  });

  it('finds an account’s messages by Message-ID', async () => {
    const sent = await messages.create(draft(ALICE, { messageId: '<same@example.com>', mailbox: 'sent' }));
    const got = await messages.createReceived({
      ...draft(ALICE, { messageId: '<same@example.com>' }),
      transferEht: 'e',
    });
    expect((await messages.byMessageId(ALICE, '<same@example.com>')).map((m) => m.id)).toEqual([sent, got.id]);
    expect(await messages.byMessageId(BOB, '<same@example.com>')).toEqual([]);
  });

  it('marks a fetched resource in every message referencing it, recording updates per account', async () => {
    const r = cid('shared');
    const m1 = await messages.create(draft(ALICE, { resources: [{ contentId: r, size: 3, status: 'pending' }] }));
    const m2 = await messages.create(draft(BOB, { resources: [{ contentId: r, size: 3, status: 'pending' }] }));
    const m3 = await messages.create(
      draft(BOB, { resources: [{ contentId: cid('other'), size: 3, status: 'pending' }] }),
    );
    const aliceState = await changes.state(ALICE);
    const bobState = await changes.state(BOB);
    clock.advance(1000);
    const marked = await messages.markResources(r, 'held');
    expect(marked.sort((x, y) => (x.id < y.id ? -1 : 1))).toEqual([
      { address: ALICE, id: m1 },
      { address: BOB, id: m2 },
    ]);
    expect(await messages.resourcesOf(m1)).toEqual([{ contentId: r, size: 3, status: 'held', updatedAt: T0 + 1000 }]);
    expect((await messages.resourcesOf(m3))[0]?.status).toBe('pending');
    expect(await changes.since(ALICE, aliceState)).toMatchObject({ updated: [m1] });
    expect(await changes.since(BOB, bobState)).toMatchObject({ updated: [m2] });
    expect(await messages.markResources(r, 'held')).toEqual([]); // nothing changed, nothing recorded
  });

  it('makes the accounts hold a resource marked held, with its declared size and media type', async () => {
    const r = cid('photo');
    const leaf: Part = {
      headers: [
        { 'Content-Disposition': 'attachment; filename="p.jpg"' },
        { 'Content-ID': r },
        { 'Content-Type': externalContentType(4000, 'image/jpeg') },
      ],
    };
    const m1 = await messages.create(
      draft(BOB, { body: { parts: [leaf] }, resources: [{ contentId: r, size: 4000, status: 'pending' }] }),
    );
    await messages.create(
      draft(BOB, { body: { parts: [leaf] }, resources: [{ contentId: r, size: 4000, status: 'pending' }] }),
    );
    const accounts = new AccountStore(db.knex, { now: clock.now });
    expect(await accounts.resource(BOB, r)).toBeUndefined();
    // A failed fetch holds nothing.
    await messages.markResources(r, 'failed');
    expect(await accounts.resource(BOB, r)).toBeUndefined();
    clock.advance(1000);
    await messages.markResources(r, 'held');
    expect(await accounts.resource(BOB, r)).toMatchObject({ size: 4000, mediaType: 'image/jpeg', refs: 2 });
    expect(await accounts.storageUsed(BOB)).toBe(4000);
    // Marking did all that adding it does (so the fetcher no longer adds it): an addition changes nothing.
    expect(await accounts.addResource(BOB, { contentId: r, size: 4000 })).toEqual({ added: false, storageUsed: 4000 });
    await messages.delete(BOB, m1);
    expect(await accounts.resource(BOB, r)).toMatchObject({ refs: 1 });
  });

  it('keeps why a resource failed, for the recipient: clipped, and gone once the bytes are held after all', async () => {
    const [r, full] = [cid('refused'), cid('too big')];
    const id = await messages.create(
      draft(BOB, {
        resources: [
          { contentId: r, size: 10, status: 'pending' },
          { contentId: full, size: 20, status: 'failed', failure: 'it does not fit the mailbox' },
        ],
      }),
    );
    const failureOf = async (contentId: string) =>
      (await messages.resourcesOf(id)).find((x) => x.contentId === contentId)?.failure;
    expect(await failureOf(full)).toBe('it does not fit the mailbox');
    expect(await failureOf(r)).toBeUndefined();
    await messages.markResources(r, 'failed', { failure: `the origin answered 403 ${'x'.repeat(2000)}` });
    const refused = (await messages.resourcesOf(id)).find((x) => x.contentId === r)!;
    expect(refused.status).toBe('failed');
    expect(refused.failure).toHaveLength(MAX_FAILURE);
    expect(refused.failure).toMatch(/^the origin answered 403 x+$/);
    // Read in a batch as the client API does, the reason is there too.
    const batch = (await messages.getMany(BOB, [id])).get(id)!;
    expect(batch.resources.find((x) => x.contentId === r)!.failure).toBe(refused.failure);
    await messages.markResources(r, 'held');
    expect((await messages.resourcesOf(id)).find((x) => x.contentId === r)).toMatchObject({ status: 'held' });
    expect(await failureOf(r)).toBeUndefined();
  });

  it('reads the media type from the body for a reference stored before it was kept (migration 0003)', async () => {
    const r = cid('old photo');
    const leaf: Part = {
      headers: [{ 'Content-ID': r }, { 'Content-Type': externalContentType(10, 'image/png') }],
    };
    const id = await messages.create(
      draft(BOB, { body: { parts: [leaf] }, resources: [{ contentId: r, size: 10, status: 'pending' }] }),
    );
    expect(await db.knex('mail_message_resources').first('media_type').where({ message: id })).toEqual({
      media_type: 'image/png',
    });
    await db.knex('mail_message_resources').where({ message: id }).update({ media_type: null });
    await messages.markResources(r, 'held');
    const accounts = new AccountStore(db.knex, { now: clock.now });
    expect(await accounts.resource(BOB, r)).toMatchObject({ size: 10, mediaType: 'image/png', refs: 1 });
  });

  it('answers one resource of a message with its declared size and media type, in one statement', async () => {
    const r = cid('served');
    const leaf: Part = { headers: [{ 'Content-ID': r }, { 'Content-Type': externalContentType(7, 'image/gif') }] };
    const id = await messages.create(
      draft(ALICE, {
        mailbox: 'sent',
        body: { parts: [leaf] },
        resources: [{ contentId: r, size: 7, status: 'held' }],
      }),
    );
    let found: Awaited<ReturnType<MessageStore['messageResource']>>;
    expect(
      await statementsOf(db.knex, async () => {
        found = await messages.messageResource(ALICE, id, r);
      }),
    ).toHaveLength(1);
    expect(found).toEqual({ size: 7, mediaType: 'image/gif' });
    expect(await messages.messageResource(BOB, id, r)).toBeUndefined(); // another account's message
    expect(await messages.messageResource(ALICE, id, cid('other'))).toBeUndefined();
    expect(await messages.messageResource(ALICE, id, 'not a content id')).toBeUndefined();
    // Stored before migration 0003: the caller reads the body.
    await db.knex('mail_message_resources').where({ message: id }).update({ media_type: null });
    expect(await messages.messageResource(ALICE, id, r)).toEqual({ size: 7, mediaType: undefined });
  });

  it('marks only pending references failed: bytes held stay held when a later fetch gives up', async () => {
    const r = cid('kept');
    const held = await messages.create(draft(BOB, { resources: [{ contentId: r, size: 3, status: 'held' }] }));
    const waiting = await messages.create(draft(BOB, { resources: [{ contentId: r, size: 3, status: 'pending' }] }));
    expect(await messages.markResources(r, 'failed')).toEqual([{ address: BOB, id: waiting }]);
    expect((await messages.resourcesOf(held))[0]?.status).toBe('held');
    expect((await messages.resourcesOf(waiting))[0]?.status).toBe('failed');
    // A fetch that succeeds after all holds the failed ones too.
    expect(await messages.markResources(r, 'held')).toEqual([{ address: BOB, id: waiting }]);
  });

  it('completes the fetch job in the same transaction, and changes nothing when its lease was lost', async () => {
    const jobs = new JobQueue(db.knex, { now: clock.now });
    const r = cid('leased');
    const id = await messages.create(draft(BOB, { resources: [{ contentId: r, size: 3, status: 'pending' }] }));
    await jobs.requeue('fetch', r, 'example.com', {});
    const [job] = await jobs.claim({ kinds: ['fetch'], owner: 'w1', limit: 1, leaseMs: 60_000 });
    // Another worker holds the lease now (it expired): this one's outcome is not recorded.
    clock.advance(60_000);
    await jobs.claim({ kinds: ['fetch'], owner: 'w2', limit: 1, leaseMs: 60_000 });
    const lost = await messages.markResources(r, 'held', { completing: { id: job!.id, owner: 'w1' } }).then(
      () => 'resolved',
      (e: unknown) => (isMailStoreError(e) ? e.code : String(e)),
    );
    expect(lost).toBe('not_lease_owner');
    expect((await messages.resourcesOf(id))[0]?.status).toBe('pending');
    expect(await new AccountStore(db.knex).resource(BOB, r)).toBeUndefined();
    expect(await messages.markResources(r, 'held', { completing: { id: job!.id, owner: 'w2' } })).toEqual([
      { address: BOB, id },
    ]);
    expect(await jobs.get(job!.id)).toMatchObject({ status: 'done', leaseOwner: undefined });
  });

  describe('a message stored while the fetch of its resource completes (the fetch missed it)', () => {
    const CAROL = 'carol@example.net';
    const r = cid('raced');
    const pending = [{ contentId: r, size: 3, status: 'pending' as const }];
    let jobs: JobQueue;
    let accounts: AccountStore;

    beforeEach(() => {
      jobs = new JobQueue(db.knex, { now: clock.now });
      accounts = new AccountStore(db.knex, { now: clock.now });
    });

    /** The first transfer: Bob's copy, the fetch it queues, and a fetcher running it. */
    async function firstTransferFetching() {
      await messages.createReceived({ ...draft(BOB, { resources: pending }), transferEht: 'e1' });
      expect(await jobs.requeue('fetch', r, 'example.com', { n: 1 })).toBe('queued');
      const [job] = await jobs.claim({ kinds: ['fetch'], owner: 'w1', limit: 1, leaseMs: 60_000 });
      // The second transfer looks for the bytes before the fetch ends: nobody holds them, Carol's is pending.
      expect(await accounts.shareHeld(CAROL, { contentId: r, size: 3 })).toBeUndefined();
      return job!;
    }

    async function expectCarolHolds(id: string) {
      expect((await messages.resourcesOf(id))[0]?.status).toBe('held');
      expect(await accounts.resource(CAROL, r)).toMatchObject({ size: 3, refs: 1 });
      expect(await jobs.find('fetch', r)).toMatchObject({ status: 'done' });
    }

    it('stored after the fetch marked its references: queuing the fetch again holds it', async () => {
      const job = await firstTransferFetching();
      await messages.markResources(r, 'held', { completing: { id: job.id, owner: 'w1' } });
      const carol = await messages.createReceived({ ...draft(CAROL, { resources: pending }), transferEht: 'e2' });
      expect((await messages.resourcesOf(carol.id))[0]?.status).toBe('pending'); // missed by that fetch
      // What the transfer does once Carol's copy is stored: the fetch was done, so it is queued again...
      expect(await jobs.requeue('fetch', r, 'example.com', { n: 2 })).toBe('requeued');
      const [again] = await jobs.claim({ kinds: ['fetch'], owner: 'w2', limit: 1, leaseMs: 60_000 });
      expect(again).toMatchObject({ id: job.id, payload: { n: 2 } });
      // ...and the fetcher, finding the bytes held, only marks the references (src/mta/fetcher.ts).
      expect(await messages.markResources(r, 'held', { completing: { id: again!.id, owner: 'w2' } })).toEqual([
        { address: CAROL, id: carol.id },
      ]);
      await expectCarolHolds(carol.id);
    });

    it('stored before the fetch marked its references: the fetch holds it, the job is not queued again', async () => {
      const job = await firstTransferFetching();
      const carol = await messages.createReceived({ ...draft(CAROL, { resources: pending }), transferEht: 'e2' });
      expect(await jobs.requeue('fetch', r, 'example.com', { n: 2 })).toBe('pending');
      await messages.markResources(r, 'held', { completing: { id: job.id, owner: 'w1' } });
      await expectCarolHolds(carol.id);
    });

    it('queued again while the fetch’s transaction is open: the queuing waits for its commit', async () => {
      // The store's rule (JobQueue.requeue): the job is completed first in the transaction that marks the
      // references, so a requeue cannot read it as pending once those references were read.
      const job = await firstTransferFetching();
      await warmPool(db, 2);
      let requeued: Promise<string> | undefined;
      await db.knex.transaction(async (trx) => {
        await completeLeasedJob(trx, { id: job.id, owner: 'w1' }, clock.now());
        requeued = jobs.requeue('fetch', r, 'example.com', { n: 2 });
        if (database.name === 'postgres') {
          // Commit only once the requeue waits for this transaction's lock on the job.
          const { rows } = (await trx.raw('select pg_backend_pid() as pid')) as { rows: { pid: number }[] };
          for (;;) {
            const { rows: blocked } = (await db.knex.raw(
              'select count(*) as n from pg_stat_activity where ? = any(pg_blocking_pids(pid))',
              [rows[0]!.pid],
            )) as { rows: { n: unknown }[] };
            if (Number(blocked[0]!.n) > 0) break;
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
        }
      });
      expect(await requeued).toBe('requeued');
    });
  });
});

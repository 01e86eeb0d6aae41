import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AccountStore, DEFAULT_SHARE_WINDOW_MS } from './accounts.js';
import { isMailStoreError } from './errors.js';
import { MessageStore, type NewMessage } from './messages.js';
import {
  DAY,
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
const BOB = 'bob@example.com';
const CAROL = 'carol@example.com';

function message(address: string, resources: { contentId: string; size: number }[]): NewMessage {
  return {
    address,
    mailbox: 'drafts',
    messageId: `<${Math.random().toString(36).slice(2)}@example.com>`,
    threadId: 't1',
    envelope: [{ headers: [{ From: address }] }],
    body: { parts: [] },
    date: 0,
    resources: resources.map((r) => ({ ...r, status: 'held' as const })),
  };
}

describe.each(testDatabases())('AccountStore on $name', (database) => {
  let db: MailboxTestDatabase;
  const clock = testClock();
  let accounts: AccountStore;
  let messages: MessageStore;

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    accounts = new AccountStore(db.knex, { now: clock.now });
    messages = new MessageStore(db.knex, { now: clock.now });
  });

  afterAll(async () => {
    await db?.destroy();
  });

  beforeEach(async () => {
    await clearMailboxTables(db.knex);
    clock.set(Date.UTC(2030, 0, 15));
  });

  it('creates accounts once and reports 0 bytes for an unknown one', async () => {
    expect(await accounts.storageUsed(ALICE)).toBe(0);
    await accounts.ensure(ALICE);
    await accounts.ensure(ALICE);
    const rows = (await db.knex('mail_accounts').select('address')) as { address: string }[];
    expect(rows.map((r) => r.address)).toEqual([ALICE]);
    expect(await accounts.storageUsed(ALICE)).toBe(0);
  });

  it('creates a known account with no statement, in any store of the database, until the rows are deleted', async () => {
    await accounts.ensure(ALICE);
    expect(await statementsOf(db.knex, () => accounts.ensure(ALICE))).toEqual([]);
    expect(await statementsOf(db.knex, () => new AccountStore(db.knex).ensure(ALICE))).toEqual([]);
    // A test emptying the tables forgets what the stores knew: the account is created again, and holds.
    await clearMailboxTables(db.knex);
    await accounts.ensure(ALICE);
    const rows = (await db.knex('mail_accounts').select('address')) as { address: string }[];
    expect(rows.map((r) => r.address)).toEqual([ALICE]);
    expect(await accounts.addResource(ALICE, { contentId: cid('a'), size: 5 })).toEqual({
      added: true,
      storageUsed: 5,
    });
  });

  it('does not take an account row created by a transaction that rolled back for one that exists', async () => {
    // Bob's first resource is refused for the quota: the transaction that created his row rolls back.
    const refused = await accounts.addResource(BOB, { contentId: cid('big'), size: 2000 }, { quota: 1000 }).then(
      () => 'added',
      (e: unknown) => (isMailStoreError(e) ? e.code : String(e)),
    );
    expect(refused).toBe('quota_exceeded');
    expect(await db.knex('mail_accounts').select('address')).toEqual([]);
    // Had the store remembered him, this would skip creating his row and find no counter to add to.
    expect(await accounts.addResource(BOB, { contentId: cid('small'), size: 10 }, { quota: 1000 })).toEqual({
      added: true,
      storageUsed: 10,
    });
    expect(await accounts.storageUsed(BOB)).toBe(10);
  });

  it('adds a resource to a known account in one read and two writes', async () => {
    // Created inside a transaction, the account is known once a later insert of it finds it committed.
    await accounts.addResource(ALICE, { contentId: cid('first'), size: 1 });
    await accounts.addResource(ALICE, { contentId: cid('second'), size: 1 });
    const sql = await statementsOf(db.knex, () => accounts.addResource(ALICE, { contentId: cid('a'), size: 300 }));
    // On PostgreSQL the resource's advisory lock and the account's row lock come first.
    const locks = database.name === 'postgres' ? 2 : 0;
    expect(sql).toHaveLength(locks + 3);
    expect(sql.filter((q) => /^insert into .mail_accounts/i.test(q))).toEqual([]);
  });

  it('holds a resource once, counting its size once', async () => {
    const a = { contentId: cid('a'), size: 300, mediaType: 'image/png' };
    expect(await accounts.addResource(ALICE, a, { quota: 1000 })).toEqual({ added: true, storageUsed: 300 });
    expect(await accounts.addResource(ALICE, a, { quota: 1000 })).toEqual({ added: false, storageUsed: 300 });
    expect(await accounts.hasResource(ALICE, a.contentId)).toBe(true);
    expect(await accounts.hasResource(BOB, a.contentId)).toBe(false);
    expect(await accounts.resource(ALICE, a.contentId)).toEqual({
      address: ALICE,
      contentId: a.contentId,
      size: 300,
      mediaType: 'image/png',
      refs: 0,
      createdAt: clock.now(),
      unreferencedAt: clock.now(),
    });
    expect(await accounts.storageUsed(ALICE)).toBe(300);
  });

  it('refuses what would exceed the quota, and accepts exactly reaching it', async () => {
    await accounts.addResource(ALICE, { contentId: cid(1), size: 600 }, { quota: 1000 });
    const refused = await accounts
      .addResource(ALICE, { contentId: cid(2), size: 401 }, { quota: 1000 })
      .catch((e: unknown) => e);
    expect(isMailStoreError(refused, 'quota_exceeded')).toBe(true);
    expect(await accounts.hasResource(ALICE, cid(2))).toBe(false);
    await accounts.addResource(ALICE, { contentId: cid(3), size: 400 }, { quota: 1000 });
    expect(await accounts.storageUsed(ALICE)).toBe(1000);
    // A resource already held needs no room.
    expect((await accounts.addResource(ALICE, { contentId: cid(1), size: 600 }, { quota: 1000 })).added).toBe(false);
  });

  it('never exceeds the quota under concurrent additions', async () => {
    await warmPool(db);
    const results = await Promise.allSettled(
      Array.from({ length: 40 }, (_, i) =>
        accounts.addResource(ALICE, { contentId: cid(`c${i}`), size: 100 }, { quota: 1000 }),
      ),
    );
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected');
    expect(ok).toHaveLength(10);
    expect(refused).toHaveLength(30);
    for (const r of refused) expect(isMailStoreError((r as PromiseRejectedResult).reason, 'quota_exceeded')).toBe(true);
    expect(await accounts.storageUsed(ALICE)).toBe(1000);
    const rows = (await db.knex('mail_resources').where({ address: ALICE }).count({ n: '*' }).first()) as {
      n: unknown;
    };
    expect(Number(rows.n)).toBe(10);
  });

  it('counts references and notes when they reach zero', async () => {
    const a = cid('a');
    await accounts.addResource(ALICE, { contentId: a, size: 10 });
    await accounts.reference(ALICE, [a, a]); // duplicates count once
    await accounts.reference(ALICE, [a]);
    expect(await accounts.resource(ALICE, a)).toMatchObject({ refs: 2, unreferencedAt: undefined });
    await accounts.unreference(ALICE, [a]);
    expect(await accounts.resource(ALICE, a)).toMatchObject({ refs: 1, unreferencedAt: undefined });
    clock.advance(1000);
    const zeroAt = clock.now();
    await accounts.unreference(ALICE, [a]);
    expect(await accounts.resource(ALICE, a)).toMatchObject({ refs: 0, unreferencedAt: zeroAt });
    clock.advance(1000);
    await accounts.unreference(ALICE, [a]); // never negative, and the first zero time is kept
    expect(await accounts.resource(ALICE, a)).toMatchObject({ refs: 0, unreferencedAt: zeroAt });
  });

  it('keeps reference counts with the messages that use them', async () => {
    const a = cid('a');
    await accounts.addResource(ALICE, { contentId: a, size: 10 });
    const id1 = await messages.create(message(ALICE, [{ contentId: a, size: 10 }]));
    const id2 = await messages.create(message(ALICE, [{ contentId: a, size: 10 }]));
    expect((await accounts.resource(ALICE, a))?.refs).toBe(2);
    await messages.delete(ALICE, id1);
    await messages.delete(ALICE, id2);
    expect(await accounts.resource(ALICE, a)).toMatchObject({ refs: 0, unreferencedAt: clock.now() });
  });

  it('counts the messages that referenced a resource before the account held it', async () => {
    const a = cid('fetched later');
    await messages.create(message(BOB, [{ contentId: a, size: 10 }]));
    await messages.create(message(BOB, [{ contentId: a, size: 10 }]));
    await accounts.addResource(BOB, { contentId: a, size: 10 });
    expect(await accounts.resource(BOB, a)).toMatchObject({ refs: 2, unreferencedAt: undefined });
  });

  it('lists the holders of a resource', async () => {
    const a = cid('a');
    await accounts.addResource(BOB, { contentId: a, size: 1 });
    await accounts.addResource(ALICE, { contentId: a, size: 1 });
    expect(await accounts.holders(a)).toEqual([ALICE, BOB]);
    expect(await accounts.holders(cid('none'))).toEqual([]);
  });

  it('makes unreferenced resources collectable after the share window, then forgets them', async () => {
    const kept = cid('kept');
    const dropped = cid('dropped');
    const upload = cid('abandoned upload');
    await accounts.addResource(ALICE, { contentId: kept, size: 100 });
    await accounts.addResource(ALICE, { contentId: dropped, size: 200 });
    await accounts.addResource(BOB, { contentId: dropped, size: 200 });
    await accounts.addResource(ALICE, { contentId: upload, size: 50 });
    const keeper = await messages.create(message(ALICE, [{ contentId: kept, size: 100 }]));
    const gone = await messages.create(message(ALICE, [{ contentId: dropped, size: 200 }]));
    clock.advance(DAY);
    await messages.delete(ALICE, gone);
    expect(await accounts.collectable()).toEqual([]);

    clock.advance(DEFAULT_SHARE_WINDOW_MS - DAY); // the upload's window is over, not yet the deletion's
    expect(await accounts.collectable()).toEqual([upload]);
    clock.advance(DAY);
    expect((await accounts.collectable()).sort()).toEqual([dropped, upload].sort());

    expect(await accounts.forgetUnreferenced(dropped)).toBe(true);
    expect(await accounts.holders(dropped)).toEqual([]);
    expect(await accounts.storageUsed(ALICE)).toBe(150);
    expect(await accounts.storageUsed(BOB)).toBe(0);
    expect(await accounts.forgetUnreferenced(kept)).toBe(false);
    expect(await accounts.collectable()).toEqual([upload]);
    expect(await messages.get(ALICE, keeper)).toBeDefined();
  });

  it('restarts the window when an unreferenced resource is added again, and rechecks before forgetting', async () => {
    const a = cid('a');
    await accounts.addResource(ALICE, { contentId: a, size: 10 });
    clock.advance(DEFAULT_SHARE_WINDOW_MS);
    expect(await accounts.collectable()).toEqual([a]);
    await accounts.addResource(ALICE, { contentId: a, size: 10 }); // re-uploaded
    expect(await accounts.forgetUnreferenced(a)).toBe(false);
    expect(await accounts.collectable()).toEqual([]);
    clock.advance(DEFAULT_SHARE_WINDOW_MS);
    await accounts.reference(ALICE, [a]);
    expect(await accounts.forgetUnreferenced(a)).toBe(false);
    expect(await accounts.hasResource(ALICE, a)).toBe(true);
  });

  it('filters blob-store candidates, finding blobs no account holds', async () => {
    const orphan = cid('orphan');
    const recent = cid('recent');
    const pending = cid('pending fetch');
    await accounts.addResource(ALICE, { contentId: recent, size: 1 });
    await messages.create(message(BOB, [{ contentId: pending, size: 1 }])); // received, not fetched yet
    const candidates = [orphan, recent, pending];
    expect(await accounts.collectable(DEFAULT_SHARE_WINDOW_MS, { candidates })).toEqual([orphan]);
    expect(await accounts.forgetUnreferenced(orphan)).toBe(true);
    expect(await accounts.forgetUnreferenced(pending)).toBe(false);
    clock.advance(DEFAULT_SHARE_WINDOW_MS);
    expect(await accounts.collectable(DEFAULT_SHARE_WINDOW_MS, { candidates })).toEqual([orphan, recent]);
  });

  it('pages through collectable resources with after', async () => {
    const ids = [cid('p1'), cid('p2'), cid('p3'), cid('p4'), cid('p5')];
    for (const id of ids) await accounts.addResource(ALICE, { contentId: id, size: 1 });
    clock.advance(DEFAULT_SHARE_WINDOW_MS);
    const seen: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await accounts.collectable(DEFAULT_SHARE_WINDOW_MS, { limit: 2, after });
      seen.push(...page);
      if (page.length < 2) break;
      after = page.at(-1);
    }
    expect(seen.sort()).toEqual([...ids].sort());
    expect(new Set(seen).size).toBe(ids.length);
  });

  it('shares a held resource with another account only while some account holds it', async () => {
    const a = cid('held');
    let shared: unknown = 'not called';
    const sql = await statementsOf(db.knex, async () => {
      shared = await accounts.shareHeld(BOB, { contentId: a, size: 5 });
    });
    expect(shared).toBeUndefined();
    // Held by nobody: on SQLite one read, with no transaction; PostgreSQL reads under the resource's lock.
    expect(sql).toHaveLength(database.name === 'postgres' ? 2 : 1);
    expect(await accounts.hasResource(BOB, a)).toBe(false);
    await accounts.addResource(ALICE, { contentId: a, size: 5, mediaType: 'text/plain' });
    expect(await accounts.shareHeld(BOB, { contentId: a, size: 5 }, { quota: 100 })).toEqual({
      added: true,
      storageUsed: 5,
    });
    expect(await accounts.holders(a)).toEqual([ALICE, BOB]);
    await expect(accounts.shareHeld(CAROL, { contentId: a, size: 5 }, { quota: 4 })).rejects.toSatisfy((e: unknown) =>
      isMailStoreError(e, 'quota_exceeded'),
    );
  });

  it('starts a received message: held when some account holds it, pending when none does, failed (with why) over quota', async () => {
    const [held, unheld, big] = [cid('start-held'), cid('start-unheld'), cid('start-big')];
    await accounts.addResource(ALICE, { contentId: held, size: 5, mediaType: 'text/plain' });
    await accounts.addResource(ALICE, { contentId: big, size: 50, mediaType: 'text/plain' });
    const statuses = await accounts.shareHeldOrPending(
      CAROL,
      [
        { contentId: held, size: 5 },
        { contentId: unheld, size: 5 },
        { contentId: big, size: 50 },
      ],
      { quota: 20 },
    );
    expect(Object.fromEntries(statuses)).toEqual({
      [held]: { status: 'held' },
      [unheld]: { status: 'pending' },
      [big]: {
        status: 'failed',
        failure: `it does not fit the mailbox: ${CAROL} holds 5 bytes; 50 more would exceed the quota of 20`,
      },
    });
    expect(await accounts.holders(held)).toContain(CAROL);
    expect(await accounts.holders(big)).not.toContain(CAROL);
  });

  it('says whether anything refers to a resource: a holder, or a message waiting for it', async () => {
    const a = cid('referenced?');
    expect(await accounts.isReferenced(a)).toBe(false);
    const id = await messages.create(message(BOB, [{ contentId: a, size: 1 }]));
    expect(await accounts.isReferenced(a)).toBe(true);
    await messages.delete(BOB, id);
    expect(await accounts.isReferenced(a)).toBe(false);
    await accounts.addResource(ALICE, { contentId: a, size: 1 });
    expect(await accounts.isReferenced(a)).toBe(true);
  });

  it('never lets a new holder in while the collector forgets the last one (the resource lock)', async () => {
    await warmPool(db);
    for (let round = 0; round < 25; round++) {
      const a = cid(`race ${round}`);
      clock.set(Date.UTC(2030, 0, 15));
      await accounts.addResource(ALICE, { contentId: a, size: 10 });
      clock.advance(DEFAULT_SHARE_WINDOW_MS);
      const [forgotten, shared] = await Promise.all([
        accounts.forgetUnreferenced(a),
        accounts.shareHeld(BOB, { contentId: a, size: 10 }),
      ]);
      // Either the collector went first (nobody holds it any more, Bob gets nothing: his mailbox fetches
      // it) or Bob did (his row is recent, so the collector keeps the resource): never both.
      expect([forgotten, shared !== undefined], `round ${round}`).not.toEqual([true, true]);
      expect(await accounts.hasResource(BOB, a)).toBe(!forgotten);
    }
  });

  it('forgets one account’s unreferenced resource only', async () => {
    const a = cid('a');
    await accounts.addResource(ALICE, { contentId: a, size: 70 });
    await accounts.reference(ALICE, [a]);
    expect(await accounts.forget(ALICE, a)).toBe(false);
    await accounts.unreference(ALICE, [a]);
    expect(await accounts.forget(ALICE, a)).toBe(true);
    expect(await accounts.forget(ALICE, a)).toBe(false);
    expect(await accounts.storageUsed(ALICE)).toBe(0);
  });

  it('rejects malformed arguments as TypeErrors', async () => {
    await expect(accounts.addResource(ALICE, { contentId: 'nope', size: 1 })).rejects.toThrow(TypeError);
    await expect(accounts.addResource(ALICE, { contentId: cid(1), size: -1 })).rejects.toThrow(TypeError);
    await expect(accounts.addResource('nobody', { contentId: cid(1), size: 1 })).rejects.toThrow(TypeError);
    await expect(accounts.addResource(ALICE, { contentId: cid(1), size: 1 }, { quota: -5 })).rejects.toThrow(TypeError);
  });
});

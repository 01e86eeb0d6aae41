import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ChangeLog, recordChanges, type Change } from './changes.js';
import { isMailStoreError } from './errors.js';
import { MessageStore } from './messages.js';
import {
  DAY,
  T0,
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

describe.each(testDatabases())('ChangeLog on $name', (database) => {
  let db: MailboxTestDatabase;
  const clock = testClock();
  let log: ChangeLog;

  const record = (address: string, ...changes: [string, Change['op']][]) =>
    db.knex.transaction((trx) =>
      recordChanges(
        trx,
        address,
        changes.map(([object, op]) => ({ object, op })),
        clock.now(),
      ),
    );

  const code = async (promise: Promise<unknown>) =>
    promise.then(
      () => 'resolved',
      (e: unknown) => (isMailStoreError(e) ? e.code : String(e)),
    );

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    log = new ChangeLog(db.knex, { now: clock.now });
  });

  afterAll(async () => {
    await db?.destroy();
  });

  beforeEach(async () => {
    await clearMailboxTables(db.knex);
    clock.set(T0);
  });

  it("answers '0' for an account without changes, then its newest change", async () => {
    expect(await log.state(ALICE)).toBe('0');
    expect(await log.since(ALICE, '0')).toEqual({
      state: '0',
      created: [],
      updated: [],
      destroyed: [],
      hasMore: false,
    });
    await record(ALICE, ['a', 'created']);
    const state = await log.state(ALICE);
    expect(state).toMatch(/^[1-9][0-9]*$/);
    expect(await log.state(BOB)).toBe('0');
    expect(await log.since(ALICE, state)).toEqual({ state, created: [], updated: [], destroyed: [], hasMore: false });
    // A long poll re-checks the state often: one statement; a read of changes, two.
    expect(await statementsOf(db.knex, () => log.state(ALICE))).toHaveLength(1);
    expect(await statementsOf(db.knex, () => log.since(ALICE, '0'))).toHaveLength(2);
  });

  it('collapses several changes of one object into one list', async () => {
    await record(ALICE, ['old', 'created'], ['gone-old', 'created']);
    const state = await log.state(ALICE);
    await record(
      ALICE,
      ['new', 'created'],
      ['new', 'updated'],
      ['old', 'updated'],
      ['old', 'updated'],
      ['gone-old', 'updated'],
      ['gone-old', 'destroyed'],
      ['brief', 'created'],
      ['brief', 'destroyed'],
    );
    await record(BOB, ['bobs', 'created']);
    const result = await log.since(ALICE, state);
    expect(result).toEqual({
      state: await log.state(ALICE),
      created: ['new'],
      updated: ['old'],
      destroyed: ['gone-old', 'brief'],
      hasMore: false,
    });
  });

  it('pages with maxChanges, and the pages add up to the whole', async () => {
    for (let i = 0; i < 25; i++) await record(ALICE, [`m${i}`, 'created']);
    await record(ALICE, ['m0', 'updated'], ['m1', 'destroyed']);
    const created = new Set<string>();
    let state = '0';
    let pages = 0;
    for (;;) {
      const page = await log.since(ALICE, state, { maxChanges: 10 });
      expect(page.created.length + page.updated.length + page.destroyed.length).toBeLessThanOrEqual(10);
      for (const id of page.created) created.add(id);
      for (const id of page.destroyed) created.delete(id);
      state = page.state;
      pages++;
      if (!page.hasMore) break;
    }
    expect(pages).toBe(3);
    expect(state).toBe(await log.state(ALICE));
    expect(created.size).toBe(24);
    expect(created.has('m1')).toBe(false);
  });

  it('refuses malformed states as invalid_state', async () => {
    for (const state of ['', 'abc', '-1', '01', '1.5', ' 1', '99999999999999999999', '12345678901234567'])
      expect(await code(log.since(ALICE, state))).toBe('invalid_state');
    await expect(log.since(ALICE, '0', { maxChanges: 0 })).rejects.toThrow(TypeError);
  });

  it('refuses a state from beyond this account’s log', async () => {
    await record(ALICE, ['a', 'created']);
    await record(BOB, ['b', 'created']);
    expect(await code(log.since(ALICE, await log.state(BOB)))).toBe('cannot_calculate_changes');
  });

  it('answers cannot_calculate_changes for a state older than the pruned log', async () => {
    await record(ALICE, ['a', 'created']);
    const s1 = await log.state(ALICE);
    await record(ALICE, ['b', 'created']);
    const s2 = await log.state(ALICE);
    await record(ALICE, ['c', 'created']);
    const s3 = await log.state(ALICE);

    expect(await log.pruneBefore(Number(s2) + 1)).toBe(2); // a and b are gone
    expect(await code(log.since(ALICE, '0'))).toBe('cannot_calculate_changes');
    expect(await code(log.since(ALICE, s1))).toBe('cannot_calculate_changes');
    expect(await log.since(ALICE, s2)).toMatchObject({ created: ['c'], state: s3 });

    // Pruning everything keeps the state where it was, so clients are not sent back in time.
    await log.pruneBefore(Number(s3) + 1000);
    expect(await log.state(ALICE)).toBe(s3);
    expect(await log.since(ALICE, s3)).toMatchObject({ created: [], state: s3 });
    expect(await code(log.since(ALICE, s2))).toBe('cannot_calculate_changes');
  });

  it('prunes one account without touching another', async () => {
    await record(ALICE, ['a', 'created']);
    await record(BOB, ['b', 'created']);
    const top = Number(await log.state(BOB)) + 1;
    expect(await log.pruneBefore(top, { address: ALICE })).toBe(1);
    expect(await log.since(BOB, '0')).toMatchObject({ created: ['b'] });
  });

  it('keeps 30 days, or the newest changes of each account, whichever is more', async () => {
    for (let i = 0; i < 10; i++) await record(ALICE, [`old${i}`, 'created']);
    for (let i = 0; i < 10; i++) await record(BOB, [`bob${i}`, 'created']);
    clock.advance(20 * DAY);
    for (let i = 0; i < 3; i++) await record(BOB, [`young${i}`, 'created']);
    clock.advance(11 * DAY); // the first batches are 31 days old, the young ones 11

    // Alice keeps her newest 4 though they are old; Bob keeps his young 3 plus one old to reach 4.
    expect(await log.prune({ keepCount: 4 })).toBe(6 + 9);
    expect((await log.since(ALICE, String(Number(await log.state(ALICE)) - 4))).created).toEqual([
      'old6',
      'old7',
      'old8',
      'old9',
    ]);
    expect(await code(log.since(ALICE, '0'))).toBe('cannot_calculate_changes');
    const bobRows = (await db.knex('mail_changes').where({ address: BOB }).orderBy('seq')) as { object: string }[];
    expect(bobRows.map((r) => r.object)).toEqual(['bob9', 'young0', 'young1', 'young2']);

    // With the default count nothing young or recent-enough goes.
    expect(await log.prune()).toBe(0);
  });

  it('never lets a client skip a change committed late (concurrent writers, chained polls)', async () => {
    await warmPool(db);
    const messages = new MessageStore(db.knex, { now: clock.now });
    const created: string[] = [];
    const seen = new Set<string>();
    let state = '0';
    let writing = true;
    const poller = (async () => {
      while (writing) {
        const page = await log.since(ALICE, state, { maxChanges: 1000 });
        for (const id of page.created) seen.add(id);
        state = page.state;
      }
    })();
    await Promise.all(
      Array.from({ length: 150 }, async (_, i) => {
        const id = await messages.create({
          address: ALICE,
          mailbox: 'inbox',
          messageId: `<c${i}@example.com>`,
          threadId: `<c${i}@example.com>`,
          envelope: [],
          body: { parts: [] },
          date: T0,
        });
        created.push(id);
      }),
    );
    writing = false;
    await poller;
    const last = await log.since(ALICE, state, { maxChanges: 1000 });
    for (const id of last.created) seen.add(id);
    expect([...seen].sort()).toEqual([...created].sort());
  });
});

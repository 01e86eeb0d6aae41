import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TransferLog } from './transfers.js';
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

describe.each(testDatabases())('TransferLog on $name', (database) => {
  let db: MailboxTestDatabase;
  const clock = testClock();
  let log: TransferLog;

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    log = new TransferLog(db.knex, { now: clock.now });
  });

  afterAll(async () => {
    await db?.destroy();
  });

  beforeEach(async () => {
    await clearMailboxTables(db.knex);
    clock.set(T0);
  });

  it('answers the first result for a transfer seen before, and nothing for a new one', async () => {
    expect(await log.seen('<m1@example.com>', 'eht1')).toBeUndefined();
    const accepted = { accepted: ['bob@example.net'], rejected: [] };
    expect(await log.record('<m1@example.com>', 'eht1', accepted)).toEqual(accepted);
    expect(await log.record('<m1@example.com>', 'eht1', { accepted: [], rejected: [] })).toEqual(accepted);
    expect(await log.seen('<m1@example.com>', 'eht1')).toEqual(accepted);
    expect(await log.seen('<m1@example.com>', 'eht2')).toBeUndefined(); // a forward hop of the same message
    expect(await log.seen('<m2@example.com>', 'eht1')).toBeUndefined();
    expect(await log.receivedAt('<m1@example.com>', 'eht1')).toBe(T0);
  });

  it('records a new transfer in one statement, answering the result as stored', async () => {
    const result = { accepted: ['bob@example.net'], rejected: [], note: undefined };
    let recorded: unknown;
    const sql = await statementsOf(db.knex, async () => {
      recorded = await log.record('<m3@example.com>', 'eht3', result);
    });
    expect(sql).toHaveLength(1);
    // As `seen` reads it back: JSON, so an undefined member is gone.
    expect(recorded).toStrictEqual({ accepted: ['bob@example.net'], rejected: [] });
    expect(await log.seen('<m3@example.com>', 'eht3')).toStrictEqual(recorded);
  });

  it('keeps one result when the same transfer is recorded concurrently', async () => {
    await warmPool(db);
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => log.record('<m@example.com>', 'e', { i })));
    expect(new Set(results.map((r) => r.i)).size).toBe(1);
  });

  it('forgets old transfers', async () => {
    await log.record('<old@example.com>', 'e', 1);
    clock.advance(8 * DAY);
    await log.record('<new@example.com>', 'e', 2);
    expect(await log.prune(7 * DAY)).toBe(1);
    expect(await log.seen('<old@example.com>', 'e')).toBeUndefined();
    expect(await log.seen('<new@example.com>', 'e')).toBe(2);
  });

  it('rejects malformed keys', async () => {
    await expect(log.seen('', 'e')).rejects.toThrow(TypeError);
    await expect(log.record('<m@example.com>', 'e'.repeat(65), 1)).rejects.toThrow(TypeError);
  });
});

/**
 * Pruning the change log while a writer of the same account is between drawing its sequence number and
 * committing (PostgreSQL only: SQLite has one writer at a time, so nothing can be in between). Several
 * replicas prune on their own schedule while others write, so this interleaving happens in production.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChangeLog, recordChanges } from './changes.js';
import { isMailStoreError } from './errors.js';
import { T0, clearMailboxTables, openMailboxDatabase, testDatabases, type MailboxTestDatabase } from './testing.js';

const ALICE = 'alice@example.com';

describe.each(testDatabases().filter((d) => d.name === 'postgres'))('ChangeLog.pruneBefore on $name', (database) => {
  let db: MailboxTestDatabase;
  let log: ChangeLog;

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    log = new ChangeLog(db.knex, { now: () => T0 });
  });
  afterAll(async () => {
    await db?.destroy();
  });
  beforeEach(async () => {
    await clearMailboxTables(db.knex);
  });

  const record = (object: string) =>
    db.knex.transaction((trx) => recordChanges(trx, ALICE, [{ object, op: 'created' }], T0));

  /** Whether `since` answers the change or refuses with 410: what it must never do is answer neither. */
  const outcome = (state: string) =>
    log.since(ALICE, state).then(
      (r) => r.created,
      (e: unknown) => (isMailStoreError(e, 'cannot_calculate_changes') ? 'cannot_calculate_changes' : e),
    );

  for (const scope of ['one account', 'all accounts'] as const) {
    it(`RFC 8620 §5.2 (no change is ever skipped): a change committed while the prune waits for the account lock is covered by the floor (${scope})`, async () => {
      await record('a');
      const seen = await log.state(ALICE);
      // A writer holds alice's lock and has drawn its seq, not yet committed.
      const writer = await db.knex.transaction();
      await recordChanges(writer, ALICE, [{ object: 'b', op: 'created' }], T0);
      const { rows } = (await writer.raw('select pg_backend_pid() as pid')) as { rows: { pid: number }[] };
      const limit = Number(seen) + 1000;
      const pruning = log.pruneBefore(limit, scope === 'one account' ? { address: ALICE } : {});
      // The prune has read what it could see and now waits for the writer's lock.
      await vi.waitFor(
        async () => {
          const blocked = (await db.knex.raw(
            'select count(*)::int as n from pg_stat_activity where ? = any(pg_blocking_pids(pid))',
            [rows[0]!.pid],
          )) as { rows: { n: number }[] };
          expect(blocked.rows[0]!.n).toBeGreaterThan(0);
        },
        { timeout: 5_000 },
      );
      await writer.commit();
      expect(await pruning).toBe(2);
      // A client that saw `a` has not seen `b`, which is gone: it must be told to resynchronize.
      expect(await outcome(seen)).toBe('cannot_calculate_changes');
    });
  }
});

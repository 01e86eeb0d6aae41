/**
 * Test support for the storage suites: a migrated, empty mailbox database per suite, and a clock the test
 * moves by hand. Not exported from the package.
 */
import type { Knex } from 'knex';
import { createKnex, migrateLatest } from '@federizer/common';
import { contentId } from '@federizer/protocol';
// Test helpers are not part of @federizer/common's public entry point.
import type { TestDatabase } from '../../../common/src/testing/databases.js';
import { MAILBOX_MIGRATIONS_TABLE, mailboxMigrations } from './migrations.js';
import { forgetKnownAccounts } from './sql.js';

export { testDatabases } from '../../../common/src/testing/databases.js';

export const T0 = Date.UTC(2030, 0, 15, 12, 0, 0);
export const MINUTE = 60_000;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;

export interface MailboxTestDatabase {
  readonly knex: Knex;
  destroy(): Promise<void>;
}

export async function openMailboxDatabase(database: TestDatabase): Promise<MailboxTestDatabase> {
  const created = await database.create();
  const knex = createKnex(created.config);
  await migrateLatest(knex, mailboxMigrations, MAILBOX_MIGRATIONS_TABLE);
  return {
    knex,
    async destroy() {
      await knex.destroy();
      await created.destroy();
    },
  };
}

/** A clock frozen at `T0` until the test moves it. */
export function testClock(start = T0) {
  let t = start;
  return {
    now: () => t,
    set(ms: number) {
      t = ms;
    },
    advance(ms: number) {
      t += ms;
    },
  };
}

/** A distinct, well-formed Content-ID per label. */
export function cid(label: string | number): string {
  return contentId(`resource ${label}`);
}

const TABLES = [
  'mail_deliveries',
  'mail_shares',
  'mail_message_resources',
  'mail_messages',
  'mail_resources',
  'mail_changes',
  'mail_jobs',
  'mail_transfers',
  'mail_forwarding',
  'mail_replay',
  'mail_accounts',
];

/**
 * Empties every mailbox table, children first, so each test starts from nothing; the stores of this
 * database forget the accounts they knew to exist, as their rows are gone.
 */
export async function clearMailboxTables(knex: Knex): Promise<void> {
  for (const table of TABLES) await knex(table).delete();
  forgetKnownAccounts(knex);
}

/**
 * Opens the pool's connections before a concurrency test: PostgreSQL's pool connects lazily, which would
 * stagger the first transactions and hide races. Concurrent transactions each need a connection.
 */
export async function warmPool(db: MailboxTestDatabase, connections = 10): Promise<void> {
  await Promise.all(
    Array.from({ length: connections }, () =>
      db.knex.transaction(async (trx) => {
        await trx.raw('select 1');
      }),
    ),
  );
}

/**
 * The SQL of the statements `run` sends through `knex`, its transactions' included, in order (transaction
 * control statements such as BEGIN are left out: the drivers do not all report them). For tests that pin
 * how many round trips an operation costs.
 */
export async function statementsOf(knex: Knex, run: () => Promise<unknown>): Promise<string[]> {
  const seen: string[] = [];
  const listen = (query: { sql: string }) => {
    if (!/^\s*(begin|commit|rollback|savepoint|release)\b/i.test(query.sql)) seen.push(query.sql);
  };
  knex.on('query', listen);
  try {
    await run();
  } finally {
    knex.off('query', listen);
  }
  return seen;
}

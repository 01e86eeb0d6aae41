/**
 * Small SQL helpers shared by the mailbox stores. Both databases run the same queries; the differences
 * (row locks, SKIP LOCKED, advisory locks) exist only on PostgreSQL, because the SQLite pool has a single
 * connection and so every transaction is already serialized.
 */
import type { Knex } from 'knex';

export type Clock = () => number;

export interface StoreOptions {
  /** Epoch milliseconds; tests pass a frozen or stepped clock. */
  now?: Clock;
}

export function isPostgres(knex: Knex): boolean {
  return (knex.client as { dialect?: string }).dialect === 'postgresql';
}

/** Bounds the bound parameters per statement (SQLite allows 32766, PostgreSQL 65535). */
export const CHUNK = 500;

export function chunks<T>(items: readonly T[], size = CHUNK): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/**
 * The addresses whose account row is known to exist, per database (the knex instance the stores were made
 * with): `lockAccounts` then need not insert them again, which on SQLite leaves it nothing to do. An address
 * is remembered only once its row is committed (an insert of it conflicted, or `AccountStore.ensure`
 * created it outside any transaction), never from a transaction that might still roll back. The service
 * never deletes an account row; whatever does (a test emptying the tables) must call `forgetKnownAccounts`.
 * Bounded: past `MAX_KNOWN_ACCOUNTS` the oldest entries go, and cost one idempotent insert when next seen.
 */
export type KnownAccounts = Set<string>;

const MAX_KNOWN_ACCOUNTS = 100_000;
const knownByDatabase = new WeakMap<Knex, KnownAccounts>();

export function knownAccounts(knex: Knex): KnownAccounts {
  let known = knownByDatabase.get(knex);
  if (known === undefined) {
    known = new Set();
    knownByDatabase.set(knex, known);
  }
  return known;
}

/** Forgets every account known to exist in that database: call it after deleting account rows. */
export function forgetKnownAccounts(knex: Knex): void {
  knownByDatabase.get(knex)?.clear();
}

export function rememberAccount(known: KnownAccounts, address: string): void {
  if (known.has(address)) return;
  if (known.size >= MAX_KNOWN_ACCOUNTS) known.delete(known.values().next().value!);
  known.add(address);
}

/** The accounts each open transaction has locked already (and so created): locking them again is a no-op. */
const lockedByTransaction = new WeakMap<Knex.Transaction, Set<string>>();

/**
 * Creates the accounts if needed and, on PostgreSQL, locks their rows until the transaction ends. Every
 * transaction that changes an account's quota counter, reference counts or change log takes this lock
 * first, so per account those transactions commit in the order they write: the change log's sequence
 * numbers then become visible in increasing order (a reader never sees seq 11 before a later commit of
 * seq 10), and the quota check and the counter update cannot interleave. Several accounts are locked in
 * sorted order so two transactions cannot deadlock.
 *
 * Accounts this transaction locked already are skipped, and so are the inserts of accounts `known` to
 * exist (see `knownAccounts`); an insert that finds the row already there adds it to `known`. Not for
 * nested transactions (savepoints): a row the outer transaction inserted would be taken as committed.
 */
export async function lockAccounts(
  trx: Knex.Transaction,
  addresses: readonly string[],
  now: number,
  known?: KnownAccounts,
): Promise<void> {
  let locked = lockedByTransaction.get(trx);
  if (locked === undefined) {
    locked = new Set();
    lockedByTransaction.set(trx, locked);
  }
  const sorted = [...new Set(addresses)].filter((a) => !locked.has(a)).sort();
  for (const address of sorted) {
    if (known?.has(address)) continue;
    const inserted = (await trx('mail_accounts')
      .insert({ address, storage_used: 0, created_at: now })
      .onConflict('address')
      .ignore()
      .returning('address')) as unknown[];
    // Not inserted: the row was there before this statement, committed (this transaction inserts an
    // account at most once, and PostgreSQL waits for a concurrent inserter to end before it conflicts).
    if (inserted.length === 0 && known !== undefined) rememberAccount(known, address);
  }
  if (isPostgres(trx)) {
    for (const address of sorted) {
      await trx('mail_accounts').select('address').where({ address }).forUpdate();
    }
  }
  for (const address of sorted) locked.add(address);
}

/** The first key of the advisory locks of Content-IDs (the second is the hash of the Content-ID). */
const CONTENT_LOCK_CLASS = 0x6d72; // "mr"

/**
 * On PostgreSQL, serializes the transactions that start or stop holding one resource until the transaction
 * ends: the blob collector forgetting its rows, and an account starting to hold it (an upload, a fetch, a
 * delivery of bytes this domain holds). Without it a new holder could read the old rows as present, then
 * commit its own row after the collector deleted them, and be left with a row whose blob is gone. Taken
 * before `lockAccounts`, always, so the two kinds of lock cannot deadlock.
 */
export async function lockContent(trx: Knex.Transaction, contentId: string): Promise<void> {
  if (!isPostgres(trx)) return;
  await trx.raw('select pg_advisory_xact_lock(?, hashtext(?))', [CONTENT_LOCK_CLASS, contentId]);
}

export function parseJson<T>(text: unknown, what: string): T {
  if (typeof text !== 'string') throw new TypeError(`${what}: expected JSON text from the database`);
  return JSON.parse(text) as T;
}

export function checkAddress(address: unknown): string {
  if (typeof address !== 'string' || address.length === 0 || address.length > 254 || !address.includes('@')) {
    throw new TypeError(`not an address: ${JSON.stringify(address)}`);
  }
  return address;
}

export function checkContentId(contentId: unknown): string {
  if (typeof contentId !== 'string' || !/^<[A-Za-z0-9_-]{43}>$/.test(contentId)) {
    throw new TypeError(`not a Content-ID: ${JSON.stringify(contentId)}`);
  }
  return contentId;
}

export function checkLimit(limit: unknown, max: number, what = 'limit'): number {
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1 || limit > max) {
    throw new TypeError(`${what} must be an integer from 1 to ${max}`);
  }
  return limit;
}

export function checkSize(size: unknown): number {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new TypeError(`not a size: ${JSON.stringify(size)}`);
  }
  return size;
}

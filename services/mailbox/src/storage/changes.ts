/**
 * The change log behind sync (PROTOCOL.md §9, after JMAP RFC 8620 §5.2): every created, updated or destroyed
 * object of an account appends a row to `mail_changes` in the transaction that changed it. An account's
 * state is the sequence number of its newest change, as an opaque decimal string. Per account, change rows
 * commit in sequence order because their writers hold the account lock (see `lockAccounts`), so a client
 * that saw state N never misses a change numbered below N.
 *
 * Pruning records, per account, the highest sequence number it removed (`changes_pruned_through`); a state
 * below that can no longer be answered and the client must resynchronize (`cannot_calculate_changes`).
 */
import type { Knex } from 'knex';
import { dbNumber } from '@federizer/common';
import { MailStoreError } from './errors.js';
import {
  checkAddress,
  checkLimit,
  knownAccounts,
  lockAccounts,
  type Clock,
  type KnownAccounts,
  type StoreOptions,
} from './sql.js';

export type ChangeOp = 'created' | 'updated' | 'destroyed';

export interface Change {
  readonly object: string;
  readonly op: ChangeOp;
}

export interface ChangesResult {
  /** The state to pass next time. */
  readonly state: string;
  readonly created: string[];
  readonly updated: string[];
  readonly destroyed: string[];
  /** More changes follow: call again with `state`. */
  readonly hasMore: boolean;
}

export const DEFAULT_MAX_CHANGES = 500;
export const MAX_MAX_CHANGES = 10_000;
/** Retention: changes are kept while younger than this, or among the account's newest `KEEP_CHANGES`. */
export const KEEP_CHANGES_MS = 30 * 24 * 3600 * 1000;
export const KEEP_CHANGES = 100_000;

const STATE = /^(0|[1-9][0-9]{0,15})$/;

/**
 * Appends changes for one account inside the caller's transaction, taking the account lock first (a no-op,
 * costing no statement, when the transaction already holds it).
 */
export async function recordChanges(
  trx: Knex.Transaction,
  address: string,
  changes: readonly Change[],
  now: number,
): Promise<void> {
  if (changes.length === 0) return;
  await lockAccounts(trx, [address], now);
  await trx('mail_changes').insert(changes.map((c) => ({ address, object: c.object, op: c.op, at: now })));
}

function parseState(state: unknown): number {
  if (typeof state !== 'string' || !STATE.test(state)) {
    throw new MailStoreError('invalid_state', 'the state is not one this server issued');
  }
  const n = Number(state);
  if (!Number.isSafeInteger(n)) throw new MailStoreError('invalid_state', 'the state is not one this server issued');
  return n;
}

export class ChangeLog {
  readonly #knex: Knex;
  readonly #now: Clock;
  readonly #known: KnownAccounts;

  constructor(knex: Knex, options: StoreOptions = {}) {
    this.#knex = knex;
    this.#now = options.now ?? Date.now;
    this.#known = knownAccounts(knex);
  }

  /** The account's current state: cheap (one statement, two index lookups), for long polls that re-check it often. */
  async state(address: string): Promise<string> {
    const { newest, floor } = await this.#bounds(checkAddress(address));
    return String(Math.max(newest, floor));
  }

  async #bounds(address: string): Promise<{ newest: number; floor: number }> {
    const row = (await this.#knex.first(
      this.#knex('mail_changes').max('seq').where({ address }).as('newest'),
      this.#knex('mail_accounts').select('changes_pruned_through').where({ address }).as('floor'),
    )) as { newest: unknown; floor: unknown } | undefined;
    return {
      newest: row?.newest === null || row?.newest === undefined ? 0 : dbNumber(row.newest),
      floor: row?.floor === null || row?.floor === undefined ? 0 : dbNumber(row.floor),
    };
  }

  /**
   * The ids changed since `state`, each in one list: `destroyed` when its newest change is a destruction
   * (even when it was also created since: the client may have read it through a listing), else `created`
   * when its first change since `state` is its creation, else `updated`. At most `maxChanges` log rows are
   * read; `hasMore` says to call again with the returned state.
   */
  async since(address: string, state: string, options: { maxChanges?: number } = {}): Promise<ChangesResult> {
    checkAddress(address);
    const from = parseState(state);
    const maxChanges = checkLimit(options.maxChanges ?? DEFAULT_MAX_CHANGES, MAX_MAX_CHANGES, 'maxChanges');
    const rows = (await this.#knex('mail_changes')
      .select('seq', 'object', 'op')
      .where({ address })
      .andWhere('seq', '>', from)
      .orderBy('seq')
      .limit(maxChanges + 1)) as { seq: unknown; object: string; op: ChangeOp }[];
    // Read after the rows: a prune that removed rows this query missed has then raised the floor too.
    const { newest, floor } = await this.#bounds(address);
    if (from < floor) {
      throw new MailStoreError('cannot_calculate_changes', 'the state is older than the retained change log');
    }
    if (from > Math.max(newest, floor)) {
      throw new MailStoreError('cannot_calculate_changes', 'the state is not one of this account');
    }
    const hasMore = rows.length > maxChanges;
    const window = hasMore ? rows.slice(0, maxChanges) : rows;
    const first = new Map<string, ChangeOp>();
    const last = new Map<string, ChangeOp>();
    for (const row of window) {
      if (!first.has(row.object)) first.set(row.object, row.op);
      last.set(row.object, row.op);
    }
    const created: string[] = [];
    const updated: string[] = [];
    const destroyed: string[] = [];
    for (const [object, op] of last) {
      if (op === 'destroyed') destroyed.push(object);
      else if (first.get(object) === 'created') created.push(object);
      else updated.push(object);
    }
    const lastRow = window.at(-1);
    const to = lastRow === undefined ? from : Math.max(from, dbNumber(lastRow.seq));
    return { state: String(to), created, updated, destroyed, hasMore };
  }

  /**
   * Removes the changes numbered below `seq` (of one account, or of all), remembering per account how far
   * the log was cut. Answers the number of rows removed.
   *
   * Safe with several replicas pruning and writing at once (PostgreSQL): each account is cut in its own
   * transaction under its account lock, and what is cut is read only once the lock is held. Read before,
   * it could miss a change a writer holding the lock commits meanwhile (its seq drawn below `seq`, its
   * commit after the read): the delete would remove that row while the floor stayed below it, and a
   * client whose state lies between would silently never see that change.
   */
  async pruneBefore(seq: number | string, options: { address?: string } = {}): Promise<number> {
    const limit = typeof seq === 'string' ? parseState(seq) : seq;
    if (!Number.isSafeInteger(limit) || limit < 0) throw new TypeError('seq must be a non-negative integer');
    if (options.address !== undefined) return this.#pruneAccountBefore(checkAddress(options.address), limit);
    const accounts = (await this.#knex('mail_changes').distinct('address').where('seq', '<', limit)) as {
      address: string;
    }[];
    let removed = 0;
    for (const { address } of accounts) removed += await this.#pruneAccountBefore(address, limit);
    return removed;
  }

  async #pruneAccountBefore(address: string, limit: number): Promise<number> {
    // Nothing to cut: no lock taken (and no account row created for an address that has none).
    const any = await this.#knex('mail_changes').first('seq').where({ address }).andWhere('seq', '<', limit);
    if (any === undefined) return 0;
    return this.#knex.transaction(async (trx): Promise<number> => {
      // The floor moves with the rows it describes, under the account lock writers take.
      await lockAccounts(trx, [address], this.#now(), this.#known);
      const row = (await trx('mail_changes')
        .max({ seq: 'seq' })
        .where({ address })
        .andWhere('seq', '<', limit)
        .first()) as { seq: unknown } | undefined;
      if (row?.seq === null || row?.seq === undefined) return 0;
      const highest = dbNumber(row.seq);
      await trx('mail_accounts')
        .where({ address })
        .andWhere('changes_pruned_through', '<', highest)
        .update({ changes_pruned_through: highest });
      return (await trx('mail_changes').where({ address }).andWhere('seq', '<=', highest).delete()) as number;
    });
  }

  /**
   * Applies the retention rule: a change is kept while younger than `keepMs` or among its account's newest
   * `keepCount`; the rest are pruned. Answers the number of rows removed.
   */
  async prune(options: { keepMs?: number; keepCount?: number } = {}): Promise<number> {
    const keepMs = options.keepMs ?? KEEP_CHANGES_MS;
    const keepCount = options.keepCount ?? KEEP_CHANGES;
    if (!Number.isSafeInteger(keepMs) || keepMs < 0) throw new TypeError('keepMs must be a non-negative integer');
    if (!Number.isSafeInteger(keepCount) || keepCount < 1) throw new TypeError('keepCount must be a positive integer');
    const cutoff = this.#now() - keepMs;
    const accounts = (await this.#knex('mail_changes').distinct('address').where('at', '<', cutoff)) as {
      address: string;
    }[];
    let removed = 0;
    for (const { address } of accounts) {
      // The keepCount-th newest change: everything below it is outside the newest keepCount.
      const kth = (await this.#knex('mail_changes')
        .select('seq')
        .where({ address })
        .orderBy('seq', 'desc')
        .offset(keepCount - 1)
        .limit(1)) as { seq: unknown }[];
      if (kth[0] === undefined) continue;
      const young = (await this.#knex('mail_changes')
        .min({ seq: 'seq' })
        .where({ address })
        .andWhere('at', '>=', cutoff)
        .first()) as { seq: unknown } | undefined;
      let below = dbNumber(kth[0].seq);
      if (young?.seq !== null && young?.seq !== undefined) below = Math.min(below, dbNumber(young.seq));
      removed += await this.pruneBefore(below, { address });
    }
    return removed;
  }
}

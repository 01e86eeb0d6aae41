/**
 * The protocol library's DPoP ReplayStore on a database table, so a proof replayed against another
 * replica, or after a restart, is still refused.
 */
import type { Knex } from 'knex';
import type { ReplayStore } from '@federizer/protocol';

export interface KnexReplayStoreOptions {
  /** Unix seconds; tests pass a frozen clock. */
  now?: () => number;
  /** The table (key primary key, expires_at unix seconds); each service has its own. Default `replay`. */
  table?: string;
}

/**
 * The `key` column of the replay tables (mailbox `mail_replay`, auth `replay`) is varchar(512). PostgreSQL
 * refuses a longer value and SQLite stores it anyway; refused here, the two agree, and a caller that passes
 * unhashed input learns it from a test on either. DPoP records are 43 characters (`dpopReplayKey`).
 */
export const MAX_REPLAY_KEY_LENGTH = 512;

/** The protocol library's ReplayStore, shared by every replica through the database. */
export class KnexReplayStore implements ReplayStore {
  readonly #knex: Knex;
  readonly #now: () => number;
  readonly #table: string;

  constructor(knex: Knex, options: KnexReplayStoreOptions = {}) {
    this.#knex = knex;
    this.#now = options.now ?? (() => Math.floor(Date.now() / 1000));
    this.#table = options.table ?? 'replay';
  }

  async checkAndRecord(key: string, expiresAt: number): Promise<boolean> {
    if (typeof key !== 'string' || key === '') throw new TypeError('replay key must be a non-empty string');
    if (key.length > MAX_REPLAY_KEY_LENGTH)
      throw new TypeError(`replay key must be at most ${MAX_REPLAY_KEY_LENGTH} characters; hash longer input`);
    if (!Number.isSafeInteger(expiresAt)) throw new TypeError('expiresAt must be an integer (unix seconds)');
    // One statement decides: a new key is inserted, an expired one is taken over, a live one is left alone
    // and returns no row. PostgreSQL re-checks the WHERE against the row a concurrent insert committed, and
    // SQLite runs statements one at a time, so exactly one of several concurrent callers gets a row.
    // Expired means expires_at <= now, as in the protocol library's MemoryReplayStore.
    if (!isPostgres(this.#knex)) {
      const rows = (await this.#knex(this.#table)
        .insert({ key, expires_at: expiresAt })
        .onConflict('key')
        .merge(['expires_at'])
        .where(`${this.#table}.expires_at`, '<=', this.#now())
        .returning('key')) as unknown[];
      return rows.length === 1;
    }
    // Every authorized request records a proof, and a synchronous commit waits for PostgreSQL's WAL flush
    // (5 to 20 ms on a busy disk: most of a no-change sync's time). An asynchronous commit is still atomic
    // and seen at once by every replica; a database crash can lose the last fraction of a second of
    // records, which would let a proof captured in that instant be replayed within its own short lifetime.
    // The statement turns it off for itself: set_config(..., true) is SET LOCAL, lasting until the end of
    // the statement's own (implicit) transaction, whose commit follows the setting then in effect. One
    // round trip instead of BEGIN, SET LOCAL, the insert and COMMIT; the session keeps its setting.
    const { rows } = (await this.#knex.raw(
      `insert into ?? (??, ??) select ?, ? where set_config('synchronous_commit', 'off', true) = 'off' ` +
        'on conflict (??) do update set ?? = excluded.?? where ?? <= ? returning ??',
      [
        this.#table,
        'key',
        'expires_at',
        key,
        expiresAt,
        'key',
        'expires_at',
        'expires_at',
        `${this.#table}.expires_at`,
        this.#now(),
        'key',
      ],
    )) as { rows: unknown[] };
    return rows.length === 1;
  }

  /**
   * Deletes the expired records (expires_at <= now), `batch` rows per statement, so that no statement holds
   * SQLite's single writer (and the event loop of its synchronous driver) long, nor builds a huge
   * transaction on PostgreSQL. Answers how many went. A record is worth keeping only while its proof could
   * still be accepted; afterwards it is dead weight in every insert's B-tree.
   */
  async prune(options: { batch?: number } = {}): Promise<number> {
    const batch = options.batch ?? 5000;
    if (!Number.isSafeInteger(batch) || batch < 1) throw new TypeError('batch must be a positive integer');
    let deleted = 0;
    for (;;) {
      const expired = this.#knex(this.#table).select('key').where('expires_at', '<=', this.#now()).limit(batch);
      const n = await this.#knex(this.#table).whereIn('key', expired).delete();
      deleted += n;
      if (n < batch) return deleted;
      // Let the requests waiting meanwhile run before the next batch.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
}

function isPostgres(knex: Knex): boolean {
  const client = (knex.client as { config?: { client?: unknown } }).config?.client;
  return client === 'pg' || client === 'postgres' || client === 'postgresql';
}

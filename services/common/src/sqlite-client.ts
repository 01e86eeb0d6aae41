/**
 * knex's better-sqlite3 dialect prepares every statement anew, and preparing (parsing and planning the SQL)
 * costs more than running most of our queries. This subclass keeps prepared statements per connection,
 * keyed by their SQL text; knex produces the same text for the same query shape, so hot paths (replay
 * records, quota counters, token lookups) prepare once. The cache is bounded and dropped with its connection.
 *
 * It also waits for a database locked by another process (SQLITE_BUSY) without blocking the event loop.
 * better-sqlite3 is synchronous, so SQLite's own busy handler (busy_timeout) would sleep the whole process,
 * 1 to 100 ms at a time, each time two processes (cluster workers, a CLI beside a server) write at once;
 * with busy_timeout 0 the statement fails at once instead, and is run again here after the event loop has
 * served others. Only plain SQLITE_BUSY is retried: nothing was done, so running the statement again is
 * safe. SQLITE_BUSY_SNAPSHOT (a transaction that read before another process wrote) is not, and is thrown,
 * as SQLite would throw it too.
 *
 * Debugging aid: with FEDERIZER_SQL_STATS=1 in the environment, every statement run through this client is
 * counted and timed (by SQL text, across all SQLite databases of the process) and the tally is printed to
 * stderr when the process exits, most expensive first, with a summary per table.
 */
import { createRequire } from 'node:module';
import type { Knex } from 'knex';

const require = createRequire(import.meta.url);
// The dialect class is not exported from knex's typed entry point; it is a stable, documented file.
const ClientBetterSqlite3 = require('knex/lib/dialects/better-sqlite3/index.js') as new (
  config: Knex.Config,
) => Knex.Client;

interface Statement {
  readonly reader: boolean;
  safeIntegers(on: boolean): Statement;
  all(bindings: unknown[]): unknown[];
  run(bindings: unknown[]): { lastInsertRowid: number | bigint; changes: number };
}

interface Connection {
  prepare(sql: string): Statement;
}

const MAX_STATEMENTS = 256;
/** How long a statement waits for another process's lock before SQLITE_BUSY is thrown (was busy_timeout). */
export const SQLITE_BUSY_WAIT_MS = 5000;

function pause(attempt: number): Promise<void> {
  // The other process's write is usually a single short statement: try again on the next turn of the loop
  // first, then back off gently so a long transaction elsewhere does not cost a busy loop here.
  if (attempt < 3) return new Promise((resolve) => setImmediate(resolve));
  return new Promise((resolve) => setTimeout(resolve, Math.min(20, attempt - 2)));
}
const caches = new WeakMap<object, Map<string, Statement>>();

/** Per SQL text: statements run and their total time (ns). Shared by every client of the process. */
export type SqlStats = Map<string, { count: number; ns: bigint }>;
let sqlStats: SqlStats | undefined;

function openSqlStats(): SqlStats {
  if (sqlStats !== undefined) return sqlStats;
  const stats: SqlStats = new Map();
  sqlStats = stats;
  process.once('exit', () => process.stderr.write(formatSqlStats(stats)));
  return stats;
}

/** The table a statement reads or writes first (`BEGIN;`, `COMMIT;` and the like are their own). */
function tableOf(sql: string): string {
  const m = /\b(?:from|into|update)\s+[`"]?([A-Za-z_][A-Za-z0-9_]*)/i.exec(sql);
  return m === null ? sql.trim().slice(0, 24) : m[1]!;
}

export function formatSqlStats(stats: SqlStats): string {
  const rows = [...stats].sort((a, b) => Number(b[1].ns - a[1].ns));
  let count = 0;
  let ns = 0n;
  const tables = new Map<string, { count: number; ns: bigint }>();
  for (const [sql, s] of rows) {
    count += s.count;
    ns += s.ns;
    const t = tables.get(tableOf(sql)) ?? { count: 0, ns: 0n };
    t.count += s.count;
    t.ns += s.ns;
    tables.set(tableOf(sql), t);
  }
  const ms = (n: bigint) => String(Math.round(Number(n) / 1e6)).padStart(6);
  const line = (n: bigint, c: number, what: string) =>
    `${ms(n)} ${String(c).padStart(7)} ${String(Math.round(Number(n) / 1e3 / c)).padStart(6)}us ${what}\n`;
  let out = `SQL total ${ms(ns).trim()} ms, ${count} statements (ms, count, mean, per table then per statement)\n`;
  for (const [table, t] of [...tables].sort((a, b) => b[1].count - a[1].count)) out += line(t.ns, t.count, table);
  for (const [sql, s] of rows) out += line(s.ns, s.count, sql.replace(/\s+/g, ' ').slice(0, 200));
  return out;
}

function prepared(connection: Connection, sql: string): Statement {
  let cache = caches.get(connection);
  if (cache === undefined) {
    cache = new Map();
    caches.set(connection, cache);
  }
  let statement = cache.get(sql);
  if (statement === undefined) {
    statement = connection.prepare(sql);
    if (cache.size >= MAX_STATEMENTS) cache.delete(cache.keys().next().value!);
    cache.set(sql, statement);
  }
  return statement;
}

interface QueryObject {
  sql: string;
  bindings?: unknown[];
  options?: unknown;
  response?: unknown;
  context?: unknown;
}

export class CachingBetterSqlite3Client extends (ClientBetterSqlite3 as unknown as new (config: Knex.Config) => {
  _optSafeIntegers(options: unknown): boolean | undefined;
  _formatBindings(bindings: unknown[] | undefined): unknown[];
}) {
  constructor(config: Knex.Config) {
    super(config);
    // Opened when a client is made, and then shared: knex's transaction clients are made from the prototype,
    // not copied from this instance.
    if (process.env.FEDERIZER_SQL_STATS === '1') openSqlStats();
  }

  async _query(connection: Connection, obj: QueryObject): Promise<QueryObject> {
    if (!obj.sql) throw new Error('The query is empty');
    if (!connection) throw new Error('No connection provided');
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      try {
        return this._runCached(connection, obj);
      } catch (error) {
        if ((error as { code?: unknown }).code !== 'SQLITE_BUSY' || Date.now() - started >= SQLITE_BUSY_WAIT_MS)
          throw error;
      }
      await pause(attempt);
    }
  }

  // Not a #private method: knex's transaction clients are Object.create() copies of this one, which fail
  // the brand check of private members.
  _runCached(connection: Connection, obj: QueryObject): QueryObject {
    const stats = sqlStats;
    if (stats === undefined) return this._runStatement(connection, obj);
    const started = process.hrtime.bigint();
    try {
      return this._runStatement(connection, obj);
    } finally {
      const s = stats.get(obj.sql) ?? { count: 0, ns: 0n };
      s.count++;
      s.ns += process.hrtime.bigint() - started;
      stats.set(obj.sql, s);
    }
  }

  _runStatement(connection: Connection, obj: QueryObject): QueryObject {
    const statement = prepared(connection, obj.sql);
    // Cached statements are shared, so their integer mode is set on every use, as knex sets it per query.
    statement.safeIntegers(this._optSafeIntegers(obj.options) ?? false);
    const bindings = this._formatBindings(obj.bindings);
    if (statement.reader) {
      obj.response = statement.all(bindings);
      return obj;
    }
    const response = statement.run(bindings);
    obj.response = response;
    obj.context = { lastID: response.lastInsertRowid, changes: response.changes };
    return obj;
  }
}

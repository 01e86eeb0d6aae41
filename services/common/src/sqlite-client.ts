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

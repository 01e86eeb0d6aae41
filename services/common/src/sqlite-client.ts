/**
 * knex's better-sqlite3 dialect prepares every statement anew, and preparing (parsing and planning the SQL)
 * costs more than running most of our queries. This subclass keeps prepared statements per connection,
 * keyed by their SQL text; knex produces the same text for the same query shape, so hot paths (replay
 * records, quota counters, token lookups) prepare once. The cache is bounded and dropped with its connection.
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

/**
 * Database access shared by the services: one knex instance per service, on SQLite (development, single
 * node) or PostgreSQL (production), with the schema kept as in-code migrations so a bundled service
 * needs no migration files on disk.
 */
import { mkdirSync } from 'node:fs';
import { CachingBetterSqlite3Client } from './sqlite-client.js';
import { dirname } from 'node:path';
import knex from 'knex';
import type { Knex } from 'knex';

export type DatabaseConfig =
  { client: 'sqlite'; filename: string } | { client: 'postgres'; connectionString: string; schema?: string };

export interface Migration {
  readonly name: string;
  up(knex: Knex): Promise<void>;
  down?(knex: Knex): Promise<void>;
}

// PostgreSQL truncates longer identifiers silently; a quoted identifier may hold anything, but a plain one
// keeps the schema name usable in psql and in logs without quoting surprises.
const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

interface BetterSqliteConnection {
  pragma(source: string): unknown;
}

interface PgConnection {
  query(text: string, values?: unknown[]): Promise<{ rowCount: number | null }>;
}

type PoolDone = (error: Error | null, connection: unknown) => void;

export function createKnex(config: DatabaseConfig): Knex {
  if (config.client === 'sqlite') return createSqlite(config.filename);
  if (config.client === 'postgres') return createPostgres(config.connectionString, config.schema);
  throw new TypeError(`unsupported database client ${JSON.stringify((config as { client: unknown }).client)}`);
}

function createSqlite(filename: string): Knex {
  if (filename !== ':memory:' && filename !== '') mkdirSync(dirname(filename), { recursive: true });
  return knex({
    client: CachingBetterSqlite3Client as unknown as typeof knex.Client,
    connection: { filename },
    useNullAsDefault: true,
    pool: {
      // One writer at a time is all SQLite allows; a second connection would only turn waiting in the pool
      // into SQLITE_BUSY retries.
      min: 1,
      max: 1,
      afterCreate(connection: BetterSqliteConnection, done: PoolDone) {
        try {
          // Pragmas are per connection, not per file (except journal_mode), so they go on every new one.
          connection.pragma('journal_mode = WAL');
          connection.pragma('foreign_keys = ON');
          // No blocking wait for another process's lock: CachingBetterSqlite3Client waits without blocking the
          // event loop (SQLITE_BUSY_WAIT_MS).
          connection.pragma('busy_timeout = 0');
          // NORMAL is durable in WAL mode except for the last transactions before a power loss.
          connection.pragma('synchronous = NORMAL');
          done(null, connection);
        } catch (error) {
          done(error as Error, connection);
        }
      },
    },
  });
}

function createPostgres(connectionString: string, schema: string | undefined): Knex {
  if (schema !== undefined && !SCHEMA_NAME.test(schema)) {
    throw new TypeError(`invalid PostgreSQL schema name ${JSON.stringify(schema)}`);
  }
  // Created once per knex instance, on the first connection; later connections wait for the same promise so
  // none of them runs a query before the schema exists.
  let schemaReady: Promise<void> | undefined;
  const ensureSchema = (connection: PgConnection): Promise<void> => {
    schemaReady ??= createSchemaIfMissing(connection, schema as string).catch((error: unknown) => {
      schemaReady = undefined;
      throw error;
    });
    return schemaReady;
  };
  return knex({
    client: 'pg',
    connection: { connectionString },
    ...(schema === undefined ? {} : { searchPath: [schema] }),
    pool: {
      min: 0,
      max: 10,
      ...(schema === undefined
        ? {}
        : {
            afterCreate(connection: PgConnection, done: PoolDone) {
              ensureSchema(connection).then(
                () => done(null, connection),
                (error: unknown) => done(error as Error, connection),
              );
            },
          }),
    },
  });
}

async function createSchemaIfMissing(connection: PgConnection, schema: string): Promise<void> {
  // Look first: CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege on the database before it checks
  // existence, so it fails for a role that owns its schema but may not create new ones.
  const found = await connection.query('select 1 from pg_namespace where nspname = $1', [schema]);
  if (found.rowCount) return;
  try {
    await connection.query(`create schema if not exists "${schema}"`);
  } catch (error) {
    // Two processes creating the same schema at once: the loser gets a unique violation despite IF NOT EXISTS.
    if ((error as { code?: unknown }).code !== '23505') throw error;
  }
}

/**
 * Applies the pending migrations, in list order, and answers their names. The list is the source of truth:
 * knex refuses to run when the database records a migration the list no longer has.
 */
export async function migrateLatest(db: Knex, migrations: readonly Migration[], tableName: string): Promise<string[]> {
  const names = new Set<string>();
  for (const m of migrations) {
    if (names.has(m.name)) throw new TypeError(`duplicate migration name ${JSON.stringify(m.name)}`);
    names.add(m.name);
  }
  const migrationSource: Knex.MigrationSource<Migration> = {
    getMigrations: async () => [...migrations],
    getMigrationName: (m) => m.name,
    getMigration: async (m) => ({
      up: (k: Knex) => m.up(k),
      down: (k: Knex) => {
        if (m.down === undefined) throw new Error(`migration ${m.name} cannot be reverted`);
        return m.down(k);
      },
    }),
  };
  const [, applied] = (await db.migrate.latest({ migrationSource, tableName })) as [number, string[]];
  return applied;
}

/**
 * `sqlite:///abs/path.db`, `sqlite:relative.db`, `sqlite::memory:`, `postgres://...` or `postgresql://...`;
 * PostgreSQL takes `?schema=name` (removed from the connection string handed to the driver).
 */
export function databaseConfigFromUrl(url: string): DatabaseConfig {
  if (/^sqlite:/i.test(url)) {
    const rest = url.slice('sqlite:'.length);
    let filename: string;
    if (rest.startsWith('//')) {
      // The authority must be empty: `sqlite://host/x` has no meaning and is most likely a missing slash.
      if (!rest.startsWith('///')) throw new TypeError(`invalid SQLite URL ${JSON.stringify(url)}: use sqlite:///`);
      filename = rest.slice(2);
    } else {
      filename = rest;
    }
    try {
      filename = decodeURIComponent(filename.replace(/[?#].*$/s, ''));
    } catch {
      throw new TypeError('invalid percent-encoding in SQLite URL');
    }
    if (filename === '' || filename === '/') throw new TypeError(`SQLite URL without a file name: ${url}`);
    return { client: 'sqlite', filename };
  }
  if (/^postgres(ql)?:\/\//i.test(url)) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new TypeError('invalid PostgreSQL URL');
    }
    const schema = parsed.searchParams.get('schema') ?? undefined;
    parsed.searchParams.delete('schema');
    if (schema !== undefined && !SCHEMA_NAME.test(schema)) {
      throw new TypeError(`invalid PostgreSQL schema name ${JSON.stringify(schema)}`);
    }
    const connectionString = parsed.toString();
    return schema === undefined
      ? { client: 'postgres', connectionString }
      : { client: 'postgres', connectionString, schema };
  }
  // The URL may carry a password: name only its scheme.
  throw new TypeError(`unsupported database URL scheme ${JSON.stringify(url.split(':', 1)[0])}`);
}

/** SQLite answers 0/1 for booleans; PostgreSQL answers true/false. */
export function dbBoolean(value: unknown): boolean {
  return value === true || value === 1 || value === '1';
}

/** node-postgres answers bigint columns and counts as strings (they may exceed 2^53); ours never do. */
export function dbNumber(value: unknown): number {
  const n = typeof value === 'number' ? value : Number(value);
  if (!Number.isFinite(n)) throw new TypeError(`not a number from the database: ${String(value)}`);
  return n;
}

export function dbOptionalNumber(value: unknown): number | undefined {
  return value === null || value === undefined ? undefined : dbNumber(value);
}

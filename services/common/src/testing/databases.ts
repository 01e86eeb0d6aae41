/**
 * Test helper: every storage suite runs `describe.each(testDatabases())` so the SQL is proven on both
 * databases the services support. Each `create()` is an isolated, empty database: a temp-dir SQLite file,
 * or a fresh schema in PostgreSQL (cheaper than a database, and dropped with CASCADE in one statement).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { DatabaseConfig } from '../db.js';

export interface TestDatabase {
  readonly name: 'sqlite' | 'postgres';
  create(): Promise<{ config: DatabaseConfig; destroy(): Promise<void> }>;
}

const DEFAULT_PG_URL = 'postgres://postgres@127.0.0.1:5432/postgres';

export function testDatabases(): TestDatabase[] {
  return [
    {
      name: 'sqlite',
      async create() {
        const dir = await mkdtemp(join(tmpdir(), 'federizer-db-'));
        return {
          config: { client: 'sqlite', filename: join(dir, 'test.db') },
          destroy: () => rm(dir, { recursive: true, force: true }),
        };
      },
    },
    {
      name: 'postgres',
      async create() {
        const connectionString = process.env.FEDERIZER_TEST_PG ?? DEFAULT_PG_URL;
        // Several vitest workers share the server: the pid and random bytes keep their schemas apart.
        const schema = `test_${process.pid}_${randomBytes(6).toString('hex')}`;
        await withClient(connectionString, (client) => client.query(`create schema "${schema}"`));
        return {
          config: { client: 'postgres', connectionString, schema },
          destroy: () =>
            withClient(connectionString, (client) => client.query(`drop schema if exists "${schema}" cascade`)),
        };
      },
    },
  ];
}

async function withClient(connectionString: string, use: (client: pg.Client) => Promise<unknown>): Promise<void> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await use(client);
  } finally {
    await client.end();
  }
}

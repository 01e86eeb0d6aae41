import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Knex } from 'knex';
import { createKnex, databaseConfigFromUrl, dbBoolean, dbNumber, migrateLatest, type Migration } from './db.js';
import { testDatabases } from './testing/databases.js';

const first: Migration = {
  name: '0001_notes',
  async up(knex) {
    await knex.schema.createTable('notes', (t) => {
      t.string('id').primary();
      t.text('body').notNullable();
    });
  },
  async down(knex) {
    await knex.schema.dropTable('notes');
  },
};

const second: Migration = {
  name: '0002_tags',
  async up(knex) {
    await knex.schema.createTable('tags', (t) => {
      t.string('note_id').references('id').inTable('notes').onDelete('CASCADE');
      t.string('tag');
      t.primary(['note_id', 'tag']);
    });
  },
};

describe.each(testDatabases())('database helpers on $name', (database) => {
  let knex: Knex;
  let config: Awaited<ReturnType<typeof database.create>>;

  beforeAll(async () => {
    config = await database.create();
    knex = createKnex(config.config);
  });

  afterAll(async () => {
    await knex?.destroy();
    await config?.destroy();
  });

  it('applies migrations once, in order, and only the new ones later', async () => {
    expect(await migrateLatest(knex, [first], 'test_migrations')).toEqual(['0001_notes']);
    expect(await migrateLatest(knex, [first], 'test_migrations')).toEqual([]);
    expect(await migrateLatest(knex, [first, second], 'test_migrations')).toEqual(['0002_tags']);
    expect(await knex.schema.hasTable('notes')).toBe(true);
    expect(await knex.schema.hasTable('tags')).toBe(true);
    const recorded = (await knex('test_migrations').select('name').orderBy('id')) as { name: string }[];
    expect(recorded.map((r) => r.name)).toEqual(['0001_notes', '0002_tags']);
  });

  it('refuses a list that lost an applied migration, and duplicate names', async () => {
    await expect(migrateLatest(knex, [second], 'test_migrations')).rejects.toThrow();
    await expect(migrateLatest(knex, [first, first], 'other_migrations')).rejects.toThrow(TypeError);
  });

  it('enforces foreign keys', async () => {
    await expect(knex('tags').insert({ note_id: 'missing', tag: 'x' })).rejects.toThrow();
    await knex('notes').insert({ id: 'n1', body: 'hello' });
    await knex('tags').insert({ note_id: 'n1', tag: 'x' });
    await knex('notes').where({ id: 'n1' }).delete();
    expect(await knex('tags').select()).toEqual([]);
  });

  if (database.name === 'sqlite') {
    it('sets the pragmas on the connection', async () => {
      const pragma = async (name: string) => {
        const rows = (await knex.raw(`pragma ${name}`)) as Record<string, unknown>[];
        return Object.values(rows[0] ?? {})[0];
      };
      expect(await pragma('journal_mode')).toBe('wal');
      expect(await pragma('foreign_keys')).toBe(1);
      // 0: a lock held by another process is waited for by the client, without blocking (next test).
      expect(await pragma('busy_timeout')).toBe(0);
      expect(await pragma('synchronous')).toBe(1); // NORMAL
    });
  }

  if (database.name === 'sqlite') {
    it('waits for a write lock held by another connection without blocking the event loop', async () => {
      if (config.config.client !== 'sqlite') throw new Error('unexpected config');
      await knex.schema.createTable('busy_test', (t) => {
        t.string('id').primary();
      });
      // A second knex on the same file is what a second process (a cluster worker) is to SQLite: its own
      // connection, and the file's write lock shared with this one.
      const other = createKnex(config.config);
      try {
        const holder = await knex.transaction();
        await holder('busy_test').insert({ id: 'held' });
        let ticks = 0;
        const timer = setInterval(() => ticks++, 1);
        const waiting = other('busy_test').insert({ id: 'waited' });
        const settled = waiting.then(
          () => 'inserted',
          (e: unknown) => e,
        );
        // With a blocking busy handler the timers below would not run until SQLite gave up.
        await new Promise((resolve) => setTimeout(resolve, 60));
        const ticksWhileLocked = ticks;
        await holder.commit();
        expect(await settled).toBe('inserted');
        clearInterval(timer);
        expect(ticksWhileLocked).toBeGreaterThan(10);
        const ids = (await knex('busy_test').select('id').orderBy('id')) as { id: string }[];
        expect(ids.map((r) => r.id)).toEqual(['held', 'waited']);
      } finally {
        await other.destroy();
      }
    });

    it('does not retry SQLITE_BUSY_SNAPSHOT: a transaction that read before another connection wrote fails', async () => {
      if (config.config.client !== 'sqlite') throw new Error('unexpected config');
      await knex.schema.createTable('snapshot_test', (t) => {
        t.string('id').primary();
      });
      const other = createKnex(config.config);
      try {
        const reader = await knex.transaction();
        await reader('snapshot_test').select();
        await other('snapshot_test').insert({ id: 'by-other' });
        // Retrying the statement could never succeed: the snapshot it would write on top of is gone.
        await expect(reader('snapshot_test').insert({ id: 'stale' })).rejects.toMatchObject({
          code: 'SQLITE_BUSY_SNAPSHOT',
        });
        await reader.rollback().catch(() => undefined);
      } finally {
        await other.destroy();
      }
    });
  }

  if (database.name === 'postgres') {
    it('works inside its schema, creating a missing one', async () => {
      if (config.config.client !== 'postgres') throw new Error('unexpected config');
      const current = (await knex.raw('select current_schema() as s')) as { rows: { s: string }[] };
      expect(current.rows[0]?.s).toBe(config.config.schema);

      const schema = `${config.config.schema}_new`;
      const other = createKnex({ ...config.config, schema });
      try {
        // Several connections at once: the schema is created once, before any of them runs a query.
        const results = await Promise.all(
          Array.from({ length: 5 }, () =>
            other.transaction(async (trx) => {
              const r = (await trx.raw('select current_schema() as s')) as { rows: { s: string }[] };
              return r.rows[0]?.s;
            }),
          ),
        );
        expect(results).toEqual(Array(5).fill(schema));
        await migrateLatest(other, [first], 'test_migrations');
        const where = (await knex.raw('select table_schema from information_schema.tables where table_name = ?', [
          'notes',
        ])) as { rows: { table_schema: string }[] };
        expect(where.rows.map((r) => r.table_schema).sort()).toEqual([config.config.schema, schema].sort());
      } finally {
        await other.destroy();
        await knex.raw(`drop schema if exists "${schema}" cascade`);
      }
    });
  }

  it('answers numbers and booleans the same way on both databases', async () => {
    await knex.schema.createTable('values_test', (t) => {
      t.bigInteger('big');
      t.boolean('flag');
    });
    await knex('values_test').insert({ big: 1_700_000_000_000, flag: true });
    const row = (await knex('values_test').first()) as { big: unknown; flag: unknown };
    expect(dbNumber(row.big)).toBe(1_700_000_000_000);
    expect(dbBoolean(row.flag)).toBe(true);
  });
});

describe('databaseConfigFromUrl', () => {
  it('reads SQLite URLs', () => {
    expect(databaseConfigFromUrl('sqlite:///var/lib/federizer/auth.db')).toEqual({
      client: 'sqlite',
      filename: '/var/lib/federizer/auth.db',
    });
    expect(databaseConfigFromUrl('sqlite:auth.db')).toEqual({ client: 'sqlite', filename: 'auth.db' });
    expect(databaseConfigFromUrl('sqlite:data/auth%20one.db')).toEqual({
      client: 'sqlite',
      filename: 'data/auth one.db',
    });
    expect(databaseConfigFromUrl('sqlite::memory:')).toEqual({ client: 'sqlite', filename: ':memory:' });
  });

  it('reads PostgreSQL URLs with an optional schema', () => {
    expect(databaseConfigFromUrl('postgres://u:p@db:5432/mail')).toEqual({
      client: 'postgres',
      connectionString: 'postgres://u:p@db:5432/mail',
    });
    expect(databaseConfigFromUrl('postgresql://u@db/mail?schema=auth&sslmode=require')).toEqual({
      client: 'postgres',
      connectionString: 'postgresql://u@db/mail?sslmode=require',
      schema: 'auth',
    });
    expect(databaseConfigFromUrl('postgres://db/mail?schema=auth')).toEqual({
      client: 'postgres',
      connectionString: 'postgres://db/mail',
      schema: 'auth',
    });
  });

  it('refuses what it cannot use, without echoing secrets', () => {
    expect(() => databaseConfigFromUrl('sqlite://host/x.db')).toThrow(TypeError);
    expect(() => databaseConfigFromUrl('sqlite:')).toThrow(TypeError);
    expect(() => databaseConfigFromUrl('postgres://db/mail?schema=a;drop')).toThrow(TypeError);
    expect(() => databaseConfigFromUrl('mysql://root:hunter2@db/x')).toThrow(/"mysql"/);
    expect(() => databaseConfigFromUrl('mysql://root:hunter2@db/x')).not.toThrow(/hunter2/);
  });
});

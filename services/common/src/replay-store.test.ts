import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Knex } from 'knex';
import { createKnex } from './db.js';
import { KnexReplayStore } from './replay-store.js';
import { testDatabases } from './testing/databases.js';

const NOW = 1_900_000_000;

describe.each(testDatabases())('KnexReplayStore on $name', (database) => {
  let knex: Knex;
  let destroy: () => Promise<void>;
  const store = () => new KnexReplayStore(knex, { now: () => NOW, table: 'replay' });

  beforeAll(async () => {
    const created = await database.create();
    destroy = created.destroy;
    knex = createKnex(created.config);
    await knex.schema.createTable('replay', (t) => {
      t.string('key', 512).notNullable().primary();
      t.bigInteger('expires_at').notNullable();
    });
  });

  afterAll(async () => {
    await knex?.destroy();
    await destroy?.();
  });

  it('records a proof in one statement: a live key is refused, an expired one taken over', async () => {
    const statements: string[] = [];
    const listen = (q: { sql: string }) => statements.push(q.sql);
    knex.on('query', listen);
    try {
      expect(await store().checkAndRecord('jti-1', NOW + 60)).toBe(true);
    } finally {
      knex.off('query', listen);
    }
    expect(statements).toHaveLength(1);
    // RFC 9449 §11.1: a proof is accepted once while it lives.
    expect(await store().checkAndRecord('jti-1', NOW + 60)).toBe(false);
    await knex('replay').where({ key: 'jti-1' }).update({ expires_at: NOW });
    expect(await store().checkAndRecord('jti-1', NOW + 60)).toBe(true);
    expect(await knex('replay').first('expires_at').where({ key: 'jti-1' })).toMatchObject({
      expires_at: database.name === 'postgres' ? String(NOW + 60) : NOW + 60,
    });
  });

  it('prunes the expired records in batches, keeping the live ones, which are still refused', async () => {
    await knex('replay').delete();
    for (let i = 0; i < 7; i++) expect(await store().checkAndRecord(`old-${i}`, NOW - i)).toBe(true);
    for (let i = 0; i < 3; i++) expect(await store().checkAndRecord(`live-${i}`, NOW + 1 + i)).toBe(true);
    const statements: string[] = [];
    const listen = (q: { sql: string }) => statements.push(q.sql);
    knex.on('query', listen);
    let pruned: number;
    try {
      pruned = await store().prune({ batch: 3 });
    } finally {
      knex.off('query', listen);
    }
    // expires_at <= now is expired (old-0 expires at NOW itself): 7 rows, in batches of 3, 3 and 1.
    expect(pruned).toBe(7);
    expect(statements).toHaveLength(3);
    const left = ((await knex('replay').select('key').orderBy('key')) as { key: string }[]).map((r) => r.key);
    expect(left).toEqual(['live-0', 'live-1', 'live-2']);
    for (const key of left) expect(await store().checkAndRecord(key, NOW + 60)).toBe(false);
    expect(await store().prune()).toBe(0);
    await expect(store().prune({ batch: 0 })).rejects.toThrow(TypeError);
  });

  // Skipped on SQLite, which has no synchronous_commit: its replay insert is an ordinary statement.
  it.runIf(database.name === 'postgres')(
    'on PostgreSQL, commits asynchronously without changing the setting of the session',
    async () => {
      // Every connection of the pool records a proof, then is asked for its setting: synchronous_commit was
      // changed for the recording statement's own transaction only (set_config's is_local, as SET LOCAL).
      const connections = 10;
      await Promise.all(Array.from({ length: connections }, (_, i) => store().checkAndRecord(`jti-s${i}`, NOW + 60)));
      const settings = await Promise.all(
        Array.from({ length: connections }, () =>
          knex.transaction(async (trx) => {
            const { rows } = (await trx.raw('show synchronous_commit')) as { rows: { synchronous_commit: string }[] };
            await trx.raw('select pg_sleep(0.01)'); // hold the connection, so the others are asked too
            return rows[0]!.synchronous_commit;
          }),
        ),
      );
      expect(new Set(settings)).toEqual(new Set(['on']));
    },
  );
});

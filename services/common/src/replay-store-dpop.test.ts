/**
 * DPoP proofs checked against the database replay store, on SQLite and PostgreSQL, with the `key` column of
 * the services' migrations (varchar(512)). docs/protocol.md §10.3: a proof whose `iat` has a fraction (RFC
 * 7519 §2 NumericDate) is accepted and recorded in whole seconds; a `jti` of any length is recorded (as the
 * 43-character SHA-256 of thumbprint and jti), where PostgreSQL refused the raw pair beyond 512 characters.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Knex } from 'knex';
import { createDpopProof, dpopReplayKey, generateDpopKey, verifyDpopProof, type DpopKey } from '@federizer/protocol';
import { createKnex } from './db.js';
import { KnexReplayStore, MAX_REPLAY_KEY_LENGTH } from './replay-store.js';
import { testDatabases } from './testing/databases.js';

const NOW = 1_900_000_000;
const HTU = 'https://mail.example.com/federation/v1/fetch';

describe.each(testDatabases())('DPoP proofs against KnexReplayStore on $name', (database) => {
  let knex: Knex;
  let destroy: () => Promise<void>;
  let key: DpopKey;
  const replay = () => new KnexReplayStore(knex, { now: () => NOW, table: 'replay' });
  const verify = (proof: string) => verifyDpopProof(proof, { htm: 'POST', htu: HTU, now: NOW, replay: replay() });

  beforeAll(async () => {
    const created = await database.create();
    destroy = created.destroy;
    knex = createKnex(created.config);
    // The column of mailbox migration 0001 (mail_replay) and auth migration 0001 (replay).
    await knex.schema.createTable('replay', (t) => {
      t.string('key', 512).notNullable().primary();
      t.bigInteger('expires_at').notNullable();
    });
    key = await generateDpopKey();
  });

  afterAll(async () => {
    await knex?.destroy();
    await destroy?.();
  });

  it('RFC 7519 §2, docs/protocol.md §10.3: a fractional iat is accepted, recorded until ceil(iat + 90)', async () => {
    const proof = await createDpopProof(key, { htm: 'POST', htu: HTU, now: NOW - 0.75, jti: 'fractional' });
    await expect(verify(proof)).resolves.toMatchObject({ jkt: key.jkt });
    const row = (await knex('replay')
      .first('expires_at')
      .where({ key: dpopReplayKey(key.jkt, 'fractional') })) as { expires_at: unknown } | undefined;
    expect(Number(row?.expires_at)).toBe(NOW + 90);
    await expect(verify(proof)).rejects.toMatchObject({ code: 'dpop_replayed' });
  });

  it('docs/protocol.md §10.3: a jti of 4 000 characters is recorded as a 43-character key, and refused again', async () => {
    const jti = 'x'.repeat(4000);
    const proof = await createDpopProof(key, { htm: 'POST', htu: HTU, now: NOW, jti });
    await expect(verify(proof)).resolves.toMatchObject({ jkt: key.jkt });
    const stored = (await knex('replay')
      .select('key')
      .where({ key: dpopReplayKey(key.jkt, jti) })) as unknown[];
    expect(stored).toHaveLength(1);
    await expect(verify(proof)).rejects.toMatchObject({ code: 'dpop_replayed' });
  });

  it('refuses a raw key longer than the column alike on both databases (SQLite would store it)', async () => {
    const long = 'k'.repeat(MAX_REPLAY_KEY_LENGTH + 1);
    await expect(replay().checkAndRecord(long, NOW + 60)).rejects.toThrow(TypeError);
    expect(await replay().checkAndRecord('k'.repeat(MAX_REPLAY_KEY_LENGTH), NOW + 60)).toBe(true);
  });
});

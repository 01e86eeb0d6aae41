/**
 * The Authorization Server's schema, as in-code migrations (run with `migrateLatest` from
 * @federizer/common). Only portable column types are used so SQLite and PostgreSQL hold the same data:
 * times are epoch milliseconds in bigint columns (knex maps date types differently per database), JSON is
 * text (the AS never queries inside it), booleans are knex booleans (0/1 on SQLite).
 *
 * Append new migrations; never edit one that has shipped.
 */
import type { Knex } from 'knex';
import type { Migration } from '@federizer/common';
import { accountIdOf } from './adapter.js';

/** The knex bookkeeping table of the AS; the mailbox service keeps its own, so both may share a database. */
export const AUTH_MIGRATIONS_TABLE = 'auth_migrations';

export const authMigrations: readonly Migration[] = [
  {
    name: '0001_initial',
    async up(knex: Knex) {
      // oidc-provider's models (Session, AccessToken, Grant, Interaction, ...), one table for all, keyed by
      // model name: the adapter contract looks rows up by id within a model, and by grant, uid or user code.
      await knex.schema.createTable('oidc_payloads', (t) => {
        t.string('kind', 64).notNullable();
        t.string('id', 255).notNullable();
        t.text('payload').notNullable();
        t.string('grant_id', 255).nullable();
        t.string('user_code', 255).nullable();
        t.string('uid', 255).nullable();
        t.bigInteger('expires_at').nullable(); // epoch ms; null: kept until destroyed
        t.bigInteger('consumed_at').nullable(); // epoch seconds, as oidc-provider's `consumed`
        t.primary(['kind', 'id']);
        t.index(['grant_id'], 'oidc_payloads_grant_id_idx');
        t.index(['uid'], 'oidc_payloads_uid_idx');
        t.index(['user_code'], 'oidc_payloads_user_code_idx');
        t.index(['expires_at'], 'oidc_payloads_expires_at_idx');
      });

      // DPoP proof jti values (and anything else that must be seen once), shared by every replica.
      await knex.schema.createTable('replay', (t) => {
        t.string('key', 512).notNullable().primary();
        t.bigInteger('expires_at').notNullable(); // unix seconds, as the ReplayStore contract
        t.index(['expires_at'], 'replay_expires_at_idx');
      });

      await knex.schema.createTable('users', (t) => {
        t.string('address', 254).notNullable().primary(); // lower-cased addr-spec
        t.string('display_name', 256).notNullable().defaultTo('');
        t.text('password_hash').notNullable();
        t.string('forwarding_policy', 16).notNullable().defaultTo('manual');
        t.integer('send_quota_per_day').notNullable().defaultTo(1000);
        t.boolean('disabled').notNullable().defaultTo(false);
        t.bigInteger('created_at').notNullable();
        t.bigInteger('updated_at').notNullable();
      });

      await knex.schema.createTable('send_counters', (t) => {
        t.string('address', 254).notNullable().references('address').inTable('users').onDelete('CASCADE');
        t.string('day', 10).notNullable(); // YYYY-MM-DD, UTC
        t.integer('count').notNullable();
        t.primary(['address', 'day']);
        t.index(['day'], 'send_counters_day_idx');
      });

      await knex.schema.createTable('login_throttle', (t) => {
        t.string('key', 320).notNullable().primary(); // `account:<address>` or `ip:<ip>`
        t.integer('failures').notNullable();
        t.bigInteger('next_allowed_at').notNullable(); // epoch ms
        t.bigInteger('updated_at').notNullable(); // epoch ms of the last failure
        t.index(['updated_at'], 'login_throttle_updated_at_idx');
      });

      await knex.schema.createTable('signing_keys', (t) => {
        t.string('kid', 128).notNullable().primary();
        t.string('alg', 16).notNullable();
        t.text('private_jwk').notNullable();
        t.bigInteger('created_at').notNullable(); // epoch ms
        t.bigInteger('activated_at').notNullable(); // epoch ms; may lie ahead, so replicas publish a key first
        t.bigInteger('retired_at').nullable(); // epoch ms; retired keys stay in the JWKS for the share window
      });
    },
    async down(knex: Knex) {
      for (const table of ['signing_keys', 'login_throttle', 'send_counters', 'users', 'replay', 'oidc_payloads']) {
        await knex.schema.dropTableIfExists(table);
      }
    },
  },
  {
    // oidc-provider's replay records (client assertion and DPoP jti values) move from oidc_payloads to the
    // replay table (see recordReplaysIn in provider.ts). Live ones are carried over under the key the new
    // code looks up (`oidc:` + the same id), so an assertion used just before an upgrade is still refused
    // just after it.
    name: '0002_provider_replays_in_replay_table',
    async up(knex: Knex) {
      const rows = (await knex('oidc_payloads')
        .select('id', 'expires_at')
        .where({ kind: 'ReplayDetection' })
        .whereNotNull('expires_at')
        .where('expires_at', '>', Date.now())) as { id: string; expires_at: unknown }[];
      for (let i = 0; i < rows.length; i += 200) {
        const chunk = rows.slice(i, i + 200).map((r) => ({
          key: `oidc:${r.id}`,
          // oidc_payloads keeps epoch milliseconds, the replay table unix seconds.
          expires_at: Math.ceil(Number(r.expires_at) / 1000),
        }));
        await knex('replay').insert(chunk).onConflict('key').ignore();
      }
      await knex('oidc_payloads').where({ kind: 'ReplayDetection' }).delete();
    },
  },
  {
    // Every token exchange inserts two replay records (the client assertion's jti and the DPoP proof's), at
    // random places in the key order. The expires_at index doubled the pages each insert writes, for the
    // sake of one pruning DELETE every ten minutes, which scans the table as fast without it (the table
    // holds about two minutes of records). On SQLite the table also becomes WITHOUT ROWID: the key is then
    // the only B-tree, not a separate index beside a rowid table. Fewer pages written per insert is less
    // time the synchronous SQLite driver holds the event loop.
    name: '0003_replay_table_single_btree',
    async up(knex: Knex) {
      if ((knex.client as { dialect?: string }).dialect !== 'sqlite3') {
        await knex.schema.alterTable('replay', (t) => t.dropIndex(['expires_at'], 'replay_expires_at_idx'));
        return;
      }
      await knex.raw(
        'create table replay_next (key varchar(512) not null primary key, expires_at bigint not null) without rowid',
      );
      await knex.raw('insert into replay_next (key, expires_at) select key, expires_at from replay');
      await knex.schema.dropTable('replay');
      await knex.raw('alter table replay_next rename to replay');
    },
  },
  {
    // The account a provider row belongs to (Session, Grant, tokens, codes), in a column of its own, so that
    // changing a user's password, disabling or deleting the user ends all of that user's sign-ins in two
    // statements (accountIdOf and endSignIns in adapter.ts). Rows written before carry it in their JSON
    // only: it is copied from there, in JavaScript, as the two databases' JSON functions differ. Expired rows
    // are left as they are: nothing reads them, and the next pruning deletes them.
    name: '0004_payload_account_id',
    async up(knex: Knex) {
      const now = Date.now();
      await knex.schema.alterTable('oidc_payloads', (t) => {
        t.string('account_id', 254).nullable();
        t.index(['account_id'], 'oidc_payloads_account_id_idx');
      });
      let after = { kind: '', id: '' };
      for (;;) {
        const rows = (await knex('oidc_payloads')
          .select('kind', 'id', 'payload')
          .where((q) =>
            q.where('kind', '>', after.kind).orWhere((r) => r.where('kind', after.kind).where('id', '>', after.id)),
          )
          .andWhere((q) => q.whereNull('expires_at').orWhere('expires_at', '>', now))
          .orderBy([{ column: 'kind' }, { column: 'id' }])
          .limit(500)) as { kind: string; id: string; payload: string }[];
        if (rows.length === 0) break;
        for (const row of rows) {
          const accountId = accountIdOf(JSON.parse(row.payload) as Record<string, unknown>);
          if (accountId !== null) {
            await knex('oidc_payloads').where({ kind: row.kind, id: row.id }).update({ account_id: accountId });
          }
        }
        after = rows[rows.length - 1]!;
      }
    },
  },
];

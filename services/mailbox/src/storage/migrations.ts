/**
 * The mailbox service's schema, as in-code migrations. Tables are prefixed `mail_` so the mailbox and the
 * AS may share one database. Times are epoch milliseconds in bigint columns; JSON is text. Append new
 * migrations; never edit one that has shipped.
 */
import type { Knex } from 'knex';
import type { Migration } from '@federizer/common';

export const MAILBOX_MIGRATIONS_TABLE = 'mail_migrations';

export const mailboxMigrations: readonly Migration[] = [
  {
    name: '0001_initial',
    async up(knex: Knex) {
      // One row per mailbox account; `state` is the last change sequence number of this account (§9).
      await knex.schema.createTable('mail_accounts', (t) => {
        t.string('address', 254).notNullable().primary();
        t.bigInteger('storage_used').notNullable().defaultTo(0);
        t.bigInteger('created_at').notNullable();
      });

      // The resources an account holds (uploaded, or fetched for its messages): deduplicated per account,
      // counted against its quota. A blob on disk is collectable when no account references it.
      await knex.schema.createTable('mail_resources', (t) => {
        t.string('address', 254).notNullable();
        t.string('content_id', 45).notNullable(); // <43 base64url>
        t.bigInteger('size').notNullable();
        t.string('media_type', 255).notNullable().defaultTo('application/octet-stream');
        t.integer('refs').notNullable().defaultTo(0); // messages of this account that reference it
        t.bigInteger('created_at').notNullable();
        t.bigInteger('unreferenced_at').nullable(); // when refs fell to 0 (an upload not yet in a message: created_at)
        t.primary(['address', 'content_id']);
        t.index(['content_id'], 'mail_resources_content_id_idx');
      });

      await knex.schema.createTable('mail_messages', (t) => {
        t.string('id', 40).notNullable().primary(); // time-ordered, so ids sort by arrival
        t.string('address', 254).notNullable();
        t.string('mailbox', 16).notNullable(); // inbox, sent, drafts, archive, trash
        t.string('message_id', 998).notNullable();
        t.string('thread_id', 998).notNullable();
        t.string('transfer_eht', 64).nullable(); // the eht a received message arrived with (idempotency)
        t.text('envelope').notNullable();
        t.text('body').notNullable();
        t.string('subject', 998).notNullable().defaultTo('');
        t.string('from_text', 998).notNullable().defaultTo('');
        t.bigInteger('date').notNullable(); // the Date header, or the last edit of a draft
        t.bigInteger('received_at').notNullable();
        t.boolean('seen').notNullable().defaultTo(false);
        t.boolean('flagged').notNullable().defaultTo(false);
        t.bigInteger('size').notNullable().defaultTo(0); // sum of the resources' declared sizes
        t.index(['address', 'mailbox', 'id'], 'mail_messages_list_idx');
        t.index(['address', 'thread_id'], 'mail_messages_thread_idx');
        t.index(['address', 'message_id'], 'mail_messages_message_id_idx');
        t.unique(['address', 'message_id', 'transfer_eht'], { indexName: 'mail_messages_transfer_uq' });
      });

      // Each External Resource a message references, and whether this domain holds its bytes yet.
      await knex.schema.createTable('mail_message_resources', (t) => {
        t.string('message', 40).notNullable().references('id').inTable('mail_messages').onDelete('CASCADE');
        t.string('content_id', 45).notNullable();
        t.bigInteger('size').notNullable();
        t.string('status', 16).notNullable(); // held, pending, failed
        t.bigInteger('updated_at').notNullable();
        t.primary(['message', 'content_id']);
        t.index(['content_id', 'status'], 'mail_message_resources_status_idx');
      });

      // What a sender shares (§4.7): one row per copy sent, the access control list of fetches.
      await knex.schema.createTable('mail_shares', (t) => {
        t.string('id', 40).notNullable().primary();
        t.string('message', 40).notNullable().references('id').inTable('mail_messages').onDelete('CASCADE');
        t.string('address', 254).notNullable();
        t.string('message_id', 998).notNullable();
        t.string('assertion_digest', 45).notNullable(); // JWT-Assertion-Digest of A1
        t.text('envelope').notNullable(); // [A1, H0] as transferred
        t.text('recipients').notNullable(); // JSON array of addresses this copy goes to
        t.text('dpop_key').notNullable(); // the copy's private DPoP JWK (transfers prove possession of it)
        t.bigInteger('expires_at').notNullable();
        t.bigInteger('created_at').notNullable();
        t.index(['message_id', 'assertion_digest'], 'mail_shares_lookup_idx');
      });

      // Per-recipient delivery status of a share: queued, transferred, fetched, failed, withdrawn.
      await knex.schema.createTable('mail_deliveries', (t) => {
        t.string('share', 40).notNullable().references('id').inTable('mail_shares').onDelete('CASCADE');
        t.string('recipient', 254).notNullable();
        t.string('domain', 253).notNullable();
        t.string('status', 16).notNullable();
        t.text('detail').nullable();
        t.string('fetched_by', 253).nullable();
        t.bigInteger('fetched_at').nullable();
        t.bigInteger('updated_at').notNullable();
        t.primary(['share', 'recipient']);
        t.index(['share', 'domain'], 'mail_deliveries_domain_idx');
      });

      // Durable work: transfers to other domains and fetches from them, claimed with leases (§4 of the issue).
      await knex.schema.createTable('mail_jobs', (t) => {
        t.string('id', 40).notNullable().primary();
        t.string('kind', 16).notNullable(); // transfer, fetch
        t.string('key', 512).notNullable(); // transfer: share + domain; fetch: content id (one fetch per domain)
        t.string('destination', 253).notNullable(); // the other domain (per-destination concurrency)
        t.text('payload').notNullable();
        t.string('status', 16).notNullable(); // pending, done, failed
        t.integer('attempts').notNullable().defaultTo(0);
        t.bigInteger('next_attempt_at').notNullable();
        t.string('lease_owner', 64).nullable();
        t.bigInteger('lease_until').nullable();
        t.text('last_error').nullable();
        t.bigInteger('created_at').notNullable();
        t.bigInteger('updated_at').notNullable();
        t.unique(['kind', 'key'], { indexName: 'mail_jobs_key_uq' });
        t.index(['status', 'next_attempt_at'], 'mail_jobs_due_idx');
      });

      // Transfers already accepted (§5: same Message-ID and eht answer 200 and change nothing).
      await knex.schema.createTable('mail_transfers', (t) => {
        t.string('message_id', 998).notNullable();
        t.string('eht', 64).notNullable();
        t.text('result').notNullable();
        t.bigInteger('received_at').notNullable();
        t.primary(['message_id', 'eht']);
      });

      // The change log behind the sync endpoint (§9): the account's state is its newest seq.
      await knex.schema.createTable('mail_changes', (t) => {
        t.bigIncrements('seq').primary();
        t.string('address', 254).notNullable();
        t.string('object', 40).notNullable();
        t.string('op', 10).notNullable(); // created, updated, destroyed
        t.bigInteger('at').notNullable();
        t.index(['address', 'seq'], 'mail_changes_account_idx');
      });

      await knex.schema.createTable('mail_forwarding', (t) => {
        t.string('address', 254).notNullable().primary();
        t.text('targets').notNullable(); // JSON array of addresses
        t.boolean('keep_copy').notNullable().defaultTo(true);
        t.boolean('enabled').notNullable().defaultTo(true);
        t.bigInteger('updated_at').notNullable();
      });

      await knex.schema.createTable('mail_replay', (t) => {
        t.string('key', 512).notNullable().primary();
        t.bigInteger('expires_at').notNullable();
        t.index(['expires_at'], 'mail_replay_expires_at_idx');
      });
    },
  },
  {
    name: '0002_storage',
    async up(knex: Knex) {
      // The highest change sequence number pruned from this account's log: a sync state below it can no
      // longer be answered (§9, 410), and the account's state never falls below it.
      await knex.schema.alterTable('mail_accounts', (t) => {
        t.bigInteger('changes_pruned_through').notNullable().defaultTo(0);
      });
      await knex.schema.alterTable('mail_changes', (t) => {
        t.index(['at'], 'mail_changes_at_idx'); // retention
      });
      await knex.schema.alterTable('mail_resources', (t) => {
        t.index(['refs', 'unreferenced_at'], 'mail_resources_unreferenced_idx'); // the blob collector
      });
      await knex.schema.alterTable('mail_shares', (t) => {
        t.index(['message'], 'mail_shares_message_idx'); // a sent message's delivery status
        t.index(['expires_at'], 'mail_shares_expires_at_idx');
      });
      await knex.schema.alterTable('mail_jobs', (t) => {
        t.index(['destination', 'status', 'lease_until'], 'mail_jobs_destination_idx'); // per-destination limit
        t.index(['status', 'updated_at'], 'mail_jobs_finished_idx'); // purge
      });
      await knex.schema.alterTable('mail_transfers', (t) => {
        t.index(['received_at'], 'mail_transfers_received_at_idx');
      });
    },
  },
  {
    name: '0003_message_resource_media_type',
    async up(knex: Knex) {
      // The media type the message's body declares for the resource, kept with the reference so that a
      // finished fetch gives it to the account without reading the body again. Null on rows stored before.
      await knex.schema.alterTable('mail_message_resources', (t) => {
        t.string('media_type', 255).nullable();
      });
    },
  },
  {
    name: '0004_message_resource_failure',
    async up(knex: Knex) {
      // Why a resource is `failed` (the fetch's last error, or the quota it did not fit), shown to the
      // recipient beside it. Null for every other status, and on rows that failed before.
      await knex.schema.alterTable('mail_message_resources', (t) => {
        t.string('failure', 1000).nullable();
      });
    },
  },
];

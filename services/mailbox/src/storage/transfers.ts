/**
 * Transfers already accepted (PROTOCOL.md §5): a transfer with the same Message-ID and eht as an earlier one
 * is answered with the earlier result and changes nothing, so a sender's retries never duplicate mail.
 */
import type { Knex } from 'knex';
import { dbNumber } from '@federizer/common';
import { parseJson, type Clock, type StoreOptions } from './sql.js';

function checkKey(messageId: unknown, eht: unknown): void {
  if (typeof messageId !== 'string' || messageId.length === 0 || messageId.length > 998) {
    throw new TypeError('messageId must be a non-empty string of at most 998 characters');
  }
  if (typeof eht !== 'string' || eht.length === 0 || eht.length > 64) {
    throw new TypeError('eht must be a non-empty string of at most 64 characters');
  }
}

export class TransferLog {
  readonly #knex: Knex;
  readonly #now: Clock;

  constructor(knex: Knex, options: StoreOptions = {}) {
    this.#knex = knex;
    this.#now = options.now ?? Date.now;
  }

  /** The result recorded for that transfer, or undefined for a new one. */
  async seen<R = unknown>(messageId: string, eht: string): Promise<R | undefined> {
    checkKey(messageId, eht);
    const row = (await this.#knex('mail_transfers').first('result').where({ message_id: messageId, eht })) as
      { result: unknown } | undefined;
    return row === undefined ? undefined : parseJson<R>(row.result, 'result');
  }

  /**
   * Records the result of an accepted transfer unless one is recorded already; answers the recorded one
   * (the first writer's, when two deliveries of the same transfer race).
   */
  async record<R>(messageId: string, eht: string, result: R): Promise<R> {
    checkKey(messageId, eht);
    const text = JSON.stringify(result ?? null);
    const inserted = (await this.#knex('mail_transfers')
      .insert({ message_id: messageId, eht, result: text, received_at: this.#now() })
      .onConflict(['message_id', 'eht'])
      .ignore()
      .returning('eht')) as unknown[];
    // Recorded now: the stored result is this one, as a later `seen` reads it back.
    if (inserted.length > 0) return parseJson<R>(text, 'result');
    const stored = await this.seen<R>(messageId, eht);
    return stored as R;
  }

  /**
   * Forgets transfers received `olderThanMs` ago or more. Keep them at least as long as a sender may retry
   * (the share window), or a late retry would be stored again.
   */
  async prune(olderThanMs: number): Promise<number> {
    if (!Number.isSafeInteger(olderThanMs) || olderThanMs < 0) throw new TypeError('olderThanMs must be >= 0');
    return this.#knex('mail_transfers')
      .where('received_at', '<=', this.#now() - olderThanMs)
      .delete();
  }

  /** When a transfer was first recorded (for diagnostics). */
  async receivedAt(messageId: string, eht: string): Promise<number | undefined> {
    checkKey(messageId, eht);
    const row = (await this.#knex('mail_transfers').first('received_at').where({ message_id: messageId, eht })) as
      { received_at: unknown } | undefined;
    return row === undefined ? undefined : dbNumber(row.received_at);
  }
}

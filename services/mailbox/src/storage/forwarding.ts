/**
 * Per-account forwarding rules (PROTOCOL.md §7): where the account's received mail is forwarded, and whether
 * a copy stays in its inbox. Whether the domain's policy allows forwarding is the AS's decision (§7); this
 * store only keeps what the user asked for.
 */
import type { Knex } from 'knex';
import { dbBoolean, dbNumber } from '@federizer/common';
import { checkAddress, parseJson, type Clock, type StoreOptions } from './sql.js';

export interface ForwardingRule {
  readonly targets: readonly string[];
  readonly keepCopy: boolean;
  readonly enabled: boolean;
}

export interface StoredForwardingRule extends ForwardingRule {
  readonly updatedAt: number;
}

/** §7 allows at most 8 hops; a rule fans out to a handful of addresses at most. */
export const MAX_FORWARDING_TARGETS = 16;

export class ForwardingStore {
  readonly #knex: Knex;
  readonly #now: Clock;

  constructor(knex: Knex, options: StoreOptions = {}) {
    this.#knex = knex;
    this.#now = options.now ?? Date.now;
  }

  async get(address: string): Promise<StoredForwardingRule | undefined> {
    const row = (await this.#knex('mail_forwarding')
      .first()
      .where({ address: checkAddress(address) })) as
      { targets: unknown; keep_copy: unknown; enabled: unknown; updated_at: unknown } | undefined;
    if (row === undefined) return undefined;
    return {
      targets: parseJson<string[]>(row.targets, 'targets'),
      keepCopy: dbBoolean(row.keep_copy),
      enabled: dbBoolean(row.enabled),
      updatedAt: dbNumber(row.updated_at),
    };
  }

  /** Creates or replaces the account's rule. */
  async set(address: string, rule: ForwardingRule): Promise<StoredForwardingRule> {
    checkAddress(address);
    if (!Array.isArray(rule.targets) || rule.targets.length > MAX_FORWARDING_TARGETS) {
      throw new TypeError(`targets must be an array of at most ${MAX_FORWARDING_TARGETS} addresses`);
    }
    const targets = [...new Set(rule.targets.map(checkAddress))];
    if (targets.includes(address)) throw new TypeError('an account cannot forward to itself');
    if (rule.enabled && targets.length === 0) throw new TypeError('an enabled rule needs at least one target');
    const row = {
      targets: JSON.stringify(targets),
      keep_copy: Boolean(rule.keepCopy),
      enabled: Boolean(rule.enabled),
      updated_at: this.#now(),
    };
    await this.#knex('mail_forwarding')
      .insert({ address, ...row })
      .onConflict('address')
      .merge(row);
    return { targets, keepCopy: row.keep_copy, enabled: row.enabled, updatedAt: row.updated_at };
  }

  /** Removes the rule; false when there was none. */
  async delete(address: string): Promise<boolean> {
    return (
      (await this.#knex('mail_forwarding')
        .where({ address: checkAddress(address) })
        .delete()) > 0
    );
  }
}

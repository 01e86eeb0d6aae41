/**
 * oidc-provider's storage adapter over knex, the replay store of the DPoP checks, and the pruning of
 * everything that expires. The semantics follow oidc-provider's own memory adapter
 * (lib/adapters/memory_adapter.js), the reference for its contract.
 */
import type { Knex } from 'knex';
import { errors, type Adapter, type AdapterPayload } from 'oidc-provider';
import { KnexReplayStore, dbOptionalNumber } from '@federizer/common';
import { THROTTLE_FORGET_AFTER_MS } from './throttle.js';

/**
 * The models whose rows belong to a grant. As in the memory adapter, revoking a grant through any of them
 * removes the grant's rows of all of them: oidc-provider calls each model's revokeByGrantId in turn, and a
 * failure halfway must not leave, say, refresh tokens of a revoked grant behind.
 */
const GRANTABLE = [
  'AccessToken',
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
  'PreAuthorizedCode',
] as const;

/**
 * The account a provider row belongs to: `accountId` of a Session, Grant, token or code; for an Interaction,
 * the account of the session it started in or of the login it finished with. Null for rows of no account.
 */
export function accountIdOf(payload: Record<string, unknown>): string | null {
  const nested = (value: unknown, key: string): unknown =>
    typeof value === 'object' && value !== null ? (value as Record<string, unknown>)[key] : undefined;
  for (const candidate of [
    payload.accountId,
    nested(nested(payload.result, 'login'), 'accountId'),
    nested(payload.session, 'accountId'),
  ]) {
    if (typeof candidate === 'string' && candidate !== '') return candidate;
  }
  return null;
}

/**
 * Ends every sign-in of an account: its sessions (the next authorization request shows the login form),
 * its grants with every refresh token, code and stored token issued under them (a refresh is
 * `invalid_grant`; the send exchange refuses its JWT access tokens, whose `gid` names a grant that is
 * gone), and its unfinished interactions. JWT access tokens are not stored: the mailbox accepts one until
 * it expires (`userAccessTokenSeconds`). Run it in the transaction that changes the user. Answers how many
 * rows went.
 */
export async function endSignIns(knex: Knex, accountId: string): Promise<number> {
  const grants = knex('oidc_payloads').select('id').where({ kind: 'Grant', account_id: accountId });
  const underGrants = await knex('oidc_payloads').whereIn('grant_id', grants).whereIn('kind', GRANTABLE).delete();
  return underGrants + (await knex('oidc_payloads').where({ account_id: accountId }).delete());
}

/** `RefreshToken` → `refresh token`, as oidc-provider words its errors. */
function label(model: string): string {
  return model.replace(/(?<=[a-z])(?=[A-Z])/g, ' ').toLowerCase();
}

export interface KnexAdapterOptions {
  /** Epoch milliseconds; tests pass a frozen clock. */
  now?: () => number;
  /** Kept past `expiresIn` by this many seconds, to match the provider's own `clockTolerance`. */
  clockToleranceSeconds?: number;
}

interface PayloadRow {
  payload: string;
  consumed_at: unknown;
}

export class KnexAdapter implements Adapter {
  readonly #knex: Knex;
  readonly #now: () => number;
  readonly #toleranceMs: number;

  constructor(
    knex: Knex,
    readonly name: string,
    options: KnexAdapterOptions = {},
  ) {
    this.#knex = knex;
    this.#now = options.now ?? Date.now;
    this.#toleranceMs = (options.clockToleranceSeconds ?? 0) * 1000;
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    const now = this.#now();
    const row = {
      kind: this.name,
      id,
      payload: JSON.stringify(payload),
      grant_id: typeof payload.grantId === 'string' ? payload.grantId : null,
      user_code: typeof payload.userCode === 'string' ? payload.userCode : null,
      uid: typeof payload.uid === 'string' ? payload.uid : null,
      account_id: accountIdOf(payload),
      expires_at: typeof expiresIn === 'number' ? Math.floor(now + expiresIn * 1000 + this.#toleranceMs) : null,
      consumed_at: typeof payload.consumed === 'number' ? Math.floor(payload.consumed) : null,
    };
    await this.#knex('oidc_payloads').insert(row).onConflict(['kind', 'id']).merge();
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    return this.#first({ id });
  }

  async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
    return this.#first({ user_code: userCode });
  }

  async findByUid(uid: string): Promise<AdapterPayload | undefined> {
    return this.#first({ uid });
  }

  /**
   * Marks a code or refresh token used, once: the UPDATE changes the row only while it is unused, so of
   * several requests that found the same unused token (parallel refreshes of one refresh token, parallel
   * redemptions of one code) exactly one consumes it. oidc-provider calls this after its own `consumed`
   * check passed and before it issues anything, and lets what it throws become the answer, so the others
   * are refused with invalid_grant (RFC 6749 §4.1.2, RFC 9700 §4.14.2), and treated as the reuse they are:
   * as oidc-provider does for a token found already consumed, the grant is revoked with everything issued
   * under it, the winner's tokens included.
   */
  async consume(id: string): Promise<void> {
    // Kept in its own column and merged into the payload on read, so consuming is one UPDATE with no
    // read-modify-write of the JSON (and no JSON functions that differ between the databases).
    const changed = await this.#knex('oidc_payloads')
      .where({ kind: this.name, id })
      .whereNull('consumed_at')
      .update({ consumed_at: Math.floor(this.#now() / 1000) });
    if (changed > 0) return;
    const row = (await this.#knex('oidc_payloads').select('grant_id').where({ kind: this.name, id }).first()) as
      { grant_id: string | null } | undefined;
    if (row?.grant_id) {
      await this.revokeByGrantId(row.grant_id);
      await this.#knex('oidc_payloads').where({ kind: 'Grant', id: row.grant_id }).delete();
    }
    throw new errors.InvalidGrant(`${label(this.name)} already used`);
  }

  async destroy(id: string): Promise<void> {
    await this.#knex('oidc_payloads').where({ kind: this.name, id }).delete();
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    await this.#knex('oidc_payloads').where({ grant_id: grantId }).whereIn('kind', GRANTABLE).delete();
  }

  async #first(where: Record<string, string>): Promise<AdapterPayload | undefined> {
    const row = (await this.#knex('oidc_payloads')
      .select('payload', 'consumed_at')
      .where({ kind: this.name, ...where })
      .andWhere((q) => q.whereNull('expires_at').orWhere('expires_at', '>', this.#now()))
      .first()) as PayloadRow | undefined;
    if (row === undefined) return undefined;
    const payload = JSON.parse(row.payload) as AdapterPayload;
    const consumed = dbOptionalNumber(row.consumed_at);
    if (consumed !== undefined) payload.consumed = consumed;
    return payload;
  }
}

/** The value of oidc-provider's `adapter` option. */
export function adapterFactory(knex: Knex, options: KnexAdapterOptions = {}): (name: string) => KnexAdapter {
  return (name: string) => new KnexAdapter(knex, name, options);
}

export interface PruneResult {
  oidcPayloads: number;
  replay: number;
  loginThrottle: number;
  sendCounters: number;
}

/**
 * Deletes what can no longer be returned or counted. Reads already ignore expired rows, so this only
 * bounds the tables' size; run it periodically from one replica (running it from several is harmless).
 */
export async function pruneExpired(knex: Knex, now: Date): Promise<PruneResult> {
  const ms = now.getTime();
  const oidcPayloads = await knex('oidc_payloads').where('expires_at', '<=', ms).delete();
  // In batches, as the mailbox prunes its own replay table: the shared store's one way of doing it.
  const replay = await new KnexReplayStore(knex, { now: () => Math.floor(ms / 1000) }).prune();
  const loginThrottle = await knex('login_throttle')
    .where('updated_at', '<=', ms - THROTTLE_FORGET_AFTER_MS)
    .delete();
  // Quotas count per UTC day: yesterday's counter is kept a day for the admin API, older ones go.
  const yesterday = new Date(ms - 24 * 3600 * 1000).toISOString().slice(0, 10);
  const sendCounters = await knex('send_counters').where('day', '<', yesterday).delete();
  return { oidcPayloads, replay, loginThrottle, sendCounters };
}

// The replay store moved to @federizer/common (the mailbox needs it too); re-exported for the AS.
export { KnexReplayStore, type KnexReplayStoreOptions } from '@federizer/common';

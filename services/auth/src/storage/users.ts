/**
 * The mail domain's users: addresses, password hashes, forwarding policy (PROTOCOL.md §7) and the daily
 * send quota checked at the token exchange (§4.5). Errors carry stable codes; the admin API and the login
 * interaction map them to HTTP answers.
 */
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import type { Knex } from 'knex';
import { dbBoolean, dbNumber } from '@federizer/common';
import { domainOf, normalizeAddress, parseSingleMailbox } from '@federizer/protocol';
import { endSignIns } from './adapter.js';

/**
 * `any`: the user's mail may be forwarded manually and automatically; `manual`: only forwards the user
 * starts; `none`: no forwarding at all.
 */
export type ForwardingPolicy = 'any' | 'manual' | 'none';
export const FORWARDING_POLICIES: readonly ForwardingPolicy[] = ['any', 'manual', 'none'];

export interface User {
  readonly address: string;
  readonly displayName: string;
  readonly forwardingPolicy: ForwardingPolicy;
  readonly sendQuotaPerDay: number;
  readonly disabled: boolean;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

export type UserStoreErrorCode =
  | 'user_exists'
  | 'user_not_found'
  | 'invalid_address'
  | 'wrong_domain'
  | 'weak_password'
  | 'invalid_policy'
  | 'invalid_quota';

export class UserStoreError extends Error {
  override readonly name = 'UserStoreError';
  constructor(
    readonly code: UserStoreErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export const MIN_PASSWORD_LENGTH = 8;
const MAX_QUOTA = 1_000_000;
const MAX_LIST = 1000;

/**
 * `consumeSendQuotaUnderGrant` as one statement: an upsert whose inserted row is selected from the user
 * (so an unknown or disabled user, a spent quota or a revoked grant inserts nothing) and whose update is
 * conditional on the limit read in the same statement. Written out as SQL rather than built per call: it is
 * the token exchange's hottest statement, and knex's building of a query this shape cost more CPU than
 * SQLite's running it. Standard double-quoted identifiers, which SQLite and PostgreSQL both accept; the
 * SELECT has a WHERE, as SQLite requires of an INSERT ... SELECT with an upsert clause.
 */
const CONSUME_UNDER_GRANT = `insert into "send_counters" ("address", "day", "count")
  select "address", ?, ? from "users"
  where "address" = ? and "disabled" = ? and "send_quota_per_day" >= ?
    and exists (
      select 1 from "oidc_payloads"
      where "kind" = ? and "id" = ? and ("expires_at" is null or "expires_at" > ?)
    )
  on conflict ("address", "day") do update set "count" = "send_counters"."count" + "excluded"."count"
  where "send_counters"."count" + "excluded"."count" <= (
    select "send_quota_per_day" from "users" where "users"."address" = "send_counters"."address"
  )
  returning "count"`;

const SCRYPT = { N: 2 ** 15, r: 8, p: 1, keyLength: 32, saltLength: 16 } as const;
/** Bounds what a stored hash may ask for, so a corrupted row cannot take gigabytes of memory. */
const SCRYPT_MAX_MEMORY = 256 * 1024 * 1024;

/**
 * Verified against when the address is unknown, so a login for a missing user spends the same scrypt time
 * as one for a real user. The zero key cannot be produced by scrypt in practice, so it never matches.
 */
const DECOY_HASH = `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${Buffer.alloc(SCRYPT.saltLength).toString('base64url')}$${Buffer.alloc(SCRYPT.keyLength).toString('base64url')}`;

function scryptAsync(
  password: string,
  salt: Buffer,
  keyLength: number,
  N: number,
  r: number,
  p: number,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // The async form runs on libuv's thread pool: the event loop keeps serving while a hash is computed.
    // scrypt needs 128·N·r bytes; at N=2^15, r=8 that is exactly Node's default maxmem, which it rejects.
    scrypt(password, salt, keyLength, { N, r, p, maxmem: 2 * 128 * N * r }, (error, key) =>
      error ? reject(error) : resolve(key),
    );
  });
}

/** RFC 8265 OpaqueString prepares passwords with NFC, so the same password typed on two devices matches. */
function preparePassword(password: string): string {
  return password.normalize('NFC');
}

/** `scrypt$N$r$p$salt$hash` (base64url): the parameters travel with the hash so they can be raised later. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(SCRYPT.saltLength);
  const key = await scryptAsync(preparePassword(password), salt, SCRYPT.keyLength, SCRYPT.N, SCRYPT.r, SCRYPT.p);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

export async function verifyPasswordHash(password: string, encoded: string): Promise<boolean> {
  const parts = encoded.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [N, r, p] = parts.slice(1, 4).map(Number) as [number, number, number];
  if (!Number.isSafeInteger(N) || N < 2 || N > 2 ** 24 || (N & (N - 1)) !== 0) return false;
  if (!Number.isSafeInteger(r) || r < 1 || r > 32 || !Number.isSafeInteger(p) || p < 1 || p > 16) return false;
  if (128 * N * r > SCRYPT_MAX_MEMORY) return false;
  const salt = Buffer.from(parts[4] as string, 'base64url');
  const expected = Buffer.from(parts[5] as string, 'base64url');
  if (salt.length === 0 || expected.length < 16 || expected.length > 64) return false;
  const actual = await scryptAsync(preparePassword(password), salt, expected.length, N, r, p);
  return timingSafeEqual(actual, expected);
}

interface UserRow {
  address: string;
  display_name: string;
  password_hash: string;
  forwarding_policy: string;
  send_quota_per_day: unknown;
  disabled: unknown;
  created_at: unknown;
  updated_at: unknown;
}

const USER_COLUMNS = [
  'address',
  'display_name',
  'forwarding_policy',
  'send_quota_per_day',
  'disabled',
  'created_at',
  'updated_at',
] as const;

function toUser(row: Omit<UserRow, 'password_hash'>): User {
  return {
    address: row.address,
    displayName: row.display_name,
    forwardingPolicy: row.forwarding_policy as ForwardingPolicy,
    sendQuotaPerDay: dbNumber(row.send_quota_per_day),
    disabled: dbBoolean(row.disabled),
    createdAt: new Date(dbNumber(row.created_at)),
    updatedAt: new Date(dbNumber(row.updated_at)),
  };
}

export interface CreateUserInput {
  address: string;
  displayName?: string;
  password: string;
  forwardingPolicy?: ForwardingPolicy;
  sendQuotaPerDay?: number;
}

export interface UpdateUserInput {
  displayName?: string;
  forwardingPolicy?: ForwardingPolicy;
  sendQuotaPerDay?: number;
  disabled?: boolean;
}

export interface UserStoreOptions {
  /** The mail domain of this AS; addresses of other domains are refused. */
  domain: string;
  /** Stamps created_at and updated_at; tests pass a frozen clock. */
  now?: () => Date;
}

export class UserStore {
  readonly domain: string;
  readonly #knex: Knex;
  readonly #now: () => Date;

  constructor(knex: Knex, options: UserStoreOptions) {
    this.#knex = knex;
    this.domain = options.domain.toLowerCase();
    this.#now = options.now ?? (() => new Date());
  }

  async create(input: CreateUserInput): Promise<User> {
    const address = this.#validAddress(input.address);
    const displayName = validDisplayName(input.displayName ?? '');
    const forwardingPolicy = validPolicy(input.forwardingPolicy ?? 'manual');
    const sendQuotaPerDay = validQuota(input.sendQuotaPerDay ?? 1000);
    validPassword(input.password);
    const passwordHash = await hashPassword(input.password);
    const now = this.#now().getTime();
    // ON CONFLICT DO NOTHING instead of catching the driver's unique-violation error, whose shape differs
    // between better-sqlite3 and pg.
    const inserted = (await this.#knex('users')
      .insert({
        address,
        display_name: displayName,
        password_hash: passwordHash,
        forwarding_policy: forwardingPolicy,
        send_quota_per_day: sendQuotaPerDay,
        disabled: false,
        created_at: now,
        updated_at: now,
      })
      .onConflict('address')
      .ignore()
      .returning(USER_COLUMNS)) as UserRow[];
    const row = inserted[0];
    if (row === undefined) throw new UserStoreError('user_exists', `${address} already exists`);
    return toUser(row);
  }

  /** Undefined for an unknown address, including one that is not a valid address at all. */
  async get(address: string): Promise<User | undefined> {
    const row = (await this.#knex('users')
      .select(USER_COLUMNS)
      .where({ address: normalizeAddress(address) })
      .first()) as UserRow | undefined;
    return row === undefined ? undefined : toUser(row);
  }

  /**
   * The token exchange's read of its subject, in one query: the user (undefined when unknown), and whether
   * the oidc-provider Grant that the user's access token carries (`gid`) still stands, that is, is in
   * oidc_payloads and unexpired at `nowMs` (the adapter's clock); sign-out, refresh-token reuse, a new
   * password and disabling the user delete it.
   */
  async getWithGrant(
    address: string,
    grantId: string,
    nowMs: number,
  ): Promise<{ user: User | undefined; grantActive: boolean }> {
    const grants = this.#knex('oidc_payloads')
      .count('*')
      .where({ kind: 'Grant', id: grantId })
      .andWhere((q) => q.whereNull('expires_at').orWhere('expires_at', '>', nowMs));
    const row = (await this.#knex('users')
      .select([...USER_COLUMNS, grants.as('grants')])
      .where({ address: normalizeAddress(address) })
      .first()) as (UserRow & { grants: unknown }) | undefined;
    // An unknown user is refused as such before the grant is asked about (tokenUser in exchange.ts).
    return row === undefined
      ? { user: undefined, grantActive: false }
      : { user: toUser(row), grantActive: dbNumber(row.grants) > 0 };
  }

  /** Ordered by address; pass the last address of a page as `after` for the next one. */
  async list(options: { after?: string; limit: number }): Promise<User[]> {
    if (!Number.isSafeInteger(options.limit) || options.limit < 1 || options.limit > MAX_LIST) {
      throw new TypeError(`limit must be an integer from 1 to ${MAX_LIST}`);
    }
    const query = this.#knex('users').select(USER_COLUMNS).orderBy('address').limit(options.limit);
    if (options.after !== undefined) query.where('address', '>', normalizeAddress(options.after));
    return ((await query) as UserRow[]).map(toUser);
  }

  /** Disabling a user also ends their sign-ins (endSignIns): enabling them again does not bring those back. */
  async update(address: string, changes: UpdateUserInput): Promise<User> {
    const patch: Record<string, unknown> = { updated_at: this.#now().getTime() };
    if (changes.displayName !== undefined) patch.display_name = validDisplayName(changes.displayName);
    if (changes.forwardingPolicy !== undefined) patch.forwarding_policy = validPolicy(changes.forwardingPolicy);
    if (changes.sendQuotaPerDay !== undefined) patch.send_quota_per_day = validQuota(changes.sendQuotaPerDay);
    if (changes.disabled !== undefined) {
      if (typeof changes.disabled !== 'boolean') throw new TypeError('disabled must be a boolean');
      patch.disabled = changes.disabled;
    }
    const normalized = normalizeAddress(address);
    return this.#knex.transaction(async (trx) => {
      const rows = (await trx('users')
        .where({ address: normalized })
        .update(patch)
        .returning(USER_COLUMNS)) as UserRow[];
      const row = rows[0];
      if (row === undefined) throw new UserStoreError('user_not_found', `no user ${address}`);
      if (changes.disabled === true) await endSignIns(trx, normalized);
      return toUser(row);
    });
  }

  /**
   * Sets a new password and ends every sign-in of the user (endSignIns), as a reset after a leak must. The
   * same password again changes nothing and ends nothing, so a caller that sends the password it holds
   * (the operator, after a restart) does not sign the user out. Answers whether the password changed.
   */
  async setPassword(address: string, password: string): Promise<boolean> {
    validPassword(password);
    const normalized = normalizeAddress(address);
    const current = (await this.#knex('users').select('password_hash').where({ address: normalized }).first()) as
      { password_hash: string } | undefined;
    if (current === undefined) throw new UserStoreError('user_not_found', `no user ${address}`);
    if (await verifyPasswordHash(password, current.password_hash)) return false;
    const passwordHash = await hashPassword(password);
    return this.#knex.transaction(async (trx) => {
      const count = await trx('users')
        .where({ address: normalized })
        .update({ password_hash: passwordHash, updated_at: this.#now().getTime() });
      if (count === 0) throw new UserStoreError('user_not_found', `no user ${address}`);
      await endSignIns(trx, normalized);
      return true;
    });
  }

  /** Also deletes the user's send counters (ON DELETE CASCADE) and ends their sign-ins (endSignIns). */
  async delete(address: string): Promise<void> {
    const normalized = normalizeAddress(address);
    await this.#knex.transaction(async (trx) => {
      const count = await trx('users').where({ address: normalized }).delete();
      if (count === 0) throw new UserStoreError('user_not_found', `no user ${address}`);
      await endSignIns(trx, normalized);
    });
  }

  /**
   * The user when the password is right and the account enabled; undefined otherwise, without saying why.
   * The hash is checked in every case (a decoy for unknown addresses) so the answer time does not reveal
   * which addresses exist or are disabled.
   */
  async verifyPassword(address: string, password: string): Promise<User | undefined> {
    if (typeof address !== 'string' || typeof password !== 'string') return undefined;
    const row = (await this.#knex('users')
      .select([...USER_COLUMNS, 'password_hash'])
      .where({ address: normalizeAddress(address) })
      .first()) as UserRow | undefined;
    const ok = await verifyPasswordHash(password, row?.password_hash ?? DECOY_HASH);
    if (row === undefined || !ok) return undefined;
    const user = toUser(row);
    return user.disabled ? undefined : user;
  }

  /**
   * Counts `count` messages against the user's quota for the UTC day of `now`, or refuses them all. The
   * increment and the limit check are one conditional upsert, so concurrent token exchanges can never push
   * the counter past the limit. A disabled user may send nothing. A caller that has just loaded the user may
   * pass the User instead of its address, which saves reading it again.
   */
  async consumeSendQuota(
    who: string | Pick<User, 'address' | 'sendQuotaPerDay' | 'disabled'>,
    count: number,
    now: Date,
  ): Promise<{ allowed: boolean; used: number; limit: number }> {
    if (!Number.isSafeInteger(count) || count < 1) throw new TypeError('count must be a positive integer');
    const day = utcDay(now);
    const address = typeof who === 'string' ? who : who.address;
    const normalized = normalizeAddress(address);
    const user =
      typeof who === 'string'
        ? ((await this.#knex('users')
            .select('send_quota_per_day', 'disabled')
            .where({ address: normalized })
            .first()) as { send_quota_per_day: unknown; disabled: unknown } | undefined)
        : { send_quota_per_day: who.sendQuotaPerDay, disabled: who.disabled };
    if (user === undefined) throw new UserStoreError('user_not_found', `no user ${address}`);
    const limit = dbNumber(user.send_quota_per_day);
    if (!dbBoolean(user.disabled) && count <= limit) {
      const rows = (await this.#knex('send_counters')
        .insert({ address: normalized, day, count })
        .onConflict(['address', 'day'])
        .merge({ count: this.#knex.raw('?? + excluded.??', ['send_counters.count', 'count']) })
        .where('send_counters.count', '<=', limit - count)
        .returning('count')) as { count: unknown }[];
      const row = rows[0];
      if (row !== undefined) return { allowed: true, used: dbNumber(row.count), limit };
    }
    const current = (await this.#knex('send_counters').select('count').where({ address: normalized, day }).first()) as
      { count: unknown } | undefined;
    return { allowed: false, used: current === undefined ? 0 : dbNumber(current.count), limit };
  }

  /**
   * The send exchange's one statement when nothing refuses (PROTOCOL.md §4.5): counts `count` sends against
   * the quota of the UTC day of `now`, but only if the user exists and is enabled, has that many sends left
   * today, and the oidc-provider Grant `grantId` still stands at `grantNowMs` (the adapter's clock, as in
   * `getWithGrant`). True when counted. False when any condition fails, and then nothing was counted: the
   * caller asks `getWithGrant` and `consumeSendQuota`, which tell which one. The common case thus costs one
   * statement instead of two, and the limit is checked against the row as it is at that moment, so
   * concurrent exchanges cannot pass it (the conflict clause re-checks it, as in `consumeSendQuota`).
   */
  async consumeSendQuotaUnderGrant(
    address: string,
    grantId: string,
    count: number,
    now: Date,
    grantNowMs: number,
  ): Promise<boolean> {
    if (!Number.isSafeInteger(count) || count < 1) throw new TypeError('count must be a positive integer');
    const result = (await this.#knex.raw(CONSUME_UNDER_GRANT, [
      utcDay(now),
      count,
      normalizeAddress(address),
      false,
      count,
      'Grant',
      grantId,
      grantNowMs,
    ])) as unknown;
    // knex answers a raw statement as its driver does: rows on SQLite, a result holding them on PostgreSQL.
    const rows = Array.isArray(result) ? result : (result as { rows: unknown[] }).rows;
    return rows.length === 1;
  }

  #validAddress(input: string): string {
    if (typeof input !== 'string') throw new UserStoreError('invalid_address', 'the address must be a string');
    let parsed;
    try {
      parsed = parseSingleMailbox(input);
    } catch {
      throw new UserStoreError('invalid_address', `not an address: ${JSON.stringify(input)}`);
    }
    const address = normalizeAddress(parsed.address);
    // A bare dot-atom addr-spec only: no display name, comments, white space or quoted local part, which
    // would otherwise be accepted by the header parser but make awkward account names and throttle keys.
    if (
      parsed.name !== undefined ||
      address !== input.toLowerCase() ||
      parsed.local.includes('"') ||
      parsed.local.length > 64 ||
      address.length > 254
    ) {
      throw new UserStoreError('invalid_address', `not a plain address: ${JSON.stringify(input)}`);
    }
    if (domainOf(address) !== this.domain) {
      throw new UserStoreError('wrong_domain', `${address} is not an address of ${this.domain}`);
    }
    return address;
  }
}

function validPassword(password: string): void {
  if (typeof password !== 'string') throw new TypeError('the password must be a string');
  if ([...preparePassword(password)].length < MIN_PASSWORD_LENGTH) {
    throw new UserStoreError('weak_password', `passwords have at least ${MIN_PASSWORD_LENGTH} characters`);
  }
}

function validPolicy(policy: unknown): ForwardingPolicy {
  if (!FORWARDING_POLICIES.includes(policy as ForwardingPolicy)) {
    throw new UserStoreError('invalid_policy', `forwarding policy is one of ${FORWARDING_POLICIES.join(', ')}`);
  }
  return policy as ForwardingPolicy;
}

function validQuota(quota: unknown): number {
  if (typeof quota !== 'number' || !Number.isSafeInteger(quota) || quota < 0 || quota > MAX_QUOTA) {
    throw new UserStoreError('invalid_quota', `the send quota is an integer from 0 to ${MAX_QUOTA} per day`);
  }
  return quota;
}

function validDisplayName(name: unknown): string {
  // eslint-disable-next-line no-control-regex
  if (typeof name !== 'string' || name.length > 256 || /[\u0000-\u001f\u007f]/.test(name)) {
    throw new TypeError('a display name is a string of at most 256 characters without control characters');
  }
  return name;
}

function utcDay(now: Date): string {
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) throw new TypeError('now must be a valid Date');
  return now.toISOString().slice(0, 10);
}

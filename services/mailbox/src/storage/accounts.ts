/**
 * Mailbox accounts and the resources they hold. A resource (an upload, or bytes fetched for a received
 * message) is held once per account, counts against that account's quota, and carries `refs`: how many of
 * the account's messages reference it. A blob on disk may be deleted once no account references it and the
 * last reference went away longer ago than the share window (PROTOCOL.md §4.6), so recipients still
 * fetching a shared copy find its bytes.
 *
 * `MessageStore` keeps `refs` in step with the messages it creates and deletes, in the same transactions
 * (through `referenceResources`/`unreferenceResources` below); `reference`/`unreference` here are for other
 * holders only. Every transaction that starts holding a resource, or forgets it for the collector
 * (src/gc/blob-collector.ts), takes the resource's lock first (`lockContent`), so the two never interleave.
 */
import type { Knex } from 'knex';
import { dbNumber, dbOptionalNumber } from '@federizer/common';
import { MailStoreError, isMailStoreError } from './errors.js';
import {
  checkAddress,
  checkContentId,
  checkLimit,
  checkSize,
  chunks,
  isPostgres,
  knownAccounts,
  lockAccounts,
  lockContent,
  rememberAccount,
  type Clock,
  type KnownAccounts,
  type StoreOptions,
} from './sql.js';

/** The share window's default (PROTOCOL.md §4.6: `exp` = `iat` + 7 days). */
export const DEFAULT_SHARE_WINDOW_MS = 7 * 24 * 3600 * 1000;

export interface ResourceInput {
  /** `<43 base64url>` */
  contentId: string;
  size: number;
  mediaType?: string;
}

export interface HeldResource {
  readonly address: string;
  readonly contentId: string;
  readonly size: number;
  readonly mediaType: string;
  readonly refs: number;
  readonly createdAt: number;
  /** When `refs` last fell to 0 (for an upload not yet in a message: when it was added); undefined while referenced. */
  readonly unreferencedAt: number | undefined;
}

export interface AddResourceResult {
  /** False when the account already held it (nothing was counted twice). */
  readonly added: boolean;
  readonly storageUsed: number;
}

interface ResourceRow {
  address: string;
  content_id: string;
  size: unknown;
  media_type: string;
  refs: unknown;
  created_at: unknown;
  unreferenced_at: unknown;
}

function toResource(row: ResourceRow): HeldResource {
  return {
    address: row.address,
    contentId: row.content_id,
    size: dbNumber(row.size),
    mediaType: row.media_type,
    refs: dbNumber(row.refs),
    createdAt: dbNumber(row.created_at),
    unreferencedAt: dbOptionalNumber(row.unreferenced_at),
  };
}

function checkQuota(quota: unknown): number {
  if (quota === undefined) return Number.POSITIVE_INFINITY;
  if (typeof quota !== 'number' || Number.isNaN(quota) || quota < 0) {
    throw new TypeError(`quota must be a non-negative number of bytes, not ${JSON.stringify(quota)}`);
  }
  return quota;
}

function checkContentIds(contentIds: readonly string[]): string[] {
  if (!Array.isArray(contentIds)) throw new TypeError('content ids must be an array');
  return [...new Set(contentIds.map(checkContentId))];
}

/** A resource to hold, checked: what `holdResource` takes. */
export interface CheckedResource {
  readonly address: string;
  readonly contentId: string;
  readonly size: number;
  readonly mediaType: string;
  readonly quota: number;
}

function checkResourceInput(address: string, resource: ResourceInput, options: { quota?: number }): CheckedResource {
  checkAddress(address);
  const contentId = checkContentId(resource.contentId);
  const size = checkSize(resource.size);
  const mediaType = resource.mediaType ?? 'application/octet-stream';
  if (typeof mediaType !== 'string' || mediaType.length === 0 || mediaType.length > 255) {
    throw new TypeError('invalid media type');
  }
  return { address, contentId, size, mediaType, quota: checkQuota(options.quota) };
}

/**
 * One more reference from the account's messages to each resource it holds. Resources it does not hold yet
 * (a received message whose bytes are still to be fetched) are skipped: `addResource` counts the messages
 * already referencing a resource when it starts holding it. The caller holds the account lock.
 */
export async function referenceResources(
  trx: Knex.Transaction,
  address: string,
  contentIds: readonly string[],
): Promise<void> {
  for (const part of chunks(contentIds)) {
    await trx('mail_resources')
      .where({ address })
      .whereIn('content_id', part)
      .update({ refs: trx.raw('?? + 1', ['refs']), unreferenced_at: null });
  }
}

/** One reference fewer; when none is left, the time is noted for the collector. The caller holds the lock. */
export async function unreferenceResources(
  trx: Knex.Transaction,
  address: string,
  contentIds: readonly string[],
  now: number,
): Promise<void> {
  for (const part of chunks(contentIds)) {
    // Both CASEs read the row's old `refs` (SQL evaluates every SET expression against the old row).
    await trx('mail_resources')
      .where({ address })
      .whereIn('content_id', part)
      .update({
        refs: trx.raw('case when ?? > 1 then ?? - 1 else 0 end', ['refs', 'refs']),
        unreferenced_at: trx.raw('case when ?? > 1 then null else coalesce(??, ?) end', [
          'refs',
          'unreferenced_at',
          now,
        ]),
      });
  }
}

/**
 * Starts holding a resource inside the caller's transaction, which holds the resource's lock and then the
 * account's (`lockContent`, `lockAccounts`): counts its size against the account unless it is held already,
 * refusing with `quota_exceeded` past `quota`. A resource held but unreferenced restarts its collection clock.
 */
export async function holdResource(
  trx: Knex.Transaction,
  input: CheckedResource,
  now: number,
): Promise<AddResourceResult> {
  const { address, contentId, size, mediaType, quota } = input;
  // One statement: the account's counter, whether it holds the resource, and (only when it does not) how
  // many of its messages reference it already: messages may reference the resource before the account
  // holds it (a received message waiting for its fetch); they count from the start.
  const counted = trx('mail_message_resources as mr')
    .join('mail_messages as m', 'm.id', 'mr.message')
    .count('*')
    .where('m.address', trx.ref('a.address'))
    .andWhere('mr.content_id', contentId);
  const row = (await trx('mail_accounts as a')
    .leftJoin('mail_resources as r', (j) => j.on('r.address', 'a.address').andOnVal('r.content_id', contentId))
    .first(
      'a.storage_used',
      'r.refs',
      trx.raw('case when ?? is null then ? else 0 end as ??', ['r.refs', counted, 'counted']),
    )
    .where('a.address', address)) as { storage_used: unknown; refs: unknown; counted: unknown };
  const used = dbNumber(row.storage_used);
  if (row.refs !== null && row.refs !== undefined) {
    if (dbNumber(row.refs) === 0) {
      await trx('mail_resources').where({ address, content_id: contentId }).update({ unreferenced_at: now });
    }
    return { added: false, storageUsed: used };
  }
  if (used + size > quota) {
    throw new MailStoreError(
      'quota_exceeded',
      `${address} holds ${used} bytes; ${size} more would exceed the quota of ${quota}`,
    );
  }
  const refs = dbNumber(row.counted);
  await trx('mail_resources').insert({
    address,
    content_id: contentId,
    size,
    media_type: mediaType,
    refs,
    created_at: now,
    unreferenced_at: refs === 0 ? now : null,
  });
  await trx('mail_accounts').where({ address }).increment('storage_used', size);
  return { added: true, storageUsed: used + size };
}

export class AccountStore {
  readonly #knex: Knex;
  readonly #now: Clock;
  readonly #known: KnownAccounts;

  constructor(knex: Knex, options: StoreOptions = {}) {
    this.#knex = knex;
    this.#now = options.now ?? Date.now;
    this.#known = knownAccounts(knex);
  }

  /**
   * Creates the account row if missing (accounts also appear on their first message or resource). An
   * account this process knows to exist costs no statement.
   */
  async ensure(address: string): Promise<void> {
    checkAddress(address);
    if (this.#known.has(address)) return;
    await this.#knex('mail_accounts')
      .insert({ address, storage_used: 0, created_at: this.#now() })
      .onConflict('address')
      .ignore();
    // Outside any transaction: the row is committed now, whoever inserted it.
    rememberAccount(this.#known, address);
  }

  /** Bytes of the resources the account holds; 0 for an unknown account. */
  async storageUsed(address: string): Promise<number> {
    const row = (await this.#knex('mail_accounts')
      .first('storage_used')
      .where({ address: checkAddress(address) })) as { storage_used: unknown } | undefined;
    return row === undefined ? 0 : dbNumber(row.storage_used);
  }

  /**
   * Starts holding a resource, counting its size against the account, or does nothing when it is already
   * held. Refuses with `quota_exceeded` when the new total would exceed `quota`; the check and the counter
   * update happen under the account lock, so concurrent additions never overshoot.
   *
   * Adding a resource the account already holds but no longer references restarts its collection clock, so
   * a blob re-uploaded just before the collector runs is not deleted under the new upload.
   */
  async addResource(
    address: string,
    resource: ResourceInput,
    options: { quota?: number } = {},
  ): Promise<AddResourceResult> {
    const input = checkResourceInput(address, resource, options);
    return this.#knex.transaction(async (trx) => {
      await lockContent(trx, input.contentId);
      return this.#add(trx, input);
    });
  }

  /**
   * Gives the account a resource some account of this domain already holds (§6.5: bytes held are never
   * fetched again), as `addResource` does; answers undefined, changing nothing, when no account holds it.
   * The check and the addition are one transaction under the resource's lock, so the blob collector cannot
   * forget the last holder in between and leave the new row without its blob.
   */
  async shareHeld(
    address: string,
    resource: ResourceInput,
    options: { quota?: number } = {},
  ): Promise<AddResourceResult | undefined> {
    const input = checkResourceInput(address, resource, options);
    if (!isPostgres(this.#knex)) {
      // SQLite's one connection runs this read alone, as it would in the transaction: held by nobody, there
      // is nothing to add and no transaction is needed.
      const holder = await this.#knex('mail_resources').first('address').where({ content_id: input.contentId });
      if (holder === undefined) return undefined;
    }
    return this.#knex.transaction(async (trx) => {
      await lockContent(trx, input.contentId);
      const holder = await trx('mail_resources').first('address').where({ content_id: input.contentId });
      if (holder === undefined) return undefined;
      return this.#add(trx, input);
    });
  }

  /**
   * What a message just received starts with, resource by resource (§6.5): `held` when `shareHeld` gave it
   * to the account, `pending` (to fetch) when no account holds it, `failed` with the reason for the
   * recipient when it does not fit the account's quota, as a fetch refused for the quota would be.
   */
  async shareHeldOrPending(
    address: string,
    resources: readonly ResourceInput[],
    options: { quota?: number } = {},
  ): Promise<Map<string, { status: 'held' | 'pending' | 'failed'; failure?: string }>> {
    const statuses = new Map<string, { status: 'held' | 'pending' | 'failed'; failure?: string }>();
    for (const r of resources) {
      try {
        statuses.set(r.contentId, { status: (await this.shareHeld(address, r, options)) ? 'held' : 'pending' });
      } catch (e) {
        if (!isMailStoreError(e, 'quota_exceeded')) throw e;
        statuses.set(r.contentId, { status: 'failed', failure: `it does not fit the mailbox: ${e.message}` });
      }
    }
    return statuses;
  }

  async #add(trx: Knex.Transaction, input: CheckedResource): Promise<AddResourceResult> {
    const now = this.#now();
    await lockAccounts(trx, [input.address], now, this.#known);
    return holdResource(trx, input, now);
  }

  /**
   * Whether anything of this domain still refers to the resource: an account holding it, or a message
   * referencing it (held, or waiting for its fetch). Read under the resource's lock, after every addition
   * that started before; the collector asks once more after moving a blob aside, and puts it back when so.
   */
  async isReferenced(contentId: string): Promise<boolean> {
    checkContentId(contentId);
    return this.#knex.transaction(async (trx) => {
      await lockContent(trx, contentId);
      const held = await trx('mail_resources').first('address').where({ content_id: contentId });
      if (held !== undefined) return true;
      const referenced = await trx('mail_message_resources').first('message').where({ content_id: contentId });
      return referenced !== undefined;
    });
  }

  async hasResource(address: string, contentId: string): Promise<boolean> {
    const row = await this.#knex('mail_resources')
      .first('refs')
      .where({ address: checkAddress(address), content_id: checkContentId(contentId) });
    return row !== undefined;
  }

  async resource(address: string, contentId: string): Promise<HeldResource | undefined> {
    const row = (await this.#knex('mail_resources')
      .first()
      .where({ address: checkAddress(address), content_id: checkContentId(contentId) })) as ResourceRow | undefined;
    return row === undefined ? undefined : toResource(row);
  }

  /** One more reference to each held resource (held ones only). Not for messages of `MessageStore`. */
  async reference(address: string, contentIds: readonly string[]): Promise<void> {
    checkAddress(address);
    const ids = checkContentIds(contentIds);
    if (ids.length === 0) return;
    await this.#knex.transaction(async (trx) => {
      await lockAccounts(trx, [address], this.#now(), this.#known);
      await referenceResources(trx, address, ids);
    });
  }

  /** One reference fewer to each; `unreferencedAt` is set when a count reaches 0. */
  async unreference(address: string, contentIds: readonly string[]): Promise<void> {
    checkAddress(address);
    const ids = checkContentIds(contentIds);
    if (ids.length === 0) return;
    await this.#knex.transaction(async (trx) => {
      const now = this.#now();
      await lockAccounts(trx, [address], now, this.#known);
      await unreferenceResources(trx, address, ids, now);
    });
  }

  /** The accounts holding the resource: a fetch is skipped when this domain already has the bytes. */
  async holders(contentId: string): Promise<string[]> {
    const rows = (await this.#knex('mail_resources')
      .select('address')
      .where({ content_id: checkContentId(contentId) })
      .orderBy('address')) as { address: string }[];
    return rows.map((r) => r.address);
  }

  /**
   * Content ids whose blobs may be deleted: no account references them and the last reference went away
   * (or the unreferenced upload arrived) at least `olderThanMs` ago, and no message of this domain refers
   * to them (a received message whose fetch is pending). Without `candidates` the held resources are
   * searched; with `candidates` (ids listed from the blob store, old enough on disk) those are filtered,
   * which also finds blobs no account holds at all (an interrupted upload, a forgotten row). Ids come in
   * the database's order; `after` (the last id of the previous page) pages through them.
   *
   * Delete a blob only after `forgetUnreferenced` answered true for it: that rechecks under the locks.
   */
  async collectable(
    olderThanMs: number = DEFAULT_SHARE_WINDOW_MS,
    options: { candidates?: readonly string[]; limit?: number; after?: string } = {},
  ): Promise<string[]> {
    checkSize(olderThanMs);
    const limit = checkLimit(options.limit ?? 1000, 10_000);
    const cutoff = this.#now() - olderThanMs;
    if (options.candidates === undefined) {
      const after = options.after === undefined ? undefined : checkContentId(options.after);
      const rows = (await this.#knex('mail_resources as r')
        .select('r.content_id')
        .modify((q) => {
          if (after !== undefined) q.where('r.content_id', '>', after);
        })
        .whereNotExists((q) =>
          q
            .select(this.#knex.raw('1'))
            .from('mail_message_resources as mr')
            .whereRaw('?? = ??', ['mr.content_id', 'r.content_id']),
        )
        .groupBy('r.content_id')
        .havingRaw('max(??) = 0', ['r.refs'])
        .havingRaw('max(coalesce(??, ??)) <= ?', ['r.unreferenced_at', 'r.created_at', cutoff])
        .orderBy('r.content_id')
        .limit(limit)) as { content_id: string }[];
      return rows.map((r) => r.content_id);
    }
    const out: string[] = [];
    for (const part of chunks(checkContentIds(options.candidates))) {
      const live = new Set<string>();
      const held = (await this.#knex('mail_resources')
        .distinct('content_id')
        .whereIn('content_id', part)
        .andWhere((q) =>
          q.where('refs', '>', 0).orWhereRaw('coalesce(??, ??) > ?', ['unreferenced_at', 'created_at', cutoff]),
        )) as {
        content_id: string;
      }[];
      for (const r of held) live.add(r.content_id);
      const referenced = (await this.#knex('mail_message_resources')
        .distinct('content_id')
        .whereIn('content_id', part)) as { content_id: string }[];
      for (const r of referenced) live.add(r.content_id);
      for (const id of part) {
        if (!live.has(id)) out.push(id);
        if (out.length >= limit) return out;
      }
    }
    return out;
  }

  /**
   * Rechecks, under the holders' locks, that the resource is still collectable and forgets it for every
   * account (releasing their quota). True means the blob may now be deleted.
   */
  async forgetUnreferenced(contentId: string, olderThanMs: number = DEFAULT_SHARE_WINDOW_MS): Promise<boolean> {
    checkContentId(contentId);
    checkSize(olderThanMs);
    return this.#knex.transaction(async (trx) => {
      await lockContent(trx, contentId);
      const now = this.#now();
      const cutoff = now - olderThanMs;
      const before = (await trx('mail_resources').select('address').where({ content_id: contentId })) as {
        address: string;
      }[];
      await lockAccounts(
        trx,
        before.map((r) => r.address),
        now,
        this.#known,
      );
      const rows = (await trx('mail_resources').select().where({ content_id: contentId })) as ResourceRow[];
      for (const row of rows) {
        const r = toResource(row);
        if (r.refs > 0 || (r.unreferencedAt ?? r.createdAt) > cutoff) return false;
      }
      const referenced = await trx('mail_message_resources').first('message').where({ content_id: contentId });
      if (referenced !== undefined) return false;
      for (const row of rows) {
        await trx('mail_resources').where({ address: row.address, content_id: contentId }).delete();
        await trx('mail_accounts').where({ address: row.address }).decrement('storage_used', dbNumber(row.size));
      }
      return true;
    });
  }

  /** Forgets one account's unreferenced resource, releasing its quota; false when absent or still referenced. */
  async forget(address: string, contentId: string): Promise<boolean> {
    checkAddress(address);
    checkContentId(contentId);
    return this.#knex.transaction(async (trx) => {
      await lockAccounts(trx, [address], this.#now(), this.#known);
      const row = (await trx('mail_resources').first('size', 'refs').where({ address, content_id: contentId })) as
        { size: unknown; refs: unknown } | undefined;
      if (row === undefined || dbNumber(row.refs) > 0) return false;
      await trx('mail_resources').where({ address, content_id: contentId }).delete();
      await trx('mail_accounts').where({ address }).decrement('storage_used', dbNumber(row.size));
      return true;
    });
  }
}

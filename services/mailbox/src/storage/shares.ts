/**
 * What a sender shares (PROTOCOL.md §4.7): one row per copy sent (the To/Cc copy, each Bcc copy), holding
 * the envelope that is the access control list of its resources' fetches, and one delivery row per
 * recipient with its status: queued → transferred → fetched, or failed, or withdrawn (unsend).
 *
 * A fetch is per domain, not per recipient, so a copy stays fetchable by a domain while any of that
 * domain's recipients is not withdrawn. Status changes record an `updated` change of the sent message, so
 * the sender's webmail sees delivery progress through sync.
 */
import type { Knex } from 'knex';
import { dbBoolean, dbNumber, dbOptionalNumber } from '@federizer/common';
import { domainOf } from '@federizer/protocol';
import type { Block, Body } from '@federizer/protocol';
import { recordChanges } from './changes.js';
import { MailStoreError } from './errors.js';
import { createIdGenerator } from './ids.js';
import {
  checkAddress,
  checkSize,
  chunks,
  knownAccounts,
  lockAccounts,
  parseJson,
  type Clock,
  type KnownAccounts,
  type StoreOptions,
} from './sql.js';

export type DeliveryStatus = 'queued' | 'transferred' | 'fetched' | 'failed' | 'withdrawn';
export const DELIVERY_STATUSES: readonly DeliveryStatus[] = ['queued', 'transferred', 'fetched', 'failed', 'withdrawn'];

/**
 * The statuses each status may be reached from. Fetched and withdrawn are final; a fetch is believed even
 * after the sender gave up (the transfer arrived but its answer was lost); only a failed delivery may be
 * queued again (a manual retry).
 */
const REACHABLE_FROM: Readonly<Record<DeliveryStatus, readonly DeliveryStatus[]>> = {
  queued: ['failed'],
  transferred: ['queued'],
  fetched: ['queued', 'transferred', 'failed'],
  failed: ['queued', 'transferred'],
  withdrawn: ['queued', 'transferred', 'failed'],
};

export interface NewShare {
  /** The id of the sent message in `MessageStore`. */
  message: string;
  /** The sender's account. */
  address: string;
  /** The Message-ID header. */
  messageId: string;
  /** JWT-Assertion-Digest of the copy's assertion A1. */
  assertionDigest: string;
  /** `[A1, H0]` as transferred. */
  envelope: readonly Block[];
  /** The addresses this copy goes to. */
  recipients: readonly string[];
  /** The copy's private DPoP JWK. */
  dpopKey: Readonly<Record<string, unknown>>;
  /** When the assertion expires and fetches stop (epoch ms). */
  expiresAt: number;
}

export interface Share {
  readonly id: string;
  readonly message: string;
  readonly address: string;
  readonly messageId: string;
  readonly assertionDigest: string;
  readonly envelope: readonly Block[];
  readonly recipients: readonly string[];
  readonly dpopKey: Readonly<Record<string, unknown>>;
  readonly expiresAt: number;
  readonly createdAt: number;
}

export interface Delivery {
  readonly share: string;
  readonly recipient: string;
  readonly domain: string;
  readonly status: DeliveryStatus;
  readonly detail: string | undefined;
  /** The domain that fetched (a forward target's domain when the copy was forwarded). */
  readonly fetchedBy: string | undefined;
  readonly fetchedAt: number | undefined;
  readonly updatedAt: number;
}

export interface WithdrawResult {
  /** Recipients whose delivery is now withdrawn (including those withdrawn before). */
  readonly withdrawn: string[];
  /** Recipients whose domain already fetched: too late, they stay fetched. */
  readonly fetched: string[];
  /** Requested recipients this copy does not go to. */
  readonly unknown: string[];
}

export type DeliveryTarget = { recipient: string } | { domain: string };

/** What `setDelivery` needs of a share the caller holds already. */
export type ShareRef = Pick<Share, 'id' | 'address' | 'message'>;

interface ShareRow {
  id: string;
  message: string;
  address: string;
  message_id: string;
  assertion_digest: string;
  envelope: unknown;
  recipients: unknown;
  dpop_key: unknown;
  expires_at: unknown;
  created_at: unknown;
}

interface DeliveryRow {
  share: string;
  recipient: string;
  domain: string;
  status: string;
  detail: string | null;
  fetched_by: string | null;
  fetched_at: unknown;
  updated_at: unknown;
}

function toShare(row: ShareRow): Share {
  return {
    id: row.id,
    message: row.message,
    address: row.address,
    messageId: row.message_id,
    assertionDigest: row.assertion_digest,
    envelope: parseJson<Block[]>(row.envelope, 'envelope'),
    recipients: parseJson<string[]>(row.recipients, 'recipients'),
    dpopKey: parseJson<Record<string, unknown>>(row.dpop_key, 'dpop_key'),
    expiresAt: dbNumber(row.expires_at),
    createdAt: dbNumber(row.created_at),
  };
}

function toDelivery(row: DeliveryRow): Delivery {
  return {
    share: row.share,
    recipient: row.recipient,
    domain: row.domain,
    status: row.status as DeliveryStatus,
    detail: row.detail ?? undefined,
    fetchedBy: row.fetched_by ?? undefined,
    fetchedAt: dbOptionalNumber(row.fetched_at),
    updatedAt: dbNumber(row.updated_at),
  };
}

function checkDomain(domain: unknown): string {
  if (typeof domain !== 'string' || domain.length === 0 || domain.length > 253) {
    throw new TypeError(`not a domain: ${JSON.stringify(domain)}`);
  }
  return domain.toLowerCase();
}

export class ShareStore {
  readonly #knex: Knex;
  readonly #now: Clock;
  readonly #newId: () => string;
  readonly #known: KnownAccounts;

  constructor(knex: Knex, options: StoreOptions = {}) {
    this.#knex = knex;
    this.#now = options.now ?? Date.now;
    this.#newId = createIdGenerator(this.#now);
    this.#known = knownAccounts(knex);
  }

  /** Stores a copy and one queued delivery per distinct recipient; answers the share id. */
  async create(share: NewShare): Promise<string> {
    const address = checkAddress(share.address);
    if (!Array.isArray(share.recipients) || share.recipients.length === 0) {
      throw new TypeError('a share goes to at least one recipient');
    }
    const recipients = [...new Set(share.recipients.map(checkAddress))];
    if (typeof share.assertionDigest !== 'string' || share.assertionDigest.length === 0) {
      throw new TypeError('assertionDigest is required');
    }
    if (typeof share.messageId !== 'string' || share.messageId.length === 0)
      throw new TypeError('messageId is required');
    checkSize(share.expiresAt);
    return this.#knex.transaction(async (trx) => {
      const now = this.#now();
      const id = this.#newId();
      await trx('mail_shares').insert({
        id,
        message: share.message,
        address,
        message_id: share.messageId,
        assertion_digest: share.assertionDigest,
        envelope: JSON.stringify(share.envelope),
        recipients: JSON.stringify(recipients),
        dpop_key: JSON.stringify(share.dpopKey),
        expires_at: share.expiresAt,
        created_at: now,
      });
      for (const part of chunks(recipients)) {
        await trx('mail_deliveries').insert(
          part.map((recipient) => ({
            share: id,
            recipient,
            domain: domainOf(recipient),
            status: 'queued',
            updated_at: now,
          })),
        );
      }
      return id;
    });
  }

  async get(shareId: string): Promise<Share | undefined> {
    const row = (await this.#knex('mail_shares').first().where({ id: shareId })) as ShareRow | undefined;
    return row === undefined ? undefined : toShare(row);
  }

  /**
   * What the outbox reads before transferring a copy to `domain`, in one statement: the share, whether it
   * is withdrawn for that domain (as `isWithdrawn` answers), and the body of the sent message it copies
   * (undefined once that message is deleted). Undefined for an unknown share.
   */
  async forTransfer(
    shareId: string,
    domain: string,
  ): Promise<{ share: Share; withdrawn: boolean; body: Body | undefined } | undefined> {
    const d = checkDomain(domain);
    const knex = this.#knex;
    // isWithdrawn's rule as one condition: no delivery that is not withdrawn among the domain's own
    // deliveries, or among all of them when the domain has none.
    const own = knex('mail_deliveries as o')
      .select(knex.raw('1'))
      .whereRaw('?? = ??', ['o.share', 's.id'])
      .andWhere('o.domain', d);
    const open = knex('mail_deliveries as d')
      .select(knex.raw('1'))
      .whereRaw('?? = ??', ['d.share', 's.id'])
      .andWhere('d.status', '<>', 'withdrawn')
      .andWhere((q) => q.where('d.domain', d).orWhereNotExists(own));
    const row = (await knex('mail_shares as s')
      .leftJoin('mail_messages as m', (j) => j.on('m.id', 's.message').andOn('m.address', 's.address'))
      .first('s.*', 'm.body as message_body', knex.raw('not exists ? as ??', [open, 'withdrawn']))
      .where('s.id', shareId)) as (ShareRow & { message_body: unknown; withdrawn: unknown }) | undefined;
    if (row === undefined) return undefined;
    return {
      share: toShare(row),
      withdrawn: dbBoolean(row.withdrawn),
      body:
        row.message_body === null || row.message_body === undefined
          ? undefined
          : parseJson<Body>(row.message_body, 'body'),
    };
  }

  /** The copy a fetch presents (its Message-ID and the digest of its origin assertion), expired or not. */
  async findForFetch(messageId: string, assertionDigest: string): Promise<Share | undefined> {
    const row = (await this.#knex('mail_shares')
      .first()
      .where({ message_id: messageId, assertion_digest: assertionDigest })
      .orderBy('id')) as ShareRow | undefined;
    return row === undefined ? undefined : toShare(row);
  }

  /** The copies of a sent message, oldest first. */
  async sharesOf(message: string): Promise<Share[]> {
    const rows = (await this.#knex('mail_shares').select().where({ message }).orderBy('id')) as ShareRow[];
    return rows.map(toShare);
  }

  /** The deliveries of one copy, or of every copy of a sent message. */
  async deliveries(of: { share: string } | { message: string }): Promise<Delivery[]> {
    const query = this.#knex('mail_deliveries as d').select('d.*');
    if ('share' in of) query.where('d.share', of.share);
    else query.join('mail_shares as s', 's.id', 'd.share').where('s.message', of.message);
    const rows = (await query.orderBy([{ column: 'd.share' }, { column: 'd.recipient' }])) as DeliveryRow[];
    return rows.map(toDelivery);
  }

  /**
   * Moves the deliveries of one recipient, or of every recipient of a domain, to `status` where that is a
   * legal step (see REACHABLE_FROM: a withdrawn delivery is never marked transferred, a fetched one never
   * withdrawn). `fetchedBy` (default: the recipient's domain) and the time are kept with `fetched`.
   * Answers how many deliveries changed; `share_not_found` for a share that does not exist.
   *
   * A caller holding the share (as `get` or `findForFetch` answered it) passes it rather than its id: its
   * sender and message never change, so they are not read again.
   */
  async setDelivery(
    share: string | ShareRef,
    target: DeliveryTarget,
    status: DeliveryStatus,
    options: { detail?: string; fetchedBy?: string } = {},
  ): Promise<number> {
    if (!DELIVERY_STATUSES.includes(status)) throw new TypeError(`not a delivery status: ${String(status)}`);
    const shareId = typeof share === 'string' ? share : share.id;
    const where: Record<string, string> =
      'recipient' in target
        ? { share: shareId, recipient: checkAddress(target.recipient) }
        : { share: shareId, domain: checkDomain(target.domain) };
    const fetchedBy = options.fetchedBy === undefined ? undefined : checkDomain(options.fetchedBy);
    return this.#knex.transaction(async (trx) => {
      let owner: { address: string; message: string };
      if (typeof share === 'string') owner = await this.#lockShare(trx, shareId);
      else {
        owner = { address: checkAddress(share.address), message: share.message };
        await lockAccounts(trx, [owner.address], this.#now(), this.#known);
      }
      const now = this.#now();
      const update: Record<string, unknown> = { status, detail: options.detail ?? null, updated_at: now };
      if (status === 'fetched') {
        update.fetched_at = now;
        update.fetched_by = fetchedBy ?? trx.ref('domain');
      }
      const changed = await trx('mail_deliveries')
        .where(where)
        .whereIn('status', REACHABLE_FROM[status])
        .update(update);
      if (changed > 0) await recordChanges(trx, owner.address, [{ object: owner.message, op: 'updated' }], now);
      // Nothing changed: a share given by value may have been deleted since (its message was), which
      // answers as an unknown id does.
      else if (typeof share !== 'string' && (await trx('mail_shares').first('id').where({ id: shareId })) === undefined)
        throw new MailStoreError('share_not_found', 'no such share');
      return changed;
    });
  }

  /**
   * Unsend: withdraws the copy for the given recipients, or for all. Recipients whose delivery was already
   * fetched cannot be withdrawn and are reported as such.
   */
  async withdraw(shareId: string, recipients?: readonly string[]): Promise<WithdrawResult> {
    const wanted = recipients === undefined ? undefined : [...new Set(recipients.map(checkAddress))];
    return this.#knex.transaction(async (trx) => {
      const share = await this.#lockShare(trx, shareId);
      const now = this.#now();
      const rows = (await trx('mail_deliveries')
        .select('recipient', 'status')
        .where({ share: shareId })
        .orderBy('recipient')) as { recipient: string; status: DeliveryStatus }[];
      const selected = wanted === undefined ? rows : rows.filter((r) => wanted.includes(r.recipient));
      const known = new Set(rows.map((r) => r.recipient));
      const unknown = (wanted ?? []).filter((r) => !known.has(r));
      const withdrawable = selected.filter((r) => REACHABLE_FROM.withdrawn.includes(r.status)).map((r) => r.recipient);
      for (const part of chunks(withdrawable)) {
        await trx('mail_deliveries')
          .where({ share: shareId })
          .whereIn('recipient', part)
          .update({ status: 'withdrawn', detail: null, updated_at: now });
      }
      if (withdrawable.length > 0) {
        await recordChanges(trx, share.address, [{ object: share.message, op: 'updated' }], now);
      }
      return {
        withdrawn: selected
          .filter((r) => r.status === 'withdrawn' || withdrawable.includes(r.recipient))
          .map((r) => r.recipient),
        fetched: selected.filter((r) => r.status === 'fetched').map((r) => r.recipient),
        unknown,
      };
    });
  }

  /**
   * Whether fetches by `domain` are refused: true when every delivery to that domain is withdrawn, or, for a
   * domain the copy does not go to (a forward target), when every delivery is withdrawn. Also true for an
   * unknown share. Pass the domain whose delivery grants access.
   */
  async isWithdrawn(shareId: string, domain: string): Promise<boolean> {
    const d = checkDomain(domain);
    const rows = (await this.#knex('mail_deliveries').select('domain', 'status').where({ share: shareId })) as {
      domain: string;
      status: string;
    }[];
    if (rows.length === 0) return true;
    const own = rows.filter((r) => r.domain === d);
    return (own.length > 0 ? own : rows).every((r) => r.status === 'withdrawn');
  }

  /** Whether the copy's share window has ended. */
  isExpired(share: Share): boolean {
    return share.expiresAt <= this.#now();
  }

  /**
   * Marks the deliveries of expired copies that never completed (queued or transferred) as failed with the
   * detail `expired`: their recipients can no longer fetch. Answers how many deliveries changed.
   */
  async expire(options: { limit?: number } = {}): Promise<number> {
    const limit = options.limit ?? 1000;
    const now = this.#now();
    const shares = (await this.#knex('mail_shares as s')
      .select('s.id')
      .where('s.expires_at', '<=', now)
      .whereExists((q) =>
        q
          .select(this.#knex.raw('1'))
          .from('mail_deliveries as d')
          .whereRaw('?? = ??', ['d.share', 's.id'])
          .whereIn('d.status', ['queued', 'transferred']),
      )
      .orderBy('s.id')
      .limit(limit)) as { id: string }[];
    let changed = 0;
    for (const { id } of shares) {
      await this.#knex.transaction(async (trx) => {
        const share = await this.#lockShare(trx, id);
        const at = this.#now();
        const n = await trx('mail_deliveries')
          .where({ share: id })
          .whereIn('status', ['queued', 'transferred'])
          .update({ status: 'failed', detail: 'expired', updated_at: at });
        if (n > 0) await recordChanges(trx, share.address, [{ object: share.message, op: 'updated' }], at);
        changed += n;
      });
    }
    return changed;
  }

  /**
   * Deletes copies whose window ended more than `graceMs` ago, with their deliveries and DPoP keys (which are
   * secrets and no longer needed once no transfer can be retried). Answers how many copies went.
   */
  async deleteExpired(graceMs: number): Promise<number> {
    checkSize(graceMs);
    return this.#knex('mail_shares')
      .where('expires_at', '<=', this.#now() - graceMs)
      .delete();
  }

  /** Reads a share and takes its sender's account lock (its change log is written next). */
  async #lockShare(trx: Knex.Transaction, shareId: string): Promise<{ address: string; message: string }> {
    const share = (await trx('mail_shares').first('address', 'message').where({ id: shareId })) as
      { address: string; message: string } | undefined;
    if (share === undefined) throw new MailStoreError('share_not_found', 'no such share');
    await lockAccounts(trx, [share.address], this.#now(), this.#known);
    return share;
  }
}

/**
 * Stored messages of the accounts of this domain: drafts, sent copies and received messages, with the
 * External Resources each references. Every change appends to the account's change log (§9) and keeps the
 * account's resource reference counts, in the same transaction.
 */
import type { Knex } from 'knex';
import { dbBoolean, dbNumber } from '@federizer/common';
import type { Block, Body } from '@federizer/protocol';
import { holdResource, referenceResources, unreferenceResources } from './accounts.js';
import { completeLeasedJob } from './jobs.js';
import { recordChanges } from './changes.js';
import { MailStoreError } from './errors.js';
import { ID_PATTERN, createIdGenerator } from './ids.js';
import {
  checkAddress,
  checkContentId,
  checkLimit,
  checkSize,
  CHUNK,
  chunks,
  isPostgres,
  knownAccounts,
  lockAccounts,
  lockContent,
  parseJson,
  type Clock,
  type KnownAccounts,
  type StoreOptions,
} from './sql.js';

export type MailboxName = 'inbox' | 'sent' | 'drafts' | 'archive' | 'trash';
export const MAILBOXES: readonly MailboxName[] = ['inbox', 'sent', 'drafts', 'archive', 'trash'];

/** held: this domain has the bytes; pending: a fetch is queued; failed: the fetch gave up. */
export type ResourceStatus = 'held' | 'pending' | 'failed';
export const RESOURCE_STATUSES: readonly ResourceStatus[] = ['held', 'pending', 'failed'];

export interface MessageResourceInput {
  contentId: string;
  size: number;
  status: ResourceStatus;
  /** Why it is `failed` (see `MessageResource.failure`). */
  failure?: string;
}

export interface NewMessage {
  address: string;
  mailbox: MailboxName;
  /** The Message-ID header. */
  messageId: string;
  /** X-Thread-ID. */
  threadId: string;
  envelope: readonly Block[];
  body: Body;
  subject?: string;
  from?: string;
  /** The Date header (or a draft's last edit), epoch ms. */
  date: number;
  seen?: boolean;
  flagged?: boolean;
  resources?: readonly MessageResourceInput[];
}

export interface NewReceivedMessage extends Omit<NewMessage, 'mailbox'> {
  /** Defaults to inbox. */
  mailbox?: MailboxName;
  /** The eht the transfer carried: with the account and Message-ID, what makes a retried transfer a no-op. */
  transferEht: string;
}

export interface MessageSummary {
  readonly id: string;
  readonly address: string;
  readonly mailbox: MailboxName;
  readonly messageId: string;
  readonly threadId: string;
  readonly transferEht: string | undefined;
  readonly subject: string;
  readonly from: string;
  readonly date: number;
  readonly receivedAt: number;
  readonly seen: boolean;
  readonly flagged: boolean;
  readonly size: number;
}

export interface StoredMessage extends MessageSummary {
  readonly envelope: readonly Block[];
  readonly body: Body;
}

export interface MessageResource {
  readonly contentId: string;
  readonly size: number;
  readonly status: ResourceStatus;
  /** Why the fetch gave up, for the recipient to read, when `failed` (and known: not on rows older than it). */
  readonly failure?: string;
  readonly updatedAt: number;
}

export interface MessagePage {
  /** Newest first. */
  readonly messages: MessageSummary[];
  /** Pass as `before` for the next page; absent on the last page. */
  readonly next: string | undefined;
}

export interface MessagePatch {
  seen?: boolean;
  flagged?: boolean;
  mailbox?: MailboxName;
}

export const MAX_LIST = 500;
const MAX_THREAD = 1000;

const SUMMARY_COLUMNS = [
  'id',
  'address',
  'mailbox',
  'message_id',
  'thread_id',
  'transfer_eht',
  'subject',
  'from_text',
  'date',
  'received_at',
  'seen',
  'flagged',
  'size',
] as const;

interface MessageRow {
  id: string;
  address: string;
  mailbox: string;
  message_id: string;
  thread_id: string;
  transfer_eht: string | null;
  subject: string;
  from_text: string;
  date: unknown;
  received_at: unknown;
  seen: unknown;
  flagged: unknown;
  size: unknown;
  envelope?: unknown;
  body?: unknown;
}

function toSummary(row: MessageRow): MessageSummary {
  return {
    id: row.id,
    address: row.address,
    mailbox: row.mailbox as MailboxName,
    messageId: row.message_id,
    threadId: row.thread_id,
    transferEht: row.transfer_eht ?? undefined,
    subject: row.subject,
    from: row.from_text,
    date: dbNumber(row.date),
    receivedAt: dbNumber(row.received_at),
    seen: dbBoolean(row.seen),
    flagged: dbBoolean(row.flagged),
    size: dbNumber(row.size),
  };
}

function toMessage(row: MessageRow): StoredMessage {
  return {
    ...toSummary(row),
    envelope: parseJson<Block[]>(row.envelope, 'envelope'),
    body: parseJson<Body>(row.body, 'body'),
  };
}

interface ResourceRow {
  content_id: string;
  size: unknown;
  status: string;
  failure: string | null;
  updated_at: unknown;
}

const RESOURCE_COLUMNS = ['content_id', 'size', 'status', 'failure', 'updated_at'] as const;

/** The most of a failure kept: the reason of a fetch that gave up, which quotes what the origin answered. */
export const MAX_FAILURE = 1000;

function toMessageResource(r: ResourceRow): MessageResource {
  return {
    contentId: r.content_id,
    size: dbNumber(r.size),
    status: r.status as ResourceStatus,
    ...(r.status === 'failed' && r.failure !== null ? { failure: r.failure } : {}),
    updatedAt: dbNumber(r.updated_at),
  };
}

/** The lengths `padIds` rounds up to (the last is `CHUNK`, the most a chunk holds). */
const PADDED_LENGTHS = [1, 2, 4, 8, 16, 32, 64, 128, 256, CHUNK];

/** The ids, repeated at the end up to one of a few lengths: an IN list of any length then has few SQL texts. */
function padIds(ids: readonly string[]): string[] {
  if (ids.length === 0) return [];
  const length = PADDED_LENGTHS.find((n) => n >= ids.length) ?? ids.length;
  const out = [...ids];
  while (out.length < length) out.push(ids[0]!);
  return out;
}

function checkMailbox(mailbox: unknown): MailboxName {
  if (!MAILBOXES.includes(mailbox as MailboxName)) throw new TypeError(`not a mailbox: ${JSON.stringify(mailbox)}`);
  return mailbox as MailboxName;
}

function checkText(value: unknown, what: string, max: number, allowEmpty = false): string {
  if (typeof value !== 'string' || (!allowEmpty && value.length === 0) || value.length > max) {
    throw new TypeError(`${what} must be a string of at most ${max} characters`);
  }
  return value;
}

/**
 * A summary column's copy of a header (Subject, From): at most `max` characters, cut at a character boundary.
 * The header itself stays whole in the stored envelope; RFC 5322 folds a long one over several lines, so
 * its length has no limit a sender must keep to.
 */
function summary(value: unknown, what: string, max: number): string {
  if (typeof value !== 'string') throw new TypeError(`${what} must be a string`);
  if (value.length <= max) return value;
  const cut = value.slice(0, max);
  return /[\uD800-\uDBFF]$/.test(cut) ? cut.slice(0, -1) : cut;
}

function checkResources(resources: readonly MessageResourceInput[] | undefined): MessageResourceInput[] {
  const byId = new Map<string, MessageResourceInput>();
  for (const r of resources ?? []) {
    checkContentId(r.contentId);
    checkSize(r.size);
    if (!RESOURCE_STATUSES.includes(r.status)) throw new TypeError(`not a resource status: ${String(r.status)}`);
    if (!byId.has(r.contentId)) byId.set(r.contentId, r);
  }
  return [...byId.values()];
}

function prepareMessage(message: NewMessage | NewReceivedMessage, mailbox: MailboxName, eht: string | null) {
  const resources = checkResources(message.resources);
  if (!Array.isArray(message.envelope)) throw new TypeError('envelope must be an array of blocks');
  if (typeof message.body !== 'object' || message.body === null) throw new TypeError('body must be an object');
  if (!Number.isSafeInteger(message.date)) throw new TypeError('date must be epoch milliseconds');
  return {
    address: checkAddress(message.address),
    mailbox: checkMailbox(mailbox),
    message_id: checkText(message.messageId, 'messageId', 998),
    thread_id: checkText(message.threadId, 'threadId', 998),
    transfer_eht: eht,
    envelope: JSON.stringify(message.envelope),
    body: JSON.stringify(message.body),
    subject: summary(message.subject ?? '', 'subject', 998),
    from_text: summary(message.from ?? '', 'from', 998),
    date: message.date,
    seen: message.seen ?? false,
    flagged: message.flagged ?? false,
    size: resources.reduce((sum, r) => sum + r.size, 0),
    // Kept with each reference, so that marking the resource held need not read the body again.
    resources: resources.map((r) => ({ ...r, mediaType: declaredMediaType(message.body, r.contentId) })),
  };
}

type PreparedMessage = ReturnType<typeof prepareMessage>;

// The cursor is the last id of a page, wrapped so clients treat it as opaque.
const CURSOR_PREFIX = 'm1.';

function encodeCursor(id: string): string {
  return Buffer.from(CURSOR_PREFIX + id).toString('base64url');
}

function decodeCursor(cursor: unknown): string {
  if (typeof cursor === 'string' && cursor.length <= 64) {
    const text = Buffer.from(cursor, 'base64url').toString('latin1');
    const id = text.slice(CURSOR_PREFIX.length);
    if (text.startsWith(CURSOR_PREFIX) && ID_PATTERN.test(id)) return id;
  }
  throw new MailStoreError('invalid_cursor', 'the cursor is not one this server issued');
}

export class MessageStore {
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

  /** Stores a message (a draft, a sent copy), its resources, the reference counts and a `created` change. */
  async create(message: NewMessage): Promise<string> {
    const prepared = prepareMessage(message, message.mailbox, null);
    return this.#knex.transaction(async (trx) => {
      const id = await this.#insert(trx, prepared);
      if (id === undefined) throw new Error('message insert conflicted without a transfer eht');
      return id;
    });
  }

  /**
   * Stores a received message once: a retried transfer (same account, Message-ID and eht) answers the id of
   * the message the first one stored, with `created: false`, and changes nothing.
   */
  async createReceived(message: NewReceivedMessage): Promise<{ id: string; created: boolean }> {
    const eht = checkText(message.transferEht, 'transferEht', 64);
    const prepared = prepareMessage(message, message.mailbox ?? 'inbox', eht);
    const id = await this.#knex.transaction((trx) => this.#insert(trx, prepared));
    if (id !== undefined) return { id, created: true };
    // The conflicting row is committed: ON CONFLICT DO NOTHING waited for its transaction to end.
    const existing = (await this.#knex('mail_messages')
      .first('id')
      .where({ address: prepared.address, message_id: prepared.message_id, transfer_eht: eht })) as
      { id: string } | undefined;
    if (existing === undefined) throw new Error('received message vanished after a conflicting insert');
    return { id: existing.id, created: false };
  }

  /** Inserts inside the transaction; undefined when a received message with that key already exists. */
  async #insert(trx: Knex.Transaction, prepared: PreparedMessage): Promise<string | undefined> {
    const now = this.#now();
    // The account lock first: reference counts and the change log of this account are written below.
    await lockAccounts(trx, [prepared.address], now, this.#known);
    const id = this.#newId();
    const { resources, ...columns } = prepared;
    const inserted = (await trx('mail_messages')
      .insert({ id, ...columns, received_at: now })
      .onConflict(['address', 'message_id', 'transfer_eht'])
      .ignore()
      .returning('id')) as unknown[];
    if (inserted.length === 0) return undefined;
    for (const part of chunks(resources)) {
      await trx('mail_message_resources').insert(
        part.map((r) => ({
          message: id,
          content_id: r.contentId,
          size: r.size,
          media_type: r.mediaType,
          status: r.status,
          failure: r.status === 'failed' && r.failure !== undefined ? r.failure.slice(0, MAX_FAILURE) : null,
          updated_at: now,
        })),
      );
    }
    await referenceResources(
      trx,
      prepared.address,
      resources.map((r) => r.contentId),
    );
    await recordChanges(trx, prepared.address, [{ object: id, op: 'created' }], now);
    return id;
  }

  async get(address: string, id: string): Promise<StoredMessage | undefined> {
    const row = (await this.#knex('mail_messages')
      .first()
      .where({ address: checkAddress(address), id })) as MessageRow | undefined;
    return row === undefined ? undefined : toMessage(row);
  }

  /**
   * Several messages of the account with the resources each references (as `get` and `resourcesOf`), in two
   * statements per chunk of ids; ids that are not the account's messages are absent from the answer.
   */
  async getMany(
    address: string,
    ids: readonly string[],
  ): Promise<Map<string, { message: StoredMessage; resources: MessageResource[] }>> {
    checkAddress(address);
    const out = new Map<string, { message: StoredMessage; resources: MessageResource[] }>();
    for (const part of chunks([...new Set(ids)])) {
      // Padded to one of a few lengths, so that a batch of any size reuses a prepared statement.
      const padded = padIds(part);
      const rows = (await this.#knex('mail_messages')
        .select()
        .where({ address })
        .whereIn('id', padded)) as MessageRow[];
      if (rows.length === 0) continue;
      const resources = (await this.#knex('mail_message_resources')
        .select('message', ...RESOURCE_COLUMNS)
        .whereIn('message', padIds(rows.map((r) => r.id)))
        .orderBy([{ column: 'message' }, { column: 'content_id' }])) as (ResourceRow & { message: string })[];
      const byMessage = new Map<string, MessageResource[]>();
      for (const r of resources) {
        const list = byMessage.get(r.message) ?? [];
        list.push(toMessageResource(r));
        byMessage.set(r.message, list);
      }
      for (const row of rows) out.set(row.id, { message: toMessage(row), resources: byMessage.get(row.id) ?? [] });
    }
    return out;
  }

  /** A page of a mailbox, newest first; `before` is the `next` of the previous page. */
  async list(
    address: string,
    options: { mailbox: MailboxName; before?: string | undefined; limit?: number },
  ): Promise<MessagePage> {
    checkAddress(address);
    const mailbox = checkMailbox(options.mailbox);
    const limit = checkLimit(options.limit ?? 50, MAX_LIST);
    let query = this.#knex('mail_messages')
      .select(...SUMMARY_COLUMNS)
      .where({ address, mailbox });
    if (options.before !== undefined) query = query.andWhere('id', '<', decodeCursor(options.before));
    const rows = (await query.orderBy('id', 'desc').limit(limit + 1)) as MessageRow[];
    const page = rows.slice(0, limit).map(toSummary);
    const last = page.at(-1);
    return { messages: page, next: rows.length > limit && last !== undefined ? encodeCursor(last.id) : undefined };
  }

  /** The account's messages of one thread (X-Thread-ID), oldest first, across mailboxes. */
  async thread(address: string, threadId: string): Promise<MessageSummary[]> {
    const rows = (await this.#knex('mail_messages')
      .select(...SUMMARY_COLUMNS)
      .where({ address: checkAddress(address), thread_id: checkText(threadId, 'threadId', 998) })
      .orderBy('id')
      .limit(MAX_THREAD)) as MessageRow[];
    return rows.map(toSummary);
  }

  /** The account's messages carrying that Message-ID (a sent copy and a received one may share it). */
  async byMessageId(address: string, messageId: string): Promise<MessageSummary[]> {
    const rows = (await this.#knex('mail_messages')
      .select(...SUMMARY_COLUMNS)
      .where({ address: checkAddress(address), message_id: checkText(messageId, 'messageId', 998) })
      .orderBy('id')) as MessageRow[];
    return rows.map(toSummary);
  }

  /** Sets flags or moves the message; an `updated` change is recorded when something actually changed. */
  async update(address: string, id: string, patch: MessagePatch): Promise<MessageSummary> {
    checkAddress(address);
    const changes: Record<string, unknown> = {};
    if (patch.seen !== undefined) changes.seen = Boolean(patch.seen);
    if (patch.flagged !== undefined) changes.flagged = Boolean(patch.flagged);
    if (patch.mailbox !== undefined) changes.mailbox = checkMailbox(patch.mailbox);
    return this.#knex.transaction(async (trx) => {
      const now = this.#now();
      await lockAccounts(trx, [address], now, this.#known);
      const row = (await trx('mail_messages')
        .first(...SUMMARY_COLUMNS)
        .where({ address, id })) as MessageRow | undefined;
      if (row === undefined) throw new MailStoreError('message_not_found', 'no such message');
      const before = toSummary(row);
      const differs =
        (changes.seen !== undefined && changes.seen !== before.seen) ||
        (changes.flagged !== undefined && changes.flagged !== before.flagged) ||
        (changes.mailbox !== undefined && changes.mailbox !== before.mailbox);
      if (!differs) return before;
      await trx('mail_messages').where({ address, id }).update(changes);
      await recordChanges(trx, address, [{ object: id, op: 'updated' }], now);
      return { ...before, ...(changes as Partial<MessageSummary>) };
    });
  }

  /** Moves the message to the trash. */
  trash(address: string, id: string): Promise<MessageSummary> {
    return this.update(address, id, { mailbox: 'trash' });
  }

  /**
   * Deletes the message for good: its resources lose a reference and a `destroyed` change is recorded.
   * The shares of a sent message go with it (the schema cascades), which withdraws what recipients have
   * not fetched yet. False when there was no such message.
   */
  async delete(address: string, id: string): Promise<boolean> {
    checkAddress(address);
    return this.#knex.transaction(async (trx) => {
      const now = this.#now();
      await lockAccounts(trx, [address], now, this.#known);
      const row = await trx('mail_messages').first('id').where({ address, id });
      if (row === undefined) return false;
      const resources = (await trx('mail_message_resources').select('content_id').where({ message: id })) as {
        content_id: string;
      }[];
      await trx('mail_messages').where({ address, id }).delete();
      await unreferenceResources(
        trx,
        address,
        resources.map((r) => r.content_id),
        now,
      );
      await recordChanges(trx, address, [{ object: id, op: 'destroyed' }], now);
      return true;
    });
  }

  /** The External Resources a message references (any account: the fetch endpoint checks a share's). */
  async resourcesOf(id: string): Promise<MessageResource[]> {
    const rows = (await this.#knex('mail_message_resources')
      .select(...RESOURCE_COLUMNS)
      .where({ message: id })
      .orderBy('content_id')) as ResourceRow[];
    return rows.map(toMessageResource);
  }

  /**
   * One resource of one of the account's messages, as the fetch endpoint serves it: the size and media type
   * its body declares, kept with the reference (one statement, without reading the body). `mediaType` is
   * undefined for a reference stored before it was kept (migration 0003): the body says it then. Undefined
   * when the message does not reference the resource (any string may be asked about: one that is not a
   * Content-ID is referenced by no message).
   */
  async messageResource(
    address: string,
    id: string,
    contentId: string,
  ): Promise<{ size: number; mediaType: string | undefined } | undefined> {
    const row = (await this.#knex('mail_message_resources as mr')
      .join('mail_messages as m', 'm.id', 'mr.message')
      .first('mr.size', 'mr.media_type')
      .where({ 'm.address': checkAddress(address), 'mr.message': id, 'mr.content_id': contentId })) as
      { size: unknown; media_type: string | null } | undefined;
    return row === undefined ? undefined : { size: dbNumber(row.size), mediaType: row.media_type ?? undefined };
  }

  /**
   * Sets the status of a resource in every message of this domain that references it (a fetch finished or
   * gave up), recording an `updated` change for each message whose status changed. Answers those messages.
   *
   * `held` says the account has the bytes, so the accounts of those messages start holding the resource in
   * the same transaction (its size counted, as `AccountStore.addResource` does, without a quota: the
   * message was accepted): a client never sees a resource `held` that it cannot download yet. `failed` (a
   * fetch gave up) changes only references still `pending`: bytes held stay held; `failure` says why, for
   * the recipient (clipped to MAX_FAILURE characters).
   *
   * `completing` is the leased fetch job whose outcome this is: it is completed first, in the same
   * transaction (`not_lease_owner`, changing nothing, when the lease was lost). A message stored after
   * this transaction read the references is then stored after the job was done, and the `requeue` that
   * follows its storage runs the job again (`JobQueue.requeue`).
   */
  async markResources(
    contentId: string,
    status: ResourceStatus,
    options: { completing?: { readonly id: string; readonly owner: string }; failure?: string } = {},
  ): Promise<{ address: string; id: string }[]> {
    checkContentId(contentId);
    if (!RESOURCE_STATUSES.includes(status)) throw new TypeError(`not a resource status: ${String(status)}`);
    return this.#knex.transaction(async (trx) => {
      const now = this.#now();
      // First: on PostgreSQL the job's row stays locked from here, so a `requeue` of it waits for this commit.
      if (options.completing !== undefined) await completeLeasedJob(trx, options.completing, now);
      // Before the account locks, as every holder of the resource lock takes them.
      if (status === 'held') await lockContent(trx, contentId);
      const find = async () =>
        (await trx('mail_message_resources as mr')
          .join('mail_messages as m', 'm.id', 'mr.message')
          .select('m.id', 'm.address', 'mr.size', 'mr.media_type')
          .where('mr.content_id', contentId)
          .modify((q) => {
            if (status === 'failed') q.andWhere('mr.status', 'pending');
            else q.andWhere('mr.status', '<>', status);
          })
          .orderBy('m.id')) as { id: string; address: string; size: unknown; media_type: string | null }[];
      const candidates = await find();
      if (candidates.length === 0) return [];
      await lockAccounts(
        trx,
        candidates.map((c) => c.address),
        now,
        this.#known,
      );
      // On PostgreSQL, re-read under the locks: only these accounts are locked, so only their messages are
      // touched. SQLite runs the transaction alone (one connection): the first read is still exact.
      const locked = new Set(candidates.map((c) => c.address));
      const affected = isPostgres(trx) ? (await find()).filter((m) => locked.has(m.address)) : candidates;
      const byAccount = new Map<string, (typeof affected)[number][]>();
      for (const m of affected) byAccount.set(m.address, [...(byAccount.get(m.address) ?? []), m]);
      for (const part of chunks(affected.map((m) => m.id))) {
        await trx('mail_message_resources')
          .whereIn('message', part)
          .andWhere({ content_id: contentId })
          .update({
            status,
            failure: status === 'failed' ? (options.failure?.slice(0, MAX_FAILURE) ?? null) : null,
            updated_at: now,
          });
      }
      for (const [address, rows] of byAccount) {
        if (status === 'held') {
          const first = rows[0]!;
          // The media type the account's first message declares; references stored before it was kept with
          // them (migration 0003) have it read from that message's body.
          let mediaType = first.media_type;
          if (mediaType === null) {
            const declared = (await trx('mail_messages').first('body').where({ id: first.id })) as { body: unknown };
            mediaType = declaredMediaType(parseJson<Body>(declared.body, 'body'), contentId);
          }
          await holdResource(
            trx,
            { address, contentId, size: dbNumber(first.size), mediaType, quota: Number.POSITIVE_INFINITY },
            now,
          );
        }
        await recordChanges(
          trx,
          address,
          rows.map((m) => ({ object: m.id, op: 'updated' as const })),
          now,
        );
      }
      return affected.map((m) => ({ address: m.address, id: m.id }));
    });
  }
}

/** The media type the body declares for a resource (its leaf's Content-Type, second element), for downloads. */
function declaredMediaType(body: Body, contentId: string): string {
  const walk = (parts: Body['parts']): string | undefined => {
    for (const part of parts) {
      const found = part.parts !== undefined ? walk(part.parts) : leafMediaType(part.headers, contentId);
      if (found !== undefined) return found;
    }
    return undefined;
  };
  return walk(body.parts) ?? 'application/octet-stream';
}

function leafMediaType(headers: Body['parts'][number]['headers'], contentId: string): string | undefined {
  if (!headers.some((h) => h['Content-ID'] === contentId)) return undefined;
  const type = headers.find((h) => Object.hasOwn(h, 'Content-Type'))?.['Content-Type'];
  const media = Array.isArray(type) ? (type as unknown[])[1] : undefined;
  return typeof media === 'string' && media.length > 0 && media.length <= 255 ? media : undefined;
}

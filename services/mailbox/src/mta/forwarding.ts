/**
 * Forwarding (PROTOCOL.md §7): a user of this domain sends a message they received on to other addresses,
 * by hand (`forward_type` manual, `POST /api/v1/messages/:id/forward`) or through their forwarding rule
 * (auto, the transfer endpoint's `onReceived` hook). Nothing is uploaded again: the receive block grows into
 * the forward block H1 (`prepareForward`), the domain's AS signs it (A2, the forward exchange, which also
 * enforces the user's forwarding policy), and the envelope `[A2, H1, A1, H0]` is stored as a share of the
 * received message, with the body it already has. The outbox transfers it like any sent copy; targets of this
 * domain get it at once, as a transfer would have delivered it. The new recipients fetch the resources from
 * the origin domain (§6): this mailbox serves nothing for a forward.
 *
 * A rule with `keepCopy: false` makes this mailbox a pure relay for that user: the transfer endpoint queues
 * no fetch (§6.5), and the message leaves the inbox (to the trash) once it is forwarded. It is deleted for
 * good when its transfers are done; a transfer that fails brings it back to the inbox, so no mail is lost.
 * When the AS refuses the forward (the policy, a quota) the user keeps the message and finds a notice.
 */
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Logger } from '@federizer/common';
import {
  FORWARD_EHL,
  assertionDigest,
  domainOf,
  ehtOrUndefined,
  exportDpopKey,
  externalContentType,
  formatDate,
  formatMailbox,
  generateDpopKey,
  headerValue,
  isAssertionBlock,
  isHeadersBlock,
  normalizeAddress,
  parseAddressList,
  parseDate,
  parseSingleMailbox,
  prepareForward,
  receiveBlock,
  transmittedEnvelope,
  withAssertion,
  type Block,
  type Body,
  type Header,
  type Message,
} from '@federizer/protocol';
import { ASSERTION_BLOCK_MIN_BYTES, leaves, untransferable, type TransferJob } from '../api/send.js';
import type { DiskBlobStore } from '../blobs/index.js';
import { FETCH_JOB, type FetchJobPayload, type TransferTrust } from '../federation/transfer.js';
import {
  type AccountStore,
  type Delivery,
  type ForwardingStore,
  type JobQueue,
  type MessageStore,
  type ShareStore,
  type StoredMessage,
} from '../storage/index.js';
import { ExchangeFailure, type AsClient } from './as-client.js';
import { RelayCleanup } from './relays.js';

/** §7.3: a chain holds at most 8 hops (assertion, headers pairs). */
export const MAX_HOPS = 8;

export type ForwardType = 'manual' | 'auto';

export interface ForwardingDeps {
  readonly domain: string;
  /** The share window when the AS does not say how long the new assertion lives. */
  readonly shareWindowSeconds: number;
  readonly maxResourceSize: number;
  /** The largest message receivers take (PROTOCOL.md §5.1; this domain's own limit): a longer chain is refused. */
  readonly maxMessageBytes?: number;
  /** The account quota applied when a local target is given a resource this domain holds. */
  readonly quotaBytes?: number;
  readonly as: Pick<AsClient, 'forward'>;
  readonly accounts: AccountStore;
  readonly messages: MessageStore;
  readonly shares: ShareStore;
  readonly jobs: JobQueue;
  readonly forwarding: Pick<ForwardingStore, 'get'>;
  /** Where notices are written. */
  readonly blobs: Pick<DiskBlobStore, 'put'>;
  readonly recipientExists: (address: string) => Promise<boolean>;
  /** Knows the origin's fetch endpoint for the fetch jobs of local targets (optional, as for transfers). */
  readonly trust?: TransferTrust;
  readonly logger?: Logger;
  readonly now: () => number;
  /**
   * Told which accounts changed (for long polls) and what was queued, so that the outbox or the fetcher
   * may start at once.
   */
  readonly onChanged?: (addresses: readonly string[], queued: { transfers: boolean; fetches: boolean }) => void;
  /** How soon a relay first checks whether its transfers are done (ms; doubles up to 5 minutes). */
  readonly relayCheckMs?: number;
  /** How often the relay clean-up looks for due checks (ms). */
  readonly relayPollMs?: number;
}

/** A forward this mailbox refuses: the message, its chain, the targets (before asking the AS), its size. */
export class ForwardError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
  ) {
    super(message);
  }
}

export interface ForwardResult {
  /** The received message that was forwarded. */
  readonly id: string;
  readonly messageId: string;
  /** The share holding `[A2, H1, A1, H0]`. */
  readonly share: string;
  readonly recipients: readonly string[];
  /** Each new recipient's delivery as it stands once the share is stored: `fetched`, `failed` or `queued`. */
  readonly deliveries: readonly Delivery[];
}

export class Forwarder {
  /** Deletes, or gives back, the messages relayed without a copy once their transfers end (durable). */
  readonly relays: RelayCleanup;

  constructor(private readonly deps: ForwardingDeps) {
    this.relays = new RelayCleanup({
      domain: deps.domain,
      jobs: deps.jobs,
      messages: deps.messages,
      logger: deps.logger,
      now: deps.now,
      checkMs: deps.relayCheckMs,
      pollMs: deps.relayPollMs,
      restore: (address, id) => this.#restore(address, id),
      onChanged: (addresses) => deps.onChanged?.(addresses, { transfers: false, fetches: false }),
    });
  }

  /**
   * §7: forwards a message `user` received to the address list `to`. The AS's refusal is thrown as its
   * `ExchangeFailure` (access_denied: the forwarding policy); this mailbox's own refusals as `ForwardError`.
   */
  async forward(user: string, message: StoredMessage, to: string, type: ForwardType): Promise<ForwardResult> {
    const { deps } = this;
    if (message.transferEht === undefined) {
      throw new ForwardError(409, 'not_received', 'only a message you received can be forwarded');
    }
    const hops = message.envelope.filter(isAssertionBlock).length;
    if (hops >= MAX_HOPS) {
      throw new ForwardError(
        409,
        'chain_too_long',
        `the message has come through ${hops} hops already; a chain holds at most ${MAX_HOPS}`,
      );
    }
    const newest = newestSignedBlock(message.envelope);
    const now = deps.now();
    const prepared = prepareForward(
      { envelope: message.envelope, body: message.body },
      { date: new Date(now), forwardedFrom: forwarderMailbox(user, newest), forwardedTo: to },
    );
    // §5.1: each hop adds its blocks; a message that would no longer fit a receiver is refused now, with
    // the reason, rather than queued for transfers that every receiver refuses (413).
    const tooLarge = (message: Message, extra: number) => {
      const problem = untransferable(message, extra, deps.maxMessageBytes ?? Number.POSITIVE_INFINITY);
      if (problem !== undefined) {
        throw new ForwardError(413, 'too_large', `${problem}: with this hop's blocks it cannot be forwarded`);
      }
    };
    const transferred = prepared.recipients.some((r) => domainOf(r) !== deps.domain);
    if (transferred) tooLarge(prepared.message, ASSERTION_BLOCK_MIN_BYTES);
    const key = await generateDpopKey();
    const issued = await deps.as.forward(
      prepared.subjectAssertion,
      prepared.exchangeHeaders,
      senderDomainOf(newest),
      type,
      key,
    );
    const signed = withAssertion(prepared.message, issued.token);
    if (transferred) tooLarge(signed, 0);
    const envelope = signed.envelope;
    const lifetime = issued.expiresIn > 0 ? issued.expiresIn : deps.shareWindowSeconds;
    const share = await deps.shares.create({
      message: message.id,
      address: user,
      messageId: message.messageId,
      assertionDigest: assertionDigest(issued.token),
      envelope,
      recipients: prepared.recipients,
      dpopKey: (await exportDpopKey(key)) as Record<string, unknown>,
      expiresAt: now + lifetime * 1000,
    });
    const domains = new Set(prepared.recipients.map(domainOf));
    const touched = new Set<string>([user]);
    let fetches = false;
    for (const address of prepared.recipients.filter((r) => domainOf(r) === deps.domain)) {
      const local = await this.#deliverLocally(address, {
        envelope,
        body: message.body,
        messageId: message.messageId,
        assertion: issued.token,
        now,
      });
      await deps.shares.setDelivery(
        share,
        { recipient: address },
        local.delivered ? 'fetched' : 'failed',
        local.delivered ? { fetchedBy: deps.domain } : { detail: 'no such recipient' },
      );
      if (local.delivered) touched.add(address);
      fetches ||= local.fetches;
    }
    // Read before the transfers are queued, so the answer never races the outbox: they are all `queued`.
    const deliveries = await deps.shares.deliveries({ share });
    for (const domain of domains) {
      if (domain === deps.domain) continue;
      await deps.jobs.enqueue<TransferJob>('transfer', `${share}:${domain}`, domain, { share, domain });
    }
    deps.onChanged?.([...touched], { transfers: [...domains].some((d) => d !== deps.domain), fetches });
    return { id: message.id, messageId: message.messageId, share, recipients: prepared.recipients, deliveries };
  }

  /**
   * The transfer endpoint's hook (and local deliveries' too): applies the recipient's forwarding rule to a
   * message just stored for them. Answers whether this mailbox keeps the message for them; when nobody
   * does, the resources are not fetched (§6.5). Never throws: a forward that fails leaves the message kept.
   */
  async onReceived(
    address: string,
    _messageId: string,
    envelope: readonly Block[],
    stored: { readonly id: string; readonly created: boolean },
  ): Promise<{ keep: boolean }> {
    const { deps } = this;
    try {
      const rule = await deps.forwarding.get(address);
      if (rule === undefined || !rule.enabled || rule.targets.length === 0) return { keep: true };
      // A loop (the message went through this user's forwarding before) or a full chain ends here.
      if (forwardedBy(envelope).has(normalizeAddress(address))) return { keep: true };
      if (envelope.filter(isAssertionBlock).length >= MAX_HOPS) return { keep: true };
      // Run again for the same delivery (a racing identical transfer): forwarded once is enough.
      if (!stored.created && (await deps.shares.sharesOf(stored.id)).length > 0) return { keep: rule.keepCopy };
      const message = await deps.messages.get(address, stored.id);
      if (message === undefined) return { keep: true };
      let result: ForwardResult;
      try {
        result = await this.forward(address, message, rule.targets.join(', '), 'auto');
      } catch (e) {
        await this.#refusalNotice(address, message, rule.targets, e);
        return { keep: true };
      }
      if (rule.keepCopy) return { keep: true };
      if (!result.deliveries.some((d) => d.status !== 'failed')) return { keep: true };
      await this.#relayed(address, message.id, result);
      return { keep: false };
    } catch (err) {
      deps.logger?.error({ err, address }, 'the forwarding rule could not be applied; the message is kept');
      return { keep: true };
    }
  }

  /**
   * A relay forwarded the message and keeps no copy: with only local targets it is deleted at once; with
   * transfers queued it goes to the trash now (the outbox still reads its body), and a durable relay job
   * deletes it once they are done.
   */
  async #relayed(address: string, id: string, result: ForwardResult): Promise<void> {
    const transfers = [...new Set(result.deliveries.filter((d) => d.status === 'queued').map((d) => d.domain))].map(
      (domain) => `${result.share}:${domain}`,
    );
    if (transfers.length === 0) {
      await this.deps.messages.delete(address, id);
    } else {
      // Watched first: should the move fail, the check still runs and finds the message where it is.
      await this.relays.watch({ address, id, transfers });
      await this.deps.messages.update(address, id, { mailbox: 'trash', seen: true });
    }
    this.deps.onChanged?.([address], { transfers: false, fetches: false });
  }

  /** A relayed message whose forward failed: back to the inbox, with its resources fetched now. */
  async #restore(address: string, id: string): Promise<void> {
    const { deps } = this;
    const message = await deps.messages.get(address, id);
    if (message === undefined) return;
    await deps.messages.update(address, id, { mailbox: 'inbox', seen: false });
    const pending = (await deps.messages.resourcesOf(id)).filter((r) => r.status === 'pending');
    const transmitted = transmittedEnvelope({ envelope: message.envelope, body: message.body });
    for (const r of pending) await this.#queueFetch(message.messageId, transmitted, r.contentId, r.size);
    deps.onChanged?.([address], { transfers: false, fetches: pending.length > 0 });
  }

  /**
   * A target of this domain gets the forward as a transfer would have delivered it (§5.5): under a receive
   * block, with the resources this domain holds given at once and the others fetched from the origin —
   * unless its own forwarding rule relays the message on.
   */
  async #deliverLocally(
    recipient: string,
    copy: { envelope: readonly Block[]; body: Body; messageId: string; assertion: string; now: number },
  ): Promise<{ delivered: boolean; fetches: boolean }> {
    const { deps } = this;
    if (!(await deps.recipientExists(recipient))) return { delivered: false, fetches: false };
    await deps.accounts.ensure(recipient);
    const newest = newestSignedBlock(copy.envelope);
    const origin = copy.envelope.at(-1) as { headers: readonly Header[] };
    const resources = [...new Map(leaves(copy.body).map((r) => [r.contentId, r])).values()];
    const statuses = await deps.accounts.shareHeldOrPending(
      recipient,
      resources.map((r) => ({ contentId: r.contentId, size: r.size, mediaType: mediaTypeOf(copy.body, r.contentId) })),
      { quota: deps.quotaBytes },
    );
    const envelope: Block[] = [
      receiveBlock({
        messageId: copy.messageId,
        assertion: copy.assertion,
        senderDomain: deps.domain,
        receiverDomain: deps.domain,
        date: new Date(copy.now),
      }),
      ...copy.envelope,
    ];
    const stored = await deps.messages.createReceived({
      address: recipient,
      messageId: copy.messageId,
      threadId: headerValue(origin.headers, 'X-Thread-ID') ?? copy.messageId,
      // The idempotency key a transfer of this forward would use: the eht of the block A2 signs.
      transferEht: ehtOrUndefined(newest, FORWARD_EHL)!,
      envelope,
      body: copy.body,
      subject: headerValue(origin.headers, 'Subject') ?? '',
      from: headerValue(origin.headers, 'From') ?? '',
      date: dateOf(origin.headers, copy.now),
      resources: resources.map((r) => ({ contentId: r.contentId, size: r.size, ...statuses.get(r.contentId)! })),
    });
    const { keep } = await this.onReceived(recipient, copy.messageId, envelope, stored);
    const pending = resources.filter((r) => statuses.get(r.contentId)?.status === 'pending');
    if (!keep || pending.length === 0) return { delivered: true, fetches: false };
    for (const r of pending) await this.#queueFetch(copy.messageId, copy.envelope, r.contentId, r.size);
    return { delivered: true, fetches: true };
  }

  /** §6: one fetch per Content-ID, from the origin domain, presenting the envelope as transferred. */
  async #queueFetch(messageId: string, envelope: readonly Block[], contentId: string, size: number): Promise<void> {
    const originDomain = senderDomainOf((envelope.at(-1) as { headers: readonly Header[] }).headers);
    let fetchEndpoint: string | undefined;
    try {
      fetchEndpoint = await this.deps.trust?.mailbox?.(originDomain).then((m) => m.fetch_endpoint);
    } catch {
      // the fetcher discovers it
    }
    const payload: FetchJobPayload = {
      messageId,
      envelope,
      contentId,
      size,
      senderDomain: senderDomainOf(newestSignedBlock(envelope)),
      ...(fetchEndpoint === undefined ? {} : { fetchEndpoint }),
    };
    // Queued again when finished, as a transfer does (federation/transfer.ts `queueFetches`).
    await this.deps.jobs.requeue(FETCH_JOB, contentId, originDomain, payload);
  }

  /** The forward was refused (the AS's policy or quota, or it failed): the user is told; the message stays. */
  async #refusalNotice(address: string, message: StoredMessage, targets: readonly string[], e: unknown): Promise<void> {
    const { deps } = this;
    const denied = e instanceof ExchangeFailure && e.error === 'access_denied';
    const why =
      e instanceof ExchangeFailure
        ? e.description
        : e instanceof ForwardError
          ? e.message
          : `an internal error (${(e as Error).message})`;
    if (!(e instanceof ExchangeFailure) && !(e instanceof ForwardError))
      deps.logger?.error({ err: e, address }, 'automatic forwarding failed');
    const subject = denied ? 'Auto-forwarding denied by policy' : 'Auto-forwarding failed';
    const text =
      `${denied ? 'Auto-forwarding was denied by policy' : 'Auto-forwarding failed'}: your forwarding rule did not ` +
      `forward the message ${message.messageId}${message.subject ? ` ("${message.subject}")` : ''} to ` +
      `${targets.join(', ')}.\n\nReason: ${why}\n\nThe message is kept in your inbox.\n`;
    try {
      await this.#notice(address, subject, text, message);
    } catch (err) {
      deps.logger?.error({ err, address }, 'the forwarding notice could not be stored');
    }
  }

  /** A short text message from this domain's postmaster in the user's inbox, in the message's thread. */
  async #notice(address: string, subject: string, text: string, about: StoredMessage): Promise<void> {
    const { deps } = this;
    const stored = await deps.blobs.put(Readable.from([Buffer.from(text)]), { maxSize: deps.maxResourceSize });
    const mediaType = 'text/plain; charset=utf-8';
    await deps.accounts.ensure(address);
    await deps.accounts.addResource(address, { contentId: stored.contentId, size: stored.size, mediaType });
    const messageId = `<${randomUUID()}@${deps.domain}>`;
    const from = `Mail System <postmaster@${deps.domain}>`;
    const now = deps.now();
    await deps.messages.create({
      address,
      mailbox: 'inbox',
      messageId,
      threadId: about.threadId,
      envelope: [
        {
          headers: [
            { Date: formatDate(new Date(now)) },
            { From: from },
            { To: address },
            { Subject: subject },
            { 'Message-ID': messageId },
            { 'X-Thread-ID': about.threadId },
            { 'In-Reply-To': about.messageId },
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': stored.contentId },
              { 'Content-Type': externalContentType(stored.size, mediaType) },
            ],
          },
        ],
      },
      subject,
      from,
      date: now,
      resources: [{ contentId: stored.contentId, size: stored.size, status: 'held' }],
    });
    deps.onChanged?.([address], { transfers: false, fetches: false });
  }
}

/** The headers of the newest signed block: the first headers block that is not a receive block. */
function newestSignedBlock(envelope: readonly Block[]): readonly Header[] {
  const block = transmittedEnvelope({ envelope, body: { parts: [] } }).find(isHeadersBlock);
  if (block === undefined) throw new ForwardError(409, 'not_received', 'the message holds no signed block');
  return block.headers;
}

/** §7.2 `sender_domain`: the domain of the hop's sender, `Forwarded-From` of a forward block, else `From`. */
function senderDomainOf(headers: readonly Header[]): string {
  const sender = headerValue(headers, 'Forwarded-From') ?? headerValue(headers, 'From');
  if (sender === undefined) throw new ForwardError(409, 'not_received', 'the signed block names no sender');
  return domainOf(normalizeAddress(parseSingleMailbox(sender).address));
}

/**
 * `Forwarded-From`: the user as the newest hop named them (`Bob <bob@example.net>`), so the chain reads as
 * the mail was addressed; the bare address when the hop names them otherwise.
 */
function forwarderMailbox(user: string, newest: readonly Header[]): string {
  const names = headerValue(newest, 'Forwarded-From') !== undefined ? ['Forwarded-To'] : ['To', 'Cc', 'Bcc'];
  for (const name of names) {
    const value = headerValue(newest, name);
    if (value === undefined) continue;
    try {
      const box = parseAddressList(value).find((m) => normalizeAddress(m.address) === normalizeAddress(user));
      if (box !== undefined) return formatMailbox(box);
    } catch {
      // a list this mailbox accepted parses; fall back to the address
    }
  }
  return user;
}

/** The addresses that forwarded this message on its way (the `Forwarded-From` of every forward block). */
function forwardedBy(envelope: readonly Block[]): Set<string> {
  const out = new Set<string>();
  for (const block of envelope) {
    if (!isHeadersBlock(block)) continue;
    const value = headerValue(block.headers, 'Forwarded-From');
    if (value === undefined) continue;
    try {
      out.add(normalizeAddress(parseSingleMailbox(value).address));
    } catch {
      // not a mailbox: it names nobody
    }
  }
  return out;
}

function dateOf(headers: readonly Header[], fallback: number): number {
  const value = headerValue(headers, 'Date');
  if (value === undefined) return fallback;
  try {
    return parseDate(value).getTime();
  } catch {
    return fallback;
  }
}

/** The media type a leaf declares for the resource (the second element of its Content-Type). */
function mediaTypeOf(body: Body, contentId: string): string | undefined {
  let found: string | undefined;
  const walk = (parts: Body['parts']) => {
    for (const part of parts) {
      if (found !== undefined) return;
      if (part.parts !== undefined) walk(part.parts);
      else if (headerValue(part.headers, 'Content-ID') === contentId) {
        const type = part.headers.find((h) => Object.hasOwn(h, 'Content-Type'))?.['Content-Type'];
        if (Array.isArray(type) && typeof type[1] === 'string') found = type[1];
      }
    }
  };
  walk(body.parts);
  return found;
}

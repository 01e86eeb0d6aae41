/**
 * Sending (PROTOCOL.md §4): the webmail posts a draft; the mailbox checks it, stamps it, splits it into one
 * copy per distinct view (Bcc), has the domain's AS sign each copy (the send exchange, with a fresh DPoP
 * key kept with the copy), stores the sender's copy in Sent and each copy as a share (the access control
 * list of later fetches), and queues one transfer per destination domain. Recipients of this very domain
 * get their copy at once, with no transfer: their mailbox already holds the resources.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import {
  ProtocolError,
  assertionDigest,
  decodeJwt,
  parseExternalBody,
  ORIGIN_EHL,
  domainOf,
  ehtOrUndefined,
  draftHeaders,
  exportDpopKey,
  generateDpopKey,
  headerValue,
  isHeadersBlock,
  normalizeAddress,
  parseSingleMailbox,
  prepareSend,
  receiveBlock,
  validateMessage,
  withAssertion,
  type Body,
  type Message,
  type Part,
} from '@federizer/protocol';
import type { AsClient } from '../mta/as-client.js';
import { ExchangeFailure } from '../mta/as-client.js';
import type { AccountStore, Delivery, JobQueue, MessageStore, ShareStore } from '../storage/index.js';
import { deliveryJson } from './deliveries.js';

export interface SendDeps {
  readonly domain: string;
  readonly shareWindowSeconds: number;
  readonly maxMessageBytes: number;
  readonly as: AsClient;
  readonly accounts: AccountStore;
  readonly messages: MessageStore;
  readonly shares: ShareStore;
  readonly jobs: JobQueue;
  readonly recipientExists: (address: string) => Promise<boolean>;
  readonly now: () => number;
  /** Called after the copies are queued, with the addresses whose changes long polls should see. */
  readonly onSent?: (addresses: readonly string[]) => void;
}

/** The payload of a queued transfer: which share goes to which domain. */
export interface TransferJob {
  readonly share: string;
  readonly domain: string;
}

/** A refusal of the draft: the HTTP status and the `error` code of the answer. */
export class SendError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
  ) {
    super(message);
  }
}

/** Each leaf part's Content-ID and declared size (the resources the copy shares). */
export function leaves(body: Body): { contentId: string; size: number; mediaType: string }[] {
  const out: { contentId: string; size: number; mediaType: string }[] = [];
  const walk = (parts: readonly Part[], path: string) => {
    parts.forEach((part, i) => {
      if (part.parts) return walk(part.parts, `${path}[${i}].parts`);
      const cid = headerValue(part.headers, 'Content-ID')!;
      const type = part.headers.find((h) => Object.hasOwn(h, 'Content-Type'))!['Content-Type'] as readonly string[];
      // The size as validateMessage read it (§2): parameter names are case-insensitive, and a parameter
      // merely ending in "size" (x-size) is another one.
      const { size } = parseExternalBody(type[0]!, `${path}[${i}].headers`);
      out.push({ contentId: cid, size, mediaType: type[1]! });
    });
  };
  walk(body.parts, 'body.parts');
  return out;
}

/** §4.1: every resource the body references is held by the user, with the size the body declares. */
export async function checkResourcesHeld(
  user: string,
  body: Body,
  deps: Pick<SendDeps, 'accounts'>,
): Promise<ReturnType<typeof leaves>> {
  const resources = leaves(body);
  for (const { contentId, size } of resources) {
    const held = await deps.accounts.resource(user, contentId);
    if (held === undefined)
      throw new SendError(400, 'resource_not_held', `${contentId} is not among your resources: upload it first`);
    if (held.size !== size)
      throw new SendError(
        400,
        'resource_size_mismatch',
        `${contentId} has ${held.size} bytes, the message declares ${size}`,
      );
  }
  return resources;
}

/** §4.1: From is the signed-in user, the Message-ID is of this domain, every resource is held with its size. */
async function checkDraft(
  draft: Message,
  user: string,
  deps: SendDeps,
): Promise<{ messageId: string; resources: ReturnType<typeof leaves> }> {
  const headers = draftHeaders(draft);
  const from = headerValue(headers, 'From');
  if (from === undefined) throw new SendError(400, 'invalid_message', 'the message has no From');
  if (normalizeAddress(parseSingleMailbox(from).address) !== user)
    throw new SendError(403, 'from_not_user', `From must be ${user}, the signed-in user`);
  const messageId = headerValue(headers, 'Message-ID');
  if (messageId === undefined) throw new SendError(400, 'invalid_message', 'the message has no Message-ID');
  if (domainOf(messageId.slice(1, -1)) !== deps.domain)
    throw new SendError(400, 'invalid_message', `the Message-ID must end in @${deps.domain}`);
  const resources = await checkResourcesHeld(user, draft.body, deps);
  return { messageId, resources };
}

/** The signed-in user's access token (requireUser has checked `Authorization: DPoP <token>`). */
export function userToken(req: Request): string {
  return /^DPoP\s+(\S+)$/i.exec(req.get('authorization') ?? '')![1]!;
}

/**
 * What a send answers: the sent copy's id, and each recipient's delivery as it stands once the copies are
 * stored: `fetched` (a recipient of this domain), `failed` (no such user here) or `queued` (a transfer).
 */
export interface SendResult {
  readonly id: string;
  readonly messageId: string;
  readonly copies: number;
  readonly deliveries: Delivery[];
}

/** The JSON of a send's answer: deliveries as `GET /messages/:id/deliveries` shows them. */
export function sendResultJson(result: SendResult) {
  return { ...result, deliveries: result.deliveries.map(deliveryJson) };
}

/**
 * Sends a draft (already read with `validateMessage`) for `user`, whose access token is the subject of the
 * send exchanges: the checks of §4.1, one signed copy per view, the copy in Sent, a share per copy, local
 * deliveries, one transfer per other domain. Refusals throw `SendError`, `ProtocolError` or the AS's
 * `ExchangeFailure`; `answerSendError` turns them into the answer. Used by `POST /messages/send` and by
 * `POST /drafts/:id/send`.
 */
export async function sendDraft(
  user: string,
  accessToken: string,
  draft: Message,
  deps: SendDeps,
): Promise<SendResult> {
  const { messageId, resources } = await checkDraft(draft, user, deps);
  const now = deps.now();
  const copies = prepareSend(draft, { date: new Date(now) });
  // Every copy is signed before anything is stored: a refusal (quota, policy) leaves no half-sent message.
  const signed = [];
  for (const copy of copies) {
    const key = await generateDpopKey();
    const assertion = await deps.as.send(accessToken, copy.exchangeHeaders, key);
    signed.push({ copy, key, assertion: assertion.token });
  }
  const headers = draftHeaders(draft);
  const stampedDate = (copies[0]!.message.envelope[0] as { headers: readonly Record<string, string>[] }).headers[0]!;
  const sentId = await deps.messages.create({
    address: user,
    mailbox: 'sent',
    messageId,
    threadId: headerValue(headers, 'X-Thread-ID') ?? messageId,
    envelope: [{ headers: [stampedDate, ...headers] }],
    body: draft.body,
    subject: headerValue(headers, 'Subject') ?? '',
    from: headerValue(headers, 'From') ?? '',
    date: now,
    seen: true,
    resources: resources.map((r) => ({ ...r, status: 'held' as const })),
  });
  const touched = new Set<string>([user]);
  const deliveries: Delivery[] = [];
  for (const { copy, key, assertion } of signed) {
    const envelope = withAssertion(copy.message, assertion).envelope;
    const shareId = await deps.shares.create({
      message: sentId,
      address: user,
      messageId,
      assertionDigest: assertionDigest(assertion),
      envelope,
      recipients: copy.recipients,
      dpopKey: (await exportDpopKey(key)) as Record<string, unknown>,
      expiresAt: shareExpiry(assertion, now, deps.shareWindowSeconds),
    });
    const domains = new Set(copy.recipients.map(domainOf));
    for (const r of copy.recipients.filter((a) => domainOf(a) === deps.domain)) {
      const ok = await deliverLocally(r, { envelope, body: draft.body, messageId, assertion, resources, now }, deps);
      await deps.shares.setDelivery(
        shareId,
        { recipient: r },
        ok ? 'fetched' : 'failed',
        ok ? { fetchedBy: deps.domain } : { detail: 'no such recipient' },
      );
      if (ok) touched.add(r);
    }
    // Read before the transfers are queued, so the answer never races the outbox: they are all `queued`.
    deliveries.push(...(await deps.shares.deliveries({ share: shareId })));
    for (const domain of domains) {
      if (domain === deps.domain) continue;
      await deps.jobs.enqueue<TransferJob>('transfer', `${shareId}:${domain}`, domain, { share: shareId, domain });
    }
  }
  deps.onSent?.([...touched]);
  return { id: sentId, messageId, copies: signed.length, deliveries };
}

/**
 * When the copy's share ends (epoch ms): this mailbox's share window, but never after its assertion A1
 * expires, for the fetch refuses every copy whose A1 has expired (PROTOCOL §7, docs/protocol.md §6.3) and a
 * transfer presenting it is refused too. The outbox then stops retrying, and the deliveries never fetched
 * are marked expired, when the copy can no longer be delivered, whatever lifetime the AS gave A1.
 */
function shareExpiry(assertion: string, now: number, shareWindowSeconds: number): number {
  const window = now + shareWindowSeconds * 1000;
  const exp = decodeJwt(assertion).payload.exp;
  return typeof exp === 'number' && Number.isFinite(exp) ? Math.min(window, Math.floor(exp * 1000)) : window;
}

/**
 * Answers a refusal of `sendDraft` (or of reading the request body) as `POST /messages/send` does; false
 * when `e` is none of those (an internal error, for the error handler).
 */
export function answerSendError(res: Response, e: unknown, maxMessageBytes: number): boolean {
  if (e instanceof SendError) {
    res.status(e.status).json({ error: e.error, error_description: e.message });
    return true;
  }
  if (e instanceof ProtocolError) {
    res.status(400).json({ error: 'invalid_message', error_description: e.message });
    return true;
  }
  if (e instanceof ExchangeFailure) {
    // The AS's refusal is the user's answer (quota, From); its outage is ours to report as 503.
    if (e.retryAfterSeconds !== undefined) res.set('Retry-After', String(e.retryAfterSeconds));
    const status = e.status === 429 ? 429 : e.retryable ? 503 : 403;
    res
      .status(status)
      .json({ error: e.error, error_description: `the Authorization Server refused to sign: ${e.description}` });
    return true;
  }
  if ((e as { type?: string }).type === 'entity.too.large') {
    res.status(413).json({ error: 'too_large', error_description: `a message is at most ${maxMessageBytes} bytes` });
    return true;
  }
  return false;
}

export function sendRouter(deps: SendDeps): Router {
  const router = express.Router();
  router.post(
    '/messages/send',
    express.json({ limit: deps.maxMessageBytes }),
    async (req: Request, res: Response, next: NextFunction) => {
      try {
        let draft: Message;
        try {
          draft = validateMessage((req.body as { message?: unknown } | undefined)?.message);
        } catch (e) {
          throw new SendError(400, 'invalid_message', (e as Error).message);
        }
        res.status(202).json(sendResultJson(await sendDraft(req.user!.address, userToken(req), draft, deps)));
      } catch (e) {
        if (!answerSendError(res, e, deps.maxMessageBytes)) next(e);
      }
    },
  );
  // The JSON parser's own failures (malformed, too large) skip the handler above: answer them here.
  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (answerSendError(res, err, deps.maxMessageBytes)) return;
    if ((err as { type?: string }).type === 'entity.parse.failed') {
      return void res.status(400).json({ error: 'invalid_message', error_description: 'the body is not JSON' });
    }
    next(err);
  });
  return router;
}

/**
 * A recipient of the sender's own domain: the copy goes straight to the inbox, with the receive block a
 * transfer would have added, and the resources are already in this domain's store.
 */
async function deliverLocally(
  recipient: string,
  copy: {
    envelope: Message['envelope'];
    body: Body;
    messageId: string;
    assertion: string;
    resources: ReturnType<typeof leaves>;
    now: number;
  },
  deps: SendDeps,
): Promise<boolean> {
  if (!(await deps.recipientExists(recipient))) return false;
  const h0 = copy.envelope.find(isHeadersBlock)!.headers;
  await deps.accounts.ensure(recipient);
  for (const r of copy.resources) {
    const held = await deps.accounts.resource(recipient, r.contentId);
    if (held === undefined) await deps.accounts.addResource(recipient, { contentId: r.contentId, size: r.size });
  }
  await deps.messages.createReceived({
    address: recipient,
    messageId: copy.messageId,
    threadId: headerValue(h0, 'X-Thread-ID') ?? copy.messageId,
    // The same idempotency key a transfer would use: the eht of the block the assertion signs.
    transferEht: ehtOrUndefined(h0, ORIGIN_EHL)!,
    envelope: [
      receiveBlock({
        messageId: copy.messageId,
        assertion: copy.assertion,
        senderDomain: deps.domain,
        receiverDomain: deps.domain,
        date: new Date(copy.now),
      }),
      ...copy.envelope,
    ],
    body: copy.body,
    subject: headerValue(h0, 'Subject') ?? '',
    from: headerValue(h0, 'From') ?? '',
    date: copy.now,
    resources: copy.resources.map((r) => ({ ...r, status: 'held' as const })),
  });
  return true;
}

/**
 * Sending (PROTOCOL.md §4): the webmail posts a draft; the mailbox checks it, stamps it, splits it into one
 * copy per distinct view (Bcc), has the domain's AS sign each copy (the send exchange, with a fresh DPoP
 * key kept with the copy), stores the sender's copy in Sent and each copy as a share (the access control
 * list of later fetches), and queues one transfer per destination domain. Recipients of this very domain
 * get their copy at once, with no transfer: their mailbox already holds the resources.
 */
import express, { type NextFunction, type Request, type RequestHandler, type Response, type Router } from 'express';
import {
  ProtocolError,
  parseJsonStrict,
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
import { UnauthorizedError, answerUnauthorized } from './user-auth.js';

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

/**
 * A request body that could not be read, with the answer it gets: always a 4xx naming what was wrong
 * (`jsonBody` turns each failure of Express's JSON parser into one; the parser's own 5xx, a bug of ours,
 * stay internal errors).
 */
export class BodyError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }
}

/** The content codings a JSON body may arrive in (RFC 9110 §8.4.1): the parser decodes these, and no others. */
const BODY_CODINGS = ['gzip', 'deflate'];

export interface JsonBodyOptions {
  /** The largest body, in bytes, once decoded. */
  readonly limit: number;
  /** What a body over the limit is told (413 `too_large`). */
  readonly tooLarge: string;
  /** The error code of a body that is not JSON (400); `invalid_request` by default. */
  readonly notJson?: string;
  /**
   * Refuse what `JSON.parse` lets through but the protocol does not (docs/protocol.md §2.7 rule 3): a
   * member name twice in one object (the last would silently win), nesting deeper than 32 levels. 400 with
   * the `notJson` code, naming the member.
   */
  readonly strict?: boolean;
}

/**
 * `express.json` whose every failure is a `BodyError` with a specific answer: not JSON (400), larger than
 * the limit (413, counted after decoding), a charset other than UTF-8 (415), a content coding other than
 * gzip and deflate (415, with `Accept-Encoding` naming those), a body that does not decode or is cut short
 * (400). A body of another media type is left unread (`req.body` stays undefined), as `express.json` does.
 */
export function jsonBody(options: JsonBodyOptions): RequestHandler {
  const parse = express.json({
    limit: options.limit,
    ...(options.strict
      ? {
          verify: (_req: unknown, _res: unknown, body: Buffer) => {
            try {
              parseJsonStrict(body.toString('utf8'));
            } catch (e) {
              // A body that is not JSON at all is left to the parser, which says so as for any other.
              if (!(e instanceof ProtocolError) || e.code === 'invalid_syntax') return;
              throw Object.assign(new Error(e.message), { status: 400, type: 'entity.strict.failed' });
            }
          },
        }
      : {}),
  });
  return (req, res, next) => {
    const coding = (req.get('content-encoding') ?? 'identity').trim().toLowerCase();
    if (coding !== 'identity' && !BODY_CODINGS.includes(coding)) return next(unsupportedCoding(coding));
    parse(req, res, (err?: unknown) => next(err === undefined ? undefined : bodyError(err, coding, options)));
  };
}

/** RFC 9110 §15.5.16: 415 for a content coding not decoded here, and `Accept-Encoding` (§12.5.3) names those that are. */
function unsupportedCoding(coding: string): BodyError {
  return new BodyError(
    415,
    'unsupported_media_type',
    `Content-Encoding ${JSON.stringify(coding)} is not supported: send the body as it is, or with ${BODY_CODINGS.join(' or ')}`,
    { 'Accept-Encoding': BODY_CODINGS.join(', ') },
  );
}

/** The `BodyError` of a failure of Express's JSON parser, by its `type` and `status`; other errors as they are. */
function bodyError(err: unknown, coding: string, options: JsonBodyOptions): unknown {
  const { type, status, charset } = err as { type?: unknown; status?: unknown; charset?: unknown };
  const message = err instanceof Error ? err.message : String(err);
  switch (type) {
    case 'entity.parse.failed':
      return new BodyError(400, options.notJson ?? 'invalid_request', `the body is not JSON: ${message}`);
    case 'entity.strict.failed':
      return new BodyError(400, options.notJson ?? 'invalid_request', `the body is not strict JSON: ${message}`);
    case 'entity.too.large':
      return new BodyError(413, 'too_large', options.tooLarge);
    case 'charset.unsupported':
      return new BodyError(
        415,
        'unsupported_media_type',
        `the body must be JSON in UTF-8: charset ${JSON.stringify(String(charset ?? '').toLowerCase())} is not supported`,
      );
    case 'encoding.unsupported':
      return unsupportedCoding(coding);
    case 'request.aborted':
      return new BodyError(400, 'invalid_request', 'the request was interrupted before its body arrived whole');
    case 'request.size.invalid':
      return new BodyError(400, 'invalid_request', 'the body is not as long as its Content-Length says');
  }
  if (typeof status === 'number' && status >= 400 && status < 500) {
    // A body that does not decode has no type: the decompressor's own error, marked 400 by the parser.
    const what = type === undefined && coding !== 'identity' ? `the body does not decode as ${coding}: ` : '';
    return new BodyError(status, 'invalid_request', `${what}${message}`);
  }
  return err;
}

/**
 * The size of a message as the outbox transfers it, in bytes of UTF-8: the `message` member of the
 * transfer's body (docs/protocol.md §5), which is what a receiving mailbox measures against its limit.
 */
export function transferredSize(message: Message): number {
  return Buffer.byteLength(JSON.stringify({ envelope: message.envelope, body: message.body }), 'utf8');
}

/** What the assertion block adds to a copy, at the very least: `{"jwt-assertion":""},` around the token. */
export const ASSERTION_BLOCK_MIN_BYTES = Buffer.byteLength(JSON.stringify({ 'jwt-assertion': '' })) + 1;

/**
 * PROTOCOL.md §2.7, §5.1: a copy transferred larger than `maxMessageBytes` (the limit receiving mailboxes
 * apply, this setting for this domain's) is refused by every receiver, after the send (or the forward) was
 * accepted. So the copy is measured before, as it will be transferred, its assertion block included
 * (`extraBytes` stands for the block before the copy is signed): answers what is wrong when it is too
 * large, for a 413 before anything is stored or queued.
 */
export function untransferable(message: Message, extraBytes: number, maxMessageBytes: number): string | undefined {
  const size = transferredSize(message) + extraBytes;
  if (size <= maxMessageBytes) return undefined;
  return (
    `the message would be ${size} bytes as transferred, with the envelope and the signed assertion this mailbox adds; ` +
    `a message is at most ${maxMessageBytes} bytes`
  );
}

function checkTransferable(message: Message, extraBytes: number, maxMessageBytes: number): void {
  const problem = untransferable(message, extraBytes, maxMessageBytes);
  if (problem === undefined) return;
  const over = transferredSize(message) + extraBytes - maxMessageBytes;
  throw new SendError(413, 'too_large', `${problem}: make it at least ${over} bytes smaller`);
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
  // Only copies to other domains are transferred, and limited by their receivers. Those already too large
  // before their assertion are refused before the AS is asked to sign anything.
  const transferred = (copy: (typeof copies)[number]) => copy.recipients.some((r) => domainOf(r) !== deps.domain);
  for (const copy of copies.filter(transferred))
    checkTransferable(copy.message, ASSERTION_BLOCK_MIN_BYTES, deps.maxMessageBytes);
  // Every copy is signed before anything is stored: a refusal (quota, policy, size) leaves no half-sent message.
  const signed = [];
  for (const copy of copies) {
    const key = await generateDpopKey();
    const assertion = await deps.as.send(accessToken, copy.exchangeHeaders, key);
    if (transferred(copy)) checkTransferable(withAssertion(copy.message, assertion.token), 0, deps.maxMessageBytes);
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
  if (e instanceof BodyError) {
    // Already answered when the body was cut by the server itself (408 after the connection fell silent).
    if (!res.headersSent) res.status(e.status).set(e.headers).json({ error: e.error, error_description: e.message });
    return true;
  }
  if (e instanceof SendError) {
    res.status(e.status).json({ error: e.error, error_description: e.message });
    return true;
  }
  if (e instanceof ProtocolError) {
    res.status(400).json({ error: 'invalid_message', error_description: e.message });
    return true;
  }
  if (e instanceof ExchangeFailure && e.error === 'invalid_request' && e.description.startsWith('subject_token:')) {
    // The AS no longer takes the user's access token (RFC 8693 §2.2.2): its grant was ended (sign-out
    // elsewhere, a new password) or the user was disabled. That is the token refused, as RFC 6750 §3.1
    // answers it: a client refreshes on 401 invalid_token, and a refresh refused signs the user out.
    answerUnauthorized(
      res,
      new UnauthorizedError(
        'invalid_token',
        `the sign-in is no longer valid: the Authorization Server says ${e.description}`,
      ),
    );
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
    jsonBody({
      limit: deps.maxMessageBytes,
      tooLarge: `a message is at most ${deps.maxMessageBytes} bytes`,
      notJson: 'invalid_message',
    }),
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
  // The JSON parser's failures (each a BodyError) skip the handler above: answer them here.
  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (answerSendError(res, err, deps.maxMessageBytes)) return;
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

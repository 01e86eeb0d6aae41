/**
 * The client API's messages, threads, deliveries and forwarding rule (PROTOCOL.md §9), mounted at
 * `/api/v1` behind `requireUser`. Every route acts on the signed-in account only: another account's
 * message id is `404`, exactly as an id that does not exist.
 *
 * - `GET /messages?mailbox=&cursor=&limit=`: summaries, newest first, with the `next` cursor (or null).
 * - `GET /messages/:id`, and `POST /messages/get` `{"ids": [...]}` (sync's batch read, at most 200 ids;
 *   missing ones in `notFound`).
 * - `PATCH /messages/:id` `{seen?, flagged?, mailbox?}`; `DELETE /messages/:id` (for good).
 * - `GET /threads/:threadId` (the X-Thread-ID, URL-encoded with its angle brackets), oldest first.
 * - `GET /messages/:id/deliveries`: per-recipient status of a sent message.
 * - `POST /messages/:id/unsend` `{"recipients"?: [...]}`: withdraws the copies not fetched yet.
 * - `GET /forwarding`, `PUT /forwarding` `{targets, keepCopy, enabled}`.
 *
 * Each mutation wakes the account's long polls (`notifier.notify`). Errors are `{error, error_description}`.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { ProtocolError, normalizeAddress, parseAddressList } from '@federizer/protocol';
import {
  ID_PATTERN,
  MAILBOXES,
  MAX_FORWARDING_TARGETS as STORE_MAX_TARGETS,
  isMailStoreError,
  type ForwardingStore,
  type MailboxName,
  type MessagePatch,
  type MessageResource,
  type MessageStore,
  type MessageSummary,
  type ShareStore,
  type StoredMessage,
} from '../storage/index.js';
import { deliveryJson } from './deliveries.js';
import type { ChangeNotifier } from './notifier.js';

export interface MessagesDeps {
  readonly messages: MessageStore;
  readonly shares: ShareStore;
  readonly forwarding: ForwardingStore;
  readonly notifier: Pick<ChangeNotifier, 'notify'>;
  /** At most this many forwarding targets (default 10). */
  readonly maxForwardingTargets?: number;
}

const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 200;
const MAX_BATCH_IDS = 200;
const MAX_FORWARDING_TARGETS = 10;
/** More recipients than any copy has; bounds the work of one unsend. */
const MAX_UNSEND_RECIPIENTS = 1000;
/** RFC 5322 §2.1.1: a header line, hence a Message-ID or X-Thread-ID, is at most 998 characters. */
const MAX_THREAD_ID = 998;

class HttpProblem extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
  ) {
    super(message);
  }
}

const badRequest = (message: string) => new HttpProblem(400, 'invalid_request', message);
const notFound = (what = 'no such message in this mailbox') => new HttpProblem(404, 'not_found', what);

function send(res: Response, status: number, body?: unknown): void {
  res.status(status).set('Cache-Control', 'no-store');
  if (body === undefined) res.end();
  else res.json(body);
}

function userOf(req: Request): string {
  const address = req.user?.address;
  if (address === undefined) throw new Error('the messages API is mounted without requireUser');
  return address;
}

/** A query parameter given at most once. */
function param(req: Request, name: string): string | undefined {
  const value = (req.query as Record<string, unknown>)[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw badRequest(`${name} must be given once`);
  return value;
}

/** A message id from the path; anything that is not an id cannot be a message. */
function messageId(req: Request): string {
  const id = String(req.params.id);
  if (!ID_PATTERN.test(id)) throw notFound();
  return id;
}

function hasBody(req: Request): boolean {
  const length = req.get('content-length');
  return req.get('transfer-encoding') !== undefined || (length !== undefined && length !== '0');
}

/** The parsed JSON object body; `{}` when the request has none and `optional`. */
function jsonObject(req: Request, optional = false): Record<string, unknown> {
  const body: unknown = req.body;
  if (body === undefined) {
    if (!hasBody(req)) {
      if (optional) return {};
      throw badRequest('a JSON object body is required');
    }
    // Never read a body of another type as "no body": an unsend would then withdraw every copy.
    throw new HttpProblem(415, 'unsupported_media_type', 'the body must be JSON (Content-Type: application/json)');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw badRequest('the body must be a JSON object');
  }
  return body as Record<string, unknown>;
}

function onlyFields(body: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key))
      throw badRequest(`unknown field ${JSON.stringify(key)}: expected ${allowed.join(', ')}`);
  }
}

function isMailbox(value: unknown): value is MailboxName {
  return MAILBOXES.includes(value as MailboxName);
}

/**
 * One address (an addr-spec, or `Name <addr-spec>`), parsed as RFC 5322 says; answers its comparison
 * form (lower-cased addr-spec).
 */
function oneAddress(value: unknown, where: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 998) {
    throw badRequest(`${where} must be an address`);
  }
  let mailboxes;
  try {
    mailboxes = parseAddressList(value);
  } catch (e) {
    if (e instanceof ProtocolError) throw badRequest(`${where} is not an address: ${e.message}`);
    throw e;
  }
  if (mailboxes.length !== 1) throw badRequest(`${where} must be exactly one address, not ${mailboxes.length}`);
  const address = normalizeAddress(mailboxes[0]!.address);
  if (address.length > 254) throw badRequest(`${where} is longer than 254 characters`);
  return address;
}

function addressArray(value: unknown, where: string, max: number): string[] {
  if (!Array.isArray(value)) throw badRequest(`${where} must be an array of addresses`);
  if (value.length > max) throw badRequest(`${where} holds at most ${max} addresses, not ${value.length}`);
  return [...new Set(value.map((v, i) => oneAddress(v, `${where}[${i}]`)))];
}

function summaryJson(m: MessageSummary) {
  return {
    id: m.id,
    mailbox: m.mailbox,
    messageId: m.messageId,
    threadId: m.threadId,
    subject: m.subject,
    from: m.from,
    date: m.date,
    receivedAt: m.receivedAt,
    seen: m.seen,
    flagged: m.flagged,
    size: m.size,
  };
}

function messageJson(m: StoredMessage, resources: readonly MessageResource[]) {
  return {
    ...summaryJson(m),
    envelope: m.envelope,
    body: m.body,
    resources: resources.map((r) => ({
      contentId: r.contentId,
      size: r.size,
      status: r.status,
      ...(r.failure === undefined ? {} : { failure: r.failure }),
    })),
  };
}

function forwardingJson(rule: { targets: readonly string[]; keepCopy: boolean; enabled: boolean; updatedAt?: number }) {
  return { targets: rule.targets, keepCopy: rule.keepCopy, enabled: rule.enabled, updatedAt: rule.updatedAt ?? null };
}

export function messagesRouter(deps: MessagesDeps): Router {
  // The store holds at most STORE_MAX_TARGETS: a larger setting would turn a valid request into a 500.
  const maxTargets = Math.min(deps.maxForwardingTargets ?? MAX_FORWARDING_TARGETS, STORE_MAX_TARGETS);
  const router = express.Router();
  // Per route, never router-wide: this router shares /api/v1 with others (a resource upload is a raw body).
  const json = express.json({ limit: '64kb', type: ['application/json', 'application/*+json'] });

  async function readMessage(address: string, id: string) {
    const message = await deps.messages.get(address, id);
    if (message === undefined) return undefined;
    return messageJson(message, await deps.messages.resourcesOf(id));
  }

  router.get('/messages', async (req: Request, res: Response) => {
    const address = userOf(req);
    const mailbox = param(req, 'mailbox') ?? 'inbox';
    if (!isMailbox(mailbox)) throw badRequest(`mailbox must be one of ${MAILBOXES.join(', ')}`);
    const limitText = param(req, 'limit');
    const limit = limitText === undefined ? DEFAULT_PAGE_SIZE : Number(limitText);
    if (limitText !== undefined && (!/^[0-9]{1,3}$/.test(limitText) || limit < 1 || limit > MAX_PAGE_SIZE)) {
      throw badRequest(`limit must be an integer from 1 to ${MAX_PAGE_SIZE}`);
    }
    const cursor = param(req, 'cursor');
    if (cursor === '') throw new HttpProblem(400, 'invalid_cursor', 'the cursor is empty: omit it for the first page');
    const page = await deps.messages.list(address, { mailbox, before: cursor, limit });
    send(res, 200, { messages: page.messages.map(summaryJson), next: page.next ?? null });
  });

  router.post('/messages/get', json, async (req: Request, res: Response) => {
    const address = userOf(req);
    const body = jsonObject(req);
    onlyFields(body, ['ids']);
    const { ids } = body;
    if (!Array.isArray(ids)) throw badRequest('ids must be an array of message ids');
    if (ids.length > MAX_BATCH_IDS) throw badRequest(`ids holds at most ${MAX_BATCH_IDS} ids, not ${ids.length}`);
    if (!ids.every((id): id is string => typeof id === 'string')) throw badRequest('ids must be strings');
    const unique = [...new Set(ids)];
    // Two statements for the whole batch (the messages, then their resources), not two per message.
    const found = await deps.messages.getMany(
      address,
      unique.filter((id) => ID_PATTERN.test(id)),
    );
    const read = unique.map((id) => {
      const hit = found.get(id);
      return hit === undefined ? undefined : messageJson(hit.message, hit.resources);
    });
    send(res, 200, {
      messages: read.filter((m) => m !== undefined),
      notFound: unique.filter((_, i) => read[i] === undefined),
    });
  });

  router.get('/messages/:id', async (req: Request, res: Response) => {
    const message = await readMessage(userOf(req), messageId(req));
    if (message === undefined) throw notFound();
    send(res, 200, message);
  });

  router.patch('/messages/:id', json, async (req: Request, res: Response) => {
    const address = userOf(req);
    const id = messageId(req);
    const body = jsonObject(req);
    onlyFields(body, ['seen', 'flagged', 'mailbox']);
    const patch: MessagePatch = {};
    for (const flag of ['seen', 'flagged'] as const) {
      const value = body[flag];
      if (value === undefined) continue;
      if (typeof value !== 'boolean') throw badRequest(`${flag} must be true or false`);
      patch[flag] = value;
    }
    if (body.mailbox !== undefined) {
      if (!isMailbox(body.mailbox)) throw badRequest(`mailbox must be one of ${MAILBOXES.join(', ')}`);
      patch.mailbox = body.mailbox;
    }
    if (Object.keys(patch).length === 0) throw badRequest('the patch sets none of seen, flagged, mailbox');
    const onlyTrash = patch.mailbox === 'trash' && patch.seen === undefined && patch.flagged === undefined;
    const updated = onlyTrash ? await deps.messages.trash(address, id) : await deps.messages.update(address, id, patch);
    deps.notifier.notify(address);
    send(res, 200, summaryJson(updated));
  });

  router.delete('/messages/:id', async (req: Request, res: Response) => {
    const address = userOf(req);
    if (!(await deps.messages.delete(address, messageId(req)))) throw notFound();
    deps.notifier.notify(address);
    send(res, 204);
  });

  router.get('/threads/:threadId', async (req: Request, res: Response) => {
    const threadId = String(req.params.threadId);
    if (threadId.length === 0 || threadId.length > MAX_THREAD_ID) throw notFound('no such thread in this mailbox');
    const messages = await deps.messages.thread(userOf(req), threadId);
    if (messages.length === 0) throw notFound('no such thread in this mailbox');
    send(res, 200, { threadId, messages: messages.map(summaryJson) });
  });

  router.get('/messages/:id/deliveries', async (req: Request, res: Response) => {
    const id = messageId(req);
    if ((await deps.messages.get(userOf(req), id)) === undefined) throw notFound();
    const deliveries = await deps.shares.deliveries({ message: id });
    send(res, 200, { deliveries: deliveries.map(deliveryJson) });
  });

  router.post('/messages/:id/unsend', json, async (req: Request, res: Response) => {
    const address = userOf(req);
    const id = messageId(req);
    const body = jsonObject(req, true);
    onlyFields(body, ['recipients']);
    let wanted: string[] | undefined;
    if (body.recipients !== undefined) {
      wanted = addressArray(body.recipients, 'recipients', MAX_UNSEND_RECIPIENTS);
      if (wanted.length === 0) throw badRequest('recipients is empty: omit it to withdraw every copy');
    }
    if ((await deps.messages.get(address, id)) === undefined) throw notFound();
    const shares = await deps.shares.sharesOf(id);
    if (shares.length === 0) throw new HttpProblem(409, 'not_sent', 'this message has no copies to withdraw');
    const withdrawn = new Set<string>();
    const fetched = new Set<string>();
    const matched = new Set<string>();
    for (const share of shares) {
      let recipients: string[] | undefined;
      if (wanted !== undefined) {
        // Stored recipients are compared as addresses compare: case-insensitively.
        recipients = share.recipients.filter((r) => wanted.includes(normalizeAddress(r)));
        if (recipients.length === 0) continue;
        for (const r of recipients) matched.add(normalizeAddress(r));
      }
      const result = await deps.shares.withdraw(share.id, recipients);
      for (const r of result.withdrawn) withdrawn.add(r);
      for (const r of result.fetched) fetched.add(r);
    }
    deps.notifier.notify(address);
    send(res, 200, {
      withdrawn: [...withdrawn],
      fetched: [...fetched],
      unknown: (wanted ?? []).filter((r) => !matched.has(r)),
    });
  });

  router.get('/forwarding', async (req: Request, res: Response) => {
    const rule = await deps.forwarding.get(userOf(req));
    send(res, 200, forwardingJson(rule ?? { targets: [], keepCopy: true, enabled: false }));
  });

  router.put('/forwarding', json, async (req: Request, res: Response) => {
    const address = userOf(req);
    const body = jsonObject(req);
    onlyFields(body, ['targets', 'keepCopy', 'enabled']);
    const targets = addressArray(body.targets, 'targets', maxTargets);
    if (typeof body.keepCopy !== 'boolean') throw badRequest('keepCopy must be true or false');
    if (typeof body.enabled !== 'boolean') throw badRequest('enabled must be true or false');
    if (targets.includes(normalizeAddress(address))) throw badRequest('an account cannot forward to itself');
    if (body.enabled && targets.length === 0) throw badRequest('an enabled rule needs at least one target');
    const stored = await deps.forwarding.set(address, { targets, keepCopy: body.keepCopy, enabled: body.enabled });
    deps.notifier.notify(address);
    send(res, 200, forwardingJson(stored));
  });

  // Errors of the routes above only (a mounted router receives no errors of other routers).
  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (res.headersSent) return next(err);
    if (err instanceof HttpProblem) return send(res, err.status, { error: err.error, error_description: err.message });
    if (isMailStoreError(err, 'message_not_found') || isMailStoreError(err, 'share_not_found')) {
      return send(res, 404, { error: 'not_found', error_description: 'no such message in this mailbox' });
    }
    if (isMailStoreError(err, 'invalid_cursor')) {
      return send(res, 400, { error: 'invalid_cursor', error_description: err.message });
    }
    // body-parser's errors (malformed JSON, too large, bad charset), and a malformed %-escape in the path.
    const status = (err as { status?: unknown }).status;
    if (typeof status === 'number' && status >= 400 && status < 500) {
      const type = (err as { type?: unknown }).type;
      const error = status === 413 ? 'too_large' : status === 415 ? 'unsupported_media_type' : 'invalid_request';
      const description =
        type === 'entity.parse.failed' ? `the body is not JSON: ${(err as Error).message}` : (err as Error).message;
      return send(res, status, { error, error_description: description });
    }
    next(err);
  });

  return router;
}

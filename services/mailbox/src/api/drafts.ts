/**
 * Drafts (PROTOCOL.md §2, §4.1), mounted at `/api/v1` behind `requireUser`:
 *
 * - `POST /drafts` `{"message": Message}`: stores a draft in the `drafts` mailbox. A draft has exactly one
 *   headers block and no `Date`; its `From` is the signed-in user; its `Message-ID`, generated as
 *   `<uuid@domain>` when absent, is of this domain; every resource it references is one the user holds,
 *   with the declared size (the draft counts as a reference, so the resources are not collected).
 *   Answers `201 {"id", "messageId", "message"}` with `Location`.
 * - `PUT /drafts/:id` `{"message": Message}`: replaces the draft (same checks; the Message-ID is kept when
 *   the new version has none). The stored draft gets a new id, answered as `id` (with `replaced`: the old).
 * - `DELETE /drafts/:id`: `204`.
 * - `POST /drafts/:id/send`: sends the stored draft exactly as `POST /messages/send` does (`sendDraft`),
 *   then deletes it; answers as that endpoint does, plus `draft`: the id of the draft sent.
 *
 * Only messages of the `drafts` mailbox of the signed-in account are drafts: any other id is `404`.
 * Errors are `{error, error_description}`, with the codes of `POST /messages/send`.
 */
import { randomUUID } from 'node:crypto';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import {
  domainOf,
  draftHeaders,
  headerValue,
  normalizeAddress,
  parseSingleMailbox,
  validateMessage,
  type Header,
  type Message,
} from '@federizer/protocol';
import { ID_PATTERN, type StoredMessage } from '../storage/index.js';
import type { leaves } from './send.js';
import {
  SendError,
  answerSendError,
  checkResourcesHeld,
  sendDraft,
  sendResultJson,
  userToken,
  type SendDeps,
} from './send.js';

export type DraftsDeps = SendDeps;

interface CheckedDraft {
  readonly message: Message;
  readonly headers: readonly Header[];
  readonly messageId: string;
  readonly resources: ReturnType<typeof leaves>;
}

function noStore(res: Response): Response {
  return res.set('Cache-Control', 'no-store');
}

/** `{"message": Message}`, a draft: validated as any message, then as a draft (one headers block, no Date). */
function readDraft(body: unknown): Message {
  if (body === undefined)
    throw new SendError(415, 'unsupported_media_type', 'the body must be JSON (Content-Type: application/json)');
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new SendError(400, 'invalid_request', 'the body must be a JSON object {"message": ...}');
  const unknown = Object.keys(body).filter((k) => k !== 'message');
  if (unknown.length > 0)
    throw new SendError(400, 'invalid_request', `unknown field ${JSON.stringify(unknown[0])}: expected message`);
  let message: Message;
  try {
    message = validateMessage((body as { message?: unknown }).message);
    draftHeaders(message);
  } catch (e) {
    throw new SendError(400, 'invalid_message', (e as Error).message);
  }
  return message;
}

/**
 * §4.1 for a draft: From is the user, the Message-ID (given, kept from the previous version, or generated)
 * is of this domain, and each referenced resource is held by the user with the declared size.
 */
async function checkDraft(
  draft: Message,
  user: string,
  deps: DraftsDeps,
  previousMessageId: string | undefined,
): Promise<CheckedDraft> {
  let headers = draftHeaders(draft);
  const from = headerValue(headers, 'From');
  if (from === undefined) throw new SendError(400, 'invalid_message', 'the draft has no From');
  let fromAddress: string;
  try {
    fromAddress = normalizeAddress(parseSingleMailbox(from).address);
  } catch (e) {
    throw new SendError(400, 'invalid_message', `From: ${(e as Error).message}`);
  }
  if (fromAddress !== normalizeAddress(user))
    throw new SendError(403, 'from_not_user', `From must be ${user}, the signed-in user`);
  let messageId = headerValue(headers, 'Message-ID');
  if (messageId === undefined) {
    messageId = previousMessageId ?? `<${randomUUID()}@${deps.domain}>`;
    headers = [...headers, { 'Message-ID': messageId }];
  }
  if (!/^<[^<>\s]+@[^<>\s]+>$/.test(messageId) || domainOf(messageId.slice(1, -1)) !== deps.domain)
    throw new SendError(400, 'invalid_message', `the Message-ID must be <...@${deps.domain}>`);
  const resources = await checkResourcesHeld(user, draft.body, deps);
  return { message: { envelope: [{ headers }], body: draft.body }, headers, messageId, resources };
}

async function storeDraft(user: string, draft: CheckedDraft, deps: DraftsDeps): Promise<string> {
  return deps.messages.create({
    address: user,
    mailbox: 'drafts',
    messageId: draft.messageId,
    threadId: headerValue(draft.headers, 'X-Thread-ID') ?? draft.messageId,
    envelope: draft.message.envelope,
    body: draft.message.body,
    subject: (headerValue(draft.headers, 'Subject') ?? '').slice(0, 998),
    from: headerValue(draft.headers, 'From') ?? '',
    date: deps.now(),
    seen: true,
    resources: draft.resources.map((r) => ({ ...r, status: 'held' as const })),
  });
}

/** The signed-in user's draft of that id, or 404. */
async function storedDraft(req: Request, deps: DraftsDeps): Promise<StoredMessage> {
  const id = String(req.params.id);
  const message = ID_PATTERN.test(id) ? await deps.messages.get(req.user!.address, id) : undefined;
  if (message === undefined || message.mailbox !== 'drafts')
    throw new SendError(404, 'not_found', 'no such draft in this mailbox');
  return message;
}

export function draftsRouter(deps: DraftsDeps): Router {
  const router = express.Router();
  // Per route: this router shares /api/v1 with others (a resource upload is a raw body).
  const json = express.json({ limit: deps.maxMessageBytes, type: ['application/json', 'application/*+json'] });
  const touched = (address: string) => deps.onSent?.([address]);

  router.post('/drafts', json, async (req: Request, res: Response) => {
    const user = req.user!.address;
    const draft = await checkDraft(readDraft(req.body), user, deps, undefined);
    const id = await storeDraft(user, draft, deps);
    touched(user);
    noStore(res)
      .status(201)
      .location(`${req.baseUrl}/messages/${id}`)
      .json({ id, messageId: draft.messageId, message: draft.message });
  });

  router.put('/drafts/:id', json, async (req: Request, res: Response) => {
    const user = req.user!.address;
    const previous = await storedDraft(req, deps);
    const draft = await checkDraft(readDraft(req.body), user, deps, previous.messageId);
    // The new version first: the resources both reference never lose their last reference in between.
    const id = await storeDraft(user, draft, deps);
    await deps.messages.delete(user, previous.id);
    touched(user);
    noStore(res).status(200).json({ id, replaced: previous.id, messageId: draft.messageId, message: draft.message });
  });

  router.delete('/drafts/:id', async (req: Request, res: Response) => {
    const user = req.user!.address;
    const draft = await storedDraft(req, deps);
    await deps.messages.delete(user, draft.id);
    touched(user);
    noStore(res).status(204).end();
  });

  router.post('/drafts/:id/send', async (req: Request, res: Response) => {
    const user = req.user!.address;
    const stored = await storedDraft(req, deps);
    let draft: Message;
    try {
      draft = validateMessage({ envelope: stored.envelope, body: stored.body });
    } catch (e) {
      throw new SendError(400, 'invalid_message', (e as Error).message);
    }
    const result = await sendDraft(user, userToken(req), draft, deps);
    await deps.messages.delete(user, stored.id);
    touched(user);
    noStore(res)
      .status(202)
      .json({ ...sendResultJson(result), draft: stored.id });
  });

  // Errors of the routes above only.
  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (res.headersSent) return next(err);
    noStore(res);
    if (answerSendError(res, err, deps.maxMessageBytes)) return;
    const status = (err as { status?: unknown }).status;
    if (typeof status === 'number' && status >= 400 && status < 500) {
      const type = (err as { type?: unknown }).type;
      const error = status === 415 ? 'unsupported_media_type' : 'invalid_request';
      const description =
        type === 'entity.parse.failed' ? `the body is not JSON: ${(err as Error).message}` : (err as Error).message;
      return void res.status(status).json({ error, error_description: description });
    }
    next(err);
  });
  return router;
}

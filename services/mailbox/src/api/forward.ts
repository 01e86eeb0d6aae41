/**
 * `POST /api/v1/messages/:id/forward` `{"to": "Name <addr>, ..."}` (PROTOCOL.md §7): the signed-in user
 * forwards a message they received, by hand (`forward_type` manual). Nothing is uploaded again: the
 * forward block is built on the stored envelope, the domain's AS signs it, and the envelope
 * `[A2, H1, A1, H0]` is queued for each target domain (targets of this domain get it at once). The new
 * recipients fetch the resources from the origin domain.
 *
 * Answers `202 {"id", "messageId", "recipients", "deliveries"}`; the deliveries of the forward are then
 * listed with the message's (`GET /messages/:id/deliveries`). Errors are `{error, error_description}`:
 * 404 (no such message), 400 (the `to` list), 409 `not_received` / `chain_too_long`, 403
 * `forwarding_denied` (the user's forwarding policy, the AS's own words), 429 / 503 from the AS.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { ProtocolError, normalizeAddress, parseAddressList } from '@federizer/protocol';
import { ExchangeFailure } from '../mta/as-client.js';
import { ForwardError, type Forwarder } from '../mta/forwarding.js';
import { deliveryJson } from './deliveries.js';
import { ID_PATTERN, MAX_FORWARDING_TARGETS, type MessageStore } from '../storage/index.js';

export interface ForwardApiDeps {
  readonly forwarder: Pick<Forwarder, 'forward'>;
  readonly messages: Pick<MessageStore, 'get'>;
  /** At most this many addresses in `to` (default: the forwarding rule's limit, 16). */
  readonly maxTargets?: number;
}

/** RFC 5322 §2.1.1: a header line, hence the Forwarded-To value, is at most 998 characters. */
const MAX_HEADER = 998;

function problem(res: Response, status: number, error: string, description: string): void {
  res.status(status).set('Cache-Control', 'no-store').json({ error, error_description: description });
}

/** The `to` list, checked as the Forwarded-To header it becomes; answers its lower-cased addresses. */
function targetsOf(body: unknown, user: string, max: number): { to: string; addresses: string[] } {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new ForwardError(400, 'invalid_request', 'the body must be a JSON object {"to": "..."}');
  const unknown = Object.keys(body).filter((k) => k !== 'to');
  if (unknown.length > 0)
    throw new ForwardError(400, 'invalid_request', `unknown field ${JSON.stringify(unknown[0])}: expected to`);
  const { to } = body as { to?: unknown };
  if (typeof to !== 'string' || to.trim().length === 0)
    throw new ForwardError(400, 'invalid_request', 'to must be an address list, e.g. "Bobby <bobby@example.org>"');
  if (to.length > MAX_HEADER || /[\r\n]/.test(to))
    throw new ForwardError(400, 'invalid_request', `to must be one header line of at most ${MAX_HEADER} characters`);
  let addresses: string[];
  try {
    addresses = parseAddressList(to).map((m) => normalizeAddress(m.address));
  } catch (e) {
    if (e instanceof ProtocolError) throw new ForwardError(400, 'invalid_request', `to: ${e.message}`);
    throw e;
  }
  addresses = [...new Set(addresses)];
  if (addresses.length === 0) throw new ForwardError(400, 'invalid_request', 'to names no address');
  if (addresses.length > max)
    throw new ForwardError(400, 'invalid_request', `to holds at most ${max} addresses, not ${addresses.length}`);
  if (addresses.some((a) => a.length > 254))
    throw new ForwardError(400, 'invalid_request', 'an address is longer than 254 characters');
  if (addresses.includes(normalizeAddress(user)))
    throw new ForwardError(400, 'invalid_request', 'a message cannot be forwarded to yourself');
  return { to: to.trim(), addresses };
}

export function forwardRouter(deps: ForwardApiDeps): Router {
  const router = express.Router();
  const max = Math.min(deps.maxTargets ?? MAX_FORWARDING_TARGETS, MAX_FORWARDING_TARGETS);
  const json = express.json({ limit: '16kb', type: ['application/json', 'application/*+json'] });

  router.post('/messages/:id/forward', json, async (req: Request, res: Response, next: NextFunction) => {
    try {
      const user = req.user!.address;
      const id = String(req.params.id);
      if (req.body === undefined)
        throw new ForwardError(415, 'unsupported_media_type', 'the body must be JSON (Content-Type: application/json)');
      const { to } = targetsOf(req.body, user, max);
      const message = ID_PATTERN.test(id) ? await deps.messages.get(user, id) : undefined;
      if (message === undefined) throw new ForwardError(404, 'not_found', 'no such message in this mailbox');
      const result = await deps.forwarder.forward(user, message, to, 'manual');
      res
        .status(202)
        .set('Cache-Control', 'no-store')
        .json({
          id: result.id,
          messageId: result.messageId,
          recipients: result.recipients,
          deliveries: result.deliveries.map(deliveryJson),
        });
    } catch (e) {
      next(e);
    }
  });

  // Errors of the route above only.
  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (res.headersSent) return next(err);
    if (err instanceof ForwardError) return problem(res, err.status, err.error, err.message);
    if (err instanceof ProtocolError) return problem(res, 409, 'invalid_chain', err.message);
    if (err instanceof ExchangeFailure) {
      if (err.error === 'access_denied') return problem(res, 403, 'forwarding_denied', err.description);
      // As for sending: the AS's refusal is the user's answer; its outage is ours to report as 503.
      if (err.retryAfterSeconds !== undefined) res.set('Retry-After', String(err.retryAfterSeconds));
      const status = err.status === 429 ? 429 : err.retryable ? 503 : 403;
      return problem(res, status, err.error, `the Authorization Server refused to sign: ${err.description}`);
    }
    const status = (err as { status?: unknown }).status;
    if (typeof status === 'number' && status >= 400 && status < 500) {
      const type = (err as { type?: unknown }).type;
      const error = status === 413 ? 'too_large' : status === 415 ? 'unsupported_media_type' : 'invalid_request';
      const description =
        type === 'entity.parse.failed' ? `the body is not JSON: ${(err as Error).message}` : (err as Error).message;
      return problem(res, status, error, description);
    }
    next(err);
  });
  return router;
}

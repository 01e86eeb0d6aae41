/**
 * The errors of the federation endpoints (docs/protocol.md §5.3, §11). Every check throws a `TransferError`
 * that already knows its HTTP status, its `error` member, the protocol `code` when a protocol rule was broken,
 * and a precise description; `sendTransferError` turns it into the answer, in one place.
 */
import type { Response } from 'express';
import { ALLOWED_ALGS, ProtocolError, type ProtocolErrorCode } from '@federizer/protocol';

/** The `error` member of §5.3's answers. */
export type TransferErrorName =
  | 'invalid_message'
  | 'invalid_token'
  | 'forbidden'
  | 'no_recipient'
  | 'too_large'
  | 'unsupported_media_type'
  | 'rate_limited'
  | 'unavailable';

/** The `error` parameter of the `WWW-Authenticate: DPoP` challenge (RFC 9449 §7.1, RFC 6750 §3.1). */
export type ChallengeError = 'invalid_token' | 'invalid_dpop_proof' | 'insufficient_scope';

export interface TransferErrorOptions {
  readonly code?: ProtocolErrorCode | undefined;
  readonly path?: string | undefined;
  readonly challenge?: ChallengeError;
  /** Seconds, for 429 and 503. */
  readonly retryAfter?: number;
  readonly cause?: unknown;
}

export class TransferError extends Error {
  override readonly name = 'TransferError';
  readonly code: ProtocolErrorCode | undefined;
  readonly path: string | undefined;
  readonly challenge: ChallengeError | undefined;
  readonly retryAfter: number | undefined;

  constructor(
    readonly status: number,
    readonly error: TransferErrorName,
    description: string,
    options: TransferErrorOptions = {},
  ) {
    super(description, { cause: options.cause });
    this.code = options.code;
    this.path = options.path;
    this.challenge = options.challenge;
    this.retryAfter = options.retryAfter;
  }
}

/** The content codings a transfer body may arrive in (RFC 9110 §8.4.1), decoded before it is read. */
export const TRANSFER_CODINGS = ['gzip', 'deflate'] as const;

/** Seconds a sender waits before retrying after a discovery failure: the negative cache time of §8.4. */
export const DISCOVERY_RETRY_AFTER_SECONDS = 30;

/**
 * Seconds a sender (or fetcher) waits after an internal failure of this mailbox (its database, its replay
 * store, the user directory): long enough for a database failover or a restart, well inside the sender's
 * own back-off.
 */
export const INTERNAL_RETRY_AFTER_SECONDS = 30;

/**
 * §5.3 `503 unavailable`: a failure that is not the request's (anything but a TransferError or a
 * ProtocolError). Nothing was decided against the transfer, so the sender retries it; a transfer that had
 * already been stored in part is completed by the retry, which is idempotent (§5.4).
 */
export function internalFailure(cause: unknown): TransferError {
  return new TransferError(503, 'unavailable', 'this mailbox could not handle the transfer now; retry later', {
    retryAfter: INTERNAL_RETRY_AFTER_SECONDS,
    cause,
  });
}

/** Where in the checks a ProtocolError was raised; decides the answer of the codes that have no fixed one. */
export type CheckStage = 'message' | 'token' | 'proof';

/**
 * Maps a ProtocolError to its answer (§5.3, §11): some codes answer the same wherever they occur
 * (`discovery_failed` 503, `invalid_scope` and `forwarder_not_recipient` 403, `message_too_large` 413); the
 * others depend on the check: 400 `invalid_message` for the message and the chain (checks 1 and 8), 401
 * `invalid_token` for the assertion (checks 1–5 and 7) and for the proof (check 6). PROTOCOL §5 names one
 * `error` for every 401, `invalid_token`; the challenge (RFC 9449 §7.1) and `code` tell the proof's apart.
 */
export function fromProtocolError(e: ProtocolError, stage: CheckStage, context?: string): TransferError {
  const description = context === undefined ? e.message : `${context}: ${e.message}`;
  const options = { code: e.code, path: e.path, cause: e };
  switch (e.code) {
    case 'discovery_failed':
      return new TransferError(503, 'unavailable', description, {
        ...options,
        retryAfter: DISCOVERY_RETRY_AFTER_SECONDS,
      });
    case 'invalid_scope':
      return new TransferError(403, 'forbidden', description, { ...options, challenge: 'insufficient_scope' });
    case 'forwarder_not_recipient':
      return new TransferError(403, 'forbidden', description, options);
    case 'message_too_large':
      return new TransferError(413, 'too_large', description, options);
  }
  switch (stage) {
    case 'message':
      return new TransferError(400, 'invalid_message', description, options);
    case 'token':
      return new TransferError(401, 'invalid_token', description, { ...options, challenge: 'invalid_token' });
    case 'proof':
      return new TransferError(401, 'invalid_token', description, {
        ...options,
        challenge: 'invalid_dpop_proof',
      });
  }
}

/** Runs a check; its ProtocolErrors become the TransferError of that stage, anything else passes through. */
export async function during<T>(
  stage: CheckStage,
  context: string | undefined,
  check: () => T | Promise<T>,
): Promise<T> {
  try {
    return await check();
  } catch (e) {
    if (e instanceof ProtocolError) throw fromProtocolError(e, stage, context);
    throw e;
  }
}

/** The synchronous twin of `during`. */
export function duringSync<T>(stage: CheckStage, context: string | undefined, check: () => T): T {
  try {
    return check();
  } catch (e) {
    if (e instanceof ProtocolError) throw fromProtocolError(e, stage, context);
    throw e;
  }
}

/** An RFC 9110 quoted-string of printable ASCII: quotes and backslashes escaped, anything else replaced. */
function quoted(text: string): string {
  return `"${text.replace(/[^\x20-\x7e]/g, '?').replace(/(["\\])/g, '\\$1')}"`;
}

/** The answer of a failed transfer: status, headers and the JSON body of §5.3. */
export function sendTransferError(res: Response, e: TransferError): void {
  if (res.headersSent) return;
  res.status(e.status);
  if (e.challenge !== undefined) {
    res.set(
      'WWW-Authenticate',
      `DPoP algs="${ALLOWED_ALGS.join(' ')}", error="${e.challenge}", error_description=${quoted(e.message)}`,
    );
  }
  if (e.retryAfter !== undefined) res.set('Retry-After', String(Math.max(1, Math.ceil(e.retryAfter))));
  // A refused oversized body is not read to its end; the connection cannot carry another request.
  if (e.status === 413) res.set('Connection', 'close');
  // RFC 9110 §12.5.3: a 415 for a content coding names the codings that are decoded.
  if (e.error === 'unsupported_media_type') res.set('Accept-Encoding', TRANSFER_CODINGS.join(', '));
  res.set('Cache-Control', 'no-store');
  res.json({
    error: e.error,
    ...(e.code === undefined ? {} : { code: e.code }),
    ...(e.path === undefined ? {} : { path: e.path }),
    error_description: e.message,
  });
}

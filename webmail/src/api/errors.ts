/**
 * The typed errors of the mailbox client API. The API client maps every HTTP failure to one of these,
 * once; stores and scenes test `instanceof`, never status codes, and show `message` (the mailbox's own
 * `error_description`, which says what was wrong).
 */

export class ApiError extends Error {
  override readonly name: string = 'ApiError';
  constructor(
    /** The HTTP status, or 0 when no answer came. */
    readonly status: number,
    /** The mailbox's stable error code (`invalid_request`, `not_found`, ...). */
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** 400: the request was malformed (the description says which member and why). */
export class BadRequestError extends ApiError {
  override readonly name = 'BadRequestError';
}
/** 401: the access token or the DPoP proof was refused. */
export class UnauthorizedError extends ApiError {
  override readonly name = 'UnauthorizedError';
}
/** 403: not allowed, e.g. a forward the user's forwarding policy forbids. */
export class ForbiddenError extends ApiError {
  override readonly name = 'ForbiddenError';
}
export class NotFoundError extends ApiError {
  override readonly name = 'NotFoundError';
}
/** 409: the message is in a state that does not allow this (`not_received`, `not_sent`, ...). */
export class ConflictError extends ApiError {
  override readonly name = 'ConflictError';
}
/** 410: the sync state is older than the change log: resynchronize from scratch (PROTOCOL.md §9). */
export class StateExpiredError extends ApiError {
  override readonly name = 'StateExpiredError';
}
/** 413: a resource or a message is too large. */
export class TooLargeError extends ApiError {
  override readonly name = 'TooLargeError';
}
/** An answer that may say in its Retry-After header when trying again is worth it. */
export abstract class RetryAfterError extends ApiError {
  constructor(
    status: number,
    code: string,
    message: string,
    readonly retryAfterSeconds: number | undefined,
  ) {
    super(status, code, message);
  }
}
/** 429 and 507: a send quota or the storage quota is used up. */
export class QuotaError extends RetryAfterError {
  override readonly name = 'QuotaError';
}
/** 5xx: try again later. */
export class ServerError extends RetryAfterError {
  override readonly name = 'ServerError';
}
/** No answer at all: offline, DNS, CORS, or the connection dropped. */
export class NetworkError extends ApiError {
  override readonly name = 'NetworkError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(0, 'network_error', message, options);
  }
}
/** The user (or the app) cancelled the request. */
export class AbortedError extends ApiError {
  override readonly name = 'AbortedError';
  constructor(message = 'cancelled') {
    super(0, 'aborted', message);
  }
}

/**
 * The mailbox answered with a redirect, which the client never follows: the request carries a DPoP-bound
 * token and its proof, bound to this URL, and a 3xx pointing elsewhere is either a misconfiguration or an
 * attempt to have them sent somewhere they do not belong. `status` is the 3xx when it is known; a
 * browser's fetch with `redirect: 'error'` reports only a failure, so there it is 0.
 */
export class RedirectError extends ApiError {
  override readonly name = 'RedirectError';
  constructor(
    message: string,
    readonly location: string | undefined,
    status = 0,
    options?: { cause?: unknown },
  ) {
    super(status, 'redirect_refused', message, options);
  }
}

/** Whether a fetch rejection is the refusal of a redirect (undici says so in its cause; browsers say nothing). */
export function isRedirectRefusal(e: unknown): boolean {
  const cause = (e as { cause?: unknown } | undefined)?.cause;
  return e instanceof TypeError && cause instanceof Error && /redirect/i.test(cause.message);
}

function retryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.round((at - Date.now()) / 1000));
}

const ERROR_OF_STATUS: Readonly<
  Partial<Record<number, new (status: number, code: string, message: string) => ApiError>>
> = {
  400: BadRequestError,
  401: UnauthorizedError,
  403: ForbiddenError,
  404: NotFoundError,
  409: ConflictError,
  410: StateExpiredError,
  413: TooLargeError,
};

/** One place that turns a failed answer into its typed error. */
export function errorFromResponse(
  status: number,
  body: unknown,
  headers: { get(name: string): string | null },
): ApiError {
  const b = (typeof body === 'object' && body !== null ? body : {}) as { error?: unknown; error_description?: unknown };
  const code = typeof b.error === 'string' ? b.error : `http_${status}`;
  const message = typeof b.error_description === 'string' ? b.error_description : `the mailbox answered HTTP ${status}`;
  // 507 is a quota, not a server failure: checked before the 5xx range.
  if (status === 429 || status === 507)
    return new QuotaError(status, code, message, retryAfter(headers.get('retry-after')));
  if (status >= 500) return new ServerError(status, code, message, retryAfter(headers.get('retry-after')));
  const ErrorOfStatus = ERROR_OF_STATUS[status] ?? ApiError;
  return new ErrorOfStatus(status, code, message);
}

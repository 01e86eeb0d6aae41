/**
 * Errors of the mailbox stores. Each carries a stable `code`; the API and federation layers map codes to
 * HTTP answers once, at their edge. Caller mistakes (a malformed argument the caller controls) are
 * `TypeError`s instead.
 */

export type MailStoreErrorCode =
  | 'quota_exceeded'
  | 'message_not_found'
  | 'share_not_found'
  | 'job_not_found'
  | 'not_lease_owner'
  | 'invalid_cursor'
  | 'invalid_state'
  | 'cannot_calculate_changes';

export class MailStoreError extends Error {
  override readonly name = 'MailStoreError';
  readonly code: MailStoreErrorCode;

  constructor(code: MailStoreErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.code = code;
  }
}

export function isMailStoreError(e: unknown, code?: MailStoreErrorCode): e is MailStoreError {
  return e instanceof MailStoreError && (code === undefined || e.code === code);
}

/**
 * Every rule of the protocol that can reject input has a stable `code`. Services map codes to HTTP or
 * OAuth errors once, at their edge; the protocol library never knows about HTTP.
 */
export type ProtocolErrorCode =
  // parsing and structure (PROTOCOL.md §2)
  | 'message_too_large'
  | 'message_too_deep'
  | 'too_many_parts'
  | 'too_many_headers'
  | 'too_many_blocks'
  | 'header_too_long'
  | 'invalid_encoding'
  | 'invalid_syntax'
  | 'invalid_shape'
  | 'invalid_header'
  | 'duplicate_header'
  | 'missing_header'
  | 'invalid_content_id'
  | 'invalid_content_type'
  | 'invalid_content_disposition'
  | 'invalid_address'
  // envelope chain (PROTOCOL.md §5, §7)
  | 'invalid_chain'
  | 'chain_too_long'
  | 'message_id_mismatch'
  | 'body_digest_mismatch'
  | 'recipients_digest_mismatch'
  | 'eht_mismatch'
  | 'ehl_mismatch'
  | 'assertion_digest_mismatch'
  | 'forwarder_not_recipient'
  | 'sender_domain_unknown'
  // JWTs and DPoP (PROTOCOL.md §4.6, §5.2–5.7, §6, RFC 9449)
  | 'invalid_jwt'
  | 'invalid_typ'
  | 'alg_not_allowed'
  | 'forbidden_header_parameter'
  | 'invalid_signature'
  | 'unknown_key'
  | 'issuer_mismatch'
  | 'token_expired'
  | 'token_not_yet_valid'
  | 'invalid_claims'
  | 'invalid_scope'
  | 'azp_mismatch'
  | 'invalid_dpop_proof'
  | 'dpop_htm_mismatch'
  | 'dpop_htu_mismatch'
  | 'dpop_ath_mismatch'
  | 'dpop_iat_out_of_window'
  | 'dpop_replayed'
  | 'dpop_key_mismatch'
  // discovery (PROTOCOL.md §8)
  | 'discovery_no_records'
  | 'discovery_failed'
  | 'discovery_too_many_redirects'
  | 'discovery_invalid_metadata';

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly code: ProtocolErrorCode;
  /** Where in the message the rule was broken, e.g. `envelope[0].headers[2]`; absent when not about a place. */
  readonly path: string | undefined;

  constructor(code: ProtocolErrorCode, message: string, options: { path?: string; cause?: unknown } = {}) {
    super(options.path === undefined ? message : `${options.path}: ${message}`, { cause: options.cause });
    this.code = code;
    this.path = options.path;
  }
}

export function isProtocolError(e: unknown, code?: ProtocolErrorCode): e is ProtocolError {
  return e instanceof ProtocolError && (code === undefined || e.code === code);
}

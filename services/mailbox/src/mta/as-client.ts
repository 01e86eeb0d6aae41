/**
 * The MTA's side of the three token exchanges (PROTOCOL.md §4.4, §6.1, §7) at the domain's own AS: client
 * authentication with private_key_jwt (RFC 7523; a client secret only in development mode) and a DPoP
 * proof made with the key the caller passes, which the issued token is bound to.
 */
import { randomUUID } from 'node:crypto';
import { importJWK, type CryptoKey, type JWK, type KeyObject } from 'jose';
import { createDpopProof, signJwt, type DpopKey, type Header, type JwsAlg } from '@federizer/protocol';
import type { HttpClient } from '@federizer/common';

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const JWT = 'urn:ietf:params:oauth:token-type:jwt';
/** A token endpoint's answer is a few KiB: a longer one is not read into memory. */
const MAX_ANSWER_BYTES = 1024 * 1024;

export interface IssuedToken {
  readonly token: string;
  readonly issuedTokenType: string;
  readonly expiresIn: number;
}

/**
 * The OAuth errors that say the request itself is wrong, so asking again cannot succeed (RFC 6749 §5.2,
 * RFC 8693 §2.2.2). Anything else (`temporarily_unavailable`, `server_error`, an error code this client does
 * not know, a 429, a 5xx, no answer at all) may pass later: PROTOCOL.md §6 fetches must then be retried.
 */
export const PERMANENT_OAUTH_ERRORS: ReadonlySet<string> = new Set([
  'invalid_request',
  'invalid_client',
  'invalid_grant',
  'unauthorized_client',
  'unsupported_grant_type',
  'invalid_scope',
  'invalid_target',
  // Not a token-endpoint code of RFC 6749, but what the AS answers when policy refuses the exchange.
  'access_denied',
]);

/** The AS refused (an OAuth error) or could not be reached; `retryable` says whether trying later may help. */
export class ExchangeFailure extends Error {
  override readonly name = 'ExchangeFailure';
  constructor(
    readonly error: string,
    readonly description: string,
    readonly status: number,
    readonly retryAfterSeconds?: number,
    options?: ErrorOptions,
  ) {
    super(`${error}: ${description}`, options);
  }

  /** Whether trying later may help, as the user-facing calls (send, forward) answer it: 503 rather than 403. */
  get retryable(): boolean {
    return this.status === 429 || this.status >= 500 || this.status === 0;
  }

  /**
   * Whether queued work (a fetch) must give up: only for an OAuth error defined as final. An unknown error
   * code, or a 400 `temporarily_unavailable`, is retried with backoff rather than losing the mail.
   */
  get permanent(): boolean {
    return !this.retryable && PERMANENT_OAUTH_ERRORS.has(this.error);
  }
}

/** An error's message followed by those of its causes: undici's "fetch failed" says why only in `cause`. */
export function describeError(e: unknown): string {
  const parts: string[] = [];
  for (let at: unknown = e, depth = 0; at !== undefined && at !== null && depth < 5; depth++) {
    const message = at instanceof Error ? at.message : String(at);
    const code = (at as { code?: unknown }).code;
    const text = typeof code === 'string' && !message.includes(code) ? `${message} (${code})` : message;
    // A wrapper often repeats its cause's message: say each thing once.
    if (text !== '' && !parts.some((p) => p.includes(text))) parts.push(text);
    at = at instanceof Error ? at.cause : undefined;
  }
  return parts.join(': ');
}

export interface AsClientOptions {
  readonly issuer: string;
  readonly clientId: string;
  /** private_key_jwt: the MTA's private JWK (with `kid` and `alg`). */
  readonly privateJwk?: JWK;
  /** Development mode only: client_secret_basic. */
  readonly clientSecret?: string;
  /** private_key_jwt with a key object (instead of privateJwk). */
  readonly signingKey?: { readonly key: CryptoKey | KeyObject; readonly alg: JwsAlg; readonly kid: string };
  readonly http: HttpClient;
  readonly now?: () => number;
}

export class AsClient {
  readonly #tokenEndpoint: string;
  #signingKey: Promise<CryptoKey> | undefined;

  constructor(private readonly options: AsClientOptions) {
    if (!options.privateJwk && !options.signingKey && !options.clientSecret)
      throw new TypeError('the MTA needs a private JWK or (in development) a client secret');
    // Our AS publishes its token endpoint at issuer + /token, and checks DPoP htu against exactly that.
    this.#tokenEndpoint = `${options.issuer.replace(/\/$/, '')}/token`;
  }

  /** §4.4: the user's access token and the copy's four header objects → the copy's assertion. */
  send(userAccessToken: string, headers: readonly Header[], key: DpopKey): Promise<IssuedToken> {
    return this.#exchange(
      {
        subject_token: userAccessToken,
        subject_token_type: ACCESS_TOKEN,
        requested_token_type: JWT,
        headers: JSON.stringify(headers),
      },
      key,
    );
  }

  /** §7: the newest assertion of a received chain and the forward block's four header objects → the next assertion. */
  forward(
    subjectAssertion: string,
    headers: readonly Header[],
    senderDomain: string,
    forwardType: 'manual' | 'auto',
    key: DpopKey,
  ): Promise<IssuedToken> {
    return this.#exchange(
      {
        subject_token: subjectAssertion,
        subject_token_type: JWT,
        requested_token_type: JWT,
        headers: JSON.stringify(headers),
        sender_domain: senderDomain,
        forward_type: forwardType,
      },
      key,
    );
  }

  /** §6.1: the newest assertion → an access token for the origin mailbox, for this message's resources. */
  fetch(
    subjectAssertion: string,
    audience: string,
    messageId: string,
    senderDomain: string,
    key: DpopKey,
  ): Promise<IssuedToken> {
    return this.#exchange(
      {
        subject_token: subjectAssertion,
        subject_token_type: JWT,
        requested_token_type: ACCESS_TOKEN,
        audience,
        message_id: messageId,
        sender_domain: senderDomain,
      },
      key,
    );
  }

  async #exchange(params: Record<string, string>, key: DpopKey): Promise<IssuedToken> {
    const body = new URLSearchParams({ grant_type: TOKEN_EXCHANGE, scope: 'internet_mail', ...params });
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
      dpop: await createDpopProof(key, { htm: 'POST', htu: this.#tokenEndpoint }),
    };
    await this.#authenticate(body, headers);
    let status: number;
    let retryAfterHeader: string | undefined;
    let text: string;
    try {
      const res = await this.options.http.request(this.#tokenEndpoint, {
        method: 'POST',
        headers,
        body: body.toString(),
      });
      status = res.status;
      retryAfterHeader = res.header('retry-after');
      // Read inside the try: an answer cut off halfway is a failure to answer, retried like one.
      text = await res.text(MAX_ANSWER_BYTES);
    } catch (e) {
      throw new ExchangeFailure(
        'temporarily_unavailable',
        `the AS at ${this.#tokenEndpoint} did not answer: ${describeError(e)}`,
        0,
        undefined,
        { cause: e },
      );
    }
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(text) as Record<string, unknown>;
    } catch {
      // a non-JSON answer (a proxy's error page) is described by its status below
    }
    if (status !== 200) {
      // As before: an absent header reads as 0 (what WHATWG fetch's `headers.get` gave: Number(null)).
      const retryAfter = Number(retryAfterHeader ?? 0);
      throw new ExchangeFailure(
        String(json.error ?? 'server_error'),
        String(json.error_description ?? `HTTP ${status}`),
        status,
        Number.isFinite(retryAfter) ? retryAfter : undefined,
      );
    }
    if (typeof json.access_token !== 'string')
      throw new ExchangeFailure('server_error', 'the AS answered without an access_token', 502);
    return {
      token: json.access_token,
      issuedTokenType: String(json.issued_token_type),
      expiresIn: Number(json.expires_in ?? 0),
    };
  }

  async #authenticate(body: URLSearchParams, headers: Record<string, string>): Promise<void> {
    const { privateJwk, signingKey, clientId, clientSecret } = this.options;
    if (privateJwk || signingKey) {
      let key: { key: CryptoKey | KeyObject; alg: JwsAlg; kid: string | undefined };
      if (signingKey) key = signingKey;
      else {
        this.#signingKey ??= importJWK(privateJwk!, privateJwk!.alg) as Promise<CryptoKey>;
        key = { key: await this.#signingKey, alg: privateJwk!.alg as JwsAlg, kid: privateJwk!.kid };
      }
      const now = Math.floor((this.options.now ?? Date.now)() / 1000);
      const assertion = await signJwt(
        { iss: clientId, sub: clientId, aud: this.options.issuer, jti: randomUUID(), iat: now, exp: now + 60 },
        { typ: 'JWT', alg: key.alg, key: key.key, kid: key.kid },
      );
      body.set('client_id', clientId);
      body.set('client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
      body.set('client_assertion', assertion);
    } else {
      headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret!)}`).toString('base64')}`;
    }
  }
}

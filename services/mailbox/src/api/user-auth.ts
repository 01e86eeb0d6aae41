/**
 * Authentication of the client API (webmail, CLI): access tokens from the domain's own AS, verified as
 * RFC 9068 JWTs (`typ: at+jwt`, issuer, audience = this mailbox's resource, expiry, `scope` mailbox) and
 * bound to the caller's key by DPoP (RFC 9449 §7: `cnf.jkt` equals the proof's key thumbprint, `ath` is the
 * token's hash, `htm`/`htu` this request as addressed at the mailbox's public URL). Errors become
 * `401` with `WWW-Authenticate: DPoP error=...` at the edge.
 */
import type { NextFunction, Request, Response } from 'express';
import type { JWSHeaderParameters, JWK } from 'jose';
import {
  JWT_TYPES,
  ProtocolError,
  keyFromJwks,
  verifyDpopProof,
  verifyJwt,
  type HttpGet,
  type ReplayStore,
  type VerificationKey,
} from '@federizer/protocol';

export interface AuthenticatedUser {
  /** The account's address (the token's `sub`). */
  readonly address: string;
  readonly clientId: string;
  readonly scopes: ReadonlySet<string>;
  readonly expiresAt: number;
}

declare module 'express-serve-static-core' {
  interface Request {
    user?: AuthenticatedUser;
  }
}

/** The JWKS of one issuer, fetched from its RFC 8414 metadata, refetched at most once a minute on an unknown kid. */
export class IssuerKeys {
  #jwks: { keys: JWK[] } | undefined;
  #fetchedAt = 0;
  #loading: Promise<{ keys: JWK[] }> | undefined;
  readonly #keys = new Map<string, Promise<VerificationKey>>();

  constructor(
    private readonly issuer: string,
    private readonly httpGet: HttpGet,
    private readonly now: () => number = Date.now,
  ) {}

  async keyFor(header: JWSHeaderParameters): Promise<VerificationKey> {
    const cacheKey = `${String(header.kid)} ${String(header.alg)}`;
    const cached = this.#keys.get(cacheKey);
    if (cached) return cached;
    let jwks = this.#jwks ?? (await this.#load());
    try {
      return await this.#import(cacheKey, jwks, header);
    } catch (e) {
      if (!(e instanceof ProtocolError) || e.code !== 'unknown_key' || this.now() - this.#fetchedAt < 60_000) throw e;
      jwks = await this.#load();
      return this.#import(cacheKey, jwks, header);
    }
  }

  async #import(cacheKey: string, jwks: { keys: JWK[] }, header: JWSHeaderParameters): Promise<VerificationKey> {
    const key = keyFromJwks(jwks, header);
    this.#keys.set(cacheKey, key);
    key.catch(() => this.#keys.delete(cacheKey));
    return key;
  }

  #load(): Promise<{ keys: JWK[] }> {
    this.#loading ??= (async () => {
      try {
        const metadata = await this.#json(`${this.issuer}/.well-known/oauth-authorization-server`);
        if (metadata.issuer !== this.issuer || typeof metadata.jwks_uri !== 'string') {
          throw new ProtocolError(
            'discovery_invalid_metadata',
            `${this.issuer}: the metadata names another issuer or no jwks_uri`,
          );
        }
        const jwks = (await this.#json(metadata.jwks_uri)) as { keys?: unknown };
        if (!Array.isArray(jwks.keys))
          throw new ProtocolError('discovery_invalid_metadata', `${metadata.jwks_uri}: no keys`);
        this.#jwks = { keys: jwks.keys as JWK[] };
        this.#fetchedAt = this.now();
        return this.#jwks;
      } finally {
        this.#loading = undefined;
      }
    })();
    return this.#loading;
  }

  /** A document of the AS; any failure to get it is `discovery_failed` (the AS did not answer: try later). */
  async #json(url: string): Promise<Record<string, unknown>> {
    try {
      const res = await this.httpGet(url, { redirect: 'manual', headers: { accept: 'application/json' } });
      if (res.status !== 200) throw new ProtocolError('discovery_failed', `${url}: HTTP ${res.status}`);
      return (await res.json()) as Record<string, unknown>;
    } catch (e) {
      if (e instanceof ProtocolError) throw e;
      throw new ProtocolError('discovery_failed', `${url}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
    }
  }
}

export interface UserAuthOptions {
  readonly issuer: string;
  /** The resource indicator of the client API: the `aud` of the tokens. */
  readonly resource: string;
  /** The public base URL of this mailbox; `htu` is checked against it, never against the Host header. */
  readonly publicUrl: string;
  readonly keys: IssuerKeys;
  readonly replay: ReplayStore;
  readonly now?: () => number;
}

export class UnauthorizedError extends Error {
  override readonly name = 'UnauthorizedError';
  constructor(
    readonly error: 'invalid_token' | 'invalid_dpop_proof' | 'insufficient_scope' | 'invalid_request',
    message: string,
  ) {
    super(message);
  }
}

/**
 * The token or proof could not be checked at all: this mailbox's AS did not answer for its keys, or the DPoP
 * replay store failed. Nothing was found wrong with the request, so it is not a 401 (the webmail would take
 * it for an expired session) but a 503 to retry.
 */
export class AuthUnavailableError extends Error {
  override readonly name = 'AuthUnavailableError';
}

/** Seconds a client waits after an AuthUnavailableError: a restart of the AS or a database failover. */
const AUTH_RETRY_AFTER_SECONDS = 5;

/** A refusal when the check found the request wrong; AuthUnavailableError when it could not check at all. */
function refusal(e: unknown, error: UnauthorizedError['error'], what: string): Error {
  if (!(e instanceof ProtocolError) || e.code === 'discovery_failed')
    return new AuthUnavailableError(`${what} could not be checked now: ${(e as Error)?.message ?? String(e)}`, {
      cause: e,
    });
  return new UnauthorizedError(error, `${what}: ${e.message}`);
}

/** Express middleware: sets `req.user`, or answers 401 with a DPoP challenge (RFC 9449 §7.1). */
export function requireUser(options: UserAuthOptions) {
  const now = options.now ?? Date.now;
  const publicUrl = options.publicUrl.replace(/\/$/, '');
  return async (req: Request, res: Response, next: NextFunction) => {
    try {
      req.user = await authenticate(req, options, publicUrl, Math.floor(now() / 1000));
      next();
    } catch (e) {
      if (e instanceof AuthUnavailableError) {
        return void res
          .status(503)
          .set({ 'Retry-After': String(AUTH_RETRY_AFTER_SECONDS), 'Cache-Control': 'no-store' })
          .json({ error: 'temporarily_unavailable', error_description: e.message });
      }
      if (!(e instanceof UnauthorizedError)) return next(e);
      answerUnauthorized(res, e);
    }
  };
}

/** The answer to a refused token or proof: 401 (400, 403) with its DPoP challenge (RFC 9449 §7.1). */
export function answerUnauthorized(res: Response, e: UnauthorizedError): void {
  const status = e.error === 'insufficient_scope' ? 403 : e.error === 'invalid_request' ? 400 : 401;
  res
    .status(status)
    .set(
      'WWW-Authenticate',
      `DPoP algs="ES256 EdDSA RS256", error="${e.error}", error_description="${e.message.replace(/["\\]/g, "'")}"`,
    )
    .json({ error: e.error, error_description: e.message });
}

async function authenticate(
  req: Request,
  options: UserAuthOptions,
  publicUrl: string,
  now: number,
): Promise<AuthenticatedUser> {
  const authorization = req.get('authorization') ?? '';
  const m = /^DPoP\s+([A-Za-z0-9_.-]+)$/i.exec(authorization);
  if (!m) {
    throw new UnauthorizedError(
      'invalid_token',
      authorization === ''
        ? 'this API needs Authorization: DPoP <access token>'
        : 'the Authorization header is not "DPoP <token>"',
    );
  }
  const token = m[1]!;
  let payload;
  try {
    ({ payload } = await verifyJwt(token, {
      typ: JWT_TYPES.accessToken,
      key: (header) => options.keys.keyFor(header),
      now,
      issuer: options.issuer,
      audience: options.resource,
    }));
  } catch (e) {
    throw refusal(e, 'invalid_token', 'access token');
  }
  const jkt = (payload.cnf as { jkt?: unknown } | undefined)?.jkt;
  if (typeof jkt !== 'string')
    throw new UnauthorizedError('invalid_token', 'the access token is not DPoP-bound (no cnf.jkt)');
  const proof = req.get('dpop');
  if (!proof) throw new UnauthorizedError('invalid_dpop_proof', 'a DPoP proof is required with a DPoP-bound token');
  try {
    await verifyDpopProof(proof, {
      htm: req.method,
      htu: `${publicUrl}${req.originalUrl}`,
      accessToken: token,
      expectedJkt: jkt,
      now,
      replay: options.replay,
    });
  } catch (e) {
    throw refusal(e, 'invalid_dpop_proof', 'DPoP proof');
  }
  const scopes = new Set(typeof payload.scope === 'string' ? payload.scope.split(' ') : []);
  if (!scopes.has('mailbox'))
    throw new UnauthorizedError('insufficient_scope', 'the access token does not carry the mailbox scope');
  if (typeof payload.sub !== 'string' || payload.sub === '')
    throw new UnauthorizedError('invalid_token', 'the access token names no user');
  return { address: payload.sub, clientId: String(payload.client_id ?? ''), scopes, expiresAt: Number(payload.exp) };
}

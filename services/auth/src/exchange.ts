/**
 * The three token exchanges of the protocol (RFC 8693), registered as one grant type on oidc-provider:
 *
 * | exchange | subject_token_type | requested_token_type | issues |
 * | send (§4.4–4.6)   | access_token (the user's) | jwt          | an `eh+jwt` assertion, origin `ehl` |
 * | forward (§7)      | jwt (the newest assertion) | jwt         | an `eh+jwt` assertion, forward `ehl` |
 * | fetch (§6.1)      | jwt (the newest assertion) | access_token | an RFC 9068 `at+jwt` for the origin mailbox |
 *
 * Each check is a small named function that throws an ExchangeError carrying the OAuth error code and a
 * precise description; the order is the protocol's. A subject token that is invalid for any reason, or not
 * acceptable by policy for this request (another user's From, a JWT-Assertion-Digest of another token, a
 * Forwarded-From who is no user here), is `invalid_request`, as RFC 8693 §2.2.2 requires of a token
 * exchange, never RFC 6749's `invalid_grant`. DPoP is verified here with the protocol library (the
 * provider's own DPoP helpers are internal) and its jti recorded in the database, so a proof replayed
 * against another replica or after a restart is still refused.
 */
import { randomUUID } from 'node:crypto';
import type { JWTPayload } from 'jose';
import { errors, type KoaContextWithOIDC } from 'oidc-provider';
import {
  FORWARD_EHL,
  JWT_TYPES,
  ORIGIN_EHL,
  ProtocolError,
  SCOPE,
  assertionDigest,
  decodeJwt,
  domainOf,
  isB64uSha256,
  isMsgId,
  normalizeAddress,
  parseJsonStrict,
  parseSingleMailbox,
  signAssertion,
  signJwt,
  verifyAssertion,
  verifyDpopProof,
  verifyJwt,
  type Header,
  type ReplayStore,
  type TrustResolver,
} from '@federizer/protocol';
import type { AuthConfig } from './config.js';
import type { KeyRing } from './keys.js';
import type { User, UserStore } from './storage/users.js';

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const TOKEN_TYPE = {
  accessToken: 'urn:ietf:params:oauth:token-type:access_token',
  jwt: 'urn:ietf:params:oauth:token-type:jwt',
} as const;

/** Parameters the grant reads; oidc-provider strips any other (ARCHITECTURE.md, known pitfalls). */
export const EXCHANGE_PARAMS = [
  'subject_token',
  'subject_token_type',
  'requested_token_type',
  'scope',
  'headers',
  'audience',
  'resource',
  'message_id',
  'sender_domain',
  'forward_type',
] as const;

export type ExchangeKind = 'send' | 'fetch' | 'forward';

/** An OAuth error answer of the token endpoint; oidc-provider renders `error` and `error_description`. */
export class ExchangeError extends errors.OIDCProviderError {
  override readonly error_description: string;
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    error: string,
    description: string,
    options: { status?: number; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(options.status ?? 400, error, options.cause === undefined ? undefined : { cause: options.cause });
    this.error_description = description;
    this.headers = options.headers ?? {};
    // Every exchange refusal is deliberate and worded for the caller; oidc-provider would otherwise turn a
    // 5xx (503 temporarily_unavailable) into an opaque server_error.
    this.expose = true;
  }
}

export interface ExchangeDeps {
  readonly config: AuthConfig;
  readonly keys: () => KeyRing;
  readonly users: UserStore;
  readonly replay: ReplayStore;
  readonly trust: TrustResolver;
  /**
   * The user a send exchange's access token names, and whether the grant it was issued under still stands
   * (not revoked by sign-out or refresh-token reuse), in one read. Asked when `sendUnderGrant` refused a
   * send, so that the answer says which check failed.
   */
  readonly subject: (address: string, grantId: string) => Promise<{ user: User | undefined; grantActive: boolean }>;
  /**
   * A send exchange's subject check and quota in one step, for when nothing refuses: counts one send against
   * today's quota (the UTC day of `now`) of the user `address` if that user exists and is enabled, has a send
   * left, and the grant `grantId` still stands. False when any of that fails, with nothing counted; `subject`
   * and `users.consumeSendQuota` then tell which check refuses.
   */
  readonly sendUnderGrant: (address: string, grantId: string, now: Date) => Promise<boolean>;
  readonly now: () => number;
  readonly onIssued?: (kind: ExchangeKind) => void;
}

interface Request {
  readonly ctx: KoaContextWithOIDC;
  readonly params: Readonly<Record<string, string | undefined>>;
  readonly now: number;
  /** The users' access tokens the handler serving this request has verified. */
  readonly userTokens?: VerifiedTokens;
}

/**
 * Users' access tokens this AS has verified, by their exact text. A user's token serves every send until it
 * expires, and checking its signature again gives the same answer (the same bytes under the same key), so it
 * is checked once. Only the time claims can change the answer: they are checked on every use, and a token
 * past them is verified in full again, which gives the precise refusal. A cache lives as long as the exchange
 * handler that holds it, which the service rebuilds with the provider whenever the signing keys change, so a
 * token is never accepted here by a key that is no longer published. Bounded; the oldest entry goes first.
 */
export class VerifiedTokens {
  readonly #payloads = new Map<string, JWTPayload>();

  constructor(readonly maxEntries: number) {}

  /** The token's claims if it was verified and its time claims still hold at `now` (unix seconds). */
  get(token: string, now: number): JWTPayload | undefined {
    const payload = this.#payloads.get(token);
    if (payload === undefined) return undefined;
    if (withinTimeClaims(payload, now)) return payload;
    this.#payloads.delete(token);
    return undefined;
  }

  add(token: string, payload: JWTPayload): void {
    if (this.#payloads.size >= this.maxEntries) this.#payloads.delete(this.#payloads.keys().next().value!);
    this.#payloads.set(token, Object.freeze({ ...payload }));
  }

  get size(): number {
    return this.#payloads.size;
  }
}

/** The time checks `verifyUserTokenJwt` makes (no clock tolerance): before `exp`, and `iat`, `nbf` not ahead. */
function withinTimeClaims(payload: JWTPayload, now: number): boolean {
  const { exp, iat, nbf } = payload;
  return (
    typeof exp === 'number' &&
    now < exp &&
    (iat === undefined || (typeof iat === 'number' && iat <= now)) &&
    (nbf === undefined || (typeof nbf === 'number' && nbf <= now))
  );
}

/** Tokens of users signed in at once that a handler remembers (about a kilobyte each). */
const VERIFIED_USER_TOKENS = 1000;

function param(ctx: KoaContextWithOIDC, name: string): string | undefined {
  const value = (ctx.oidc.params as Record<string, unknown> | undefined)?.[name];
  return typeof value === 'string' && value !== '' ? value : undefined;
}

/** §4.5, §6.1, §7: only the domain's own MTA may exchange. */
export function requireMta(ctx: KoaContextWithOIDC, deps: ExchangeDeps): void {
  const clientId = ctx.oidc.client?.clientId;
  if (clientId !== deps.config.mta.clientId) {
    throw new ExchangeError(
      'unauthorized_client',
      `only the domain's MTA (${deps.config.mta.clientId}) may use the token exchange, not ${clientId}`,
    );
  }
}

/** Which exchange this is, from the two token types (RFC 8693 §2.1). */
export function exchangeKind(req: Request): ExchangeKind {
  const subject = req.params.subject_token_type;
  const requested = req.params.requested_token_type;
  if (req.params.subject_token === undefined) throw new ExchangeError('invalid_request', 'subject_token is required');
  if (subject === undefined) throw new ExchangeError('invalid_request', 'subject_token_type is required');
  if (requested === undefined) throw new ExchangeError('invalid_request', 'requested_token_type is required');
  if (subject === TOKEN_TYPE.accessToken && requested === TOKEN_TYPE.jwt) return 'send';
  if (subject === TOKEN_TYPE.jwt && requested === TOKEN_TYPE.jwt) return 'forward';
  if (subject === TOKEN_TYPE.jwt && requested === TOKEN_TYPE.accessToken) return 'fetch';
  throw new ExchangeError(
    'invalid_request',
    `no exchange from ${subject} to ${requested}: send is access_token → jwt, forward jwt → jwt, fetch jwt → access_token`,
  );
}

export function requireScope(req: Request): void {
  const scope = req.params.scope;
  if (scope !== SCOPE)
    throw new ExchangeError(
      'invalid_scope',
      `scope must be ${SCOPE}${scope === undefined ? '' : `, not ${JSON.stringify(scope)}`}`,
    );
}

/** RFC 9449: a fresh proof for this request; its thumbprint becomes the issued token's `cnf.jkt`. */
export async function verifyProof(req: Request, deps: ExchangeDeps): Promise<string> {
  const proof = req.ctx.get('DPoP');
  if (proof === '')
    throw new ExchangeError('invalid_dpop_proof', 'the token exchange requires a DPoP proof (RFC 9449)');
  try {
    // htu is compared with the token endpoint this AS publishes, never with one derived from the request's
    // Host or X-Forwarded-Host, which a caller controls (docs/protocol.md §10.2).
    const verified = await verifyDpopProof(proof, {
      htm: 'POST',
      htu: `${deps.config.issuer}/token`,
      now: Math.floor(req.now / 1000),
      replay: deps.replay,
    });
    return verified.jkt;
  } catch (e) {
    if (e instanceof ProtocolError) {
      throw new ExchangeError('invalid_dpop_proof', `DPoP proof: ${e.message}`, { cause: e });
    }
    // The replay store (the database) failed: nothing is known against the proof, so the caller asks again
    // later (RFC 6749 §4.1.2.1 temporarily_unavailable, 503) rather than take a refusal of its request.
    throw new ExchangeError('temporarily_unavailable', 'the DPoP proof could not be checked now; try again later', {
      status: 503,
      headers: { 'Retry-After': String(RETRY_AFTER_SECONDS) },
      cause: e,
    });
  }
}

/** §4.5: the user's access token, valid, unexpired, issued by this AS for the mailbox (its signature and claims). */
export async function verifyUserTokenJwt(req: Request, deps: ExchangeDeps): Promise<JWTPayload> {
  const token = req.params.subject_token!;
  const now = Math.floor(req.now / 1000);
  const known = req.userTokens?.get(token, now);
  if (known !== undefined) return known;
  try {
    const { payload } = await verifyJwt(token, {
      typ: JWT_TYPES.accessToken,
      key: (header) => deps.keys().verificationKey(header),
      now,
      clockToleranceSeconds: 0,
      issuer: deps.config.issuer,
      audience: deps.config.mailboxResource,
    });
    req.userTokens?.add(token, payload);
    return payload;
  } catch (e) {
    throw new ExchangeError('invalid_request', `subject_token: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * §4.5: the user the verified access token names, known and enabled, and the grant it was issued under not
 * revoked. The user is told first: disabling or deleting a user also ends their grants (endSignIns), and
 * "disabled" says more than "revoked" to whoever reads the refusal.
 */
export async function tokenUser(payload: JWTPayload, deps: ExchangeDeps): Promise<User> {
  const revoked = () =>
    new ExchangeError('invalid_request', 'subject_token: the grant it was issued under was revoked');
  if (typeof payload.gid !== 'string') throw revoked();
  const { user, grantActive } = await deps.subject(typeof payload.sub === 'string' ? payload.sub : '', payload.gid);
  if (user === undefined || user.disabled)
    throw new ExchangeError('invalid_request', `subject_token: the user ${String(payload.sub)} is unknown or disabled`);
  if (!grantActive) throw revoked();
  return user;
}

/** §4.4, §7: `headers` is a JSON array of one-key header objects with exactly the names of `ehl`. */
export function exchangeHeaders(req: Request, ehl: readonly string[]): Header[] {
  const raw = req.params.headers;
  if (raw === undefined)
    throw new ExchangeError(
      'invalid_request',
      `headers is required: a JSON array of the ${ehl.join(', ')} header objects`,
    );
  let value: unknown;
  try {
    value = parseJsonStrict(raw, 4);
  } catch (e) {
    throw new ExchangeError('invalid_request', `headers: ${(e as Error).message}`);
  }
  const ok =
    Array.isArray(value) &&
    value.every(
      (h) =>
        h !== null &&
        typeof h === 'object' &&
        !Array.isArray(h) &&
        Object.keys(h).length === 1 &&
        typeof Object.values(h)[0] === 'string',
    );
  if (!ok)
    throw new ExchangeError(
      'invalid_request',
      'headers must be an array of objects with exactly one string member each',
    );
  const names = (value as Header[]).map((h) => Object.keys(h)[0]);
  if (names.length !== ehl.length || names.some((n, i) => n !== ehl[i])) {
    throw new ExchangeError(
      'invalid_request',
      `headers must name exactly ${JSON.stringify(ehl)} in that order, not ${JSON.stringify(names)}`,
    );
  }
  return value as Header[];
}

function headerText(headers: Header[], name: string): string {
  return headers.find((h) => Object.hasOwn(h, name))![name] as string;
}

function requireDigest(headers: Header[], name: string): void {
  const value = headerText(headers, name);
  if (!(value.startsWith('<') && value.endsWith('>') && isB64uSha256(value.slice(1, -1)))) {
    throw new ExchangeError('invalid_request', `${name} must be a digest value <43 base64url characters>`);
  }
}

/** §4.5: the addr-spec of From is the user's address. */
export function requireFromIsUser(headers: Header[], user: Pick<User, 'address'>): void {
  let from: string;
  try {
    from = normalizeAddress(parseSingleMailbox(headerText(headers, 'From')).address);
  } catch (e) {
    throw new ExchangeError('invalid_request', `From: ${(e as Error).message}`);
  }
  if (from !== user.address)
    throw new ExchangeError('invalid_request', `From ${from} is not the address of the signed-in user ${user.address}`);
}

/** §4.5: the Message-ID is of this AS's domain. */
export function requireOwnMessageId(headers: Header[], deps: ExchangeDeps): void {
  const id = requireMsgId(headerText(headers, 'Message-ID'), 'Message-ID');
  const domain = domainOf(id.slice(1, -1));
  if (domain !== deps.config.domain) {
    throw new ExchangeError(
      'invalid_request',
      `the Message-ID domain ${domain} is not ${deps.config.domain}, this server's domain`,
    );
  }
}

/** §4.5, §7: within the user's send quota. */
export async function consumeQuota(user: User, req: Request, deps: ExchangeDeps): Promise<void> {
  const { allowed, used, limit } = await deps.users.consumeSendQuota(user, 1, new Date(req.now));
  if (!allowed) {
    const midnight = new Date(req.now);
    midnight.setUTCHours(24, 0, 0, 0);
    throw new ExchangeError(
      'quota_exceeded',
      `${user.address} has used ${used} of ${limit} sends allowed today (UTC)`,
      {
        status: 429,
        headers: { 'Retry-After': String(Math.ceil((midnight.getTime() - req.now) / 1000)) },
      },
    );
  }
}

/** §6.1, §7: a foreign (or own) assertion, verified through DNS as a transfer verifies it (§5.2–5.5, §5.7). */
export async function verifySubjectAssertion(req: Request, deps: ExchangeDeps, senderDomain: string): Promise<void> {
  const token = req.params.subject_token!;
  let ehl: readonly string[] = ORIGIN_EHL;
  try {
    const claimed = (decodeJwt(token).payload.eh as { ehl?: unknown } | undefined)?.ehl;
    if (Array.isArray(claimed) && claimed[1] === 'Forwarded-From') ehl = FORWARD_EHL;
    await verifyAssertion(token, {
      trust: deps.trust,
      now: Math.floor(req.now / 1000),
      senderDomain,
      expectedEhl: ehl,
      checkExpiry: true,
    });
  } catch (e) {
    const reason = e instanceof ProtocolError ? `${e.message} (${e.code})` : (e as Error).message;
    // The sender's domain could not be asked (its DNS, AS or JWKS did not answer): nothing is known against
    // the assertion yet, so the caller should try again later rather than give the message up (RFC 6749
    // §4.1.2.1 temporarily_unavailable, with HTTP 503 as RFC 9110 §15.6.4 has it).
    if (e instanceof ProtocolError && e.code === 'discovery_failed') {
      throw new ExchangeError('temporarily_unavailable', `subject_token: ${reason}`, {
        status: 503,
        headers: { 'Retry-After': String(RETRY_AFTER_SECONDS) },
        cause: e,
      });
    }
    throw new ExchangeError('invalid_request', `subject_token: ${reason}`, { cause: e });
  }
}

/**
 * How soon a caller refused for a passing failure (the sender's domain did not answer, the replay store's
 * database failed) should ask again.
 */
const RETRY_AFTER_SECONDS = 30;

function senderDomainOf(req: Request, messageId: string): string {
  const explicit = req.params.sender_domain;
  if (explicit !== undefined) {
    if (!/^[a-z0-9.-]+$/i.test(explicit))
      throw new ExchangeError('invalid_request', 'sender_domain is not a domain name');
    return explicit.toLowerCase();
  }
  return domainOf(messageId.replace(/^<|>$/g, ''));
}

function requireMsgId(value: string | undefined, name: string): string {
  if (value === undefined) throw new ExchangeError('invalid_request', `${name} is required`);
  if (!isMsgId(value))
    throw new ExchangeError('invalid_request', `${name} ${JSON.stringify(value)} is not an RFC 5322 msg-id`);
  return value;
}

function requireAudience(req: Request, deps: ExchangeDeps): string {
  const audience = req.params.audience ?? req.params.resource;
  if (audience === undefined)
    throw new ExchangeError('invalid_target', "audience is required: the origin mailbox's resource");
  let url: URL;
  try {
    url = new URL(audience);
  } catch {
    throw new ExchangeError('invalid_target', `audience ${JSON.stringify(audience)} is not an absolute URL`);
  }
  if (url.protocol !== 'https:' && !(deps.config.dev && url.protocol === 'http:')) {
    throw new ExchangeError('invalid_target', `audience must be an https URL: ${audience}`);
  }
  return audience;
}

async function issueAssertion(
  req: Request,
  deps: ExchangeDeps,
  jkt: string,
  headers: Header[],
  ehl: readonly string[],
) {
  const key = deps.keys().current;
  const iat = Math.floor(req.now / 1000);
  const token = await signAssertion(
    {
      iss: deps.config.issuer,
      azp: deps.config.mta.clientId,
      jkt,
      headers,
      ehl,
      iat,
      shareWindowSeconds: deps.config.shareWindowSeconds,
      jti: randomUUID(),
    },
    { key: key.privateKey, alg: key.alg, kid: key.kid },
  );
  return {
    access_token: token,
    issued_token_type: TOKEN_TYPE.jwt,
    token_type: 'N_A',
    expires_in: deps.config.shareWindowSeconds,
  };
}

/** §4.4–4.5: the headers of a send exchange, checked against the address of the user sending. */
function sendHeaders(req: Request, deps: ExchangeDeps, user: Pick<User, 'address'>): Header[] {
  const headers = exchangeHeaders(req, ORIGIN_EHL);
  requireFromIsUser(headers, user);
  requireOwnMessageId(headers, deps);
  requireDigest(headers, 'Recipients-Digest');
  requireDigest(headers, 'Body-Digest');
  return headers;
}

/**
 * The headers of a send that nothing refuses, with its send counted, in one database statement; undefined
 * when anything would refuse it. The request checks need only the user's address, which is the token's
 * `sub` (the AS issues tokens for `users.address`, stored lower-cased). Nothing is thrown here, so that a
 * refused send is answered by the checks one by one, in the protocol's order, as if this had not run.
 */
async function admittedSend(req: Request, deps: ExchangeDeps, payload: JWTPayload): Promise<Header[] | undefined> {
  if (typeof payload.sub !== 'string' || typeof payload.gid !== 'string') return undefined;
  let headers: Header[];
  try {
    headers = sendHeaders(req, deps, { address: normalizeAddress(payload.sub) });
  } catch {
    return undefined;
  }
  return (await deps.sendUnderGrant(payload.sub, payload.gid, new Date(req.now))) ? headers : undefined;
}

async function send(req: Request, deps: ExchangeDeps, jkt: string) {
  const payload = await verifyUserTokenJwt(req, deps);
  const admitted = await admittedSend(req, deps, payload);
  if (admitted !== undefined) return issueAssertion(req, deps, jkt, admitted, ORIGIN_EHL);
  // Something refuses: the subject first, then the request, then the quota (§4.5), each with its own answer.
  const user = await tokenUser(payload, deps);
  const headers = sendHeaders(req, deps, user);
  await consumeQuota(user, req, deps);
  return issueAssertion(req, deps, jkt, headers, ORIGIN_EHL);
}

async function forward(req: Request, deps: ExchangeDeps, jkt: string) {
  const headers = exchangeHeaders(req, FORWARD_EHL);
  const messageId = requireMsgId(headerText(headers, 'Message-ID'), 'Message-ID');
  requireDigest(headers, 'Recipients-Digest');
  if (headerText(headers, 'JWT-Assertion-Digest') !== assertionDigest(req.params.subject_token!)) {
    throw new ExchangeError('invalid_request', 'JWT-Assertion-Digest is not the digest of subject_token');
  }
  await verifySubjectAssertion(req, deps, senderDomainOf(req, messageId));
  const user = await forwardingUser(headers, req, deps);
  await consumeQuota(user, req, deps);
  return issueAssertion(req, deps, jkt, headers, FORWARD_EHL);
}

/** §7: Forwarded-From is this AS's user, and the forwarding policy allows this kind of forward. */
async function forwardingUser(headers: Header[], req: Request, deps: ExchangeDeps): Promise<User> {
  let address: string;
  try {
    address = normalizeAddress(parseSingleMailbox(headerText(headers, 'Forwarded-From')).address);
  } catch (e) {
    throw new ExchangeError('invalid_request', `Forwarded-From: ${(e as Error).message}`);
  }
  const user = domainOf(address) === deps.config.domain ? await deps.users.get(address) : undefined;
  if (user === undefined || user.disabled)
    throw new ExchangeError('invalid_request', `Forwarded-From ${address} is not a user of ${deps.config.domain}`);
  const type = req.params.forward_type ?? 'auto';
  if (type !== 'auto' && type !== 'manual')
    throw new ExchangeError('invalid_request', 'forward_type must be manual or auto');
  const allowed = user.forwardingPolicy === 'any' || (user.forwardingPolicy === 'manual' && type === 'manual');
  if (!allowed) {
    throw new ExchangeError(
      'access_denied',
      `the forwarding policy of ${address} (${user.forwardingPolicy}) does not allow ${type === 'auto' ? 'automatic ' : ''}forwarding`,
    );
  }
  return user;
}

async function fetch(req: Request, deps: ExchangeDeps, jkt: string) {
  const audience = requireAudience(req, deps);
  const messageId = requireMsgId(req.params.message_id, 'message_id');
  await verifySubjectAssertion(req, deps, senderDomainOf(req, messageId));
  const key = deps.keys().current;
  const iat = Math.floor(req.now / 1000);
  const mta = deps.config.mta.clientId;
  const token = await signJwt(
    {
      iss: deps.config.issuer,
      aud: audience,
      azp: mta,
      client_id: mta,
      sub: mta,
      scope: SCOPE,
      message_id: messageId,
      cnf: { jkt },
      iat,
      exp: iat + deps.config.fetchAccessTokenSeconds,
      jti: randomUUID(),
    },
    { typ: JWT_TYPES.accessToken, alg: key.alg, key: key.privateKey, kid: key.kid },
  );
  return {
    access_token: token,
    issued_token_type: TOKEN_TYPE.accessToken,
    token_type: 'DPoP',
    expires_in: deps.config.fetchAccessTokenSeconds,
  };
}

const HANDLERS = { send, forward, fetch } as const;

/** The grant handler oidc-provider calls with the authenticated client in `ctx.oidc.client`. */
export function tokenExchangeHandler(deps: ExchangeDeps) {
  const userTokens = new VerifiedTokens(VERIFIED_USER_TOKENS);
  return async (ctx: KoaContextWithOIDC): Promise<void> => {
    const params = Object.fromEntries(EXCHANGE_PARAMS.map((name) => [name, param(ctx, name)]));
    const req: Request = { ctx, params, now: deps.now(), userTokens };
    try {
      requireMta(ctx, deps);
      const kind = exchangeKind(req);
      requireScope(req);
      const jkt = await verifyProof(req, deps);
      ctx.body = await HANDLERS[kind](req, deps, jkt);
      deps.onIssued?.(kind);
    } catch (e) {
      if (e instanceof ExchangeError) for (const [name, value] of Object.entries(e.headers)) ctx.set(name, value);
      throw e;
    }
  };
}

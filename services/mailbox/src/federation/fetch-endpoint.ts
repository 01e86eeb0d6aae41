/**
 * The fetch endpoint of an origin mailbox (PROTOCOL.md §6.2–6.4): another domain's MTA, holding an access
 * token from its own AS, presents the envelope it received and asks for one resource. Each check is a
 * named step with its own error, in the protocol's order; the answer streams the bytes with Range,
 * Repr-Digest (RFC 9530) and the resource's declared type.
 *
 * The checks ask DNS about the fetching domain (its issuer, its keys, its `mta_client_id`) and, for a
 * forwarded copy, about every hop's domain. When that domain does not answer (`discovery_failed`: a DNS
 * time-out or SERVFAIL, a refused connection, a 5xx), nothing is known against the request yet: the answer is
 * 503 `temporarily_unavailable` with Retry-After, which the fetcher retries, rather than a refusal it would
 * take as final. A definitive answer (no SRV record, another issuer, a bad signature) still refuses.
 *
 * Only a ProtocolError (the request broke a rule) refuses. Anything else (the database or the replay store
 * failing, a bug) says nothing about the request: it answers 503 `temporarily_unavailable` with Retry-After
 * too, never a 401 or 403 the fetcher would give the resource up for.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { JWTPayload } from 'jose';
import {
  ALLOWED_ALGS,
  JWT_TYPES,
  ProtocolError,
  assertAllowedAlg,
  assertionDigest,
  checkForbiddenHeaderParameters,
  decodeJwt,
  domainOf,
  findHeader,
  isHeadersBlock,
  jcsText,
  validateChain,
  validateMessage,
  verifyDpopProof,
  verifySignature,
  type Block,
  type ReplayStore,
  type TrustResolver,
} from '@federizer/protocol';
import { parseRange, type DiskBlobStore } from '../blobs/index.js';
import { DISCOVERY_RETRY_AFTER_SECONDS, INTERNAL_RETRY_AFTER_SECONDS } from './errors.js';
import { BodyError, jsonBody, leaves } from '../api/send.js';
import type { MessageStore, Share, ShareStore } from '../storage/index.js';

export interface FetchEndpointDeps {
  readonly publicUrl: string;
  readonly resource: string;
  readonly trust: TrustResolver;
  readonly replay: ReplayStore;
  readonly shares: ShareStore;
  readonly messages: MessageStore;
  readonly blobs: DiskBlobStore;
  readonly now: () => number;
  readonly onFetched?: (domain: string, bytes: number) => void;
  /** The sender's deliveries changed (marked fetched), for her long polls. */
  readonly onChanged?: (address: string) => void;
  /** An internal failure, answered 503: for the log. */
  readonly onError?: (err: unknown) => void;
}

export class FetchError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
    /** Seconds, for a 503. */
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

/** The fetching domain's records or metadata could not be read: try again later (PROTOCOL §11 `discovery_failed`). */
function unavailable(what: string, e: ProtocolError): FetchError {
  return new FetchError(
    503,
    'temporarily_unavailable',
    `${what}: ${e.message}; try again later`,
    DISCOVERY_RETRY_AFTER_SECONDS,
  );
}

function isDiscoveryOutage(e: unknown): e is ProtocolError {
  return e instanceof ProtocolError && e.code === 'discovery_failed';
}

/**
 * §7.5: the clock tolerance of assertions and access tokens, the one `validateChain` applies to the chain
 * (passed to it explicitly, so that the origin assertion's expiry is judged alike for every envelope).
 */
const CLOCK_TOLERANCE_SECONDS = 30;

/** The largest fetch request body: an envelope of a few hops is far smaller. */
const FETCH_BODY_LIMIT = 4 * 1024 * 1024;

/** RFC 1123 host name syntax, lower-cased: what discovery can ask DNS about. */
const DOMAIN = /^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$/;

interface FetchRequest {
  readonly envelope: readonly Block[];
  readonly contentId: string;
  readonly domain: string;
}

/** Step 1: the body is `{"envelope", "content_id", "domain"}` with a well-formed envelope. */
export function readRequest(body: unknown): FetchRequest {
  const b = body as { envelope?: unknown; content_id?: unknown; domain?: unknown } | undefined;
  if (typeof b?.content_id !== 'string' || typeof b.domain !== 'string' || !Array.isArray(b.envelope)) {
    throw new FetchError(
      400,
      'invalid_request',
      'the body is {"envelope": [...], "content_id": "<...>", "domain": "..."}',
    );
  }
  const domain = b.domain.toLowerCase();
  // Not left to discovery, whose refusal of a malformed name would read as a passing outage (503).
  if (!DOMAIN.test(domain))
    throw new FetchError(400, 'invalid_request', `domain ${JSON.stringify(b.domain)} is not a domain name`);
  try {
    validateMessage({ envelope: b.envelope, body: { parts: [] } });
  } catch (e) {
    throw new FetchError(400, 'invalid_message', (e as Error).message);
  }
  return { envelope: b.envelope as Block[], contentId: b.content_id, domain };
}

/** Steps 2–4: the access token the fetcher's AS issued (RFC 9068), bound to the DPoP proof of this request. */
export async function checkAccessToken(
  req: Request,
  fetch: FetchRequest,
  deps: FetchEndpointDeps,
): Promise<JWTPayload> {
  const m = /^DPoP\s+([A-Za-z0-9_.-]+)$/i.exec(req.get('authorization') ?? '');
  if (!m) throw new FetchError(401, 'invalid_token', 'the fetch needs Authorization: DPoP <access token>');
  const token = m[1]!;
  const now = Math.floor(deps.now() / 1000);
  let payload: JWTPayload;
  try {
    const { header, payload: claims, alg } = decodeAccessToken(token);
    // §6.3: iss is the issuer DNS names for the fetching domain; its key verifies the signature.
    const issuer = await deps.trust.issuerFor(fetch.domain);
    if (claims.iss !== issuer)
      throw new FetchError(
        401,
        'invalid_token',
        `iss ${String(claims.iss)} is not ${issuer}, the issuer of ${fetch.domain}`,
      );
    await verifySignature(token, await deps.trust.keyFor(issuer, header, fetch.domain), alg);
    payload = claims;
  } catch (e) {
    if (e instanceof FetchError) throw e;
    // The issuer or its JWKS did not answer: the token is neither accepted nor refused yet.
    if (isDiscoveryOutage(e)) throw unavailable(`the issuer of ${fetch.domain}`, e);
    if (!(e instanceof ProtocolError)) throw e;
    throw new FetchError(401, 'invalid_token', `access token: ${e.message}`);
  }
  if (typeof payload.exp !== 'number' || payload.exp <= now - CLOCK_TOLERANCE_SECONDS)
    throw new FetchError(401, 'invalid_token', 'the access token expired');
  const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
  if (!aud.includes(deps.resource))
    throw new FetchError(401, 'invalid_token', `the access token is not for ${deps.resource}`);
  if (
    !String(payload.scope ?? '')
      .split(' ')
      .includes('internet_mail')
  )
    throw new FetchError(401, 'invalid_token', 'scope must include internet_mail');
  const jkt = (payload.cnf as { jkt?: unknown } | undefined)?.jkt;
  if (typeof jkt !== 'string') throw new FetchError(401, 'invalid_token', 'the access token is not DPoP-bound');
  try {
    await verifyDpopProof(req.get('dpop') ?? '', {
      htm: 'POST',
      htu: `${deps.publicUrl}/federation/v1/fetch`,
      accessToken: token,
      expectedJkt: jkt,
      now,
      replay: deps.replay,
    });
  } catch (e) {
    // The replay store's database failing is not the proof's fault (503 below, not a final 401).
    if (!(e instanceof ProtocolError)) throw e;
    throw new FetchError(401, 'invalid_dpop_proof', `DPoP proof: ${e.message}`);
  }
  // §6.3 check 3: azp (and client_id) are the DNS-bound client identity of the fetching domain.
  let expectedAzp: string;
  try {
    expectedAzp = await deps.trust.mtaClientIdFor(fetch.domain);
  } catch (e) {
    if (isDiscoveryOutage(e)) throw unavailable(`the mailbox of ${fetch.domain}`, e);
    if (!(e instanceof ProtocolError)) throw e;
    throw new FetchError(401, 'invalid_token', `the MTA of ${fetch.domain}: ${e.message}`);
  }
  for (const claim of ['azp', 'client_id'] as const) {
    if (payload[claim] !== undefined && payload[claim] !== expectedAzp) {
      throw new FetchError(
        401,
        'invalid_token',
        `${claim} ${String(payload[claim])} is not ${expectedAzp}, the MTA of ${fetch.domain}`,
      );
    }
  }
  if (payload.azp === undefined) throw new FetchError(401, 'invalid_token', 'the access token names no azp');
  return payload;
}

/** The header rules every JWT of the protocol follows (allow-list, no key-choosing parameters), typ at+jwt. */
function decodeAccessToken(token: string) {
  const { header, payload } = decodeJwt(token);
  if (
    typeof header.typ !== 'string' ||
    header.typ.toLowerCase().replace(/^application\//, '') !== JWT_TYPES.accessToken
  ) {
    throw new ProtocolError(
      'invalid_typ',
      `an access token has typ ${JWT_TYPES.accessToken}, not ${String(header.typ)}`,
    );
  }
  const alg = assertAllowedAlg(header.alg, ALLOWED_ALGS);
  checkForbiddenHeaderParameters(header, false);
  return { header, payload, alg };
}

/** Step 5: the message is a stored copy whose origin block and assertion are the presented ones. */
export async function findShare(fetch: FetchRequest, payload: JWTPayload, deps: FetchEndpointDeps): Promise<Share> {
  const originAssertion = fetch.envelope.at(-2);
  const originBlock = fetch.envelope.at(-1);
  if (
    originAssertion === undefined ||
    isHeadersBlock(originAssertion) ||
    originBlock === undefined ||
    !isHeadersBlock(originBlock)
  ) {
    throw new FetchError(400, 'invalid_message', 'the envelope ends with the origin assertion and the origin block');
  }
  const messageId = findHeader(originBlock.headers, 'Message-ID')?.['Message-ID'];
  if (typeof payload.message_id !== 'string' || payload.message_id !== messageId) {
    throw new FetchError(403, 'access_denied', 'the access token was issued for another message');
  }
  const share = await deps.shares.findForFetch(messageId, assertionDigest(originAssertion['jwt-assertion']));
  const stored = share?.envelope;
  if (
    share === undefined ||
    stored === undefined ||
    jcsText(stored.at(-1)) !== jcsText(originBlock) ||
    jcsText(stored.at(-2)) !== jcsText(originAssertion)
  ) {
    throw new FetchError(404, 'unknown_message', 'no message of this mailbox has this origin block and assertion');
  }
  return share;
}

/**
 * §6.3 check 8, §7.5: the origin assertion A1 is the share, and a fetch needs it unexpired (with the clock
 * tolerance of §7.5), for a direct copy `[A1, H0]` as for a forwarded one: both answer 410 `share_expired`.
 * Checked before the chain, whose validation would refuse an expired A1 as a broken chain (403). `findShare`
 * found this A1 byte for byte among the copies this mailbox sent, so its `exp` is the one its AS signed.
 */
export function checkOriginUnexpired(fetch: FetchRequest, nowSeconds: number): void {
  const origin = fetch.envelope.at(-2) as { 'jwt-assertion': string };
  let exp: unknown;
  try {
    exp = decodeJwt(origin['jwt-assertion']).payload.exp;
  } catch (e) {
    throw new FetchError(400, 'invalid_message', `the origin assertion: ${(e as Error).message}`);
  }
  // A stored A1 always has a numeric exp; without one nothing shows the share still open.
  if (typeof exp !== 'number' || exp <= nowSeconds - CLOCK_TOLERANCE_SECONDS) {
    const when = typeof exp === 'number' ? ` at ${new Date(exp * 1000).toISOString()}` : '';
    throw new FetchError(410, 'share_expired', `the origin assertion of this message expired${when}`);
  }
}

/**
 * Steps 6–8: the origin assertion is unexpired, the chain discharges access to the fetching domain, the
 * resource is the message's, and the share is open for the domain the sender shared with: the fetcher's own
 * for a direct copy, or for a forwarded one the domain of the first forwarder (an origin recipient), whose
 * delivery it counts as.
 */
export async function checkAccess(
  fetch: FetchRequest,
  share: Share,
  deps: FetchEndpointDeps,
): Promise<{ size: number; mediaType: string; sharedWith: string }> {
  const now = deps.now();
  checkOriginUnexpired(fetch, Math.floor(now / 1000));
  let sharedWith = fetch.domain;
  if (fetch.envelope.length > 2) {
    let recipients: readonly string[];
    try {
      const chain = await validateChain(fetch.envelope, {
        trust: deps.trust,
        now: Math.floor(now / 1000),
        mode: 'fetch',
        clockToleranceSeconds: CLOCK_TOLERANCE_SECONDS,
      });
      recipients = chain.newest.recipients;
      sharedWith = chain.hops[1]!.senderDomain;
    } catch (e) {
      // A hop's domain did not answer: the chain is not known to fail, so the fetcher asks again later.
      if (isDiscoveryOutage(e)) throw unavailable('a domain of the forward chain', e);
      if (!(e instanceof ProtocolError)) throw e;
      throw new FetchError(403, 'invalid_chain', `the forward chain does not hold: ${e.message}`);
    }
    if (!recipients.map(domainOf).includes(fetch.domain))
      throw new FetchError(403, 'access_denied', `${fetch.domain} is not a recipient domain of the newest hop`);
  }
  if (!share.recipients.map(domainOf).includes(sharedWith))
    throw new FetchError(403, 'access_denied', `${sharedWith} is not a recipient domain of this message`);
  if (share.expiresAt <= now) throw new FetchError(410, 'share_expired', 'the share window of this message has ended');
  if (await deps.shares.isWithdrawn(share.id, sharedWith))
    throw new FetchError(410, 'withdrawn', 'the sender withdrew this message');
  const resource = await declaredResource(share, fetch.contentId, deps);
  if (resource === undefined)
    throw new FetchError(404, 'unknown_resource', `${fetch.contentId} is not referenced by this message`);
  if (!(await deps.blobs.has(fetch.contentId)))
    throw new FetchError(404, 'unknown_resource', `${fetch.contentId} is no longer held here`);
  return { ...resource, sharedWith };
}

/** The size and media type the sent message declares for the resource, or undefined when it has no such leaf. */
async function declaredResource(
  share: Share,
  contentId: string,
  deps: FetchEndpointDeps,
): Promise<{ size: number; mediaType: string } | undefined> {
  // Kept with the message's reference to it: the body is not read.
  const kept = await deps.messages.messageResource(share.address, share.message, contentId);
  if (kept === undefined) return undefined;
  if (kept.mediaType !== undefined) return { size: kept.size, mediaType: kept.mediaType };
  // A reference stored before its media type was kept (mailbox migration 0003): the body says it.
  const sent = await deps.messages.get(share.address, share.message);
  const leaf = sent ? leaves(sent.body).find((l) => l.contentId === contentId) : undefined;
  return leaf === undefined ? undefined : { size: leaf.size, mediaType: leaf.mediaType };
}

/**
 * The resources are the domain's now, whichever copy was presented (PROTOCOL §6.4: one fetch serves every
 * local recipient): the To/Cc copy and every Bcc copy of the message to that domain count as fetched, or
 * an unsend would claim to withdraw a message a Bcc recipient can already read. Withdrawn deliveries stay
 * withdrawn (`setDelivery` never moves them).
 */
async function markFetched(deps: FetchEndpointDeps, share: Share, domain: string, fetchedBy: string): Promise<void> {
  try {
    const copies = await deps.shares.sharesOf(share.message);
    let changed = 0;
    for (const copy of copies.filter((c) => c.recipients.map(domainOf).includes(domain))) {
      changed += await deps.shares.setDelivery(copy, { domain }, 'fetched', { fetchedBy });
    }
    if (changed > 0) deps.onChanged?.(share.address);
  } catch {
    // Only the sender's status view is behind; the next complete fetch of the message marks it again.
  }
}

export function fetchRouter(deps: FetchEndpointDeps): Router {
  const router = express.Router();
  // Strict (docs/protocol.md §2.7 rule 3, §12.1): a repeated member must not silently replace the first.
  const json = jsonBody({ limit: FETCH_BODY_LIMIT, tooLarge: 'a fetch request is at most 4 MiB', strict: true });
  router.post('/', json, async (req: Request, res: Response) => {
    try {
      const fetch = readRequest(req.body);
      const payload = await checkAccessToken(req, fetch, deps);
      const share = await findShare(fetch, payload, deps);
      const { size, mediaType, sharedWith } = await checkAccess(fetch, share, deps);
      const digest = fetch.contentId.slice(1, -1);
      const range = parseRange(req.get('range'), size);
      if (range.kind === 'unsatisfiable') {
        res
          .status(416)
          .set('Content-Range', `bytes */${size}`)
          .json({ error: 'range_not_satisfiable', error_description: `the resource has ${size} bytes` });
        return;
      }
      const slice = range.kind === 'range' ? range : undefined;
      const reader = await deps.blobs.openReader(fetch.contentId, slice);
      // §6.4: the media type the message declares, as it is: Express's res.set would add a charset to text/*.
      res.setHeader('Content-Type', mediaType);
      res.status(slice ? 206 : 200).set({
        'Content-Length': String(slice ? slice.end - slice.start + 1 : size),
        'Accept-Ranges': 'bytes',
        'Repr-Digest': `sha-256=:${Buffer.from(digest, 'base64url').toString('base64')}:`,
        'Cache-Control': 'no-store',
        ...(slice ? { 'Content-Range': `bytes ${slice.start}-${slice.end}/${size}` } : {}),
      });
      res.on('finish', () => {
        deps.onFetched?.(fetch.domain, slice ? slice.end - slice.start + 1 : size);
        if (!slice || slice.end === size - 1) void markFetched(deps, share, sharedWith, fetch.domain);
      });
      // A failure destroys the answer: the fetcher sees a short body and resumes with Range.
      reader.pipeTo(res).catch(() => undefined);
    } catch (e) {
      // An answer already begun cannot turn into an error: the fetcher sees a short body and retries.
      if (res.headersSent) return void res.destroy();
      if (!(e instanceof FetchError)) deps.onError?.(e);
      const failure =
        e instanceof FetchError
          ? e
          : new FetchError(
              503,
              'temporarily_unavailable',
              'this mailbox could not check the fetch now; try again later',
              INTERNAL_RETRY_AFTER_SECONDS,
            );
      if (failure.status === 401)
        res.set(
          'WWW-Authenticate',
          `DPoP error="${failure.error}", error_description="${failure.message.replace(/["\\]/g, "'")}"`,
        );
      if (failure.retryAfter !== undefined)
        res.set({ 'Retry-After': String(failure.retryAfter), 'Cache-Control': 'no-store' });
      res.status(failure.status).json({ error: failure.error, error_description: failure.message });
    }
  });
  // The JSON parser's failures (each a BodyError: not JSON, too large, another charset or content coding)
  // skip the handler above: each is answered with its own 4xx, never the 500 of an internal error.
  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (err instanceof BodyError) {
      // Already answered when the body was cut by the server itself (408 after the connection fell silent).
      if (res.headersSent) return;
      return void res.status(err.status).set(err.headers).json({ error: err.error, error_description: err.message });
    }
    next(err);
  });
  return router;
}

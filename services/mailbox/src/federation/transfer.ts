/**
 * The transfer endpoint (docs/protocol.md §5): another domain's MTA posts `{"message": Message}` with
 * `Authorization: DPoP <its newest assertion>` and a DPoP proof. The nine checks run in the protocol's order,
 * each a small named function that throws its own `TransferError` (status, `error`, protocol `code`, precise
 * description), turned into the answer once, in `sendTransferError`. On acceptance every accepted recipient's
 * mailbox stores the message under this domain's receive block, and one fetch job is queued per
 * Content-ID this domain does not hold yet (§6), unless every recipient only relays the message (§6.5).
 *
 * Mount it at `/federation/v1/transfer`, before any body parser: it reads the body itself, counting bytes as
 * they arrive, and parses it with the strict reader of §2.7 (duplicate member names refused).
 *
 * References follow the protocol's numbering: §5.N is check N of a transfer (docs/protocol.md §5.2 lists them);
 * the answers, idempotency and the receive block are docs/protocol.md §5.3, §5.4 and §5.5.
 */
import { createGunzip, createInflate } from 'node:zlib';
import express, { type Request, type Response, type Router } from 'express';
import type { JWSHeaderParameters, JWTPayload } from 'jose';
import {
  DEFAULT_LIMITS,
  FORWARD_EHL,
  ORIGIN_EHL,
  ProtocolError,
  chainStructure,
  checkAssertionClaims,
  checkAssertionHeader,
  checkAzp,
  checkBodyDigest,
  checkEht,
  checkIssuer,
  checkRecipientsDigest,
  domainOf,
  headerValue,
  isAssertionBlock,
  normalizeAddress,
  parseAddressList,
  parseDate,
  parseExternalBody,
  parseJsonStrict,
  parseSingleMailbox,
  receiveBlock,
  validateChain,
  validateMessage,
  verifyDpopProof,
  verifySignature,
  type AssertionClaims,
  type Block,
  type Body,
  type Header,
  type JwsAlg,
  type MailboxMetadata,
  type Message,
  type Part,
  type ReplayStore,
  type TrustResolver,
} from '@federizer/protocol';
import type { AccountStore } from '../storage/accounts.js';
import type { JobQueue } from '../storage/jobs.js';
import type { MessageStore } from '../storage/messages.js';
import type { TransferLog } from '../storage/transfers.js';
import {
  TRANSFER_CODINGS,
  TransferError,
  during,
  duringSync,
  fromProtocolError,
  internalFailure,
  sendTransferError,
} from './errors.js';
import { DomainRateLimiter } from './rate-limit.js';

/** Where the endpoint is published (§8.3 `transfer_endpoint`); the DPoP `htu` is checked against it. */
export const TRANSFER_PATH = '/federation/v1/transfer';

/** The job kind of the fetches this endpoint queues (§6). */
export const FETCH_JOB = 'fetch';

export interface TransferConfig {
  /** This mailbox's domain: recipients of other domains are neither accepted nor rejected. */
  readonly domain: string;
  /** The public base URL, e.g. `https://mail.example.net`; never the Host header (§10.2). */
  readonly publicUrl: string;
  /** §2.7: the largest message, in bytes of UTF-8 (the protocol's limit is 1 048 576). */
  readonly maxMessageBytes: number;
  /** A leaf declaring a larger resource answers 413 (docs/protocol.md §5.3). Unlimited when absent. */
  readonly maxResourceSize?: number;
  /** The account quota applied when a recipient is given a resource this domain already holds. */
  readonly quotaBytes?: number;
}

/** A `Discovery` also answers the mailbox document of a domain, which names its fetch endpoint. */
export type TransferTrust = TrustResolver & {
  mailbox?(domain: string): Promise<Pick<MailboxMetadata, 'fetch_endpoint'>>;
};

export interface Rejection {
  readonly address: string;
  /** `no_such_user`, for now (docs/protocol.md §5.3 also names `mailbox_full` and `policy`). */
  readonly reason: string;
}

/** The answer of an accepted transfer (docs/protocol.md §5.3), recorded and answered again to retries. */
export interface TransferResult {
  readonly accepted: string[];
  readonly rejected: Rejection[];
}

/** The payload of a `fetch` job: what MTA2 needs for §6. Queued once per Content-ID. */
export interface FetchJobPayload {
  readonly messageId: string;
  /** Exactly the envelope that arrived (without this domain's receive block): what §6.2 presents. */
  readonly envelope: readonly Block[];
  readonly contentId: string;
  /** The size the message declares (§2.4); the fetcher stops reading beyond it. */
  readonly size: number;
  /** The sender domain of the newest hop: the `sender_domain` of the §6.1 token exchange. */
  readonly senderDomain: string;
  /** The origin mailbox's fetch endpoint, when discovery already knew it; the fetcher discovers it otherwise. */
  readonly fetchEndpoint?: string;
}

/** What `onAccepted` is told about a transfer accepted for the first time. */
export interface TransferAccepted extends TransferResult {
  readonly messageId: string;
  readonly eht: string;
  readonly senderDomain: string;
  /** The domain of the origin block's From: where the resources are fetched from. */
  readonly originDomain: string;
  readonly hops: number;
  readonly stored: readonly { address: string; id: string; created: boolean; keep: boolean }[];
  /** The Content-IDs for which a fetch job is queued (new or already queued by another message). */
  readonly fetches: readonly string[];
}

export interface TransferDeps {
  readonly config: TransferConfig;
  readonly trust: TransferTrust;
  /** DPoP `jti`s seen (check 6): `KnexReplayStore` on `mail_replay`, shared by the replicas. */
  readonly replay: ReplayStore;
  readonly messages: Pick<MessageStore, 'createReceived'>;
  readonly transfers: Pick<TransferLog, 'seen' | 'record'>;
  readonly jobs: Pick<JobQueue, 'requeue'>;
  /**
   * Gives a recipient a Content-ID this domain already holds (`shareHeld`, §6.5), in one step with the
   * check that it is held. Without it nothing counts as held and every Content-ID is fetched.
   */
  readonly accounts?: Pick<AccountStore, 'shareHeldOrPending'>;
  /** Whether a (lower-cased) address of this domain is a user of this mailbox. */
  recipientExists(address: string): Promise<boolean>;
  /**
   * Called for every accepted recipient once the message is stored in its mailbox, with the stored envelope
   * (receive block on top). The forwarding rules answer here: `keep: false` for a recipient whose rule
   * forwards without keeping a copy. When no recipient keeps the message, nothing is fetched (§6.5).
   * It also runs for a delivery that races an identical one (`created: false`), so it must be idempotent.
   */
  onReceived?(
    address: string,
    messageId: string,
    envelope: readonly Block[],
    stored: { readonly id: string; readonly created: boolean },
  ): Promise<{ keep: boolean }> | { keep: boolean };
  /** Told of every transfer accepted for the first time, before the answer is sent. */
  onAccepted?(result: TransferAccepted): void | Promise<void>;
  /** Epoch milliseconds. */
  readonly now?: () => number;
  readonly rateLimit?: { readonly perDomainPerMinute: number };
  /** An internal failure, answered 503 `unavailable`: for the log. */
  onError?(err: unknown): void;
}

type RawHop = ReturnType<typeof chainStructure>[number];

/** Room for `{"message": …}` and white space around the message in the request body. */
const WRAPPER_BYTES = 1024;
/** §2.7: 40 levels of JSON for the message, one more for the `{"message": …}` around it. */
const BODY_JSON_DEPTH = 1 + 6 + 2 * (DEFAULT_LIMITS.maxDepth + 1);
/** RFC 5322 §2.1.1, and the column sizes of the stores. */
const MAX_LINE = 998;
const MAX_ADDRESS = 254;
const LDH_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

export function transferRouter(deps: TransferDeps): Router {
  const router = express.Router();
  const limiter =
    deps.rateLimit === undefined
      ? undefined
      : new DomainRateLimiter({ perDomainPerMinute: deps.rateLimit.perDomainPerMinute });
  const ctx: Context = {
    deps,
    domain: deps.config.domain.toLowerCase(),
    htu: `${deps.config.publicUrl.replace(/\/+$/, '')}${TRANSFER_PATH}`,
    now: deps.now ?? Date.now,
    limiter,
  };
  router.post('/', async (req: Request, res: Response) => {
    try {
      const answer = await receiveTransfer(req, ctx);
      res.status(answer.status).set('Cache-Control', 'no-store').json(answer.body);
    } catch (e) {
      if (e instanceof TransferError) return sendTransferError(res, e);
      // A rule the message breaks outside the numbered checks is still the message's fault.
      if (e instanceof ProtocolError) return sendTransferError(res, fromProtocolError(e, 'message'));
      // Anything else (the database, the replay store, the user directory of check 9 failing) is this
      // mailbox's failure, not a verdict on the transfer: §5.3 503 with Retry-After, which the sender retries.
      deps.onError?.(e);
      sendTransferError(res, internalFailure(e));
    }
  });
  return router;
}

interface Context {
  readonly deps: TransferDeps;
  readonly domain: string;
  readonly htu: string;
  readonly now: () => number;
  readonly limiter: DomainRateLimiter | undefined;
}

interface Answer {
  readonly status: 200 | 202;
  readonly body: TransferResult;
}

/** Checks §5.1 to §5.9 in order, then idempotency and acceptance (docs/protocol.md §5.4, §5.5). */
async function receiveTransfer(req: Request, ctx: Context): Promise<Answer> {
  const { deps } = ctx;
  // 1. size and shape
  const bytes = await readBody(req, deps.config.maxMessageBytes + WRAPPER_BYTES);
  const message = parseTransferBody(bytes, deps.config.maxMessageBytes);
  checkResourceSizes(message.body, deps.config.maxResourceSize);
  const token = presentedAssertion(req, message);
  const hops = chainShape(message);
  const newest = hops[hops.length - 1]!;
  // 2. JOSE header
  const { header, payload, alg } = checkJoseHeader(token);
  // 3. sender domain, its rate limit, and the issuer DNS names for it
  const senderDomain = senderDomainOf(newest);
  const nowMs = ctx.now();
  takeRateLimit(ctx.limiter, senderDomain, nowMs);
  let claims: AssertionClaims;
  try {
    const issuer = await checkIssuerThroughDns(payload, senderDomain, deps.trust);
    // 4. signature
    await checkSignature(token, header, alg, issuer, senderDomain, deps.trust);
    // 5. exp, iat, scope
    claims = checkClaims(payload, newest.kind, nowMs);
    // 6. DPoP
    await checkProof(req, token, claims, ctx.htu, nowMs, deps.replay);
    // 7. client identity
    await checkClientIdentity(claims, senderDomain, deps.trust);
  } catch (e) {
    // Not shown to come from that domain: it must not spend that domain's allowance.
    ctx.limiter?.refund(senderDomain, nowMs);
    throw e;
  }
  // 8. binding
  await checkBinding(message, hops, claims, deps.trust, nowMs);
  const messageId = checkMessageId(newest);
  // docs/protocol.md §5.4: a transfer already accepted is answered again and changes nothing.
  const earlier = await deps.transfers.seen<TransferResult>(messageId, claims.eh.eht);
  if (earlier !== undefined) return { status: 200, body: earlier };
  // 9. recipients
  const recipients = await checkRecipients(newest, ctx.domain, deps.recipientExists);
  return accept(ctx, { message, token, hops, senderDomain, messageId, eht: claims.eh.eht, recipients, nowMs });
}

// ---------------------------------------------------------------------------------------------------
// Check 1: size and shape

/**
 * §5.1, size: the body is counted while it arrives and refused (413) as soon as it exceeds `limit`,
 * before anything is parsed; a declared Content-Length above it is refused before a byte is read. A body
 * sent with `Content-Encoding: gzip` or `deflate` is decoded as it arrives, the limit counting the decoded
 * bytes (a small body that inflates without end is cut as soon as it passes the limit); another coding is
 * 415 with `Accept-Encoding` naming those two, and a body that does not decode is 400.
 */
function readBody(req: Request, limit: number): Promise<Buffer> {
  const tooLarge = () =>
    new TransferError(413, 'too_large', `the request body is larger than ${limit} bytes`, {
      code: 'message_too_large',
    });
  const coding = (req.get('content-encoding') ?? 'identity').trim().toLowerCase();
  if (coding !== 'identity' && !(TRANSFER_CODINGS as readonly string[]).includes(coding)) {
    req.resume();
    return Promise.reject(
      new TransferError(
        415,
        'unsupported_media_type',
        `Content-Encoding ${JSON.stringify(coding)} is not supported: send the body as it is, or with ${TRANSFER_CODINGS.join(' or ')}`,
      ),
    );
  }
  const declared = req.get('content-length');
  if (declared !== undefined && Number(declared) > limit) return Promise.reject(tooLarge());
  const decoder = coding === 'gzip' ? createGunzip() : coding === 'deflate' ? createInflate() : undefined;
  const source: NodeJS.ReadableStream = decoder === undefined ? req : req.pipe(decoder);
  const notDecoded = (err: Error) =>
    new TransferError(400, 'invalid_message', `the body does not decode as ${coding}: ${err.message}`, {
      code: 'invalid_encoding',
      cause: err,
    });
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        // The rest is discarded; the answer closes the connection.
        if (decoder !== undefined) {
          req.unpipe(decoder);
          decoder.destroy();
        }
        req.resume();
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(Buffer.concat(chunks, size));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onDecodeError = (err: Error) => {
      cleanup();
      req.resume();
      reject(notDecoded(err));
    };
    const onAborted = () => onError(new Error('the client aborted the request'));
    const cleanup = () => {
      source.off('data', onData);
      source.off('end', onEnd);
      req.off('error', onError);
      req.off('aborted', onAborted);
      decoder?.off('error', onDecodeError);
    };
    source.on('data', onData);
    source.on('end', onEnd);
    req.on('error', onError);
    req.on('aborted', onAborted);
    decoder?.on('error', onDecodeError);
  });
}

/**
 * §5.1, shape: the body is the JSON object `{"message": Message}` (UTF-8, no duplicate member names,
 * bounded nesting), the message at most `maxMessageBytes` as written, and valid by every rule of §2.7.
 * Paths in errors are relative to the message (`$`, `envelope[1].headers[3]`, …).
 */
function parseTransferBody(bytes: Buffer, maxMessageBytes: number): Message {
  return duringSync('message', 'the request body', () => {
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes).replace(/^\uFEFF/, '');
    } catch (cause) {
      throw new ProtocolError('invalid_encoding', 'not valid UTF-8', { cause });
    }
    const value = parseJsonStrict(text, BODY_JSON_DEPTH);
    if (
      value === null ||
      typeof value !== 'object' ||
      Array.isArray(value) ||
      Object.keys(value).length !== 1 ||
      !Object.hasOwn(value, 'message')
    ) {
      throw new ProtocolError('invalid_shape', 'the body is a JSON object with the single member "message"');
    }
    const size = Buffer.byteLength(messageText(text), 'utf8');
    if (size > maxMessageBytes) {
      throw new ProtocolError('message_too_large', `the message is ${size} bytes; at most ${maxMessageBytes}`);
    }
    return validateMessage((value as { message: unknown }).message, { maxBytes: maxMessageBytes });
  });
}

/** The text of the `message` member's value, in a body already parsed as `{"message": <value>}`. */
function messageText(text: string): string {
  let i = text.indexOf('"');
  for (i++; text[i] !== '"'; i++) if (text[i] === '\\') i++;
  return text.slice(text.indexOf(':', i) + 1, text.lastIndexOf('}')).trim();
}

/** A leaf part's External Resource, with where it is declared. */
interface LeafResource {
  readonly contentId: string;
  readonly size: number;
  readonly mediaType: string;
  readonly path: string;
}

/** The leaves of the body, depth first; a Content-ID referenced twice is listed once (its first leaf). */
function leafResources(body: Body): LeafResource[] {
  const found = new Map<string, LeafResource>();
  const walk = (parts: readonly Part[], path: string) => {
    parts.forEach((part, i) => {
      const at = `${path}[${i}]`;
      if (part.parts !== undefined) return walk(part.parts, `${at}.parts`);
      const contentId = headerValue(part.headers, 'Content-ID');
      const type = part.headers.find((h) => Object.hasOwn(h, 'Content-Type'))?.['Content-Type'];
      if (contentId === undefined || !Array.isArray(type) || found.has(contentId)) return;
      const [external, mediaType] = type as readonly [string, string];
      found.set(contentId, {
        contentId,
        size: parseExternalBody(external, `${at}.headers`).size,
        mediaType,
        path: `${at}.headers`,
      });
    });
  };
  walk(body.parts, 'body.parts');
  return [...found.values()];
}

/** §5.1, docs/protocol.md §5.3: a resource declared larger than this mailbox's `max_resource_size` answers 413. */
function checkResourceSizes(body: Body, maxResourceSize: number | undefined): void {
  if (maxResourceSize === undefined) return;
  const tooBig = leafResources(body).find((r) => r.size > maxResourceSize);
  if (tooBig !== undefined) {
    throw new TransferError(
      413,
      'too_large',
      `${tooBig.path}: the resource ${tooBig.contentId} declares ${tooBig.size} bytes; this mailbox accepts at most ${maxResourceSize} (max_resource_size)`,
      { path: tooBig.path },
    );
  }
}

/** §5.1: `Authorization: DPoP <A>` where A is byte for byte the newest assertion, `envelope[0]`. */
function presentedAssertion(req: Request, message: Message): string {
  const authorization = req.get('authorization');
  const m = /^DPoP +([A-Za-z0-9_.-]+) *$/i.exec(authorization ?? '');
  if (m === null) {
    throw new TransferError(
      401,
      'invalid_token',
      authorization === undefined
        ? 'the transfer endpoint needs Authorization: DPoP <the newest assertion of the envelope>'
        : 'the Authorization header is not "DPoP <assertion>"',
      { challenge: 'invalid_token' },
    );
  }
  const token = m[1]!;
  const newest = message.envelope[0];
  if (newest === undefined || !isAssertionBlock(newest) || newest['jwt-assertion'] !== token) {
    throw new TransferError(
      401,
      'invalid_token',
      'the token of the Authorization header is not the newest assertion of the envelope (envelope[0])',
      { challenge: 'invalid_token', path: 'envelope[0]' },
    );
  }
  return token;
}

/** §5.1, §7.3: the envelope is (assertion, headers) pairs, newest first, at most 8 hops. Oldest first. */
function chainShape(message: Message): RawHop[] {
  return duringSync('message', 'the envelope', () => chainStructure(message.envelope));
}

// ---------------------------------------------------------------------------------------------------
// Checks 2 to 7: the assertion and the proof

/** §5.2: `typ` eh+jwt, `alg` on the allow-list, no `jku`/`x5u`/`x5c`/`jwk`/`crit`. */
function checkJoseHeader(token: string): { header: JWSHeaderParameters; payload: JWTPayload; alg: JwsAlg } {
  return duringSync('token', 'the assertion', () => checkAssertionHeader(token));
}

/**
 * §5.3: the sender domain is the domain of the `From` address of the newest block (an origin block),
 * or of its `Forwarded-From` (a forward block). It must be a DNS host name to take part in Federizer.
 */
function senderDomainOf(hop: RawHop): string {
  const name = hop.kind === 'origin' ? 'From' : 'Forwarded-From';
  const path = `envelope[${hop.index + 1}].headers`;
  const address = duringSync('message', 'the sender', () =>
    normalizeAddress(parseSingleMailbox(headerValue(hop.headers, name)!).address),
  );
  const domain = domainOf(address);
  if (domain.length > 253 || !domain.split('.').every((label) => LDH_LABEL.test(label))) {
    throw new TransferError(
      401,
      'invalid_token',
      `${path}: the ${name} domain ${JSON.stringify(domain)} is not a DNS name, so no domain vouches for the assertion`,
      { challenge: 'invalid_token', code: 'sender_domain_unknown', path },
    );
  }
  return domain;
}

/** Per-sender-domain token bucket, taken as soon as the sender domain is known (429, Retry-After). */
function takeRateLimit(limiter: DomainRateLimiter | undefined, senderDomain: string, nowMs: number): void {
  if (limiter === undefined) return;
  const decision = limiter.take(senderDomain, nowMs);
  if (!decision.allowed) {
    throw new TransferError(
      429,
      'rate_limited',
      `${senderDomain} sends more transfers than this mailbox accepts; retry in ${decision.retryAfterSeconds} s`,
      { retryAfter: decision.retryAfterSeconds },
    );
  }
}

/** §5.3: `_federizer._as._tcp.<sender domain>` leads to AS metadata whose `issuer` is the `iss`. */
function checkIssuerThroughDns(payload: JWTPayload, senderDomain: string, trust: TrustResolver): Promise<string> {
  return during('token', 'the assertion', () => checkIssuer(payload, senderDomain, trust));
}

/** §5.4: the signature, with the key of the issuer's JWKS that `kid` and `alg` select. */
function checkSignature(
  token: string,
  header: JWSHeaderParameters,
  alg: JwsAlg,
  issuer: string,
  senderDomain: string,
  trust: TrustResolver,
): Promise<void> {
  return during('token', 'the assertion', async () =>
    verifySignature(token, await trust.keyFor(issuer, header, senderDomain), alg),
  );
}

/** §5.5: the claims' shape, `iat` not in the future, `exp` not past, `scope`, and `ehl` for the block. */
function checkClaims(payload: JWTPayload, kind: RawHop['kind'], nowMs: number): AssertionClaims {
  return duringSync('token', 'the assertion', () =>
    checkAssertionClaims(payload, {
      now: Math.floor(nowMs / 1000),
      checkExpiry: true,
      expectedEhl: kind === 'origin' ? ORIGIN_EHL : FORWARD_EHL,
    }),
  );
}

/**
 * §5.6, §10: the `DPoP` header is one proof, signed by the key that `cnf.jkt` names, for `POST` to
 * the published transfer endpoint, bound to the presented assertion (`ath`), fresh (60 s), and never seen.
 */
async function checkProof(
  req: Request,
  token: string,
  claims: AssertionClaims,
  htu: string,
  nowMs: number,
  replay: ReplayStore,
): Promise<void> {
  const count = req.rawHeaders.filter((_, i) => i % 2 === 0 && req.rawHeaders[i]!.toLowerCase() === 'dpop').length;
  const proof = req.get('dpop');
  if (count !== 1 || proof === undefined) {
    throw new TransferError(
      401,
      'invalid_token',
      count === 0
        ? 'a DPoP proof is required: the assertion is bound to the sending MTA key (cnf.jkt)'
        : 'exactly one DPoP header is allowed (RFC 9449 §4.3)',
      { challenge: 'invalid_dpop_proof', code: 'invalid_dpop_proof' },
    );
  }
  await during('proof', 'DPoP proof', () =>
    verifyDpopProof(proof, {
      htm: req.method,
      htu,
      accessToken: token,
      expectedJkt: claims.cnf.jkt,
      now: Math.floor(nowMs / 1000),
      replay,
    }),
  );
}

/** §5.7: `azp` is the `mta_client_id` that `_federizer._rs._tcp.<sender domain>` publishes. */
function checkClientIdentity(claims: AssertionClaims, senderDomain: string, trust: TrustResolver): Promise<void> {
  return during('token', 'the assertion', () => checkAzp(claims, senderDomain, trust));
}

// ---------------------------------------------------------------------------------------------------
// Check 8: binding

/**
 * §5.8: `eht` recomputed from the block the assertion signs, its Recipients-Digest, and the body's
 * Body-Digest for an origin block; for a forward hop, then, the whole chain (§7.4) in transfer mode.
 */
async function checkBinding(
  message: Message,
  hops: readonly RawHop[],
  claims: AssertionClaims,
  trust: TrustResolver,
  nowMs: number,
): Promise<void> {
  const newest = hops[hops.length - 1]!;
  const path = `envelope[${newest.index + 1}].headers`;
  await during('message', undefined, async () => {
    checkEht(claims, newest.headers, path);
    checkRecipientsDigest(newest.headers, newest.kind, path);
    if (newest.kind === 'origin') {
      checkBodyDigest(newest.headers, message.body, path);
      return;
    }
    await validateChain(message.envelope, {
      trust,
      now: Math.floor(nowMs / 1000),
      mode: 'transfer',
      body: message.body,
    });
  });
}

/** The Message-ID of the transfer (its identity with `eht`), within the 998 characters of an RFC 5322 line. */
function checkMessageId(hop: RawHop): string {
  const path = `envelope[${hop.index + 1}].headers`;
  const messageId = headerValue(hop.headers, 'Message-ID')!;
  if (messageId.length > MAX_LINE) {
    throw new TransferError(400, 'invalid_message', `${path}: the Message-ID is longer than ${MAX_LINE} characters`, {
      code: 'invalid_header',
      path,
    });
  }
  return messageId;
}

// ---------------------------------------------------------------------------------------------------
// Check 9: recipients

/**
 * The addresses a copy is delivered to: the `Forwarded-To` of a forward block; for an origin block, its `Bcc`
 * when it names someone (a Bcc copy, §4.3, is for its Bcc recipient alone: delivering it to the To/Cc
 * recipients too would show them the Bcc, §12.6), otherwise its `To` and `Cc`. Lower-cased, without repeats.
 */
export function deliveryRecipients(headers: readonly Header[], kind: 'origin' | 'forward'): string[] {
  const listed = (name: string) => {
    const value = headerValue(headers, name);
    return value === undefined ? [] : parseAddressList(value).map((m) => normalizeAddress(m.address));
  };
  const bcc = kind === 'origin' ? listed('Bcc') : [];
  const all = kind === 'forward' ? listed('Forwarded-To') : bcc.length > 0 ? bcc : [...listed('To'), ...listed('Cc')];
  return [...new Set(all)];
}

/** §5.9: at least one recipient of the newest block has this domain and exists (404 otherwise). */
async function checkRecipients(
  hop: RawHop,
  domain: string,
  exists: (address: string) => Promise<boolean>,
): Promise<TransferResult> {
  const local = deliveryRecipients(hop.headers, hop.kind).filter((a) => domainOf(a) === domain);
  if (local.length === 0) {
    throw new TransferError(404, 'no_recipient', `no recipient of this copy is an address of ${domain}`);
  }
  const accepted: string[] = [];
  const rejected: Rejection[] = [];
  for (const address of local) {
    if (address.length <= MAX_ADDRESS && (await exists(address))) accepted.push(address);
    else rejected.push({ address, reason: 'no_such_user' });
  }
  if (accepted.length === 0) {
    throw new TransferError(404, 'no_recipient', `${domain} has no user ${local.join(', ')}`);
  }
  return { accepted, rejected };
}

// ---------------------------------------------------------------------------------------------------
// Acceptance (docs/protocol.md §5.4, §5.5, §6)

interface Accepting {
  readonly message: Message;
  readonly token: string;
  readonly hops: readonly RawHop[];
  readonly senderDomain: string;
  readonly messageId: string;
  readonly eht: string;
  readonly recipients: TransferResult;
  readonly nowMs: number;
}

/**
 * Stores the message under the receive block in every accepted recipient's inbox, queues one fetch per
 * Content-ID this domain does not hold (unless nobody keeps the message), and records the answer.
 */
async function accept(ctx: Context, t: Accepting): Promise<Answer> {
  const { deps } = ctx;
  const origin = t.hops[0]!;
  const originDomain = domainOf(parseSingleMailbox(headerValue(origin.headers, 'From')!).address);
  const resources = leafResources(t.message.body);
  const envelope: Block[] = [
    receiveBlock({
      messageId: t.messageId,
      assertion: t.token,
      senderDomain: t.senderDomain,
      receiverDomain: ctx.domain,
      date: new Date(t.nowMs),
    }),
    ...t.message.envelope,
  ];
  const listing = listingOf(origin.headers, t.messageId, t.nowMs);
  const stored: { address: string; id: string; created: boolean; keep: boolean }[] = [];
  const unheld = new Set<string>();
  for (const address of t.recipients.accepted) {
    // §6.5: the resources this domain holds are given at once; the others are fetched.
    const statuses =
      deps.accounts === undefined
        ? new Map(resources.map((r) => [r.contentId, { status: 'pending' as const }]))
        : await deps.accounts.shareHeldOrPending(address, resources, { quota: deps.config.quotaBytes });
    for (const [contentId, { status }] of statuses) if (status === 'pending') unheld.add(contentId);
    const { id, created } = await deps.messages.createReceived({
      address,
      messageId: t.messageId,
      ...listing,
      envelope,
      body: t.message.body,
      resources: resources.map((r) => ({ contentId: r.contentId, size: r.size, ...statuses.get(r.contentId)! })),
      transferEht: t.eht,
    });
    const keep =
      deps.onReceived === undefined
        ? true
        : (await deps.onReceived(address, t.messageId, envelope, { id, created })).keep;
    stored.push({ address, id, created, keep });
  }
  const fetches = stored.some((s) => s.keep)
    ? await queueFetches(
        deps,
        t,
        originDomain,
        resources.filter((r) => unheld.has(r.contentId)),
      )
    : [];
  const result = await deps.transfers.record<TransferResult>(t.messageId, t.eht, t.recipients);
  // Every copy already stored: an identical delivery raced this one and was accepted first.
  if (!stored.some((s) => s.created)) return { status: 200, body: result };
  await deps.onAccepted?.({
    ...result,
    messageId: t.messageId,
    eht: t.eht,
    senderDomain: t.senderDomain,
    originDomain,
    hops: t.hops.length,
    stored,
    fetches,
  });
  return { status: 202, body: result };
}

/** What the mailbox lists: the origin block's Subject, From, Date and X-Thread-ID (or the Message-ID). */
function listingOf(headers: readonly Header[], messageId: string, nowMs: number) {
  const clip = (text: string | undefined) => (text ?? '').slice(0, MAX_LINE);
  const dateHeader = headerValue(headers, 'Date');
  let date = nowMs;
  if (dateHeader !== undefined) {
    try {
      date = parseDate(dateHeader).getTime();
    } catch {
      // the parser accepted it; a date it cannot place falls back to the moment of acceptance
    }
  }
  return {
    threadId: clip(headerValue(headers, 'X-Thread-ID')) || messageId,
    subject: clip(headerValue(headers, 'Subject')),
    from: clip(headerValue(headers, 'From')),
    date,
  };
}

/**
 * §6: one fetch job per Content-ID (the job key), to the origin domain, with the envelope as it arrived.
 * Queued after the messages are stored, and queued again when that fetch is finished: a finished fetch
 * may have marked its messages before these were stored (it was completing while this transfer ran), or
 * its bytes may have been collected since. Run again, a fetch of bytes still held costs no request.
 */
async function queueFetches(
  deps: TransferDeps,
  t: Accepting,
  originDomain: string,
  resources: readonly LeafResource[],
): Promise<string[]> {
  if (resources.length === 0) return [];
  const fetchEndpoint = await knownFetchEndpoint(deps.trust, originDomain);
  for (const r of resources) {
    const payload: FetchJobPayload = {
      messageId: t.messageId,
      envelope: t.message.envelope,
      contentId: r.contentId,
      size: r.size,
      senderDomain: t.senderDomain,
      ...(fetchEndpoint === undefined ? {} : { fetchEndpoint }),
    };
    await deps.jobs.requeue(FETCH_JOB, r.contentId, originDomain, payload);
  }
  return resources.map((r) => r.contentId);
}

/**
 * The origin mailbox's fetch endpoint when the trust resolver can tell (a `Discovery` has it cached: the
 * chain's checks looked up the origin domain's mailbox document for its `mta_client_id`). Optional.
 */
async function knownFetchEndpoint(trust: TransferTrust, originDomain: string): Promise<string | undefined> {
  if (typeof trust.mailbox !== 'function') return undefined;
  try {
    return (await trust.mailbox(originDomain)).fetch_endpoint;
  } catch {
    return undefined;
  }
}

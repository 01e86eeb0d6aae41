/**
 * Validation of an envelope chain (PROTOCOL.md §5.2–5.8 and §7), structural and cryptographic. Each
 * check is a named step with its own error code, run in the protocol's order; the trust lookups (issuer,
 * JWKS, MTA client id through DNS) are injected, so this module does no I/O.
 */
import type { JWSHeaderParameters, JWTPayload } from 'jose';
import { normalizeAddress, parseAddressList, parseSingleMailbox } from './address.js';
import { assertionDigest, bodyDigest, ehtOrUndefined, recipientsDigest } from './digests.js';
import { ProtocolError } from './errors.js';
import {
  ALLOWED_ALGS,
  JWT_TYPES,
  assertAllowedAlg,
  checkForbiddenHeaderParameters,
  decodeJwt,
  signJwt,
  verifySignature,
  type JwsAlg,
  type SignJwtOptions,
} from './jwt.js';
import {
  FORWARD_EHL,
  ORIGIN_EHL,
  findHeader,
  headerValue,
  isHeadersBlock,
  type Block,
  type Body,
  type Header,
} from './message.js';
import type { TrustResolver } from './trust.js';

export const SCOPE = 'internet_mail';
export const MAX_HOPS = 8;

/** The claims of an `eh+jwt` assertion (§4.6), once checked. */
export interface AssertionClaims extends JWTPayload {
  readonly iss: string;
  readonly azp: string;
  readonly scope: string;
  readonly cnf: { readonly jkt: string };
  readonly eh: { readonly eht: string; readonly ehl: readonly string[] };
  readonly iat: number;
  readonly exp: number;
  readonly jti: string;
}

/** One (assertion, headers block) pair of the chain. */
export interface Hop {
  readonly kind: 'origin' | 'forward';
  /** Position of the assertion block in the envelope as transmitted; the headers block is at index + 1. */
  readonly index: number;
  readonly assertion: string;
  readonly header: JWSHeaderParameters;
  readonly claims: AssertionClaims;
  readonly headers: readonly Header[];
  /** The addr-spec of From (origin) or Forwarded-From (forward), lower-cased. */
  readonly sender: string;
  readonly senderDomain: string;
  /** The addr-specs this hop delivered to: To/Cc/Bcc of the origin block, Forwarded-To of a forward block. */
  readonly recipients: readonly string[];
}

export interface ValidatedChain {
  readonly messageId: string;
  /** Oldest (the origin) first. */
  readonly hops: readonly Hop[];
  readonly origin: Hop;
  readonly newest: Hop;
}

export interface ChainValidationOptions {
  readonly trust: TrustResolver;
  /** Unix seconds. */
  readonly now: number;
  /**
   * §7: at transfer only the newest assertion must be unexpired; at fetch the origin assertion must be.
   */
  readonly mode: 'transfer' | 'fetch';
  /** When given, the origin block's Body-Digest is checked against it (§5.8). A fetch has no body. */
  readonly body?: Body;
  readonly maxHops?: number;
  readonly clockToleranceSeconds?: number;
  readonly algorithms?: readonly JwsAlg[];
}

const DEFAULT_TOLERANCE = 30;
/** Headers named by an `ehl`, or repeated by every block kind: a second copy would make `eht` ambiguous. */
const UNAMBIGUOUS = ['Date', 'Recipients-Digest', 'Body-Digest', 'JWT-Assertion-Digest'] as const;

function fail(code: ConstructorParameters<typeof ProtocolError>[0], message: string, path?: string): never {
  throw new ProtocolError(code, message, path === undefined ? {} : { path });
}

// ---------------------------------------------------------------------------------------------------
// Structure (§7): [A_n, H_n, ..., A_1, H_1, A_0, H_0], newest first.

interface RawHop {
  readonly kind: 'origin' | 'forward';
  readonly index: number;
  readonly assertion: string;
  readonly headers: readonly Header[];
}

/** Splits a transmitted envelope into its pairs, oldest first, checking the shape of the chain. */
export function chainStructure(envelope: readonly Block[], maxHops = MAX_HOPS): RawHop[] {
  if (envelope.length < 2 || envelope.length % 2 !== 0) {
    fail(
      'invalid_chain',
      'a transmitted envelope is pairs of (jwt-assertion, headers) blocks, newest first',
      'envelope',
    );
  }
  if (envelope.length / 2 > maxHops) fail('chain_too_long', `a chain has at most ${maxHops} hops`, 'envelope');
  const hops: RawHop[] = [];
  for (let i = envelope.length - 2; i >= 0; i -= 2) {
    const a = envelope[i]!;
    const h = envelope[i + 1]!;
    if (isHeadersBlock(a)) fail('invalid_chain', 'expected a jwt-assertion block', `envelope[${i}]`);
    if (!isHeadersBlock(h)) fail('invalid_chain', 'expected a headers block', `envelope[${i + 1}]`);
    const origin = i === envelope.length - 2;
    const path = `envelope[${i + 1}].headers`;
    const has = (name: string) => findHeader(h.headers, name) !== undefined;
    if (origin && !has('From'))
      fail('invalid_chain', 'the oldest headers block is the origin block and holds From', path);
    if (!origin && (!has('Forwarded-From') || has('From'))) {
      fail('invalid_chain', 'a newer headers block is a forward block: it holds Forwarded-From and no From', path);
    }
    for (const name of UNAMBIGUOUS) {
      if (h.headers.filter((x) => Object.hasOwn(x, name)).length > 1) {
        fail('duplicate_header', `${name} appears more than once in a signed block`, path);
      }
    }
    hops.push({ kind: origin ? 'origin' : 'forward', index: i, assertion: a['jwt-assertion'], headers: h.headers });
  }
  return hops;
}

/** Every block of the chain names the same message. */
export function checkMessageIds(envelope: readonly Block[]): string {
  let messageId: string | undefined;
  envelope.forEach((block, i) => {
    if (!isHeadersBlock(block)) return;
    const id = headerValue(block.headers, 'Message-ID');
    if (id === undefined)
      fail('missing_header', 'every headers block of a chain holds the Message-ID', `envelope[${i}].headers`);
    if (messageId !== undefined && id !== messageId) {
      fail('message_id_mismatch', `Message-ID ${id} differs from ${messageId}`, `envelope[${i}].headers`);
    }
    messageId = id;
  });
  return messageId!;
}

// ---------------------------------------------------------------------------------------------------
// One hop's assertion (§5.2–5.5, §5.7).

export interface AssertionCheckOptions {
  readonly trust: TrustResolver;
  readonly now: number;
  /** The domain the assertion must come from: that of From, or of Forwarded-From. */
  readonly senderDomain: string;
  readonly expectedEhl: readonly string[];
  /** Whether `exp` is checked (only one assertion of a chain must be unexpired). */
  readonly checkExpiry: boolean;
  readonly clockToleranceSeconds?: number;
  readonly algorithms?: readonly JwsAlg[];
  /** Where the assertion is, for error messages. */
  readonly path?: string;
}

/** §5.2: `typ` is `eh+jwt`, `alg` on the allow-list, and no header parameter that picks its own key. */
export function checkAssertionHeader(
  token: string,
  algorithms: readonly JwsAlg[] = ALLOWED_ALGS,
): { header: JWSHeaderParameters; payload: JWTPayload; alg: JwsAlg } {
  const { header, payload } = decodeJwt(token);
  if (
    typeof header.typ !== 'string' ||
    header.typ.toLowerCase().replace(/^application\//, '') !== JWT_TYPES.assertion
  ) {
    fail('invalid_typ', `an assertion has typ ${JWT_TYPES.assertion}, not ${JSON.stringify(header.typ)}`);
  }
  const alg = assertAllowedAlg(header.alg, algorithms);
  checkForbiddenHeaderParameters(header, false);
  return { header, payload, alg };
}

/** §5.3: the issuer that DNS names for the sender domain is the assertion's `iss`. */
export async function checkIssuer(payload: JWTPayload, senderDomain: string, trust: TrustResolver): Promise<string> {
  const expected = await trust.issuerFor(senderDomain);
  if (payload.iss !== expected) {
    fail(
      'issuer_mismatch',
      `iss ${JSON.stringify(payload.iss)} is not ${expected}, the issuer _federizer._as._tcp.${senderDomain} leads to`,
    );
  }
  return expected;
}

/** §5.5: `exp`, `iat` and `scope`, and the shape of the claims every assertion carries. */
export function checkAssertionClaims(
  payload: JWTPayload,
  options: { now: number; checkExpiry: boolean; expectedEhl: readonly string[]; clockToleranceSeconds?: number },
): AssertionClaims {
  const tolerance = options.clockToleranceSeconds ?? DEFAULT_TOLERANCE;
  const p = payload as Record<string, unknown>;
  for (const name of ['iss', 'azp', 'jti'] as const) {
    if (typeof p[name] !== 'string' || p[name] === '') fail('invalid_claims', `the assertion needs a ${name} claim`);
  }
  for (const name of ['iat', 'exp'] as const) {
    if (typeof p[name] !== 'number' || !Number.isFinite(p[name]))
      fail('invalid_claims', `the assertion needs a numeric ${name} claim`);
  }
  const iat = p.iat as number;
  const exp = p.exp as number;
  if (exp <= iat) fail('invalid_claims', 'exp is not after iat');
  if (iat > options.now + tolerance) fail('token_not_yet_valid', `iat ${iat} is in the future`);
  if (options.checkExpiry && exp <= options.now - tolerance)
    fail('token_expired', `the assertion expired at ${new Date(exp * 1000).toISOString()}`);
  if (typeof p.scope !== 'string' || !p.scope.split(' ').includes(SCOPE))
    fail('invalid_scope', `scope must include ${SCOPE}`);
  const cnf = p.cnf as Record<string, unknown> | undefined;
  if (typeof cnf?.jkt !== 'string' || cnf.jkt === '')
    fail('invalid_claims', 'the assertion needs cnf.jkt (RFC 9449 §6)');
  const eh = p.eh as Record<string, unknown> | undefined;
  if (typeof eh?.eht !== 'string') fail('invalid_claims', 'the assertion needs eh.eht');
  const ehl = eh.ehl;
  if (
    !Array.isArray(ehl) ||
    ehl.length !== options.expectedEhl.length ||
    ehl.some((n, i) => n !== options.expectedEhl[i])
  ) {
    fail('ehl_mismatch', `eh.ehl must be ${JSON.stringify(options.expectedEhl)}, not ${JSON.stringify(ehl)}`);
  }
  return payload as AssertionClaims;
}

/** §5.7: `azp` is the `mta_client_id` the sender domain publishes (the DNS-bound client identity). */
export async function checkAzp(claims: AssertionClaims, senderDomain: string, trust: TrustResolver): Promise<void> {
  const expected = await trust.mtaClientIdFor(senderDomain);
  if (claims.azp !== expected) {
    fail(
      'azp_mismatch',
      `azp ${JSON.stringify(claims.azp)} is not ${JSON.stringify(expected)}, the MTA of ${senderDomain}`,
    );
  }
}

/** §5.2–5.5 and §5.7 for one assertion, in the protocol's order. */
export async function verifyAssertion(
  token: string,
  options: AssertionCheckOptions,
): Promise<{ header: JWSHeaderParameters; claims: AssertionClaims }> {
  try {
    const { header, payload, alg } = checkAssertionHeader(token, options.algorithms);
    const issuer = await checkIssuer(payload, options.senderDomain, options.trust);
    await verifySignature(token, await options.trust.keyFor(issuer, header, options.senderDomain), alg);
    const claims = checkAssertionClaims(payload, options);
    await checkAzp(claims, options.senderDomain, options.trust);
    return { header, claims };
  } catch (e) {
    if (e instanceof ProtocolError && options.path !== undefined && e.path === undefined) {
      throw new ProtocolError(e.code, e.message, { path: options.path, cause: e.cause });
    }
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------
// The signed block (§5.8, §7).

/** `eht` recomputed from the headers block the assertion signs. */
export function checkEht(claims: AssertionClaims, headers: readonly Header[], path?: string): void {
  const actual = ehtOrUndefined(headers, claims.eh.ehl);
  if (actual === undefined)
    fail('missing_header', `the block lacks a header that ehl names (${claims.eh.ehl.join(', ')})`, path);
  if (actual !== claims.eh.eht) fail('eht_mismatch', 'eht does not match the headers of the block it signs', path);
}

export function checkRecipientsDigest(headers: readonly Header[], kind: 'origin' | 'forward', path?: string): void {
  const declared = headerValue(headers, 'Recipients-Digest');
  if (declared !== recipientsDigest(headers, kind)) {
    fail(
      'recipients_digest_mismatch',
      `Recipients-Digest does not match the ${kind === 'origin' ? 'To, Cc and Bcc' : 'Forwarded-To'} headers`,
      path,
    );
  }
}

export function checkBodyDigest(headers: readonly Header[], body: Body, path?: string): void {
  if (headerValue(headers, 'Body-Digest') !== bodyDigest(body))
    fail('body_digest_mismatch', 'Body-Digest does not match the body', path);
}

/** §7: a forward block names the assertion of the hop before it. */
export function checkAssertionLink(headers: readonly Header[], previousAssertion: string, path?: string): void {
  if (headerValue(headers, 'JWT-Assertion-Digest') !== assertionDigest(previousAssertion)) {
    fail('assertion_digest_mismatch', 'JWT-Assertion-Digest is not the digest of the previous assertion', path);
  }
}

/** §7: whoever forwards was a recipient of the previous hop. */
export function checkForwarderWasRecipient(sender: string, previousRecipients: readonly string[], path?: string): void {
  if (!previousRecipients.includes(sender))
    fail('forwarder_not_recipient', `${sender} was not a recipient of the previous hop`, path);
}

function senderOf(headers: readonly Header[], kind: 'origin' | 'forward'): string {
  return normalizeAddress(
    parseSingleMailbox(headerValue(headers, kind === 'origin' ? 'From' : 'Forwarded-From')!).address,
  );
}

function recipientsOf(headers: readonly Header[], kind: 'origin' | 'forward'): string[] {
  const names = kind === 'origin' ? ['To', 'Cc', 'Bcc'] : ['Forwarded-To'];
  const all = names.flatMap((name) => {
    const value = headerValue(headers, name);
    return value === undefined ? [] : parseAddressList(value).map((m) => normalizeAddress(m.address));
  });
  return [...new Set(all)];
}

/**
 * Validates a transmitted envelope (without the receiving mailbox's own block): structure, Message-IDs,
 * then every hop from the oldest to the newest — its assertion (§5.2–5.5, §5.7) against the domain of
 * its From/Forwarded-From, its block (eht, Recipients-Digest, Body-Digest or the link to the previous
 * assertion) and, for a forward, that the forwarder was a recipient of the hop before.
 * The DPoP proof (§5.6) and the recipients (§5.9) are the caller's: they depend on the request.
 */
export async function validateChain(
  envelope: readonly Block[],
  options: ChainValidationOptions,
): Promise<ValidatedChain> {
  const raw = chainStructure(envelope, options.maxHops);
  const messageId = checkMessageIds(envelope);
  const hops: Hop[] = [];
  for (const [n, r] of raw.entries()) {
    const path = `envelope[${r.index + 1}].headers`;
    const sender = senderOf(r.headers, r.kind);
    const senderDomain = sender.slice(sender.lastIndexOf('@') + 1);
    const newest = n === raw.length - 1;
    const { header, claims } = await verifyAssertion(r.assertion, {
      trust: options.trust,
      now: options.now,
      senderDomain,
      expectedEhl: r.kind === 'origin' ? ORIGIN_EHL : FORWARD_EHL,
      checkExpiry: options.mode === 'transfer' ? newest : n === 0,
      clockToleranceSeconds: options.clockToleranceSeconds,
      algorithms: options.algorithms,
      path: `envelope[${r.index}]`,
    } as AssertionCheckOptions);
    checkEht(claims, r.headers, path);
    checkRecipientsDigest(r.headers, r.kind, path);
    const previous = hops[n - 1];
    if (previous === undefined) {
      if (options.body !== undefined) checkBodyDigest(r.headers, options.body, path);
    } else {
      checkAssertionLink(r.headers, previous.assertion, path);
      checkForwarderWasRecipient(sender, previous.recipients, path);
    }
    hops.push({ ...r, header, claims, sender, senderDomain, recipients: recipientsOf(r.headers, r.kind) });
  }
  return { messageId, hops, origin: hops[0]!, newest: hops[hops.length - 1]! };
}

// ---------------------------------------------------------------------------------------------------
// Issuing (§4.5–4.6, §7): what an Authorization Server signs once its checks have passed.

export interface AssertionInput {
  readonly iss: string;
  /** The client_id of the domain's MTA. */
  readonly azp: string;
  /** The thumbprint of the DPoP key of the token request (RFC 9449 §6.1). */
  readonly jkt: string;
  /** The header objects of the token request, exactly in `ehl` order. */
  readonly headers: readonly Header[];
  readonly ehl: readonly string[];
  readonly iat: number;
  /** Seconds the share stays open: the assertion's lifetime (default 7 days). */
  readonly shareWindowSeconds?: number;
  readonly jti: string;
}

export const DEFAULT_SHARE_WINDOW_SECONDS = 7 * 24 * 3600;

/** The claims of an assertion; `eht` is computed from the header objects in `ehl` order. */
export function assertionClaims(input: AssertionInput): AssertionClaims {
  const names = input.headers.map((h) => Object.keys(h)[0]);
  if (names.length !== input.ehl.length || names.some((n, i) => n !== input.ehl[i])) {
    throw new ProtocolError(
      'ehl_mismatch',
      `the header list must be exactly ${JSON.stringify(input.ehl)}, not ${JSON.stringify(names)}`,
    );
  }
  return {
    iss: input.iss,
    azp: input.azp,
    scope: SCOPE,
    cnf: { jkt: input.jkt },
    eh: { eht: ehtOrUndefined(input.headers, input.ehl)!, ehl: [...input.ehl] },
    iat: input.iat,
    exp: input.iat + (input.shareWindowSeconds ?? DEFAULT_SHARE_WINDOW_SECONDS),
    jti: input.jti,
  };
}

/** Signs an assertion with the AS's own published key (`typ: eh+jwt`). */
export async function signAssertion(
  input: AssertionInput,
  key: { readonly key: SignJwtOptions['key']; readonly alg: JwsAlg; readonly kid: string },
): Promise<string> {
  return signJwt(assertionClaims(input), { typ: JWT_TYPES.assertion, alg: key.alg, key: key.key, kid: key.kid });
}

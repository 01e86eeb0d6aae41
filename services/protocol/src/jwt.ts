import { KeyObject as NodeKeyObject, createPublicKey, sign as cryptoSign, verify as cryptoVerify } from 'node:crypto';
import { errors } from 'jose';
import type { CompactJWSHeaderParameters, CryptoKey, JWK, JWSHeaderParameters, JWTPayload, KeyObject } from 'jose';
import { ProtocolError } from './errors.js';
import type { ProtocolErrorCode } from './errors.js';
import type { VerificationKey } from './trust.js';

/** PROTOCOL.md §4.6, §5.2: the only JWS algorithms the protocol accepts, for every JWT it handles. */
export const ALLOWED_ALGS = ['ES256', 'EdDSA', 'RS256'] as const;
export type JwsAlg = (typeof ALLOWED_ALGS)[number];

/** Explicit `typ` values (RFC 8725 §3.11) so that one kind of JWT can never be replayed as another. */
export const JWT_TYPES = { assertion: 'eh+jwt', accessToken: 'at+jwt', dpop: 'dpop+jwt' } as const;

export interface DecodedJwt {
  header: JWSHeaderParameters;
  payload: JWTPayload;
}

export interface SignJwtOptions {
  typ: string;
  alg: JwsAlg;
  key: CryptoKey | KeyObject;
  kid?: string;
  /** Embedded public key; only DPoP proofs carry one (RFC 9449 §4.2). */
  jwk?: JWK;
}

export type KeyResolver = (header: JWSHeaderParameters) => Promise<VerificationKey> | VerificationKey;

export interface VerifyJwtOptions {
  typ: string;
  algorithms?: readonly JwsAlg[];
  key: VerificationKey | KeyResolver;
  /** Unix seconds; passed in rather than read so that verification is deterministic and testable. */
  now: number;
  clockToleranceSeconds?: number;
  requireExp?: boolean;
  issuer?: string;
  audience?: string;
}

const DEFAULT_CLOCK_TOLERANCE_SECONDS = 30;

/** Members that only private (or symmetric) JWKs carry; a public key must have none of them. */
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k', 'priv'] as const;

/**
 * Header parameters that would let the token choose its own verification key or extend the rules
 * (RFC 8725 §3.10; PROTOCOL.md §5.2). Keys come only from the issuer's JWKS found through DNS.
 */
const FORBIDDEN_HEADER_PARAMETERS = ['jku', 'x5u', 'x5c', 'jwk', 'crit'] as const;

const B64U_SEGMENT = /^[A-Za-z0-9_-]*$/;

/** RFC 7638 §3.2: the required members of each key type, in lexicographic order. */
const THUMBPRINT_MEMBERS: Readonly<Record<string, readonly string[]>> = {
  EC: ['crv', 'kty', 'x', 'y'],
  OKP: ['crv', 'kty', 'x'],
  RSA: ['e', 'kty', 'n'],
  oct: ['k', 'kty'],
};

/** How jose's calculateJwkThumbprint names a missing member; this replaces it and fails the same way. */
const THUMBPRINT_MEMBER_NAMES: Readonly<Record<string, string>> = {
  'EC crv': '"crv" (Curve) Parameter',
  'OKP crv': '"crv" (Subtype of Key Pair) Parameter',
  x: '"x" (X Coordinate) Parameter',
  'OKP x': '"x" (Public Key) Parameter',
  y: '"y" (Y Coordinate) Parameter',
  e: '"e" (Exponent) Parameter',
  n: '"n" (Modulus) Parameter',
  k: '"k" (Key Value) Parameter',
};

/**
 * Imported public keys by the RFC 7638 hash input of their JWK (exactly the members a key is made of), most
 * recently used last. Many keys come back again and again (a mailbox's MTA key, a webmail session's key, the
 * keys of the AS JWKS), and parsing a P-256 JWK costs more than verifying a signature with it. Bounded:
 * every fresh DPoP key passes through once. Only public JWKs ever reach it.
 */
const PUBLIC_KEY_CACHE_SIZE = 1_000;
const publicKeys = new Map<string, NodeKeyObject>();

/** Reused: decode() without `stream` starts afresh on every call, and a new decoder per JWT showed up in profiles. */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

export async function signJwt(payload: JWTPayload, opts: SignJwtOptions): Promise<string> {
  assertAllowedAlg(opts.alg, ALLOWED_ALGS);
  if (opts.jwk !== undefined && hasPrivateMembers(opts.jwk)) {
    // Refuse rather than strip: a caller passing a private JWK here has mixed up its keys.
    throw new ProtocolError('forbidden_header_parameter', 'the embedded jwk must be a public key');
  }
  const header: CompactJWSHeaderParameters = { alg: opts.alg, typ: opts.typ };
  if (opts.kid !== undefined) header.kid = opts.kid;
  if (opts.jwk !== undefined) header.jwk = opts.jwk;
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  // node:crypto signs synchronously, several times faster than the WebCrypto path (RFC 7518 §3.4: ES256
  // signatures are the raw r||s form, ieee-p1363).
  const key = toKeyObject(opts.key);
  const data = Buffer.from(input, 'ascii');
  const signature =
    opts.alg === 'ES256'
      ? cryptoSign('sha256', data, { key, dsaEncoding: 'ieee-p1363' })
      : cryptoSign(opts.alg === 'EdDSA' ? null : 'sha256', data, key);
  return `${input}.${signature.toString('base64url')}`;
}

/** Unverified decode; never trust the result before `verifyJwt` has checked it. */
export function decodeJwt(token: string): DecodedJwt {
  if (typeof token !== 'string') throw new ProtocolError('invalid_jwt', 'a JWT must be a string');
  const segments = token.split('.');
  if (segments.length !== 3) {
    throw new ProtocolError('invalid_jwt', `a compact JWS has 3 segments, found ${segments.length}`);
  }
  const [header, payload, signature] = segments as [string, string, string];
  const decoded = {
    header: decodeJsonSegment<JWSHeaderParameters>(header, 'header'),
    payload: decodeJsonSegment<JWTPayload>(payload, 'payload'),
  };
  // Empty is allowed so that an unsigned (`alg: none`) token is refused for its alg, the precise reason.
  checkB64u(signature, 'signature', true);
  return decoded;
}

export async function verifyJwt(token: string, opts: VerifyJwtOptions): Promise<DecodedJwt> {
  const { header, payload } = decodeJwt(token);
  const alg = assertAllowedAlg(header.alg, opts.algorithms ?? ALLOWED_ALGS);
  checkForbiddenHeaderParameters(header, sameTyp(opts.typ, JWT_TYPES.dpop));
  if (typeof header.typ !== 'string' || !sameTyp(header.typ, opts.typ)) {
    throw new ProtocolError('invalid_typ', `typ must be ${opts.typ}, got ${String(header.typ)}`);
  }
  const key = await resolveKey(opts.key, header);
  await verifySignature(token, key, alg);
  checkTimeClaims(payload, opts);
  checkIssuerAndAudience(payload, opts);
  return { header, payload };
}

/** §5.4: the key of an issuer's JWKS that verifies a JWS with this protected header. */
export async function keyFromJwks(jwks: { keys: JWK[] }, header: JWSHeaderParameters): Promise<VerificationKey> {
  const alg = assertAllowedAlg(header.alg, ALLOWED_ALGS);
  const jwk = selectJwk(Array.isArray(jwks?.keys) ? jwks.keys : [], header);
  if (jwk === undefined) {
    const which = header.kid === undefined ? 'no kid' : `kid ${header.kid}`;
    throw new ProtocolError('unknown_key', `no single ${alg} key in the JWKS for ${which}`);
  }
  return importPublicJwk(jwk, alg, 'unknown_key');
}

/**
 * The one signing key for the header's `kid` that fits its `alg`; without a kid, the one key that fits
 * `alg` at all. Undefined when there is none or more than one, or `alg` is not allowed.
 */
export function selectJwk(keys: readonly JWK[], header: JWSHeaderParameters): JWK | undefined {
  const alg = header.alg;
  if (alg === undefined || !(ALLOWED_ALGS as readonly string[]).includes(alg)) return undefined;
  const usable = keys.filter((k) => isUsableSigningKey(k, alg as JwsAlg));
  const matches = header.kid === undefined ? usable : usable.filter((k) => k.kid === header.kid);
  return matches.length === 1 ? matches[0] : undefined;
}

// ---------------------------------------------------------------------------------------------------
// Helpers shared with dpop.ts

/** Returns `alg` narrowed to JwsAlg; `none`, HMAC and anything else off the list are refused. */
export function assertAllowedAlg(alg: unknown, allowed: readonly JwsAlg[]): JwsAlg {
  const permitted = allowed.filter((a) => (ALLOWED_ALGS as readonly string[]).includes(a));
  if (typeof alg !== 'string' || !(permitted as readonly string[]).includes(alg)) {
    throw new ProtocolError('alg_not_allowed', `alg ${JSON.stringify(alg)} is not one of ${permitted.join(', ')}`);
  }
  return alg as JwsAlg;
}

export function checkForbiddenHeaderParameters(header: JWSHeaderParameters, allowJwk: boolean): void {
  for (const name of FORBIDDEN_HEADER_PARAMETERS) {
    if (name === 'jwk' && allowJwk) continue;
    if (Object.hasOwn(header, name)) {
      throw new ProtocolError('forbidden_header_parameter', `header parameter ${name} is not allowed`);
    }
  }
  if (allowJwk && !Object.hasOwn(header, 'jwk')) {
    throw new ProtocolError('invalid_dpop_proof', 'a DPoP proof must carry its public key in the jwk header');
  }
}

export function hasPrivateMembers(jwk: JWK): boolean {
  return PRIVATE_JWK_MEMBERS.some((m) => Object.hasOwn(jwk, m));
}

/** True when the JWK's key type and curve are the ones `alg` signs with. */
export function jwkFitsAlg(jwk: JWK, alg: JwsAlg): boolean {
  switch (alg) {
    case 'ES256':
      return jwk.kty === 'EC' && jwk.crv === 'P-256';
    case 'EdDSA':
      return jwk.kty === 'OKP' && jwk.crv === 'Ed25519';
    case 'RS256':
      return jwk.kty === 'RSA';
  }
}

/**
 * Imports a public JWK as a node KeyObject (synchronous, and much cheaper than a WebCrypto import, which
 * matters for DPoP: every proof brings a key). The key must fit `alg` and hold no private members; those
 * checks run on every call, before the cache of recently imported keys is consulted.
 */
export async function importPublicJwk(jwk: JWK, alg: JwsAlg, code: ProtocolErrorCode): Promise<VerificationKey> {
  if (typeof jwk !== 'object' || jwk === null || hasPrivateMembers(jwk))
    throw new ProtocolError(code, 'the JWK is not a public key');
  if (!jwkFitsAlg(jwk, alg))
    throw new ProtocolError(code, `the JWK (kty ${String(jwk.kty)}, crv ${String(jwk.crv)}) does not fit ${alg}`);
  const id = thumbprintInputOrUndefined(jwk);
  const cached = id === undefined ? undefined : publicKeys.get(id);
  if (cached !== undefined) {
    publicKeys.delete(id!);
    publicKeys.set(id!, cached);
    return cached;
  }
  let key: NodeKeyObject;
  try {
    key = createPublicKey({ key: jwk as Parameters<typeof createPublicKey>[0] & object as never, format: 'jwk' });
  } catch (cause) {
    throw new ProtocolError(code, `cannot import the ${alg} JWK: ${messageOf(cause)}`, { cause });
  }
  if (id !== undefined) rememberPublicKey(id, key);
  return key;
}

/**
 * The public JWK of a public KeyObject (node's export: the key's members only). The key is remembered, so
 * that `importPublicJwk` of this JWK returns it without parsing: the AS that runs in the same process as an
 * MTA verifies the proofs of the fresh keys that MTA makes. Safe to export: the JWK is derived from the key.
 * Not for a key of generateKeyPairSync: on Node 20 its JWK export can deadlock with the garbage collector.
 */
export function exportPublicJwk(key: NodeKeyObject): JWK {
  if (!(key instanceof NodeKeyObject) || key.type !== 'public') throw new TypeError('a public KeyObject is required');
  const jwk = key.export({ format: 'jwk' }) as JWK;
  const id = thumbprintInputOrUndefined(jwk);
  if (id !== undefined) rememberPublicKey(id, key);
  return jwk;
}

/**
 * RFC 7638 §3: the JSON of the JWK's required members, in lexicographic order and without whitespace, that
 * the thumbprint hashes. Throws jose's errors for a JWK that has no thumbprint, as calculateJwkThumbprint did.
 */
export function jwkThumbprintInput(jwk: JWK): string {
  if (typeof jwk !== 'object' || jwk === null || typeof jwk.kty !== 'string') {
    throw new TypeError('Key must be one of type CryptoKey, KeyObject, or JSON Web Key.');
  }
  const members = thumbprintMembers(jwk.kty);
  if (members === undefined) throw new errors.JOSENotSupported('"kty" (Key Type) Parameter missing or unsupported');
  const input = thumbprintJson(jwk, members);
  if (input === undefined) {
    const name = members.find((m) => !isNonEmptyString((jwk as Record<string, unknown>)[m]))!;
    const description = THUMBPRINT_MEMBER_NAMES[`${jwk.kty} ${name}`] ?? THUMBPRINT_MEMBER_NAMES[name];
    throw new errors.JWKInvalid(`${description} missing or invalid`);
  }
  return input;
}

function thumbprintInputOrUndefined(jwk: JWK): string | undefined {
  const members = typeof jwk.kty === 'string' ? thumbprintMembers(jwk.kty) : undefined;
  return members === undefined ? undefined : thumbprintJson(jwk, members);
}

function thumbprintMembers(kty: string): readonly string[] | undefined {
  return Object.hasOwn(THUMBPRINT_MEMBERS, kty) ? THUMBPRINT_MEMBERS[kty] : undefined;
}

/** Undefined when a required member is missing or not a non-empty string. */
function thumbprintJson(jwk: JWK, members: readonly string[]): string | undefined {
  let json = '{';
  for (const name of members) {
    const value = (jwk as Record<string, unknown>)[name];
    if (!isNonEmptyString(value)) return undefined;
    // JSON.stringify escapes as RFC 7638 §3.3 asks (RFC 8259 strings, no whitespace).
    json += `${json.length > 1 ? ',' : ''}"${name}":${JSON.stringify(value)}`;
  }
  return `${json}}`;
}

function isNonEmptyString(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}

function rememberPublicKey(id: string, key: NodeKeyObject): void {
  publicKeys.delete(id);
  publicKeys.set(id, key);
  if (publicKeys.size > PUBLIC_KEY_CACHE_SIZE) publicKeys.delete(publicKeys.keys().next().value!);
}

/**
 * Verifies the signature of a compact JWS with node:crypto. The allow-list has three algorithms, and
 * node's synchronous verify is about twice as fast as the WebCrypto path: this runs once per hop of every
 * chain a mailbox receives. The key must be of the algorithm's type (P-256, Ed25519, RSA ≥ 2048 bits).
 */
export async function verifySignature(token: string, key: VerificationKey, alg: JwsAlg): Promise<void> {
  const keyObject = toKeyObject(key);
  const problem = keyProblem(keyObject, alg);
  if (problem !== undefined) throw new ProtocolError('invalid_signature', `signature does not verify: ${problem}`);
  const cut = token.lastIndexOf('.');
  const signature = Buffer.from(token.slice(cut + 1), 'base64url');
  let ok: boolean;
  try {
    const data = Buffer.from(token.slice(0, cut), 'ascii');
    ok =
      alg === 'ES256'
        ? signature.length === 64 &&
          cryptoVerify('sha256', data, { key: keyObject, dsaEncoding: 'ieee-p1363' }, signature)
        : cryptoVerify(alg === 'EdDSA' ? null : 'sha256', data, keyObject, signature);
  } catch (cause) {
    throw new ProtocolError('invalid_signature', `signature does not verify: ${messageOf(cause)}`, { cause });
  }
  if (!ok) throw new ProtocolError('invalid_signature', 'signature does not verify');
}

const keyObjects = new WeakMap<object, NodeKeyObject>();

function toKeyObject(key: VerificationKey | CryptoKey | KeyObject): NodeKeyObject {
  if (key instanceof NodeKeyObject) return key as NodeKeyObject;
  let converted = keyObjects.get(key);
  if (converted === undefined) {
    converted = NodeKeyObject.from(key as Parameters<typeof NodeKeyObject.from>[0]);
    keyObjects.set(key, converted);
  }
  return converted;
}

function keyProblem(key: NodeKeyObject, alg: JwsAlg): string | undefined {
  if (key.type === 'secret') return 'a symmetric key cannot verify an asymmetric signature';
  const details = key.asymmetricKeyDetails ?? {};
  switch (alg) {
    case 'ES256':
      return key.asymmetricKeyType === 'ec' && details.namedCurve === 'prime256v1'
        ? undefined
        : 'ES256 needs a P-256 key';
    case 'EdDSA':
      return key.asymmetricKeyType === 'ed25519' ? undefined : 'EdDSA needs an Ed25519 key';
    case 'RS256':
      if (key.asymmetricKeyType !== 'rsa') return 'RS256 needs an RSA key';
      return (details.modulusLength ?? 0) >= 2048 ? undefined : 'RS256 needs an RSA key of 2048 bits or more';
  }
}

// ---------------------------------------------------------------------------------------------------

function decodeJsonSegment<T extends object>(segment: string, name: 'header' | 'payload'): T {
  checkB64u(segment, name, false);
  let value: unknown;
  try {
    // fatal: invalid UTF-8 must fail here instead of becoming U+FFFD and parsing anyway.
    value = JSON.parse(UTF8.decode(Buffer.from(segment, 'base64url')));
  } catch (cause) {
    throw new ProtocolError('invalid_jwt', `the ${name} is not UTF-8 JSON`, { cause });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ProtocolError('invalid_jwt', `the ${name} is not a JSON object`);
  }
  return value as T;
}

function checkB64u(segment: string, name: string, mayBeEmpty: boolean): void {
  // Node's decoder skips bad characters silently, so the alphabet and length are checked first.
  if ((!mayBeEmpty && segment.length === 0) || !B64U_SEGMENT.test(segment) || segment.length % 4 === 1) {
    throw new ProtocolError('invalid_jwt', `the ${name} segment is not base64url`);
  }
}

/** RFC 7515 §4.1.9: media types are case-insensitive and `application/` may be left out. */
function sameTyp(a: string, b: string): boolean {
  const norm = (t: string) => t.toLowerCase().replace(/^application\//, '');
  return norm(a) === norm(b);
}

async function resolveKey(key: VerifyJwtOptions['key'], header: JWSHeaderParameters): Promise<VerificationKey> {
  if (typeof key !== 'function') return key;
  try {
    return await key(header);
  } catch (cause) {
    if (cause instanceof ProtocolError) throw cause;
    throw new ProtocolError('unknown_key', `no key for this token: ${messageOf(cause)}`, { cause });
  }
}

function checkTimeClaims(payload: JWTPayload, opts: VerifyJwtOptions): void {
  const tolerance = opts.clockToleranceSeconds ?? DEFAULT_CLOCK_TOLERANCE_SECONDS;
  const exp = numericDate(payload, 'exp');
  if (exp === undefined && (opts.requireExp ?? true)) throw new ProtocolError('invalid_claims', 'exp is required');
  if (exp !== undefined && opts.now - tolerance >= exp) {
    throw new ProtocolError('token_expired', `the token expired at ${exp}, now is ${opts.now}`);
  }
  for (const claim of ['nbf', 'iat'] as const) {
    const t = numericDate(payload, claim);
    if (t !== undefined && t > opts.now + tolerance) {
      throw new ProtocolError('token_not_yet_valid', `${claim} ${t} is in the future, now is ${opts.now}`);
    }
  }
}

function numericDate(payload: JWTPayload, claim: 'exp' | 'nbf' | 'iat'): number | undefined {
  const value = payload[claim];
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new ProtocolError('invalid_claims', `${claim} must be a NumericDate`);
  }
  return value;
}

function checkIssuerAndAudience(payload: JWTPayload, opts: VerifyJwtOptions): void {
  if (opts.issuer !== undefined && payload.iss !== opts.issuer) {
    throw new ProtocolError('issuer_mismatch', `iss must be ${opts.issuer}, got ${String(payload.iss)}`);
  }
  if (opts.audience !== undefined) {
    const aud = payload.aud;
    const audiences = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
    if (!audiences.includes(opts.audience)) {
      throw new ProtocolError('invalid_claims', `aud does not include ${opts.audience}`);
    }
  }
}

function isUsableSigningKey(jwk: JWK, alg: JwsAlg): boolean {
  if (typeof jwk !== 'object' || jwk === null) return false;
  if (jwk.use !== undefined && jwk.use !== 'sig') return false;
  if (Array.isArray(jwk.key_ops) && !jwk.key_ops.includes('verify')) return false;
  if (jwk.alg !== undefined && jwk.alg !== alg) return false;
  // A JWKS that publishes private members is misconfigured; such a key is never used to verify.
  return !hasPrivateMembers(jwk) && jwkFitsAlg(jwk, alg);
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

import { createECDH, createPrivateKey, createPublicKey, generateKeyPair, randomBytes } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { exportJWK } from 'jose';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import { b64u, b64uSha256 } from './encoding.js';
import { ProtocolError } from './errors.js';
import {
  ALLOWED_ALGS,
  JWT_TYPES,
  assertAllowedAlg,
  checkForbiddenHeaderParameters,
  decodeJwt,
  exportPublicJwk,
  hasPrivateMembers,
  importPublicJwk,
  jwkFitsAlg,
  jwkThumbprintInput,
  signJwt,
  verifySignature,
} from './jwt.js';
import type { JwsAlg } from './jwt.js';

/**
 * A DPoP key pair (RFC 9449). `jkt` is what an access token's `cnf.jkt` binds to. The library makes node
 * KeyObjects (cheap to make and to use); a WebCrypto CryptoKey, as openid-client's key pairs hold, works too.
 */
export interface DpopKey {
  alg: JwsAlg;
  privateKey: CryptoKey | KeyObject;
  publicJwk: JWK;
  jkt: string;
}

export interface CreateDpopProofOptions {
  htm: string;
  htu: string;
  accessToken?: string;
  nonce?: string;
  /** Unix seconds; defaults to the wall clock. */
  now?: number;
  jti?: string;
}

export interface VerifyDpopProofOptions {
  htm: string;
  htu: string;
  accessToken?: string;
  expectedJkt?: string;
  now: number;
  maxAgeSeconds?: number;
  replay: ReplayStore;
  algorithms?: readonly JwsAlg[];
}

export interface VerifiedDpopProof {
  jkt: string;
  jwk: JWK;
  payload: JWTPayload;
}

export interface ReplayStore {
  /**
   * Atomically records `key`; resolves false when it was already recorded and not yet expired. `expiresAt`
   * is whole unix seconds. `verifyDpopProof` passes `dpopReplayKey(jkt, jti)`: 43 characters whatever the
   * length of the jti, so a store may keep keys in a bounded column.
   */
  checkAndRecord(key: string, expiresAt: number /* unix seconds, an integer */): Promise<boolean>;
}

const DEFAULT_MAX_AGE_SECONDS = 60;

/**
 * Extra time a jti stays recorded after the last moment any verifier would accept its proof, to cover
 * clock skew between the verifiers (and the store) sharing one replay store.
 */
const REPLAY_MARGIN_SECONDS = 30;

/** Public members per key type (RFC 7517/7518/8037); everything else is dropped from a public JWK. */
const PUBLIC_MEMBERS: Record<string, readonly string[]> = {
  EC: ['kty', 'crv', 'x', 'y'],
  OKP: ['kty', 'crv', 'x'],
  RSA: ['kty', 'n', 'e'],
};

const generateKeyPairAsync = promisify(generateKeyPair);

/**
 * A fresh key pair (PROTOCOL.md §4.4 and §6.1 ask for one per queued transfer and per fetch exchange), as
 * node KeyObjects: well under half the CPU of jose's WebCrypto path. Not generateKeyPairSync: on Node 20 a
 * JWK export of a key it made can deadlock, when a garbage collection during the export finalizes the key's
 * generation job, which takes the lock the export holds. Keys made by createPrivateKey or by the
 * asynchronous generateKeyPair have no such job.
 */
export async function generateDpopKey(alg: JwsAlg = 'ES256'): Promise<DpopKey> {
  assertAllowedAlg(alg, ALLOWED_ALGS);
  const { privateKey, publicKey } =
    alg === 'ES256'
      ? generateP256KeyPair()
      : alg === 'EdDSA'
        ? await generateKeyPairAsync('ed25519')
        : await generateKeyPairAsync('rsa', { modulusLength: 2048, publicExponent: 0x10001 });
  // A KeyObject always exports, so a queued transfer can persist its key and survive a restart (§4.4).
  const publicJwk = publicMembers(exportPublicJwk(publicKey));
  return { alg, privateKey, publicJwk, jkt: thumbprintOf(publicJwk) };
}

/**
 * A P-256 pair made by ECDH, which yields the raw scalar and point, then imported as a JWK: synchronous,
 * and about a third cheaper than generateKeyPair on the thread pool followed by the export of the point.
 */
function generateP256KeyPair(): { privateKey: KeyObject; publicKey: KeyObject } {
  const ecdh = createECDH('prime256v1');
  ecdh.generateKeys();
  const point = ecdh.getPublicKey(); // uncompressed: 0x04 || x || y, 32 bytes each
  const scalar = ecdh.getPrivateKey(); // without leading zero bytes; RFC 7518 §6.2.2.1 wants all 32
  const d = Buffer.alloc(32);
  scalar.copy(d, 32 - scalar.length);
  const privateKey = createPrivateKey({
    key: { kty: 'EC', crv: 'P-256', x: b64u(point.subarray(1, 33)), y: b64u(point.subarray(33, 65)), d: b64u(d) },
    format: 'jwk',
  });
  return { privateKey, publicKey: createPublicKey(privateKey) };
}

/**
 * A WebCrypto key pair made elsewhere (openid-client's DPoP pair, a test's) as a `DpopKey`, to sign proofs
 * with `createDpopProof`.
 */
export async function dpopKeyOf(
  pair: { readonly privateKey: CryptoKey; readonly publicKey: CryptoKey },
  alg: JwsAlg = 'ES256',
): Promise<DpopKey> {
  const publicJwk = publicMembers(await exportJWK(pair.publicKey));
  return { alg, privateKey: pair.privateKey, publicJwk, jkt: thumbprintOf(publicJwk) };
}

/** The private JWK, tagged with its `alg`, for storage next to the queued transfer. */
export async function exportDpopKey(key: DpopKey): Promise<JWK> {
  return { ...(await exportJWK(key.privateKey)), alg: key.alg };
}

export async function importDpopKey(privateJwk: JWK, alg: JwsAlg): Promise<DpopKey> {
  assertAllowedAlg(alg, ALLOWED_ALGS);
  if (privateJwk.alg !== undefined && privateJwk.alg !== alg) {
    throw new ProtocolError('alg_not_allowed', `the stored key is for ${privateJwk.alg}, not ${alg}`);
  }
  if (typeof privateJwk.d !== 'string' || !jwkFitsAlg(privateJwk, alg)) {
    throw new ProtocolError('invalid_dpop_proof', `not a private ${alg} JWK`);
  }
  const publicJwk = publicMembers(privateJwk);
  let privateKey: KeyObject;
  try {
    checkStoredKeyMembers(privateJwk);
    privateKey = createPrivateKey({
      key: privateJwk as Parameters<typeof createPrivateKey>[0] as never,
      format: 'jwk',
    });
    if (alg !== 'RS256') checkPublicMatchesPrivate(privateKey, privateJwk);
  } catch (cause) {
    throw new ProtocolError('invalid_dpop_proof', `cannot import the stored ${alg} key`, { cause });
  }
  return { alg, privateKey, publicJwk, jkt: thumbprintOf(publicJwk) };
}

/**
 * What the WebCrypto import (through jose) refused and node's JWK import does not check: `key_ops` other
 * than exactly `["sign"]`, a non-boolean `ext`.
 */
function checkStoredKeyMembers(jwk: JWK): void {
  const ops = jwk.key_ops;
  if (ops !== undefined && !(Array.isArray(ops) && ops.length === 1 && ops[0] === 'sign')) {
    throw new TypeError("the stored key's key_ops do not allow signing, and only signing");
  }
  if (jwk.ext !== undefined && typeof jwk.ext !== 'boolean') throw new TypeError('"ext" must be a boolean');
}

/**
 * A stored EC or OKP key whose `x` (and `y`) are not the public key of its `d` would sign proofs that no
 * verifier accepts. The WebCrypto import refused such a key; node's JWK import keeps the stored public point
 * of an EC key unchecked, so the point is computed from `d` here (ECDH does it without a signature).
 */
function checkPublicMatchesPrivate(privateKey: KeyObject, privateJwk: JWK): void {
  let stored: Buffer;
  let actual: Buffer;
  if (privateJwk.kty === 'EC') {
    const ecdh = createECDH('prime256v1');
    ecdh.setPrivateKey(Buffer.from(privateJwk.d!, 'base64url'));
    actual = ecdh.getPublicKey();
    stored = Buffer.concat([
      Buffer.of(4),
      Buffer.from(privateJwk.x ?? '', 'base64url'),
      Buffer.from(privateJwk.y ?? '', 'base64url'),
    ]);
  } else {
    actual = Buffer.from(createPublicKey(privateKey).export({ format: 'jwk' }).x ?? '', 'base64url');
    stored = Buffer.from(privateJwk.x ?? '', 'base64url');
  }
  if (!stored.equals(actual)) throw new TypeError('the stored public key is not the public key of d');
}

/** RFC 7638 JWK SHA-256 thumbprint, the value of `cnf.jkt`. */
export async function jwkThumbprint(jwk: JWK): Promise<string> {
  return thumbprintOf(jwk);
}

function thumbprintOf(jwk: JWK): string {
  return b64uSha256(jwkThumbprintInput(jwk));
}

/** The `ath` claim: B64U(SHA-256(ASCII(access token))). */
export function accessTokenHash(token: string): string {
  return b64uSha256(token);
}

/**
 * RFC 9449 §4.3: compare URIs without query and fragment, with scheme and host lower-cased and the
 * default port removed. Only http(s) URLs: the WHATWG parser normalizes host and port only for them.
 */
export function normalizeHtu(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (cause) {
    throw new ProtocolError('dpop_htu_mismatch', `htu is not an absolute URL: ${url}`, { cause });
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
    throw new ProtocolError('dpop_htu_mismatch', `htu must be an http(s) URL: ${url}`);
  }
  return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
}

export async function createDpopProof(key: DpopKey, opts: CreateDpopProofOptions): Promise<string> {
  const payload: JWTPayload = {
    // 128 random bits: RFC 9449 §4.2 asks for enough entropy that collisions are negligible.
    jti: opts.jti ?? b64u(randomBytes(16)),
    htm: opts.htm,
    htu: normalizeHtu(opts.htu),
    iat: opts.now ?? Math.floor(Date.now() / 1000),
  };
  if (opts.accessToken !== undefined) payload.ath = accessTokenHash(opts.accessToken);
  if (opts.nonce !== undefined) payload.nonce = opts.nonce;
  return signJwt(payload, { typ: JWT_TYPES.dpop, alg: key.alg, key: key.privateKey, jwk: key.publicJwk });
}

/** RFC 9449 §4.3 checks, first failure wins; the jti is recorded only once every other check passed. */
export async function verifyDpopProof(proof: string, opts: VerifyDpopProofOptions): Promise<VerifiedDpopProof> {
  const { header, payload } = decodeJwt(proof);
  if (header.typ !== JWT_TYPES.dpop) {
    throw new ProtocolError('invalid_typ', `typ must be exactly ${JWT_TYPES.dpop}, got ${String(header.typ)}`);
  }
  const alg = assertAllowedAlg(header.alg, opts.algorithms ?? ALLOWED_ALGS);
  checkForbiddenHeaderParameters(header, true);
  const jwk = embeddedPublicJwk(header.jwk, alg);
  await verifySignature(proof, await importPublicJwk(jwk, alg, 'invalid_dpop_proof'), alg);
  const claims = requiredClaims(payload);
  checkRequest(claims, opts);
  const maxAge = opts.maxAgeSeconds ?? DEFAULT_MAX_AGE_SECONDS;
  if (Math.abs(opts.now - claims.iat) > maxAge) {
    throw new ProtocolError('dpop_iat_out_of_window', `iat ${claims.iat} is more than ${maxAge}s from ${opts.now}`);
  }
  const jkt = thumbprintOf(jwk);
  if (opts.expectedJkt !== undefined && jkt !== opts.expectedJkt) {
    throw new ProtocolError('dpop_key_mismatch', 'the proof key thumbprint does not equal cnf.jkt');
  }
  // iat is a NumericDate (RFC 7519 §2), which may have a fraction; the stores keep whole seconds, rounded up
  // so that the record never ends before the proof stops being accepted.
  const expiresAt = Math.ceil(claims.iat + maxAge + REPLAY_MARGIN_SECONDS);
  const fresh = await opts.replay.checkAndRecord(dpopReplayKey(jkt, claims.jti), expiresAt);
  if (!fresh) throw new ProtocolError('dpop_replayed', `jti ${clip(claims.jti)} was already used`);
  return { jkt, jwk, payload };
}

/**
 * The replay record of a proof (docs/protocol.md §10.3): B64U(SHA-256(thumbprint ":" jti)). RFC 9449 puts no
 * bound on a jti, and the header can carry kilobytes of one; hashed, every record is 43 characters (a
 * database column of any dialect holds it, a memory store stays small) and the pair stays distinct, since a
 * thumbprint is always 43 base64url characters without a colon.
 */
export function dpopReplayKey(jkt: string, jti: string): string {
  return b64uSha256(`${jkt}:${jti}`);
}

/** A jti as an error message quotes it: a caller's kilobytes are not echoed back. */
function clip(text: string): string {
  return text.length <= 64 ? text : `${text.slice(0, 64)}…`;
}

interface DpopClaims {
  jti: string;
  htm: string;
  htu: string;
  iat: number;
  ath: unknown;
}

function embeddedPublicJwk(jwk: unknown, alg: JwsAlg): JWK {
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) {
    throw new ProtocolError('invalid_dpop_proof', 'the jwk header must be a JSON object');
  }
  if (hasPrivateMembers(jwk as JWK)) {
    throw new ProtocolError('invalid_dpop_proof', 'the jwk header must not contain private key material');
  }
  if (!jwkFitsAlg(jwk as JWK, alg)) {
    throw new ProtocolError('invalid_dpop_proof', `the jwk header is not a ${alg} key`);
  }
  return jwk as JWK;
}

function requiredClaims(payload: JWTPayload): DpopClaims {
  const { jti, htm, htu, iat } = payload;
  if (typeof jti !== 'string' || jti.length === 0) throw missingClaim('jti');
  if (typeof htm !== 'string') throw missingClaim('htm');
  if (typeof htu !== 'string') throw missingClaim('htu');
  if (typeof iat !== 'number' || !Number.isFinite(iat)) throw missingClaim('iat');
  return { jti, htm, htu, iat, ath: payload.ath };
}

function missingClaim(name: string): ProtocolError {
  return new ProtocolError('invalid_dpop_proof', `the proof lacks a valid ${name} claim`);
}

function checkRequest(claims: DpopClaims, opts: VerifyDpopProofOptions): void {
  // HTTP methods are case-sensitive (RFC 9110 §9.1), so no case folding here.
  if (claims.htm !== opts.htm) {
    throw new ProtocolError('dpop_htm_mismatch', `htm ${claims.htm} does not match ${opts.htm}`);
  }
  const expected = normalizeHtu(opts.htu);
  if (normalizeHtu(claims.htu) !== expected) {
    throw new ProtocolError('dpop_htu_mismatch', `htu ${claims.htu} does not match ${expected}`);
  }
  // A proof sent with an access token must be bound to it: a missing ath is as wrong as a different one.
  if (opts.accessToken !== undefined && claims.ath !== accessTokenHash(opts.accessToken)) {
    throw new ProtocolError('dpop_ath_mismatch', 'ath is not the hash of the presented access token');
  }
}

function publicMembers(jwk: JWK): JWK {
  const names = PUBLIC_MEMBERS[jwk.kty ?? ''] ?? [];
  return Object.fromEntries(
    names.filter((n) => Object.hasOwn(jwk, n)).map((n) => [n, (jwk as Record<string, unknown>)[n]]),
  ) as JWK;
}

/** In-process ReplayStore for tests and single-process deployments; bounded, expired entries dropped. */
export class MemoryReplayStore implements ReplayStore {
  readonly #entries = new Map<string, number>();
  readonly #maxEntries: number;
  readonly #now: () => number;

  constructor(opts: { maxEntries?: number; now?: () => number } = {}) {
    this.#maxEntries = opts.maxEntries ?? 100_000;
    this.#now = opts.now ?? (() => Math.floor(Date.now() / 1000));
  }

  get size(): number {
    return this.#entries.size;
  }

  async checkAndRecord(key: string, expiresAt: number): Promise<boolean> {
    // No await before the set: the check and the record happen in one turn of the event loop.
    const now = this.#now();
    const seen = this.#entries.get(key);
    if (seen !== undefined && seen > now) return false;
    if (seen === undefined && this.#entries.size >= this.#maxEntries) {
      this.#sweep(now);
      // Fail closed: forgetting a live jti to make room would let that proof be replayed.
      if (this.#entries.size >= this.#maxEntries) throw new Error('DPoP replay store is full');
    }
    this.#entries.set(key, expiresAt);
    return true;
  }

  #sweep(now: number): void {
    for (const [key, expiresAt] of this.#entries) if (expiresAt <= now) this.#entries.delete(key);
  }
}

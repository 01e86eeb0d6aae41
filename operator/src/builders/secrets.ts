/**
 * Secrets generated once per MailDomain: the AS admin token (the AS, the mailbox and the operator share it),
 * the AS cookie keys, and the MTA's key pair for private_key_jwt (the mailbox signs with the private JWK, the AS
 * knows the public JWKS). They are built only when absent from the namespace and carry CREATE_ONLY_ANNOTATION,
 * so no reconcile ever replaces a key in use.
 *
 * The AS's token-signing keys are not among them: the AS makes, rotates and retires those itself, in its
 * database, so that every replica signs with the current key and retired keys stay published for the share
 * window (services/auth/src/keys.ts). A Secret could not take part in that rotation.
 */
import { createECDH, createHash, randomBytes } from 'node:crypto';
import type { ResolvedMailDomain } from '../model.js';
import { CREATE_ONLY_ANNOTATION, metadata, names, type Manifest } from './meta.js';

/** The keys inside the generated Secrets (the Deployments' secretKeyRefs name them). */
export const SECRET_KEYS = {
  adminToken: 'token',
  cookieKeys: 'keys',
  mtaPrivateJwk: 'private.jwk',
  mtaPublicJwks: 'public.jwks',
} as const;

export interface GeneratedMaterial {
  readonly adminToken: string;
  readonly cookieKey: string;
  /** The MTA's private key as a JWK with kid, alg and use. */
  readonly mtaPrivateJwk: Record<string, string>;
}

/** RFC 7638 thumbprint of an EC public key: the kid, so the key names itself. */
function thumbprint(jwk: { crv: string; x: string; y: string }): string {
  const canonical = JSON.stringify({ crv: jwk.crv, kty: 'EC', x: jwk.x, y: jwk.y });
  return createHash('sha256').update(canonical).digest('base64url');
}

/** Fresh random material: 256-bit tokens and a P-256 key pair (ES256, which every AS configuration accepts). */
export function generateMaterial(): GeneratedMaterial {
  const jwk = p256Jwk();
  return {
    adminToken: randomBytes(32).toString('base64url'),
    cookieKey: randomBytes(32).toString('base64url'),
    mtaPrivateJwk: { ...jwk, kid: thumbprint(jwk), alg: 'ES256', use: 'sig' },
  };
}

/**
 * A P-256 private JWK from ECDH's raw scalar and point. Not generateKeyPairSync and a JWK export: on Node 20
 * that export can deadlock with a garbage collection that finalizes the key's generation job.
 */
function p256Jwk(): { kty: string; crv: string; x: string; y: string; d: string } {
  const ecdh = createECDH('prime256v1');
  ecdh.generateKeys();
  const point = ecdh.getPublicKey(); // 0x04 || x || y
  const scalar = ecdh.getPrivateKey(); // leading zero bytes dropped; RFC 7518 §6.2.2.1 wants all 32
  const d = Buffer.alloc(32);
  scalar.copy(d, 32 - scalar.length);
  const b64u = (bytes: Buffer) => bytes.toString('base64url');
  return { kty: 'EC', crv: 'P-256', x: b64u(point.subarray(1, 33)), y: b64u(point.subarray(33, 65)), d: b64u(d) };
}

export function publicJwks(privateJwk: Record<string, string>): { keys: Record<string, string>[] } {
  const { kty, crv, x, y, kid, alg, use } = privateJwk;
  return { keys: [{ kty: kty!, crv: crv!, x: x!, y: y!, kid: kid!, alg: alg!, use: use! }] };
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

export function buildSecrets(
  md: ResolvedMailDomain,
  existing: ReadonlySet<string>,
  generate: () => GeneratedMaterial,
): Manifest[] {
  const n = names(md);
  const wanted = [n.adminToken, n.cookieKeys, n.mtaKey].filter((name) => !existing.has(name));
  if (wanted.length === 0) return [];
  const material = generate();
  const secret = (name: string, data: Record<string, string>): Manifest => ({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: metadata(md, 'auth', name, { annotations: { [CREATE_ONLY_ANNOTATION]: 'true' } }),
    type: 'Opaque',
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, b64(v)])),
  });
  const all: Record<string, () => Manifest> = {
    [n.adminToken]: () => secret(n.adminToken, { [SECRET_KEYS.adminToken]: material.adminToken }),
    [n.cookieKeys]: () => secret(n.cookieKeys, { [SECRET_KEYS.cookieKeys]: material.cookieKey }),
    [n.mtaKey]: () =>
      secret(n.mtaKey, {
        [SECRET_KEYS.mtaPrivateJwk]: JSON.stringify(material.mtaPrivateJwk),
        [SECRET_KEYS.mtaPublicJwks]: JSON.stringify(publicJwks(material.mtaPrivateJwk)),
      }),
  };
  return wanted.map((name) => all[name]!());
}

import { createHash } from 'node:crypto';

/** base64url without padding (RFC 4648 §5). */
export function b64u(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url');
}

export function sha256(data: Uint8Array | string): Buffer {
  return createHash('sha256').update(data).digest();
}

/** `B64U(H(x))`: the 43-character form every digest of the protocol uses. */
export function b64uSha256(data: Uint8Array | string): string {
  return sha256(data).toString('base64url');
}

const B64U_43 = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/;

/** True for exactly the 43-character base64url strings that a SHA-256 digest can encode to. */
export function isB64uSha256(s: string): boolean {
  return B64U_43.test(s);
}

/**
 * DPoP proofs (RFC 9449 §4) for the mailbox's client API, signed with the session's non-extractable
 * P-256 key. oauth4webapi makes the proofs of the token endpoint itself, but keeps its proof function
 * private; the mailbox needs proofs for requests it cannot make (XMLHttpRequest uploads with progress,
 * and the service worker's Range requests for media), so the resource side signs its own.
 */

const encoder = new TextEncoder();

export function b64u(bytes: ArrayBuffer | Uint8Array): string {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let binary = '';
  for (const byte of view) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

const b64uJson = (value: unknown) => b64u(encoder.encode(JSON.stringify(value)));

const publicJwks = new WeakMap<CryptoKey, Promise<JsonWebKey>>();

/** Only the public members: WebCrypto's export of a public EC key has no `d`, but also `key_ops` and `ext`. */
function publicJwkOf(key: CryptoKey): Promise<JsonWebKey> {
  let jwk = publicJwks.get(key);
  if (!jwk) {
    jwk = crypto.subtle.exportKey('jwk', key).then(({ kty, crv, x, y }) => ({ kty, crv, x, y }));
    publicJwks.set(key, jwk);
  }
  return jwk;
}

/** A new session key: the private half can sign but can never be read, not even by this code. */
export function generateDpopKeyPair(): Promise<CryptoKeyPair> {
  return crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify']);
}

/** RFC 9449 §4.2: htu is the URL without query and fragment. */
function htuOf(url: string): string {
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}

export async function createDpopProof(
  keyPair: CryptoKeyPair,
  request: { readonly method: string; readonly url: string; readonly accessToken?: string },
  now: () => number = Date.now,
): Promise<string> {
  const header = { typ: 'dpop+jwt', alg: 'ES256', jwk: await publicJwkOf(keyPair.publicKey) };
  const payload: Record<string, unknown> = {
    jti: b64u(crypto.getRandomValues(new Uint8Array(16))),
    htm: request.method.toUpperCase(),
    htu: htuOf(request.url),
    iat: Math.floor(now() / 1000),
  };
  if (request.accessToken !== undefined)
    payload.ath = b64u(await crypto.subtle.digest('SHA-256', encoder.encode(request.accessToken)));
  const input = `${b64uJson(header)}.${b64uJson(payload)}`;
  // WebCrypto's ECDSA signature is r || s, which is exactly JWS's ES256 encoding (RFC 7518 §3.4).
  const signature = await crypto.subtle.sign(
    { name: 'ECDSA', hash: 'SHA-256' },
    keyPair.privateKey,
    encoder.encode(input),
  );
  return `${input}.${b64u(signature)}`;
}

/**
 * The digests of PROTOCOL.md §3 and Content-IDs. Each is `B64U(SHA-256(...))`; header values get the
 * `<...>` brackets, `eht` does not.
 */
import { createHash } from 'node:crypto';
import { b64uSha256 } from './encoding.js';
import { ProtocolError } from './errors.js';
import { findHeader, type Body, type Header } from './message.js';

/**
 * RFC 8785 JSON Canonicalization Scheme, as UTF-8 bytes. Strings and numbers serialize exactly as
 * ECMAScript's JSON.stringify (RFC 8785 §3.2.2), and object members sort by UTF-16 code units, which is
 * JavaScript's default string order (§3.2.3). Written here rather than taken from a library because the
 * Body-Digest is on every hot path and the general-purpose one spent most of its time on checks this
 * caller makes once: lone surrogates (refused by the parser) and cycles (impossible in parsed JSON).
 */
export function jcs(value: unknown): Buffer {
  return Buffer.from(jcsText(value), 'utf8');
}

export function jcsText(value: unknown): string {
  // Parsed messages nearly always have their members in canonical order already (headers hold one
  // member, parts hold `headers` then `parts`); then the native serializer produces exactly JCS.
  return isCanonicalAsIs(value) ? JSON.stringify(value) : canonicalText(value);
}

/** True when JSON.stringify of the value is already its JCS form: plain data, members sorted, text well formed. */
function isCanonicalAsIs(value: unknown): boolean {
  if (typeof value === 'string') return value.isWellFormed();
  if (typeof value === 'number') return Number.isFinite(value);
  if (value === null || typeof value === 'boolean') return true;
  if (Array.isArray(value)) {
    for (const item of value) if (item === undefined || !isCanonicalAsIs(item)) return false;
    return true;
  }
  if (typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  if (proto !== Object.prototype && proto !== null) return false;
  let previous: string | undefined;
  for (const key in value) {
    if ((previous !== undefined && !(previous < key)) || !key.isWellFormed()) return false;
    const member = (value as Record<string, unknown>)[key];
    if (member === undefined || !isCanonicalAsIs(member)) return false;
    previous = key;
  }
  return true;
}

function canonicalText(value: unknown): string {
  if (typeof value === 'string') {
    if (!value.isWellFormed()) throw new TypeError('RFC 8785 §3.2.2.2: a string holds a lone surrogate');
    return JSON.stringify(value);
  }
  if (value === null || typeof value === 'boolean') return String(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError('RFC 8785 §3.2.2.3: NaN and Infinity have no JSON form');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out += ',';
      const item: unknown = value[i];
      out += item === undefined || typeof item === 'function' ? 'null' : canonicalText(item);
    }
    return `${out}]`;
  }
  if (typeof value === 'object') {
    const object = value as Record<string, unknown>;
    const keys = Object.keys(object);
    if (keys.length > 1) keys.sort();
    let out = '{';
    let first = true;
    for (const key of keys) {
      const member = object[key];
      if (member === undefined || typeof member === 'function') continue;
      out += `${first ? '' : ','}${canonicalText(key)}:${canonicalText(member)}`;
      first = false;
    }
    return `${out}}`;
  }
  throw new TypeError(`RFC 8785: a ${typeof value} has no JSON form`);
}

/** `<B64U(H(bytes))>`: the form of every digest header value. */
export function digestHeaderValue(bytes: Uint8Array | string): string {
  return `<${b64uSha256(bytes)}>`;
}

/** `Body-Digest = <B64U(H(JCS(body)))>` over the whole body object. */
export function bodyDigest(body: Body): string {
  // The hash reads the canonical text as UTF-8 itself: no intermediate Buffer copy of the body.
  return digestHeaderValue(jcsText(body));
}

const ORIGIN_RECIPIENTS = ['To', 'Cc', 'Bcc'] as const;

/**
 * The recipient headers a `Recipients-Digest` covers: in a forward block (one holding Forwarded-From) the
 * `Forwarded-To` header, otherwise `To`, `Cc`, `Bcc` in that order; absent ones are left out.
 */
export function recipientHeaders(headers: readonly Header[], kind: 'origin' | 'forward'): Header[] {
  const names = kind === 'forward' ? (['Forwarded-To'] as const) : ORIGIN_RECIPIENTS;
  return names.flatMap((name) => {
    const h = findHeader(headers, name);
    return h === undefined ? [] : [{ [name]: h[name]! }];
  });
}

/** `Recipients-Digest = <B64U(H(JCS(R)))>`, R the recipient header objects of the block, values as written. */
export function recipientsDigest(headers: readonly Header[], kind: 'origin' | 'forward'): string {
  return digestHeaderValue(jcs(recipientHeaders(headers, kind)));
}

/** `JWT-Assertion-Digest = <B64U(H(ASCII(compact JWS)))>`. */
export function assertionDigest(compactJws: string): string {
  if (!/^[\x21-\x7e]+$/.test(compactJws)) throw new TypeError('a compact JWS is printable ASCII');
  return digestHeaderValue(compactJws);
}

/**
 * `eht = B64U(H(JCS(E)))`, E the header objects named by `ehl`, in `ehl` order, taken from the block.
 * Returns undefined when the block lacks a named header.
 */
export function ehtOrUndefined(headers: readonly Header[], ehl: readonly string[]): string | undefined {
  const picked: Header[] = [];
  for (const name of ehl) {
    const h = findHeader(headers, name);
    if (h === undefined) return undefined;
    picked.push({ [name]: h[name]! });
  }
  return b64uSha256(jcs(picked));
}

export function eht(headers: readonly Header[], ehl: readonly string[]): string {
  const value = ehtOrUndefined(headers, ehl);
  if (value === undefined) {
    const missing = ehl.find((name) => findHeader(headers, name) === undefined);
    throw new ProtocolError('missing_header', `the block has no ${missing} header, which ehl names`);
  }
  return value;
}

/** The Content-ID of a resource: `<B64U(H(bytes))>`. */
export function contentId(bytes: Uint8Array | string): string {
  return digestHeaderValue(bytes);
}

/** Content-ID and size of a stream of bytes, read once without holding it in memory. */
export async function contentIdOfStream(
  chunks: AsyncIterable<Uint8Array>,
): Promise<{ contentId: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of chunks) {
    hash.update(chunk);
    size += chunk.byteLength;
  }
  return { contentId: `<${hash.digest('base64url')}>`, size };
}

/** A streaming hasher for code that writes bytes somewhere while hashing them. */
export class ContentIdHasher {
  private readonly hash = createHash('sha256');
  size = 0;

  update(chunk: Uint8Array): void {
    this.hash.update(chunk);
    this.size += chunk.byteLength;
  }

  /** `<B64U(H(bytes))>`; the hasher cannot be used afterwards. */
  contentId(): string {
    return `<${this.hash.digest('base64url')}>`;
  }
}

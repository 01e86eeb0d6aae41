/**
 * How the service worker answers `/r/<digest>`: from the mailbox's `GET /api/v1/resources/<digest>`
 * with `Authorization: DPoP` and a fresh proof for every request, passing the page's `Range` through.
 * This is why video plays and seeks while it streams: the media element makes its own Range requests
 * (it cannot add headers), and each one is signed here. MediaSource would need fragmented MP4/WebM and
 * codec strings known in advance, and would not serve images, audio or downloads; this serves any
 * format the browser plays, with one code path.
 *
 * Whole resources up to a size are kept in Cache Storage: they are immutable (the URL is their
 * digest), so they never need revalidation, and they stay viewable offline, seeking included. They are
 * answered only while someone is signed in, and the cache is emptied whenever a session ends.
 *
 * The bytes are the sender's, and so is their media type, yet they are served on the webmail's origin,
 * where the session lives: an HTML or SVG "attachment" opened at /r/<digest> would run the sender's
 * script with the reader's tokens. So every answer carries a sandboxing CSP, and a type the browser
 * could render as a document is only ever offered as a download.
 *
 * Its answers follow the mailbox's (services/mailbox/src/api/resources.ts, PROTOCOL.md §9): the same
 * `ETag` (the Content-ID in quotes) and `Cache-Control: private, immutable` on a 200 or 206 only; an
 * error, a 416 included, is `Cache-Control: no-store`, and a 416 says the size in `Content-Range`; Range
 * is read as the mailbox reads it, and ignored when an If-Range does not strongly match (RFC 9110 §13.1.5).
 */
import { MailboxClient, type TokenSource } from '../api/client.js';
import { ApiError } from '../api/errors.js';
import type { ResourceRequest } from './resource-route.js';
/** Larger resources are streamed each time rather than kept. */
const MAX_KEPT_BYTES = 25 * 1024 * 1024;

export interface ResourceProxyDeps {
  readonly apiBase: string;
  readonly tokens: TokenSource;
  readonly fetch?: typeof fetch;
  readonly cache?: Pick<Cache, 'match' | 'put'>;
  /** Whether a session exists now: kept copies are the signed-in user's mail, for nobody else. */
  readonly signedIn?: () => Promise<boolean>;
  /** Keeps the worker alive for work that outlasts the response (FetchEvent.waitUntil). */
  readonly waitUntil?: (work: Promise<unknown>) => void;
}

type Range = { start: number; end: number } | 'unsatisfiable' | undefined;

/** int-range = first-pos "-" [ last-pos ]; suffix-range = "-" suffix-length (RFC 9110 §14.1.2). */
const RANGE_SPEC = /^(?:([0-9]+)-([0-9]*)|-([0-9]+))$/;

/**
 * A `Range` header against a known size, read exactly as the mailbox reads it (services/mailbox/src/blobs/
 * range.ts), so a kept copy answers as the mailbox would: undefined (the whole resource, 200) for a header
 * that does not parse, another unit, several ranges, last-pos below first-pos, or a suffix of an empty
 * resource (satisfiable by RFC 9110 §14.1.1, yet it selects no bytes); 'unsatisfiable' (416) for a first
 * byte at or past the end, or a zero-length suffix.
 */
export function parseByteRange(header: string | null, size: number): Range {
  if (!header) return undefined;
  const value = header.trim();
  const equals = value.indexOf('=');
  // Range units are case-insensitive (§14.1); a range-set is a #list, empty elements allowed (§5.6.1).
  if (equals < 0 || value.slice(0, equals).toLowerCase() !== 'bytes') return undefined;
  const specs = value
    .slice(equals + 1)
    .split(',')
    .map((spec) => spec.trim())
    .filter((spec) => spec !== '');
  if (specs.length !== 1) return undefined;
  const m = RANGE_SPEC.exec(specs[0]!);
  if (!m) return undefined;
  if (m[3] !== undefined) {
    const suffix = Number(m[3]);
    if (suffix === 0) return 'unsatisfiable';
    if (size === 0) return undefined;
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  const last = m[2] === '' ? undefined : Number(m[2]);
  if (last !== undefined && last < start) return undefined;
  if (start >= size) return 'unsatisfiable';
  return { start, end: last === undefined ? size - 1 : Math.min(last, size - 1) };
}

/**
 * If-Range (RFC 9110 §13.1.5): whether the Range may be honoured. Only a strong match of the resource's
 * entity tag does (the mailbox's, or the bracket-less one it sent before); a weak tag or a date never does.
 */
export function ifRangeHolds(header: string | null, digest: string): boolean {
  if (header === null) return true;
  const value = header.trim();
  return value === `"<${digest}>"` || value === `"${digest}"`;
}

function contentDisposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_');
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`;
}

/** No script, no plugin, no fetch: what a media or text document shown by itself needs, nothing more. */
export const RESOURCE_CSP =
  "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'";

/** Types a browser shows inline without running anything of the sender's (SVG is a document: not here). */
const INLINE_SAFE = /^(?:image\/(?:png|jpeg|gif|webp|avif|bmp)|audio\/[\w.+-]+|video\/[\w.+-]+|text\/plain)$/i;

export function isInlineSafe(mediaType: string | undefined): boolean {
  const base = (mediaType ?? '').split(';', 1)[0]!.trim();
  return INLINE_SAFE.test(base);
}

function headersFor(target: ResourceRequest, upstream: Headers | undefined): Headers {
  const h = new Headers();
  const type = upstream?.get('content-type') ?? target.type;
  if (type) h.set('content-type', type);
  h.set('accept-ranges', 'bytes');
  // As the mailbox answers (PROTOCOL.md §9): `private, immutable`, and the Content-ID in quotes as the tag.
  h.set('cache-control', 'private, immutable');
  h.set('x-content-type-options', 'nosniff');
  h.set('content-security-policy', RESOURCE_CSP);
  h.set('etag', `"<${target.digest}>"`);
  // An <img> or <video> ignores the disposition; a navigation to anything but plain media downloads it.
  if (target.download || !isInlineSafe(type ?? undefined))
    h.set('content-disposition', contentDisposition(target.name ?? target.digest));
  return h;
}

/** An answer that is not the resource: never cached, and without its entity tag or cache directives. */
function failure(status: number, message: string, extra: Record<string, string> = {}): Response {
  return new Response(message, {
    status,
    headers: {
      'content-type': 'text/plain; charset=utf-8',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      ...extra,
    },
  });
}

/** 416 as the mailbox answers it (RFC 9110 §15.5.17): the size in `Content-Range`, not cacheable. */
function unsatisfiable(size: string | number): Response {
  return failure(416, `the resource has ${size} bytes`, { 'content-range': `bytes */${size}` });
}

async function fromCache(cached: Response, target: ResourceRequest, rangeHeader: string | null): Promise<Response> {
  const blob = await cached.blob();
  const headers = headersFor(target, cached.headers);
  const range = parseByteRange(rangeHeader, blob.size);
  if (range === 'unsatisfiable') return unsatisfiable(blob.size);
  if (range) {
    headers.set('content-range', `bytes ${range.start}-${range.end}/${blob.size}`);
    headers.set('content-length', String(range.end - range.start + 1));
    return new Response(blob.slice(range.start, range.end + 1), { status: 206, headers });
  }
  headers.set('content-length', String(blob.size));
  return new Response(blob, { status: 200, headers });
}

export async function proxyResource(
  request: Request,
  target: ResourceRequest,
  deps: ResourceProxyDeps,
): Promise<Response> {
  const key = `/r/${target.digest}`;
  // An If-Range that does not strongly match: the whole resource, as the mailbox would answer.
  const rangeHeader = ifRangeHolds(request.headers.get('if-range'), target.digest)
    ? request.headers.get('range')
    : null;
  if (deps.signedIn && !(await deps.signedIn())) return failure(401, 'not signed in');
  const cached = await deps.cache?.match(key);
  if (cached) return fromCache(cached, target, rangeHeader);

  // The client turns the mailbox's 416 into an error without its headers: its Content-Range is kept here.
  let unsatisfiedRange: string | null = null;
  const fetchUpstream = deps.fetch ?? fetch;
  const api = new MailboxClient({
    apiBase: deps.apiBase,
    tokens: deps.tokens,
    fetch: async (input, init) => {
      const res = await fetchUpstream(input, init);
      if (res.status === 416) unsatisfiedRange = res.headers.get('content-range');
      return res;
    },
  });
  let upstream: Response;
  try {
    upstream = await api.resource(`<${target.digest}>`, {
      range: rangeHeader ?? undefined,
      signal: request.signal,
    });
  } catch (e) {
    const status = e instanceof ApiError && e.status >= 400 ? e.status : 502;
    const size = status === 416 ? /^bytes \*\/([0-9]+)$/.exec(unsatisfiedRange ?? '')?.[1] : undefined;
    if (size !== undefined) return unsatisfiable(size);
    return failure(status, (e as Error).message);
  }
  const headers = headersFor(target, upstream.headers);
  for (const name of ['content-length', 'content-range']) {
    const value = upstream.headers.get(name);
    if (value) headers.set(name, value);
  }
  const size = Number(upstream.headers.get('content-length') ?? NaN);
  // A synthetic response of this origin: the page's media element sees one origin for every range.
  const response = new Response(upstream.body, { status: upstream.status, headers });
  if (deps.cache && upstream.status === 200 && size <= MAX_KEPT_BYTES) {
    // Not awaited: the page gets the first bytes at once, while the copy fills behind it.
    const kept = deps.cache.put(key, response.clone()).catch(() => undefined);
    deps.waitUntil?.(kept);
  }
  return response;
}

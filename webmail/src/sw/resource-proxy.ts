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

/** A single `bytes=` range (RFC 9110 §14.1.2) against a known size; several ranges are answered whole. */
export function parseByteRange(header: string | null, size: number): Range {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return 'unsatisfiable';
  return { start, end };
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
  h.set('cache-control', 'private, max-age=31536000, immutable');
  h.set('x-content-type-options', 'nosniff');
  h.set('content-security-policy', RESOURCE_CSP);
  h.set('etag', `"${target.digest}"`);
  // An <img> or <video> ignores the disposition; a navigation to anything but plain media downloads it.
  if (target.download || !isInlineSafe(type ?? undefined))
    h.set('content-disposition', contentDisposition(target.name ?? target.digest));
  return h;
}

async function fromCache(cached: Response, target: ResourceRequest, rangeHeader: string | null): Promise<Response> {
  const blob = await cached.blob();
  const headers = headersFor(target, cached.headers);
  const range = parseByteRange(rangeHeader, blob.size);
  if (range === 'unsatisfiable') {
    headers.set('content-range', `bytes */${blob.size}`);
    return new Response(null, { status: 416, headers });
  }
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
  const rangeHeader = request.headers.get('range');
  if (deps.signedIn && !(await deps.signedIn()))
    return new Response('not signed in', { status: 401, headers: { 'content-type': 'text/plain; charset=utf-8' } });
  const cached = await deps.cache?.match(key);
  if (cached) return fromCache(cached, target, rangeHeader);

  const api = new MailboxClient({ apiBase: deps.apiBase, tokens: deps.tokens, fetch: deps.fetch ?? fetch });
  let upstream: Response;
  try {
    upstream = await api.resource(`<${target.digest}>`, {
      range: rangeHeader ?? undefined,
      signal: request.signal,
    });
  } catch (e) {
    const status = e instanceof ApiError && e.status >= 400 ? e.status : 502;
    return new Response((e as Error).message, { status, headers: { 'content-type': 'text/plain; charset=utf-8' } });
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

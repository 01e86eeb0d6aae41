/**
 * The service worker's answer to `/r/<digest>`, run in Node against a real mailbox: Range passed
 * through and signed, the headers a media element needs, downloads, and whole copies kept and sliced.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestOf } from '../api/client.js';
import type { UploadedResource } from '../api/types.js';
import { localFetch, startWebmailFederation, type SignedIn, type WebmailFederation } from '../testing/federation.js';
import { RESOURCE_CSP, ifRangeHolds, parseByteRange, proxyResource, type ResourceProxyDeps } from './resource-proxy.js';
import { parseResourceUrl, resourcePath } from './resource-route.js';

let fed: WebmailFederation;
let alice: SignedIn;
let video: UploadedResource;
let empty: UploadedResource;
const bytes = Uint8Array.from({ length: 100_000 }, (_, i) => i % 251);

beforeAll(async () => {
  fed = await startWebmailFederation(['example.com']);
  alice = await fed.signIn('alice@example.com');
  video = await alice.api.upload(new Blob([bytes]), { mediaType: 'video/webm' });
  empty = await alice.api.upload(new Blob([]), { mediaType: 'text/plain' });
});
afterAll(() => fed?.close());

/** Cache Storage's two calls, over a Map (Node has no Cache Storage; the browser test uses the real one). */
class MemoryCache {
  readonly entries = new Map<string, { body: ArrayBuffer; headers: Headers; status: number }>();
  async match(key: RequestInfo | URL): Promise<Response | undefined> {
    const e = this.entries.get(String(key));
    return e && new Response(e.body.slice(0), { status: e.status, headers: e.headers });
  }
  async put(key: RequestInfo | URL, res: Response): Promise<void> {
    this.entries.set(String(key), { body: await res.arrayBuffer(), headers: res.headers, status: res.status });
  }
}

function request(path: string, headers: Record<string, string> = {}) {
  const req = new Request(new URL(path, 'http://webmail.example-com.localhost'), { headers });
  return { req, target: parseResourceUrl(new URL(req.url))! };
}

function deps(over: Partial<ResourceProxyDeps> = {}): ResourceProxyDeps {
  return { apiBase: alice.api.apiBase, tokens: alice.auth, fetch: localFetch, ...over };
}

describe('proxyResource', () => {
  it('answers 502 when the mailbox redirects, and follows no redirect with the reader’s token', async () => {
    let followed = 0;
    const elsewhere = createServer((_req, res) => {
      followed++;
      res.end('not the resource');
    });
    await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
    const target = `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}`;
    const mailbox = createServer((req, res) => {
      res.writeHead(307, { location: `${target}${req.url}` });
      res.end();
    });
    await new Promise<void>((resolve) => mailbox.listen(0, '127.0.0.1', resolve));
    try {
      const apiBase = `http://127.0.0.1:${(mailbox.address() as AddressInfo).port}/api/v1`;
      const { req, target: resource } = request(resourcePath(digestOf(video.contentId), { type: 'video/webm' }));
      const res = await proxyResource(req, resource, deps({ apiBase }));
      expect(res.status).toBe(502);
      expect(await res.text()).toMatch(/answered with a redirect, which is not followed/);
      expect(followed).toBe(0);
    } finally {
      await new Promise((resolve) => mailbox.close(resolve));
      await new Promise((resolve) => elsewhere.close(resolve));
    }
  });

  it('passes a Range through with DPoP and answers 206 with what a media element needs', async () => {
    const { req, target } = request(resourcePath(digestOf(video.contentId), { type: 'video/webm' }), {
      range: 'bytes=1000-1999',
    });
    const res = await proxyResource(req, target, deps());
    expect(res.status).toBe(206);
    expect(Object.fromEntries(res.headers)).toMatchObject({
      'content-range': 'bytes 1000-1999/100000',
      'content-length': '1000',
      'content-type': 'video/webm',
      'accept-ranges': 'bytes',
    });
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(bytes.slice(1000, 2000));
  });

  it('keeps a whole resource, then serves ranges of it without the mailbox', async () => {
    const cache = new MemoryCache();
    const waits: Promise<unknown>[] = [];
    const { req, target } = request(resourcePath(digestOf(video.contentId)));
    const whole = await proxyResource(req, target, deps({ cache, waitUntil: (w) => waits.push(w) }));
    expect(whole.status).toBe(200);
    expect((await whole.arrayBuffer()).byteLength).toBe(100_000);
    await Promise.all(waits);
    expect([...cache.entries.keys()]).toEqual([`/r/${digestOf(video.contentId)}`]);

    const gone = {
      token: () => Promise.reject(new Error('no network')),
      tokenRejected: () => Promise.reject(new Error('x')),
    };
    const tail = request(resourcePath(digestOf(video.contentId)), { range: 'bytes=-10' });
    const res = await proxyResource(tail.req, tail.target, deps({ cache, tokens: gone }));
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe('bytes 99990-99999/100000');
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(bytes.slice(99_990));
    const beyond = request(resourcePath(digestOf(video.contentId)), { range: 'bytes=100000-' });
    const refused = await proxyResource(beyond.req, beyond.target, deps({ cache, tokens: gone }));
    expect(refused.status).toBe(416);
    expect(refused.headers.get('content-range')).toBe('bytes */100000');
  });

  it('PROTOCOL.md §9: answers with the mailbox’s ETag (the Content-ID) and Cache-Control: private, immutable', async () => {
    const cache = new MemoryCache();
    const waits: Promise<unknown>[] = [];
    const first = request(resourcePath(digestOf(video.contentId)));
    const upstream = await proxyResource(first.req, first.target, deps({ cache, waitUntil: (w) => waits.push(w) }));
    await upstream.arrayBuffer();
    await Promise.all(waits);
    const again = request(resourcePath(digestOf(video.contentId)), { range: 'bytes=0-9' });
    const kept = await proxyResource(again.req, again.target, deps({ cache }));
    const direct = await alice.api.resource(video.contentId);
    await direct.arrayBuffer();
    for (const res of [upstream, kept, direct]) {
      expect(res.headers.get('etag')).toBe(`"${video.contentId}"`);
      expect(res.headers.get('cache-control')).toBe('private, immutable');
    }
  });

  it('RFC 9110 §15.5.17: a 416 is not cacheable and says the size, kept copy or mailbox alike', async () => {
    const cache = new MemoryCache();
    const waits: Promise<unknown>[] = [];
    const path = resourcePath(digestOf(video.contentId));
    const upstream = request(path, { range: 'bytes=100000-' });
    // From the mailbox: its Content-Range is passed on, not dropped with its error.
    const fromMailbox = await proxyResource(upstream.req, upstream.target, deps({ cache }));
    const whole = request(path);
    await (
      await proxyResource(whole.req, whole.target, deps({ cache, waitUntil: (w) => waits.push(w) }))
    ).arrayBuffer();
    await Promise.all(waits);
    const fromCopy = await proxyResource(upstream.req, upstream.target, deps({ cache }));
    for (const res of [fromMailbox, fromCopy]) {
      expect(res.status).toBe(416);
      expect(res.headers.get('content-range')).toBe('bytes */100000');
      expect(res.headers.get('cache-control')).toBe('no-store');
      expect(res.headers.get('etag')).toBeNull();
    }
    // Other refusals are not cacheable either.
    const missing = request(`/r/${'A'.repeat(42)}E`);
    expect((await proxyResource(missing.req, missing.target, deps())).headers.get('cache-control')).toBe('no-store');
  });

  it('RFC 9110 §14.1.1: a suffix range of an empty resource is satisfiable: 200 with no bytes, as the mailbox answers', async () => {
    const cache = new MemoryCache();
    const waits: Promise<unknown>[] = [];
    const path = resourcePath(digestOf(empty.contentId));
    const tail = request(path, { range: 'bytes=-10' });
    const fromMailbox = await proxyResource(tail.req, tail.target, deps({ cache, waitUntil: (w) => waits.push(w) }));
    expect(fromMailbox.status).toBe(200);
    expect((await fromMailbox.arrayBuffer()).byteLength).toBe(0);
    await Promise.all(waits);
    expect(cache.entries.size).toBe(1);
    const fromCopy = await proxyResource(tail.req, tail.target, deps({ cache }));
    expect(fromCopy.status).toBe(200);
    expect(fromCopy.headers.get('content-length')).toBe('0');
  });

  it('RFC 9110 §13.1.5: an If-Range that does not strongly match serves the whole resource', async () => {
    const cache = new MemoryCache();
    const waits: Promise<unknown>[] = [];
    const path = resourcePath(digestOf(video.contentId));
    const stale = request(path, { range: 'bytes=0-9', 'if-range': '"something else"' });
    const fromMailbox = await proxyResource(stale.req, stale.target, deps({ cache, waitUntil: (w) => waits.push(w) }));
    expect(fromMailbox.status).toBe(200);
    expect((await fromMailbox.arrayBuffer()).byteLength).toBe(100_000);
    await Promise.all(waits);
    const fromCopy = await proxyResource(stale.req, stale.target, deps({ cache }));
    expect(fromCopy.status).toBe(200);
    const current = request(path, { range: 'bytes=0-9', 'if-range': `"${video.contentId}"` });
    expect((await proxyResource(current.req, current.target, deps({ cache }))).status).toBe(206);
  });

  it('answers a download as an attachment with its UTF-8 filename', async () => {
    const { req, target } = request(
      resourcePath(digestOf(video.contentId), { name: 'Fête "d’été".webm', download: true }),
    );
    const res = await proxyResource(req, target, deps());
    expect(res.headers.get('content-disposition')).toBe(
      `attachment; filename="F_te _d__t__.webm"; filename*=UTF-8''${encodeURIComponent('Fête "d’été".webm')}`,
    );
  });

  it('serves the sender’s HTML or SVG only as a sandboxed download: never as a page of the webmail’s origin', async () => {
    // Opened by a link at /r/<digest>, an HTML "attachment" would run the sender's script next to the session.
    const page = await alice.api.upload(new Blob(['<script>steal()</script>']), { mediaType: 'text/html' });
    const svg = await alice.api.upload(new Blob(['<svg onload="steal()"/>']), { mediaType: 'image/svg+xml' });
    for (const r of [page, svg]) {
      // The URL's own ?type= cannot make it inline either: the attacker writes the link.
      const { req, target } = request(resourcePath(digestOf(r.contentId), { type: 'image/png' }));
      const res = await proxyResource(req, target, deps());
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toContain(r.mediaType);
      expect(res.headers.get('content-disposition')).toMatch(/^attachment; /);
      expect(res.headers.get('content-security-policy')).toBe(RESOURCE_CSP);
    }
    // Media stay inline (a navigation to a video plays it), sandboxed all the same.
    const { req, target } = request(resourcePath(digestOf(video.contentId)));
    const res = await proxyResource(req, target, deps());
    expect(res.headers.get('content-disposition')).toBeNull();
    expect(res.headers.get('content-security-policy')).toMatch(/^sandbox; default-src 'none'/);
  });

  it('serves kept copies only while someone is signed in: the next user of the browser gets none', async () => {
    const cache = new MemoryCache();
    const waits: Promise<unknown>[] = [];
    const path = resourcePath(digestOf(video.contentId));
    const first = request(path);
    await (
      await proxyResource(first.req, first.target, deps({ cache, waitUntil: (w) => waits.push(w) }))
    ).arrayBuffer();
    await Promise.all(waits);
    expect(cache.entries.size).toBe(1);
    const again = request(path);
    const res = await proxyResource(again.req, again.target, deps({ cache, signedIn: async () => false }));
    expect(res.status).toBe(401);
  });

  it('passes the mailbox’s refusal on: a Content-ID the account does not hold is 404', async () => {
    const { req, target } = request(`/r/${'A'.repeat(42)}E`);
    const res = await proxyResource(req, target, deps());
    expect(res.status).toBe(404);
    expect(await res.text()).toMatch(/no such resource/);
  });
});

describe('resource URLs', () => {
  it('names a digest only: anything else is not a resource URL', () => {
    expect(parseResourceUrl(new URL('http://x/r/../index.html'))).toBeUndefined();
    expect(parseResourceUrl(new URL(`http://x/r/${'a'.repeat(42)}`))).toBeUndefined();
    expect(parseResourceUrl(new URL(`http://x/r/${'a'.repeat(43)}?download=1&name=a.txt`))).toMatchObject({
      download: true,
      name: 'a.txt',
    });
  });

  it('reads single byte ranges as RFC 9110 §14.1.2 writes them', () => {
    expect(parseByteRange('bytes=0-', 10)).toEqual({ start: 0, end: 9 });
    expect(parseByteRange('bytes=2-4', 10)).toEqual({ start: 2, end: 4 });
    expect(parseByteRange('bytes=5-100', 10)).toEqual({ start: 5, end: 9 });
    expect(parseByteRange('bytes=-3', 10)).toEqual({ start: 7, end: 9 });
    expect(parseByteRange('bytes=10-', 10)).toBe('unsatisfiable');
    expect(parseByteRange('bytes=-0', 10)).toBe('unsatisfiable');
    expect(parseByteRange('bytes=0-1,4-5', 10)).toBeUndefined(); // several ranges: the whole resource
    expect(parseByteRange(null, 10)).toBeUndefined();
  });

  it('reads a Range exactly as the mailbox does (services/mailbox/src/blobs/range.ts)', () => {
    // RFC 9110 §14.1.1: a suffix of an empty representation is satisfiable, and selects nothing: 200.
    expect(parseByteRange('bytes=-5', 0)).toBeUndefined();
    expect(parseByteRange('bytes=-0', 0)).toBe('unsatisfiable');
    expect(parseByteRange('bytes=0-', 0)).toBe('unsatisfiable');
    // last-pos below first-pos makes the range-spec invalid: ignored, not 416 (§14.1.1).
    expect(parseByteRange('bytes=5-3', 10)).toBeUndefined();
    // The unit is case-insensitive (§14.1); the list may have empty elements and white space (§5.6.1).
    expect(parseByteRange('Bytes=2-4', 10)).toEqual({ start: 2, end: 4 });
    expect(parseByteRange('bytes= 2-4 ,', 10)).toEqual({ start: 2, end: 4 });
    expect(parseByteRange('bytes=-20', 10)).toEqual({ start: 0, end: 9 });
    expect(parseByteRange('items=0-1', 10)).toBeUndefined();
  });

  it('honours an If-Range only for a strong match of the entity tag, the older bracket-less one included', () => {
    const digest = digestOf(video.contentId);
    expect(ifRangeHolds(null, digest)).toBe(true);
    expect(ifRangeHolds(`"<${digest}>"`, digest)).toBe(true);
    expect(ifRangeHolds(`"${digest}"`, digest)).toBe(true);
    expect(ifRangeHolds(`W/"<${digest}>"`, digest)).toBe(false);
    expect(ifRangeHolds('Tue, 15 Nov 1994 08:12:31 GMT', digest)).toBe(false);
  });
});

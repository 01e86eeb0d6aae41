/**
 * The outbound HTTP client every service uses to reach other domains. It guards against server-side
 * request forgery where it matters, at connect time: the address a name resolves to is checked, so a
 * public name pointing at 127.0.0.1, 10.x or a link-local metadata address is refused, and a redirect to
 * such an address is refused the same way. Outside development mode only https is spoken.
 *
 * `request` exists beside `fetch` for the calls a service makes all the time (token exchanges, transfers,
 * fetches): it is undici's `request`, which costs a third of the CPU of undici's WHATWG `fetch` per call
 * (about 0.25 against 0.6 to 0.9 ms for a small JSON POST on the development machine), and it sends a
 * streamed body in constant memory, where `fetch` keeps every chunk until the request ends
 * (nodejs/undici#4058: a 1 GiB upload held 1.1 GiB). Both go through the same guarded agent; `request`
 * never follows a redirect. `fetch` stays for callers that want a WHATWG Response (discovery, JWKS).
 */
import type { LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import { Readable } from 'node:stream';
import {
  Agent,
  fetch as undiciFetch,
  request as undiciRequest,
  type Dispatcher,
  type RequestInit,
  type Response,
} from 'undici';
import { localhostLookup } from './dns-client.js';

export interface HttpClientOptions {
  /** Development mode: http allowed, and loopback addresses (the local federation) reachable. */
  readonly dev?: boolean;
  /** Resolves host names (default: the system's, with `*.localhost` answered as loopback). */
  readonly lookup?: LookupFunction;
  /** Per-request timeout for connecting and receiving headers. */
  readonly timeoutMs?: number;
  /** Extra addresses that stay reachable in production (e.g. a cluster-internal service), as CIDRs. */
  readonly allowCidrs?: readonly string[];
}

/** Addresses that are never another domain's public server (RFC 6890 special-purpose registries). */
const PRIVATE = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  PRIVATE.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
  ['::ffff:0:0', 96],
  ['64:ff9b::', 96],
] as const) {
  PRIVATE.addSubnet(net, prefix, 'ipv6');
}
const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

export class ForbiddenAddressError extends Error {
  override readonly name = 'ForbiddenAddressError';
  readonly code = 'EFORBIDDENADDRESS';
}

/** Whether an outbound connection to this address is allowed. */
export function addressAllowed(address: string, options: Pick<HttpClientOptions, 'dev' | 'allowCidrs'> = {}): boolean {
  const family = isIP(address) === 6 ? 'ipv6' : 'ipv4';
  if (options.dev && LOOPBACK.check(address, family)) return true;
  if (options.allowCidrs?.length) {
    const allow = new BlockList();
    for (const cidr of options.allowCidrs) {
      const [net, bits] = cidr.split('/');
      allow.addSubnet(net!, Number(bits), isIP(net!) === 6 ? 'ipv6' : 'ipv4');
    }
    if (allow.check(address, family)) return true;
  }
  return !PRIVATE.check(address, family);
}

function guardedLookup(base: LookupFunction, options: HttpClientOptions): LookupFunction {
  return (hostname, lookupOptions, callback) => {
    base(hostname, { ...lookupOptions, all: true }, (err, addresses) => {
      if (err) return callback(err, '', 0);
      const list = (
        Array.isArray(addresses) ? addresses : [{ address: addresses as unknown as string, family: 4 }]
      ) as LookupAddress[];
      const allowed = list.filter((a) => addressAllowed(a.address, options));
      if (allowed.length === 0) {
        const shown = list.map((a) => a.address).join(', ');
        return callback(
          new ForbiddenAddressError(`${hostname} resolves to ${shown}, which is not a public address`),
          '',
          0,
        );
      }
      if (lookupOptions.all) (callback as (e: null, a: LookupAddress[]) => void)(null, allowed);
      else callback(null, allowed[0]!.address, allowed[0]!.family);
    });
  };
}

/** A request of `HttpClient.request`. */
export interface HttpRequest {
  /** Default GET. */
  readonly method?: string;
  readonly headers?: Readonly<Record<string, string>>;
  /**
   * A small body given whole, or a large one (an upload) sent as it is read, in constant memory: read once,
   * chunk by chunk; a failure to read it fails the request.
   */
  readonly body?: string | Uint8Array | AsyncIterable<Uint8Array> | Readable;
  /** Aborts the request, and the reading of its response's body, with the signal's reason. */
  readonly signal?: AbortSignal;
  /**
   * Longest wait for the response headers once the body is sent (default: the client's `timeoutMs`). A server
   * that stores and syncs a large body before answering needs more than a connect-sized timeout.
   */
  readonly headersTimeoutMs?: number;
}

/**
 * The answer to a `request`. Its body holds the connection until it is consumed (`text`, `json`, reading
 * it), discarded (`discard`) or destroyed: every path that receives one must do one of these.
 */
export interface HttpResponse {
  readonly status: number;
  /** Lower-case names; a repeated header is an array. */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Readable;
  /** The first value of a header (`name` in any case), or undefined. */
  header(name: string): string | undefined;
  /**
   * The whole body as UTF-8. With `limit`, a body longer than `limit` bytes is destroyed and the promise
   * rejects with a `ResponseTooLargeError`: a peer's answer cannot make this process buffer without bound.
   */
  text(limit?: number): Promise<string>;
  /** `text(limit)` parsed as JSON. */
  json(limit?: number): Promise<unknown>;
  /**
   * Drops the body: a short rest is read so the connection serves again, a long one (over 128 KiB) closes
   * the connection instead. Never rejects.
   */
  discard(): Promise<void>;
}

/** A request with a streamed body (an upload): the shape `stream` has always taken. */
export interface StreamRequest extends HttpRequest {
  readonly method: string;
}
export type StreamResponse = HttpResponse;

export class ResponseTooLargeError extends Error {
  override readonly name = 'ResponseTooLargeError';
  readonly code = 'ERESPONSETOOLARGE';
}

export interface HttpClient {
  /** undici's WHATWG fetch through the guarded agent; a redirect is returned unless `redirect` says otherwise. */
  fetch(url: string | URL, init?: RequestInit): Promise<Response>;
  /** A request through the guarded agent, cheaper than `fetch`; redirects are returned, never followed. */
  request(url: string | URL, init?: HttpRequest): Promise<HttpResponse>;
  /** `request` under the name its upload callers know. */
  stream(url: string | URL, init: StreamRequest): Promise<StreamResponse>;
  close(): Promise<void>;
}

/** Reads `body` whole, destroying it (which releases its connection) once more than `limit` bytes came. */
function readUpTo(body: Readable, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.byteLength;
      if (size > limit) {
        body.off('data', onData);
        body.destroy();
        reject(new ResponseTooLargeError(`the answer is longer than ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    body.on('data', onData);
    body.once('end', () => resolve(Buffer.concat(chunks, size)));
    body.once('error', reject);
    // Destroyed without an error by someone else: settle rather than wait for good (a no-op once settled).
    body.once('close', () => reject(new Error('the answer was closed before its end')));
  });
}

export function createHttpClient(options: HttpClientOptions = {}): HttpClient {
  const timeout = options.timeoutMs ?? 10_000;
  const agent = new Agent({
    connect: { lookup: guardedLookup(options.lookup ?? (localhostLookup as LookupFunction), options), timeout },
    headersTimeout: timeout,
    bodyTimeout: 5 * 60_000,
  });
  /** The checks a URL passes before any connection: the scheme, and an IP literal that no lookup would see. */
  function target(url: string | URL): URL {
    const target = new URL(url);
    if (target.protocol !== 'https:' && !(options.dev && target.protocol === 'http:')) {
      throw new ForbiddenAddressError(
        `${target.origin}: only https is allowed${options.dev ? '' : ' outside development mode'}`,
      );
    }
    const literal = target.hostname.replace(/^\[|\]$/g, '');
    if (isIP(literal) && !addressAllowed(literal, options)) {
      throw new ForbiddenAddressError(`${target.host} is not a public address`);
    }
    return target;
  }
  async function request(url: string | URL, init: HttpRequest = {}): Promise<HttpResponse> {
    const to = target(url);
    const { body } = init;
    // undici's `request` follows no redirect without its redirect interceptor, so they reach the caller.
    const res = await undiciRequest(to, {
      method: (init.method ?? 'GET') as Dispatcher.HttpMethod,
      headers: init.headers,
      body:
        body === undefined || typeof body === 'string' || body instanceof Uint8Array || body instanceof Readable
          ? body
          : Readable.from(body, { objectMode: false }),
      signal: init.signal,
      headersTimeout: init.headersTimeoutMs ?? timeout,
      dispatcher: agent,
    });
    const answer = res.body;
    const text = async (limit?: number) =>
      limit === undefined ? answer.text() : (await readUpTo(answer, limit)).toString('utf8');
    return {
      status: res.statusCode,
      headers: res.headers,
      body: answer,
      header(name) {
        const value = res.headers[name.toLowerCase()];
        return Array.isArray(value) ? value[0] : value;
      },
      text,
      json: async (limit?: number) => JSON.parse(await text(limit)) as unknown,
      discard: () =>
        answer.dump().then(
          () => undefined,
          () => undefined,
        ),
    };
  }
  return {
    async fetch(url, init = {}) {
      const to = target(url);
      if (init.redirect === undefined || init.redirect === 'follow') {
        // Redirects are followed by callers that check each hop (discovery counts them); never blindly.
        init = { ...init, redirect: 'manual' };
      }
      return undiciFetch(to, { ...init, dispatcher: agent });
    },
    request,
    stream: request,
    close: () => agent.close(),
  };
}

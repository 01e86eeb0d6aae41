/**
 * A POST whose body is streamed from disk in constant memory. The common HTTP client speaks only WHATWG
 * `fetch`, and undici's `fetch` keeps every chunk of a streamed request body until the request ends
 * (nodejs/undici#4058: a 1 GiB upload held 1.1 GiB of memory here), so uploads go through undici's
 * `request` instead, which does not. The SSRF guard is the common client's, applied the same way at
 * connect time: https only outside development mode, and only addresses that `addressAllowed` accepts.
 */
import type { LookupAddress } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import { Readable } from 'node:stream';
import { Agent, request } from 'undici';
import { ForbiddenAddressError, addressAllowed, localhostLookup } from '@federizer/common';

export interface StreamingPost {
  post(
    url: string,
    headers: Record<string, string>,
    body: AsyncIterable<Uint8Array>,
  ): Promise<{ status: number; text: string }>;
  close(): Promise<void>;
}

function guardedLookup(dev: boolean): LookupFunction {
  return (hostname, options, callback) => {
    (localhostLookup as LookupFunction)(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '', 0);
      const list = addresses as unknown as LookupAddress[];
      const allowed = list.filter((a) => addressAllowed(a.address, { dev }));
      if (allowed.length === 0) {
        const shown = list.map((a) => a.address).join(', ');
        return callback(
          new ForbiddenAddressError(`${hostname} resolves to ${shown}, which is not a public address`),
          '',
          0,
        );
      }
      if (options.all) (callback as (e: null, a: LookupAddress[]) => void)(null, allowed);
      else callback(null, allowed[0]!.address, allowed[0]!.family);
    });
  };
}

export function createStreamingPost(options: { dev: boolean; timeoutMs?: number }): StreamingPost {
  const timeout = options.timeoutMs ?? 10_000;
  // The mailbox answers once the last byte is stored and synced; undici restarts the headers timer as the
  // body is written, so this bounds a stalled upload and that last wait, not the length of the upload.
  const agent = new Agent({
    connect: { lookup: guardedLookup(options.dev), timeout },
    headersTimeout: 10 * 60_000,
    bodyTimeout: 5 * 60_000,
  });
  return {
    async post(url, headers, body) {
      const target = new URL(url);
      if (target.protocol !== 'https:' && !(options.dev && target.protocol === 'http:')) {
        throw new ForbiddenAddressError(`${target.origin}: only https is allowed outside development mode`);
      }
      const literal = target.hostname.replace(/^\[|\]$/g, '');
      if (isIP(literal) && !addressAllowed(literal, { dev: options.dev })) {
        throw new ForbiddenAddressError(`${target.host} is not a public address`);
      }
      const res = await request(target, {
        method: 'POST',
        headers,
        body: Readable.from(body, { objectMode: false }),
        dispatcher: agent,
      });
      return { status: res.statusCode, text: await res.body.text() };
    },
    close: () => agent.close(),
  };
}

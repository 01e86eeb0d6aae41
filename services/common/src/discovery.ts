/**
 * How a service finds other domains (PROTOCOL.md §8): the protocol library's Discovery over this
 * process's DNS client and guarded HTTP client. Shared by the AS and the mailbox.
 */
import { Discovery, type HttpGet, type SrvResolver } from '@federizer/protocol';
import { DnsClient } from './dns-client.js';
import type { HttpClient } from './http-client.js';

/** `host:port` or `[v6]:port`; a bare host means port 53. */
export function parseHostPort(value: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(value);
  if (!m) return { host: value.replace(/^\[|\]$/g, ''), port: 53 };
  return { host: m[1]!, port: Number(m[2]) };
}

/** The HttpGet the protocol library takes, over the guarded client (undici's Response is WHATWG's). */
export function httpGetOf(http: HttpClient): HttpGet {
  return (url, init) => http.fetch(url, init) as unknown as Promise<Response>;
}

/** How long this process remembers a network failure of discovery (other failures: 30 s, PROTOCOL §8). */
export const TRANSIENT_FAILURE_CACHE_SECONDS = 3;

export function createDiscovery(options: {
  readonly http: HttpClient;
  /** `host:port` of the DNS server to ask; the system resolvers when absent. */
  readonly dnsServer?: string;
  /** Replaces the DNS client altogether (tests). */
  readonly resolveSrv?: SrvResolver;
  readonly dev: boolean;
  readonly now: () => number;
}): Discovery {
  const resolveSrv =
    options.resolveSrv ??
    new DnsClient({ servers: options.dnsServer ? [parseHostPort(options.dnsServer)] : undefined }).resolveSrv;
  return new Discovery({
    resolveSrv,
    httpGet: httpGetOf(options.http),
    allowHttp: options.dev,
    now: options.now,
    // A domain restarting or a dropped connection must not be refused for the 30 s of a real negative answer.
    transientNegativeTtlSeconds: TRANSIENT_FAILURE_CACHE_SECONDS,
  });
}

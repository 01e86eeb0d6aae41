import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { CompactSign, compactVerify, exportJWK, generateKeyPair } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import { Discovery, orderSrv, srvName } from './discovery.js';
import type { DiscoveryOptions, HttpGet, SrvAnswer, SrvRecord } from './discovery.js';
import { ProtocolError } from './errors.js';
import type { ProtocolErrorCode } from './errors.js';

const T0 = 1_700_000_000_000;
const AS_SRV = '_federizer._as._tcp.example.com';
const RS_SRV = '_federizer._rs._tcp.example.com';
const AS_URL = 'https://as1.example.com/.well-known/oauth-authorization-server';
const RS_URL = 'https://rs1.example.com/.well-known/federizer';
const ISSUER = 'https://as1.example.com';
const JWKS_URL = 'https://as1.example.com/jwks';

const AS_META = {
  issuer: ISSUER,
  jwks_uri: JWKS_URL,
  token_endpoint: 'https://as1.example.com/token',
  grant_types_supported: ['urn:ietf:params:oauth:grant-type:token-exchange'],
};

const MAILBOX = {
  domain: 'example.com',
  authorization_server: ISSUER,
  mta_client_id: 'mta1.example.com',
  resource: 'https://rs1.example.com',
  transfer_endpoint: 'https://rs1.example.com/transfer',
  fetch_endpoint: 'https://rs1.example.com/fetch',
  api: 'https://rs1.example.com/api/v1',
  webmail: 'https://mail.example.com',
  max_resource_size: 26_214_400,
};

// ---------------------------------------------------------------------------------------------------
// Fakes

/** mulberry32: a tiny seeded PRNG, so that every "random" test is reproducible. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Route = () => Response | Promise<Response>;

const json =
  (doc: unknown, status = 200): Route =>
  () =>
    new Response(JSON.stringify(doc), { status, headers: { 'content-type': 'application/json' } });
const text =
  (body: string, status = 200): Route =>
  () =>
    new Response(body, { status });
const redirect =
  (location: string, status = 302): Route =>
  () =>
    new Response(null, { status, headers: { location } });
const networkError = (): Route => () => {
  throw new TypeError('fetch failed: ECONNREFUSED');
};

function srv(...targets: Array<[name: string, port?: number, priority?: number, weight?: number]>): SrvAnswer {
  return {
    records: targets.map(([name, port = 443, priority = 10, weight = 1]) => ({ name, port, priority, weight })),
    ttl: 600,
  };
}

function dnsError(code: string): Error {
  return Object.assign(new Error(`querySrv ${code}`), { code });
}

interface Setup {
  srv?: Record<string, SrvAnswer | Error>;
  routes?: Record<string, Route>;
  options?: Partial<DiscoveryOptions>;
}

function setup(given: Setup = {}) {
  const clock = { t: T0 };
  const answers: Record<string, SrvAnswer | Error> = {
    [AS_SRV]: srv(['as1.example.com']),
    [RS_SRV]: srv(['rs1.example.com']),
    ...given.srv,
  };
  const routes: Record<string, Route> = {
    [AS_URL]: json(AS_META),
    [RS_URL]: json(MAILBOX),
    [JWKS_URL]: json(jwks),
    ...given.routes,
  };
  const dnsCalls: string[] = [];
  const httpCalls: Array<{ url: string; init: Parameters<HttpGet>[1] }> = [];
  const discovery = new Discovery({
    resolveSrv: async (name) => {
      dnsCalls.push(name);
      const answer = answers[name] ?? dnsError('ENOTFOUND');
      if (answer instanceof Error) throw answer;
      return answer;
    },
    httpGet: async (url, init) => {
      httpCalls.push({ url, init });
      const route = routes[url];
      return route === undefined ? new Response('not found', { status: 404 }) : route();
    },
    now: () => clock.t,
    random: seeded(42),
    ...given.options,
  });
  const urls = () => httpCalls.map((c) => c.url);
  const fetchesOf = (url: string) => httpCalls.filter((c) => c.url === url).length;
  return { discovery, clock, answers, routes, dnsCalls, httpCalls, urls, fetchesOf };
}

async function rejection(promise: Promise<unknown>, code: ProtocolErrorCode, message?: string | RegExp) {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ProtocolError);
  expect((error as ProtocolError).code).toBe(code);
  if (message !== undefined) expect((error as ProtocolError).message).toMatch(message);
  return error as ProtocolError;
}

// ---------------------------------------------------------------------------------------------------
// Keys

let k1: { privateKey: CryptoKey; publicJwk: JWK };
let k2: { privateKey: CryptoKey; publicJwk: JWK };
let jwks: { keys: JWK[] };

async function es256(kid: string) {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  return { privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, use: 'sig', alg: 'ES256' } };
}

function sign(key: CryptoKey, kid: string): Promise<string> {
  return new CompactSign(new TextEncoder().encode('hello')).setProtectedHeader({ alg: 'ES256', kid }).sign(key);
}

beforeAll(async () => {
  k1 = await es256('k1');
  k2 = await es256('k2');
  jwks = { keys: [k1.publicJwk] };
});

afterEach(() => {
  vi.useRealTimers();
});

// ---------------------------------------------------------------------------------------------------

describe('srvName', () => {
  it('builds the §8 names, lower-cased and without the trailing dot', () => {
    expect(srvName('as', 'Example.COM.')).toBe('_federizer._as._tcp.example.com');
    expect(srvName('rs', 'mail.example.net')).toBe('_federizer._rs._tcp.mail.example.net');
  });

  it.each(['', 'exa mple.com', 'a..b', '-a.example.com', 'a-.example.com', 'x/y.com', `${'a'.repeat(64)}.com`])(
    'PROTOCOL §8: the domain must be a hostname (%j)',
    (domain) => {
      expect(() => srvName('as', domain)).toThrow(ProtocolError);
    },
  );
});

describe('orderSrv (RFC 2782)', () => {
  const rec = (name: string, priority: number, weight: number): SrvRecord => ({ name, port: 443, priority, weight });

  it('orders by ascending priority', () => {
    const records = [rec('c', 30, 5), rec('a', 10, 5), rec('b', 20, 5)];
    expect(orderSrv(records, seeded(1)).map((r) => r.name)).toEqual(['a', 'b', 'c']);
  });

  it('never lets a weight carry a record across priorities', () => {
    const records = [rec('low', 20, 65535), rec('a', 10, 1), rec('b', 10, 1)];
    const random = seeded(7);
    for (let i = 0; i < 100; i++) expect(orderSrv(records, random).at(-1)?.name).toBe('low');
  });

  it('picks weights 1 and 3 first about 25 % and 75 % of the time', () => {
    const records = [rec('light', 10, 1), rec('heavy', 10, 3)];
    const random = seeded(2024);
    let heavyFirst = 0;
    for (let i = 0; i < 10_000; i++) if (orderSrv(records, random)[0]!.name === 'heavy') heavyFirst++;
    expect(heavyFirst / 10_000).toBeGreaterThan(0.72);
    expect(heavyFirst / 10_000).toBeLessThan(0.78);
  });

  it('lists weight-0 records first before the running sum, so only a draw of 0 picks them early', () => {
    const records = [rec('w5', 10, 5), rec('zero', 10, 0), rec('w1', 10, 1)];
    expect(orderSrv(records, () => 0)[0]!.name).toBe('zero');
    expect(orderSrv(records, () => 0.5).at(-1)!.name).toBe('zero');
  });

  it('keeps the given order of records that all weigh 0', () => {
    const records = [rec('a', 10, 0), rec('b', 10, 0), rec('c', 10, 0)];
    expect(orderSrv(records, seeded(3)).map((r) => r.name)).toEqual(['a', 'b', 'c']);
  });

  it('is deterministic for a given random', () => {
    const records = [rec('a', 10, 1), rec('b', 10, 2), rec('c', 10, 3), rec('d', 20, 1), rec('e', 20, 1)];
    expect(orderSrv(records, seeded(9))).toEqual(orderSrv(records, seeded(9)));
    expect(orderSrv(records, seeded(9))).toHaveLength(5);
  });

  it('RFC 2782: a lone "." target means the service is decidedly not available', () => {
    expect(() => orderSrv([rec('.', 0, 0)])).toThrow(expect.objectContaining({ code: 'discovery_no_records' }));
    expect(orderSrv([])).toEqual([]);
  });
});

describe('Discovery.authorizationServer', () => {
  it('answers the RFC 8414 metadata, its issuer and the base URL', async () => {
    const { discovery, httpCalls } = setup();
    const found = await discovery.authorizationServer('Example.com.');
    expect(found).toEqual({ issuer: ISSUER, metadata: AS_META, baseUrl: 'https://as1.example.com' });
    expect(httpCalls).toHaveLength(1);
    expect(httpCalls[0]!.init.redirect).toBe('manual');
    expect(httpCalls[0]!.init.headers).toEqual({ Accept: 'application/json' });
    expect(httpCalls[0]!.init.signal).toBeInstanceOf(AbortSignal);
  });

  it('keeps a non-default port in the base URL', async () => {
    const url = 'https://as1.example.com:8443/.well-known/oauth-authorization-server';
    const { discovery } = setup({
      srv: { [AS_SRV]: srv(['as1.example.com.', 8443]) },
      routes: { [url]: json({ ...AS_META, issuer: 'https://as1.example.com:8443' }) },
    });
    expect((await discovery.authorizationServer('example.com')).baseUrl).toBe('https://as1.example.com:8443');
  });

  it('PROTOCOL §8: a domain without an SRV record has no authorization server', async () => {
    const { discovery } = setup();
    await rejection(
      discovery.authorizationServer('nowhere.example'),
      'discovery_no_records',
      /^_federizer\._as\._tcp\.nowhere\.example: no SRV records/,
    );
  });

  it('PROTOCOL §8: an empty SRV answer means no records', async () => {
    const { discovery } = setup({ srv: { [AS_SRV]: { records: [], ttl: 60 } } });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_no_records', `${AS_SRV}: no SRV records`);
  });

  it('RFC 2782: a lone "." target means the service is decidedly not available', async () => {
    const { discovery, httpCalls } = setup({ srv: { [AS_SRV]: srv(['.', 0]) } });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_no_records', /decidedly not available/);
    expect(httpCalls).toHaveLength(0);
  });

  it('PROTOCOL §8: a DNS server failure is a discovery failure, not an absence of records', async () => {
    const { discovery } = setup({ srv: { [AS_SRV]: dnsError('ESERVFAIL') } });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_failed', `${AS_SRV}: SRV lookup failed`);
  });

  it('RFC 2782: tries the targets in priority order', async () => {
    const as2 = 'https://as2.example.com/.well-known/oauth-authorization-server';
    const { discovery, urls } = setup({
      srv: { [AS_SRV]: srv(['as2.example.com', 443, 20], ['as1.example.com', 443, 10]) },
      routes: { [AS_URL]: text('busy', 503), [as2]: json({ ...AS_META, issuer: 'https://as2.example.com' }) },
    });
    expect((await discovery.authorizationServer('example.com')).baseUrl).toBe('https://as2.example.com');
    expect(urls()).toEqual([AS_URL, as2]);
  });

  it('moves on to the next target after a 503 or a network error', async () => {
    const as2 = 'https://as2.example.com/.well-known/oauth-authorization-server';
    const as3 = 'https://as3.example.com/.well-known/oauth-authorization-server';
    const { discovery, urls } = setup({
      srv: { [AS_SRV]: srv(['as2.example.com', 443, 1], ['as3.example.com', 443, 2], ['as1.example.com', 443, 3]) },
      routes: { [as2]: text('down', 503), [as3]: networkError() },
    });
    const found = await discovery.authorizationServer('example.com');
    expect(found.baseUrl).toBe('https://as1.example.com');
    expect(urls()).toEqual([as2, as3, AS_URL]);
  });

  it('moves on to the next target after a timeout', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const slow = 'https://slow.example.com/.well-known/oauth-authorization-server';
    const { discovery, httpCalls } = setup({
      srv: { [AS_SRV]: srv(['slow.example.com', 443, 1], ['as1.example.com', 443, 2]) },
      routes: { [slow]: () => new Promise<Response>(() => undefined) },
      options: { timeoutMs: 5000 },
    });
    const pending = discovery.authorizationServer('example.com');
    await vi.advanceTimersByTimeAsync(5000);
    expect((await pending).baseUrl).toBe('https://as1.example.com');
    expect(httpCalls[0]!.init.signal?.aborted).toBe(true);
  });

  it('PROTOCOL §8: a 404 is final, the next target is not tried', async () => {
    const { discovery, urls } = setup({
      srv: { [AS_SRV]: srv(['as1.example.com', 443, 1], ['as2.example.com', 443, 2]) },
      routes: { [AS_URL]: text('no', 404) },
    });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_failed', `${AS_URL}: HTTP 404`);
    expect(urls()).toEqual([AS_URL]);
  });

  it('PROTOCOL §8: an invalid document is final, the next target is not tried', async () => {
    const { discovery, urls } = setup({
      srv: { [AS_SRV]: srv(['as1.example.com', 443, 1], ['as2.example.com', 443, 2]) },
      routes: { [AS_URL]: json({ ...AS_META, jwks_uri: 42 }) },
    });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_invalid_metadata', /"jwks_uri"/);
    expect(urls()).toEqual([AS_URL]);
  });

  it('names every target when none answers', async () => {
    const as2 = 'https://as2.example.com/.well-known/oauth-authorization-server';
    const { discovery } = setup({
      srv: { [AS_SRV]: srv(['as1.example.com', 443, 1], ['as2.example.com', 443, 2]) },
      routes: { [AS_URL]: text('oops', 500), [as2]: networkError() },
    });
    const error = await rejection(discovery.authorizationServer('example.com'), 'discovery_failed');
    expect(error.message).toContain(`${AS_SRV}: no target answered`);
    expect(error.message).toContain(`${AS_URL}: HTTP 500`);
    expect(error.message).toContain(`${as2}: fetch failed`);
  });

  it('skips an SRV target that is not a hostname', async () => {
    const { discovery, urls } = setup({
      srv: { [AS_SRV]: srv(['evil.example/path@', 443, 1], ['as1.example.com', 443, 2]) },
    });
    expect((await discovery.authorizationServer('example.com')).issuer).toBe(ISSUER);
    expect(urls()).toEqual([AS_URL]);
  });

  it('uses http:// base URLs in development mode', async () => {
    const url = 'http://as1.example.com:8080/.well-known/oauth-authorization-server';
    const meta = { ...AS_META, issuer: 'http://as1.example.com:8080', jwks_uri: 'http://as1.example.com:8080/jwks' };
    const { discovery } = setup({
      srv: { [AS_SRV]: srv(['as1.example.com', 8080]) },
      routes: { [url]: json(meta) },
      options: { allowHttp: true },
    });
    expect(await discovery.authorizationServer('example.com')).toMatchObject({
      issuer: 'http://as1.example.com:8080',
      baseUrl: 'http://as1.example.com:8080',
    });
  });
});

describe('Discovery redirects (PROTOCOL §8, design Note 1)', () => {
  const hop = (n: number) => `https://as1.example.com/hop${n}`;

  it('follows 3 redirects', async () => {
    const { discovery, urls } = setup({
      routes: {
        [AS_URL]: redirect(hop(1), 301),
        [hop(1)]: redirect(hop(2), 307),
        [hop(2)]: redirect(hop(3), 308),
        [hop(3)]: json(AS_META),
      },
    });
    expect((await discovery.authorizationServer('example.com')).issuer).toBe(ISSUER);
    expect(urls()).toEqual([AS_URL, hop(1), hop(2), hop(3)]);
  });

  it.each([301, 302, 303, 307, 308])('follows a %i', async (status) => {
    const { discovery } = setup({ routes: { [AS_URL]: redirect(hop(1), status), [hop(1)]: json(AS_META) } });
    expect((await discovery.authorizationServer('example.com')).issuer).toBe(ISSUER);
  });

  it('PROTOCOL §8: at most 3 redirects', async () => {
    const { discovery, urls } = setup({
      routes: {
        [AS_URL]: redirect(hop(1)),
        [hop(1)]: redirect(hop(2)),
        [hop(2)]: redirect(hop(3)),
        [hop(3)]: redirect(hop(4)),
        [hop(4)]: json(AS_META),
      },
    });
    await rejection(
      discovery.authorizationServer('example.com'),
      'discovery_too_many_redirects',
      `${AS_URL}: more than 3 redirects`,
    );
    expect(urls()).not.toContain(hop(4));
  });

  it('resolves a relative Location against the URL that answered it', async () => {
    const target = 'https://as1.example.com/as1/.well-known/oauth-authorization-server';
    const { discovery, urls } = setup({
      routes: {
        [AS_URL]: redirect('/as1/.well-known/oauth-authorization-server'),
        [target]: json({ ...AS_META, issuer: `${ISSUER}/as1` }),
      },
    });
    expect((await discovery.authorizationServer('example.com')).issuer).toBe(`${ISSUER}/as1`);
    expect(urls()).toEqual([AS_URL, target]);
  });

  it('follows a redirect service to the real AS on another host (Note 1)', async () => {
    const target = 'https://example.com/as1/.well-known/oauth-authorization-server';
    const meta = { ...AS_META, issuer: 'https://example.com/as1', jwks_uri: 'https://example.com/as1/jwks' };
    const { discovery } = setup({ routes: { [AS_URL]: redirect(target), [target]: json(meta) } });
    const found = await discovery.authorizationServer('example.com');
    expect(found).toMatchObject({ issuer: 'https://example.com/as1', baseUrl: 'https://as1.example.com' });
  });

  it('PROTOCOL §8: a redirect to http:// is refused outside development mode', async () => {
    const plain = 'http://as1.example.com/.well-known/oauth-authorization-server';
    const { discovery, urls } = setup({ routes: { [AS_URL]: redirect(plain), [plain]: json(AS_META) } });
    await rejection(
      discovery.authorizationServer('example.com'),
      'discovery_failed',
      `${AS_URL}: redirect to ${plain} refused`,
    );
    expect(urls()).toEqual([AS_URL]);
  });

  it('PROTOCOL §8: a redirect to a scheme other than https is refused', async () => {
    const { discovery } = setup({ routes: { [AS_URL]: redirect('file:///etc/passwd') } });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_failed', /refused: not an https URL/);
  });

  it('PROTOCOL §8: a redirect without Location fails', async () => {
    const { discovery } = setup({ routes: { [AS_URL]: () => new Response(null, { status: 302 }) } });
    await rejection(
      discovery.authorizationServer('example.com'),
      'discovery_failed',
      `${AS_URL}: HTTP 302 with no Location`,
    );
  });
});

describe('PROTOCOL §8: development mode allows http, it does not require it', () => {
  const plain = 'http://as1.example.com:8443/.well-known/oauth-authorization-server';
  const tls = 'https://as1.example.com:8443/.well-known/oauth-authorization-server';
  const meta = { ...AS_META, issuer: 'https://as1.example.com:8443' };

  it('asks a target that refuses the plain connection again over https', async () => {
    const { discovery, urls } = setup({
      srv: { [AS_SRV]: srv(['as1.example.com', 8443]) },
      routes: { [plain]: networkError(), [tls]: json(meta) },
      options: { allowHttp: true },
    });
    expect(await discovery.authorizationServer('example.com')).toMatchObject({
      issuer: meta.issuer,
      baseUrl: 'https://as1.example.com:8443',
    });
    expect(urls()).toEqual([plain, tls]);
  });

  it('does not ask again over https after an HTTP answer', async () => {
    const { discovery, urls } = setup({
      srv: { [AS_SRV]: srv(['as1.example.com', 8443]) },
      routes: { [plain]: text('down', 503), [tls]: json(meta) },
      options: { allowHttp: true },
    });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_failed', /HTTP 503/);
    expect(urls()).toEqual([plain]);
  });

  it('never tries http outside development mode', async () => {
    const { discovery, urls } = setup({
      srv: { [AS_SRV]: srv(['as1.example.com', 8443]) },
      routes: { [plain]: json(meta), [tls]: networkError() },
    });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_failed');
    expect(urls()).toEqual([tls]);
  });
});

describe('Discovery development mode redirects', () => {
  it('follows a redirect to http:// when allowHttp is set', async () => {
    const base = 'http://as1.example.com:8080';
    const plain = `${base}/real/.well-known/oauth-authorization-server`;
    const { discovery } = setup({
      srv: { [AS_SRV]: srv(['as1.example.com', 8080]) },
      routes: {
        [`${base}/.well-known/oauth-authorization-server`]: redirect(plain),
        [plain]: json({ ...AS_META, issuer: `${base}/real`, jwks_uri: `${base}/real/jwks` }),
      },
      options: { allowHttp: true },
    });
    expect((await discovery.authorizationServer('example.com')).issuer).toBe(`${base}/real`);
  });
});

describe('PROTOCOL §8: the issuer is authoritative', () => {
  it('takes an issuer on another origin than the SRV target (hosted AS, issuer with a path)', async () => {
    const issuer = 'https://id.example.org/tenants/example-com';
    const { discovery } = setup({ routes: { [AS_URL]: json({ ...AS_META, issuer }) } });
    expect(await discovery.issuerFor('example.com')).toBe(issuer);
    await expect(discovery.keyFor(issuer, { alg: 'ES256', kid: 'k1' }, 'example.com')).resolves.toBeDefined();
  });
});

describe('RFC 8414 metadata validation', () => {
  const cases: Array<[rule: string, route: Route, message: RegExp]> = [
    ['the document is JSON', text('<html>'), /not a JSON document/],
    ['the document is a JSON object', json([AS_META]), /not a JSON object/],
    ['issuer is present', json({ ...AS_META, issuer: undefined }), /"issuer" must be a non-empty string/],
    ['issuer is an https URL', json({ ...AS_META, issuer: 'http://as1.example.com' }), /"issuer" must be an https URL/],
    ['issuer is a URL', json({ ...AS_META, issuer: 'as1.example.com' }), /"issuer" must be an absolute URL/],
    ['issuer has no query', json({ ...AS_META, issuer: `${ISSUER}/?tenant=1` }), /"issuer" must not have a query/],
    ['issuer has no fragment', json({ ...AS_META, issuer: `${ISSUER}/#x` }), /"issuer" must not have a fragment/],
    ['jwks_uri is present', json({ ...AS_META, jwks_uri: undefined }), /"jwks_uri" must be a non-empty string/],
    ['jwks_uri is a URL', json({ ...AS_META, jwks_uri: 'jwks' }), /"jwks_uri" must be an absolute URL/],
    ['token_endpoint is present', json({ ...AS_META, token_endpoint: undefined }), /"token_endpoint"/],
    [
      'token_endpoint is an https URL',
      json({ ...AS_META, token_endpoint: 'ftp://x/token' }),
      /"token_endpoint" must be an https URL/,
    ],
  ];

  it.each(cases)('RFC 8414: %s', async (_rule, route, message) => {
    const { discovery } = setup({ routes: { [AS_URL]: route } });
    const error = await rejection(discovery.authorizationServer('example.com'), 'discovery_invalid_metadata', message);
    expect(error.message.startsWith(`${AS_URL}: `)).toBe(true);
  });

  it('PROTOCOL §8: a document over 1 MiB is refused', async () => {
    const { discovery } = setup({ routes: { [AS_URL]: text(' '.repeat(1024 * 1024 + 1)) } });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_invalid_metadata', /larger than/);
  });
});

describe('Discovery caching (PROTOCOL §8)', () => {
  it('serves a result from the cache within the SRV TTL and looks again after it', async () => {
    const { discovery, clock, dnsCalls, httpCalls } = setup();
    const first = await discovery.authorizationServer('example.com');
    clock.t += 599_999;
    expect(await discovery.authorizationServer('example.com')).toBe(first);
    expect(dnsCalls).toHaveLength(1);
    clock.t += 1;
    await discovery.authorizationServer('example.com');
    expect(dnsCalls).toHaveLength(2);
    expect(httpCalls).toHaveLength(2);
  });

  it('caps the TTL at one hour', async () => {
    const { discovery, clock, dnsCalls } = setup({ srv: { [AS_SRV]: { ...srv(['as1.example.com']), ttl: 86_400 } } });
    await discovery.authorizationServer('example.com');
    clock.t += 3_599_000;
    await discovery.authorizationServer('example.com');
    expect(dnsCalls).toHaveLength(1);
    clock.t += 1000;
    await discovery.authorizationServer('example.com');
    expect(dnsCalls).toHaveLength(2);
  });

  it('uses the default TTL of 300 s when the answer has none', async () => {
    const { discovery, clock, dnsCalls } = setup({ srv: { [AS_SRV]: { records: srv(['as1.example.com']).records } } });
    await discovery.authorizationServer('example.com');
    clock.t += 299_000;
    await discovery.authorizationServer('example.com');
    expect(dnsCalls).toHaveLength(1);
    clock.t += 1000;
    await discovery.authorizationServer('example.com');
    expect(dnsCalls).toHaveLength(2);
  });

  it('PROTOCOL §8: caches a failure for 30 s, re-throwing the same error, then retries', async () => {
    const { discovery, clock, dnsCalls, answers } = setup({ srv: { [AS_SRV]: dnsError('ENOTFOUND') } });
    const first = await rejection(discovery.authorizationServer('example.com'), 'discovery_no_records');
    clock.t += 29_999;
    answers[AS_SRV] = srv(['as1.example.com']);
    expect(await rejection(discovery.authorizationServer('example.com'), 'discovery_no_records')).toBe(first);
    expect(dnsCalls).toHaveLength(1);
    clock.t += 1;
    expect((await discovery.authorizationServer('example.com')).issuer).toBe(ISSUER);
    expect(dnsCalls).toHaveLength(2);
  });

  it('caches an HTTP failure like a DNS one', async () => {
    const { discovery, clock, routes, fetchesOf } = setup({ routes: { [AS_URL]: text('down', 503) } });
    await rejection(discovery.authorizationServer('example.com'), 'discovery_failed');
    routes[AS_URL] = json(AS_META);
    clock.t += 10_000;
    await rejection(discovery.authorizationServer('example.com'), 'discovery_failed');
    expect(fetchesOf(AS_URL)).toBe(1);
    clock.t += 20_000;
    await discovery.authorizationServer('example.com');
    expect(fetchesOf(AS_URL)).toBe(2);
  });

  it('shares one in-flight lookup between concurrent callers', async () => {
    const { discovery, dnsCalls, httpCalls } = setup();
    const [a, b, issuer] = await Promise.all([
      discovery.authorizationServer('example.com'),
      discovery.authorizationServer('EXAMPLE.com.'),
      discovery.issuerFor('example.com'),
    ]);
    expect(a).toBe(b);
    expect(issuer).toBe(ISSUER);
    expect(dnsCalls).toEqual([AS_SRV]);
    expect(httpCalls).toHaveLength(1);
  });

  it('keeps authorization servers and mailboxes apart', async () => {
    const { discovery, dnsCalls } = setup();
    await discovery.authorizationServer('example.com');
    await discovery.mailbox('example.com');
    expect(dnsCalls).toEqual([AS_SRV, RS_SRV]);
  });
});

describe('Discovery.keyFor (PROTOCOL §5.4)', () => {
  async function discovered(given: Setup = {}) {
    const s = setup(given);
    await s.discovery.authorizationServer('example.com');
    return s;
  }

  it('finds the key by kid, and it verifies', async () => {
    const { discovery } = await discovered();
    const key = await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com');
    await expect(compactVerify(await sign(k1.privateKey, 'k1'), key)).resolves.toBeDefined();
  });

  it('imports a key once and fetches the JWKS once', async () => {
    const { discovery, fetchesOf } = await discovered();
    const [a, b] = await Promise.all([
      discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com'),
      discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com'),
    ]);
    expect(a).toBe(b);
    expect(await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com')).toBe(a);
    expect(fetchesOf(JWKS_URL)).toBe(1);
  });

  it("PROTOCOL §5.3: an issuer that the domain's AS metadata does not name has no keys there", async () => {
    const { discovery, fetchesOf } = setup();
    const other = 'https://as.example.org';
    await rejection(discovery.keyFor(other, { alg: 'ES256', kid: 'k1' }, 'example.com'), 'issuer_mismatch', other);
    expect(fetchesOf(JWKS_URL)).toBe(0);
  });

  it("PROTOCOL §8: a domain claiming another's issuer lends it none of its keys (keys are per domain)", async () => {
    // example.net's metadata names example.com's issuer, with a JWKS of its own holding a key under kid k1.
    const evil = await es256('k1');
    const netAs = 'https://as.example.net/.well-known/oauth-authorization-server';
    const netJwks = 'https://as.example.net/jwks';
    const { discovery } = setup({
      srv: { '_federizer._as._tcp.example.net': srv(['as.example.net']) },
      routes: { [netAs]: json({ ...AS_META, jwks_uri: netJwks }), [netJwks]: json({ keys: [evil.publicJwk] }) },
    });
    expect(await discovery.issuerFor('example.net')).toBe(ISSUER);
    const header = { alg: 'ES256', kid: 'k1' };
    const netKey = await discovery.keyFor(ISSUER, header, 'example.net');
    await expect(compactVerify(await sign(evil.privateKey, 'k1'), netKey)).resolves.toBeDefined();
    // example.com's assertions are still verified with example.com's JWKS, whichever domain was looked up first.
    const comKey = await discovery.keyFor(ISSUER, header, 'example.com');
    await expect(compactVerify(await sign(k1.privateKey, 'k1'), comKey)).resolves.toBeDefined();
    await expect(compactVerify(await sign(evil.privateKey, 'k1'), comKey)).rejects.toThrow();
  });

  it('RFC 7517: a key whose use is not sig is ignored', async () => {
    const { discovery } = await discovered({
      routes: { [JWKS_URL]: json({ keys: [{ ...k1.publicJwk, use: 'enc' }] }) },
    });
    await rejection(discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com'), 'unknown_key', JWKS_URL);
  });

  it('RFC 7517: a key of another type than the alg needs is ignored', async () => {
    const { discovery } = await discovered();
    await rejection(discovery.keyFor(ISSUER, { alg: 'RS256', kid: 'k1' }, 'example.com'), 'unknown_key');
    await rejection(discovery.keyFor(ISSUER, { alg: 'EdDSA', kid: 'k1' }, 'example.com'), 'unknown_key');
  });

  it('selects the only compatible key when the header has no kid', async () => {
    const other = { kty: 'RSA', n: 'AQAB', e: 'AQAB', kid: 'r1' };
    const { discovery } = await discovered({
      routes: { [JWKS_URL]: json({ keys: [other, { ...k1.publicJwk, kid: undefined }] }) },
    });
    const key = await discovery.keyFor(ISSUER, { alg: 'ES256' }, 'example.com');
    await expect(compactVerify(await sign(k1.privateKey, 'k1'), key)).resolves.toBeDefined();
  });

  it('PROTOCOL §5.4: an unknown kid refetches the JWKS at most once a minute', async () => {
    const { discovery, clock, fetchesOf } = await discovered();
    await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com');
    clock.t += 30_000;
    await rejection(
      discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'nope' }, 'example.com'),
      'unknown_key',
      /kid "nope"/,
    );
    expect(fetchesOf(JWKS_URL)).toBe(1);
    clock.t += 30_000;
    await rejection(discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'nope' }, 'example.com'), 'unknown_key');
    expect(fetchesOf(JWKS_URL)).toBe(2);
    clock.t += 59_000;
    await rejection(discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'nope' }, 'example.com'), 'unknown_key');
    expect(fetchesOf(JWKS_URL)).toBe(2);
  });

  it('picks up a rotated key once the minute has passed', async () => {
    const { discovery, clock, routes, fetchesOf } = await discovered();
    await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com');
    routes[JWKS_URL] = json({ keys: [k1.publicJwk, k2.publicJwk] });
    clock.t += 10_000;
    await rejection(discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k2' }, 'example.com'), 'unknown_key');
    clock.t += 50_000;
    const key = await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k2' }, 'example.com');
    await expect(compactVerify(await sign(k2.privateKey, 'k2'), key)).resolves.toBeDefined();
    expect(await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com')).toBeDefined();
    expect(fetchesOf(JWKS_URL)).toBe(2);
  });

  it('keeps the keys that verify when a refetch fails', async () => {
    const { discovery, clock, routes } = await discovered();
    const key = await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com');
    routes[JWKS_URL] = text('down', 503);
    clock.t += 60_000;
    await rejection(
      discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k2' }, 'example.com'),
      'discovery_failed',
      `${JWKS_URL}: HTTP 503`,
    );
    expect(await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com')).toBe(key);
  });

  it('caches the JWKS for the TTL of the AS result it came from', async () => {
    const { discovery, clock, fetchesOf } = await discovered();
    await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com');
    clock.t += 599_000;
    await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com');
    expect(fetchesOf(JWKS_URL)).toBe(1);
    clock.t += 1000;
    await discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com');
    expect(fetchesOf(JWKS_URL)).toBe(2);
  });

  it('fetches the JWKS with the same redirect rules', async () => {
    const moved = 'https://keys.example.com/as1.json';
    const { discovery } = await discovered({ routes: { [JWKS_URL]: redirect(moved), [moved]: json(jwks) } });
    await expect(discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com')).resolves.toBeDefined();
  });

  it('PROTOCOL §8: a JWKS redirect to http:// is refused', async () => {
    const { discovery } = await discovered({ routes: { [JWKS_URL]: redirect('http://keys.example.com/as1.json') } });
    await rejection(
      discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com'),
      'discovery_failed',
      /refused/,
    );
  });

  it('RFC 7517: a JWKS without a keys array is invalid', async () => {
    const { discovery } = await discovered({ routes: { [JWKS_URL]: json({ key: [] }) } });
    await rejection(
      discovery.keyFor(ISSUER, { alg: 'ES256', kid: 'k1' }, 'example.com'),
      'discovery_invalid_metadata',
      `${JWKS_URL}: "keys"`,
    );
  });
});

describe('Discovery.mailbox', () => {
  it('answers the §8 mailbox document', async () => {
    const { discovery } = setup();
    expect(await discovery.mailbox('EXAMPLE.com')).toEqual(MAILBOX);
    expect(await discovery.mtaClientIdFor('example.com')).toBe('mta1.example.com');
  });

  it('drops members that §8 does not define', async () => {
    const { discovery } = setup({ routes: { [RS_URL]: json({ ...MAILBOX, extra: true }) } });
    expect(await discovery.mailbox('example.com')).toEqual(MAILBOX);
  });

  const cases: Array<[field: string, value: unknown, message: RegExp]> = [
    ['domain', 'example.net', /"domain" is "example.net", not the domain asked for \(example.com\)/],
    ['domain', undefined, /"domain" must be a non-empty string/],
    ['authorization_server', 'as1.example.com', /"authorization_server" must be an absolute URL/],
    ['mta_client_id', '', /"mta_client_id" must be a non-empty string/],
    ['mta_client_id', 7, /"mta_client_id" must be a non-empty string/],
    ['resource', 'http://rs1.example.com', /"resource" must be an https URL/],
    ['transfer_endpoint', 'https://rs1.example.com/transfer#x', /"transfer_endpoint" must not have a fragment/],
    ['fetch_endpoint', null, /"fetch_endpoint"/],
    ['api', 'https://user:pw@rs1.example.com/api', /"api" must not carry credentials/],
    ['webmail', '/webmail', /"webmail" must be an absolute URL/],
    ['max_resource_size', -1, /"max_resource_size" must be a non-negative safe integer/],
    ['max_resource_size', 1.5, /"max_resource_size"/],
    ['max_resource_size', '1024', /"max_resource_size"/],
    ['max_resource_size', 2 ** 53, /"max_resource_size"/],
  ];

  it.each(cases)('PROTOCOL §8: the mailbox document needs a valid %s (%j)', async (field, value, message) => {
    const { discovery } = setup({ routes: { [RS_URL]: json({ ...MAILBOX, [field]: value }) } });
    const error = await rejection(discovery.mailbox('example.com'), 'discovery_invalid_metadata', message);
    expect(error.message.startsWith(`${RS_URL}: `)).toBe(true);
  });

  it('PROTOCOL §8: a mailbox domain without an SRV record fails with the name', async () => {
    const { discovery } = setup();
    await rejection(
      discovery.mtaClientIdFor('example.net'),
      'discovery_no_records',
      '_federizer._rs._tcp.example.net: no SRV records',
    );
  });

  it('accepts a max_resource_size of 0', async () => {
    const { discovery } = setup({ routes: { [RS_URL]: json({ ...MAILBOX, max_resource_size: 0 }) } });
    expect((await discovery.mailbox('example.com')).max_resource_size).toBe(0);
  });
});

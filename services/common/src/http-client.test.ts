/**
 * The common HTTP client's `request` (and `stream`, its name for uploads) against a real local HTTP server:
 * a streamed body is sent as it is read (the memory a large upload takes stays far below its size), small
 * exchanges read their answer whole or drop it, and either way the connection is released for the next
 * request; the SSRF guard of `fetch` applies unchanged: the scheme, IP literals, the addresses a name
 * resolves to at connect time, no redirect followed.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ForbiddenAddressError, ResponseTooLargeError, createHttpClient, type HttpClient } from './http-client.js';

const MiB = 1024 * 1024;

interface TestServer {
  readonly server: Server;
  readonly url: string;
  /** Every connection the server accepted, in order. */
  readonly sockets: Socket[];
  /** Requests per path. */
  readonly hits: Map<string, number>;
  /** Paths whose answer the client hung up on before it was all sent. */
  readonly cutOff: string[];
}

/**
 * Counts and hashes what it is sent, answering `{size, sha256, type}`; `/moved` and `/moved-private` answer
 * redirects; `/refused` a 500 of 96 KiB; `/huge-error` a 500 of 8 MiB, written in 64 KiB pieces.
 */
function startServer(): Promise<TestServer> {
  const sockets: Socket[] = [];
  const hits = new Map<string, number>();
  const cutOff: string[] = [];
  const server = createServer((req, res) => {
    const path = req.url ?? '';
    hits.set(path, (hits.get(path) ?? 0) + 1);
    if (path === '/moved' || path === '/moved-private') {
      req.resume();
      const location = path === '/moved' ? '/elsewhere' : 'http://169.254.169.254/latest/meta-data';
      res.writeHead(302, { location }).end();
      return;
    }
    if (path === '/refused') {
      req.resume();
      res.writeHead(500, { 'content-type': 'text/plain' }).end('server error\n'.repeat(8 * 1024));
      return;
    }
    if (path === '/huge-error') {
      req.resume();
      res.writeHead(500, { 'content-type': 'text/plain', 'x-repeated': ['7', '9'] });
      let left = 128;
      res.on('close', () => {
        if (left > 0) cutOff.push(path);
      });
      const more = () => {
        while (left > 0) {
          left--;
          if (!res.write(Buffer.alloc(64 * 1024, 0x61))) return void res.once('drain', more);
        }
        res.end();
      };
      more();
      return;
    }
    const hash = createHash('sha256');
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.byteLength;
      hash.update(chunk);
    });
    req.on('end', () => {
      res.writeHead(201, { 'content-type': 'application/json', 'x-method': req.method ?? '' });
      res.end(JSON.stringify({ size, sha256: hash.digest('hex'), type: req.headers['content-type'] }));
    });
  });
  server.on('connection', (socket: Socket) => sockets.push(socket));
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        server,
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        sockets,
        hits,
        cutOff,
      }),
    ),
  );
}

describe('HttpClient.stream', () => {
  let server: Server;
  let base: string;
  let http: HttpClient;

  beforeAll(async () => {
    ({ server, url: base } = await startServer());
    http = createHttpClient({ dev: true });
  });
  afterAll(async () => {
    await http.close();
    await new Promise((resolve) => server.close(resolve));
  });

  it('sends a 128 MiB body as it is read: the process grows by far less than the body', async () => {
    const size = 128 * MiB;
    const chunk = 64 * 1024;
    const sent = createHash('sha256');
    const before = process.memoryUsage().rss;
    let peak = before;
    async function* body(): AsyncGenerator<Uint8Array> {
      for (let offset = 0; offset < size; offset += chunk) {
        // A fresh buffer per chunk, as a file read gives: a client that kept chunks would keep all of them.
        const bytes = Buffer.allocUnsafe(chunk).fill(offset / chunk);
        sent.update(bytes);
        if (offset % (4 * MiB) === 0) peak = Math.max(peak, process.memoryUsage().rss);
        yield bytes;
      }
    }
    const res = await http.stream(`${base}/upload`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      body: body(),
    });
    const answer = await res.json();
    const after = process.memoryUsage().rss;
    peak = Math.max(peak, after);
    expect(res.status).toBe(201);
    expect(answer).toEqual({ size, sha256: sent.digest('hex'), type: 'application/octet-stream' });
    // A sanity bound, not a measurement: the same upload through undici's fetch grew the process by about
    // 160 MiB on this machine, through `stream` by about 36 MiB (garbage not yet collected).
    const growth = peak - before;
    expect(growth, `RSS grew by ${(growth / MiB).toFixed(1)} MiB for a ${size / MiB} MiB body`).toBeLessThan(size / 2);
  });

  it('takes a Node Readable as the body, with the method and headers given', async () => {
    const res = await http.stream(new URL('/put', base), {
      method: 'PUT',
      headers: { 'content-type': 'text/plain' },
      body: Readable.from([Buffer.from('hello, '), Buffer.from('world')]),
    });
    expect(res.status).toBe(201);
    expect(res.headers['x-method']).toBe('PUT');
    expect(JSON.parse(await res.text())).toEqual({
      size: 12,
      sha256: createHash('sha256').update('hello, world').digest('hex'),
      type: 'text/plain',
    });
  });

  it('returns a redirect instead of following it (callers check each hop)', async () => {
    const res = await http.stream(`${base}/moved`, { method: 'POST', body: Readable.from([Buffer.from('x')]) });
    expect(res.status).toBe(302);
    expect(res.headers.location).toBe('/elsewhere');
    expect(await res.text()).toBe('');
  });

  it('stops when its signal aborts', async () => {
    const abort = new AbortController();
    async function* endless(): AsyncGenerator<Uint8Array> {
      for (;;) {
        yield Buffer.alloc(1024);
        await new Promise((resolve) => setTimeout(resolve, 5));
        abort.abort(new Error('the user gave up'));
      }
    }
    await expect(
      http.stream(`${base}/upload`, { method: 'POST', body: endless(), signal: abort.signal }),
    ).rejects.toThrow(/the user gave up/);
  });
});

describe('HttpClient.request', () => {
  let srv: TestServer;
  let http: HttpClient;

  beforeAll(async () => {
    srv = await startServer();
  });
  afterAll(async () => {
    await new Promise((resolve) => srv.server.close(resolve));
  });
  // A client per test: each starts with no connection, so the sockets the server saw are this test's.
  beforeEach(() => {
    http = createHttpClient({ dev: true });
    srv.sockets.length = 0;
    srv.cutOff.length = 0;
  });
  afterEach(() => http.close());

  it('sends a small body given whole and reads the JSON answer', async () => {
    for (const body of ['{"hello":"world"}', Buffer.from('{"hello":"world"}')]) {
      const res = await http.request(`${srv.url}/echo`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      expect(res.status).toBe(201);
      expect(res.header('Content-Type')).toBe('application/json');
      expect(res.header('x-method')).toBe('POST');
      expect(res.header('x-absent')).toBeUndefined();
      expect(await res.json(1024)).toEqual({
        size: 17,
        sha256: createHash('sha256').update('{"hello":"world"}').digest('hex'),
        type: 'application/json',
      });
    }
  });

  it('is a GET without a body by default', async () => {
    const res = await http.request(`${srv.url}/get`);
    expect(res.header('x-method')).toBe('GET');
    expect(await res.json()).toMatchObject({ size: 0 });
  });

  it('returns a redirect instead of following it, even to a forbidden address (callers check each hop)', async () => {
    for (const path of ['/moved', '/moved-private']) {
      const res = await http.request(`${srv.url}${path}`, { method: 'POST', body: 'x' });
      expect(res.status).toBe(302);
      await res.discard();
    }
    expect(srv.hits.get('/elsewhere')).toBeUndefined();
  });

  it('releases an error answer dropped with discard(): the next request reuses its connection', async () => {
    const refused = await http.request(`${srv.url}/refused`, { method: 'POST', body: '{}' });
    expect(refused.status).toBe(500);
    await refused.discard();
    expect(refused.body.readableEnded).toBe(true);
    // undici marks a connection idle a turn of the event loop after its answer ends: let that turn pass.
    await new Promise((resolve) => setImmediate(resolve));
    const next = await http.request(`${srv.url}/echo`, { method: 'POST', body: '{}' });
    expect(next.status).toBe(201);
    await next.text();
    expect(srv.sockets).toHaveLength(1);
    expect(srv.cutOff).toEqual([]);
  });

  it('closes the connection of a long error answer dropped with discard(), rather than reading all of it', async () => {
    const res = await http.request(`${srv.url}/huge-error`, { method: 'POST', body: '{}' });
    expect(res.status).toBe(500);
    expect(res.header('X-Repeated')).toBe('7'); // the first of repeated values
    await res.discard();
    expect(res.body.destroyed).toBe(true);
    await vi.waitFor(() => expect(srv.cutOff).toContain('/huge-error'));
    // The client still serves: a new connection replaces the closed one.
    const next = await http.request(`${srv.url}/echo`, { method: 'POST', body: '{}' });
    expect(next.status).toBe(201);
    await next.text();
  });

  it('refuses an answer longer than the limit given to text(), and closes its connection', async () => {
    const res = await http.request(`${srv.url}/huge-error`);
    await expect(res.text(64 * 1024)).rejects.toBeInstanceOf(ResponseTooLargeError);
    expect(res.body.destroyed).toBe(true);
    await vi.waitFor(() => expect(srv.cutOff).toContain('/huge-error'));
  });

  it('fails with the reason of its signal when aborted before the answer', async () => {
    const abort = new AbortController();
    abort.abort(new Error('the lease was lost'));
    await expect(http.request(`${srv.url}/echo`, { method: 'POST', body: '{}', signal: abort.signal })).rejects.toThrow(
      'the lease was lost',
    );
  });
});

/** A POST through each of the guarded methods: a streamed upload, and a small exchange. */
const senders = [
  {
    method: 'stream',
    post: (http: HttpClient, url: string) =>
      http.stream(url, { method: 'POST', body: Readable.from([Buffer.from('secret')]) }),
  },
  {
    method: 'request',
    post: (http: HttpClient, url: string) =>
      http.request(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"secret":1}' }),
  },
] as const;

describe.each(senders)('HttpClient.$method refuses what fetch refuses (SSRF guard)', ({ post }) => {
  it('refuses http outside development mode (https only)', async () => {
    const http = createHttpClient();
    try {
      const refused = post(http, 'http://mail.example.com/resources');
      await expect(refused).rejects.toBeInstanceOf(ForbiddenAddressError);
      await expect(refused).rejects.toThrow('http://mail.example.com: only https is allowed outside development mode');
    } finally {
      await http.close();
    }
  });

  it('refuses a private IP literal outside development mode, before any lookup', async () => {
    const http = createHttpClient({
      lookup: () => {
        throw new Error('an IP literal must not be looked up');
      },
    });
    try {
      for (const url of ['https://127.0.0.1:8443/x', 'https://169.254.169.254/latest', 'https://[::1]/x']) {
        await expect(post(http, url)).rejects.toThrow(/is not a public address/);
      }
    } finally {
      await http.close();
    }
  });

  it('refuses, at connect time, a name that resolves to a private address (even in development mode)', async () => {
    const http = createHttpClient({
      dev: true,
      lookup: (_hostname, _options, callback) =>
        (callback as (e: null, a: { address: string; family: number }[]) => void)(null, [
          { address: '10.1.2.3', family: 4 },
        ]),
    });
    try {
      const refused = post(http, 'http://public.example/resources');
      await expect(refused).rejects.toMatchObject({
        name: 'ForbiddenAddressError',
        message: 'public.example resolves to 10.1.2.3, which is not a public address',
      });
    } finally {
      await http.close();
    }
  });

  it('refuses, at connect time, a public name pointing at loopback outside development mode', async () => {
    const http = createHttpClient({
      lookup: (_hostname, _options, callback) =>
        (callback as (e: null, a: { address: string; family: number }[]) => void)(null, [
          { address: '127.0.0.1', family: 4 },
        ]),
    });
    try {
      await expect(post(http, 'https://mail.example.com/resources')).rejects.toMatchObject({
        message: 'mail.example.com resolves to 127.0.0.1, which is not a public address',
      });
    } finally {
      await http.close();
    }
  });
});

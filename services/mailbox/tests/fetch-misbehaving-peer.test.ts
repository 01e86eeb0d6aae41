/**
 * The fetcher (PROTOCOL.md §6) against an origin that misbehaves, over real HTTP: a scripted server plays
 * example.com's fetch endpoint, the AS is a stub that hands out a token, and the real Fetcher works on its own
 * job queue and message store in a real database (SQLite and PostgreSQL) and a real blob store on disk.
 *
 * The rule: a misbehaving peer never costs good bytes already fetched, and every failure says what happened.
 *
 * - RFC 9110 §14.4, §15.3.7: a resume (`Range: bytes=P-`) accepts a 206 only with `Content-Range: bytes
 *   P-(size-1)/size`; any other is a temporary failure that keeps the partial and names the Content-Range.
 * - RFC 9110 §14.2, RFC 9530: a 200 answered to a Range request replaces the partial only when it is shown to
 *   be the whole resource (its Repr-Digest is the Content-ID's, or without one its Content-Length is the size);
 *   a proxy's `200 text/html` error page does not.
 * - RFC 9110 §15.4, §15.5.9: a redirect (not followed: the fetch is a POST to the fetch_endpoint) and 408 are
 *   temporary failures naming the status (and the Location).
 * - PROTOCOL §6.5: bytes past the declared size are "more bytes than the declared size", and cost nothing held.
 * - PROTOCOL §6.4: the third whole answer in a row with other bytes fails the fetch for good; a mismatch after
 *   a resume first fetches once more from zero.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { listen, silentLogger, type HttpClient, type RunningServer } from '@federizer/common';
import { contentId, type Block, type MailboxMetadata } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { testHttp } from '../../auth/tests/exchange-client.js';
import {
  DiskBlobStore,
  Fetcher,
  JobQueue,
  MessageStore,
  type AsClient,
  type FetchJob,
  type Job,
} from '../src/index.js';
import { openMailboxDatabase, testClock, type MailboxTestDatabase } from '../src/storage/testing.js';
import { reprDigest } from './fetch-helpers.js';

/** How the scripted origin answers one request; `range` is the P of `Range: bytes=P-`. */
type Script = (res: ServerResponse, range: number | undefined, req: IncomingMessage) => void;

const SIZE = 1000;
/** The fetcher's lease; an answer whose bytes stop for this long is abandoned (how a partial is made here). */
const LEASE_MS = 1000;

describe.each(testDatabases())('the fetcher against a misbehaving peer ($name)', (database) => {
  const clock = testClock(Date.now());
  let db: MailboxTestDatabase;
  let blobDir: string;
  let blobs: DiskBlobStore;
  let jobs: JobQueue;
  let messages: MessageStore;
  let http: HttpClient;
  let fetcher: Fetcher;
  let server: RunningServer;
  /** Per Content-ID, how the origin answers; a fetch of anything else (another test's leftover) gets 404. */
  const scripts = new Map<string, Script>();
  /** Per Content-ID, the Range header of every request the origin saw (`-` without one). */
  const seen = new Map<string, string[]>();
  /** Answers left open (a stalled body), ended when the test is over. */
  const open = new Set<ServerResponse>();
  let queued: string[] = [];

  const envelope: Block[] = [
    { 'jwt-assertion': 'eyJhbGciOiJFUzI1NiJ9.e30.c2lnbmF0dXJl' },
    {
      headers: [
        { From: 'alice@example.com' },
        { To: 'bob@example.net' },
        { Subject: 'Misbehaving peer' },
        { 'Message-ID': '<misbehaving@example.com>' },
      ],
    },
  ];

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    blobDir = await mkdtemp(join(tmpdir(), 'federizer-fetch-peer-'));
    blobs = new DiskBlobStore(blobDir);
    jobs = new JobQueue(db.knex, { now: clock.now });
    messages = new MessageStore(db.knex, { now: clock.now });
    http = testHttp();
    server = await listen((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (chunk: string) => (body += chunk));
      req.on('end', () => {
        const cid = (JSON.parse(body) as { content_id: string }).content_id;
        const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
        seen.set(cid, [...(seen.get(cid) ?? []), req.headers.range ?? '-']);
        const script = scripts.get(cid);
        if (script === undefined) {
          res.writeHead(404, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: 'not_found' }));
          return;
        }
        open.add(res);
        res.on('close', () => open.delete(res));
        script(res, range === null ? undefined : Number(range[1]), req);
      });
    });
    const metadata: MailboxMetadata = {
      domain: 'example.com',
      authorization_server: 'http://as.example-com.localhost',
      mta_client_id: 'mta.example.com',
      resource: `${server.url}/api/v1`,
      transfer_endpoint: `${server.url}/federation/v1/transfer`,
      fetch_endpoint: `${server.url}/federation/v1/fetch`,
      api: `${server.url}/api/v1`,
      webmail: `${server.url}/`,
      max_resource_size: 5 * 1024 ** 3,
    };
    const as = {
      fetch: () => Promise.resolve({ token: 'a-token', issuedTokenType: 'access_token', expiresIn: 300 }),
    } as unknown as AsClient;
    fetcher = new Fetcher({
      domain: 'example.net',
      jobs,
      blobs,
      messages,
      as,
      mailboxOf: (domain) =>
        domain === 'example.com' ? Promise.resolve(metadata) : Promise.reject(new Error(`no ${domain}`)),
      http,
      logger: silentLogger(),
      now: clock.now,
      maxResourceSize: 5 * 1024 ** 3,
      leaseMs: LEASE_MS,
    });
  });
  afterEach(async () => {
    // A test's fetch left pending must not run again in the next test's polls.
    for (const cid of queued) await jobs.cancel('fetch', cid);
    queued = [];
    for (const res of open) res.destroy();
  });
  afterAll(async () => {
    await fetcher?.stop();
    await server?.close(0);
    await http?.close();
    await db?.destroy();
    if (blobDir !== undefined) await rm(blobDir, { recursive: true, force: true });
  });

  const endpoint = () => `${server.url}/federation/v1/fetch`;

  /** A resource of SIZE bytes whose fetch is queued, referenced by a message to Bob waiting for it. */
  async function queue(): Promise<{ bytes: Buffer; cid: string; message: string }> {
    const bytes = randomBytes(SIZE);
    const cid = contentId(bytes);
    const { id } = await messages.createReceived({
      address: 'bob@example.net',
      messageId: `<${randomBytes(6).toString('hex')}@example.com>`,
      threadId: '<t@example.com>',
      envelope,
      body: { parts: [] },
      date: clock.now(),
      transferEht: 'eht',
      resources: [{ contentId: cid, size: SIZE, status: 'pending' }],
    });
    const job: FetchJob = { messageId: '<misbehaving@example.com>', envelope, contentId: cid, size: SIZE };
    await jobs.enqueue('fetch', cid, 'example.com', job);
    queued.push(cid);
    return { bytes, cid, message: id };
  }

  /** Runs the fetch once, as soon as it is due, with the origin answering `script`; answers the job after. */
  async function attempt(cid: string, script: Script): Promise<Job<FetchJob>> {
    const due = (await jobs.find<FetchJob>('fetch', cid))!.nextAttemptAt;
    if (due > clock.now()) clock.advance(due - clock.now() + 1);
    scripts.set(cid, script);
    await fetcher.poll();
    return (await jobs.find<FetchJob>('fetch', cid))!;
  }

  /** Bytes of the partial file of `cid`, or undefined without one. */
  async function partialSize(cid: string): Promise<number | undefined> {
    try {
      return (await stat(join(blobDir, 'partial', cid.slice(1, -1)))).size;
    } catch {
      return undefined;
    }
  }

  const statusOf = async (message: string) => (await messages.resourcesOf(message))[0]?.status;

  /** The origin as it should be: 200 with all the bytes, or 206 with the rest after a Range. */
  const correct =
    (bytes: Buffer): Script =>
    (res, from) => {
      const start = from ?? 0;
      res.writeHead(from === undefined ? 200 : 206, {
        'content-type': 'application/octet-stream',
        'content-length': String(SIZE - start),
        'repr-digest': reprDigest(bytes),
        ...(from === undefined ? {} : { 'content-range': `bytes ${start}-${SIZE - 1}/${SIZE}` }),
      });
      res.end(bytes.subarray(start));
    };

  /** An answer of all the bytes that stops after the first `n` and never ends: the fetcher keeps the `n`. */
  const stallAfter =
    (bytes: Buffer, n: number): Script =>
    (res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) });
      res.write(bytes.subarray(0, n));
    };

  /** Leaves a partial of the first `n` bytes, as an interrupted fetch does. */
  async function interrupted(cid: string, bytes: Buffer, n: number): Promise<void> {
    const after = await attempt(cid, stallAfter(bytes, n));
    expect(after).toMatchObject({ status: 'pending' });
    expect(after.lastError).toMatch(/sent nothing for/);
    expect(await partialSize(cid)).toBe(n);
  }

  async function expectPublished(cid: string, message: string): Promise<void> {
    expect(await jobs.find('fetch', cid)).toMatchObject({ status: 'done' });
    expect(await blobs.has(cid)).toBe(true);
    expect(await partialSize(cid)).toBeUndefined();
    expect(await statusOf(message)).toBe('held');
  }

  describe('RFC 9110 §14.4, §15.3.7: a resume accepts only the 206 of exactly bytes P-(size-1)/size', () => {
    it('RFC 9110 §14.4: a 206 of another range or total keeps the 600 bytes held, names the Content-Range, and the resume goes on', async () => {
      const { bytes, cid, message } = await queue();
      await interrupted(cid, bytes, 600);
      const wrong: [string, Buffer][] = [
        ['bytes 0-999/1000', bytes], // the whole body, as a 206
        ['bytes 700-999/1000', bytes.subarray(700)], // another offset
        ['bytes 600-999/1200', bytes.subarray(600)], // another total
      ];
      for (const [contentRange, body] of wrong) {
        const after = await attempt(cid, (res) => {
          res.writeHead(206, { 'content-length': String(body.length), 'content-range': contentRange });
          res.end(body);
        });
        expect(after, contentRange).toMatchObject({ status: 'pending' });
        expect(after.lastError).toContain(`answered 206 with Content-Range: ${contentRange} to Range: bytes=600-`);
        expect(after.lastError).toContain('not bytes 600-999/1000');
        expect(after.lastError).toContain('the 600 bytes held are kept');
        expect(after.lastError).not.toMatch(/exceeds the limit|do not hash/);
        expect(await partialSize(cid), contentRange).toBe(600);
        expect(await blobs.has(cid)).toBe(false);
      }
      // A 206 without Content-Range at all is no better.
      const bare = await attempt(cid, (res) => {
        res.writeHead(206, { 'content-length': '400' });
        res.end(bytes.subarray(600));
      });
      expect(bare.lastError).toContain('answered 206 with Content-Range: (none) to Range: bytes=600-');
      expect(await partialSize(cid)).toBe(600);

      await attempt(cid, correct(bytes));
      expect(seen.get(cid)).toEqual(['-', ...Array<string>(5).fill('bytes=600-')]);
      await expectPublished(cid, message);
    });
  });

  describe('RFC 9110 §14.2, RFC 9530: a 200 answered to a Range request replaces the partial only as the whole resource', () => {
    it("RFC 9110 §14.2: a proxy's 200 text/html error page keeps the 900 bytes held", async () => {
      const { bytes, cid, message } = await queue();
      await interrupted(cid, bytes, 900);
      const page = Buffer.from('<html><body>502 Bad Gateway (proxy)</body></html>');
      const after = await attempt(cid, (res) => {
        res.writeHead(200, { 'content-type': 'text/html', 'content-length': String(page.length) });
        res.end(page);
      });
      expect(after).toMatchObject({ status: 'pending' });
      expect(after.lastError).toContain(
        `answered 200 (text/html, Content-Length: ${page.length}) to Range: bytes=900-, without Repr-Digest`,
      );
      expect(after.lastError).toContain('the 900 bytes held are kept');
      expect(await partialSize(cid)).toBe(900);
      expect(seen.get(cid)).toEqual(['-', 'bytes=900-']); // no second request from zero

      await attempt(cid, correct(bytes));
      await expectPublished(cid, message);
    });

    it('RFC 9530 §2: a 200 whose Repr-Digest is not the Content-ID’s keeps the partial, even at the declared length', async () => {
      const { bytes, cid, message } = await queue();
      await interrupted(cid, bytes, 600);
      const other = randomBytes(SIZE);
      const after = await attempt(cid, (res) => {
        res.writeHead(200, { 'content-length': String(SIZE), 'repr-digest': reprDigest(other) });
        res.end(other);
      });
      expect(after.lastError).toContain(`with Repr-Digest: ${reprDigest(other)}, not the digest of ${cid}`);
      expect(after.lastError).toContain('the 600 bytes held are kept');
      expect(await partialSize(cid)).toBe(600);
      await attempt(cid, correct(bytes));
      await expectPublished(cid, message);
    });

    it('RFC 9110 §14.2: a 200 shown to be the whole resource (its Repr-Digest, or without one its Content-Length) starts over with that answer', async () => {
      for (const withDigest of [true, false]) {
        const { bytes, cid, message } = await queue();
        await interrupted(cid, bytes, 600);
        await attempt(cid, (res) => {
          res.writeHead(200, {
            'content-type': 'text/html', // a resource may be HTML: the type decides nothing
            'content-length': String(SIZE),
            ...(withDigest ? { 'repr-digest': reprDigest(bytes) } : {}),
          });
          res.end(bytes);
        });
        // One request: the 200's own bytes are taken, not asked for again.
        expect(seen.get(cid), `Repr-Digest: ${withDigest}`).toEqual(['-', 'bytes=600-']);
        await expectPublished(cid, message);
      }
    });
  });

  describe('RFC 9110 §15.4, §15.5.9: redirects and 408 are temporary, and say so', () => {
    it('RFC 9110 §15.4.8: a 307 (not followed: the fetch is a POST to the fetch_endpoint) is retried, naming the status and the Location', async () => {
      for (const status of [301, 302, 303, 307, 308]) {
        const { bytes, cid, message } = await queue();
        const after = await attempt(cid, (res) => {
          res.writeHead(status, { location: 'https://elsewhere.example/fetch' });
          res.end();
        });
        expect(after, String(status)).toMatchObject({ status: 'pending', attempts: 1 });
        expect(after.lastError).toContain(`${endpoint()} answered ${status} `);
        expect(after.lastError).toContain('to https://elsewhere.example/fetch, a redirect the fetch does not follow');
        expect(await statusOf(message)).toBe('pending');
        expect(seen.get(cid)).toHaveLength(1); // not followed
        await attempt(cid, correct(bytes));
        await expectPublished(cid, message);
      }
    });

    it('RFC 9110 §15.5.9: a 408 Request Timeout is retried, keeping the bytes held', async () => {
      const { bytes, cid, message } = await queue();
      await interrupted(cid, bytes, 300);
      const after = await attempt(cid, (res) => {
        res.writeHead(408, { 'content-type': 'text/plain', connection: 'close' });
        res.end('timed out waiting for the request');
      });
      expect(after).toMatchObject({ status: 'pending' });
      expect(after.lastError).toContain(`${endpoint()} answered 408 Request Timeout: timed out waiting`);
      expect(after.lastError).toContain('the 300 bytes held are kept');
      expect(await partialSize(cid)).toBe(300);
      await attempt(cid, correct(bytes));
      expect(seen.get(cid)).toEqual(['-', 'bytes=300-', 'bytes=300-']);
      await expectPublished(cid, message);
    });
  });

  describe('PROTOCOL §6.5: a resource larger than declared', () => {
    it('PROTOCOL §6.5: 2000 bytes for the declared 1000 fail as "more bytes than the declared size", not "exceeds the limit"', async () => {
      const { bytes, cid } = await queue();
      const after = await attempt(cid, (res) => {
        res.writeHead(200, { 'content-length': String(2 * SIZE) });
        res.end(Buffer.concat([bytes, bytes]));
      });
      expect(after).toMatchObject({ status: 'pending' });
      expect(after.lastError).toContain(`the origin sent more bytes than the declared size (${SIZE})`);
      expect(after.lastError).not.toMatch(/exceeds the limit/);
      expect(await blobs.has(cid)).toBe(false);
    });

    it('PROTOCOL §6.5: a resumed answer running past the declared size (no Content-Length) keeps the 600 bytes held before it', async () => {
      const { bytes, cid, message } = await queue();
      await interrupted(cid, bytes, 600);
      const after = await attempt(cid, (res) => {
        // Chunked: the right Content-Range, then more than the 400 bytes it names.
        res.writeHead(206, { 'content-range': `bytes 600-${SIZE - 1}/${SIZE}` });
        res.write(bytes.subarray(600));
        res.end(randomBytes(5000));
      });
      expect(after).toMatchObject({ status: 'pending' });
      expect(after.lastError).toContain(`the origin sent more bytes than the declared size (${SIZE})`);
      expect(after.lastError).not.toMatch(/exceeds the limit/);
      expect(await partialSize(cid)).toBe(600);
      await attempt(cid, correct(bytes));
      expect(seen.get(cid)).toEqual(['-', 'bytes=600-', 'bytes=600-']);
      await expectPublished(cid, message);
    });

    it('PROTOCOL §6.4: an answer that ends cleanly short of the declared size keeps its bytes and resumes after them', async () => {
      const { bytes, cid, message } = await queue();
      const after = await attempt(cid, (res) => {
        res.writeHead(200, { 'content-type': 'application/octet-stream' }); // chunked, ended early
        res.end(bytes.subarray(0, 700));
      });
      expect(after).toMatchObject({ status: 'pending' });
      expect(after.lastError).toContain('ended its answer after 700 of the 1000 bytes');
      expect(await partialSize(cid)).toBe(700);
      await attempt(cid, correct(bytes));
      expect(seen.get(cid)).toEqual(['-', 'bytes=700-']);
      await expectPublished(cid, message);
    });
  });

  describe('PROTOCOL §6.4: an origin that keeps serving other bytes', () => {
    const wrongBytes: Script = (res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) });
      res.end(randomBytes(SIZE));
    };

    it('PROTOCOL §6.4: the third full-length digest mismatch in a row fails the fetch, and the resource shows failed', async () => {
      const { cid, message } = await queue();
      for (const n of [1, 2]) {
        const after = await attempt(cid, wrongBytes);
        expect(after).toMatchObject({ status: 'pending', attempts: n });
        expect(after.lastError).toMatch(new RegExp(`^full-length digest mismatch ${n} of 3 in a row: `));
        expect(after.lastError).toContain(`do not hash to ${cid}`);
        expect(await statusOf(message)).toBe('pending');
      }
      const last = await attempt(cid, wrongBytes);
      expect(last).toMatchObject({ status: 'failed', attempts: 3 });
      expect(last.lastError).toMatch(/^full-length digest mismatch 3 of 3 in a row: /);
      expect(last.lastError).toContain(`the origin keeps serving other bytes than ${cid} names: given up`);
      expect(await statusOf(message)).toBe('failed');
      expect(seen.get(cid)).toHaveLength(3);
      expect(await partialSize(cid)).toBeUndefined();
      expect(await blobs.has(cid)).toBe(false);
    });

    it('PROTOCOL §6.4: only mismatches in a row count (another failure in between starts the count over)', async () => {
      const { bytes, cid, message } = await queue();
      await attempt(cid, wrongBytes);
      await attempt(cid, wrongBytes);
      const between = await attempt(cid, (res) => {
        res.writeHead(503, { 'content-type': 'text/plain' });
        res.end('busy');
      });
      expect(between.lastError).toContain('answered 503 Service Unavailable: busy');
      const after = await attempt(cid, wrongBytes);
      expect(after).toMatchObject({ status: 'pending' });
      expect(after.lastError).toMatch(/^full-length digest mismatch 1 of 3 in a row: /);
      await attempt(cid, correct(bytes));
      await expectPublished(cid, message);
    });

    it('PROTOCOL §6.4: a mismatch after a resume fetches once more from zero at once (the partial was the wrong part)', async () => {
      const { bytes, cid, message } = await queue();
      // The bytes held are not a prefix of the resource (another answer's, a disk's): the resume cannot hash.
      await interrupted(cid, randomBytes(SIZE), 600);
      await attempt(cid, correct(bytes));
      expect(seen.get(cid)).toEqual(['-', 'bytes=600-', '-']);
      await expectPublished(cid, message);
    });

    it('PROTOCOL §6.4: when the fetch from zero after a resumed mismatch mismatches too, that counts once', async () => {
      const { cid, message } = await queue();
      await interrupted(cid, randomBytes(SIZE), 600);
      const after = await attempt(cid, (res, from) => {
        const body = randomBytes(SIZE - (from ?? 0));
        res.writeHead(from === undefined ? 200 : 206, {
          'content-length': String(body.length),
          ...(from === undefined ? {} : { 'content-range': `bytes ${from}-${SIZE - 1}/${SIZE}` }),
        });
        res.end(body);
      });
      expect(seen.get(cid)).toEqual(['-', 'bytes=600-', '-']);
      expect(after).toMatchObject({ status: 'pending' });
      expect(after.lastError).toMatch(/^full-length digest mismatch 1 of 3 in a row: the 1000 bytes from /);
      expect(await statusOf(message)).toBe('pending');
    });
  });
});

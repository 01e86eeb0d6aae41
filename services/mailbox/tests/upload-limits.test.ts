/**
 * Uploads from clients that misbehave, or meet a full disk, through real HTTP to a real mailbox (its real
 * AS, DPoP proofs, SQLite and PostgreSQL). The rule: bad input or a misbehaving client gets a clear,
 * specific error and loses nothing; nothing grows without bound.
 *
 * - A client that sends half an upload and falls silent is answered 408 once the connection has been idle
 *   for the server's idle timeout (120 s in service; 1 s here), and its temporary file is removed.
 * - A slow upload that keeps moving is never cut.
 * - A full file system (ENOSPC) answers 507 `insufficient_storage`, storing nothing. The blob directory is a
 *   real 1 MiB tmpfs (this needs root; without it that test is skipped and says so).
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { exportJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKnex, silentLogger } from '@federizer/common';
import { contentId, createDpopProof, jwkThumbprint, type DpopKey } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { freePort, hostOf, startFederation, type Federation } from '../../auth/tests/harness.js';
import { signIn, testHttp } from '../../auth/tests/exchange-client.js';
import { MailboxService, mailboxConfig } from '../src/index.js';
import { documented } from './openapi-check.js';

const IDLE_MS = 1_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Mounts a tmpfs of `size` on a new directory; undefined when this process may not mount (not root). */
function mountTmpfs(size: string): string | undefined {
  const dir = execFileSync('mktemp', ['-d', join(tmpdir(), 'federizer-full-XXXXXX')], { encoding: 'utf8' }).trim();
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir], { stdio: 'ignore' });
    return dir;
  } catch {
    execFileSync('rmdir', [dir]);
    return undefined;
  }
}

describe.each(testDatabases())('uploads from misbehaving clients, and a full disk ($name)', (database) => {
  let fed: Federation;
  let mailbox: MailboxService;
  /** The mailbox whose blob directory is on a 1 MiB tmpfs, when one could be mounted. */
  let fullMailbox: MailboxService | undefined;
  let blobDir: string;
  let fullMount: string | undefined;
  let publicUrl: string;
  let token: string;
  let key: DpopKey;
  const http = testHttp();
  const cleanups: (() => Promise<unknown>)[] = [];

  async function startMailbox(port: number, url: string, dir: string, maxResourceSize: number) {
    const db = await database.create();
    const knex = createKnex(db.config);
    const { config, secrets } = mailboxConfig(
      {
        domain: 'example.com',
        publicUrl: url,
        issuer: fed.domains['example.com']!.issuer,
        blobDir: dir,
        dev: true,
        port,
        maxResourceSize,
      },
      { mtaClientSecret: 'unused in these tests' },
    );
    const started = await MailboxService.start(config, secrets, {
      knex,
      logger: silentLogger(),
      httpIdleTimeoutMs: IDLE_MS,
    });
    cleanups.push(
      () => started.close(),
      () => knex.destroy(),
      () => db.destroy(),
    );
    return started;
  }

  /**
   * A request of the webmail's to `target`, with its token and a fresh proof, checked against the OpenAPI
   * document. Both mailboxes have the one public URL that tokens and proofs name; each listens on its port.
   */
  async function api(target: MailboxService, path: string, init: { method?: string; body?: Uint8Array } = {}) {
    const method = init.method ?? 'GET';
    const htu = `${publicUrl}/api/v1${path}`;
    const proof = await createDpopProof(key, { htm: method, htu, accessToken: token });
    const res = await http.fetch(`${target.url}/api/v1${path}`, {
      method,
      body: init.body,
      headers: { authorization: `DPoP ${token}`, dpop: proof, 'content-type': 'application/octet-stream' },
    });
    return documented(method, htu, res);
  }

  async function storageUsed(target: MailboxService): Promise<number> {
    return ((await (await api(target, '/session')).json()) as { storageUsed: number }).storageUsed;
  }

  /**
   * An upload written by hand on a raw connection: the headers, then `send(write)` writes the body at its
   * own pace. Answers everything the server sent until it closed the connection.
   */
  async function rawUpload(
    target: MailboxService,
    size: number,
    send: (write: (bytes: Buffer) => void) => Promise<void>,
  ): Promise<{ status: number; headers: string; body: string }> {
    const htu = `${publicUrl}/api/v1/resources`;
    const proof = await createDpopProof(key, { htm: 'POST', htu, accessToken: token });
    const socket = connect(Number(new URL(target.url).port), '127.0.0.1');
    socket.on('error', () => undefined);
    let data = '';
    socket.on('data', (chunk: Buffer) => (data += chunk.toString('utf8')));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write(
      `POST /api/v1/resources HTTP/1.1\r\nHost: ${new URL(publicUrl).host}\r\n` +
        `Authorization: DPoP ${token}\r\nDPoP: ${proof}\r\nContent-Type: application/octet-stream\r\n` +
        `Content-Length: ${size}\r\nConnection: close\r\n\r\n`,
    );
    await send((bytes) => socket.write(bytes));
    await closed;
    const [head = '', body = ''] = data.split('\r\n\r\n');
    return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]), headers: head.toLowerCase(), body };
  }

  beforeAll(async () => {
    const port = await freePort();
    publicUrl = `http://${hostOf('mail', 'example.com')}:${port}`;
    fed = await startFederation(['example.com'], {
      database: database.create,
      config: { mailboxResource: `${publicUrl}/api/v1` },
    });
    await fed.domains['example.com']!.createUser('alice@example.com', 'alice password');
    blobDir = await mkdtemp(join(tmpdir(), 'federizer-blobs-'));
    mailbox = await startMailbox(port, publicUrl, blobDir, 16 * 1024 * 1024);
    fullMount = mountTmpfs('1m');
    if (fullMount !== undefined)
      fullMailbox = await startMailbox(await freePort(), publicUrl, join(fullMount, 'blobs'), 8 * 1024 * 1024);
    const session = await signIn(fed.domains['example.com']!, http, 'alice@example.com', 'alice password');
    token = session.accessToken;
    const publicJwk = await exportJWK(session.dpopKey.publicKey);
    key = { alg: 'ES256', privateKey: session.dpopKey.privateKey, publicJwk, jkt: await jwkThumbprint(publicJwk) };
    return async () => {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
      await fed.close();
      await rm(blobDir, { recursive: true, force: true });
      if (fullMount !== undefined) {
        execFileSync('umount', [fullMount]);
        await rm(fullMount, { recursive: true, force: true });
      }
    };
  });
  afterAll(() => http.close());

  it('the rule, a silent client: half an upload then silence is answered 408 after the idle timeout, its temporary file removed, nothing charged', async () => {
    const before = await storageUsed(mailbox);
    const started = Date.now();
    let tmpWhileStalled: string[] = [];
    const answer = await rawUpload(mailbox, 200_000, async (write) => {
      write(randomBytes(100_000));
      await sleep(IDLE_MS / 2);
      // Half-way, the bytes received so far sit in a temporary file.
      tmpWhileStalled = await readdir(join(blobDir, 'tmp'));
      // ... and the client says nothing more.
    });
    expect(tmpWhileStalled).toHaveLength(1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(IDLE_MS - 100);
    expect(Date.now() - started).toBeLessThan(IDLE_MS + 5_000);
    expect(answer.status).toBe(408);
    expect(answer.headers).toContain('connection: close');
    expect(JSON.parse(answer.body)).toMatchObject({ error: 'request_timeout' });
    await sleep(100);
    expect(await readdir(join(blobDir, 'tmp'))).toEqual([]);
    expect(await storageUsed(mailbox)).toBe(before);
  });

  it('the rule, a slow client: an upload that keeps moving for 4 s, never silent for the idle timeout, completes', async () => {
    const bytes = randomBytes(64_000);
    const before = await storageUsed(mailbox);
    const started = Date.now();
    const answer = await rawUpload(mailbox, bytes.length, async (write) => {
      for (let offset = 0; offset < bytes.length; offset += 4_000) {
        write(bytes.subarray(offset, offset + 4_000));
        await sleep(250); // a quarter of the idle timeout between chunks: slow, but never silent for long
      }
    });
    expect(Date.now() - started).toBeGreaterThan(3 * IDLE_MS);
    expect(answer.status, answer.body).toBe(201);
    expect(JSON.parse(answer.body)).toMatchObject({ contentId: contentId(bytes), size: bytes.length });
    expect(await storageUsed(mailbox)).toBe(before + bytes.length);
    expect(await readdir(join(blobDir, 'tmp'))).toEqual([]);
  });

  it('the rule, a full disk: ENOSPC answers 507 insufficient_storage, stores nothing, and the space is given back', async (context) => {
    if (fullMailbox === undefined) return context.skip('mounting a tmpfs needs root (CAP_SYS_ADMIN)');
    const fullBlobs = join(fullMount!, 'blobs');
    const before = await storageUsed(fullMailbox);
    // More than the file system holds, less than the mailbox's limits: only the disk can refuse it.
    const bytes = randomBytes(1536 * 1024);
    const res = await api(fullMailbox, '/resources', { method: 'POST', body: bytes });
    expect(res.status).toBe(507);
    expect(res.headers.get('connection')).toBe('close');
    const body = (await res.json()) as { error: string; error_description: string };
    expect(body.error).toBe('insufficient_storage');
    expect(body.error_description).toMatch(/no storage left.*nothing of it was stored/);
    // Nothing stored: no temporary file, no object, nothing counted against the quota, no such resource.
    expect(await readdir(join(fullBlobs, 'tmp'))).toEqual([]);
    expect(await readdir(join(fullBlobs, 'objects'))).toEqual([]);
    expect(await storageUsed(fullMailbox)).toBe(before);
    expect((await api(fullMailbox, `/resources/${contentId(bytes).slice(1, -1)}`)).status).toBe(404);
    // The temporary file's space was given back: an upload that fits is stored.
    const small = randomBytes(200 * 1024);
    const ok = await api(fullMailbox, '/resources', { method: 'POST', body: small });
    expect(ok.status).toBe(201);
    expect(await storageUsed(fullMailbox)).toBe(before + small.length);
  });
});

/**
 * Sending stored resources through BlobReader: over real HTTP answers, into a sink that is slow to finish
 * its writes (the reader must not reuse a buffer before the sink is done with it), and to a client that
 * goes away midway. Expected digests are computed here with node:crypto.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readlink, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlobReadError } from './blob-reader.js';
import { DiskBlobStore, type ByteRange } from './blob-store.js';

const sha = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('base64url');
const MB = 1024 * 1024;

let sandbox: string;
let store: DiskBlobStore;
let server: Server | undefined;

beforeEach(async () => {
  sandbox = await mkdtemp(join(tmpdir(), 'federizer-reader-'));
  store = new DiskBlobStore(join(sandbox, 'store'));
});

afterEach(async () => {
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  server = undefined;
  await rm(sandbox, { recursive: true, force: true });
});

async function* once(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  yield bytes;
}

async function stored(bytes: Uint8Array): Promise<string> {
  return (await store.put(once(bytes), { maxSize: 64 * MB })).contentId;
}

/** An HTTP server answering every request with `pipeTo`; `outcome` settles as the last pipeTo did. */
async function serve(contentId: string, range?: ByteRange): Promise<{ url: string; outcome: () => Promise<unknown> }> {
  let last: Promise<unknown> = Promise.resolve();
  server = createServer((req, res) => {
    void (async () => {
      const reader = await store.openReader(contentId, range);
      res.writeHead(200, { 'content-length': String(reader.length) });
      last = reader.pipeTo(res).then(
        () => 'finished',
        (e: unknown) => e,
      );
    })();
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, outcome: () => last };
}

/** Files of the store this process holds open (Linux): a reader must close its file however it ends. */
async function openStoreFiles(): Promise<string[]> {
  const targets = await Promise.all(
    (await readdir('/proc/self/fd')).map((fd) => readlink(`/proc/self/fd/${fd}`).catch(() => '')),
  );
  return targets.filter((target) => target.startsWith(sandbox));
}

describe('BlobReader', () => {
  it('PROTOCOL §9: a resource of several buffers arrives whole, byte for byte, over HTTP', async () => {
    const bytes = randomBytes(3 * MB + 12_345);
    const contentId = await stored(bytes);
    const { url, outcome } = await serve(contentId);
    const body = Buffer.from(await (await fetch(url)).arrayBuffer());
    expect(body.byteLength).toBe(bytes.byteLength);
    expect(sha(body)).toBe(sha(bytes));
    expect(await outcome()).toBe('finished');
  });

  it('PROTOCOL §6.2: an unaligned Range sends exactly its inclusive bytes', async () => {
    const bytes = randomBytes(2 * MB);
    const contentId = await stored(bytes);
    const range = { start: 300_001, end: 1_700_002 };
    const { url } = await serve(contentId, range);
    const body = Buffer.from(await (await fetch(url)).arrayBuffer());
    expect(sha(body)).toBe(sha(bytes.subarray(range.start, range.end + 1)));
    // One byte, at the very end.
    const last = await store.openReader(contentId, { start: bytes.byteLength - 1, end: bytes.byteLength - 1 });
    expect(last.length).toBe(1);
    await last.close();
  });

  it('PROTOCOL §2: the empty resource sends no bytes and ends its answer', async () => {
    const contentId = await stored(new Uint8Array(0));
    const { url, outcome } = await serve(contentId);
    const res = await fetch(url);
    expect((await res.arrayBuffer()).byteLength).toBe(0);
    expect(await outcome()).toBe('finished');
  });

  it('a buffer is read into again only after the sink called back for it (a slow sink gets intact bytes)', async () => {
    const bytes = randomBytes(4 * MB + 1);
    const contentId = await stored(bytes);
    const received: Buffer[] = [];
    // Copies each chunk only when it finishes the write: a buffer reused too early would show here.
    const sink = new Writable({
      highWaterMark: 16 * MB,
      write(chunk: Buffer, _encoding, callback) {
        setTimeout(() => {
          received.push(Buffer.from(chunk));
          callback();
        }, 2);
      },
    });
    await (await store.openReader(contentId)).pipeTo(sink);
    expect(sha(Buffer.concat(received))).toBe(sha(bytes));
  });

  it('a client that goes away midway fails the send with BlobReadError and the file is closed', async () => {
    const contentId = await stored(randomBytes(32 * MB));
    const { url, outcome } = await serve(contentId);
    const controller = new AbortController();
    const res = await fetch(url, { signal: controller.signal });
    const reader = res.body!.getReader();
    await reader.read();
    controller.abort();
    await reader.read().catch(() => undefined);
    let ended: unknown;
    for (let i = 0; i < 1000 && !((ended = await outcome()) instanceof Error); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(ended).toBeInstanceOf(BlobReadError);
    expect(await openStoreFiles()).toEqual([]);
  });

  it('a caller mistake: a reader sends once, and not after close (TypeError)', async () => {
    const contentId = await stored(randomBytes(10));
    const reader = await store.openReader(contentId);
    await reader.close();
    await expect(reader.pipeTo(new Writable({ write: (_c, _e, cb) => cb() }))).rejects.toThrow(TypeError);
    const sent = await store.openReader(contentId);
    await sent.pipeTo(new Writable({ write: (_c, _e, cb) => cb() }));
    await expect(sent.pipeTo(new Writable({ write: (_c, _e, cb) => cb() }))).rejects.toThrow(TypeError);
  });

  it('PROTOCOL §9: a range past the end is a RangeError and an absent resource is not_found, before any byte', async () => {
    const contentId = await stored(randomBytes(100));
    await expect(store.openReader(contentId, { start: 0, end: 100 })).rejects.toThrow(RangeError);
    await expect(store.openReader(`<${sha(Buffer.from('absent'))}>`)).rejects.toMatchObject({ code: 'not_found' });
  });
});

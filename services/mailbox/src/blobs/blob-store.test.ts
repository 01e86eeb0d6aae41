/**
 * The disk blob store against real files in a temporary directory. Expected Content-IDs are computed here with
 * node:crypto, independently of the store and of @federizer/protocol.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlobStoreError, DiskBlobStore, normalizeContentId } from './blob-store.js';
import type { BlobStoreErrorCode } from './blob-store.js';

const cid = (bytes: Uint8Array): string => `<${createHash('sha256').update(bytes).digest('base64url')}>`;
const bare = (contentId: string): string => contentId.slice(1, -1);
/** Compares bytes by length and digest: vitest's deep equality walks large buffers element by element. */
const fingerprint = (bytes: Uint8Array): string => `${bytes.byteLength} bytes, ${cid(bytes)}`;
const MB = 1024 * 1024;

async function* chunks(parts: readonly Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const part of parts) {
    await Promise.resolve();
    yield part;
  }
}

/** Splits bytes into chunks of random sizes, empty ones included. */
function split(bytes: Uint8Array, maxChunk: number): Uint8Array[] {
  const parts: Uint8Array[] = [];
  for (let offset = 0; offset < bytes.byteLength;) {
    const n = Math.floor(Math.random() * (maxChunk + 1));
    parts.push(bytes.subarray(offset, offset + n));
    offset += n;
  }
  return parts;
}

async function* failingAfter(parts: readonly Uint8Array[], error: Error): AsyncGenerator<Uint8Array> {
  yield* chunks(parts);
  throw error;
}

/** Relative paths of the files under `dir`. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name).slice(dir.length + 1))
    .sort();
}

async function readAll(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(Buffer.from(part));
  return Buffer.concat(parts);
}

async function rejection(promise: Promise<unknown>): Promise<BlobStoreError> {
  try {
    await promise;
  } catch (e) {
    if (e instanceof BlobStoreError) return e;
    throw e;
  }
  throw new Error('expected a BlobStoreError');
}

async function expectCode(promise: Promise<unknown>, code: BlobStoreErrorCode): Promise<BlobStoreError> {
  const error = await rejection(promise);
  expect(error.code).toBe(code);
  return error;
}

let sandbox: string;
let root: string;
let store: DiskBlobStore;

beforeEach(async () => {
  sandbox = await mkdtemp(join(tmpdir(), 'federizer-blobs-'));
  root = join(sandbox, 'store');
  store = new DiskBlobStore(root);
});

afterEach(async () => {
  await rm(sandbox, { recursive: true, force: true });
});

describe('DiskBlobStore.put', () => {
  it('ARCHITECTURE: the constructor lays out objects/, tmp/ and partial/', async () => {
    expect((await readdir(root)).sort()).toEqual(['objects', 'partial', 'tmp']);
  });

  it('PROTOCOL §2: a resource streamed in many chunks is stored under the Content-ID of their concatenation', async () => {
    const bytes = randomBytes(300_000);
    const parts = split(bytes, 700);
    expect(parts.length).toBeGreaterThan(500);
    const result = await store.put(chunks(parts), { maxSize: MB });
    expect(result).toEqual({ contentId: cid(bytes), size: bytes.byteLength, created: true });
    const id = bare(result.contentId);
    expect(await filesUnder(join(root, 'objects'))).toEqual([join(id.slice(0, 2), id)]);
    expect(fingerprint(await readFile(join(root, 'objects', id.slice(0, 2), id)))).toBe(fingerprint(bytes));
    expect(await filesUnder(join(root, 'tmp'))).toEqual([]);
  });

  it('PROTOCOL §2: the empty resource has the Content-ID of no bytes', async () => {
    const result = await store.put(chunks([]), { maxSize: 0 });
    expect(result).toEqual({ contentId: cid(new Uint8Array(0)), size: 0, created: true });
    expect(await store.stat(result.contentId)).toEqual({ size: 0 });
  });

  it('ARCHITECTURE: a 50 MB stream is stored without holding it in memory', async () => {
    // A real collector makes the measure what the store keeps alive, not garbage not yet collected.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const total = 50 * MB;
    const chunkSize = 64 * 1024;
    const seed = randomBytes(chunkSize);
    const expected = createHash('sha256');
    let peak = 0;
    async function* generate(): AsyncGenerator<Buffer> {
      for (let i = 0; i * chunkSize < total; i++) {
        const chunk = Buffer.from(seed); // a fresh buffer each time: retaining chunks would show
        chunk.writeUInt32BE(i, 0);
        expected.update(chunk);
        if (i % 16 === 0) {
          gc();
          peak = Math.max(peak, process.memoryUsage().arrayBuffers - baseline);
        }
        yield chunk;
      }
    }
    gc();
    const baseline = process.memoryUsage().arrayBuffers;
    // Through a Node.js stream too, so that its backpressure is exercised.
    const result = await store.put(Readable.from(generate()), { maxSize: total });
    gc();
    peak = Math.max(peak, process.memoryUsage().arrayBuffers - baseline);

    expect(result).toEqual({ contentId: `<${expected.digest('base64url')}>`, size: total, created: true });
    expect(await store.stat(result.contentId)).toEqual({ size: total });
    expect(peak).toBeLessThan(8 * MB);
  });

  it('PROTOCOL §2: the same bytes stored twice are one object (created: false)', async () => {
    const bytes = randomBytes(10_000);
    const first = await store.put(chunks([bytes]), { maxSize: MB });
    const second = await store.put(chunks(split(bytes, 100)), { maxSize: MB });
    expect(first.created).toBe(true);
    expect(second).toEqual({ contentId: first.contentId, size: bytes.byteLength, created: false });
    expect(await filesUnder(join(root, 'objects'))).toHaveLength(1);
    expect(await filesUnder(join(root, 'tmp'))).toEqual([]);
  });

  it('ARCHITECTURE: storing bytes again refreshes the mtime a garbage collector looks at', async () => {
    const bytes = randomBytes(100);
    const { contentId } = await store.put(chunks([bytes]), { maxSize: MB });
    const id = bare(contentId);
    const path = join(root, 'objects', id.slice(0, 2), id);
    const old = new Date(Date.now() - 86_400_000);
    await utimes(path, old, old);
    await store.put(chunks([bytes]), { maxSize: MB });
    expect((await stat(path)).mtimeMs).toBeGreaterThan(old.getTime() + 60_000);
  });

  it('maxSize: one byte too many fails with too_large, stops reading, and leaves no file', async () => {
    let pulled = 0;
    let closed = false;
    async function* endless(): AsyncGenerator<Uint8Array> {
      try {
        for (;;) {
          pulled++;
          yield randomBytes(100);
        }
      } finally {
        closed = true;
      }
    }
    await expectCode(store.put(endless(), { maxSize: 1000 }), 'too_large');
    expect(pulled).toBe(11);
    await new Promise((r) => setImmediate(r));
    expect(closed).toBe(true);
    expect(await filesUnder(root)).toEqual([]);

    // Exactly maxSize bytes fit.
    expect((await store.put(chunks([randomBytes(1000)]), { maxSize: 1000 })).size).toBe(1000);
  });

  it('maxSize: an expected size above the limit fails before anything is read or written', async () => {
    let pulled = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      pulled++;
      yield new Uint8Array(1);
    }
    await expectCode(store.put(source(), { maxSize: 10, expectedSize: 11 }), 'too_large');
    expect(pulled).toBe(0);
  });

  it('maxSize: a Node.js stream over the limit is left to its owner, not destroyed (it may answer 413)', async () => {
    const source = Readable.from(chunks([randomBytes(600), randomBytes(600), randomBytes(600)]));
    await expectCode(store.put(source, { maxSize: 1000 }), 'too_large');
    expect(source.destroyed).toBe(false);
    source.destroy();
    expect(await filesUnder(root)).toEqual([]);
  });

  it('PROTOCOL §6.4: a digest mismatch is never published', async () => {
    const expected = cid(randomBytes(1000));
    const error = await expectCode(
      store.put(chunks([randomBytes(1000)]), { maxSize: MB, expectedContentId: expected }),
      'digest_mismatch',
    );
    expect(error.message).toContain(expected);
    expect(await filesUnder(root)).toEqual([]);
    expect(await store.has(expected)).toBe(false);
  });

  it('PROTOCOL §6.4: the expected Content-ID is accepted in both forms and the matching bytes are published', async () => {
    const bytes = randomBytes(1000);
    for (const expectedContentId of [cid(bytes), bare(cid(bytes))]) {
      const result = await store.put(chunks([bytes]), { maxSize: MB, expectedContentId, expectedSize: 1000 });
      expect(result.contentId).toBe(cid(bytes));
    }
  });

  it('PROTOCOL §2: bytes of another size than expected are a digest mismatch, detected at the first extra byte', async () => {
    const bytes = randomBytes(1000);
    await expectCode(store.put(chunks([bytes]), { maxSize: MB, expectedSize: 1001 }), 'digest_mismatch');
    let pulled = 0;
    async function* endless(): AsyncGenerator<Uint8Array> {
      for (;;) {
        pulled++;
        yield bytes;
      }
    }
    await expectCode(store.put(endless(), { maxSize: MB, expectedSize: 1500 }), 'digest_mismatch');
    expect(pulled).toBe(2);
    expect(await filesUnder(root)).toEqual([]);
  });

  it('ARCHITECTURE: a source that fails midway fails the put with aborted and leaves nothing behind', async () => {
    const cause = new Error('connection reset');
    const error = await expectCode(
      store.put(failingAfter([randomBytes(100_000), randomBytes(100_000)], cause), { maxSize: MB }),
      'aborted',
    );
    expect(error.cause).toBe(cause);
    const stream = Readable.from(failingAfter([randomBytes(100_000)], cause));
    await expectCode(store.put(stream, { maxSize: MB }), 'aborted');
    expect(await filesUnder(root)).toEqual([]);
  });

  it('ARCHITECTURE: an abort signal stops a stalled put at once and leaves nothing behind', async () => {
    async function* stalled(): AsyncGenerator<Uint8Array> {
      yield randomBytes(100_000);
      await new Promise(() => undefined);
    }
    const controller = new AbortController();
    const reason = new Error('shutting down');
    const put = store.put(stalled(), { maxSize: MB, signal: controller.signal });
    setTimeout(() => controller.abort(reason), 20);
    const error = await expectCode(put, 'aborted');
    expect(error.cause).toBe(reason);
    expect(await filesUnder(root)).toEqual([]);

    // Already aborted: nothing is read or created.
    await expectCode(store.put(chunks([randomBytes(1)]), { maxSize: 1, signal: AbortSignal.abort() }), 'aborted');
    expect(await filesUnder(root)).toEqual([]);
  });

  it('a source of strings is a caller mistake (TypeError), and still leaves nothing behind', async () => {
    const source = Readable.from(['text']);
    await expect(store.put(source, { maxSize: MB })).rejects.toThrow(TypeError);
    await expect(store.put(chunks([]), { maxSize: -1 })).rejects.toThrow(TypeError);
    await expect(store.put(chunks([]), { maxSize: 1.5 })).rejects.toThrow(TypeError);
    expect(await filesUnder(root)).toEqual([]);
  });

  it('PROTOCOL §2: concurrent puts of the same bytes both succeed, and one object exists', async () => {
    const bytes = randomBytes(500_000);
    const results = await Promise.all(
      Array.from({ length: 4 }, () => store.put(chunks(split(bytes, 20_000)), { maxSize: MB })),
    );
    for (const result of results) expect(result.contentId).toBe(cid(bytes));
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect(await filesUnder(join(root, 'objects'))).toHaveLength(1);
    expect(await filesUnder(join(root, 'tmp'))).toEqual([]);
    expect(fingerprint(await readAll(await store.read(cid(bytes))))).toBe(fingerprint(bytes));
  });
});

describe('Content-IDs', () => {
  const valid = bare(cid(Buffer.from('hello')));
  const invalid = [
    '../../etc/passwd',
    '<../../etc/passwd>',
    '<..%2F..>',
    '..%2F..%2F..%2Fetc%2Fpasswd',
    `../${valid.slice(3)}`,
    `${valid.slice(0, 20)}/${valid.slice(21)}`,
    `${valid.slice(0, 20)}.${valid.slice(21)}`,
    '',
    '<>',
    valid.slice(0, 42),
    `${valid}A`,
    `<${valid.slice(0, 42)}>`,
    `${valid.slice(0, 42)}B`, // B carries bits a 256-bit digest cannot have
    `${valid.slice(0, 42)}=`,
    `${valid.slice(0, 42)}+`,
    `<${valid}`,
    `${valid}>`,
    `<<${valid}>>`,
    ` ${valid}`,
    `${valid}\n`,
    `<${valid}>\u0000`,
  ];

  it.each(invalid)('PROTOCOL §2: %j is not a Content-ID and is rejected before the file system', async (id) => {
    const before = await filesUnder(sandbox);
    const source = chunks([new Uint8Array(1)]);
    await expectCode(store.put(source, { maxSize: 10, expectedContentId: id }), 'invalid_content_id');
    await expectCode(store.openPartial(id), 'invalid_content_id');
    await expectCode(store.stat(id), 'invalid_content_id');
    await expectCode(store.has(id), 'invalid_content_id');
    await expectCode(store.read(id), 'invalid_content_id');
    await expectCode(store.delete(id), 'invalid_content_id');
    expect(() => normalizeContentId(id)).toThrow(BlobStoreError);
    expect(await filesUnder(sandbox)).toEqual(before);
  });

  it('PROTOCOL §2: a Content-ID is accepted as <b64u> and as bare b64u', async () => {
    const bytes = Buffer.from('hello');
    await store.put(chunks([bytes]), { maxSize: 10 });
    expect(await store.stat(cid(bytes))).toEqual({ size: 5 });
    expect(await store.stat(valid)).toEqual({ size: 5 });
    expect(normalizeContentId(valid)).toBe(cid(bytes));
    expect(normalizeContentId(cid(bytes))).toBe(cid(bytes));
  });
});

describe('DiskBlobStore.read, stat, delete, list', () => {
  it('PROTOCOL §9: a resource is read whole or by inclusive byte ranges', async () => {
    const bytes = randomBytes(200_000);
    const { contentId } = await store.put(chunks([bytes]), { maxSize: MB });
    expect(fingerprint(await readAll(await store.read(contentId)))).toBe(fingerprint(bytes));
    expect(fingerprint(await readAll(await store.read(contentId, { start: 0, end: 99 })))).toBe(
      fingerprint(bytes.subarray(0, 100)),
    );
    expect(fingerprint(await readAll(await store.read(contentId, { start: 100_000, end: 199_999 })))).toBe(
      fingerprint(bytes.subarray(100_000)),
    );
    expect(fingerprint(await readAll(await store.read(contentId, { start: 199_999, end: 199_999 })))).toBe(
      fingerprint(bytes.subarray(199_999)),
    );
    await expect(store.read(contentId, { start: 0, end: 200_000 })).rejects.toThrow(RangeError);
    await expect(store.read(contentId, { start: 5, end: 4 })).rejects.toThrow(RangeError);
  });

  it('PROTOCOL §9: reading a resource the store does not hold fails with not_found', async () => {
    await expectCode(store.read(cid(Buffer.from('absent'))), 'not_found');
    await expectCode(store.read(cid(Buffer.from('absent')), { start: 0, end: 0 }), 'not_found');
    expect(await store.stat(cid(Buffer.from('absent')))).toBeUndefined();
    expect(await store.has(cid(Buffer.from('absent')))).toBe(false);
  });

  it('garbage collection: list reports every object with its size and mtime; delete removes one', async () => {
    const a = randomBytes(10);
    const b = randomBytes(2000);
    await store.put(chunks([a]), { maxSize: MB });
    await store.put(chunks([b]), { maxSize: MB });
    await writeFile(join(root, 'objects', 'stray-file'), 'not an object');
    const listed = [];
    for await (const info of store.list()) listed.push(info);
    expect(listed.map(({ contentId, size }) => ({ contentId, size })).sort((x, y) => x.size - y.size)).toEqual([
      { contentId: cid(a), size: 10 },
      { contentId: cid(b), size: 2000 },
    ]);
    for (const info of listed) expect(info.mtime).toBeInstanceOf(Date);

    expect(await store.delete(cid(a))).toBe(true);
    expect(await store.delete(cid(a))).toBe(false);
    expect(await store.has(cid(a))).toBe(false);
    expect(await store.has(cid(b))).toBe(true);
  });
});

describe('DiskBlobStore.openPartial', () => {
  it('PROTOCOL §6.2: an interrupted transfer resumes after a restart, and the whole is published', async () => {
    const bytes = randomBytes(300_000);
    const id = cid(bytes);
    const first = await store.openPartial(id);
    expect(first.size).toBe(0);
    await first.append(chunks(split(bytes.subarray(0, 150_000), 5000)), { maxSize: MB });
    expect(first.size).toBe(150_000);
    await first.close();

    // A new process: the hash of the bytes on disk is computed again.
    const restarted = new DiskBlobStore(root);
    const second = await restarted.openPartial(bare(id));
    expect(second.size).toBe(150_000);
    await second.append(chunks([bytes.subarray(second.size)]), { maxSize: MB });
    expect(await second.commit(bytes.byteLength)).toEqual({ contentId: id, size: bytes.byteLength, created: true });

    expect(fingerprint(await readAll(await restarted.read(id)))).toBe(fingerprint(bytes));
    expect(await filesUnder(join(root, 'partial'))).toEqual([]);
    await expect(second.append(chunks([]), { maxSize: MB })).rejects.toThrow(TypeError);
  });

  it('PROTOCOL §6.2: a source failing midway keeps the bytes received, and the transfer resumes from them', async () => {
    const bytes = randomBytes(200_000);
    const partial = await store.openPartial(cid(bytes));
    const cause = new Error('socket hang up');
    // Odd-sized chunks: the ones still gathered for a write when the source fails are kept too.
    const error = await expectCode(
      partial.append(failingAfter(split(bytes.subarray(0, 123_457), 3000), cause), { maxSize: MB }),
      'aborted',
    );
    expect(error.cause).toBe(cause);
    expect(partial.size).toBe(123_457);
    expect((await stat(join(root, 'partial', bare(cid(bytes))))).size).toBe(123_457);

    await partial.append(chunks([bytes.subarray(partial.size)]), { maxSize: MB });
    expect((await partial.commit()).created).toBe(true);
    expect(fingerprint(await readAll(await store.read(cid(bytes))))).toBe(fingerprint(bytes));
  });

  it('PROTOCOL §6.4: a partial holding the wrong bytes fails at commit and is deleted', async () => {
    const bytes = randomBytes(10_000);
    const id = cid(bytes);
    const wrong = Buffer.from(bytes);
    wrong[5000] = wrong[5000]! ^ 1;
    const partial = await store.openPartial(id);
    await partial.append(chunks([wrong.subarray(0, 5000)]), { maxSize: MB });
    await partial.close();
    // Corruption from an earlier attempt is found from the bytes on disk as well.
    const reopened = await store.openPartial(id);
    await reopened.append(chunks([wrong.subarray(5000)]), { maxSize: MB });
    await expectCode(reopened.commit(), 'digest_mismatch');
    expect(await filesUnder(root)).toEqual([]);
    expect(await store.has(id)).toBe(false);

    // A wrong size is a mismatch too.
    const short = await store.openPartial(id);
    await short.append(chunks([bytes.subarray(0, 9999)]), { maxSize: MB });
    await expectCode(short.commit(10_000), 'digest_mismatch');
    expect(await filesUnder(root)).toEqual([]);
  });

  it('maxSize: a partial growing past the limit fails with too_large and is deleted', async () => {
    const bytes = randomBytes(3000);
    const partial = await store.openPartial(cid(bytes));
    await expectCode(partial.append(chunks([bytes]), { maxSize: 2999 }), 'too_large');
    expect(await filesUnder(root)).toEqual([]);
    await expect(partial.commit()).rejects.toThrow(TypeError);
  });

  it('PROTOCOL §6.4: a partial of bytes already stored commits with created: false', async () => {
    const bytes = randomBytes(3000);
    await store.put(chunks([bytes]), { maxSize: MB });
    const partial = await store.openPartial(cid(bytes));
    await partial.append(chunks([bytes]), { maxSize: MB });
    expect(await partial.commit()).toEqual({ contentId: cid(bytes), size: 3000, created: false });
    expect(await filesUnder(join(root, 'partial'))).toEqual([]);
    expect(await filesUnder(join(root, 'objects'))).toHaveLength(1);
  });

  it('one writer per Content-ID: a second openPartial waits until the first is closed', async () => {
    const bytes = randomBytes(1000);
    const first = await store.openPartial(cid(bytes));
    let opened = false;
    const second = store.openPartial(cid(bytes)).then((p) => {
      opened = true;
      return p;
    });
    await first.append(chunks([bytes.subarray(0, 400)]), { maxSize: MB });
    await new Promise((r) => setTimeout(r, 20));
    expect(opened).toBe(false);
    await first.close();
    const next = await second;
    expect(next.size).toBe(400);

    // A waiter can give up.
    const controller = new AbortController();
    const third = store.openPartial(cid(bytes), { signal: controller.signal });
    controller.abort();
    await expectCode(third, 'aborted');
    await next.discard();
    expect((await store.openPartial(cid(bytes))).size).toBe(0);
  });

  it('discard deletes the bytes of a partial', async () => {
    const bytes = randomBytes(1000);
    const partial = await store.openPartial(cid(bytes));
    await partial.append(chunks([bytes]), { maxSize: MB });
    await partial.discard();
    await partial.discard();
    expect(await filesUnder(root)).toEqual([]);
  });
});

describe('crash recovery', () => {
  it('removeStaleTemp removes old temporary files and spares recent ones and puts in progress', async () => {
    const old = new Date(Date.now() - 3_600_000);
    await writeFile(join(root, 'tmp', 'left-by-a-crash'), 'x');
    await utimes(join(root, 'tmp', 'left-by-a-crash'), old, old);
    await writeFile(join(root, 'tmp', 'recent'), 'x');

    let resume!: () => void;
    let paused!: () => void;
    const midway = new Promise<void>((r) => {
      paused = r;
    });
    async function* slow(): AsyncGenerator<Uint8Array> {
      yield randomBytes(10);
      // The second chunk is asked for: the temporary file exists.
      await new Promise<void>((r) => {
        resume = r;
        paused();
      });
      yield randomBytes(10);
    }
    const put = store.put(slow(), { maxSize: MB });
    await midway;
    const inProgress = (await readdir(join(root, 'tmp'))).filter((n) => n !== 'left-by-a-crash' && n !== 'recent');
    expect(inProgress).toHaveLength(1);
    await utimes(join(root, 'tmp', inProgress[0]!), old, old);

    expect(await store.removeStaleTemp(60_000)).toBe(1);
    expect((await readdir(join(root, 'tmp'))).sort()).toEqual([inProgress[0], 'recent'].sort());
    resume();
    expect((await put).size).toBe(20);
    expect(await readdir(join(root, 'tmp'))).toEqual(['recent']);
    expect(await store.removeStaleTemp(0)).toBe(1);
    expect(await readdir(join(root, 'tmp'))).toEqual([]);
  });

  it('removeStalePartial removes old partials that are not open', async () => {
    const a = randomBytes(10);
    const b = randomBytes(10);
    const old = new Date(Date.now() - 3_600_000);
    for (const bytes of [a, b]) {
      const partial = await store.openPartial(cid(bytes));
      await partial.append(chunks([bytes.subarray(0, 5)]), { maxSize: MB });
      await utimes(join(root, 'partial', bare(cid(bytes))), old, old);
      if (bytes === a) await partial.close();
    }
    expect(await store.removeStalePartial(60_000)).toBe(1);
    expect(await readdir(join(root, 'partial'))).toEqual([bare(cid(b))]);
  });
});

/** Bytes whose digest starts with `prefix` (two characters: about 4,096 tries). */
function bytesWithDigestPrefix(prefix: string): Buffer {
  for (;;) {
    const bytes = randomBytes(32);
    if (bare(cid(bytes)).startsWith(prefix)) return bytes;
  }
}

describe('layout: objects/<c0c1>/<digest>', () => {
  it('ARCHITECTURE: objects sharing the first two characters share one directory, made once', async () => {
    const first = randomBytes(64);
    const prefix = bare(cid(first)).slice(0, 2);
    const second = bytesWithDigestPrefix(prefix);
    await store.put(chunks([first]), { maxSize: MB });
    await store.put(chunks([second]), { maxSize: MB });
    expect(await readdir(join(root, 'objects'))).toEqual([prefix]);
    expect((await readdir(join(root, 'objects', prefix))).sort()).toEqual([bare(cid(first)), bare(cid(second))].sort());
  });

  it('ARCHITECTURE: a directory removed behind the store is made again at the next publish into it', async () => {
    const first = randomBytes(64);
    const prefix = bare(cid(first)).slice(0, 2);
    await store.put(chunks([first]), { maxSize: MB });
    await rm(join(root, 'objects', prefix), { recursive: true });
    const second = bytesWithDigestPrefix(prefix);
    expect(await store.put(chunks([second]), { maxSize: MB })).toMatchObject({ created: true });
    expect(await readAll(await store.read(cid(second)))).toEqual(second);
    // And through a partial, which publishes the same way.
    await rm(join(root, 'objects', prefix), { recursive: true });
    const third = bytesWithDigestPrefix(prefix);
    const partial = await store.openPartial(cid(third));
    await partial.append(chunks([third]), { maxSize: MB });
    expect(await partial.commit(third.byteLength)).toMatchObject({ created: true });
    expect(await readAll(await store.read(cid(third)))).toEqual(third);
  });

  it('ARCHITECTURE: concurrent puts into a new directory all publish', async () => {
    const prefix = bare(cid(randomBytes(8))).slice(0, 2);
    const all = [randomBytes(16), ...Array.from({ length: 5 }, () => bytesWithDigestPrefix(prefix))];
    const results = await Promise.all(all.map((bytes) => store.put(chunks([bytes]), { maxSize: MB })));
    expect(results.every((r) => r.created)).toBe(true);
    for (const bytes of all) expect(await readAll(await store.read(cid(bytes)))).toEqual(bytes);
  });

  it('migrateLayout moves the objects of the two-level layout, keeps strangers, and is idempotent', async () => {
    const objects = join(root, 'objects');
    const legacy = [randomBytes(100), randomBytes(2000), randomBytes(0)];
    for (const bytes of legacy) {
      const id = bare(cid(bytes));
      await mkdir(join(objects, id.slice(0, 2), id.slice(2, 4)), { recursive: true });
      await writeFile(join(objects, id.slice(0, 2), id.slice(2, 4), id), bytes);
    }
    // The same bytes in both places (a crash between two runs), and a file that is no object of its directory.
    const both = randomBytes(50);
    const bothId = bare(cid(both));
    await mkdir(join(objects, bothId.slice(0, 2), bothId.slice(2, 4)), { recursive: true });
    await writeFile(join(objects, bothId.slice(0, 2), bothId.slice(2, 4), bothId), both);
    await store.put(chunks([both]), { maxSize: MB });
    const strangerDir = join(objects, 'zz', 'yy');
    await mkdir(strangerDir, { recursive: true });
    await writeFile(join(strangerDir, 'notes.txt'), 'not an object');

    expect(await store.migrateLayout()).toBe(4);
    const dirs = (await readdir(objects, { recursive: true, withFileTypes: true }))
      .filter((entry) => entry.isDirectory())
      .map((entry) => join(entry.parentPath, entry.name).slice(objects.length + 1));
    const shards = [...legacy, both].map((bytes) => bare(cid(bytes)).slice(0, 2));
    expect(dirs.sort()).toEqual([...new Set([...shards, 'zz', join('zz', 'yy')])].sort());
    const expected = [...legacy, both].map((bytes) => join(bare(cid(bytes)).slice(0, 2), bare(cid(bytes))));
    expect(await filesUnder(objects)).toEqual([...expected, join('zz', 'yy', 'notes.txt')].sort());
    for (const bytes of [...legacy, both]) expect(await readAll(await store.read(cid(bytes)))).toEqual(bytes);
    const listed = [];
    for await (const blob of store.list()) listed.push(blob.contentId);
    expect(listed.sort()).toEqual([...legacy, both].map(cid).sort());

    expect(await store.migrateLayout()).toBe(0);
    expect(await filesUnder(objects)).toEqual([...expected, join('zz', 'yy', 'notes.txt')].sort());
  });
});

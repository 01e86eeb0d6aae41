/**
 * PartialBlob.truncate against real files: the fetcher (PROTOCOL.md §6.5) cuts off what an answer appended
 * before it proved wrong (bytes past the declared size) and keeps the bytes held before it for a resume.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DiskBlobStore } from './blob-store.js';

const cid = (bytes: Uint8Array): string => `<${createHash('sha256').update(bytes).digest('base64url')}>`;

async function* chunks(...parts: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const part of parts) yield part;
}

let root: string;
let store: DiskBlobStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'federizer-truncate-'));
  store = new DiskBlobStore(root);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('PartialBlob.truncate', () => {
  it('PROTOCOL §6.5: cuts an answer’s bytes off, keeps those held before, and the resume still hashes right', async () => {
    const bytes = randomBytes(300_000);
    const id = cid(bytes);
    const path = join(root, 'partial', id.slice(1, -1));
    const partial = await store.openPartial(id);
    await partial.append(chunks(bytes.subarray(0, 100_000)), { maxSize: bytes.length });
    // A later answer appends bytes that turn out wrong.
    await partial.append(chunks(randomBytes(150_000)), { maxSize: bytes.length });
    expect(partial.size).toBe(250_000);
    await partial.truncate(100_000);
    expect(partial.size).toBe(100_000);
    expect((await stat(path)).size).toBe(100_000);
    // Still open: the resume appends after the bytes kept and the digest covers exactly them.
    await partial.append(chunks(bytes.subarray(100_000)), { maxSize: bytes.length });
    expect(await partial.commit(bytes.length)).toEqual({ contentId: id, size: bytes.length, created: true });
  });

  it('truncating to the size held changes nothing; to more than held is a RangeError that keeps the partial open', async () => {
    const bytes = randomBytes(1000);
    const partial = await store.openPartial(cid(bytes));
    await partial.append(chunks(bytes.subarray(0, 400)), { maxSize: 1000 });
    await partial.truncate(400);
    await expect(partial.truncate(401)).rejects.toThrow(RangeError);
    expect(partial.size).toBe(400);
    await partial.truncate(0);
    expect(partial.size).toBe(0);
    await partial.append(chunks(bytes), { maxSize: 1000 });
    expect((await partial.commit(1000)).size).toBe(1000);
  });

  it('a closed partial cannot be truncated', async () => {
    const partial = await store.openPartial(cid(Buffer.from('x')));
    await partial.close();
    await expect(partial.truncate(0)).rejects.toThrow(TypeError);
  });
});

/**
 * Publishing on a file system without hard links (link(2) answers EPERM or ENOTSUP, as vfat and some network
 * and FUSE file systems do): the store falls back to rename(2). Only `link` is replaced; every other call is real.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { DiskBlobStore } from './blob-store.js';

vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof fs>();
  return {
    ...actual,
    link: vi.fn(async () => {
      throw Object.assign(new Error('EPERM: operation not permitted, link'), { code: 'EPERM' });
    }),
  };
});

const cid = (bytes: Uint8Array): string => `<${createHash('sha256').update(bytes).digest('base64url')}>`;

async function* chunks(parts: readonly Uint8Array[]): AsyncGenerator<Uint8Array> {
  yield* parts;
}

let sandbox: string;

beforeEach(async () => {
  sandbox = await fs.mkdtemp(join(tmpdir(), 'federizer-blobs-'));
});

afterEach(async () => {
  await fs.rm(sandbox, { recursive: true, force: true });
});

it('ARCHITECTURE: without hard links, objects are published by rename, deduplicated, and nothing is left behind', async () => {
  const store = new DiskBlobStore(sandbox);
  const bytes = randomBytes(5000);
  expect(await store.put(chunks([bytes]), { maxSize: 10_000 })).toEqual({
    contentId: cid(bytes),
    size: 5000,
    created: true,
  });
  expect(vi.mocked(fs.link)).toHaveBeenCalled();
  expect((await store.put(chunks([bytes]), { maxSize: 10_000 })).created).toBe(false);

  const other = randomBytes(100);
  const partial = await store.openPartial(cid(other));
  await partial.append(chunks([other]), { maxSize: 10_000 });
  expect((await partial.commit()).created).toBe(true);

  expect(await fs.readdir(join(sandbox, 'tmp'))).toEqual([]);
  expect(await fs.readdir(join(sandbox, 'partial'))).toEqual([]);
  const listed = [];
  for await (const info of store.list()) listed.push(info.contentId);
  expect(listed.sort()).toEqual([cid(bytes), cid(other)].sort());
});

/**
 * The mailbox's store of External Resources (PROTOCOL.md §2, §6.4, §9), addressed by Content-ID.
 *
 * Layout under the root directory:
 *
 *   objects/<c0c1>/<43-char b64u>   published resources, immutable, named by their digest
 *   tmp/<random>                    a put in progress (removed on failure; removeStaleTemp after a crash)
 *   partial/<43-char b64u>          the bytes of an interrupted fetch, kept so that it resumes with Range
 *
 * `<c0c1>` is the digest's first two characters: 4,096 directories (the digest alphabet has 64 characters),
 * so up to 100 million objects a directory holds under 25,000 names, which ext4 and XFS index. An earlier
 * layout added a second level of two more characters, 16.7 million possible directories: until a store held
 * millions of objects nearly every object had a directory of its own, one more inode and block, created and
 * fsynced as the object was published (most of the cost of storing a small resource). `migrateLayout`
 * moves a store of that layout to this one.
 *
 * Bytes are hashed while they are written and never held whole in memory; a file is fsynced before it is
 * published, and published only under the digest of what was written. No HTTP here: callers map the codes
 * of BlobStoreError at their edge.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { link, lstat, mkdir, open, opendir, readdir, rename, rm, rmdir, stat, unlink, utimes } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { ContentIdHasher, isB64uSha256 } from '@federizer/protocol';
import { BlobReader } from './blob-reader.js';
import { YoungGarbage } from './young-gc.js';

export type BlobStoreErrorCode =
  'too_large' | 'digest_mismatch' | 'not_found' | 'invalid_content_id' | 'aborted' | 'io_error';

export class BlobStoreError extends Error {
  override readonly name = 'BlobStoreError';
  readonly code: BlobStoreErrorCode;

  constructor(code: BlobStoreErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.code = code;
  }
}

export function isBlobStoreError(e: unknown, code?: BlobStoreErrorCode): e is BlobStoreError {
  return e instanceof BlobStoreError && (code === undefined || e.code === code);
}

/** Bytes from the network or from a client. A Node.js stream must yield bytes (no `setEncoding`). */
export type BlobSource = AsyncIterable<Uint8Array> | NodeJS.ReadableStream;

export interface PutOptions {
  /** The most bytes accepted; one more fails the put with `too_large`. */
  maxSize: number;
  /** The Content-ID the bytes must have (`<...>` or bare); anything else fails with `digest_mismatch`. */
  expectedContentId?: string;
  /** The size the bytes must have (the `size` parameter of the part); anything else fails with `digest_mismatch`. */
  expectedSize?: number;
  signal?: AbortSignal;
}

export interface PutResult {
  /** `<B64U(H(bytes))>` */
  contentId: string;
  size: number;
  /** False when the store already held these bytes. */
  created: boolean;
}

export interface AppendOptions {
  /** The most bytes the whole resource may have, counting those already on disk. */
  maxSize: number;
  signal?: AbortSignal;
}

/** Inclusive byte offsets, as in RFC 9110 §14.1.2 (`parseRange` answers this shape). */
export interface ByteRange {
  start: number;
  end: number;
}

export interface BlobInfo {
  contentId: string;
  size: number;
  mtime: Date;
}

/**
 * A resumable write of one resource whose Content-ID is known in advance (the fetcher of PROTOCOL §6.4).
 *
 * Only one PartialBlob per Content-ID is open at a time in a store: a second `openPartial` waits until the
 * first is committed, discarded or closed, so every PartialBlob must end with one of those three.
 */
export interface PartialBlob {
  /** `<...>` */
  readonly contentId: string;
  /** Bytes durably on disk, hashed; resume the transfer with `Range: bytes=<size>-`. */
  readonly size: number;
  /**
   * Appends bytes. When the source fails or the signal aborts (`aborted`), the bytes received so far are kept
   * and the PartialBlob stays open, so the transfer can resume from the new `size`. Exceeding `maxSize`
   * (`too_large`) deletes the partial; an `io_error` closes it and leaves the file to be re-hashed on reopening.
   */
  append(source: BlobSource, options: AppendOptions): Promise<{ size: number }>;
  /**
   * Publishes the bytes if they have the Content-ID (and `expectedSize`, when given); otherwise deletes them and
   * fails with `digest_mismatch`. Closes the PartialBlob either way.
   */
  commit(expectedSize?: number): Promise<PutResult>;
  /**
   * Cuts the bytes back to the first `size` (at most `this.size`) and keeps the PartialBlob open: what an
   * answer appended before it proved wrong goes, the bytes held before it stay for a resume. The bytes kept are
   * hashed again. An `io_error` closes the PartialBlob, leaving the file to be re-hashed on reopening.
   */
  truncate(size: number): Promise<void>;
  /** Deletes the bytes and closes. Does nothing when already closed. */
  discard(): Promise<void>;
  /** Closes, keeping the bytes on disk for a later `openPartial`. Does nothing when already closed. */
  close(): Promise<void>;
}

/** The narrow interface the mailbox uses; DiskBlobStore is its only implementation so far. */
export interface BlobStore {
  put(source: BlobSource, options: PutOptions): Promise<PutResult>;
  openPartial(contentId: string, options?: { signal?: AbortSignal }): Promise<PartialBlob>;
  stat(contentId: string): Promise<{ size: number } | undefined>;
  has(contentId: string): Promise<boolean>;
  /** The bytes, or the inclusive `range` of them; `not_found` when absent. A range past the end is a RangeError. */
  read(contentId: string, range?: ByteRange): Promise<Readable>;
  /**
   * Like `read`, for sending the bytes to a socket or an HTTP answer through a few reused buffers, with no
   * garbage left per chunk (see BlobReader).
   */
  openReader(contentId: string, range?: ByteRange): Promise<BlobReader>;
  /** True when something was deleted. */
  delete(contentId: string): Promise<boolean>;
  list(): AsyncIterable<BlobInfo>;
  /** Removes temporary files older than `olderThanMs` that no put of this store is writing; answers how many. */
  removeStaleTemp(olderThanMs: number): Promise<number>;
  /** Removes partial files older than `olderThanMs` that are not open; answers how many. */
  removeStalePartial(olderThanMs: number): Promise<number>;
}

/** Mail is private: only the mailbox's own user reads the store. */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;
/**
 * Chunks are gathered into writes of this size, two buffers per put: a quarter of the thread-pool round trips
 * of 64 KiB writes, and small enough to stay in the CPU's cache between the copy, the hash and the write
 * (measured on this project's machine: 1 MiB buffers made uploads three times slower, with twice the system time).
 */
const WRITE_BUFFER_SIZE = 256 * 1024;
/** How many written bytes may wait for the disk before a background fdatasync starts (see ChunkWriter). */
const SYNC_EVERY = 32 * 1024 * 1024;
/** link(2) answers these on file systems without hard links; publishing then falls back to rename(2). */
const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);
const SHARD = /^[A-Za-z0-9_-]{2}$/;
/** Names gathered from a directory before their files are examined, while listing objects. */
const LIST_BATCH = 1000;
/** Shards, and directories of the earlier layout in a shard, moved at once (see `migrateLayout`). */
const MIGRATE_CONCURRENCY = 8;

/**
 * The 43-character digest of a Content-ID written `<...>` or bare; `invalid_content_id` for anything else.
 * The digest alphabet has no `/`, `.` or `%`, so a checked digest is a safe file name.
 */
export function contentIdDigest(contentId: string): string {
  if (typeof contentId === 'string') {
    const bare = contentId.startsWith('<') && contentId.endsWith('>') ? contentId.slice(1, -1) : contentId;
    if (isB64uSha256(bare)) return bare;
  }
  const shown = typeof contentId === 'string' ? JSON.stringify(contentId.slice(0, 64)) : typeof contentId;
  throw new BlobStoreError('invalid_content_id', `not a Content-ID: ${shown}`);
}

/** A Content-ID in its header form `<...>`, from either form. */
export function normalizeContentId(contentId: string): string {
  return `<${contentIdDigest(contentId)}>`;
}

export class DiskBlobStore implements BlobStore {
  readonly root: string;
  private readonly objectsDir: string;
  private readonly shardDirs: ShardDirs;
  private readonly tmpDir: string;
  private readonly partialDir: string;
  /** Names in tmp/ that a put of this store is writing: removeStaleTemp leaves them alone. */
  private readonly writing = new Set<string>();
  /** Per digest, the tail of the queue of PartialBlobs waiting to be open. */
  private readonly partialLocks = new Map<string, Promise<void>>();

  /** Creates `<root>/objects`, `<root>/tmp` and `<root>/partial` when missing. */
  constructor(root: string) {
    if (typeof root !== 'string' || root === '') throw new TypeError('DiskBlobStore needs a root directory');
    this.root = resolve(root);
    this.objectsDir = join(this.root, 'objects');
    this.shardDirs = new ShardDirs(this.objectsDir);
    this.tmpDir = join(this.root, 'tmp');
    this.partialDir = join(this.root, 'partial');
    for (const dir of [this.objectsDir, this.tmpDir, this.partialDir]) {
      try {
        mkdirSync(dir, { recursive: true, mode: DIR_MODE });
      } catch (e) {
        throw ioError(`cannot create ${dir}`, e);
      }
    }
  }

  async put(source: BlobSource, options: PutOptions): Promise<PutResult> {
    const maxSize = byteCount('maxSize', options.maxSize);
    const expectedSize =
      options.expectedSize === undefined ? undefined : byteCount('expectedSize', options.expectedSize);
    const expectedDigest =
      options.expectedContentId === undefined ? undefined : contentIdDigest(options.expectedContentId);
    const { signal } = options;
    if (signal?.aborted) throw abortedBy(signal);
    if (expectedSize !== undefined && expectedSize > maxSize) {
      throw new BlobStoreError('too_large', `the expected size ${expectedSize} exceeds the limit of ${maxSize} bytes`);
    }

    const name = randomBytes(16).toString('hex');
    const tmpPath = join(this.tmpDir, name);
    this.writing.add(name);
    let file: FileHandle | undefined;
    try {
      file = await io(`cannot create ${tmpPath}`, () => open(tmpPath, 'wx', FILE_MODE));
      const hasher = new ContentIdHasher();
      const writer = new ChunkWriter(file, hasher);
      try {
        await pump(source, writer, { maxSize, expectedSize, signal });
        await writer.finish();
      } catch (e) {
        await writer.settle();
        throw e;
      }
      const written = file;
      await io(`cannot fsync ${tmpPath}`, () => written.sync());
      file = undefined;
      await io(`cannot close ${tmpPath}`, () => written.close());

      const size = hasher.size;
      const digest = digestOf(hasher);
      if (expectedSize !== undefined && size !== expectedSize) {
        throw new BlobStoreError('digest_mismatch', `received ${size} bytes, expected ${expectedSize}`);
      }
      if (expectedDigest !== undefined && digest !== expectedDigest) {
        throw new BlobStoreError('digest_mismatch', `the bytes have Content-ID <${digest}>, not <${expectedDigest}>`);
      }
      const created = await publish(this.shardDirs, tmpPath, digest);
      return { contentId: `<${digest}>`, size, created };
    } catch (e) {
      await file?.close().catch(() => undefined);
      await rm(tmpPath, { force: true }).catch(() => undefined);
      throw e;
    } finally {
      this.writing.delete(name);
    }
  }

  async openPartial(contentId: string, options: { signal?: AbortSignal } = {}): Promise<PartialBlob> {
    const digest = contentIdDigest(contentId);
    const unlock = await this.lockPartial(digest, options.signal);
    try {
      const path = join(this.partialDir, digest);
      const hasher = new ContentIdHasher();
      // The bytes of an earlier attempt are on disk, not in memory: hash them again to continue the digest.
      const file = await io(`cannot open ${path}`, () => open(path, 'a+', FILE_MODE));
      try {
        await io(`cannot read ${path}`, () => hashFile(file, hasher));
      } finally {
        await file.close().catch(() => undefined);
      }
      return new DiskPartialBlob(this.shardDirs, digest, path, hasher, unlock);
    } catch (e) {
      unlock();
      throw e;
    }
  }

  async stat(contentId: string): Promise<{ size: number } | undefined> {
    const path = this.objectPath(contentIdDigest(contentId));
    try {
      const info = await stat(path);
      return info.isFile() ? { size: info.size } : undefined;
    } catch (e) {
      if (isAbsent(e)) return undefined;
      throw ioError(`cannot stat ${path}`, e);
    }
  }

  async has(contentId: string): Promise<boolean> {
    return (await this.stat(contentId)) !== undefined;
  }

  async read(contentId: string, range?: ByteRange): Promise<Readable> {
    const { file, start, end } = await this.openRange(contentId, range);
    // autoClose (the default) closes the handle when the stream ends, fails or is destroyed. A whole read
    // names no end: for an empty resource it would be -1.
    return range === undefined ? file.createReadStream() : file.createReadStream({ start, end });
  }

  async openReader(contentId: string, range?: ByteRange): Promise<BlobReader> {
    const { file, start, end } = await this.openRange(contentId, range);
    return new BlobReader(file, start, end);
  }

  /** Opens an object and checks the range against its size; the caller closes the file. */
  private async openRange(
    contentId: string,
    range: ByteRange | undefined,
  ): Promise<{ file: FileHandle; start: number; end: number }> {
    const digest = contentIdDigest(contentId);
    if (range !== undefined) checkRange(range);
    const path = this.objectPath(digest);
    let file: FileHandle;
    try {
      file = await open(path, 'r');
    } catch (e) {
      if (isAbsent(e)) throw new BlobStoreError('not_found', `no resource <${digest}>`, { cause: e });
      throw ioError(`cannot open ${path}`, e);
    }
    try {
      const { size } = await io(`cannot stat ${path}`, () => file.stat());
      if (range === undefined) return { file, start: 0, end: size - 1 };
      if (range.end >= size) {
        throw new RangeError(`bytes ${range.start}-${range.end} are past the end of <${digest}> (${size} bytes)`);
      }
      return { file, start: range.start, end: range.end };
    } catch (e) {
      await file.close().catch(() => undefined);
      throw e;
    }
  }

  async delete(contentId: string): Promise<boolean> {
    const path = this.objectPath(contentIdDigest(contentId));
    try {
      await unlink(path);
      return true;
    } catch (e) {
      if (isAbsent(e)) return false;
      throw ioError(`cannot delete ${path}`, e);
    }
  }

  /**
   * Every published resource, for garbage collection. Files that are not objects are skipped. Objects met in
   * the earlier two-level layout (stored by a replica of an older version sharing the volume, after
   * `migrateLayout` ran at this one's start) are moved to their place first, and listed there.
   */
  async *list(): AsyncGenerator<BlobInfo> {
    for (const shard of await this.shards(this.objectsDir)) {
      const dir = join(this.objectsDir, shard);
      let entries;
      try {
        entries = await opendir(dir);
      } catch (e) {
        if (isAbsent(e)) continue;
        throw ioError(`cannot list ${dir}`, e);
      }
      const legacy: string[] = [];
      const names: string[] = [];
      for await (const entry of entries) {
        if (entry.isDirectory() && SHARD.test(entry.name)) legacy.push(entry.name);
        else if (entry.isFile() && isB64uSha256(entry.name) && entry.name.startsWith(shard)) names.push(entry.name);
        if (names.length >= LIST_BATCH) yield* this.infos(dir, names.splice(0));
      }
      if (legacy.length > 0) names.push(...(await this.moveLegacyShard(shard, legacy)));
      yield* this.infos(dir, names);
    }
  }

  private async *infos(dir: string, names: readonly string[]): AsyncGenerator<BlobInfo> {
    for (const name of names) {
      let info;
      try {
        info = await lstat(join(dir, name));
      } catch (e) {
        if (isAbsent(e)) continue; // deleted while listing
        throw ioError(`cannot stat ${join(dir, name)}`, e);
      }
      yield { contentId: `<${name}>`, size: info.size, mtime: info.mtime };
    }
  }

  /**
   * Moves the objects of the earlier two-level layout (`objects/<c0c1>/<c2c3>/<digest>`) to this one and
   * removes the emptied directories; answers how many objects moved. For a service's start, before it
   * serves: a reader of the other layout misses what is being moved.
   */
  async migrateLayout(): Promise<number> {
    let moved = 0;
    const queue = await this.shards(this.objectsDir);
    await Promise.all(
      Array.from({ length: Math.min(MIGRATE_CONCURRENCY, queue.length) }, async () => {
        for (let shard = queue.shift(); shard !== undefined; shard = queue.shift()) {
          const legacy = await this.shards(join(this.objectsDir, shard));
          if (legacy.length === 0) continue;
          const names = await this.moveLegacyShard(shard, legacy);
          moved += names.length; // after the await: `moved += await ...` would add to a stale total
        }
      }),
    );
    return moved;
  }

  /**
   * Moves the objects of `objects/<shard>/<second>/`, for each of `seconds`, up into `objects/<shard>/`, and
   * removes those directories once empty; answers the names moved. A move is a rename within the file
   * system, atomic: a crash leaves each object in one of the two places, and moving again (at the next
   * start, or when the collector lists the shard) finishes. A name already in `<shard>/` holds the same bytes
   * and is replaced by them; one that another process moved first is skipped. `<shard>/` is fsynced once at
   * the end. Names that are not objects of their directory are left where they are, and so is the directory.
   */
  private async moveLegacyShard(shard: string, seconds: readonly string[]): Promise<string[]> {
    const dir = join(this.objectsDir, shard);
    const moved: string[] = [];
    const moveDirectory = async (second: string) => {
      const legacy = join(dir, second);
      let names: string[];
      try {
        names = await readdir(legacy);
      } catch (e) {
        if (isAbsent(e)) return;
        throw ioError(`cannot list ${legacy}`, e);
      }
      for (const name of names) {
        if (!isB64uSha256(name) || !name.startsWith(shard + second)) continue;
        try {
          await rename(join(legacy, name), join(dir, name));
        } catch (e) {
          if (isAbsent(e)) continue;
          throw ioError(`cannot move ${join(legacy, name)}`, e);
        }
        moved.push(name);
      }
      await rmdir(legacy).catch((e: unknown) => {
        if (errnoCode(e) !== 'ENOTEMPTY' && errnoCode(e) !== 'EEXIST' && !isAbsent(e)) {
          throw ioError(`cannot remove ${legacy}`, e);
        }
      });
    };
    // A store of the earlier layout has about one object per directory: a few directories at a time (and,
    // in migrateLayout, a few shards at a time) keep the thread pool busy.
    const queue = [...seconds];
    await Promise.all(
      Array.from({ length: Math.min(MIGRATE_CONCURRENCY, queue.length) }, async () => {
        for (let second = queue.shift(); second !== undefined; second = queue.shift()) await moveDirectory(second);
      }),
    );
    if (moved.length > 0) await io(`cannot fsync ${dir}`, () => fsyncPath(dir));
    return moved;
  }

  async removeStaleTemp(olderThanMs: number): Promise<number> {
    return removeStale(this.tmpDir, byteCount('olderThanMs', olderThanMs), (name) => this.writing.has(name));
  }

  async removeStalePartial(olderThanMs: number): Promise<number> {
    return removeStale(this.partialDir, byteCount('olderThanMs', olderThanMs), (name) => this.partialLocks.has(name));
  }

  /** Where the object of a digest is (or would be) on disk; for the garbage collector, which moves objects aside. */
  objectPath(digest: string): string {
    return this.shardDirs.objectPath(digest);
  }

  private async shards(dir: string): Promise<string[]> {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (e) {
      if (dir !== this.objectsDir && isAbsent(e)) return [];
      throw ioError(`cannot list ${dir}`, e);
    }
    return entries
      .filter((entry) => entry.isDirectory() && SHARD.test(entry.name))
      .map((entry) => entry.name)
      .sort();
  }

  /** Waits for the PartialBlobs of `digest` opened before; answers the function that lets the next one in. */
  private async lockPartial(digest: string, signal: AbortSignal | undefined): Promise<() => void> {
    if (signal?.aborted) throw abortedBy(signal);
    const previous = this.partialLocks.get(digest);
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    // A waiter that gives up releases at once; the next in line still waits for everyone before it.
    const tail = previous === undefined ? mine : previous.then(() => mine);
    this.partialLocks.set(digest, tail);
    void tail.then(() => {
      if (this.partialLocks.get(digest) === tail) this.partialLocks.delete(digest);
    });
    if (previous !== undefined) {
      try {
        await untilAborted(previous, signal);
      } catch (e) {
        release();
        throw e;
      }
    }
    return release;
  }
}

class DiskPartialBlob implements PartialBlob {
  readonly contentId: string;
  private state: 'open' | 'busy' | 'closed' = 'open';
  /** The size at this object's last fsync of the file: the whole file was durable then (fsync(2) covers
   * every dirty page of a file, those an earlier process left in the page cache included). */
  private durableSize: number | undefined;

  constructor(
    private readonly shardDirs: ShardDirs,
    private readonly digest: string,
    private readonly path: string,
    private hasher: ContentIdHasher,
    private readonly unlock: () => void,
  ) {
    this.contentId = `<${digest}>`;
  }

  get size(): number {
    return this.hasher.size;
  }

  async append(source: BlobSource, options: AppendOptions): Promise<{ size: number }> {
    const maxSize = byteCount('maxSize', options.maxSize);
    const { signal } = options;
    this.begin('append');
    let outcome: 'keep' | 'release' | 'delete' = 'keep';
    try {
      if (signal?.aborted) throw abortedBy(signal);
      if (this.size > maxSize) {
        outcome = 'delete';
        throw new BlobStoreError('too_large', `${this.size} bytes on disk exceed the limit of ${maxSize} bytes`);
      }
      outcome = 'release'; // until the file is known to hold exactly the hashed bytes
      const file = await io(`cannot open ${this.path}`, () => open(this.path, 'a', FILE_MODE));
      try {
        const onDisk = await io(`cannot stat ${this.path}`, () => file.stat());
        if (onDisk.size !== this.size) {
          throw new BlobStoreError(
            'io_error',
            `${this.path} changed on disk (${onDisk.size} bytes, ${this.size} hashed)`,
          );
        }
        const writer = new ChunkWriter(file, this.hasher);
        let failed = false;
        let failure: unknown;
        try {
          await pump(source, writer, { maxSize, expectedSize: undefined, signal });
        } catch (e) {
          // too_large never succeeds. After a failed write the file and the hasher may disagree (the hasher
          // sees bytes as they are handed to the disk): close, and let the next openPartial hash the file
          // again. A source that failed or was aborted leaves good bytes: keep them, to resume after them.
          if (isBlobStoreError(e, 'too_large')) outcome = 'delete';
          if (isBlobStoreError(e, 'too_large') || isBlobStoreError(e, 'io_error')) {
            await writer.settle();
            throw e;
          }
          failed = true;
          failure = e;
        }
        await writer.finish();
        await io(`cannot fsync ${this.path}`, () => file.sync());
        this.durableSize = this.size;
        outcome = 'keep';
        if (failed) throw failure;
        return { size: this.size };
      } finally {
        await file.close().catch(() => undefined);
      }
    } finally {
      await this.end(outcome, true);
    }
  }

  async commit(expectedSize?: number): Promise<PutResult> {
    const expected = expectedSize === undefined ? undefined : byteCount('expectedSize', expectedSize);
    this.begin('commit');
    let outcome: 'release' | 'delete' = 'release';
    try {
      const size = this.size;
      if (expected !== undefined && size !== expected) {
        outcome = 'delete';
        throw new BlobStoreError('digest_mismatch', `${size} bytes on disk, expected ${expected}`);
      }
      const digest = digestOf(this.hasher);
      if (digest !== this.digest) {
        outcome = 'delete';
        throw new BlobStoreError('digest_mismatch', `the bytes have Content-ID <${digest}>, not ${this.contentId}`);
      }
      // Bytes left by an earlier process may still be only in the page cache, unless an append of this
      // object has fsynced the file since (the usual fetch: one append, then the commit).
      if (this.durableSize !== size) await io(`cannot fsync ${this.path}`, () => fsyncPath(this.path));
      const created = await publish(this.shardDirs, this.path, digest);
      return { contentId: this.contentId, size, created };
    } finally {
      await this.end(outcome, true);
    }
  }

  async truncate(size: number): Promise<void> {
    const keep = byteCount('size', size);
    this.begin('truncate');
    let outcome: 'keep' | 'release' = 'keep';
    try {
      if (keep > this.size) throw new RangeError(`truncate: ${keep} bytes are more than the ${this.size} held`);
      if (keep === this.size) return;
      outcome = 'release'; // until the file and the hasher agree again
      const file = await io(`cannot open ${this.path}`, () => open(this.path, 'r+'));
      try {
        await io(`cannot truncate ${this.path}`, () => file.truncate(keep));
        await io(`cannot fsync ${this.path}`, () => file.sync());
        const hasher = new ContentIdHasher();
        await io(`cannot read ${this.path}`, () => hashFile(file, hasher));
        this.hasher = hasher;
        this.durableSize = hasher.size;
      } finally {
        await file.close().catch(() => undefined);
      }
      outcome = 'keep';
    } finally {
      await this.end(outcome, true);
    }
  }

  async discard(): Promise<void> {
    if (this.state === 'closed') return;
    this.begin('discard');
    await this.end('delete', false);
  }

  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.begin('close');
    await this.end('release', false);
  }

  private begin(operation: string): void {
    if (this.state === 'closed') throw new TypeError(`${operation}: the partial ${this.contentId} is closed`);
    if (this.state === 'busy') {
      throw new TypeError(`${operation}: the partial ${this.contentId} is busy with another operation`);
    }
    this.state = 'busy';
  }

  /** `quiet`: a failure to delete must not hide the error that made us delete. */
  private async end(outcome: 'keep' | 'release' | 'delete', quiet: boolean): Promise<void> {
    if (outcome === 'keep') {
      this.state = 'open';
      return;
    }
    this.state = 'closed';
    try {
      if (outcome === 'delete') {
        const removal = io(`cannot delete ${this.path}`, () => rm(this.path, { force: true }));
        await (quiet ? removal.catch(() => undefined) : removal);
      }
    } finally {
      this.unlock();
    }
  }
}

/**
 * Gathers chunks into large writes, hashes exactly what it hands to the file, and keeps the disk busy while
 * the source is read: one buffer fills while the other is being written (in libuv's thread pool), and every
 * SYNC_EVERY bytes an fdatasync starts in the background, so that the final fsync finds little left to write
 * instead of the whole resource (with plenty of memory the kernel would otherwise hold it all in dirty pages).
 *
 * A write or background sync that fails fails the next `push` or `finish` with `io_error`; the caller then
 * closes the file without trusting the hasher (a partial is re-hashed from disk when it is opened again).
 */
class ChunkWriter {
  /** The buffer being filled, and the one handed to the write in flight (allocated on first use). */
  private filling: Buffer | undefined;
  private spare: Buffer | undefined;
  private used = 0;
  private writing: Promise<void> | undefined;
  private syncing: Promise<void> | undefined;
  private failure: unknown;
  /** Bytes handed to writes that have completed, and how many of them an fdatasync has covered. */
  private written = 0;
  private syncedUpTo = 0;
  /** The chunks pushed are dead once copied: see YoungGarbage. */
  private readonly garbage = new YoungGarbage();
  /** Bytes accepted so far: written, buffered, and those the hasher had seen before. */
  received: number;

  constructor(
    private readonly file: FileHandle,
    private readonly hasher: ContentIdHasher,
  ) {
    this.received = hasher.size;
  }

  async push(chunk: Uint8Array): Promise<void> {
    this.received += chunk.byteLength;
    this.garbage.received(chunk.byteLength);
    for (let offset = 0; offset < chunk.byteLength;) {
      const buffer = (this.filling ??= Buffer.allocUnsafeSlow(WRITE_BUFFER_SIZE));
      const n = Math.min(buffer.byteLength - this.used, chunk.byteLength - offset);
      buffer.set(n === chunk.byteLength ? chunk : chunk.subarray(offset, offset + n), this.used);
      this.used += n;
      offset += n;
      if (this.used === buffer.byteLength) await this.submit();
    }
  }

  /** Writes what is buffered and waits for every write and sync started; afterwards the hasher matches the file. */
  async finish(): Promise<void> {
    if (this.used > 0) await this.submit();
    await this.settle();
    if (this.failure !== undefined) throw this.failure;
  }

  /** Waits for the work in flight, ignoring its outcome: before the file is closed after a failure. */
  async settle(): Promise<void> {
    await this.writing?.catch(() => undefined);
    await this.syncing?.catch(() => undefined);
  }

  /** Hands the filled buffer to a write once the previous write is done, and goes on filling the other one. */
  private async submit(): Promise<void> {
    await this.writing;
    if (this.failure !== undefined) throw this.failure;
    const full = this.filling!;
    const bytes = full.subarray(0, this.used);
    this.hasher.update(bytes);
    const writing = this.write(bytes);
    // Awaited by the next submit or by finish; never left to reject unobserved.
    writing.catch(() => undefined);
    this.writing = writing;
    this.filling = this.spare;
    this.spare = full;
    this.used = 0;
  }

  private async write(bytes: Uint8Array): Promise<void> {
    try {
      let offset = 0;
      while (offset < bytes.byteLength) {
        const { bytesWritten } = await this.file.write(bytes, offset, bytes.byteLength - offset);
        offset += bytesWritten;
      }
    } catch (e) {
      this.failure ??= ioError('cannot write', e);
      throw this.failure;
    }
    this.written += bytes.byteLength;
    if (this.syncing === undefined && this.written - this.syncedUpTo >= SYNC_EVERY) this.startSync();
  }

  private startSync(): void {
    const upTo = this.written;
    this.syncing = this.file.datasync().then(
      () => {
        this.syncedUpTo = upTo;
        this.syncing = undefined;
      },
      (e: unknown) => {
        // Linux reports a writeback error to one fsync only: this one must fail the write, not vanish.
        this.failure ??= ioError('cannot fsync', e);
        this.syncing = undefined;
      },
    );
  }
}

interface PumpLimits {
  maxSize: number;
  expectedSize: number | undefined;
  signal: AbortSignal | undefined;
}

const ABORTED = Symbol('aborted');

/**
 * Reads the source one chunk at a time, pulling the next only once the last one is written (backpressure),
 * and stops at the first byte past the limits. On failure the source is told to stop (`return()`), but a
 * Node.js stream is not destroyed: its owner decides, e.g. to answer 413 before closing the connection.
 */
async function pump(source: BlobSource, writer: ChunkWriter, limits: PumpLimits): Promise<void> {
  const iterator = iterate(source);
  let finished = false;
  try {
    for (;;) {
      let result: IteratorResult<unknown> | typeof ABORTED;
      try {
        result = await nextOrAbort(iterator, limits.signal);
      } catch (e) {
        finished = true;
        throw new BlobStoreError('aborted', `the source failed: ${e instanceof Error ? e.message : String(e)}`, {
          cause: e,
        });
      }
      if (result === ABORTED) throw abortedBy(limits.signal);
      if (result.done === true) {
        finished = true;
        return;
      }
      const chunk = result.value;
      if (!(chunk instanceof Uint8Array)) {
        throw new TypeError(`a blob source must yield Uint8Array chunks, not ${typeof chunk}`);
      }
      const total = writer.received + chunk.byteLength;
      if (total > limits.maxSize) {
        throw new BlobStoreError('too_large', `the resource exceeds the limit of ${limits.maxSize} bytes`);
      }
      if (limits.expectedSize !== undefined && total > limits.expectedSize) {
        throw new BlobStoreError('digest_mismatch', `more bytes than the expected ${limits.expectedSize}`);
      }
      await writer.push(chunk);
    }
  } finally {
    // Not awaited: an async generator suspended in a pending next() only returns once that next() settles.
    if (!finished) iterator.return?.().catch(() => undefined);
  }
}

function iterate(source: BlobSource): AsyncIterator<unknown> {
  if (source instanceof Readable) return source.iterator({ destroyOnReturn: false });
  return (source as AsyncIterable<unknown>)[Symbol.asyncIterator]();
}

function nextOrAbort(
  iterator: AsyncIterator<unknown>,
  signal: AbortSignal | undefined,
): Promise<IteratorResult<unknown> | typeof ABORTED> {
  if (signal === undefined) return iterator.next();
  if (signal.aborted) return Promise.resolve(ABORTED);
  const next = iterator.next();
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      next.catch(() => undefined);
      resolve(ABORTED);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    next.then(
      (result) => {
        signal.removeEventListener('abort', onAbort);
        resolve(result);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

function untilAborted(promise: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) return promise;
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(abortedBy(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    void promise.then(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    });
  });
}

/**
 * The shard directories of `objects/`, each made at most once per process: a publish into a directory known
 * to exist costs no system call for it. A directory that this process creates has its name fsynced in
 * `objects/` before any object goes in; publishes racing into a new directory wait for that same fsync.
 * At most 4,096 entries.
 */
class ShardDirs {
  readonly #ready = new Map<string, Promise<string>>();

  constructor(private readonly objectsDir: string) {}

  objectPath(digest: string): string {
    return join(this.objectsDir, digest.slice(0, 2), digest);
  }

  /** The digest's directory, once it exists and its name is durable. */
  ensure(digest: string): Promise<string> {
    const shard = digest.slice(0, 2);
    let ready = this.#ready.get(shard);
    if (ready === undefined) {
      const dir = join(this.objectsDir, shard);
      ready = (async () => {
        const made = await io(`cannot create ${dir}`, () => mkdir(dir, { recursive: true, mode: DIR_MODE }));
        if (made !== undefined) await io(`cannot fsync ${this.objectsDir}`, () => fsyncPath(this.objectsDir));
        return dir;
      })();
      this.#ready.set(shard, ready);
      const failed = ready;
      failed.catch(() => {
        if (this.#ready.get(shard) === failed) this.#ready.delete(shard);
      });
    }
    return ready;
  }

  forget(digest: string): void {
    this.#ready.delete(digest.slice(0, 2));
  }
}

/**
 * Makes `from` (fsynced) the object named `digest`. link(2) fails when the name exists, so of several writers
 * of the same bytes exactly one answers `created: true`; the name is fsynced in its directory before `from` goes.
 */
async function publish(shardDirs: ShardDirs, from: string, digest: string): Promise<boolean> {
  const target = shardDirs.objectPath(digest);
  let dir = await shardDirs.ensure(digest);
  for (let attempt = 1; ; attempt++) {
    try {
      await link(from, target);
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'ENOENT' && attempt === 1) {
        // The directory went after this process made it (removed by hand): make it again, once.
        shardDirs.forget(digest);
        dir = await shardDirs.ensure(digest);
        continue;
      }
      if (code === 'EEXIST') {
        if (!(await touch(target))) {
          // Deleted between link and touch (garbage collection): publish again.
          if (attempt < 3) continue;
          throw new BlobStoreError('io_error', `${target} keeps disappearing while it is published`);
        }
        await rm(from, { force: true }).catch(() => undefined);
        return false;
      }
      if (code !== undefined && NO_HARD_LINKS.has(code)) return publishByRename(from, target, dir);
      throw ioError(`cannot publish ${target}`, e);
    }
    await io(`cannot fsync ${dir}`, () => fsyncPath(dir));
    // The object is published; a temporary name left behind is removed by removeStaleTemp.
    await unlink(from).catch(() => undefined);
    return true;
  }
}

/** Without hard links, concurrent writers of the same bytes may both answer `created: true`. */
async function publishByRename(from: string, target: string, dir: string): Promise<boolean> {
  if (await touch(target)) {
    await rm(from, { force: true }).catch(() => undefined);
    return false;
  }
  await io(`cannot publish ${target}`, () => rename(from, target));
  await io(`cannot fsync ${dir}`, () => fsyncPath(dir));
  return true;
}

/**
 * Marks an object as just stored again, so that a garbage collector that spares recent objects (by `mtime`)
 * keeps what a client re-uploaded a moment ago. False when the object does not exist.
 */
async function touch(path: string): Promise<boolean> {
  const now = new Date();
  try {
    await utimes(path, now, now);
    return true;
  } catch (e) {
    if (isAbsent(e)) return false;
    throw ioError(`cannot touch ${path}`, e);
  }
}

/** Directories are opened read-only to be fsynced; so are files that are no longer written. */
async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function hashFile(file: FileHandle, hasher: ContentIdHasher): Promise<void> {
  const buffer = Buffer.allocUnsafeSlow(WRITE_BUFFER_SIZE);
  for (let position = 0; ;) {
    const { bytesRead } = await file.read(buffer, 0, buffer.byteLength, position);
    if (bytesRead === 0) return;
    hasher.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
  }
}

async function removeStale(dir: string, olderThanMs: number, inUse: (name: string) => boolean): Promise<number> {
  const cutoff = Date.now() - olderThanMs;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    throw ioError(`cannot list ${dir}`, e);
  }
  let removed = 0;
  for (const name of names) {
    if (inUse(name)) continue;
    const path = join(dir, name);
    try {
      const info = await lstat(path);
      if (info.isDirectory() || info.mtimeMs > cutoff) continue;
      await unlink(path);
      removed++;
    } catch (e) {
      if (isAbsent(e)) continue;
      throw ioError(`cannot remove ${path}`, e);
    }
  }
  return removed;
}

function digestOf(hasher: ContentIdHasher): string {
  return hasher.contentId().slice(1, -1);
}

function byteCount(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new TypeError(`${name} must be a non-negative integer, not ${String(value)}`);
  }
  return value;
}

function checkRange(range: ByteRange): void {
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new RangeError(`not a byte range: ${String(start)}-${String(end)}`);
  }
}

function abortedBy(signal: AbortSignal | undefined): BlobStoreError {
  return new BlobStoreError('aborted', 'the write was aborted', { cause: signal?.reason });
}

function ioError(message: string, cause: unknown): BlobStoreError {
  const detail = cause instanceof Error ? `: ${cause.message}` : '';
  return new BlobStoreError('io_error', `${message}${detail}`, { cause });
}

async function io<T>(message: string, operation: () => Promise<T>): Promise<T> {
  try {
    return await operation();
  } catch (e) {
    if (e instanceof BlobStoreError) throw e;
    throw ioError(message, e);
  }
}

function errnoCode(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function isAbsent(e: unknown): boolean {
  const code = errnoCode(e);
  return code === 'ENOENT' || code === 'ENOTDIR';
}

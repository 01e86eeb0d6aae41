/**
 * The blob collector: deletes the files of resources nothing of this domain refers to any more, once the
 * share window has passed since the last reference went away (PROTOCOL.md §4.6: recipients may fetch a
 * shared copy until its assertion expires), and the files on disk no row knows at all (an upload refused
 * for the quota after its bytes were published, a crash between publishing and recording).
 *
 * One collector runs at a time however many replicas share the database: the run is a recurring job of
 * the durable queue (`gc`), claimed under a lease and rescheduled `intervalMs` later, so replicas never
 * collect concurrently and a crashed collector's run is taken over once its lease expires.
 *
 * A blob is deleted in four steps, because an upload, a fetch or a delivery of the same bytes may come at
 * any moment and must never be left with a row whose blob is gone:
 *
 * 1. `forgetUnreferenced` deletes the rows, rechecking under the resource's lock that nothing refers to
 *    it and that the share window has passed (a transaction that starts holding the resource takes the
 *    same lock, so it either comes first and keeps the blob, or after, and finds no row to share).
 * 2. The file is moved aside (rename into `<root>/gc/`, atomic): from then on, a put of the same bytes
 *    publishes a new file instead of reusing this one, and nothing can touch this one any more.
 * 3. It is put back (hard link, so a newer file of the same bytes is never replaced) when it was touched
 *    less than `diskGraceMs` ago (the blob store touches a file a put finds already published: an upload
 *    of these bytes is between its put and its row), or when, asked again under the lock, something of this
 *    domain refers to the resource (a row added between steps 1 and 2).
 * 4. Otherwise it is unlinked, and counted.
 *
 * A crash between 2 and 4 leaves the file in `gc/`; the next run puts every such file back first, and a
 * later run collects it as a file no row knows.
 */
import { randomBytes } from 'node:crypto';
import { link, lstat, mkdir, open, readdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '@federizer/common';
import { contentIdDigest, type DiskBlobStore } from '../blobs/index.js';
import { LeasedWorker } from '../mta/worker.js';
import { retryDelayMs, type AccountStore, type Job, type JobQueue } from '../storage/index.js';

export const GC_JOB = 'gc';
const GC_KEY = 'blobs';

export interface BlobCollectorDeps {
  readonly domain: string;
  readonly jobs: JobQueue;
  readonly accounts: Pick<AccountStore, 'collectable' | 'forgetUnreferenced' | 'isReferenced'>;
  readonly blobs: DiskBlobStore;
  readonly logger: Logger;
  /** The service's clock (the database's times: the share window). */
  readonly now: () => number;
  /** The file system's clock, which file times follow; `Date.now` unless a test says otherwise. */
  readonly wallClock?: () => number;
  /** Time between runs. */
  readonly intervalMs: number;
  /** How long after the last reference went away a blob may still be fetched (the share window). */
  readonly shareWindowMs: number;
  /** A file touched less than this long ago is kept (a put of the same bytes may be recording its row). */
  readonly diskGraceMs: number;
  /** Content-IDs examined per database query. Default 500. */
  readonly batch?: number;
  /** In [0, 1): the jitter of the delay after a failed run. */
  readonly random?: () => number;
  /** How often a replica checks whether the run is due (ms). Default a minute. */
  readonly pollMs?: number;
  readonly onCollected?: (blobs: number, bytes: number) => void;
  readonly onRun?: (outcome: 'completed' | 'failed') => void;
  /** Runs after a blob's rows are forgotten and before its file is moved aside; for tests of that race. */
  readonly beforeRemove?: (contentId: string) => Promise<void>;
}

export interface CollectResult {
  /** Files deleted, and their bytes. */
  blobs: number;
  bytes: number;
  /** Files put back because they were touched or referenced again between the decision and the deletion. */
  kept: number;
  /** Files found in `gc/` (a run that crashed) and put back. */
  recovered: number;
}

/** The quarantine directory, beside the blob store's `objects/`, `tmp/` and `partial/`. */
const QUARANTINE = 'gc';
const LEASE_MS = 10 * 60_000;
const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

export class BlobCollector extends LeasedWorker<Record<string, never>> {
  readonly #wall: () => number;
  readonly #batch: number;
  readonly #quarantine: string;

  constructor(private readonly deps: BlobCollectorDeps) {
    super({
      kind: GC_JOB,
      jobs: deps.jobs,
      logger: deps.logger,
      concurrency: 1,
      perDestination: 1,
      leaseMs: LEASE_MS,
      pollMs: deps.pollMs ?? 60_000,
    });
    for (const [name, value] of Object.entries({
      intervalMs: deps.intervalMs,
      shareWindowMs: deps.shareWindowMs,
      diskGraceMs: deps.diskGraceMs,
    })) {
      if (!Number.isSafeInteger(value) || value < 0) throw new TypeError(`${name} must be a whole number of ms >= 0`);
    }
    if (deps.intervalMs < 1000) throw new TypeError('intervalMs must be at least a second');
    this.#wall = deps.wallClock ?? Date.now;
    this.#batch = deps.batch ?? 500;
    this.#quarantine = join(deps.blobs.root, QUARANTINE);
  }

  /** Queues the recurring run if no replica has yet, and brings it within `intervalMs` from now. */
  async schedule(): Promise<void> {
    const now = this.deps.now();
    await this.deps.jobs.enqueue(GC_JOB, GC_KEY, this.deps.domain, {}, { notBefore: now + this.deps.intervalMs });
    // The interval may have been shortened since the run was last scheduled.
    await this.deps.jobs.advance(GC_JOB, GC_KEY, now + this.deps.intervalMs);
  }

  /** Schedules the run (again: `schedule` is idempotent) and starts polling for it. */
  override start(): void {
    void this.schedule()
      .catch((err: unknown) => this.deps.logger.error({ err }, 'scheduling the blob collector failed'))
      .finally(() => super.start());
  }

  protected async run(job: Job<Record<string, never>>): Promise<void> {
    const { deps } = this;
    try {
      const result = await this.collect(() => deps.jobs.extend(job.id, this.owner, LEASE_MS));
      await deps.jobs.reschedule(job.id, this.owner, deps.now() + deps.intervalMs, { resetAttempts: true });
      deps.onRun?.('completed');
      deps.logger.info({ ...result }, 'blob collection done');
    } catch (err) {
      deps.onRun?.('failed');
      deps.logger.error({ err }, 'blob collection failed');
      // Sooner than the interval, backing off while it keeps failing; never given up, unlike a transfer.
      const next = deps.now() + Math.min(deps.intervalMs, retryDelayMs(job.attempts, deps.random));
      await deps.jobs.reschedule(job.id, this.owner, next, { error: err }).catch(() => undefined);
    }
  }

  /**
   * One pass: puts back what a crashed run left aside, collects the resources whose rows say so, then the
   * files no row knows, and removes stale temporary and partial files. `keepAlive` is called between
   * batches (the run's lease is extended there).
   */
  async collect(keepAlive: () => Promise<void> = async () => undefined): Promise<CollectResult> {
    const { deps } = this;
    const result: CollectResult = { blobs: 0, bytes: 0, kept: 0, recovered: await this.#recover() };

    let after: string | undefined;
    for (;;) {
      const ids = await deps.accounts.collectable(deps.shareWindowMs, { limit: this.#batch, after });
      for (const id of ids) await this.#collectOne(id, result);
      if (ids.length < this.#batch) break;
      after = ids.at(-1);
      await keepAlive();
    }

    const cutoff = this.#wall() - deps.diskGraceMs;
    let candidates: string[] = [];
    const flush = async () => {
      const ids = await deps.accounts.collectable(deps.shareWindowMs, { candidates, limit: candidates.length });
      for (const id of ids) await this.#collectOne(id, result);
      candidates = [];
      await keepAlive();
    };
    for await (const blob of deps.blobs.list()) {
      if (blob.mtime.getTime() > cutoff) continue;
      candidates.push(blob.contentId);
      if (candidates.length >= this.#batch) await flush();
    }
    if (candidates.length > 0) await flush();

    await deps.blobs.removeStaleTemp(Math.max(deps.diskGraceMs, 60 * 60_000));
    await deps.blobs.removeStalePartial(deps.shareWindowMs);
    return result;
  }

  async #collectOne(contentId: string, result: CollectResult): Promise<void> {
    const { deps } = this;
    if (!(await deps.accounts.forgetUnreferenced(contentId, deps.shareWindowMs))) return;
    await deps.beforeRemove?.(contentId);
    const digest = contentIdDigest(contentId);
    const object = this.#objectPath(digest);
    await mkdir(this.#quarantine, { recursive: true, mode: 0o700 });
    const aside = join(this.#quarantine, `${digest}.${randomBytes(6).toString('hex')}`);
    try {
      await rename(object, aside);
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return; // no file: the rows were all there was
      throw e;
    }
    let info;
    let keep: boolean;
    try {
      info = await lstat(aside);
      keep = this.#wall() - info.mtimeMs < deps.diskGraceMs || (await deps.accounts.isReferenced(contentId));
    } catch (e) {
      // Undecided (the database went away): the file goes back now rather than at the next run.
      await this.#putBack(aside, digest).catch(() => undefined);
      throw e;
    }
    if (keep) {
      await this.#putBack(aside, digest);
      result.kept += 1;
      return;
    }
    await unlink(aside);
    result.blobs += 1;
    result.bytes += info.size;
    deps.onCollected?.(1, info.size);
  }

  /** Every file a run left in `gc/` goes back where it was (or is dropped, when the same bytes are back). */
  async #recover(): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.#quarantine);
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return 0;
      throw e;
    }
    let recovered = 0;
    for (const name of names) {
      const digest = name.split('.')[0]!;
      try {
        contentIdDigest(digest);
      } catch {
        continue; // not ours
      }
      await this.#putBack(join(this.#quarantine, name), digest);
      recovered += 1;
    }
    return recovered;
  }

  /** Links the file back under its name; a file already there holds the same bytes and wins. */
  async #putBack(aside: string, digest: string): Promise<void> {
    const object = this.#objectPath(digest);
    const dir = join(object, '..');
    for (let attempt = 1; ; attempt++) {
      try {
        await link(aside, object);
        break;
      } catch (e) {
        const code = errnoCode(e);
        if (code === 'EEXIST') break;
        if (code !== undefined && NO_HARD_LINKS.has(code)) {
          await rename(aside, object);
          await fsyncDir(dir);
          return;
        }
        if (code !== 'ENOENT' || attempt > 1) throw e;
        // Gone already (another run put it back and dropped its copy), or its directory is missing.
        if ((await lstat(aside).catch(() => undefined)) === undefined) return;
        await mkdir(dir, { recursive: true, mode: 0o700 });
      }
    }
    // The name is durable before the other one goes, so a crash never loses both.
    await fsyncDir(dir);
    await unlink(aside).catch((e: unknown) => {
      if (errnoCode(e) !== 'ENOENT') throw e;
    });
  }

  #objectPath(digest: string): string {
    return this.deps.blobs.objectPath(digest);
  }
}

async function fsyncDir(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function errnoCode(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

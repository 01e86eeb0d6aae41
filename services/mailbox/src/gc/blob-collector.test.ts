/**
 * The blob collector on both databases, with a real disk blob store in a temporary directory and the
 * service's clock frozen (the share window is measured in database times). File times follow the real
 * clock: a file is made old by setting its modification time back, as the hours would.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { silentLogger } from '@federizer/common';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DiskBlobStore } from '../blobs/index.js';
import { AccountStore, JobQueue, MessageStore, RETRY_BASE_MS, type NewMessage } from '../storage/index.js';
import {
  DAY,
  HOUR,
  MINUTE,
  T0,
  clearMailboxTables,
  openMailboxDatabase,
  testClock,
  testDatabases,
  warmPool,
  type MailboxTestDatabase,
} from '../storage/testing.js';
import { BlobCollector, GC_JOB, type BlobCollectorDeps } from './blob-collector.js';

const WINDOW = 7 * DAY;
const GRACE = HOUR;
const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';

describe.each(testDatabases())('BlobCollector on $name', (database) => {
  let db: MailboxTestDatabase;
  const clock = testClock();
  let accounts: AccountStore;
  let messages: MessageStore;
  let jobs: JobQueue;
  let root: string;
  let blobs: DiskBlobStore;
  let collected: { blobs: number; bytes: number };
  let runs: string[];

  function collector(overrides: Partial<BlobCollectorDeps> = {}): BlobCollector {
    return new BlobCollector({
      domain: 'example.com',
      jobs,
      accounts,
      blobs,
      logger: silentLogger(),
      now: clock.now,
      intervalMs: HOUR,
      shareWindowMs: WINDOW,
      diskGraceMs: GRACE,
      onCollected: (n, bytes) => {
        collected.blobs += n;
        collected.bytes += bytes;
      },
      onRun: (outcome) => runs.push(outcome),
      random: () => 0.5,
      ...overrides,
    });
  }

  function objectPath(contentId: string): string {
    const d = contentId.slice(1, -1);
    return join(root, 'objects', d.slice(0, 2), d);
  }

  /** The file as if written `ms` ago (by the real clock, which file times follow). */
  async function age(contentId: string, ms: number): Promise<void> {
    const then = new Date(Date.now() - ms);
    await utimes(objectPath(contentId), then, then);
  }

  async function onDisk(contentId: string): Promise<boolean> {
    return (await stat(objectPath(contentId)).catch(() => undefined)) !== undefined;
  }

  /** Stores bytes and gives them to the account, as an upload does; answers the Content-ID. */
  async function upload(address: string, bytes: Buffer): Promise<string> {
    const stored = await blobs.put(Readable.from([bytes]), { maxSize: 1 << 20 });
    await accounts.addResource(address, { contentId: stored.contentId, size: stored.size });
    return stored.contentId;
  }

  function draft(address: string, contentId: string, size: number): NewMessage {
    return {
      address,
      mailbox: 'drafts',
      messageId: `<${randomBytes(8).toString('hex')}@example.com>`,
      threadId: 't',
      envelope: [{ headers: [{ From: address }] }],
      body: { parts: [] },
      date: clock.now(),
      resources: [{ contentId, size, status: 'held' }],
    };
  }

  /** A blob uploaded, used by a draft, and unreferenced at T0 when the draft is deleted; its file old. */
  async function unreferencedAtT0(bytes = randomBytes(1000)): Promise<string> {
    const contentId = await upload(ALICE, bytes);
    const id = await messages.create(draft(ALICE, contentId, bytes.length));
    await messages.delete(ALICE, id);
    await age(contentId, 2 * GRACE);
    return contentId;
  }

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    accounts = new AccountStore(db.knex, { now: clock.now });
    messages = new MessageStore(db.knex, { now: clock.now });
    jobs = new JobQueue(db.knex, { now: clock.now, random: () => 0.5 });
  });
  afterAll(async () => {
    await db?.destroy();
  });
  beforeEach(async () => {
    await clearMailboxTables(db.knex);
    clock.set(T0);
    root = await mkdtemp(join(tmpdir(), 'federizer-gc-'));
    blobs = new DiskBlobStore(root);
    collected = { blobs: 0, bytes: 0 };
    runs = [];
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('deletes a blob once the share window has passed since its last reference, not a moment before', async () => {
    const contentId = await unreferencedAtT0();
    const gc = collector();

    clock.set(T0 + WINDOW - 1);
    expect(await gc.collect()).toEqual({ blobs: 0, bytes: 0, kept: 0, recovered: 0 });
    expect(await onDisk(contentId)).toBe(true);
    expect(await accounts.storageUsed(ALICE)).toBe(1000);

    clock.set(T0 + WINDOW);
    expect(await gc.collect()).toEqual({ blobs: 1, bytes: 1000, kept: 0, recovered: 0 });
    expect(await onDisk(contentId)).toBe(false);
    expect(await accounts.hasResource(ALICE, contentId)).toBe(false);
    expect(await accounts.storageUsed(ALICE)).toBe(0);
    expect(collected).toEqual({ blobs: 1, bytes: 1000 });
  });

  it('keeps what a message references, and what a received message waits to fetch', async () => {
    const referenced = await upload(ALICE, randomBytes(500));
    await messages.create(draft(ALICE, referenced, 500));
    await age(referenced, 2 * GRACE);
    // Bytes this domain holds for nobody yet (an interrupted fetch published them), which Bob's message needs.
    const waited = (await blobs.put(Readable.from([randomBytes(300)]), { maxSize: 1 << 20 })).contentId;
    await age(waited, 2 * GRACE);
    await messages.createReceived({
      ...draft(BOB, waited, 300),
      mailbox: 'inbox',
      transferEht: 'e'.repeat(43),
      resources: [{ contentId: waited, size: 300, status: 'pending' }],
    });

    clock.set(T0 + 10 * WINDOW);
    expect(await collector().collect()).toMatchObject({ blobs: 0 });
    expect(await onDisk(referenced)).toBe(true);
    expect(await onDisk(waited)).toBe(true);
    expect(await accounts.hasResource(ALICE, referenced)).toBe(true);
  });

  it('deletes a file no row knows (an upload refused for the quota) once it is older than the disk grace', async () => {
    const orphan = (await blobs.put(Readable.from([randomBytes(700)]), { maxSize: 1 << 20 })).contentId;
    const gc = collector();
    expect(await gc.collect()).toMatchObject({ blobs: 0 });
    expect(await onDisk(orphan)).toBe(true);
    await age(orphan, GRACE + MINUTE);
    expect(await gc.collect()).toMatchObject({ blobs: 1, bytes: 700 });
    expect(await onDisk(orphan)).toBe(false);
  });

  it('an upload of the same bytes while the blob is being deleted keeps it: the put touched it', async () => {
    const bytes = randomBytes(1000);
    const contentId = await unreferencedAtT0(bytes);
    clock.set(T0 + WINDOW);
    let uploaded: string | undefined;
    const gc = collector({
      // The rows are gone; Bob's upload of the same bytes finds the file and reuses it.
      beforeRemove: async () => {
        uploaded = await upload(BOB, bytes);
      },
    });
    expect(await gc.collect()).toMatchObject({ blobs: 0, kept: 1 });
    expect(uploaded).toBe(contentId);
    expect(await onDisk(contentId)).toBe(true);
    expect(await accounts.hasResource(BOB, contentId)).toBe(true);
    expect((await readdir(join(root, 'gc'))).length).toBe(0);
  });

  it('a put that reuses the file before its row is written keeps it too (the row comes after the run)', async () => {
    const bytes = randomBytes(1000);
    const contentId = await unreferencedAtT0(bytes);
    clock.set(T0 + WINDOW);
    const gc = collector({
      beforeRemove: async () => {
        const stored = await blobs.put(Readable.from([bytes]), { maxSize: 1 << 20 });
        expect(stored.created).toBe(false);
      },
    });
    expect(await gc.collect()).toMatchObject({ blobs: 0, kept: 1 });
    await accounts.addResource(BOB, { contentId, size: bytes.length });
    expect(await onDisk(contentId)).toBe(true);
  });

  it('a message that starts referencing the resource meanwhile keeps it, without touching the file', async () => {
    const contentId = await unreferencedAtT0();
    clock.set(T0 + WINDOW);
    const gc = collector({
      beforeRemove: async () => {
        // A transfer arrives for Bob referencing the bytes: his fetch will find them here.
        await messages.createReceived({
          ...draft(BOB, contentId, 1000),
          mailbox: 'inbox',
          transferEht: 'f'.repeat(43),
          resources: [{ contentId, size: 1000, status: 'pending' }],
        });
      },
    });
    expect(await gc.collect()).toMatchObject({ blobs: 0, kept: 1 });
    expect(await onDisk(contentId)).toBe(true);
  });

  it('without such a newcomer the same run deletes the blob (the checks above can fail)', async () => {
    const contentId = await unreferencedAtT0();
    clock.set(T0 + WINDOW);
    let asked = 0;
    const gc = collector({
      beforeRemove: async () => {
        asked += 1;
      },
    });
    expect(await gc.collect()).toMatchObject({ blobs: 1, kept: 0 });
    expect(asked).toBe(1);
    expect(await onDisk(contentId)).toBe(false);
  });

  it('uploads racing the collector never leave a row without its blob', async () => {
    await warmPool(db);
    for (let round = 0; round < 15; round++) {
      clock.set(T0);
      const bytes = randomBytes(2000);
      const contentId = await unreferencedAtT0(bytes);
      clock.set(T0 + WINDOW);
      const gc = collector();
      await Promise.all([gc.collect(), upload(BOB, bytes)]);
      expect(await accounts.hasResource(BOB, contentId), `round ${round}`).toBe(true);
      expect(await onDisk(contentId), `round ${round}: Bob holds it, so the file must be there`).toBe(true);
      await clearMailboxTables(db.knex);
    }
  });

  it('puts a file back at once when the last check cannot be made (the database went away)', async () => {
    const contentId = await unreferencedAtT0();
    clock.set(T0 + WINDOW);
    const gc = collector({
      accounts: {
        collectable: (...args) => accounts.collectable(...args),
        forgetUnreferenced: (...args) => accounts.forgetUnreferenced(...args),
        isReferenced: () => Promise.reject(new Error('the database went away')),
      },
    });
    await expect(gc.collect()).rejects.toThrow('the database went away');
    expect(await onDisk(contentId)).toBe(true);
    expect(await readdir(join(root, 'gc'))).toEqual([]);
  });

  it('puts back what a crashed run left aside, before anything else', async () => {
    const contentId = await upload(ALICE, randomBytes(400));
    await messages.create(draft(ALICE, contentId, 400));
    // A run crashed after moving the file aside.
    await mkdir(join(root, 'gc'), { recursive: true });
    await rename(objectPath(contentId), join(root, 'gc', `${contentId.slice(1, -1)}.0a1b2c3d4e5f`));
    expect(await onDisk(contentId)).toBe(false);
    expect(await collector().collect()).toMatchObject({ recovered: 1, blobs: 0 });
    expect(await onDisk(contentId)).toBe(true);
    expect(await readdir(join(root, 'gc'))).toEqual([]);
  });

  it('moves what an older replica stored in the two-level layout, and keeps it while it is referenced', async () => {
    const bytes = randomBytes(400);
    const contentId = await upload(ALICE, bytes);
    await messages.create(draft(ALICE, contentId, 400));
    // As a replica of the earlier version, sharing the volume, would have stored it.
    const d = contentId.slice(1, -1);
    const legacy = join(root, 'objects', d.slice(0, 2), d.slice(2, 4), d);
    await mkdir(join(legacy, '..'), { recursive: true });
    await rename(objectPath(contentId), legacy);
    expect(await onDisk(contentId)).toBe(false);
    // Its listing moves it; referenced, it stays.
    expect(await collector().collect()).toMatchObject({ blobs: 0 });
    expect(await readFile(objectPath(contentId))).toEqual(bytes);
    expect(await readdir(join(legacy, '..', '..'))).toEqual([d]);
  });

  it('runs on one replica at a time: the run is a leased job, rescheduled an interval later', async () => {
    const contentId = await unreferencedAtT0();
    const a = collector();
    const b = collector();
    await Promise.all([a.schedule(), b.schedule()]);
    expect(await jobs.find(GC_JOB, 'blobs')).toMatchObject({ status: 'pending', nextAttemptAt: T0 + HOUR });

    clock.set(T0 + WINDOW);
    await Promise.all([a.poll(), b.poll(), a.poll(), b.poll()]);
    expect(runs).toEqual(['completed']);
    expect(collected.blobs).toBe(1);
    expect(await onDisk(contentId)).toBe(false);
    expect(await jobs.find(GC_JOB, 'blobs')).toMatchObject({
      status: 'pending',
      attempts: 0,
      nextAttemptAt: T0 + WINDOW + HOUR,
      leaseOwner: undefined,
    });
    // Not due again before the interval.
    clock.advance(HOUR - 1);
    await Promise.all([a.poll(), b.poll()]);
    expect(runs).toEqual(['completed']);
    clock.advance(1);
    await b.poll();
    expect(runs).toEqual(['completed', 'completed']);

    // A shorter interval (a new configuration) brings the next run forward.
    await collector({ intervalMs: MINUTE }).schedule();
    expect((await jobs.find(GC_JOB, 'blobs'))?.nextAttemptAt).toBe(clock.now() + MINUTE);
  });

  it('a failed run is tried again sooner, backing off, and never given up', async () => {
    let failures = 2;
    const flaky: BlobCollectorDeps['accounts'] = {
      collectable: (...args) => {
        if (failures-- > 0) return Promise.reject(new Error('the database went away'));
        return accounts.collectable(...args);
      },
      forgetUnreferenced: (...args) => accounts.forgetUnreferenced(...args),
      isReferenced: (...args) => accounts.isReferenced(...args),
    };
    const gc = collector({ accounts: flaky });
    await gc.schedule();
    clock.advance(HOUR);
    await gc.poll();
    expect(runs).toEqual(['failed']);
    let job = await jobs.find(GC_JOB, 'blobs');
    // retryDelayMs(1) with the jitter at 0.5: three quarters of a minute.
    expect(job).toMatchObject({ status: 'pending', attempts: 1, lastError: 'Error: the database went away' });
    expect(job!.nextAttemptAt - clock.now()).toBe(0.75 * RETRY_BASE_MS);
    clock.set(job!.nextAttemptAt);
    await gc.poll();
    job = await jobs.find(GC_JOB, 'blobs');
    expect(job).toMatchObject({ status: 'pending', attempts: 2 });
    expect(job!.nextAttemptAt - clock.now()).toBe(1.5 * RETRY_BASE_MS);
    // Five days of failures later the run is still scheduled, unlike a transfer.
    clock.advance(6 * DAY);
    await gc.poll();
    expect(runs).toEqual(['failed', 'failed', 'completed']);
    expect(await jobs.find(GC_JOB, 'blobs')).toMatchObject({ status: 'pending', attempts: 0, lastError: undefined });
  });
});

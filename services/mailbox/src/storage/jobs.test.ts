import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { isMailStoreError } from './errors.js';
import { GIVE_UP_AFTER_MS, JobQueue, RETRY_MAX_MS, retryDelayMs, type Job } from './jobs.js';
import {
  DAY,
  HOUR,
  MINUTE,
  T0,
  clearMailboxTables,
  openMailboxDatabase,
  statementsOf,
  testClock,
  testDatabases,
  warmPool,
  type MailboxTestDatabase,
} from './testing.js';

const LEASE = 5 * MINUTE;

describe('retryDelayMs', () => {
  it('doubles from a minute up to an hour, jittered between half and all of it', () => {
    const expected = [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600].map((s) => s * 1000);
    expected.forEach((base, i) => {
      expect(retryDelayMs(i + 1, () => 0)).toBe(base / 2);
      expect(retryDelayMs(i + 1, () => 0.999999)).toBe(Math.round(base / 2 + (0.999999 * base) / 2));
      expect(retryDelayMs(i + 1, () => 0.5)).toBe(base * 0.75);
    });
    expect(retryDelayMs(1_000_000, Math.random)).toBeLessThanOrEqual(RETRY_MAX_MS);
    for (let i = 0; i < 1000; i++) {
      const attempt = 1 + (i % 12);
      const base = Math.min(60_000 * 2 ** (attempt - 1), RETRY_MAX_MS);
      const delay = retryDelayMs(attempt);
      expect(delay).toBeGreaterThanOrEqual(base / 2);
      expect(delay).toBeLessThanOrEqual(base);
    }
  });
});

describe.each(testDatabases())('JobQueue on $name', (database) => {
  let db: MailboxTestDatabase;
  const clock = testClock();
  let random = 0.5;
  let queue: JobQueue;

  const code = async (promise: Promise<unknown>) =>
    promise.then(
      () => 'resolved',
      (e: unknown) => (isMailStoreError(e) ? e.code : String(e)),
    );

  const leasedPerDestination = async () => {
    const rows = (await db
      .knex('mail_jobs')
      .select('destination')
      .count({ n: '*' })
      .where('status', 'pending')
      .andWhere('lease_until', '>', clock.now())
      .groupBy('destination')) as { destination: string; n: unknown }[];
    return Object.fromEntries(rows.map((r) => [r.destination, Number(r.n)]));
  };

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    queue = new JobQueue(db.knex, { now: clock.now, random: () => random });
  });

  afterAll(async () => {
    await db?.destroy();
  });

  beforeEach(async () => {
    await clearMailboxTables(db.knex);
    clock.set(T0);
    random = 0.5;
  });

  it('queues once per (kind, key) and answers the existing job', async () => {
    const first = await queue.enqueue('transfer', 'share1:example.net', 'example.net', { share: 'share1' });
    expect(first.created).toBe(true);
    expect(first.job).toMatchObject({
      kind: 'transfer',
      key: 'share1:example.net',
      destination: 'example.net',
      payload: { share: 'share1' },
      status: 'pending',
      attempts: 0,
      nextAttemptAt: T0,
      leaseOwner: undefined,
      createdAt: T0,
    });
    clock.advance(1000);
    const again = await queue.enqueue('transfer', 'share1:example.net', 'example.org', { share: 'other' });
    expect(again).toEqual({ job: first.job, created: false });
    expect((await queue.enqueue('fetch', 'share1:example.net', 'example.net', null)).created).toBe(true);
    expect(await queue.get(first.job.id)).toEqual(first.job);
    const settled = await Promise.all(Array.from({ length: 10 }, () => queue.enqueue('fetch', 'same', 'x.example', 1)));
    expect(new Set(settled.map((s) => s.job.id)).size).toBe(1);
    expect(settled.filter((s) => s.created)).toHaveLength(1);
  });

  it('queues a new job in one statement, and a duplicate key inserts nothing', async () => {
    let first: Awaited<ReturnType<JobQueue['enqueue']>> | undefined;
    expect(
      await statementsOf(db.knex, async () => {
        first = await queue.enqueue('fetch', '<cid>', 'example.org', { n: 1 });
      }),
    ).toHaveLength(1);
    // The job answered without reading it back is the one stored.
    expect(await queue.get(first!.job.id)).toEqual(first!.job);
    const again = await queue.enqueue('fetch', '<cid>', 'example.net', { n: 2 });
    expect(again).toEqual({ job: first!.job, created: false });
    const rows = (await db.knex('mail_jobs').select('id').where({ kind: 'fetch', key: '<cid>' })) as unknown[];
    expect(rows).toHaveLength(1);
  });

  it('requeues in one statement: queues a new job, leaves a pending one, queues a finished one again', async () => {
    const states: string[] = [];
    expect(
      await statementsOf(db.knex, async () => {
        states.push(await queue.requeue('fetch', '<a>', 'example.org', { n: 1 }));
      }),
    ).toHaveLength(1);
    const job = (await queue.find('fetch', '<a>'))!;
    expect(job).toMatchObject({ destination: 'example.org', payload: { n: 1 }, status: 'pending', createdAt: T0 });
    // Pending, leased or not: left as it is (its payload too).
    clock.advance(MINUTE);
    states.push(await queue.requeue('fetch', '<a>', 'example.net', { n: 2 }));
    await queue.claim({ kinds: ['fetch'], owner: 'w1', limit: 1, leaseMs: LEASE });
    states.push(await queue.requeue('fetch', '<a>', 'example.net', { n: 3 }));
    expect(await queue.find('fetch', '<a>')).toMatchObject({ payload: { n: 1 }, leaseOwner: 'w1', attempts: 1 });
    // Finished: queued again as if new (due now, attempts and give-up deadline started over), same row.
    await queue.fail(job.id, 'w1', 'gave up');
    clock.advance(6 * DAY);
    states.push(await queue.requeue('fetch', '<a>', 'example.net', { n: 4 }));
    expect(await queue.find('fetch', '<a>')).toEqual({
      ...job,
      destination: 'example.net',
      payload: { n: 4 },
      status: 'pending',
      attempts: 0,
      nextAttemptAt: T0 + MINUTE + 6 * DAY,
      createdAt: T0 + MINUTE + 6 * DAY,
      updatedAt: T0 + MINUTE + 6 * DAY,
    });
    const [again] = await queue.claim({ kinds: ['fetch'], owner: 'w2', limit: 1, leaseMs: LEASE });
    expect(again).toMatchObject({ id: job.id, payload: { n: 4 }, attempts: 1 });
    await queue.complete(job.id, 'w2');
    states.push(await queue.requeue('fetch', '<a>', 'example.net', { n: 5 }));
    expect(await queue.cancel('fetch', '<a>')).toBe(true);
    states.push(await queue.requeue('fetch', '<a>', 'example.net', { n: 6 }));
    expect(states).toEqual(['queued', 'pending', 'pending', 'requeued', 'requeued', 'requeued']);
    expect((await db.knex('mail_jobs').select('id')).map((r: { id: string }) => r.id)).toEqual([job.id]);
  });

  it('claims due jobs only, oldest due first, leasing them to the owner', async () => {
    const later = await queue.enqueue('fetch', 'later', 'a.example', 1, { notBefore: T0 + MINUTE });
    const first = await queue.enqueue('fetch', 'first', 'a.example', 2);
    const other = await queue.enqueue('transfer', 'other-kind', 'a.example', 3);
    const claimed = await queue.claim({ kinds: ['fetch'], owner: 'w1', limit: 10, leaseMs: LEASE });
    expect(claimed.map((j) => j.id)).toEqual([first.job.id]);
    expect(claimed[0]).toMatchObject({ leaseOwner: 'w1', leaseUntil: T0 + LEASE, attempts: 1 });
    expect(await queue.claim({ kinds: ['fetch'], owner: 'w2', limit: 10, leaseMs: LEASE })).toEqual([]);
    clock.advance(MINUTE);
    const rest = await queue.claim({ kinds: ['fetch', 'transfer'], owner: 'w2', limit: 10, leaseMs: LEASE });
    expect(rest.map((j) => j.id)).toEqual([other.job.id, later.job.id]); // due at T0, then at T0 + 1 min
  });

  it('never lets two concurrent claimers take the same job, nor exceed the per-destination limit', async () => {
    await warmPool(db);
    const destinations = ['a.example', 'b.example', 'c.example', 'd.example'];
    for (let i = 0; i < 160; i++) await queue.enqueue('transfer', `k${i}`, destinations[i % 4] as string, { i });
    const owners = new Map<string, string>();
    let leasedBefore: Job[] = [];
    for (let round = 0; round < 200; round++) {
      const results = await Promise.all(
        ['w1', 'w2'].map((owner) =>
          queue.claim({ kinds: ['transfer'], owner, limit: 5, leaseMs: HOUR, perDestinationLimit: 2 }),
        ),
      );
      for (const [i, jobs] of results.entries()) {
        for (const job of jobs) {
          expect(owners.has(job.id)).toBe(false);
          owners.set(job.id, `w${i + 1}`);
        }
      }
      for (const n of Object.values(await leasedPerDestination())) expect(n).toBeLessThanOrEqual(2);
      // Finish last round's jobs, keep this round's leased: claims compete with leases still held.
      const finishing = leasedBefore;
      leasedBefore = results.flat();
      await Promise.all(finishing.map((job) => queue.complete(job.id, job.leaseOwner as string)));
      if (finishing.length === 0 && leasedBefore.length === 0) break;
    }
    expect(owners.size).toBe(160);
    expect(new Set(owners.values())).toEqual(new Set(['w1', 'w2']));
    expect(await queue.depth()).toEqual({});
  });

  it('respects the per-destination limit without starving other destinations', async () => {
    for (let i = 0; i < 10; i++) await queue.enqueue('transfer', `busy${i}`, 'busy.example', i);
    for (let i = 0; i < 3; i++) await queue.enqueue('transfer', `quiet${i}`, 'quiet.example', i);
    const a = await queue.claim({
      kinds: ['transfer'],
      owner: 'w1',
      limit: 10,
      leaseMs: LEASE,
      perDestinationLimit: 3,
    });
    expect(a.map((j) => j.destination).sort()).toEqual([
      'busy.example',
      'busy.example',
      'busy.example',
      'quiet.example',
      'quiet.example',
      'quiet.example',
    ]);
    expect(
      await queue.claim({ kinds: ['transfer'], owner: 'w2', limit: 10, leaseMs: LEASE, perDestinationLimit: 3 }),
    ).toEqual([]);
    await queue.complete(a[0]!.id, 'w1');
    const b = await queue.claim({
      kinds: ['transfer'],
      owner: 'w2',
      limit: 10,
      leaseMs: LEASE,
      perDestinationLimit: 3,
    });
    expect(b.map((j) => j.destination)).toEqual(['busy.example']);
  });

  it('says whether a claim left due jobs behind, so a worker knows when a finished job is worth a claim', async () => {
    const claim = (owner: string, limit: number) =>
      queue.claimBatch({ kinds: ['transfer'], owner, limit, leaseMs: LEASE, perDestinationLimit: 2 });
    expect(await claim('w1', 5)).toEqual({ jobs: [], more: false });
    for (let i = 0; i < 3; i++) await queue.enqueue('transfer', `busy${i}`, 'busy.example', i);
    await queue.enqueue('transfer', 'quiet0', 'quiet.example', 0);
    // The limit filled: more may be due.
    const first = await claim('w1', 1);
    expect(first.jobs.map((j) => j.key)).toEqual(['busy0']);
    expect(first.more).toBe(true);
    // busy2 passed over for its destination's limit of 2: due, yet not claimed.
    const second = await claim('w1', 5);
    expect(second.jobs.map((j) => j.key).sort()).toEqual(['busy1', 'quiet0']);
    expect(second.more).toBe(true);
    // Nothing claimable while busy.example is at its limit, which is still worth saying.
    expect(await claim('w2', 5)).toEqual({ jobs: [], more: true });
    await queue.complete(first.jobs[0]!.id, 'w1');
    const third = await claim('w2', 5);
    expect(third.jobs.map((j) => j.key)).toEqual(['busy2']);
    // The queue is drained: finished jobs need not claim again.
    expect(third.more).toBe(false);
    for (const job of [...second.jobs, ...third.jobs]) await queue.complete(job.id, job.leaseOwner!);
    expect(await claim('w1', 5)).toEqual({ jobs: [], more: false });
  });

  it('answers a claim that finds nothing due in one statement, still saying whether a destination is full', async () => {
    const claim = (owner: string) =>
      queue.claimBatch({ kinds: ['transfer'], owner, limit: 5, leaseMs: LEASE, perDestinationLimit: 2 });
    let empty: unknown;
    const sql = await statementsOf(db.knex, async () => {
      empty = await claim('w1');
    });
    expect(empty).toEqual({ jobs: [], more: false });
    expect(sql).toHaveLength(1);
    for (let i = 0; i < 2; i++) await queue.enqueue('transfer', `busy${i}`, 'busy.example', i);
    expect((await claim('w1')).jobs).toHaveLength(2);
    // Nothing is due, and busy.example is at its limit: as a claim that read its candidates answers.
    expect(await claim('w2')).toEqual({ jobs: [], more: true });
  });

  it('answers claimed jobs as they are stored, lease included', async () => {
    await queue.enqueue('fetch', 'k1', 'a.example', { n: 1 });
    await queue.enqueue('fetch', 'k2', 'b.example', { n: 2 });
    const claimed = await queue.claim({
      kinds: ['fetch'],
      owner: 'w1',
      limit: 5,
      leaseMs: LEASE,
      perDestinationLimit: 1,
    });
    expect(claimed).toHaveLength(2);
    for (const job of claimed) {
      expect(job).toEqual(await queue.get(job.id));
      expect(job).toMatchObject({ leaseOwner: 'w1', leaseUntil: clock.now() + LEASE, attempts: 1 });
    }
  });

  it('lets another worker reclaim a job whose lease expired (a crashed worker)', async () => {
    const { job } = await queue.enqueue('fetch', 'k', 'a.example', 1);
    await queue.claim({ kinds: ['fetch'], owner: 'crashed', limit: 1, leaseMs: LEASE });
    clock.advance(LEASE - 1);
    expect(await queue.claim({ kinds: ['fetch'], owner: 'w2', limit: 1, leaseMs: LEASE })).toEqual([]);
    clock.advance(1);
    const [again] = await queue.claim({ kinds: ['fetch'], owner: 'w2', limit: 1, leaseMs: LEASE });
    expect(again).toMatchObject({ id: job.id, leaseOwner: 'w2', attempts: 2 });
    // The crashed worker comes back: its late answer is not recorded.
    expect(await code(queue.complete(job.id, 'crashed'))).toBe('not_lease_owner');
    expect(await code(queue.retry(job.id, 'crashed', new Error('x')))).toBe('not_lease_owner');
    await queue.complete(job.id, 'w2');
    expect(await code(queue.complete(job.id, 'w2'))).toBe('not_lease_owner'); // done once
    expect((await queue.get(job.id))?.status).toBe('done');
  });

  it('lets only the lease owner complete, retry, fail or extend', async () => {
    const { job } = await queue.enqueue('fetch', 'k', 'a.example', 1);
    expect(await code(queue.complete(job.id, 'w1'))).toBe('not_lease_owner'); // not leased at all
    await queue.claim({ kinds: ['fetch'], owner: 'w1', limit: 1, leaseMs: LEASE });
    expect(await code(queue.complete(job.id, 'w2'))).toBe('not_lease_owner');
    expect(await code(queue.fail(job.id, 'w2', 'x'))).toBe('not_lease_owner');
    expect(await code(queue.extend(job.id, 'w2', LEASE))).toBe('not_lease_owner');
    expect(await code(queue.complete('nope', 'w1'))).toBe('job_not_found');
    clock.advance(LEASE - 1);
    await queue.extend(job.id, 'w1', LEASE);
    clock.advance(LEASE - 1);
    expect(await queue.claim({ kinds: ['fetch'], owner: 'w2', limit: 1, leaseMs: LEASE })).toEqual([]);
    await queue.fail(job.id, 'w1', new Error('550 no such user'));
    expect(await queue.get(job.id)).toMatchObject({ status: 'failed', lastError: 'Error: 550 no such user' });
  });

  it('retries with exponential backoff, honouring a later Retry-After', async () => {
    const { job } = await queue.enqueue('transfer', 'k', 'a.example', 1);
    const schedule: number[] = [];
    for (let i = 0; i < 9; i++) {
      const [claimed] = await queue.claim({ kinds: ['transfer'], owner: 'w', limit: 1, leaseMs: LEASE });
      expect(claimed?.id).toBe(job.id);
      const result = await queue.retry(job.id, 'w', new Error(`attempt ${i + 1}`));
      if (result.gaveUp) throw new Error('gave up too early');
      schedule.push(result.nextAttemptAt - clock.now());
      expect(await queue.claim({ kinds: ['transfer'], owner: 'w', limit: 1, leaseMs: LEASE })).toEqual([]);
      clock.set(result.nextAttemptAt);
    }
    // random = 0.5: three quarters of 1, 2, 4 ... 32 min, then of the 1 h cap.
    expect(schedule).toEqual([45, 90, 180, 360, 720, 1440, 2700, 2700, 2700].map((s) => s * 1000));
    expect(await queue.get(job.id)).toMatchObject({
      attempts: 9,
      lastError: 'Error: attempt 9',
      leaseOwner: undefined,
    });

    await queue.claim({ kinds: ['transfer'], owner: 'w', limit: 1, leaseMs: LEASE });
    const result = await queue.retry(job.id, 'w', 'busy', { notBefore: clock.now() + 2 * HOUR });
    expect(result).toEqual({ gaveUp: false, nextAttemptAt: clock.now() + 2 * HOUR });
  });

  it('backs off from the configured retry base (FEDERIZER_MAILBOX_RETRY_BASE), up to the same 1 h cap', async () => {
    const quick = new JobQueue(db.knex, { now: clock.now, random: () => random, retryBaseMs: 2000 });
    const { job } = await quick.enqueue('transfer', 'quick', 'a.example', 1);
    const schedule: number[] = [];
    for (let i = 0; i < 3; i++) {
      await quick.claim({ kinds: ['transfer'], owner: 'w', limit: 1, leaseMs: LEASE });
      const result = await quick.retry(job.id, 'w', new Error(`attempt ${i + 1}`));
      if (result.gaveUp) throw new Error('gave up too early');
      schedule.push(result.nextAttemptAt - clock.now());
      clock.set(result.nextAttemptAt);
    }
    expect(schedule).toEqual([1500, 3000, 6000]);
    expect(retryDelayMs(40, () => 0.999999, 2000)).toBeLessThanOrEqual(RETRY_MAX_MS);
    // checkDuration: the base is a positive whole number of milliseconds.
    expect(() => new JobQueue(db.knex, { retryBaseMs: 0 })).toThrow(/retryBaseMs must be a positive number/);
  });

  it('keeps jitter within its bounds', async () => {
    const { job } = await queue.enqueue('transfer', 'k', 'a.example', 1);
    for (const r of [0, 0.999999]) {
      random = r;
      await queue.claim({ kinds: ['transfer'], owner: 'w', limit: 1, leaseMs: LEASE });
      const result = await queue.retry(job.id, 'w', 'x');
      if (result.gaveUp) throw new Error('gave up');
      const delay = result.nextAttemptAt - clock.now();
      // first failure: between 30 s and 60 s
      if (r === 0) expect(delay).toBe(30_000);
      else expect(delay).toBeLessThanOrEqual(60_000);
      clock.set(result.nextAttemptAt);
      await db.knex('mail_jobs').where({ id: job.id }).update({ attempts: 0 });
    }
  });

  it('gives up five days after the job was queued, the last attempt at the deadline', async () => {
    const { job } = await queue.enqueue('transfer', 'k', 'a.example', 1);
    let attempts = 0;
    let lastScheduled = 0;
    for (;;) {
      const [claimed] = await queue.claim({ kinds: ['transfer'], owner: 'w', limit: 1, leaseMs: LEASE });
      expect(claimed?.id).toBe(job.id);
      attempts++;
      clock.advance(10_000); // the attempt takes a while
      const result = await queue.retry(job.id, 'w', new Error('connection refused'));
      if (result.gaveUp) break;
      lastScheduled = result.nextAttemptAt;
      expect(lastScheduled).toBeLessThanOrEqual(T0 + GIVE_UP_AFTER_MS);
      clock.set(result.nextAttemptAt);
      if (attempts > 500) throw new Error('never gave up');
    }
    expect(lastScheduled).toBe(T0 + 5 * DAY);
    expect(clock.now()).toBeGreaterThanOrEqual(T0 + 5 * DAY);
    // random = 0.5: every 45 min once the cap is reached, after a few hours of shorter waits.
    expect(attempts).toBeGreaterThan(155);
    expect(attempts).toBeLessThan(170);
    expect(await queue.get(job.id)).toMatchObject({ status: 'failed', lastError: 'Error: connection refused' });
    expect(await queue.claim({ kinds: ['transfer'], owner: 'w', limit: 1, leaseMs: LEASE })).toEqual([]);
  });

  it('releases an owner’s leases at shutdown, for others to claim at once', async () => {
    for (let i = 0; i < 3; i++) await queue.enqueue('fetch', `k${i}`, 'a.example', i);
    const mine = await queue.claim({ kinds: ['fetch'], owner: 'stopping', limit: 2, leaseMs: HOUR });
    const theirs = await queue.claim({ kinds: ['fetch'], owner: 'other', limit: 5, leaseMs: HOUR });
    expect(theirs).toHaveLength(1);
    expect(await queue.release('stopping')).toBe(2);
    expect(await queue.release('stopping')).toBe(0);
    const taken = await queue.claim({ kinds: ['fetch'], owner: 'next', limit: 5, leaseMs: HOUR });
    expect(taken.map((j) => j.id).sort()).toEqual(mine.map((j) => j.id).sort());
    expect(taken.every((j) => j.attempts === 1)).toBe(true); // the interrupted attempt did not count
  });

  it('reschedules a leased job as planned work: no error, no deadline, attempts kept or started over', async () => {
    const { job } = await queue.enqueue('relay', 'm1', 'example.com', { id: 'm1' });
    const [first] = await queue.claim({ kinds: ['relay'], owner: 'w', limit: 1, leaseMs: LEASE });
    await queue.reschedule(job.id, 'w', clock.now() + MINUTE);
    expect(await queue.get(job.id)).toMatchObject({
      status: 'pending',
      attempts: first!.attempts,
      nextAttemptAt: T0 + MINUTE,
      leaseOwner: undefined,
      lastError: undefined,
    });
    // Past the five days a failing transfer gets, a rescheduled job is still just pending.
    clock.advance(GIVE_UP_AFTER_MS + DAY);
    await queue.claim({ kinds: ['relay'], owner: 'w', limit: 1, leaseMs: LEASE });
    await queue.reschedule(job.id, 'w', clock.now() + HOUR, { resetAttempts: true, error: new Error('slow') });
    expect(await queue.get(job.id)).toMatchObject({ status: 'pending', attempts: 0, lastError: 'Error: slow' });
    expect(await code(queue.reschedule(job.id, 'w', clock.now()))).toBe('not_lease_owner');
  });

  it('brings a pending job forward, but never a leased one, nor later', async () => {
    await queue.enqueue('transfer', 'k', 'a.example', 1, { notBefore: T0 + HOUR });
    expect(await queue.advance('transfer', 'k', T0 + 2 * HOUR)).toBe(false);
    expect(await queue.advance('transfer', 'k', T0 + MINUTE)).toBe(true);
    expect((await queue.find('transfer', 'k'))?.nextAttemptAt).toBe(T0 + MINUTE);
    expect(await queue.advance('transfer', 'k')).toBe(true);
    await queue.claim({ kinds: ['transfer'], owner: 'w', limit: 1, leaseMs: LEASE });
    expect(await queue.advance('transfer', 'k', T0 - MINUTE)).toBe(false);
    expect(await queue.advance('transfer', 'nothing')).toBe(false);
  });

  it('cancels pending jobs and purges finished ones', async () => {
    const { job } = await queue.enqueue('transfer', 'k', 'a.example', 1);
    expect(await queue.cancel('transfer', 'k')).toBe(true);
    expect(await queue.cancel('transfer', 'k')).toBe(false);
    expect(await queue.claim({ kinds: ['transfer'], owner: 'w', limit: 1, leaseMs: LEASE })).toEqual([]);
    expect(await queue.purge(DAY)).toBe(0);
    clock.advance(DAY);
    expect(await queue.purge(DAY)).toBe(1);
    expect(await queue.get(job.id)).toBeUndefined();
    expect((await queue.enqueue('transfer', 'k', 'a.example', 1)).created).toBe(true);
  });

  it('reports depth and the oldest pending age per kind', async () => {
    expect(await queue.depth()).toEqual({});
    expect(await queue.oldestAgeMs()).toEqual({});
    await queue.enqueue('transfer', 't1', 'a.example', 1);
    clock.advance(MINUTE);
    await queue.enqueue('transfer', 't2', 'a.example', 1);
    const { job } = await queue.enqueue('fetch', 'f1', 'a.example', 1);
    await queue.claim({ kinds: ['fetch'], owner: 'w', limit: 1, leaseMs: LEASE });
    clock.advance(MINUTE);
    expect(await queue.depth()).toEqual({ transfer: 2, fetch: 1 });
    expect(await queue.oldestAgeMs()).toEqual({ transfer: 2 * MINUTE, fetch: MINUTE });
    await queue.complete(job.id, 'w');
    expect(await queue.depth()).toEqual({ transfer: 2 });
  });
});

/**
 * The wake loop of LeasedWorker on a real queue. The poll timer is set to an hour, so a job that runs was
 * claimed through a wake or a finished job; a worker that waited for its timer would hang the test.
 */
import { spawnSync } from 'node:child_process';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createLogger, silentLogger } from '@federizer/common';
import { JobQueue, type ClaimOptions, type Job } from '../storage/jobs.js';
import {
  clearMailboxTables,
  openMailboxDatabase,
  testClock,
  testDatabases,
  type MailboxTestDatabase,
} from '../storage/testing.js';
import { LeasedWorker, leaseOwner } from './worker.js';

const HOUR = 3_600_000;

/** A real queue that counts the claims made on it. */
class CountingQueue extends JobQueue {
  claims = 0;
  override async claimBatch<P = unknown>(options: ClaimOptions): Promise<{ jobs: Job<P>[]; more: boolean }> {
    this.claims++;
    return super.claimBatch<P>(options);
  }
}

/** Runs each job until the test lets it finish, and completes it. */
class TestWorker extends LeasedWorker<number> {
  readonly started: number[] = [];
  readonly #gates = new Map<number, () => void>();
  #arrived: (() => void) | undefined;

  constructor(
    private readonly queue: JobQueue,
    concurrency: number,
  ) {
    super({
      kind: 'test',
      jobs: queue,
      logger: silentLogger(),
      concurrency,
      perDestination: concurrency,
      leaseMs: HOUR,
      pollMs: HOUR,
    });
  }

  protected async run(job: Job<number>): Promise<void> {
    this.started.push(job.payload);
    await new Promise<void>((resolve) => {
      this.#gates.set(job.payload, resolve);
      this.#arrived?.();
    });
    await this.queue.complete(job.id, this.owner);
  }

  /** Resolves once `n` jobs have started. */
  async startedCount(n: number): Promise<void> {
    while (this.started.length < n) await new Promise<void>((resolve) => (this.#arrived = resolve));
  }

  finish(payload: number): void {
    const gate = this.#gates.get(payload);
    if (gate === undefined) throw new Error(`job ${payload} is not running`);
    this.#gates.delete(payload);
    gate();
  }
}

/** A worker whose runs the test scripts, logging into `logs`. */
class ScriptedWorker extends LeasedWorker<number> {
  readonly logs: { level: number; msg: string; err?: { message?: string } }[];

  constructor(
    queue: JobQueue,
    private readonly script: (job: Job<number>, worker: ScriptedWorker) => Promise<void>,
  ) {
    const logs: ScriptedWorker['logs'] = [];
    super({
      kind: 'test',
      jobs: queue,
      logger: createLogger({
        name: 'worker-test',
        level: 'debug',
        destination: { write: (line: string) => void logs.push(JSON.parse(line) as (typeof logs)[number]) },
      }),
      concurrency: 2,
      perDestination: 2,
      leaseMs: HOUR,
      pollMs: HOUR,
    });
    this.logs = logs;
  }

  protected run(job: Job<number>): Promise<void> {
    return this.script(job, this);
  }
}

describe.each(testDatabases())('LeasedWorker on $name', (database) => {
  let db: MailboxTestDatabase;
  let queue: CountingQueue;
  let worker: TestWorker | undefined;

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    queue = new CountingQueue(db.knex);
  });

  afterAll(async () => {
    await db?.destroy();
  });

  beforeEach(async () => {
    await clearMailboxTables(db.knex);
    queue.claims = 0;
  });

  afterEach(async () => {
    await worker?.stop();
    worker = undefined;
  });

  it('claims a job this process queued at once, without waiting for its poll', async () => {
    worker = new TestWorker(queue, 4);
    worker.start();
    await queue.enqueue('test', 'a', 'x.example', 1);
    worker.wake();
    await worker.startedCount(1);
    expect(worker.started).toEqual([1]);
    worker.finish(1);
  });

  it('takes the next job when a slot frees while jobs wait', async () => {
    worker = new TestWorker(queue, 1);
    worker.start();
    for (let i = 1; i <= 3; i++) await queue.enqueue('test', `k${i}`, 'x.example', i);
    worker.wake();
    await worker.startedCount(1);
    // One slot: the others wait for it, claimed as each job ends (no poll comes within the test).
    worker.finish(1);
    await worker.startedCount(2);
    worker.finish(2);
    await worker.startedCount(3);
    expect(worker.started).toEqual([1, 2, 3]);
    worker.finish(3);
    await worker.stop();
    expect(await queue.depth()).toEqual({});
    worker = undefined;
  });

  it('folds wakes arriving during a claim into one more claim, never running more than its slots', async () => {
    worker = new TestWorker(queue, 2);
    worker.start();
    for (let i = 1; i <= 5; i++) await queue.enqueue('test', `k${i}`, 'x.example', i);
    for (let i = 0; i < 10; i++) worker.wake();
    await worker.startedCount(2);
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    expect(worker.started).toEqual([1, 2]);
    worker.finish(1);
    worker.finish(2);
    await worker.startedCount(4);
    expect(worker.started.slice(2).sort()).toEqual([3, 4]);
    worker.finish(3);
    worker.finish(4);
    await worker.startedCount(5);
    worker.finish(5);
  });

  it('does nothing on a wake before start: tests drive such workers with poll', async () => {
    worker = new TestWorker(queue, 2);
    await queue.enqueue('test', 'a', 'x.example', 1);
    worker.wake();
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    expect(queue.claims).toBe(0);
    const polled = worker.poll();
    await worker.startedCount(1);
    worker.finish(1);
    await polled;
    expect(await queue.depth()).toEqual({});
  });

  it('takes back at start the jobs a dead process of this host had leased, and no one else’s', async () => {
    const gone = spawnSync(process.execPath, ['-e', '']).pid!;
    const host = leaseOwner('test').split(':')[1]!;
    const owners = {
      // kill -9 of the mailbox, started again (as `federizer up` and the kill scenario do).
      killed: leaseOwner('test', host, gone),
      // A container restarted in its pod: same host name, and often the same pid (1), as this process.
      restarted: leaseOwner('test'),
      // A live process of this host (another cluster worker): its leases are its own.
      live: leaseOwner('test', host, process.ppid),
      // Another host: nothing here can tell whether it runs.
      elsewhere: leaseOwner('test', 'f'.repeat(12), gone),
    };
    const claimedBy = new Map<number, keyof typeof owners | 'sibling'>();
    for (let i = 1; i <= 4; i++) await queue.enqueue('test', `k${i}`, 'x.example', i);
    for (const [who, owner] of Object.entries(owners) as [keyof typeof owners, string][]) {
      const { jobs } = await queue.claimBatch<number>({ kinds: ['test'], owner, limit: 1, leaseMs: HOUR });
      claimedBy.set(jobs[0]!.payload, who);
    }
    // Another service of this very process (two replicas in one test process), running a job of its own.
    // (Another destination: x.example already has the four leases a worker of one slot may hold at once.)
    await queue.enqueue('test', 'k5', 'y.example', 5);
    const sibling = new TestWorker(queue, 1);
    const siblingPoll = sibling.poll();
    await sibling.startedCount(1);
    claimedBy.set(sibling.started[0]!, 'sibling');
    const payloadOf = (who: keyof typeof owners | 'sibling') => [...claimedBy].find(([, w]) => w === who)![0];

    worker = new TestWorker(queue, 4);
    worker.start();
    await worker.startedCount(2);
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    expect(worker.started.sort()).toEqual([payloadOf('killed'), payloadOf('restarted')].sort());
    for (const who of ['killed', 'restarted'] as const) {
      // The attempt the dead process made counts (it may be what killed it): this is the second.
      expect(await queue.find('test', `k${payloadOf(who)}`)).toMatchObject({ leaseOwner: worker.owner, attempts: 2 });
      worker.finish(payloadOf(who));
    }
    for (const who of ['live', 'elsewhere'] as const) {
      expect(await queue.find('test', `k${payloadOf(who)}`)).toMatchObject({ leaseOwner: owners[who], attempts: 1 });
    }
    expect(await queue.find('test', `k${payloadOf('sibling')}`)).toMatchObject({ leaseOwner: sibling.owner });
    sibling.finish(payloadOf('sibling'));
    await siblingPoll;
  });

  describe('the rule: a misbehaving peer loses nothing, and never takes the process down', () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => void unhandled.push(reason);
    beforeEach(() => {
      unhandled.length = 0;
      process.on('unhandledRejection', onUnhandled);
    });
    afterEach(() => {
      process.off('unhandledRejection', onUnhandled);
    });

    it('logs a run that rejects all the same (`<kind>: a job run failed`), never an unhandled rejection, and goes on', async () => {
      const ran: number[] = [];
      const w = new ScriptedWorker(queue, async (job, self) => {
        ran.push(job.payload);
        if (job.payload === 1) throw new Error('the settle step failed');
        await queue.complete(job.id, self.owner);
      });
      w.start();
      try {
        await queue.enqueue('test', 'a', 'x.example', 1);
        w.wake();
        for (let i = 0; i < 200 && !w.logs.some((l) => l.msg === 'test: a job run failed'); i++)
          await new Promise((r) => setTimeout(r, 10));
        await new Promise((r) => setTimeout(r, 20));
        expect(unhandled).toEqual([]);
        expect(w.logs.filter((l) => l.msg === 'test: a job run failed')).toMatchObject([
          { level: 50, err: { message: 'the settle step failed' } },
        ]);
        // The job stays leased, for its lease to expire; the slot is free for the next job.
        expect(await queue.find('test', 'a')).toMatchObject({ status: 'pending', leaseOwner: w.owner });
        await queue.enqueue('test', 'b', 'x.example', 2);
        w.wake();
        for (let i = 0; i < 200 && (await queue.find('test', 'b'))?.status !== 'done'; i++)
          await new Promise((r) => setTimeout(r, 10));
        expect(ran).toEqual([1, 2]);
        expect(await queue.find('test', 'b')).toMatchObject({ status: 'done' });
      } finally {
        await w.stop();
      }
    });

    it('does not start a second run of a job claimed again while its run is in flight (its lease ran out meanwhile)', async () => {
      const clock = testClock(Date.now());
      const clocked = new JobQueue(db.knex, { now: clock.now });
      const gates: (() => void)[] = [];
      const ran: number[] = [];
      const w = new ScriptedWorker(clocked, async (job, self) => {
        ran.push(job.payload);
        await new Promise<void>((resolve) => gates.push(resolve));
        await clocked.complete(job.id, self.owner);
      });
      await clocked.enqueue('test', 'a', 'x.example', 1);
      const first = w.poll();
      while (ran.length === 0) await new Promise((r) => setTimeout(r, 5));
      clock.advance(HOUR + 1);
      // Claimed again by this very worker (the same owner): the run in flight goes on and settles it.
      const second = w.poll();
      while ((await clocked.find('test', 'a'))?.attempts !== 2) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 50));
      expect(ran).toEqual([1]);
      expect(await clocked.find('test', 'a')).toMatchObject({ leaseOwner: w.owner });
      expect(w.logs.map((l) => l.msg)).toContain('test: claimed a job already running here again');
      for (const gate of gates) gate();
      await Promise.all([first, second]);
      expect(await clocked.find('test', 'a')).toMatchObject({ status: 'done', attempts: 2 });
      expect(unhandled).toEqual([]);
      await w.stop();
    });

    it('hands back, due, a job claimed again after its run in flight recorded a retry, so it does not wait out a lease', async () => {
      const clock = testClock(Date.now());
      const clocked = new JobQueue(db.knex, { now: clock.now });
      const gates: (() => void)[] = [];
      const ran: number[] = [];
      const w = new ScriptedWorker(clocked, async (job, self) => {
        ran.push(job.payload);
        if (ran.length === 1) {
          // Records a retry due at once, then takes a while to end (its run is still in flight).
          await clocked.reschedule(job.id, self.owner, clock.now());
          await new Promise<void>((resolve) => gates.push(resolve));
          return;
        }
        await clocked.complete(job.id, self.owner);
      });
      await clocked.enqueue('test', 'a', 'x.example', 1);
      const first = w.poll();
      while (gates.length === 0) await new Promise((r) => setTimeout(r, 5));
      await w.poll(); // claims it again while the first run is in flight: not run twice at once
      expect(ran).toEqual([1]);
      expect(await clocked.find('test', 'a')).toMatchObject({ status: 'pending', leaseOwner: w.owner });
      for (const gate of gates) gate();
      await first;
      // Handed back due once the first run ended: the next claim runs it, well within a lease.
      for (let i = 0; i < 200 && (await clocked.find('test', 'a'))?.leaseOwner !== undefined; i++)
        await new Promise((r) => setTimeout(r, 5));
      await w.poll();
      expect(ran).toEqual([1, 1]);
      expect(await clocked.find('test', 'a')).toMatchObject({ status: 'done' });
      expect(unhandled).toEqual([]);
      await w.stop();
    });
  });
});

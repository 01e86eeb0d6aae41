/**
 * The loop the queue workers share (the outbox, the fetcher, relays, the blob collector): claim due jobs of
 * one kind with a lease, run them concurrently up to a limit, and on stop wait for the work in flight and
 * hand back every lease still held, so another replica retries it at once rather than after the lease.
 *
 * A started worker claims again as soon as it may have work: when this process queues a job (`wake`), and
 * when one of its jobs ends and frees a slot while the last claim left due jobs behind (it was full, or a
 * destination was at its limit); after a claim that emptied the queue, a finished job costs no claim.
 * Claims never overlap within a worker: wakes arriving during a claim are folded into one more after it. The timer poll remains for what no wake announces: jobs queued by other
 * replicas, retries coming due, leases expiring.
 */
import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { processAlive, type Logger } from '@federizer/common';
import type { Job, JobQueue } from '../storage/index.js';

/** This machine in lease owners: a short digest of its host name (in Kubernetes, the pod's name). */
const THIS_HOST = createHash('sha256').update(hostname()).digest('hex').slice(0, 12);

/**
 * A lease owner: `kind:host:pid:nonce`, unique per worker. It says enough for a process starting on the same
 * host to tell the leases of a predecessor that died holding them (`abandonedBy`).
 */
export function leaseOwner(kind: string, host = THIS_HOST, pid = process.pid): string {
  return `${kind}:${host}:${pid}:${randomBytes(6).toString('hex')}`;
}

/** The owners of the workers made by this process: several services may share one process (and database). */
const ownersOfThisProcess = new Set<string>();

/**
 * Whether `owner` was a worker of a process of this host that is gone: its pid runs nothing, or runs this
 * process without being one of its workers (a container restarted in its pod has its host name, and often
 * its pid 1). The leases of other hosts, and of live processes here (cluster workers), are theirs until
 * they expire.
 */
export function abandonedBy(owner: string, self: string): boolean {
  const [kind, host, pid] = owner.split(':');
  const [selfKind, selfHost, selfPid] = self.split(':');
  if (ownersOfThisProcess.has(owner) || kind !== selfKind || host !== selfHost || !/^[1-9]\d*$/.test(pid ?? ''))
    return false;
  return pid === selfPid || !processAlive(Number(pid));
}

export interface WorkerOptions {
  readonly kind: string;
  readonly jobs: JobQueue;
  readonly logger: Logger;
  readonly concurrency: number;
  readonly perDestination: number;
  readonly leaseMs: number;
  readonly pollMs?: number;
}

export abstract class LeasedWorker<P> {
  readonly owner: string;
  #timer: NodeJS.Timeout | undefined;
  #running = new Set<Promise<void>>();
  /** The ids of the jobs whose runs are in flight. */
  /** The runs in flight here, by job id. */
  #inFlight = new Map<string, Promise<void>>();
  #started = false;
  #stopped = false;
  #paused = false;
  /** The claim of the wake loop in progress, if any. */
  #claiming: Promise<void> | undefined;
  /** A wake arrived while a claim was in progress: claim once more after it. */
  #again = false;
  /** Due jobs may be waiting for a free slot or for their destination's limit: a finished job claims. */
  #backlog = false;

  protected constructor(private readonly options: WorkerOptions) {
    this.owner = leaseOwner(options.kind);
    ownersOfThisProcess.add(this.owner);
  }

  /**
   * Runs one claimed job to its end: completes, retries or fails it in the queue. Never throws: a failure
   * to record the end is logged and leaves the job to be claimed again when its lease expires. (A run that
   * throws all the same is logged as `<kind>: a job run failed`.)
   */
  protected abstract run(job: Job<P>): Promise<void>;

  start(): void {
    this.#started = true;
    const tick = () => {
      if (this.#stopped) return;
      this.wake();
      this.#timer = setTimeout(tick, this.options.pollMs ?? 1000).unref();
    };
    // The jobs a killed predecessor on this host had claimed are taken back before the first claim, rather
    // than after their leases expire (a minute for a fetch).
    this.#claiming = this.#reclaim()
      .catch((err: unknown) => this.options.logger.error({ err }, `${this.options.kind}: taking back leases failed`))
      .finally(() => {
        this.#claiming = undefined;
        tick();
      });
  }

  async #reclaim(): Promise<void> {
    for (const owner of await this.options.jobs.leaseOwners(this.options.kind)) {
      if (!abandonedBy(owner, this.owner)) continue;
      const n = await this.options.jobs.release(owner, { abandoned: true });
      if (n > 0)
        this.options.logger.warn({ owner, jobs: n }, `${this.options.kind}: took back the jobs of a process that died`);
    }
  }

  /**
   * Tells a started worker that jobs may be due (this process queued one): it claims at once, without
   * waiting for the batch in flight or the next poll. Does nothing on a worker that was not started
   * (tests drive those with `poll`).
   */
  wake(): void {
    if (!this.#started || this.#stopped) return;
    if (this.#claiming !== undefined) {
      this.#again = true;
      return;
    }
    this.#claiming = this.#claimLoop()
      .catch((err: unknown) => this.options.logger.error({ err }, `${this.options.kind} poll failed`))
      .finally(() => {
        this.#claiming = undefined;
      });
  }

  async #claimLoop(): Promise<void> {
    do {
      this.#again = false;
      await this.#claim();
    } while (this.#again && !this.#stopped && !this.#paused);
  }

  /** Holds new claims (work in flight finishes); `resume` lets them go on. For maintenance and tests. */
  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.wake();
  }

  /** Claims and runs due jobs; resolves when this batch is done. For tests and tools driving a worker. */
  async poll(): Promise<void> {
    const { runs } = await this.#claim();
    await Promise.all(runs);
  }

  #free(): number {
    return this.options.concurrency - this.#running.size;
  }

  /** Claims up to the free slots and starts the jobs; answers their runs. */
  async #claim(): Promise<{ runs: Promise<void>[] }> {
    if (this.#stopped || this.#paused) return { runs: [] };
    const free = this.#free();
    if (free <= 0) {
      // Woken with every slot taken: the job that woke it waits for a slot to end.
      this.#backlog = true;
      return { runs: [] };
    }
    const { jobs, more } = await this.options.jobs.claimBatch<P>({
      kinds: [this.options.kind],
      owner: this.owner,
      limit: free,
      leaseMs: this.options.leaseMs,
      perDestinationLimit: this.options.perDestination,
    });
    const runs: Promise<void>[] = [];
    for (const job of jobs) {
      // Claimed again while its run is still in flight here: its lease ran out meanwhile (an event loop
      // stalled past the renewals, a clock that jumped), or the run has just recorded a retry due at once and
      // not yet ended. A second run now would do the same work twice at once. Once the run in flight ends,
      // a job this claim still holds (the run recorded a retry before the claim) is handed back due, so the
      // next claim takes it rather than waiting out the lease; one the run settled after the claim is left
      // as the run left it (the hand-back finds it no longer leased to this claim).
      const prior = this.#inFlight.get(job.id);
      if (prior !== undefined) {
        this.options.logger.warn({ job: job.id }, `${this.options.kind}: claimed a job already running here again`);
        void prior
          .then(() => this.options.jobs.reschedule(job.id, this.owner, job.nextAttemptAt, { error: job.lastError }))
          .then(
            () => this.wake(),
            () => undefined,
          );
        continue;
      }
      // `run` never throws; should one reject anyway, it is logged here, never an unhandled rejection (which
      // would end the process and every other job in flight).
      const run: Promise<void> = this.run(job)
        .catch((err: unknown) =>
          this.options.logger.error({ err, job: job.id }, `${this.options.kind}: a job run failed`),
        )
        .finally(() => {
          if (this.#inFlight.get(job.id) === run) this.#inFlight.delete(job.id);
          this.#running.delete(run);
          if (this.#backlog) this.wake();
        });
      this.#inFlight.set(job.id, run);
      this.#running.add(run);
      runs.push(run);
    }
    this.#backlog = more;
    return { runs };
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#claiming;
    await Promise.allSettled([...this.#running]);
    await this.options.jobs.release(this.owner);
  }
}

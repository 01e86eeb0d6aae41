/**
 * The loop both queue workers share (the outbox and the fetcher): claim due jobs of one kind with a lease,
 * run them concurrently up to a limit, poll again after a pause, and on stop wait for the work in flight
 * and hand back every lease still held, so another replica retries it at once rather than after the lease.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from '@federizer/common';
import type { Job, JobQueue } from '../storage/index.js';

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
  #stopped = false;
  #paused = false;

  protected constructor(private readonly options: WorkerOptions) {
    this.owner = `${options.kind}-${randomUUID()}`;
  }

  /** Runs one claimed job to its end: completes, retries or fails it in the queue. Never throws. */
  protected abstract run(job: Job<P>): Promise<void>;

  start(): void {
    const tick = () => {
      if (this.#stopped) return;
      this.poll()
        .catch((err: unknown) => this.options.logger.error({ err }, `${this.options.kind} poll failed`))
        .finally(() => {
          if (!this.#stopped) this.#timer = setTimeout(tick, this.options.pollMs ?? 1000).unref();
        });
    };
    tick();
  }

  /** Holds new claims (work in flight finishes); `resume` lets them go on. For maintenance and tests. */
  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
  }

  /** Claims and runs due jobs; resolves when this batch is done. Also called to start work at once. */
  async poll(): Promise<void> {
    if (this.#stopped || this.#paused) return;
    const free = this.options.concurrency - this.#running.size;
    if (free <= 0) return;
    const jobs = await this.options.jobs.claim<P>({
      kinds: [this.options.kind],
      owner: this.owner,
      limit: free,
      leaseMs: this.options.leaseMs,
      perDestinationLimit: this.options.perDestination,
    });
    await Promise.all(
      jobs.map((job) => {
        const run = this.run(job).finally(() => this.#running.delete(run));
        this.#running.add(run);
        return run;
      }),
    );
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await Promise.allSettled([...this.#running]);
    await this.options.jobs.release(this.owner);
  }
}

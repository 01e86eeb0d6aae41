/**
 * The clean-up after a pure relay hop (PROTOCOL.md §6.5, §7): a user's rule forwarded a message without
 * keeping a copy, so the message waits in the trash while the outbox transfers the forward, and is then
 * deleted for good, or, when a transfer failed or was cancelled, given back to the inbox with its
 * resources fetched after all (no mail is lost).
 *
 * The wait is a job of the durable queue (`relay`, keyed by the message), not a timer in memory: a
 * restart or a crash between the forward and the end of its transfers loses nothing, and replicas
 * sharing the database never settle one relay twice, because each check runs under the job's lease.
 * A check that finds transfers still pending is rescheduled, the delay doubling up to five minutes.
 */
import { silentLogger, type Logger } from '@federizer/common';
import { LeasedWorker } from './worker.js';
import type { Job, JobQueue, MessageStore } from '../storage/index.js';

export const RELAY_JOB = 'relay';

/** A relayed message and the transfer jobs (their keys) it waits for. */
export interface RelayJob {
  readonly address: string;
  readonly id: string;
  readonly transfers: readonly string[];
}

export interface RelayCleanupDeps {
  readonly domain: string;
  readonly jobs: JobQueue;
  readonly messages: Pick<MessageStore, 'delete'>;
  readonly logger?: Logger;
  readonly now: () => number;
  /** Gives a relayed message whose forward failed back to its user (inbox, resources fetched). */
  readonly restore: (address: string, id: string) => Promise<void>;
  /** Told which accounts changed, for long polls. */
  readonly onChanged?: (addresses: readonly string[]) => void;
  /** How soon the first check runs (ms; the next ones double up to five minutes). Default 1 s. */
  readonly checkMs?: number;
  readonly pollMs?: number;
}

const MAX_CHECK_MS = 5 * 60_000;

export class RelayCleanup extends LeasedWorker<RelayJob> {
  readonly #checkMs: number;

  constructor(private readonly deps: RelayCleanupDeps) {
    super({
      kind: RELAY_JOB,
      jobs: deps.jobs,
      logger: deps.logger ?? silentLogger(),
      concurrency: 4,
      perDestination: 4,
      leaseMs: 60_000,
      pollMs: deps.pollMs,
    });
    this.#checkMs = deps.checkMs ?? 1000;
  }

  /** Starts waiting for the relayed message's transfers (once per message: the job is keyed by it). */
  async watch(relay: RelayJob): Promise<void> {
    await this.deps.jobs.enqueue<RelayJob>(RELAY_JOB, relay.id, this.deps.domain, relay, {
      notBefore: this.deps.now() + this.#checkMs,
    });
  }

  protected async run(job: Job<RelayJob>): Promise<void> {
    const { deps } = this;
    const { address, id, transfers } = job.payload;
    try {
      const states = await Promise.all(transfers.map((key) => deps.jobs.find('transfer', key)));
      if (states.some((j) => j?.status === 'pending')) {
        // `attempts` counts the checks made, this one included.
        const delay = Math.min(this.#checkMs * 2 ** Math.min(job.attempts, 20), MAX_CHECK_MS);
        await deps.jobs.reschedule(job.id, this.owner, deps.now() + delay);
        return;
      }
      // A transfer job that is missing (purged) is not known to be done: the message is given back.
      if (states.every((j) => j?.status === 'done')) {
        await deps.messages.delete(address, id);
        deps.onChanged?.([address]);
      } else {
        await deps.restore(address, id);
      }
      await deps.jobs.complete(job.id, this.owner);
    } catch (err) {
      deps.logger?.warn({ err, address }, 'checking a relayed message failed');
      // The database failed us: back off as any job does; after five days the message stays in the trash.
      await deps.jobs.retry(job.id, this.owner, err).catch(() => undefined);
    }
  }
}

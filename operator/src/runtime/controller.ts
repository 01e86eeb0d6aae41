/**
 * A controller: a work queue of `namespace/name` keys, a bounded number of workers calling one reconcile
 * function, per-key exponential backoff on errors, and a periodic resync that queues every known key again.
 */
import type { Logger } from '@federizer/common';
import type { OperatorMetrics } from './metrics.js';
import { WorkQueue, type WorkQueueOptions } from './work-queue.js';

export interface ControllerOptions {
  name: string;
  reconcile: (namespace: string, name: string) => Promise<{ requeueAfterMs?: number } | void>;
  /** Keys to queue on each resync (the informer's cache). */
  keys: () => Iterable<string>;
  logger: Logger;
  metrics?: OperatorMetrics;
  workers?: number;
  resyncMs?: number;
  queue?: WorkQueueOptions;
}

export function splitKey(key: string): [string, string] {
  const slash = key.indexOf('/');
  return slash === -1 ? ['', key] : [key.slice(0, slash), key.slice(slash + 1)];
}

export class Controller {
  readonly queue: WorkQueue;
  readonly #o: ControllerOptions;
  #workers: Promise<void>[] = [];
  #resync: NodeJS.Timeout | undefined;
  #inFlight = 0;

  constructor(options: ControllerOptions) {
    this.#o = options;
    this.queue = new WorkQueue(options.queue);
  }

  get name(): string {
    return this.#o.name;
  }

  enqueue(key: string): void {
    this.queue.add(key);
    this.#depth();
  }

  #depth(): void {
    this.#o.metrics?.queueDepth.set({ controller: this.#o.name }, this.queue.length);
  }

  start(): void {
    const workers = this.#o.workers ?? 2;
    for (let i = 0; i < workers; i++) this.#workers.push(this.#work());
    this.#resync = setInterval(
      () => {
        for (const key of this.#o.keys()) this.enqueue(key);
      },
      this.#o.resyncMs ?? 5 * 60_000,
    );
    this.#resync.unref();
  }

  /** Reconciles running now, for tests and for a clean stop. */
  get inFlight(): number {
    return this.#inFlight;
  }

  async #work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      this.#depth();
      if (key === undefined) return;
      const [namespace, name] = splitKey(key);
      const { metrics, logger } = this.#o;
      const end = metrics?.reconcileDuration.startTimer({ controller: this.#o.name });
      this.#inFlight++;
      try {
        const outcome = await this.#o.reconcile(namespace, name);
        this.queue.forget(key);
        if (outcome?.requeueAfterMs !== undefined) {
          this.queue.addAfter(key, outcome.requeueAfterMs);
          metrics?.reconciles.inc({ controller: this.#o.name, result: 'requeue' });
        } else metrics?.reconciles.inc({ controller: this.#o.name, result: 'success' });
      } catch (e) {
        const delay = this.queue.addRateLimited(key);
        metrics?.reconciles.inc({ controller: this.#o.name, result: 'error' });
        logger.warn(
          { controller: this.#o.name, key, err: (e as Error).message, retryInMs: delay },
          'reconcile failed; retrying',
        );
      } finally {
        this.#inFlight--;
        end?.();
        this.queue.done(key);
        this.#depth();
      }
    }
  }

  /** Stops taking keys and waits for the reconciles in flight. */
  async stop(): Promise<void> {
    clearInterval(this.#resync);
    this.queue.shutDown();
    await Promise.all(this.#workers);
    this.#workers = [];
  }
}

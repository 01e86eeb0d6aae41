/**
 * A rate-limited work queue with client-go's guarantees (`k8s.io/client-go/util/workqueue`): a key waiting
 * is queued once however often it is added; a key being processed is never handed to a second worker, and
 * if it was added meanwhile it is queued again when the first worker is done; a failing key is retried after
 * an exponential per-key delay, capped.
 */

export interface WorkQueueOptions {
  /** First retry delay; default 500 ms. */
  baseDelayMs?: number;
  /** Longest retry delay; default 5 minutes. */
  maxDelayMs?: number;
}

export class WorkQueue {
  readonly #queue: string[] = [];
  readonly #dirty = new Set<string>();
  readonly #processing = new Set<string>();
  readonly #failures = new Map<string, number>();
  readonly #timers = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  readonly #waiters: ((key: string | undefined) => void)[] = [];
  readonly #baseDelayMs: number;
  readonly #maxDelayMs: number;
  #shutDown = false;

  constructor(options: WorkQueueOptions = {}) {
    this.#baseDelayMs = options.baseDelayMs ?? 500;
    this.#maxDelayMs = options.maxDelayMs ?? 5 * 60_000;
    if (!(this.#baseDelayMs > 0) || !(this.#maxDelayMs >= this.#baseDelayMs))
      throw new RangeError('WorkQueue: 0 < baseDelayMs <= maxDelayMs');
  }

  /** Keys waiting for a worker (not those being processed or waiting for their delay). */
  get length(): number {
    return this.#queue.length;
  }

  get isShutDown(): boolean {
    return this.#shutDown;
  }

  add(key: string): void {
    if (this.#shutDown || this.#dirty.has(key)) return;
    this.#dirty.add(key);
    if (this.#processing.has(key)) return;
    const waiter = this.#waiters.shift();
    if (waiter) {
      this.#dirty.delete(key);
      this.#processing.add(key);
      waiter(key);
    } else this.#queue.push(key);
  }

  /** Adds `key` after `delayMs`; an earlier pending add of the same key wins. */
  addAfter(key: string, delayMs: number): void {
    if (this.#shutDown) return;
    if (delayMs <= 0) return this.add(key);
    const at = Date.now() + delayMs;
    const pending = this.#timers.get(key);
    if (pending && pending.at <= at) return;
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(() => {
      this.#timers.delete(key);
      this.add(key);
    }, delayMs);
    timer.unref();
    this.#timers.set(key, { at, timer });
  }

  /** The delay the next failure of `key` will wait: base × 2^failures, capped. */
  nextDelay(key: string): number {
    const failures = this.#failures.get(key) ?? 0;
    return Math.min(this.#maxDelayMs, this.#baseDelayMs * 2 ** Math.min(failures, 30));
  }

  /** Retries `key` after its backoff delay, which doubles with each failure until `forget`. */
  addRateLimited(key: string): number {
    const delay = this.nextDelay(key);
    this.#failures.set(key, (this.#failures.get(key) ?? 0) + 1);
    this.addAfter(key, delay);
    return delay;
  }

  /** Clears the failure count of `key` (after a success). */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  failures(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  /** The next key, exclusively for the caller until `done(key)`; undefined once shut down. */
  get(): Promise<string | undefined> {
    if (this.#shutDown) return Promise.resolve(undefined);
    const key = this.#queue.shift();
    if (key !== undefined) {
      this.#dirty.delete(key);
      this.#processing.add(key);
      return Promise.resolve(key);
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  done(key: string): void {
    this.#processing.delete(key);
    if (this.#dirty.has(key)) {
      this.#dirty.delete(key);
      this.add(key);
    }
  }

  /** Wakes every waiting worker with undefined and drops pending delays. */
  shutDown(): void {
    this.#shutDown = true;
    for (const { timer } of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
    this.#queue.length = 0;
    this.#dirty.clear();
    for (const waiter of this.#waiters.splice(0)) waiter(undefined);
  }
}

/**
 * Wake-ups for the long polls of `GET /api/v1/changes` (PROTOCOL.md §9). A request that found nothing new
 * waits here until its account changes, its time is up, or its client goes away.
 *
 * Two paths wake a waiter:
 * - `notify(address)`, called by this replica's API right after it changed the account: immediate.
 * - a periodic check (every second by default) of `ChangeLog.state` for each account with waiters, which
 *   catches what `notify` cannot: changes written by another replica or by a background job (a transfer
 *   received, a fetch finished). A waiter that passed the state it already answered (`options.state`) is
 *   woken as soon as the account's state differs from it, which also closes the gap between the caller's
 *   last read of the log and its call to `wait`.
 *
 * A wake-up only says "look again": the caller re-reads the change log, and waits again if nothing is there.
 */
import type { ChangeLog } from '../storage/index.js';

export type WaitOutcome = 'changed' | 'timeout' | 'aborted';

export interface ChangeNotifierOptions {
  /** Where the periodic check reads an account's state: the database every replica writes. */
  readonly changes: Pick<ChangeLog, 'state'>;
  /** How often accounts with waiters are checked (default 1000 ms). */
  readonly intervalMs?: number;
  /** How many accounts one check reads at a time (default 8), so a check never takes the whole pool. */
  readonly concurrency?: number;
  /** A failed state read (the check carries on; the waiters still wake by `notify` or time out). */
  readonly onError?: (err: unknown, address: string) => void;
}

export interface WaitOptions {
  /** The state the caller already has: the periodic check wakes the waiter once the account's differs. */
  readonly state?: string;
}

interface Waiter {
  /** Undefined until the first periodic check records the state it saw. */
  baseline: string | undefined;
  settle(outcome: WaitOutcome): void;
}

// setTimeout fires at once for delays above 2^31 - 1 ms.
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export class ChangeNotifier {
  readonly #changes: Pick<ChangeLog, 'state'>;
  readonly #intervalMs: number;
  readonly #concurrency: number;
  readonly #onError: (err: unknown, address: string) => void;
  readonly #waiters = new Map<string, Set<Waiter>>();
  #open = 0;
  #timer: NodeJS.Timeout | undefined;
  #checking = false;
  #closed = false;

  constructor(options: ChangeNotifierOptions) {
    this.#changes = options.changes;
    this.#intervalMs = options.intervalMs ?? 1000;
    this.#concurrency = options.concurrency ?? 8;
    this.#onError = options.onError ?? (() => {});
    if (!Number.isSafeInteger(this.#intervalMs) || this.#intervalMs < 1) {
      throw new TypeError('intervalMs must be a positive integer');
    }
    if (!Number.isSafeInteger(this.#concurrency) || this.#concurrency < 1) {
      throw new TypeError('concurrency must be a positive integer');
    }
  }

  /**
   * Resolves `changed` when the account changes (or may have: the caller re-reads), `timeout` after
   * `timeoutMs`, or `aborted` when `signal` aborts (the client went away). After `close()`, and for a
   * timeout of 0 or less, it resolves `timeout` at once.
   */
  wait(
    address: string,
    signal: AbortSignal | undefined,
    timeoutMs: number,
    options: WaitOptions = {},
  ): Promise<WaitOutcome> {
    if (typeof address !== 'string' || address === '') throw new TypeError('address must be a non-empty string');
    if (typeof timeoutMs !== 'number' || Number.isNaN(timeoutMs)) throw new TypeError('timeoutMs must be a number');
    if (signal?.aborted) return Promise.resolve('aborted');
    if (this.#closed || timeoutMs <= 0) return Promise.resolve('timeout');
    return new Promise<WaitOutcome>((resolve) => {
      let settled = false;
      const onAbort = () => waiter.settle('aborted');
      const waiter: Waiter = {
        baseline: options.state,
        settle: (outcome) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          const set = this.#waiters.get(address);
          set?.delete(waiter);
          if (set?.size === 0) this.#waiters.delete(address);
          this.#open--;
          if (this.#open === 0) this.#stopTimer();
          resolve(outcome);
        },
      };
      const timer = setTimeout(() => waiter.settle('timeout'), Math.min(timeoutMs, MAX_TIMEOUT_MS));
      signal?.addEventListener('abort', onAbort, { once: true });
      let set = this.#waiters.get(address);
      if (set === undefined) this.#waiters.set(address, (set = new Set()));
      set.add(waiter);
      this.#open++;
      this.#startTimer();
    });
  }

  /** Wakes every waiter of the account: something of it changed on this replica. */
  notify(address: string): void {
    const set = this.#waiters.get(address);
    if (set === undefined) return;
    for (const waiter of [...set]) waiter.settle('changed');
  }

  /** The number of requests waiting now (a gauge for metrics). */
  openPolls(): number {
    return this.#open;
  }

  /**
   * Stops the periodic check and releases every waiter with `timeout`, so long polls answer (with no
   * changes) before the server shuts down instead of holding its graceful close. Later waits time out at once.
   */
  close(): void {
    this.#closed = true;
    this.#stopTimer();
    for (const set of [...this.#waiters.values()]) {
      for (const waiter of [...set]) waiter.settle('timeout');
    }
  }

  /** One periodic check; exposed for tests that drive it by hand. Overlapping calls are skipped. */
  async check(): Promise<void> {
    if (this.#checking) return;
    this.#checking = true;
    try {
      const queue = [...this.#waiters.keys()];
      const worker = async () => {
        for (let address = queue.shift(); address !== undefined; address = queue.shift()) {
          if (!this.#waiters.has(address)) continue;
          let state: string;
          try {
            state = await this.#changes.state(address);
          } catch (e) {
            this.#onError(e, address);
            continue;
          }
          for (const waiter of [...(this.#waiters.get(address) ?? [])]) {
            if (waiter.baseline === undefined) waiter.baseline = state;
            else if (waiter.baseline !== state) waiter.settle('changed');
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(this.#concurrency, queue.length) }, worker));
    } finally {
      this.#checking = false;
    }
  }

  #startTimer(): void {
    if (this.#timer !== undefined || this.#closed) return;
    this.#timer = setInterval(() => void this.check(), this.#intervalMs);
    // Waiting requests keep the server alive, not this timer.
    this.#timer.unref();
  }

  #stopTimer(): void {
    if (this.#timer === undefined) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

/**
 * Wake-ups for the long polls of `GET /api/v1/changes` (PROTOCOL.md §9). A request that found nothing new
 * waits here until its account changes, its time is up, or its client goes away.
 *
 * Three paths wake a waiter:
 * - `notify(address)`, called by this replica's API and workers right after they changed the account (after
 *   the commit): immediate.
 * - the `channel`, when there is one: the other replicas' `notify` calls reach this one through it. On
 *   PostgreSQL it is `PgChangeChannel`, LISTEN/NOTIFY on one connection of its own; SQLite has none (one
 *   process owns the file, so every change is this replica's).
 * - a periodic check (every second by default) of `ChangeLog.state` for each account with waiters, which
 *   catches what neither can: a change whose writer calls no `notify` (a delivery status the outbox
 *   records), another replica's notification lost while the channel was reconnecting. A waiter that passed
 *   the state it already answered (`options.state`) is woken as soon as the account's state differs from
 *   it, which also closes the gap between the caller's last read of the log and its call to `wait`.
 *
 * A wake-up only says "look again": the caller re-reads the change log, and waits again if nothing is there.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Knex } from 'knex';
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
  /** How the replicas of one database tell each other which accounts changed (none: this process alone). */
  readonly channel?: ChangeChannel;
}

/** Carries `notify` calls between the replicas of one database. */
export interface ChangeChannel {
  /** Starts listening: `changed` for each account another replica changed, `resync` after a gap. */
  start(listener: ChangeListener): void;
  /** Tells the other replicas that this account changed; never throws, never waits. */
  publish(address: string): void;
  close(): Promise<void>;
}

export interface ChangeListener {
  changed(address: string): void;
  /** Notifications may have been missed (the channel was down): look at every account with waiters. */
  resync(): void;
}

/** What woke long polls, for metrics: this replica's `notify`, another replica's, or the periodic check. */
export interface WakeCounts {
  readonly local: number;
  readonly replica: number;
  readonly check: number;
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
  readonly #wakes = { local: 0, replica: 0, check: 0 };
  /** The other replicas' notifications arrive here; undefined with SQLite. */
  readonly channel: ChangeChannel | undefined;

  constructor(options: ChangeNotifierOptions) {
    this.#changes = options.changes;
    this.channel = options.channel;
    this.#intervalMs = options.intervalMs ?? 1000;
    this.#concurrency = options.concurrency ?? 8;
    this.#onError = options.onError ?? (() => {});
    if (!Number.isSafeInteger(this.#intervalMs) || this.#intervalMs < 1) {
      throw new TypeError('intervalMs must be a positive integer');
    }
    if (!Number.isSafeInteger(this.#concurrency) || this.#concurrency < 1) {
      throw new TypeError('concurrency must be a positive integer');
    }
    this.channel?.start({
      changed: (address) => this.#wake(address, 'replica'),
      resync: () => void this.check(),
    });
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

  /** Wakes every waiter of the account, here and on the other replicas: something of it changed on this one. */
  notify(address: string): void {
    this.#wake(address, 'local');
    if (!this.#closed) this.channel?.publish(address);
  }

  #wake(address: string, source: 'local' | 'replica' | 'check'): void {
    const set = this.#waiters.get(address);
    if (set === undefined || set.size === 0) return;
    this.#wakes[source]++;
    for (const waiter of [...set]) waiter.settle('changed');
  }

  /** How many times waiters were woken, by source (one per account woken). */
  wakeCounts(): WakeCounts {
    return { ...this.#wakes };
  }

  /** The number of requests waiting now (a gauge for metrics). */
  openPolls(): number {
    return this.#open;
  }

  /**
   * Stops the periodic check and releases every waiter with `timeout`, so long polls answer (with no
   * changes) before the server shuts down instead of holding its graceful close. Later waits time out at once.
   * The channel's connection is closed by the time the promise settles.
   */
  close(): Promise<void> {
    this.#closed = true;
    this.#stopTimer();
    for (const set of [...this.#waiters.values()]) {
      for (const waiter of [...set]) waiter.settle('timeout');
    }
    return this.channel?.close() ?? Promise.resolve();
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
          let woken = false;
          for (const waiter of [...(this.#waiters.get(address) ?? [])]) {
            if (waiter.baseline === undefined) waiter.baseline = state;
            else if (waiter.baseline !== state) {
              waiter.settle('changed');
              woken = true;
            }
          }
          if (woken) this.#wakes.check++;
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

// ---------------------------------------------------------------------------------------------------
// PostgreSQL: LISTEN/NOTIFY between the replicas of one database

/** The subset of node-postgres' `Client` the channel uses: knex's raw PostgreSQL connection. */
interface PgClient {
  readonly processID?: number | null;
  query(text: string, values?: unknown[]): Promise<{ rows: Record<string, unknown>[] }>;
  on(event: 'notification', listener: (message: { channel: string; payload?: string }) => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  end(): Promise<void>;
}

export interface PgChangeChannelOptions {
  /** The listening connection failed or was refused; it is opened again after a backoff. */
  readonly onError?: (err: unknown) => void;
  /** Listening (again) on `channel`. */
  readonly onListening?: (channel: string) => void;
  /** The first wait before opening the connection again (default 250 ms), doubling up to `maxBackoffMs` (30 s). */
  readonly minBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /**
   * A `select 1` on the listening connection this often (default 30 s), which must answer within as long:
   * a connection that died without a word (a dropped network path) is noticed and replaced.
   */
  readonly heartbeatMs?: number;
}

const CHANNEL_PREFIX = 'federizer_changes_';
/** PostgreSQL truncates identifiers, channel names included, to NAMEDATALEN - 1 bytes. */
const MAX_IDENTIFIER_BYTES = 63;

/**
 * The NOTIFY channel of the mailbox tables in `schema`. Channels are per database, not per schema: mailboxes
 * kept in several schemas of one database (other domains, or tests) must not wake each other's polls.
 */
export function changeChannelName(schema: string): string {
  const plain = `${CHANNEL_PREFIX}${schema}`;
  if (/^[A-Za-z0-9_]+$/.test(schema) && Buffer.byteLength(plain) <= MAX_IDENTIFIER_BYTES) return plain;
  return `${CHANNEL_PREFIX}${createHash('sha256').update(schema).digest('hex').slice(0, 40)}`;
}

function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * The replicas of a mailbox on one PostgreSQL database tell each other which accounts changed: `publish`
 * sends `pg_notify(channel, "<replica id> <address>")` after the change committed, batched per turn of the
 * event loop, on the listening connection (or through the pool while that is down); every replica LISTENs
 * on one connection of its own, opened outside the pool, and wakes its waiters for the addresses the other
 * replicas sent. Its own notifications come back too and are skipped: `notify` already woke those waiters.
 *
 * The connection is opened again with a growing backoff when it drops, and each time it listens again the
 * notifier checks every waiting account, since notifications sent meanwhile are lost. A pooler in
 * transaction mode (PgBouncer's default) cannot carry LISTEN: the connection must be a session's.
 */
export class PgChangeChannel implements ChangeChannel {
  readonly #knex: Knex;
  readonly #onError: (err: unknown) => void;
  readonly #onListening: (channel: string) => void;
  readonly #minBackoffMs: number;
  readonly #maxBackoffMs: number;
  readonly #heartbeatMs: number;
  /** Tells this replica's notifications apart from the others'. */
  readonly #id = randomBytes(6).toString('base64url');
  readonly #pending = new Set<string>();
  #listener: ChangeListener | undefined;
  #client: PgClient | undefined;
  #channel: string | undefined;
  #connecting = false;
  #flushScheduled = false;
  #closed = false;
  #attempt = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #listeningWaiters: (() => void)[] = [];

  constructor(knex: Knex, options: PgChangeChannelOptions = {}) {
    if (knex.client.dialect !== 'postgresql') throw new TypeError('PgChangeChannel needs a PostgreSQL knex');
    this.#knex = knex;
    this.#onError = options.onError ?? (() => {});
    this.#onListening = options.onListening ?? (() => {});
    this.#minBackoffMs = options.minBackoffMs ?? 250;
    this.#maxBackoffMs = options.maxBackoffMs ?? 30_000;
    this.#heartbeatMs = options.heartbeatMs ?? 30_000;
  }

  start(listener: ChangeListener): void {
    if (this.#listener !== undefined) throw new Error('the change channel is already started');
    this.#listener = listener;
    this.#connect();
  }

  /** The server process of the listening connection (`pg_stat_activity.pid`); undefined while there is none. */
  get backendPid(): number | undefined {
    return this.#client?.processID ?? undefined;
  }

  /** Resolves when the channel listens: at once if it does, else once the connection is (re)opened. */
  listening(): Promise<void> {
    if (this.#client !== undefined) return Promise.resolve();
    return new Promise((resolve) => this.#listeningWaiters.push(resolve));
  }

  publish(address: string): void {
    if (this.#closed) return;
    this.#pending.add(address);
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    // One statement for every account changed in this turn of the event loop (a transfer to many recipients).
    setImmediate(() => void this.#flush());
  }

  async #flush(): Promise<void> {
    this.#flushScheduled = false;
    if (this.#pending.size === 0) return;
    const payloads = [...this.#pending].map((address) => `${this.#id} ${address}`);
    this.#pending.clear();
    try {
      const client = this.#client;
      if (client !== undefined) {
        await client.query('select pg_notify($1, p) from unnest($2::text[]) as p', [this.#channel, payloads]);
      } else {
        // Not listening just now: the pool still reaches the replicas that are.
        this.#channel ??= changeChannelName(await this.#schema(this.#knex));
        await this.#knex.raw('select pg_notify(?, p) from unnest(?::text[]) as p', [this.#channel, payloads]);
      }
    } catch (err) {
      // The other replicas' periodic check sees the change a moment later.
      this.#onError(err);
    }
  }

  async #schema(db: Knex | PgClient): Promise<string> {
    const rows =
      'raw' in db
        ? ((await db.raw('select current_schema() as schema')) as { rows: Record<string, unknown>[] }).rows
        : (await db.query('select current_schema() as schema')).rows;
    const schema = rows[0]?.schema;
    return typeof schema === 'string' ? schema : 'public';
  }

  #connect(): void {
    if (this.#closed || this.#connecting || this.#client !== undefined) return;
    this.#connecting = true;
    this.#open().then(
      () => {
        this.#connecting = false;
      },
      (err: unknown) => {
        this.#connecting = false;
        if (this.#closed) return;
        this.#onError(err);
        this.#retry();
      },
    );
  }

  async #open(): Promise<void> {
    // Outside the pool, with the pool's settings and search_path: a listening session is held for good.
    const client = (await this.#knex.client.acquireRawConnection()) as PgClient;
    let channel: string;
    try {
      channel = changeChannelName(await this.#schema(client));
      client.on('notification', (message) => {
        if (message.channel === channel && message.payload !== undefined) this.#receive(message.payload);
      });
      client.on('error', (err) => this.#lost(client, err));
      client.on('end', () => this.#lost(client, new Error('the listening connection ended')));
      await client.query(`listen ${quoteIdentifier(channel)}`);
    } catch (err) {
      void client.end().catch(() => undefined);
      throw err;
    }
    if (this.#closed) {
      await client.end().catch(() => undefined);
      return;
    }
    this.#client = client;
    this.#channel = channel;
    this.#attempt = 0;
    this.#startHeartbeat(client);
    this.#onListening(channel);
    for (const resolve of this.#listeningWaiters.splice(0)) resolve();
    // Whatever the other replicas sent while this one was not listening is lost: look at the accounts.
    this.#listener?.resync();
  }

  #receive(payload: string): void {
    const space = payload.indexOf(' ');
    if (space <= 0 || payload.slice(0, space) === this.#id) return;
    this.#listener?.changed(payload.slice(space + 1));
  }

  #lost(client: PgClient, err: unknown): void {
    if (this.#client !== client) return;
    this.#client = undefined;
    this.#stopHeartbeat();
    void client.end().catch(() => undefined);
    if (this.#closed) return;
    this.#onError(err);
    this.#retry();
  }

  #retry(): void {
    if (this.#closed || this.#retryTimer !== undefined) return;
    const ceiling = Math.min(this.#maxBackoffMs, this.#minBackoffMs * 2 ** this.#attempt++);
    // Jittered, so that replicas cut off together do not all knock at the same instant.
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#connect();
    }, delay);
    this.#retryTimer.unref();
  }

  #startHeartbeat(client: PgClient): void {
    this.#stopHeartbeat();
    this.#heartbeat = setInterval(() => {
      const silent = setTimeout(
        () => this.#lost(client, new Error(`the listening connection did not answer for ${this.#heartbeatMs} ms`)),
        this.#heartbeatMs,
      );
      silent.unref();
      client.query('select 1').then(
        () => clearTimeout(silent),
        (err: unknown) => {
          clearTimeout(silent);
          this.#lost(client, err);
        },
      );
    }, this.#heartbeatMs);
    this.#heartbeat.unref();
  }

  #stopHeartbeat(): void {
    if (this.#heartbeat === undefined) return;
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
  }

  /** Sends what is still pending, stops listening and closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#stopHeartbeat();
    await this.#flush();
    const client = this.#client;
    this.#client = undefined;
    await client?.end().catch(() => undefined);
  }
}

/**
 * The durable outbox and fetch queue: jobs in `mail_jobs`, claimed with leases. A claim leases due jobs to
 * one owner for `leaseMs`; the owner completes, retries (exponential backoff with jitter) or fails them. A
 * worker that crashes simply lets its leases expire and the jobs become claimable again, so work is never
 * lost; completion requires the current lease, so a job whose lease was taken over is never recorded as
 * done twice (the work itself may run twice, which the federation makes harmless: transfers are
 * idempotent, fetches publish by digest).
 *
 * On PostgreSQL several replicas share the table: candidates are locked with FOR UPDATE SKIP LOCKED (two
 * claimers never wait for, nor take, the same job) and the per-destination limit is counted under a
 * transaction-scoped advisory lock per destination. SQLite has one connection, so each claim transaction
 * runs alone.
 */
import type { Knex } from 'knex';
import { dbBoolean, dbNumber, dbOptionalNumber } from '@federizer/common';
import { MailStoreError } from './errors.js';
import { createIdGenerator } from './ids.js';
import { checkLimit, checkSize, chunks, isPostgres, parseJson, type Clock, type StoreOptions } from './sql.js';

export type JobStatus = 'pending' | 'done' | 'failed' | 'cancelled';

export interface Job<P = unknown> {
  readonly id: string;
  readonly kind: string;
  readonly key: string;
  readonly destination: string;
  readonly payload: P;
  readonly status: JobStatus;
  /** Claims so far, including a running one. */
  readonly attempts: number;
  readonly nextAttemptAt: number;
  readonly leaseOwner: string | undefined;
  readonly leaseUntil: number | undefined;
  readonly lastError: string | undefined;
  readonly createdAt: number;
  readonly updatedAt: number;
}

export interface ClaimOptions {
  kinds: readonly string[];
  /** Who holds the leases (a worker id, unique per process); at most 64 characters. */
  owner: string;
  limit: number;
  leaseMs: number;
  /** The most jobs leased at once per destination, across all owners. Unlimited when absent. */
  perDestinationLimit?: number;
}

export type RetryResult = { gaveUp: false; nextAttemptAt: number } | { gaveUp: true };

export interface JobQueueOptions extends StoreOptions {
  /** In [0, 1); the jitter of retry delays. */
  random?: () => number;
  /** A job failing for longer than this since it was enqueued is given up (default 5 days). */
  giveUpAfterMs?: number;
  /** The wait after a first failed attempt, doubling after each further one (default RETRY_BASE_MS). */
  retryBaseMs?: number;
}

export const RETRY_BASE_MS = 60_000;
export const RETRY_MAX_MS = 3_600_000;
export const GIVE_UP_AFTER_MS = 5 * 24 * 3600 * 1000;
const MAX_ERROR_LENGTH = 2000;
/** Candidates read per claim, as a multiple of `limit`: some may be skipped for their destination. */
const CANDIDATE_FACTOR = 4;
/** The first key of the advisory locks of destinations (the second is the hash of the destination). */
const ADVISORY_CLASS = 0x6d6a; // "mj"

/**
 * The wait before the next attempt after `attempt` failed attempts (1 for the first failure): `baseMs`
 * (60 s by default) doubling up to 1 h, with "equal jitter": uniformly between half of that and all of it,
 * so retries of many jobs that failed together (a destination was down) spread out instead of returning
 * in one burst.
 */
export function retryDelayMs(
  attempt: number,
  random: () => number = Math.random,
  baseMs: number = RETRY_BASE_MS,
): number {
  const n = Math.max(1, Math.floor(attempt));
  const base = Math.min(baseMs * 2 ** Math.min(n - 1, 30), RETRY_MAX_MS);
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.round(base / 2 + (r * base) / 2);
}

interface JobRow {
  id: string;
  kind: string;
  key: string;
  destination: string;
  payload: unknown;
  status: string;
  attempts: unknown;
  next_attempt_at: unknown;
  lease_owner: string | null;
  lease_until: unknown;
  last_error: string | null;
  created_at: unknown;
  updated_at: unknown;
}

function toJob<P>(row: JobRow): Job<P> {
  return {
    id: row.id,
    kind: row.kind,
    key: row.key,
    destination: row.destination,
    payload: parseJson<P>(row.payload, 'payload'),
    status: row.status as JobStatus,
    attempts: dbNumber(row.attempts),
    nextAttemptAt: dbNumber(row.next_attempt_at),
    leaseOwner: row.lease_owner ?? undefined,
    leaseUntil: dbOptionalNumber(row.lease_until),
    lastError: row.last_error ?? undefined,
    createdAt: dbNumber(row.created_at),
    updatedAt: dbNumber(row.updated_at),
  };
}

function checkString(value: unknown, what: string, max: number): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new TypeError(`${what} must be a non-empty string of at most ${max} characters`);
  }
  return value;
}

function checkDuration(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new TypeError(`${what} must be a positive number of milliseconds`);
  }
  return value;
}

function errorText(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.slice(0, MAX_ERROR_LENGTH);
}

export class JobQueue {
  readonly #knex: Knex;
  readonly #now: Clock;
  readonly #random: () => number;
  readonly #giveUpAfterMs: number;
  readonly #retryBaseMs: number;
  readonly #newId: () => string;

  constructor(knex: Knex, options: JobQueueOptions = {}) {
    this.#knex = knex;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#giveUpAfterMs = checkDuration(options.giveUpAfterMs ?? GIVE_UP_AFTER_MS, 'giveUpAfterMs');
    this.#retryBaseMs = checkDuration(options.retryBaseMs ?? RETRY_BASE_MS, 'retryBaseMs');
    this.#newId = createIdGenerator(this.#now);
  }

  /**
   * Queues a job, or answers the one already queued under (kind, key), whatever its status: a finished job
   * is not run again (`purge` forgets finished jobs, after which the key may be queued anew).
   */
  async enqueue<P>(
    kind: string,
    key: string,
    destination: string,
    payload: P,
    options: { notBefore?: number } = {},
  ): Promise<{ job: Job<P>; created: boolean }> {
    const now = this.#now();
    const row = this.#newRow(kind, key, destination, payload, now, Math.max(now, options.notBefore ?? now));
    const inserted = (await this.#knex('mail_jobs')
      .insert(row)
      .onConflict(['kind', 'key'])
      .ignore()
      .returning('id')) as unknown[];
    // Queued now: the job is the row just written, with no need to read it back.
    if (inserted.length > 0) return { job: toJob<P>(row), created: true };
    const job = await this.find<P>(kind, key);
    if (job === undefined) throw new Error('queued job vanished');
    return { job, created: false };
  }

  /**
   * Queues a job as `enqueue` does, but queues a finished one (done, failed, cancelled) under (kind, key)
   * again, with this payload, as if new: due now, its attempts and give-up deadline started over. A job
   * still pending (waiting, or leased and running) is left as it is. One statement.
   *
   * For work that a later arrival may need done again: a fetch whose Content-ID a new message references
   * (the bytes may have been collected since, or the finished fetch may have marked its messages before
   * the new one was stored). A worker that finishes such a job completes it in the same transaction as its
   * effect, the completion first (`completeLeasedJob`): then a `requeue` after the new arrival committed
   * either finds the job pending, and its completion is still to come and will see the arrival, or finds
   * it finished, and queues it again.
   */
  async requeue<P>(
    kind: string,
    key: string,
    destination: string,
    payload: P,
  ): Promise<'queued' | 'requeued' | 'pending'> {
    const now = this.#now();
    const row = this.#newRow(kind, key, destination, payload, now, now);
    // On PostgreSQL the conflicting row is locked, and the condition read from its newest committed version,
    // waiting for a transaction completing the job to end.
    const rows = (await this.#knex('mail_jobs')
      .insert(row)
      .onConflict(['kind', 'key'])
      .merge([
        'destination',
        'payload',
        'status',
        'attempts',
        'next_attempt_at',
        'lease_owner',
        'lease_until',
        'last_error',
        'created_at',
        'updated_at',
      ])
      .where('mail_jobs.status', '<>', 'pending')
      .returning('id')) as ({ id: string } | string)[];
    if (rows.length === 0) return 'pending';
    const first = rows[0]!;
    return (typeof first === 'string' ? first : first.id) === row.id ? 'queued' : 'requeued';
  }

  /** The row of a job queued now under (kind, key), pending and never tried; the names checked. */
  #newRow(kind: string, key: string, destination: string, payload: unknown, now: number, due: number): JobRow {
    checkString(kind, 'kind', 16);
    checkString(key, 'key', 512);
    checkString(destination, 'destination', 253);
    return {
      id: this.#newId(),
      kind,
      key,
      destination,
      payload: JSON.stringify(payload ?? null),
      status: 'pending',
      attempts: 0,
      next_attempt_at: due,
      lease_owner: null,
      lease_until: null,
      last_error: null,
      created_at: now,
      updated_at: now,
    };
  }

  async get<P = unknown>(id: string): Promise<Job<P> | undefined> {
    const row = (await this.#knex('mail_jobs').first().where({ id })) as JobRow | undefined;
    return row === undefined ? undefined : toJob<P>(row);
  }

  async find<P = unknown>(kind: string, key: string): Promise<Job<P> | undefined> {
    const row = (await this.#knex('mail_jobs').first().where({ kind, key })) as JobRow | undefined;
    return row === undefined ? undefined : toJob<P>(row);
  }

  /**
   * Leases up to `limit` due jobs of the given kinds to `owner`, oldest due first, never letting more than
   * `perDestinationLimit` jobs of one destination be leased at once (leases of every owner count; expired
   * ones do not). A job whose lease expired is due again.
   */
  async claim<P = unknown>(options: ClaimOptions): Promise<Job<P>[]> {
    return (await this.claimBatch<P>(options)).jobs;
  }

  /**
   * `claim`, also answering whether due jobs may remain that this claim did not take: it filled `limit`,
   * passed some over for their destination's limit, or some destination is at its limit (its jobs become
   * claimable when one of its leases ends). A worker uses it to decide whether a finished job is worth
   * another claim at once, or whether the queue is empty and the next wake or poll will do.
   */
  async claimBatch<P = unknown>(options: ClaimOptions): Promise<{ jobs: Job<P>[]; more: boolean }> {
    if (!Array.isArray(options.kinds) || options.kinds.length === 0) throw new TypeError('kinds must not be empty');
    const kinds = options.kinds.map((k) => checkString(k, 'kind', 16));
    const owner = checkString(options.owner, 'owner', 64);
    const limit = checkLimit(options.limit, 1000);
    const leaseMs = checkDuration(options.leaseMs, 'leaseMs');
    const perDestination =
      options.perDestinationLimit === undefined
        ? Number.POSITIVE_INFINITY
        : checkLimit(options.perDestinationLimit, 1_000_000, 'perDestinationLimit');
    const limited = Number.isFinite(perDestination);
    const postgres = isPostgres(this.#knex);

    // Most claims of a quiet queue find nothing (timer polls, wakes for jobs an earlier claim took): one read,
    // outside a transaction, says so, with whether some destination is at its limit (the `more` such a claim
    // answers). Otherwise the claim proper decides, in its transaction.
    const probeNow = this.#now();
    const due = this.#knex('mail_jobs')
      .select(this.#knex.raw('1'))
      .where('status', 'pending')
      .whereIn('kind', kinds)
      .andWhere('next_attempt_at', '<=', probeNow)
      .andWhere((q) => q.whereNull('lease_until').orWhere('lease_until', '<=', probeNow));
    // Some destination holds `perDestination` leases (only asked when there is a limit).
    const atLimit = limited
      ? this.#knex('mail_jobs')
          .select('destination')
          .where('status', 'pending')
          .andWhere('lease_until', '>', probeNow)
          .groupBy('destination')
          .havingRaw('count(*) >= ?', [perDestination])
      : undefined;
    const probe = (await this.#knex.first(
      this.#knex.raw('exists ? as ??', [due, 'due']),
      atLimit === undefined ? this.#knex.raw('0 as ??', ['full']) : this.#knex.raw('exists ? as ??', [atLimit, 'full']),
    )) as { due: unknown; full: unknown };
    if (!dbBoolean(probe.due)) return { jobs: [], more: dbBoolean(probe.full) };

    const claimed = await this.#knex.transaction(async (trx) => {
      const now = this.#now();
      const leasedCount = (q: Knex.QueryBuilder) =>
        q
          .select('destination')
          .count({ n: '*' })
          .from('mail_jobs')
          .where('status', 'pending')
          .andWhere('lease_until', '>', now)
          .groupBy('destination');
      // Leases held now, per destination: few rows (at most the leases of all workers). Destinations at
      // their limit are skipped, so they cannot crowd the others out of the candidates.
      const leased = new Map<string, number>();
      if (limited) {
        const counts = (await leasedCount(trx.queryBuilder())) as { destination: string; n: unknown }[];
        for (const c of counts) leased.set(c.destination, dbNumber(c.n));
      }
      const full = [...leased].filter(([, n]) => n >= perDestination).map(([d]) => d);
      // Whole rows: the claimed jobs are answered from them, without reading them again after the update.
      let candidates = trx('mail_jobs')
        .select()
        .where('status', 'pending')
        .whereIn('kind', kinds)
        .andWhere('next_attempt_at', '<=', now)
        .andWhere((q) => q.whereNull('lease_until').orWhere('lease_until', '<=', now));
      for (const part of chunks(full)) candidates = candidates.whereNotIn('destination', part);
      const candidateLimit = limited ? limit * CANDIDATE_FACTOR : limit;
      candidates = candidates.orderBy([{ column: 'next_attempt_at' }, { column: 'id' }]).limit(candidateLimit);
      if (postgres) candidates = candidates.forUpdate().skipLocked();
      const rows = (await candidates) as JobRow[];
      if (rows.length === 0) return { ids: [], rows: [], updated: 0, more: full.length > 0 };

      if (limited && postgres) {
        // Other replicas claim at the same time: the counts above are only a filter. Under a lock per
        // destination (sorted, so two claimers locking overlapping destinations cannot deadlock), they are
        // counted again; claims committed meanwhile by others are visible to this statement.
        const destinations = [...new Set(rows.map((r) => r.destination))].sort();
        for (const d of destinations) {
          await trx.raw('select pg_advisory_xact_lock(?, hashtext(?))', [ADVISORY_CLASS, d]);
        }
        for (const part of chunks(destinations)) {
          const counts = (await leasedCount(trx.queryBuilder()).whereIn('destination', part)) as {
            destination: string;
            n: unknown;
          }[];
          for (const c of counts) leased.set(c.destination, dbNumber(c.n));
        }
      }
      // On SQLite the transaction runs alone (one connection): the counts read first are still exact.
      const chosen: JobRow[] = [];
      let skipped = false;
      for (const row of rows) {
        if (chosen.length >= limit) break;
        const n = leased.get(row.destination) ?? 0;
        if (n >= perDestination) {
          skipped = true;
          continue;
        }
        leased.set(row.destination, n + 1);
        chosen.push(row);
      }
      const ids = chosen.map((r) => r.id);
      let updated = 0;
      for (const part of chunks(ids)) {
        updated += await trx('mail_jobs')
          .whereIn('id', part)
          .andWhere('status', 'pending')
          .andWhere((q) => q.whereNull('lease_until').orWhere('lease_until', '<=', now))
          .update({
            lease_owner: owner,
            lease_until: now + leaseMs,
            attempts: trx.raw('?? + 1', ['attempts']),
            updated_at: now,
          });
      }
      const leasedRows = chosen.map((r) => ({
        ...r,
        lease_owner: owner,
        lease_until: now + leaseMs,
        attempts: dbNumber(r.attempts) + 1,
        updated_at: now,
      }));
      const more = full.length > 0 || skipped || chosen.length >= limit || rows.length >= candidateLimit;
      return { ids, rows: leasedRows, updated, more };
    });
    const { ids, more } = claimed;
    if (ids.length === 0) return { jobs: [], more };
    // The candidates were locked (PostgreSQL) or the transaction ran alone (SQLite), so every guarded update
    // applies; should one not have, the jobs this owner really holds are read back instead.
    if (claimed.updated === ids.length) return { jobs: claimed.rows.map((r) => toJob<P>(r)), more };
    const rows: JobRow[] = [];
    for (const part of chunks(ids)) {
      rows.push(
        ...((await this.#knex('mail_jobs').select().whereIn('id', part).andWhere('lease_owner', owner)) as JobRow[]),
      );
    }
    const order = new Map(ids.map((id, i) => [id, i]));
    const jobs = rows.sort((a, b) => (order.get(a.id) ?? 0) - (order.get(b.id) ?? 0)).map((r) => toJob<P>(r));
    return { jobs, more };
  }

  /** Marks a leased job done. Only the current lease owner may (`not_lease_owner`). */
  async complete(id: string, owner: string): Promise<void> {
    await this.#finish(id, owner, { status: 'done', last_error: null });
  }

  /** Gives a leased job up for good (a permanent error, such as an unknown recipient). */
  async fail(id: string, owner: string, error: unknown): Promise<void> {
    await this.#finish(id, owner, { status: 'failed', last_error: errorText(error) });
  }

  /**
   * Returns a leased job to the queue after a failed attempt, due again after `retryDelayMs(attempts)` (from `retryBaseMs`), or
   * later when `notBefore` says so (a Retry-After). A job enqueued `giveUpAfterMs` ago or more is failed
   * instead and `{ gaveUp: true }` is answered, so the caller can tell the sender; the last retry is
   * scheduled no later than that deadline.
   */
  async retry(id: string, owner: string, error: unknown, options: { notBefore?: number } = {}): Promise<RetryResult> {
    checkString(owner, 'owner', 64);
    const row = (await this.#knex('mail_jobs').first().where({ id })) as JobRow | undefined;
    const job = checkLease(row, owner);
    const now = this.#now();
    const deadline = job.createdAt + this.#giveUpAfterMs;
    if (now >= deadline) {
      await this.#finish(id, owner, { status: 'failed', last_error: errorText(error) });
      return { gaveUp: true };
    }
    let next = now + retryDelayMs(job.attempts, this.#random, this.#retryBaseMs);
    if (options.notBefore !== undefined) next = Math.max(next, options.notBefore);
    next = Math.min(next, deadline);
    await this.#finish(id, owner, { status: 'pending', next_attempt_at: next, last_error: errorText(error) });
    return { gaveUp: false, nextAttemptAt: next };
  }

  /**
   * Returns a leased job to the queue, due at `at`, as planned work rather than a failure: a recurring job
   * (the blob collector) or a check that is not finished yet (a relay waiting for its transfers). No error
   * is recorded and the give-up deadline does not apply; `resetAttempts` starts the attempt count over, so
   * the count says how many runs in a row went wrong, or how many checks have been made.
   */
  async reschedule(
    id: string,
    owner: string,
    at: number,
    options: { resetAttempts?: boolean; error?: unknown } = {},
  ): Promise<void> {
    checkSize(at);
    await this.#finish(id, owner, {
      status: 'pending',
      next_attempt_at: at,
      last_error: options.error === undefined ? null : errorText(options.error),
      ...(options.resetAttempts ? { attempts: 0 } : {}),
    });
  }

  /**
   * Brings a pending job that is not leased forward so that it is due no later than `notAfter` (an
   * operator's "retry now", or a shorter interval after a configuration change). Answers whether it moved.
   */
  async advance(kind: string, key: string, notAfter: number = this.#now()): Promise<boolean> {
    checkString(kind, 'kind', 16);
    checkString(key, 'key', 512);
    checkSize(notAfter);
    const now = this.#now();
    const n = await this.#knex('mail_jobs')
      .where({ kind, key, status: 'pending' })
      .andWhere('next_attempt_at', '>', notAfter)
      .andWhere((q) => q.whereNull('lease_until').orWhere('lease_until', '<=', now))
      .update({ next_attempt_at: notAfter, updated_at: now });
    return n > 0;
  }

  /** Lengthens a lease the owner still holds (a long fetch). */
  async extend(id: string, owner: string, leaseMs: number): Promise<void> {
    checkString(owner, 'owner', 64);
    checkDuration(leaseMs, 'leaseMs');
    const now = this.#now();
    const n = await this.#knex('mail_jobs')
      .where({ id, lease_owner: owner, status: 'pending' })
      .update({ lease_until: now + leaseMs, updated_at: now });
    if (n === 0) await this.#explain(id, owner);
  }

  /**
   * Graceful shutdown: the owner's leased jobs are due again at once, for other workers, and the attempt
   * the shutdown interrupted is not counted. Answers how many were released.
   *
   * With `abandoned`, the owner is a process that died holding them (killed, crashed): they are due again
   * as well, but the attempt counts, for it may be what brought the process down.
   */
  async release(owner: string, options: { abandoned?: boolean } = {}): Promise<number> {
    checkString(owner, 'owner', 64);
    return this.#knex('mail_jobs')
      .where({ lease_owner: owner, status: 'pending' })
      .update({
        lease_owner: null,
        lease_until: null,
        ...(options.abandoned
          ? {}
          : { attempts: this.#knex.raw('case when ?? > 0 then ?? - 1 else 0 end', ['attempts', 'attempts']) }),
        updated_at: this.#now(),
      });
  }

  /** The owners holding a lease, not yet expired, on pending jobs of `kind`: a few, one per worker. */
  async leaseOwners(kind: string): Promise<string[]> {
    checkString(kind, 'kind', 16);
    const rows = (await this.#knex('mail_jobs')
      .distinct('lease_owner')
      .where({ kind, status: 'pending' })
      .andWhere('lease_until', '>', this.#now())) as { lease_owner: string | null }[];
    return rows.flatMap((r) => (r.lease_owner === null ? [] : [r.lease_owner]));
  }

  /** Stops a pending job (a withdrawn share needs no transfer); a running attempt then cannot complete it. */
  async cancel(kind: string, key: string): Promise<boolean> {
    const n = await this.#knex('mail_jobs')
      .where({ kind, key, status: 'pending' })
      .update({ status: 'cancelled', lease_owner: null, lease_until: null, updated_at: this.#now() });
    return n > 0;
  }

  /** Pending jobs (leased or not) per kind, for metrics. */
  async depth(): Promise<Record<string, number>> {
    const rows = (await this.#knex('mail_jobs')
      .select('kind')
      .count({ n: '*' })
      .where('status', 'pending')
      .groupBy('kind')) as { kind: string; n: unknown }[];
    return Object.fromEntries(rows.map((r) => [r.kind, dbNumber(r.n)]));
  }

  /** Age of the oldest pending job per kind, for metrics (kinds with none are absent). */
  async oldestAgeMs(): Promise<Record<string, number>> {
    const now = this.#now();
    const rows = (await this.#knex('mail_jobs')
      .select('kind')
      .min({ oldest: 'created_at' })
      .where('status', 'pending')
      .groupBy('kind')) as { kind: string; oldest: unknown }[];
    return Object.fromEntries(rows.map((r) => [r.kind, Math.max(0, now - dbNumber(r.oldest))]));
  }

  /** Forgets finished jobs (done, failed, cancelled) last changed `olderThanMs` ago or more. */
  async purge(olderThanMs: number): Promise<number> {
    if (!Number.isSafeInteger(olderThanMs) || olderThanMs < 0) throw new TypeError('olderThanMs must be >= 0');
    return this.#knex('mail_jobs')
      .whereIn('status', ['done', 'failed', 'cancelled'])
      .andWhere('updated_at', '<=', this.#now() - olderThanMs)
      .delete();
  }

  /** Ends or reschedules a lease with one guarded update: it applies only while `owner` holds the job. */
  async #finish(id: string, owner: string, columns: Record<string, unknown>): Promise<void> {
    await finishLeased(this.#knex, id, owner, columns, this.#now());
  }

  async #explain(id: string, owner: string): Promise<never> {
    return explainLostLease(this.#knex, id, owner);
  }
}

function checkLease(row: JobRow | undefined, owner: string): Job {
  if (row === undefined) throw new MailStoreError('job_not_found', 'no such job');
  if (row.lease_owner !== owner || row.status !== 'pending') {
    throw new MailStoreError('not_lease_owner', 'the job is not leased to this owner');
  }
  return toJob(row);
}

async function finishLeased(
  knex: Knex,
  id: string,
  owner: string,
  columns: Record<string, unknown>,
  now: number,
): Promise<void> {
  checkString(owner, 'owner', 64);
  const n = await knex('mail_jobs')
    .where({ id, lease_owner: owner, status: 'pending' })
    .update({ ...columns, lease_owner: null, lease_until: null, updated_at: now });
  if (n === 0) await explainLostLease(knex, id, owner);
}

/** After a guarded update changed nothing: `job_not_found`, or `not_lease_owner`. */
async function explainLostLease(knex: Knex, id: string, owner: string): Promise<never> {
  const row = (await knex('mail_jobs').first().where({ id })) as JobRow | undefined;
  checkLease(row, owner);
  // Held a moment ago and lost since: someone reclaimed the lease in between.
  throw new MailStoreError('not_lease_owner', 'the job is not leased to this owner');
}

/**
 * `JobQueue.complete` inside the caller's transaction, so that the job's effect and its completion commit
 * together (see `JobQueue.requeue`). Throws `not_lease_owner` when `owner` no longer holds the job.
 */
export async function completeLeasedJob(
  trx: Knex.Transaction,
  job: { readonly id: string; readonly owner: string },
  now: number,
): Promise<void> {
  await finishLeased(trx, job.id, job.owner, { status: 'done', last_error: null }, now);
}

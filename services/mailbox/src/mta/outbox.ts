/**
 * The outbox: transfers queued copies to other domains (PROTOCOL.md §5). Work is claimed from the durable
 * queue with a lease, so a crashed worker's transfers are retried by another; a transfer is idempotent at
 * the receiver (Message-ID + eht), so a retry after a lost answer never duplicates mail. Temporary failures
 * (a peer down, slow or answering nonsense, 408, 429, 5xx) back off with jitter from a minute up to an hour
 * and give up after five days; permanent refusals fail at once. Either way the sender gets a
 * delivery-failure notice naming each recipient that will not get the message, and why.
 *
 * A run never throws: a failure to record its outcome (a database blip, a full disk for the notice, a lease
 * taken over) is logged, and the job, still leased, is transferred again once its lease expires.
 */
import type { HttpClient, HttpResponse, Logger } from '@federizer/common';
import {
  createDpopProof,
  domainOf,
  importDpopKey,
  normalizeAddress,
  type DpopKey,
  type JwsAlg,
  type MailboxMetadata,
} from '@federizer/protocol';
import type { JWK } from 'jose';
import { LeasedWorker } from './worker.js';
import { describeError } from './as-client.js';
import { MailStoreError, type Job, type JobQueue, type Share, type ShareStore } from '../storage/index.js';
import type { TransferJob } from '../api/send.js';

export interface OutboxDeps {
  readonly jobs: JobQueue;
  readonly shares: ShareStore;
  readonly mailboxOf: (domain: string) => Promise<MailboxMetadata>;
  readonly http: HttpClient;
  readonly logger: Logger;
  readonly now: () => number;
  /** Tells the sender that some recipients will not get the message. */
  readonly notifyFailure: (
    share: { address: string; messageId: string },
    failed: readonly { address: string; reason: string }[],
  ) => Promise<void>;
  readonly onOutcome?: (outcome: 'transferred' | 'retried' | 'failed', seconds: number) => void;
  /** The sender's account changed (a delivery status), so that its long polls answer at once. */
  readonly onChanged?: (address: string) => void;
  readonly concurrency?: number;
  readonly perDestination?: number;
  readonly pollMs?: number;
  /**
   * The lease of a claimed transfer (default TRANSFER_LEASE_MS), renewed every third of it while the
   * transfer runs and its outcome is recorded. The request itself must end within half of it, and its
   * answer may pause for at most a quarter of it: a peer that trickles its answer is cut off and retried
   * long before the lease could run out.
   */
  readonly leaseMs?: number;
}

export const TRANSFER_LEASE_MS = 120_000;

/** A transfer's answer lists recipients: far below this. A longer one is not read into memory. */
const MAX_ANSWER_BYTES = 1024 * 1024;
/** A rejection's reason is kept up to this length in the delivery's detail and the notice. */
const MAX_REASON_LENGTH = 500;
/** The reason of a recipient of the destination that a well-formed answer names in neither list. */
export const NOT_NAMED = "not named in the receiver's answer";

class Permanent extends Error {}
class Temporary extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}
/** The lease was taken over while the transfer ran: its new holder decides the job's fate. */
class LeaseLost extends Error {}

interface Rejection {
  readonly address: string;
  readonly reason: string;
}

/** A 200 or 202 answer whose body has the shape of PROTOCOL §5's. */
interface TransferAnswer {
  readonly accepted: readonly string[];
  readonly rejected: readonly Rejection[];
}

type Outcome =
  /** Withdrawn before it went out: nothing to transfer. */
  | { readonly kind: 'nothing' }
  | { readonly kind: 'answered'; readonly share: Share; readonly answer: TransferAnswer }
  | { readonly kind: 'temporary'; readonly error: Temporary }
  | { readonly kind: 'permanent'; readonly error: Permanent };

function isAddress(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= 254 && value.includes('@');
}

/**
 * The answer's body as PROTOCOL §5 shapes it: `accepted`, an array of address strings; `rejected` (may be
 * absent), an array of `{address, reason}` objects. Anything else (not JSON, empty, an HTML page, a string
 * where a list belongs, a rejection without its reason, a recipient both accepted and rejected) is
 * answered as the description of what is wrong with it.
 */
function parseAnswer(text: string): TransferAnswer | string {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return text.trim() === '' ? 'it is empty' : 'it is not JSON';
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return 'it is not a JSON object';
  const { accepted, rejected = [] } = json as { accepted?: unknown; rejected?: unknown };
  if (!Array.isArray(accepted)) return '"accepted" is not a list';
  if (!accepted.every(isAddress)) return '"accepted" holds something that is not an address';
  if (!Array.isArray(rejected)) return '"rejected" is not a list';
  const rejections: Rejection[] = [];
  for (const r of rejected as unknown[]) {
    const { address, reason } = (typeof r === 'object' && r !== null ? r : {}) as Record<string, unknown>;
    if (!isAddress(address) || typeof reason !== 'string')
      return '"rejected" holds something that is not an {address, reason} object';
    rejections.push({ address, reason: reason.slice(0, MAX_REASON_LENGTH) || 'rejected' });
  }
  const acceptedSet = new Set(accepted.map(normalizeAddress));
  const both = rejections.find((r) => acceptedSet.has(normalizeAddress(r.address)));
  if (both !== undefined) return `it names ${both.address} both accepted and rejected`;
  return { accepted, rejected: rejections };
}

/** A duration as the errors and the give-up notice say it: "5 days", "36 hours", "90 minutes", "45 seconds". */
function describeDuration(ms: number): string {
  const units: [number, string][] = [
    [86_400_000, 'day'],
    [3_600_000, 'hour'],
    [60_000, 'minute'],
  ];
  // The largest unit that counts at least two of them: "36 hours" says more than "1 day".
  for (const [size, name] of units) {
    if (ms >= 2 * size) return `${Math.round(ms / size)} ${name}s`;
  }
  // Below ten seconds (short leases, in tests) to a tenth: "1.5 seconds".
  const seconds = ms < 10_000 ? Math.round(Math.max(0, ms) / 100) / 10 : Math.round(ms / 1000);
  return `${seconds} second${seconds === 1 ? '' : 's'}`;
}

export class Outbox extends LeasedWorker<TransferJob> {
  readonly #leaseMs: number;

  constructor(private readonly deps: OutboxDeps) {
    const leaseMs = deps.leaseMs ?? TRANSFER_LEASE_MS;
    super({
      kind: 'transfer',
      jobs: deps.jobs,
      logger: deps.logger,
      concurrency: deps.concurrency ?? 16,
      // Half the slots at most for one destination: a slow or rate-limiting peer cannot hold them all.
      perDestination: deps.perDestination ?? Math.max(1, Math.floor((deps.concurrency ?? 16) / 2)),
      leaseMs,
      pollMs: deps.pollMs,
    });
    this.#leaseMs = leaseMs;
  }

  protected async run(job: Job<TransferJob>): Promise<void> {
    const started = this.deps.now();
    const seconds = () => (this.deps.now() - started) / 1000;
    // The lease is renewed while the transfer runs and its outcome is recorded (as the fetcher does). Losing
    // it means another worker may run this transfer now: the request stops and this run decides nothing.
    const lease = new AbortController();
    const renew = setInterval(
      () => {
        this.deps.jobs.extend(job.id, this.owner, this.#leaseMs).catch((err: unknown) => {
          if (err instanceof MailStoreError && (err.code === 'not_lease_owner' || err.code === 'job_not_found')) {
            lease.abort(new LeaseLost(`the lease was lost: ${describeError(err)}`));
          } else {
            // A database blip: the lease still runs, and the next renewal may succeed.
            this.deps.logger.warn({ err, domain: job.destination }, 'transfer lease not renewed');
          }
        });
      },
      Math.max(1000, Math.floor(this.#leaseMs / 3)),
    ).unref();
    try {
      let outcome: Outcome;
      try {
        outcome = await this.#transfer(job, lease.signal);
      } catch (e) {
        if (e instanceof Temporary) outcome = { kind: 'temporary', error: e };
        else if (e instanceof Permanent) outcome = { kind: 'permanent', error: e };
        // A failure of this mailbox (its database, say) decides nothing against the transfer.
        else outcome = { kind: 'temporary', error: new Temporary(describeError(e)) };
      }
      // Checked after the transfer whatever it answered: the lease's new holder records its own outcome.
      if (lease.signal.aborted) {
        this.deps.logger.warn(
          { domain: job.destination, reason: describeError(lease.signal.reason) },
          'transfer stopped, its outcome not recorded: another worker holds its lease now',
        );
        return;
      }
      try {
        await this.#settle(job, outcome, seconds);
      } catch (err) {
        // Nothing is lost: the job, still leased to this worker (or already to another), is transferred
        // again once that lease expires, which the receiver's idempotency (PROTOCOL §5) makes safe.
        const takenOver = err instanceof MailStoreError && err.code === 'not_lease_owner';
        this.deps.logger[takenOver ? 'warn' : 'error'](
          { err, domain: job.destination, job: job.id },
          takenOver
            ? 'transfer outcome not recorded: its lease was taken over, and its new holder decides'
            : 'transfer outcome not recorded; the transfer is retried when its lease expires',
        );
      }
    } finally {
      clearInterval(renew);
    }
  }

  /**
   * Records an outcome: the deliveries and the sender's notice, then the job's end, so that a failure on the
   * way leaves the job leased, and the next attempt (once the lease expires) records what is still to record.
   * (A job given up is the exception: the queue ends it first.)
   */
  async #settle(job: Job<TransferJob>, outcome: Outcome, seconds: () => number): Promise<void> {
    const domain = job.destination;
    switch (outcome.kind) {
      case 'nothing':
        await this.deps.jobs.complete(job.id, this.owner);
        this.deps.onOutcome?.('transferred', seconds());
        return;
      case 'answered': {
        const { share, answer } = outcome;
        // Only this destination's recipients still queued are decided: an answer naming other domains'
        // recipients decides nothing for them.
        const queued = await this.#queuedOf(share, domain);
        const accepted = new Set(answer.accepted.map(normalizeAddress));
        const reasons = new Map(answer.rejected.map((r) => [normalizeAddress(r.address), r.reason]));
        const transferred: string[] = [];
        const failed: Rejection[] = [];
        for (const [key, address] of queued) {
          if (accepted.has(key)) transferred.push(address);
          // Named in neither list of a well-formed answer: failed, not retried. A retry is answered with the
          // same recorded answer (PROTOCOL §5, 200), which would not name it either: it would only wait five
          // days to be given up. The sender is told now.
          else failed.push({ address, reason: reasons.get(key) ?? NOT_NAMED });
        }
        for (const address of transferred)
          await this.deps.shares.setDelivery(share, { recipient: address }, 'transferred');
        // The notice before the statuses: should it fail, the deliveries are still queued, and the next
        // attempt tells the sender again.
        if (failed.length > 0) await this.deps.notifyFailure(share, failed);
        for (const f of failed)
          await this.deps.shares.setDelivery(share, { recipient: f.address }, 'failed', { detail: f.reason });
        this.deps.onChanged?.(share.address);
        await this.deps.jobs.complete(job.id, this.owner);
        this.deps.onOutcome?.('transferred', seconds());
        return;
      }
      case 'temporary': {
        const e = outcome.error;
        const retried = await this.deps.jobs.retry(
          job.id,
          this.owner,
          e.message,
          e.retryAfterMs === undefined ? {} : { notBefore: this.deps.now() + e.retryAfterMs },
        );
        if (!retried.gaveUp) {
          this.deps.onOutcome?.('retried', seconds());
          this.deps.logger.info({ domain, attempt: job.attempts, reason: e.message }, 'transfer will be retried');
          return;
        }
        // Given up: the queue has failed the job already, so no later attempt will tell the sender. The
        // statuses first (the sender sees them even when the notice cannot be written); a failure here is
        // logged as what it is.
        this.deps.onOutcome?.('failed', seconds());
        this.deps.logger.warn({ domain, reason: e.message }, 'transfer failed');
        const reason = `gave up after ${describeDuration(this.deps.now() - job.createdAt)}: ${e.message}`;
        try {
          const share = await this.deps.shares.get(job.payload.share);
          if (share === undefined) return;
          const failed = [...(await this.#queuedOf(share, domain)).values()].map((address) => ({ address, reason }));
          for (const f of failed)
            await this.deps.shares.setDelivery(share, { recipient: f.address }, 'failed', { detail: reason });
          this.deps.onChanged?.(share.address);
          if (failed.length > 0) await this.deps.notifyFailure(share, failed);
        } catch (err) {
          this.deps.logger.error(
            { err, domain, job: job.id, reason },
            'transfer given up, but the sender was not told',
          );
        }
        return;
      }
      case 'permanent': {
        const reason = outcome.error.message;
        const share = await this.deps.shares.get(job.payload.share);
        if (share !== undefined) {
          const failed = [...(await this.#queuedOf(share, domain)).values()].map((address) => ({ address, reason }));
          if (failed.length > 0) await this.deps.notifyFailure(share, failed);
          for (const f of failed)
            await this.deps.shares.setDelivery(share, { recipient: f.address }, 'failed', { detail: reason });
          this.deps.onChanged?.(share.address);
        }
        await this.deps.jobs.fail(job.id, this.owner, reason);
        this.deps.onOutcome?.('failed', seconds());
        this.deps.logger.warn({ domain, reason }, 'transfer failed');
        return;
      }
    }
  }

  /**
   * The share's deliveries to `domain` still queued, by their comparison form. Only these are decided by
   * an outcome: a delivery already transferred (by an earlier attempt whose end was not recorded), fetched
   * or withdrawn is never moved to failed.
   */
  async #queuedOf(share: Share, domain: string): Promise<Map<string, string>> {
    const deliveries = await this.deps.shares.deliveries({ share: share.id });
    return new Map(
      deliveries
        .filter((d) => d.status === 'queued' && domainOf(d.recipient) === domain.toLowerCase())
        .map((d) => [normalizeAddress(d.recipient), d.recipient]),
    );
  }

  async #transfer(job: Job<TransferJob>, lease: AbortSignal): Promise<Outcome> {
    // The share, its withdrawal and the sent message's body: one read.
    const found = await this.deps.shares.forTransfer(job.payload.share, job.destination);
    if (found === undefined) throw new Permanent('the message was deleted before it was transferred');
    const { share, withdrawn, body } = found;
    if (withdrawn) return { kind: 'nothing' }; // unsent: nothing to do
    if (share.expiresAt <= this.deps.now()) throw new Permanent('the share window ended before the transfer succeeded');
    if (body === undefined) throw new Permanent('the message was deleted before it was transferred');
    let endpoint: string;
    try {
      endpoint = (await this.deps.mailboxOf(job.destination)).transfer_endpoint;
    } catch (e) {
      // No records, or the peer's metadata unreachable: DNS or the peer may come back.
      throw new Temporary(`discovering ${job.destination}: ${(e as Error).message}`);
    }
    let key: DpopKey;
    try {
      key = await importDpopKey(share.dpopKey as JWK, ((share.dpopKey as JWK).alg ?? 'ES256') as JwsAlg);
    } catch (e) {
      throw new Permanent(`the copy's DPoP key cannot be used: ${describeError(e)}`);
    }
    const assertion = (share.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    const { status, text, retryAfter } = await this.#post(endpoint, key, assertion, share, body, lease);
    if (status === 200 || status === 202) {
      const answer = parseAnswer(text);
      // A receiver (or a proxy before it) answering success with something else has not told which
      // recipients it took: nothing is recorded and the transfer is retried, which is safe (PROTOCOL §5).
      if (typeof answer === 'string')
        throw new Temporary(
          `${job.destination} answered ${status} with a body that is not a transfer answer: ${answer}`,
        );
      return { kind: 'answered', share, answer };
    }
    let json: { error?: unknown; error_description?: unknown } = {};
    try {
      json = (JSON.parse(text) ?? {}) as typeof json;
    } catch {
      // described by the status below
    }
    const error = typeof json.error === 'string' ? json.error.slice(0, 100) : undefined;
    const description = typeof json.error_description === 'string' ? json.error_description.slice(0, 300) : '';
    const why = `${endpoint} answered ${status}${error ? ` ${error}: ${description}` : ''}`;
    // 408: the receiver closed a request it waited too long for; RFC 9110 §15.5.9 lets the client repeat it.
    if (status === 408 || status === 429 || status >= 500) {
      const seconds = Number(retryAfter);
      throw new Temporary(why, Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : undefined);
    }
    throw new Permanent(why);
  }

  /**
   * POSTs the copy and reads the answer, within deadlines well inside the lease: the whole exchange within
   * half of it, and no silence of more than a quarter of it: from the start of the request (sending the copy
   * and the receiver's checks included) to the answer's headers, then between the answer's bytes. A peer
   * that is down, stalls or trickles its answer is a temporary failure, said plainly.
   */
  async #post(
    endpoint: string,
    key: DpopKey,
    assertion: string,
    share: Share,
    body: unknown,
    lease: AbortSignal,
  ): Promise<{ status: number; text: string; retryAfter: string | undefined }> {
    const totalMs = Math.floor(this.#leaseMs / 2);
    const idleMs = Math.floor(this.#leaseMs / 4);
    const stop = new AbortController();
    const total = setTimeout(
      () => stop.abort(new Temporary(`${endpoint} did not finish answering within ${describeDuration(totalMs)}`)),
      totalMs,
    );
    const idle = setTimeout(
      () => stop.abort(new Temporary(`${endpoint} sent nothing for ${describeDuration(idleMs)}`)),
      idleMs,
    );
    const onLease = () => stop.abort(lease.reason);
    if (lease.aborted) onLease();
    else lease.addEventListener('abort', onLease, { once: true });
    let res: HttpResponse | undefined;
    try {
      res = await this.deps.http.request(endpoint, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `DPoP ${assertion}`,
          dpop: await createDpopProof(key, { htm: 'POST', htu: endpoint, accessToken: assertion }),
        },
        body: JSON.stringify({ message: { envelope: share.envelope, body } }),
        signal: stop.signal,
        headersTimeoutMs: idleMs,
      });
      idle.refresh();
      // Read inside the try: an answer cut off halfway (or too long to be a transfer's) is retried, and the
      // transfer is idempotent at the receiver, so a retry after it accepted changes nothing.
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        idle.refresh();
        size += chunk.byteLength;
        if (size > MAX_ANSWER_BYTES) throw new Error(`the answer is longer than ${MAX_ANSWER_BYTES} bytes`);
        chunks.push(chunk);
      }
      return {
        status: res.status,
        text: Buffer.concat(chunks, size).toString('utf8'),
        retryAfter: res.header('retry-after'),
      };
    } catch (e) {
      if (stop.signal.aborted) throw stop.signal.reason;
      throw new Temporary(`${endpoint} did not answer: ${describeError(e)}`);
    } finally {
      clearTimeout(total);
      clearTimeout(idle);
      lease.removeEventListener('abort', onLease);
      res?.body.destroy();
    }
  }
}

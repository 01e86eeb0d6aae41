/**
 * The outbox: transfers queued copies to other domains (PROTOCOL.md §5). Work is claimed from the durable
 * queue with a lease, so a crashed worker's transfers are retried by another; a transfer is idempotent at
 * the receiver (Message-ID + eht), so a retry after a lost answer never duplicates mail. Temporary failures
 * (a peer down, 429, 5xx) back off with jitter from a minute up to an hour and give up after five days;
 * permanent refusals fail at once. Either way the sender gets a delivery-failure notice.
 */
import type { HttpClient, Logger } from '@federizer/common';
import { createDpopProof, importDpopKey, type JwsAlg, type MailboxMetadata } from '@federizer/protocol';
import type { JWK } from 'jose';
import { LeasedWorker } from './worker.js';
import { describeError } from './as-client.js';
import type { Job, JobQueue, ShareStore } from '../storage/index.js';
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
}

/** A transfer's answer lists recipients: far below this. A longer one is not read into memory. */
const MAX_ANSWER_BYTES = 1024 * 1024;

class Permanent extends Error {}
class Temporary extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

export class Outbox extends LeasedWorker<TransferJob> {
  constructor(private readonly deps: OutboxDeps) {
    super({
      kind: 'transfer',
      jobs: deps.jobs,
      logger: deps.logger,
      concurrency: deps.concurrency ?? 16,
      // Half the slots at most for one destination: a slow or rate-limiting peer cannot hold them all.
      perDestination: deps.perDestination ?? Math.max(1, Math.floor((deps.concurrency ?? 16) / 2)),
      leaseMs: 120_000,
      pollMs: deps.pollMs,
    });
  }

  protected async run(job: Job<TransferJob>): Promise<void> {
    const started = this.deps.now();
    const seconds = () => (this.deps.now() - started) / 1000;
    try {
      await this.#transfer(job);
      await this.deps.jobs.complete(job.id, this.owner);
      this.deps.onOutcome?.('transferred', seconds());
    } catch (e) {
      const share = await this.deps.shares.get(job.payload.share);
      if (e instanceof Temporary) {
        const retried = await this.deps.jobs.retry(
          job.id,
          this.owner,
          e.message,
          e.retryAfterMs === undefined ? {} : { notBefore: this.deps.now() + e.retryAfterMs },
        );
        if (!retried.gaveUp) {
          this.deps.onOutcome?.('retried', seconds());
          this.deps.logger.info(
            { domain: job.destination, attempt: job.attempts, reason: e.message },
            'transfer will be retried',
          );
          return;
        }
      } else {
        await this.deps.jobs.fail(job.id, this.owner, (e as Error).message);
      }
      this.deps.onOutcome?.('failed', seconds());
      this.deps.logger.warn({ domain: job.destination, reason: (e as Error).message }, 'transfer failed');
      if (share) {
        const reason = e instanceof Temporary ? `gave up after 5 days: ${e.message}` : (e as Error).message;
        await this.deps.shares.setDelivery(share, { domain: job.destination }, 'failed', { detail: reason });
        this.deps.onChanged?.(share.address);
        const failed = share.recipients
          .filter((r) => r.endsWith(`@${job.destination}`))
          .map((address) => ({ address, reason }));
        await this.deps.notifyFailure(share, failed);
      }
    }
  }

  async #transfer(job: Job<TransferJob>): Promise<void> {
    // The share, its withdrawal and the sent message's body: one read.
    const found = await this.deps.shares.forTransfer(job.payload.share, job.destination);
    if (found === undefined) throw new Permanent('the message was deleted before it was transferred');
    const { share, withdrawn, body } = found;
    if (withdrawn) return; // unsent: nothing to do
    if (share.expiresAt <= this.deps.now()) throw new Permanent('the share window ended before the transfer succeeded');
    if (body === undefined) throw new Permanent('the message was deleted before it was transferred');
    let endpoint: string;
    try {
      endpoint = (await this.deps.mailboxOf(job.destination)).transfer_endpoint;
    } catch (e) {
      // No records, or the peer's metadata unreachable: DNS or the peer may come back.
      throw new Temporary(`discovering ${job.destination}: ${(e as Error).message}`);
    }
    const key = await importDpopKey(share.dpopKey as JWK, ((share.dpopKey as JWK).alg ?? 'ES256') as JwsAlg);
    const assertion = (share.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    let res;
    let text: string;
    try {
      res = await this.deps.http.request(endpoint, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `DPoP ${assertion}`,
          dpop: await createDpopProof(key, { htm: 'POST', htu: endpoint, accessToken: assertion }),
        },
        body: JSON.stringify({ message: { envelope: share.envelope, body } }),
      });
      // Read inside the try: an answer cut off halfway (or too long to be a transfer's) is retried, and the
      // transfer is idempotent at the receiver, so a retry after it accepted changes nothing.
      text = await res.text(MAX_ANSWER_BYTES);
    } catch (e) {
      throw new Temporary(`${endpoint} did not answer: ${describeError(e)}`);
    }
    let json: {
      accepted?: string[];
      rejected?: { address: string; reason: string }[];
      error?: string;
      error_description?: string;
    } = {};
    try {
      json = JSON.parse(text) as typeof json;
    } catch {
      // described by the status below
    }
    if (res.status === 200 || res.status === 202) {
      for (const address of json.accepted ?? [])
        await this.deps.shares.setDelivery(share, { recipient: address }, 'transferred');
      const rejected = json.rejected ?? [];
      for (const r of rejected)
        await this.deps.shares.setDelivery(share, { recipient: r.address }, 'failed', { detail: r.reason });
      this.deps.onChanged?.(share.address);
      if (rejected.length > 0) await this.deps.notifyFailure(share, rejected);
      return;
    }
    const why = `${endpoint} answered ${res.status}${json.error ? ` ${json.error}: ${json.error_description ?? ''}` : ''}`;
    if (res.status === 429 || res.status >= 500) {
      const retryAfter = Number(res.header('retry-after'));
      throw new Temporary(why, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined);
    }
    throw new Permanent(why);
  }

  /** Stops claiming, waits for transfers in flight, and hands back any lease still held. */
}

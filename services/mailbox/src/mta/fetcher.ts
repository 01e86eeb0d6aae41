/**
 * The fetch queue's worker (PROTOCOL.md §6): for each Content-ID this domain's received mail references
 * and does not hold, exchange the newest assertion at the domain's own AS for an access token to the
 * origin mailbox, POST the envelope to the origin's fetch endpoint, and stream the answer into a partial
 * blob, resuming with Range after an interruption. The bytes are published only if their digest is the
 * Content-ID; a mismatch is discarded and retried. One fetch serves every local recipient.
 */
import type { HttpClient, Logger } from '@federizer/common';
import {
  createDpopProof,
  generateDpopKey,
  headerValue,
  isHeadersBlock,
  parseSingleMailbox,
  type Block,
  type MailboxMetadata,
} from '@federizer/protocol';
import { BlobStoreError, type DiskBlobStore } from '../blobs/index.js';
import { LeasedWorker } from './worker.js';
import type { Job, JobQueue, MessageStore } from '../storage/index.js';
import { ExchangeFailure, describeError, type AsClient } from './as-client.js';

/** What the transfer endpoint queues: one fetch per Content-ID, with the envelope of a message referencing it. */
export interface FetchJob {
  readonly messageId: string;
  /** The envelope as transferred (without the receiving mailbox's own block). */
  readonly envelope: readonly Block[];
  readonly contentId: string;
  readonly size: number;
}

export interface FetcherDeps {
  readonly domain: string;
  readonly jobs: JobQueue;
  readonly blobs: DiskBlobStore;
  readonly messages: MessageStore;
  readonly as: AsClient;
  readonly mailboxOf: (domain: string) => Promise<MailboxMetadata>;
  readonly http: HttpClient;
  readonly logger: Logger;
  readonly now: () => number;
  readonly maxResourceSize: number;
  readonly onFetched?: (bytes: number, seconds: number) => void;
  /** Called with the accounts whose messages changed, for long polls. */
  readonly onChanged?: (addresses: readonly string[]) => void;
  readonly concurrency?: number;
  /** Fetches leased at once from one origin domain, across replicas (default half of `concurrency`). */
  readonly perOrigin?: number;
  readonly pollMs?: number;
  /**
   * The lease of a claimed fetch (default 60 s), renewed every third of it while the fetch runs: a worker
   * that dies (kill -9) holds its fetch back for at most this long. An answer whose bytes stop flowing
   * for this long is abandoned and retried.
   */
  readonly leaseMs?: number;
}

export const FETCH_LEASE_MS = 60_000;
/** How much of an error answer is read for its reason: a longer one is cut off. */
const ERROR_ANSWER_BYTES = 64 * 1024;

class Permanent extends Error {}
class Temporary extends Error {
  /** From the answer's Retry-After: the next attempt waits at least this long. */
  readonly retryAfterMs: number | undefined;
  constructor(message: string, options?: ErrorOptions & { retryAfterMs?: number }) {
    super(message, options);
    this.retryAfterMs = options?.retryAfterMs;
  }
}

/** Retry-After in seconds (RFC 9110 §10.2.3; an HTTP-date is not used by the peers this talks to). */
function retryAfterMs(value: string | undefined): number | undefined {
  const seconds = Number(value);
  return value !== undefined && Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : undefined;
}

/** The domain of the newest signed block's sender: whose AS issued the newest assertion. */
function newestSenderDomain(envelope: readonly Block[]): string {
  const block = envelope.find(isHeadersBlock)!;
  const sender = headerValue(block.headers, 'Forwarded-From') ?? headerValue(block.headers, 'From')!;
  return parseSingleMailbox(sender).domain;
}

/** The domain of the origin block's From: the mailbox that holds the resources. */
function originDomain(envelope: readonly Block[]): string {
  const origin = envelope.at(-1)!;
  return parseSingleMailbox(headerValue((origin as { headers: Parameters<typeof headerValue>[0] }).headers, 'From')!)
    .domain;
}

export class Fetcher extends LeasedWorker<FetchJob> {
  constructor(private readonly deps: FetcherDeps) {
    super({
      kind: 'fetch',
      jobs: deps.jobs,
      logger: deps.logger,
      concurrency: deps.concurrency ?? 8,
      perDestination: deps.perOrigin ?? Math.max(1, Math.floor((deps.concurrency ?? 8) / 2)),
      leaseMs: deps.leaseMs ?? FETCH_LEASE_MS,
      pollMs: deps.pollMs,
    });
    this.#leaseMs = deps.leaseMs ?? FETCH_LEASE_MS;
  }

  readonly #leaseMs: number;

  protected async run(job: Job<FetchJob>): Promise<void> {
    const started = this.deps.now();
    const stop = new AbortController();
    const renew = setInterval(
      () => {
        // Losing the lease means another worker may now run this fetch: stop, so one writer holds the partial.
        this.deps.jobs.extend(job.id, this.owner, this.#leaseMs).catch((err: unknown) => {
          this.deps.logger.warn({ err, contentId: job.payload.contentId }, 'fetch lease lost; stopping');
          stop.abort(new Temporary(`the lease was lost: ${describeError(err)}`));
        });
      },
      Math.max(1000, Math.floor(this.#leaseMs / 3)),
    ).unref();
    try {
      await this.#attempt(job, started, stop.signal);
    } finally {
      clearInterval(renew);
    }
  }

  async #attempt(job: Job<FetchJob>, started: number, signal: AbortSignal): Promise<void> {
    try {
      const bytes = await this.#fetch(job.payload, signal);
      // One transaction: the job is done, the references are held and their accounts hold the resource. A
      // message stored meanwhile, after the references were read, queues the job again (`JobQueue.requeue`).
      const changed = await this.deps.messages.markResources(job.payload.contentId, 'held', {
        completing: { id: job.id, owner: this.owner },
      });
      this.deps.onFetched?.(bytes, (this.deps.now() - started) / 1000);
      this.deps.onChanged?.([...new Set(changed.map((c) => c.address))]);
    } catch (e) {
      await this.#settle(job, e).catch((err: unknown) =>
        // The lease was taken over meanwhile: the new holder decides the job's fate.
        this.deps.logger.warn({ err, contentId: job.payload.contentId }, 'fetch outcome not recorded'),
      );
    }
  }

  async #settle(job: Job<FetchJob>, e: unknown): Promise<void> {
    const reason = describeError(e);
    // The cause (ECONNREFUSED, a DNS failure) stays in the log: "fetch failed" alone explains nothing.
    const err = (e as Error).cause ?? e;
    if (e instanceof Permanent) {
      await this.deps.jobs.fail(job.id, this.owner, reason);
    } else {
      const wait = e instanceof Temporary ? e.retryAfterMs : undefined;
      const retried = await this.deps.jobs.retry(
        job.id,
        this.owner,
        reason,
        wait === undefined ? {} : { notBefore: this.deps.now() + wait },
      );
      if (!retried.gaveUp) {
        this.deps.logger.info(
          { contentId: job.payload.contentId, reason, err, nextAttemptAt: retried.nextAttemptAt },
          'fetch will be retried',
        );
        return;
      }
    }
    this.deps.logger.warn({ contentId: job.payload.contentId, reason, err }, 'fetch failed');
    // Given up for good: bytes kept for a resume (or the empty file of a refused first attempt) serve nothing.
    await this.#discardPartial(job.payload.contentId);
    const changed = await this.deps.messages.markResources(job.payload.contentId, 'failed');
    this.deps.onChanged?.([...new Set(changed.map((c) => c.address))]);
  }

  async #discardPartial(contentId: string): Promise<void> {
    try {
      const partial = await this.deps.blobs.openPartial(contentId);
      await partial.discard();
    } catch (err) {
      this.deps.logger.warn({ err, contentId }, 'the partial file of a failed fetch could not be removed');
    }
  }

  /** Returns the bytes transferred in this attempt. */
  async #fetch(job: FetchJob, signal: AbortSignal): Promise<number> {
    const { contentId, envelope, messageId } = job;
    // §6.4: a Content-ID already held is never fetched again (a fetch queued again after the bytes arrived).
    const held = await this.deps.blobs.stat(contentId);
    if (held !== undefined) {
      if (held.size !== job.size)
        throw new Permanent(
          `the message declares ${job.size} bytes for ${contentId}, whose bytes held are ${held.size}`,
        );
      return 0;
    }
    let origin: MailboxMetadata;
    try {
      origin = await this.deps.mailboxOf(originDomain(envelope));
    } catch (e) {
      throw new Temporary(`discovering ${originDomain(envelope)}: ${describeError(e)}`, { cause: e });
    }
    const assertion = (envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    const key = await generateDpopKey();
    let token: string;
    try {
      token = (await this.deps.as.fetch(assertion, origin.resource, messageId, newestSenderDomain(envelope), key))
        .token;
    } catch (e) {
      if (e instanceof ExchangeFailure && e.permanent)
        throw new Permanent(`the AS refused the fetch exchange: ${e.message}`, { cause: e });
      throw new Temporary(`the fetch exchange at this domain's AS: ${describeError(e)}`, { cause: e });
    }
    const partial = await this.deps.blobs.openPartial(contentId);
    try {
      const headers: Record<string, string> = {
        'content-type': 'application/json',
        authorization: `DPoP ${token}`,
        dpop: await createDpopProof(key, { htm: 'POST', htu: origin.fetch_endpoint, accessToken: token }),
      };
      if (partial.size > 0) headers.range = `bytes=${partial.size}-`;
      let res;
      try {
        res = await this.deps.http.request(origin.fetch_endpoint, {
          method: 'POST',
          headers,
          body: JSON.stringify({ envelope, content_id: contentId, domain: this.deps.domain }),
          signal,
        });
      } catch (e) {
        if (signal.aborted) throw signal.reason;
        throw new Temporary(`${origin.fetch_endpoint} did not answer: ${describeError(e)}`, { cause: e });
      }
      if (res.status !== 200 && res.status !== 206) {
        // Only the start of an error answer is kept for the reason; a long one closes its connection.
        const text = await res.text(ERROR_ANSWER_BYTES).catch((e: unknown) => `(${describeError(e)})`);
        if (signal.aborted) throw signal.reason; // the lease was lost meanwhile: decide nothing
        const why = `${origin.fetch_endpoint} answered ${res.status}: ${text.slice(0, 300)}`;
        if (res.status === 429 || res.status >= 500)
          throw new Temporary(why, { retryAfterMs: retryAfterMs(res.header('retry-after')) });
        if (res.status === 416) {
          await partial.discard(); // our partial is longer than the resource: start over
          throw new Temporary(why);
        }
        throw new Permanent(why);
      }
      if (res.status === 200 && partial.size > 0) {
        // The origin ignored the Range: the whole representation follows; start the partial over.
        await res.discard();
        await partial.discard();
        return this.#fetch(job, signal);
      }
      const before = partial.size;
      // The blob store stops reading but never destroys a stream it is given; on any early stop the
      // answer is destroyed here, or its connection would stay busy for good.
      const body = res.body;
      // An origin that stops sending (frozen, a dead link) would otherwise hold the renewed lease for good.
      const cut = new AbortController();
      const stalled = new Temporary(`${origin.fetch_endpoint} sent nothing for ${this.#leaseMs / 1000} s`);
      const idle = setTimeout(() => cut.abort(stalled), this.#leaseMs);
      const stop = () => cut.abort(signal.reason);
      signal.addEventListener('abort', stop, { once: true });
      async function* watched(): AsyncGenerator<Uint8Array> {
        for await (const chunk of body as AsyncIterable<Uint8Array>) {
          idle.refresh();
          yield chunk;
        }
      }
      let size: number;
      try {
        ({ size } = await partial.append(watched(), {
          // §6.5: stop reading once more bytes arrive than the message declares.
          maxSize: Math.min(job.size, this.deps.maxResourceSize),
          signal: cut.signal,
        }));
      } catch (e) {
        // The bytes so far are kept; the retry resumes after them.
        if (cut.signal.aborted) throw cut.signal.reason;
        throw e;
      } finally {
        clearTimeout(idle);
        signal.removeEventListener('abort', stop);
        body.destroy();
      }
      try {
        await partial.commit(job.size);
      } catch (e) {
        if (e instanceof BlobStoreError && e.code === 'digest_mismatch')
          throw new Temporary(`the bytes from ${origin.fetch_endpoint} do not hash to ${contentId}; discarded`);
        throw e;
      }
      return size - before;
    } finally {
      await partial.close().catch(() => undefined);
    }
  }
}

/**
 * The fetch queue's worker (PROTOCOL.md §6): for each Content-ID this domain's received mail references
 * and does not hold, exchange the newest assertion at the domain's own AS for an access token to the
 * origin mailbox, POST the envelope to the origin's fetch endpoint, and stream the answer into a partial
 * blob, resuming with Range after an interruption. The bytes are published only if their digest is the
 * Content-ID; a mismatch is discarded and retried, and the third whole answer in a row with other bytes fails
 * the fetch. One fetch serves every local recipient.
 *
 * A misbehaving origin never costs the bytes already held: an answer is checked from its headers before a byte
 * of it is written (a 206 must be exactly the part asked for, a 200 to a Range request must be shown to be the
 * whole resource, the Content-Length must fit the declared size), bytes past the declared size are cut off, and
 * every refusal is a temporary failure that names what the origin answered.
 */
import { STATUS_CODES } from 'node:http';
import type { HttpClient, HttpResponse, Logger } from '@federizer/common';
import {
  createDpopProof,
  generateDpopKey,
  headerValue,
  isHeadersBlock,
  parseSingleMailbox,
  type Block,
  type DpopKey,
  type MailboxMetadata,
} from '@federizer/protocol';
import { BlobStoreError, type DiskBlobStore, type PartialBlob } from '../blobs/index.js';
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
/**
 * Whole answers of the declared length in a row whose bytes do not hash to the Content-ID, after which the
 * fetch fails for good: an origin that keeps serving other bytes is not fetched in full again for days.
 */
export const MISMATCHES_BEFORE_FAILING = 3;
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
      const bytes = await this.#fetch(job, signal);
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
    const changed = await this.deps.messages.markResources(job.payload.contentId, 'failed', { failure: reason });
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
  async #fetch(job: Job<FetchJob>, signal: AbortSignal): Promise<number> {
    const { contentId, envelope, messageId, size } = job.payload;
    // §6.4: a Content-ID already held is never fetched again (a fetch queued again after the bytes arrived).
    const held = await this.deps.blobs.stat(contentId);
    if (held !== undefined) {
      if (held.size !== size)
        throw new Permanent(`the message declares ${size} bytes for ${contentId}, whose bytes held are ${held.size}`);
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
    const peer: Peer = { endpoint: origin.fetch_endpoint, token, key };
    for (let fromZeroAgain = false; ; fromZeroAgain = true) {
      try {
        return await this.#transfer(job.payload, peer, signal);
      } catch (e) {
        if (!(e instanceof DigestMismatch)) throw e;
        if (e.resumed && !fromZeroAgain) {
          // The bytes held before this answer may be the wrong part (another answer's, a disk's): the commit
          // deleted them all; fetch once more from zero before blaming the origin.
          this.deps.logger.info({ contentId, endpoint: peer.endpoint }, `${e.message}; fetching again from zero`);
          continue;
        }
        // PROTOCOL §6.4: a whole answer of the declared length with other bytes. An origin that keeps
        // serving them would be fetched in full on every retry for days: the third in a row fails the fetch.
        const count = mismatchesInARow(job.lastError) + 1;
        const what = `full-length digest mismatch ${count} of ${MISMATCHES_BEFORE_FAILING} in a row: ${e.message}`;
        if (count >= MISMATCHES_BEFORE_FAILING)
          throw new Permanent(`${what}; the origin keeps serving other bytes than ${contentId} names: given up`);
        throw new Temporary(`${what}; discarded, the next attempt fetches from zero`);
      }
    }
  }

  /**
   * One request for the bytes: resumes after the bytes of the partial file with Range (RFC 9110 §14.2), checks
   * that the answer is the part asked for (or, for a 200, the whole representation) before a byte of it is
   * written, streams it into the partial and publishes it once its digest is the Content-ID. A refused
   * answer keeps the bytes held; only a digest mismatch at commit deletes them (DigestMismatch).
   */
  async #transfer(job: FetchJob, peer: Peer, signal: AbortSignal): Promise<number> {
    const { contentId, envelope, size } = job;
    const { endpoint } = peer;
    let partial = await this.deps.blobs.openPartial(contentId);
    try {
      if (partial.size > size) {
        // Bytes beyond the declared size come from no answer this fetcher accepts: start over.
        await partial.discard();
        partial = await this.deps.blobs.openPartial(contentId);
      }
      let before = partial.size;
      if (before === size) {
        // Every byte arrived in an earlier attempt that stopped before publishing (killed, lease lost).
        await this.#commit(partial, job, endpoint, true);
        return 0;
      }
      const headers: Record<string, string> = {
        'content-type': 'application/json',
        authorization: `DPoP ${peer.token}`,
        dpop: await createDpopProof(peer.key, { htm: 'POST', htu: endpoint, accessToken: peer.token }),
      };
      if (before > 0) headers.range = `bytes=${before}-`;
      let res: HttpResponse;
      try {
        res = await this.deps.http.request(endpoint, {
          method: 'POST',
          headers,
          body: JSON.stringify({ envelope, content_id: contentId, domain: this.deps.domain }),
          signal,
        });
      } catch (e) {
        if (signal.aborted) throw signal.reason;
        throw new Temporary(`${endpoint} did not answer: ${describeError(e)}`, { cause: e });
      }
      if (res.status !== 200 && res.status !== 206) await this.#refused(res, partial, endpoint, signal);
      const whole = checkAnswer(res, job, before, endpoint);
      if (typeof whole === 'string') {
        await res.discard();
        throw new Temporary(before > 0 ? `${whole}; the ${before} bytes held are kept` : whole);
      }
      if (whole && before > 0) {
        // RFC 9110 §14.2: the origin ignored the Range and sends the whole representation: start over with it.
        await partial.discard();
        partial = await this.deps.blobs.openPartial(contentId);
        before = partial.size;
      }
      const expected = size - before;
      // The blob store stops reading but never destroys a stream it is given; on any early stop the
      // answer is destroyed here, or its connection would stay busy for good.
      const body = res.body;
      // An origin that stops sending (frozen, a dead link) would otherwise hold the renewed lease for good.
      const cut = new AbortController();
      const stalled = new Temporary(`${endpoint} sent nothing for ${this.#leaseMs / 1000} s`);
      // §6.5: not a byte past the declared size is written; the bytes held before this answer stay.
      const overLong = new Temporary(
        `the origin sent more bytes than the declared size (${size}): ${endpoint} went on past the ${expected} ` +
          `bytes ${before > 0 ? `from byte ${before} ` : ''}it announced`,
      );
      const idle = setTimeout(() => cut.abort(stalled), this.#leaseMs);
      const stop = () => cut.abort(signal.reason);
      signal.addEventListener('abort', stop, { once: true });
      let received = 0;
      async function* watched(): AsyncGenerator<Uint8Array> {
        for await (const chunk of body as AsyncIterable<Uint8Array>) {
          idle.refresh();
          received += chunk.byteLength;
          if (received > expected) {
            cut.abort(overLong);
            throw overLong;
          }
          yield chunk;
        }
      }
      try {
        await partial.append(watched(), { maxSize: Math.min(size, this.deps.maxResourceSize), signal: cut.signal });
      } catch (e) {
        if (cut.signal.aborted) {
          if (cut.signal.reason === overLong) {
            await partial.truncate(before).catch((err: unknown) => {
              this.deps.logger.warn({ err, contentId }, 'the bytes of an over-long answer could not be cut off');
            });
          }
          throw cut.signal.reason;
        }
        // The bytes so far are kept; the retry resumes after them.
        throw e;
      } finally {
        clearTimeout(idle);
        signal.removeEventListener('abort', stop);
        body.destroy();
      }
      if (partial.size < size) {
        // An answer that ended early (a chunked one, or a proxy's): its bytes are kept, the retry resumes.
        throw new Temporary(
          `${endpoint} ended its answer after ${partial.size - before} of the ${expected} bytes ` +
            `${before > 0 ? `from byte ${before} ` : ''}it owed; the ${partial.size} bytes held are kept`,
        );
      }
      await this.#commit(partial, job, endpoint, before > 0);
      return size - before;
    } finally {
      await partial.close().catch(() => undefined);
    }
  }

  /** Publishes the partial's bytes; `resumed`: some of them came before this answer. */
  async #commit(partial: PartialBlob, job: FetchJob, endpoint: string, resumed: boolean): Promise<void> {
    try {
      await partial.commit(job.size);
    } catch (e) {
      if (e instanceof BlobStoreError && e.code === 'digest_mismatch') {
        throw new DigestMismatch(
          `the ${job.size} bytes ${resumed ? 'held and resumed from' : 'from'} ${endpoint} do not hash to ` +
            `${job.contentId}`,
          resumed,
        );
      }
      throw e;
    }
  }

  /** An answer other than 200 or 206: always throws, Temporary or Permanent. */
  async #refused(res: HttpResponse, partial: PartialBlob, endpoint: string, signal: AbortSignal): Promise<never> {
    const { status } = res;
    const before = partial.size;
    const redirect = status >= 300 && status < 400;
    // Only the start of an error answer is kept for the reason; a long one closes its connection.
    let text = '';
    if (redirect) await res.discard().catch(() => undefined);
    else text = await res.text(ERROR_ANSWER_BYTES).catch((e: unknown) => `(${describeError(e)})`);
    if (signal.aborted) throw signal.reason; // the lease was lost meanwhile: decide nothing
    let why = `${endpoint} answered ${status}${STATUS_CODES[status] ? ` ${STATUS_CODES[status]}` : ''}`;
    if (redirect) {
      // The fetch is a POST to the fetch_endpoint of the origin's mailbox document (PROTOCOL §6.2): a
      // redirect elsewhere is not followed, and the origin may serve again at its own address later.
      why += ` to ${res.header('location') ?? '(no Location)'}, a redirect the fetch does not follow`;
    } else if (text !== '') {
      why += `: ${text.slice(0, 300)}`;
    }
    const wait = retryAfterMs(res.header('retry-after'));
    if (redirect || status === 408 || status === 429 || status >= 500) {
      throw new Temporary(before > 0 ? `${why}; the ${before} bytes held are kept` : why, { retryAfterMs: wait });
    }
    if (status === 416) {
      // Our partial is as long as the origin's resource or longer: its bytes are not a prefix of it; start over.
      const range = res.header('content-range');
      await partial.discard();
      throw new Temporary(
        `${why}${range === undefined ? '' : ` (Content-Range: ${range})`}` +
          (before > 0 ? ` to Range: bytes=${before}-; the ${before} bytes held are discarded` : '') +
          '; the next attempt fetches from zero',
      );
    }
    throw new Permanent(why);
  }
}

/** Where and as whom the bytes are asked for. */
interface Peer {
  readonly endpoint: string;
  readonly token: string;
  readonly key: DpopKey;
}

/** The bytes of a complete answer do not hash to the Content-ID; the commit deleted them. */
class DigestMismatch extends Error {
  constructor(
    message: string,
    /** Some of the bytes were held before the answer: the partial, not the origin, may be wrong. */
    readonly resumed: boolean,
  ) {
    super(message);
  }
}

/** How many full-length digest mismatches in a row the previous attempts ended with (from its recorded reason). */
function mismatchesInARow(lastError: string | undefined): number {
  const match = /^full-length digest mismatch (\d+) of /.exec(lastError ?? '');
  return match === null ? 0 : Number(match[1]);
}

/**
 * Whether a 200 or 206 answer is what was asked for, from its headers alone, before a byte is written:
 * `false` for the part after the `before` bytes held (or all of it from zero), `true` for the whole
 * representation answered to a Range, a reason (string) for anything else.
 */
function checkAnswer(res: HttpResponse, job: FetchJob, before: number, endpoint: string): boolean | string {
  const { size, contentId } = job;
  const asked = before > 0 ? `Range: bytes=${before}-` : 'a request without Range';
  const length = contentLength(res.header('content-length'));
  const digest = sha256Of(res.header('repr-digest'));
  const wanted = contentId.slice(1, -1);
  let whole = false;
  if (res.status === 206) {
    // RFC 9110 §14.4, §15.3.7: the part must start at the first byte not held and end at the declared size.
    const range = res.header('content-range');
    const expected = `bytes ${before}-${size - 1}/${size}`;
    if (!isContentRange(range, before, size))
      return (
        `${endpoint} answered 206 with Content-Range: ${range ?? '(none)'} to ${asked}, not ${expected} ` +
        `(RFC 9110 §14.4), which is not the part asked for`
      );
    // For a 206 the Repr-Digest is still the one of the whole resource (RFC 9530 §3, PROTOCOL §6.4).
    if (digest !== undefined && digest !== wanted)
      return `${endpoint} answered 206 with Repr-Digest: ${res.header('repr-digest')}, not the digest of ${contentId}`;
  } else if (before > 0) {
    // RFC 9110 §14.2: a server may ignore Range and answer 200 with the whole representation. Only one
    // shown to be the resource replaces the bytes held: a proxy's error page must not (RFC 9530, PROTOCOL §6.4).
    whole = true;
    const type = res.header('content-type') ?? '(no Content-Type)';
    if (digest !== undefined) {
      if (digest !== wanted)
        return (
          `${endpoint} answered 200 (${type}) to ${asked} with Repr-Digest: ${res.header('repr-digest')}, ` +
          `not the digest of ${contentId}: not the whole resource`
        );
    } else if (length !== size) {
      return (
        `${endpoint} answered 200 (${type}, Content-Length: ${res.header('content-length') ?? '(none)'}) ` +
        `to ${asked}, without Repr-Digest and not the ${size} bytes declared: not the whole resource ` +
        `(an error page?)`
      );
    }
  }
  const expected = whole ? size : size - before;
  if (length !== undefined && length !== expected) {
    const announced = `${endpoint} answered ${res.status} with Content-Length: ${res.header('content-length')}`;
    const part = before > 0 && !whole ? ` for the ${expected} bytes from byte ${before}` : '';
    if (length > expected) return `the origin sent more bytes than the declared size (${size}): ${announced}${part}`;
    return part === ''
      ? `${announced}, fewer than the declared size (${size})`
      : `${announced}, fewer than the ${expected} bytes from byte ${before} of the declared size (${size})`;
  }
  return whole;
}

/** `bytes <first>-<last>/<complete>` (RFC 9110 §14.4; the unit is case-insensitive) naming exactly these. */
function isContentRange(value: string | undefined, first: number, size: number): boolean {
  const match = /^bytes ([0-9]+)-([0-9]+)\/([0-9]+)$/i.exec(value?.trim() ?? '');
  if (match === null) return false;
  return Number(match[1]) === first && Number(match[2]) === size - 1 && Number(match[3]) === size;
}

/** A Content-Length (RFC 9110 §8.6); NaN when it is not a number of bytes. */
function contentLength(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  return /^[0-9]+$/.test(value.trim()) ? Number(value.trim()) : Number.NaN;
}

/**
 * The `sha-256` member of a Repr-Digest (RFC 9530 §2, a Structured Fields Dictionary of byte sequences) as
 * the unpadded base64url of a Content-ID; undefined without one. A malformed value is answered as it is, so that
 * it differs from every digest.
 */
function sha256Of(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  for (const member of value.split(',')) {
    const [name, ...rest] = member.split('=');
    if (name?.trim().toLowerCase() !== 'sha-256') continue;
    const bytes = /^:([A-Za-z0-9+/]*={0,2}):$/.exec(rest.join('=').trim());
    return bytes === null ? `(malformed) ${member.trim()}` : Buffer.from(bytes[1]!, 'base64').toString('base64url');
  }
  return undefined;
}

/**
 * Per-sender-domain rate limiting of transfers (docs/protocol.md §5.3, `429` with `Retry-After`): one token
 * bucket per domain, in memory, holding at most a minute's worth of transfers and refilled continuously.
 * Each replica limits on its own; the limit is a protection, not an account.
 */

export interface RateLimitOptions {
  /** Transfers a sender domain may make per minute, which is also the burst it may make at once. */
  readonly perDomainPerMinute: number;
  /** Buckets kept at most; full buckets are forgotten first (a forgotten bucket is a full one). */
  readonly maxDomains?: number;
}

export type RateDecision = { readonly allowed: true } | { readonly allowed: false; readonly retryAfterSeconds: number };

interface Bucket {
  tokens: number;
  /** Epoch ms of the last refill. */
  at: number;
}

const DEFAULT_MAX_DOMAINS = 10_000;

export class DomainRateLimiter {
  readonly #capacity: number;
  /** Tokens per millisecond. */
  readonly #rate: number;
  readonly #maxDomains: number;
  readonly #buckets = new Map<string, Bucket>();

  constructor(options: RateLimitOptions) {
    const perMinute = options.perDomainPerMinute;
    if (typeof perMinute !== 'number' || !Number.isFinite(perMinute) || perMinute <= 0) {
      throw new TypeError('perDomainPerMinute must be a positive number');
    }
    this.#capacity = Math.max(1, perMinute);
    this.#rate = perMinute / 60_000;
    this.#maxDomains = options.maxDomains ?? DEFAULT_MAX_DOMAINS;
  }

  /** Takes one token of the domain's bucket, or says how many seconds until one is there. */
  take(domain: string, nowMs: number): RateDecision {
    const bucket = this.#refill(domain, nowMs);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return { allowed: true };
    }
    return { allowed: false, retryAfterSeconds: Math.max(1, Math.ceil((1 - bucket.tokens) / this.#rate / 1000)) };
  }

  /** Gives a token back (a request that turned out not to come from that domain). */
  refund(domain: string, nowMs: number): void {
    const bucket = this.#refill(domain, nowMs);
    bucket.tokens = Math.min(this.#capacity, bucket.tokens + 1);
  }

  #refill(domain: string, nowMs: number): Bucket {
    let bucket = this.#buckets.get(domain);
    if (bucket === undefined) {
      this.#makeRoom(nowMs);
      bucket = { tokens: this.#capacity, at: nowMs };
      this.#buckets.set(domain, bucket);
      return bucket;
    }
    // Moved to the end: the Map's order is then the order of last use.
    this.#buckets.delete(domain);
    this.#buckets.set(domain, bucket);
    const elapsed = Math.max(0, nowMs - bucket.at);
    bucket.tokens = Math.min(this.#capacity, bucket.tokens + elapsed * this.#rate);
    bucket.at = Math.max(bucket.at, nowMs);
    return bucket;
  }

  #makeRoom(nowMs: number): void {
    if (this.#buckets.size < this.#maxDomains) return;
    for (const [domain, bucket] of this.#buckets) {
      if (bucket.tokens + Math.max(0, nowMs - bucket.at) * this.#rate >= this.#capacity) this.#buckets.delete(domain);
    }
    // Still full: forget the buckets used longest ago.
    for (const domain of this.#buckets.keys()) {
      if (this.#buckets.size < this.#maxDomains) break;
      this.#buckets.delete(domain);
    }
  }
}

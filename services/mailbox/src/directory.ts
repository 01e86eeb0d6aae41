/**
 * Which addresses of this domain exist: the AS owns the users, so the mailbox asks its admin API (PROTOCOL
 * §5.9 needs "belongs to this domain and exists"). A disabled user does not receive mail.
 *
 * What is cached, and why only that. The answer decides whether a transfer's recipient (and a local
 * recipient of a send or a forward) is accepted; nothing else reads it (forwarding rules live in the
 * mailbox, the AS applies its forwarding policy at the token exchange). So:
 * - "exists" is kept for a few seconds (`ttlMs`, default 5 s). The only wrong answer it can give is to
 *   accept mail for a user disabled or deleted within those seconds, which an admin cannot tell from mail
 *   that arrived just before the change. It spares the AS one call per delivery to the same recipient.
 * - "does not exist" is never kept: a transfer refused for an unknown recipient is a permanent bounce to
 *   the sender, so a user created a moment ago must not be refused from a stale answer.
 * - Concurrent questions about one address share one call (transfers to one recipient arrive together).
 * At most `maxEntries` answers are held; the oldest go first.
 */
import type { HttpClient } from '@federizer/common';

/** The admin API's user document is small; a longer answer is not read into memory. */
const MAX_ANSWER_BYTES = 64 * 1024;

export class UserDirectory {
  /** Addresses known to exist, until when; in the order they were learnt. */
  readonly #known = new Map<string, number>();
  readonly #asking = new Map<string, Promise<boolean>>();

  constructor(
    private readonly adminUrl: string,
    private readonly adminToken: string,
    private readonly http: HttpClient,
    private readonly now: () => number = Date.now,
    private readonly ttlMs = 5_000,
    private readonly maxEntries = 10_000,
  ) {}

  exists(address: string): Promise<boolean> {
    const until = this.#known.get(address);
    if (until !== undefined) {
      if (until > this.now()) return Promise.resolve(true);
      this.#known.delete(address);
    }
    let asking = this.#asking.get(address);
    if (asking === undefined) {
      asking = this.#ask(address).finally(() => this.#asking.delete(address));
      this.#asking.set(address, asking);
    }
    return asking;
  }

  async #ask(address: string): Promise<boolean> {
    const res = await this.http.request(`${this.adminUrl}/admin/v1/users/${encodeURIComponent(address)}`, {
      headers: { authorization: `Bearer ${this.adminToken}`, accept: 'application/json' },
    });
    if (res.status === 404) {
      await res.discard();
      return false;
    }
    if (res.status !== 200) {
      await res.discard();
      throw new Error(`the AS admin API answered ${res.status} for ${address}`);
    }
    const exists = !((await res.json(MAX_ANSWER_BYTES)) as { disabled?: boolean }).disabled;
    if (exists) this.#remember(address);
    return exists;
  }

  #remember(address: string): void {
    this.#known.delete(address);
    while (this.#known.size >= this.maxEntries) this.#known.delete(this.#known.keys().next().value!);
    this.#known.set(address, this.now() + this.ttlMs);
  }
}

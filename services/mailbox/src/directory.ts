/**
 * Which addresses of this domain exist: the AS owns the users, so the mailbox asks its admin API (PROTOCOL
 * §5.9 needs "belongs to this domain and exists"). Answers are cached briefly; a disabled user does not
 * receive mail.
 */
import type { HttpClient } from '@federizer/common';

export class UserDirectory {
  readonly #cache = new Map<string, { exists: boolean; until: number }>();

  constructor(
    private readonly adminUrl: string,
    private readonly adminToken: string,
    private readonly http: HttpClient,
    private readonly now: () => number = Date.now,
    private readonly ttlMs = 60_000,
  ) {}

  async exists(address: string): Promise<boolean> {
    const hit = this.#cache.get(address);
    if (hit && hit.until > this.now()) return hit.exists;
    const res = await this.http.fetch(`${this.adminUrl}/admin/v1/users/${encodeURIComponent(address)}`, {
      headers: { authorization: `Bearer ${this.adminToken}`, accept: 'application/json' },
    });
    let exists: boolean;
    if (res.status === 404) {
      await res.text();
      exists = false;
    } else if (res.ok) {
      exists = !((await res.json()) as { disabled?: boolean }).disabled;
    } else {
      throw new Error(`the AS admin API answered ${res.status} for ${address}`);
    }
    if (this.#cache.size > 10_000) this.#cache.clear();
    this.#cache.set(address, { exists, until: this.now() + this.ttlMs });
    return exists;
  }
}

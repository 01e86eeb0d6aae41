/**
 * The AS's signing keys. One key is current; retired keys stay published in the JWKS for the share window
 * (plus a day) after retirement, so assertions already sent stay verifiable for as long as they are valid
 * (PROTOCOL.md §4.6). Keys live in the database, so every replica signs with the same current key and a
 * rotation made by one (on its schedule or by the admin API) is picked up by the others on their next check.
 *
 * A scheduled rotation publishes the next key an hour (PREPUBLISH_MS) before it signs anything: a verifier
 * may cache the JWKS that long (§8.4) and refetches it at most once a minute on an unknown kid (§5.4), so a
 * key used as soon as it is made would have transfers refused for up to a minute. The admin API's rotation
 * is immediate: it is for a key that must stop signing now.
 */
import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK, type JWSHeaderParameters } from 'jose';
import type { Knex } from 'knex';
import { keyFromJwks, type JwsAlg, type VerificationKey } from '@federizer/protocol';

export interface SigningKey {
  readonly kid: string;
  readonly alg: JwsAlg;
  readonly privateKey: CryptoKey;
  readonly privateJwk: JWK;
  readonly publicJwk: JWK;
  readonly activatedAt: number;
  readonly retiredAt: number | null;
}

interface Row {
  kid: string;
  alg: string;
  private_jwk: string;
  created_at: number | string;
  activated_at: number | string;
  retired_at: number | string | null;
}

export interface KeyRingOptions {
  readonly alg: JwsAlg;
  readonly rotationSeconds: number;
  readonly shareWindowSeconds: number;
}

const DAY_MS = 24 * 3600 * 1000;
/** How long a scheduled key is published before it becomes current: the longest JWKS cache of §8.4. */
export const PREPUBLISH_MS = 3600 * 1000;
const PUBLIC_MEMBERS: Record<string, readonly string[]> = {
  EC: ['kty', 'crv', 'x', 'y'],
  OKP: ['kty', 'crv', 'x'],
  RSA: ['kty', 'n', 'e'],
};

function publicOf(jwk: JWK, kid: string, alg: string): JWK {
  const pub: Record<string, unknown> = { kid, alg, use: 'sig' };
  for (const m of PUBLIC_MEMBERS[jwk.kty!] ?? []) pub[m] = (jwk as Record<string, unknown>)[m];
  return pub as JWK;
}

async function newKey(alg: JwsAlg): Promise<JWK> {
  const { privateKey } = await generateKeyPair(alg, {
    extractable: true,
    ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}),
    ...(alg === 'RS256' ? { modulusLength: 3072 } : {}),
  });
  return exportJWK(privateKey);
}

function newKid(activatedAt: number): string {
  return `${new Date(activatedAt).toISOString().slice(0, 10)}-${randomUUID().slice(0, 8)}`;
}

function keyRow(kid: string, alg: JwsAlg, jwk: JWK, createdAt: number, activatedAt: number): Row {
  return {
    kid,
    alg,
    private_jwk: JSON.stringify(jwk),
    created_at: createdAt,
    activated_at: activatedAt,
    retired_at: null,
  };
}

export class KeyRing {
  #keys: SigningKey[] = [];
  #verification = new Map<string, Promise<VerificationKey>>();
  #fingerprint = '';

  private constructor(
    private readonly knex: Knex,
    private readonly options: KeyRingOptions,
  ) {}

  /** Loads the keys, creating the first one (or a due replacement) when needed. */
  static async load(knex: Knex, options: KeyRingOptions, now = Date.now()): Promise<KeyRing> {
    const ring = new KeyRing(knex, options);
    await ring.refresh(now);
    return ring;
  }

  /** The key new tokens and assertions are signed with. */
  get current(): SigningKey {
    const key = this.#keys[0];
    if (key === undefined) throw new Error('the key ring is empty');
    return key;
  }

  /** Current first, then the next key if one is published ahead, then retired keys within their retention. */
  get keys(): readonly SigningKey[] {
    return this.#keys;
  }

  /** The public JWKS (RFC 7517) every verifier uses. */
  get jwks(): { keys: JWK[] } {
    return { keys: this.#keys.map((k) => k.publicJwk) };
  }

  /** The verification key for a token this AS signed (by kid), imported once per key ring. */
  async verificationKey(header: JWSHeaderParameters): Promise<VerificationKey> {
    const kid = typeof header.kid === 'string' ? header.kid : '';
    let key = this.#verification.get(kid);
    if (key === undefined) {
      key = keyFromJwks(this.jwks, header);
      this.#verification.set(kid, key);
      key.catch(() => this.#verification.delete(kid));
    }
    return key;
  }

  /** Changes whenever the set of published keys changes; lets the server rebuild what depends on it. */
  get fingerprint(): string {
    return this.#fingerprint;
  }

  /**
   * Re-reads the keys (another replica may have rotated), publishes the next key PREPUBLISH_MS before the
   * current one is due, makes it current once its time has come (retiring the previous), and drops retired
   * keys past their retention. Returns true when the published set or the current key changed.
   */
  async refresh(now = Date.now()): Promise<boolean> {
    let rows = await this.#rows();
    const unretired = (r: Row) => r.retired_at === null && r.alg === this.options.alg;
    const active = (r: Row) => Number(r.activated_at) <= now;
    const current = rows.find((r) => unretired(r) && active(r));
    if (current === undefined) {
      // The first key (or the first of a new algorithm): there is nothing to publish it ahead of.
      await this.rotate(now);
      rows = await this.#rows();
    } else if (!rows.some((r) => unretired(r) && !active(r))) {
      const rotationMs = this.options.rotationSeconds * 1000;
      const dueAt = Number(current.activated_at) + rotationMs;
      const ahead = Math.min(PREPUBLISH_MS, rotationMs);
      if (dueAt - ahead <= now) {
        await this.#insert(now, Math.max(dueAt, now + ahead));
        rows = await this.#rows();
      }
    }
    const keep = rows.filter(
      (r) => r.retired_at === null || Number(r.retired_at) + this.options.shareWindowSeconds * 1000 + DAY_MS > now,
    );
    const expired = rows.filter((r) => !keep.includes(r)).map((r) => r.kid);
    if (expired.length > 0) await this.knex('signing_keys').whereIn('kid', expired).delete();
    // The newest active key is current; the other active ones retire (the previous key once the next one's
    // time has come, or two replicas that rotated at once). A key published ahead waits for its time.
    const [newest, ...others] = keep.filter((r) => r.retired_at === null && active(r));
    const stale = others.map((r) => r.kid);
    if (stale.length > 0)
      await this.knex('signing_keys').whereIn('kid', stale).whereNull('retired_at').update({ retired_at: now });
    const ordered = [newest, ...keep.filter((r) => r !== newest)].filter((r): r is Row => r !== undefined);
    const fingerprint = ordered.map((r) => r.kid).join(',');
    if (fingerprint === this.#fingerprint) return false;
    this.#verification = new Map();
    this.#keys = await Promise.all(ordered.map((r) => this.#toKey(r, stale.includes(r.kid) ? now : null)));
    this.#fingerprint = fingerprint;
    return true;
  }

  /**
   * Makes a new key current now and retires the others (the previous key, and a next key published ahead,
   * which then never signs). For the admin API: a key that must stop signing at once.
   */
  async rotate(now = Date.now()): Promise<string> {
    const jwk = await newKey(this.options.alg);
    const kid = newKid(now);
    await this.knex.transaction(async (trx) => {
      await trx('signing_keys').whereNull('retired_at').update({ retired_at: now });
      await trx('signing_keys').insert(keyRow(kid, this.options.alg, jwk, now, now));
    });
    return kid;
  }

  /** Publishes a new key that becomes current at `activatedAt` (a scheduled rotation). */
  async #insert(now: number, activatedAt: number): Promise<void> {
    const jwk = await newKey(this.options.alg);
    await this.knex('signing_keys').insert(keyRow(newKid(activatedAt), this.options.alg, jwk, now, activatedAt));
  }

  async #rows(): Promise<Row[]> {
    return this.knex<Row>('signing_keys').select('*').orderBy('activated_at', 'desc');
  }

  async #toKey(row: Row, retiredNow: number | null): Promise<SigningKey> {
    const privateJwk = { ...(JSON.parse(row.private_jwk) as JWK), kid: row.kid, alg: row.alg, use: 'sig' };
    const alg = row.alg as JwsAlg;
    return {
      kid: row.kid,
      alg,
      privateKey: (await importJWK(privateJwk, alg)) as CryptoKey,
      privateJwk,
      publicJwk: publicOf(privateJwk, row.kid, alg),
      activatedAt: Number(row.activated_at),
      retiredAt: row.retired_at === null ? retiredNow : Number(row.retired_at),
    };
  }
}

/**
 * The AS's signing keys. One key is current; retired keys stay published in the JWKS for the share window
 * (plus a day) after retirement, so assertions already sent stay verifiable for as long as they are valid
 * (PROTOCOL.md §4.6). Keys live in the database, so every replica signs with the same current key and a
 * rotation made by one (on its schedule or by the admin API) is picked up by the others on their next check.
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

  /** Current first, then retired keys still within their retention. */
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
   * Re-reads the keys (another replica may have rotated), rotates when the current key is due, and drops
   * retired keys past their retention. Returns true when the published set changed.
   */
  async refresh(now = Date.now()): Promise<boolean> {
    let rows = await this.#rows();
    const current = rows.find((r) => r.retired_at === null && r.alg === this.options.alg);
    if (current === undefined || Number(current.activated_at) + this.options.rotationSeconds * 1000 <= now) {
      await this.rotate(now);
      rows = await this.#rows();
    }
    const keep = rows.filter(
      (r) => r.retired_at === null || Number(r.retired_at) + this.options.shareWindowSeconds * 1000 + DAY_MS > now,
    );
    const expired = rows.filter((r) => !keep.includes(r)).map((r) => r.kid);
    if (expired.length > 0) await this.knex('signing_keys').whereIn('kid', expired).delete();
    // Two replicas rotating at once leave two unretired keys: the newest is current, the others retire.
    const [newest, ...others] = keep.filter((r) => r.retired_at === null);
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

  /** Makes a new key current and retires the previous one. */
  async rotate(now = Date.now()): Promise<string> {
    const jwk = await newKey(this.options.alg);
    const kid = `${new Date(now).toISOString().slice(0, 10)}-${randomUUID().slice(0, 8)}`;
    await this.knex.transaction(async (trx) => {
      await trx('signing_keys').whereNull('retired_at').update({ retired_at: now });
      await trx('signing_keys').insert({
        kid,
        alg: this.options.alg,
        private_jwk: JSON.stringify(jwk),
        created_at: now,
        activated_at: now,
        retired_at: null,
      });
    });
    return kid;
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

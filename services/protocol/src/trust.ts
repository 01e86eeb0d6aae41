import type { CryptoKey, JWK, JWSHeaderParameters, KeyObject } from 'jose';
import { ProtocolError } from './errors.js';
import { keyFromJwks } from './jwt.js';

/** A key that jose can verify with: a Node KeyObject or a WebCrypto CryptoKey. */
export type VerificationKey = CryptoKey | KeyObject;

/**
 * What the protocol needs to know about other domains, answered through DNS discovery (PROTOCOL.md §8)
 * by `Discovery`, or by a fixed table in tests. Every method throws a ProtocolError when it cannot answer.
 */
export interface TrustResolver {
  /** §5.3: the `issuer` of the AS metadata that `_federizer._as._tcp.<domain>` leads to. */
  issuerFor(domain: string): Promise<string>;
  /**
   * §5.4: the key that verifies a JWS with this protected header, from the JWKS of `domain`'s AS, whose
   * issuer must be `issuer` (keys are per domain: another domain claiming the same issuer lends it none).
   */
  keyFor(issuer: string, header: JWSHeaderParameters, domain: string): Promise<VerificationKey>;
  /** §5.7: the `mta_client_id` of the mailbox that `_federizer._rs._tcp.<domain>` leads to. */
  mtaClientIdFor(domain: string): Promise<string>;
}

export interface DomainTrust {
  readonly issuer: string;
  readonly jwks: { readonly keys: readonly JWK[] };
  readonly mtaClientId: string;
}

/**
 * A TrustResolver over a fixed table, for tests, vectors and tools that know their peers. Imported keys
 * are cached, as Discovery caches them.
 */
export class StaticTrust implements TrustResolver {
  private readonly keys = new Map<string, Promise<VerificationKey>>();

  constructor(private readonly domains: Readonly<Record<string, DomainTrust>>) {}

  private domain(domain: string): DomainTrust {
    const entry = Object.hasOwn(this.domains, domain) ? this.domains[domain] : undefined;
    if (entry === undefined)
      throw new ProtocolError('discovery_no_records', `_federizer._as._tcp.${domain}: no SRV records`);
    return entry;
  }

  async issuerFor(domain: string): Promise<string> {
    return this.domain(domain).issuer;
  }

  async mtaClientIdFor(domain: string): Promise<string> {
    return this.domain(domain).mtaClientId;
  }

  async keyFor(issuer: string, header: JWSHeaderParameters, domain: string): Promise<VerificationKey> {
    const entry = this.domain(domain);
    if (entry.issuer !== issuer) throw new ProtocolError('issuer_mismatch', `${issuer} is not the issuer of ${domain}`);
    const cacheKey = `${domain} ${String(header.kid)} ${String(header.alg)}`;
    let key = this.keys.get(cacheKey);
    if (key === undefined) {
      key = keyFromJwks({ keys: [...entry.jwks.keys] }, header);
      this.keys.set(cacheKey, key);
      key.catch(() => this.keys.delete(cacheKey));
    }
    return key;
  }
}

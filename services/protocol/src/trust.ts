import type { CryptoKey, JWSHeaderParameters, KeyObject } from 'jose';

/** A key that jose can verify with: a Node KeyObject or a WebCrypto CryptoKey. */
export type VerificationKey = CryptoKey | KeyObject;

/**
 * What the protocol needs to know about other domains, answered through DNS discovery (PROTOCOL.md §8)
 * by `Discovery`, or by a fixed table in tests. Every method throws a ProtocolError when it cannot answer.
 */
export interface TrustResolver {
  /** §5.3: the `issuer` of the AS metadata that `_federizer._as._tcp.<domain>` leads to. */
  issuerFor(domain: string): Promise<string>;
  /** §5.4: the key of `issuer`'s JWKS that verifies a JWS with this protected header. */
  keyFor(issuer: string, header: JWSHeaderParameters): Promise<VerificationKey>;
  /** §5.7: the `mta_client_id` of the mailbox that `_federizer._rs._tcp.<domain>` leads to. */
  mtaClientIdFor(domain: string): Promise<string>;
}

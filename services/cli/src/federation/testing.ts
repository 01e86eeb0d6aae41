/**
 * For tests on a local federation: sign a user in as the webmail does (authorization code + PKCE + DPoP
 * through the AS's own login form, with the AS test client's `signIn`), and call their mailbox's client API
 * with DPoP proofs. Test support only: it reaches into the AS's tests for the OAuth client.
 */

import { createHttpClient, type HttpClient } from '@federizer/common';
import { createDpopProof, dpopKeyOf } from '@federizer/protocol';
import { signIn } from '../../../auth/tests/exchange-client.js';
import type { TestDomain } from '../../../auth/tests/harness.js';
import { WEBMAIL_CLIENT_ID } from './layout.js';
import type { FederationDomain, LocalFederation } from './local-federation.js';

export interface FederationUserClient {
  readonly address: string;
  readonly accessToken: string;
  /** A request to the user's mailbox API: `path` is relative to /api/v1. */
  api(
    path: string,
    init?: { method?: string; json?: unknown; raw?: Uint8Array | string; headers?: Record<string, string> },
  ): Promise<Response>;
}

export interface FederationClient {
  /** The HTTP client of the tests: development mode, `*.localhost` resolved to loopback. */
  readonly http: HttpClient;
  /** Signs the user in at their domain's AS; the demo user's password by default. */
  user(address: string, password?: string): Promise<FederationUserClient>;
  close(): Promise<void>;
}

/** What the AS test client's `signIn` reads of a domain, built from the federation's description. */
function signInTarget(domain: FederationDomain): TestDomain {
  return {
    domain: domain.domain,
    issuer: domain.issuer,
    mailboxResource: `${domain.mailboxUrl}/api/v1`,
    webmailRedirectUri: `${domain.webmailUrl}/callback`,
    config: { webmail: { clientId: WEBMAIL_CLIENT_ID }, signingAlg: 'ES256' },
  } as unknown as TestDomain;
}

export function federationClient(fed: Pick<LocalFederation, 'domains' | 'users'>): FederationClient {
  const http = createHttpClient({ dev: true });
  return {
    http,
    async user(address, password) {
      const domainName = address.slice(address.lastIndexOf('@') + 1);
      const domain = fed.domains[domainName];
      if (domain === undefined) throw new TypeError(`${address}: ${domainName} is not a domain of the federation`);
      const secret = password ?? fed.users.find((u) => u.address === address)?.password;
      if (secret === undefined) throw new TypeError(`${address} is not a demo user: give the password`);
      const session = await signIn(signInTarget(domain), http, address, secret);
      const key = await dpopKeyOf(session.dpopKey);
      const token = session.accessToken;
      return {
        address,
        accessToken: token,
        async api(path, init = {}) {
          const method = init.method ?? 'GET';
          const url = `${domain.mailboxUrl}/api/v1${path}`;
          const headers: Record<string, string> = {
            authorization: `DPoP ${token}`,
            dpop: await createDpopProof(key, { htm: method, htu: url, accessToken: token }),
            ...init.headers,
          };
          let body = init.raw;
          if (init.json !== undefined) {
            body = JSON.stringify(init.json);
            headers['content-type'] = 'application/json';
          }
          return (await http.fetch(url, { method, body, headers })) as unknown as Response;
        },
      };
    },
    close: () => http.close(),
  };
}

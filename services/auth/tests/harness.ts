/**
 * Real domains for the AS tests: each domain's Authorization Server on its own port and host name
 * (`as.example-com.localhost`), an embedded DNS server answering the `_federizer` SRV records, and, until
 * the mailbox service stands beside it, a minimal `/.well-known/federizer` document per domain that
 * publishes the domain's MTA client id (PROTOCOL.md §8), so DNS-bound client identity can be checked.
 */
import express from 'express';
import { exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import type { Knex } from 'knex';
import {
  DnsServer,
  createKnex,
  freePort,
  listen,
  silentLogger,
  type DatabaseConfig,
  type RunningServer,
} from '@federizer/common';
import { AuthService, authConfig, type AuthConfig } from '../src/index.js';

// A port that is free now (the issuer URL must be known before the server starts); tests import it here.
export { freePort };

export const ADMIN_TOKEN = 'test-admin-token-0123456789';

export interface TestDomain {
  readonly domain: string;
  readonly issuer: string;
  readonly as: AuthService;
  readonly config: AuthConfig;
  readonly tokenEndpoint: string;
  readonly mailboxResource: string;
  /** The MTA's private_key_jwt key (RFC 7523 client authentication). */
  readonly mtaKey: { readonly privateKey: CryptoKey; readonly jwk: JWK };
  readonly webmailRedirectUri: string;
  createUser(address: string, password: string, extra?: Record<string, unknown>): Promise<void>;
  admin(path: string, init?: RequestInit): Promise<Response>;
}

export interface Federation {
  readonly dns: DnsServer;
  readonly domains: Readonly<Record<string, TestDomain>>;
  close(): Promise<void>;
}

export const hostOf = (kind: 'as' | 'mail', domain: string) => `${kind}.${domain.replace(/\./g, '-')}.localhost`;

export interface FederationOptions {
  /** One database per domain (`testDatabases()` gives SQLite or PostgreSQL). */
  readonly database: () => Promise<{ config: DatabaseConfig; destroy(): Promise<void> }>;
  readonly config?: Partial<AuthConfig>;
  readonly now?: () => number;
  /** The mailbox resource of each domain, when real mailboxes will stand behind the `_rs` records. */
  readonly mailboxResourceFor?: (domain: string) => string;
}

export async function startFederation(domainNames: readonly string[], options: FederationOptions): Promise<Federation> {
  const dns = await DnsServer.start({ zones: [...domainNames, 'localhost'] });
  const cleanups: (() => Promise<unknown>)[] = [() => dns.close()];
  const domains: Record<string, TestDomain> = {};
  try {
    for (const name of domainNames) {
      const db = await options.database();
      const knex: Knex = createKnex(db.config);
      cleanups.push(
        () => db.destroy(),
        () => knex.destroy(),
      );
      const port = await freePort();
      const issuer = `http://${hostOf('as', name)}:${port}`;
      const mailboxResource = options.mailboxResourceFor?.(name) ?? `http://${hostOf('mail', name)}/api`;
      const { privateKey, publicKey } = await generateKeyPair('ES256');
      const jwk = { ...(await exportJWK(publicKey)), alg: 'ES256', kid: `mta-${name}` };
      const webmailRedirectUri = `http://${hostOf('mail', name)}/callback`;
      const { config, secrets } = authConfig(
        {
          issuer,
          domain: name,
          mailboxResource,
          dev: true,
          port,
          dnsServer: `${dns.address.host}:${dns.address.port}`,
          mta: { clientId: `mta.${name}`, jwks: { keys: [jwk] } },
          webmail: {
            clientId: 'webmail',
            redirectUris: [webmailRedirectUri],
            postLogoutRedirectUris: [`http://${hostOf('mail', name)}/`],
          },
          ...options.config,
        },
        { adminToken: ADMIN_TOKEN, cookieKeys: ['test-cookie-key-0123456789abcdef'] },
      );
      const as = await AuthService.start(config, secrets, { knex, logger: silentLogger(), now: options.now });
      cleanups.push(() => as.close());
      const mailbox = await mailboxDocument(name, issuer, config.mta.clientId, mailboxResource);
      cleanups.push(() => mailbox.close());
      dns.setRecords(`_federizer._as._tcp.${name}`, 'SRV', [
        { priority: 10, weight: 5, port, target: hostOf('as', name) },
      ]);
      dns.setRecords(`_federizer._rs._tcp.${name}`, 'SRV', [
        { priority: 10, weight: 5, port: mailbox.port, target: hostOf('mail', name) },
      ]);
      const admin = (path: string, init: RequestInit = {}) =>
        fetch(`${as.url}/admin/v1${path}`, {
          ...init,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json', ...init.headers },
        });
      domains[name] = {
        domain: name,
        issuer,
        as,
        config,
        tokenEndpoint: `${issuer}/token`,
        mailboxResource: config.mailboxResource,
        mtaKey: { privateKey, jwk },
        webmailRedirectUri,
        admin,
        async createUser(address, password, extra = {}) {
          const res = await admin('/users', { method: 'POST', body: JSON.stringify({ address, password, ...extra }) });
          if (res.status !== 201) throw new Error(`creating ${address}: ${res.status} ${await res.text()}`);
        },
      };
    }
  } catch (e) {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    throw e;
  }
  return {
    dns,
    domains,
    async close() {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    },
  };
}

/** The `/.well-known/federizer` document a domain's mailbox will serve (PROTOCOL.md §8). */
async function mailboxDocument(
  domain: string,
  issuer: string,
  mtaClientId: string,
  resource: string,
): Promise<RunningServer> {
  const app = express();
  const base = `http://${hostOf('mail', domain)}`;
  app.get('/.well-known/federizer', (_req, res) => {
    res.json({
      domain,
      authorization_server: issuer,
      mta_client_id: mtaClientId,
      resource,
      transfer_endpoint: `${base}/federation/v1/transfer`,
      fetch_endpoint: `${base}/federation/v1/fetch`,
      api: `${base}/api`,
      webmail: `${base}/`,
      max_resource_size: 5 * 1024 ** 3,
    });
  });
  return listen(app);
}

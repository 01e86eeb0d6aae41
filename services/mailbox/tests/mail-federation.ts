/**
 * Several whole mail domains for the mailbox tests: each with its real Authorization Server (the AS
 * harness) and its real mailbox service, on its own host names, with the embedded DNS server's
 * `_federizer._as._tcp` and `_federizer._rs._tcp` records pointing at them.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { createKnex, silentLogger, type DatabaseConfig } from '@federizer/common';
import { createDpopProof, dpopKeyOf } from '@federizer/protocol';
import { ADMIN_TOKEN, freePort, hostOf, startFederation, type Federation } from '../../auth/tests/harness.js';
import { signIn, testHttp } from '../../auth/tests/exchange-client.js';
import { MailboxService, mailboxConfig, type MailboxConfig, type MailboxOverrides } from '../src/index.js';
import { documented } from './openapi-check.js';

export interface MailDomain {
  readonly domain: string;
  readonly mailbox: MailboxService;
  readonly publicUrl: string;
}

export interface UserClient {
  readonly address: string;
  api(
    path: string,
    init?: { method?: string; json?: unknown; raw?: Uint8Array | string; headers?: Record<string, string> },
  ): Promise<Response>;
}

export interface MailFederation {
  readonly auth: Federation;
  readonly domains: Readonly<Record<string, MailDomain>>;
  /**
   * Signs a user in at their domain's AS as the webmail does, and returns a client of their mailbox API.
   * Every answer the client gets is checked against openapi/mailbox.openapi.json (`documented`).
   */
  user(address: string, password: string): Promise<UserClient>;
  /** Stops a domain's mailbox (a peer that is down); its database and blobs stay. */
  stop(domain: string): Promise<void>;
  /** Starts a stopped domain's mailbox again: same port, same database, same blob directory. */
  restart(domain: string, overrides?: MailboxOverrides): Promise<MailboxService>;
  close(): Promise<void>;
}

export async function startMailFederation(
  names: readonly string[],
  options: {
    database: () => Promise<{ config: DatabaseConfig; destroy(): Promise<void> }>;
    mailbox?: MailboxOverrides;
    /** Settings of the mailboxes' configuration (all domains), such as the blob collector's. */
    config?: Partial<MailboxConfig>;
  },
): Promise<MailFederation> {
  const ports = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await freePort()] as const)));
  const publicUrl = (n: string) => `http://${hostOf('mail', n)}:${ports[n]}`;
  const auth = await startFederation(names, {
    database: options.database,
    mailboxResourceFor: (n) => `${publicUrl(n)}/api/v1`,
  });
  const cleanups: (() => Promise<unknown>)[] = [() => auth.close()];
  const http = testHttp();
  cleanups.push(() => http.close());
  const domains: Record<string, MailDomain> = {};
  const running = new Map<string, MailboxService | undefined>();
  const starters = new Map<string, (overrides?: MailboxOverrides) => Promise<MailboxService>>();
  try {
    for (const n of names) {
      const d = auth.domains[n]!;
      const blobDir = await mkdtemp(join(tmpdir(), `federizer-${n}-`));
      const db = await options.database();
      const knex = createKnex(db.config);
      const { config, secrets } = mailboxConfig(
        {
          ...options.config,
          domain: n,
          publicUrl: publicUrl(n),
          issuer: d.issuer,
          blobDir,
          dev: true,
          port: ports[n],
          dnsServer: `${auth.dns.address.host}:${auth.dns.address.port}`,
        },
        { mtaKey: { key: d.mtaKey.privateKey, alg: 'ES256', kid: d.mtaKey.jwk.kid! }, authAdminToken: ADMIN_TOKEN },
      );
      const start = async (overrides: MailboxOverrides = {}) => {
        const mailbox = await MailboxService.start(config, secrets, {
          knex,
          logger: silentLogger(),
          ...options.mailbox,
          ...overrides,
        });
        running.set(n, mailbox);
        return mailbox;
      };
      starters.set(n, start);
      await start();
      cleanups.push(
        () => rm(blobDir, { recursive: true, force: true }),
        () => db.destroy(),
        () => knex.destroy(),
        async () => running.get(n)?.close(),
      );
      auth.dns.setRecords(`_federizer._rs._tcp.${n}`, 'SRV', [
        { priority: 10, weight: 5, port: ports[n]!, target: hostOf('mail', n) },
      ]);
      domains[n] = {
        domain: n,
        get mailbox() {
          const mailbox = running.get(n);
          if (mailbox === undefined) throw new Error(`the mailbox of ${n} is stopped`);
          return mailbox;
        },
        publicUrl: publicUrl(n),
      };
    }
  } catch (e) {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    throw e;
  }
  return {
    auth,
    domains,
    async user(address, password) {
      const n = address.slice(address.indexOf('@') + 1);
      const session = await signIn(auth.domains[n]!, http, address, password);
      const key = await dpopKeyOf(session.dpopKey);
      return {
        address,
        async api(path, init = {}) {
          const method = init.method ?? 'GET';
          const url = `${publicUrl(n)}/api/v1${path}`;
          const headers: Record<string, string> = {
            authorization: `DPoP ${session.accessToken}`,
            dpop: await createDpopProof(key, { htm: method, htu: url, accessToken: session.accessToken }),
            ...init.headers,
          };
          let body = init.raw;
          if (init.json !== undefined) {
            body = JSON.stringify(init.json);
            headers['content-type'] = 'application/json';
          }
          return documented(method, url, await http.fetch(url, { method, body, headers }));
        },
      };
    },
    async stop(domain) {
      const mailbox = running.get(domain);
      running.set(domain, undefined);
      await mailbox?.close();
    },
    async restart(domain, overrides) {
      if (running.get(domain) !== undefined) throw new Error(`the mailbox of ${domain} is running`);
      return starters.get(domain)!(overrides);
    },
    async close() {
      for (const c of cleanups.reverse()) await c().catch(() => undefined);
    },
  };
}

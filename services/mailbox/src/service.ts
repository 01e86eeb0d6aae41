/**
 * The composition root of the mailbox service: `MailboxService.start(config, secrets, overrides)` builds the
 * database, the blob store, the stores and the HTTP API. Tests swap parts through `overrides`.
 */
import cors from 'cors';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Knex } from 'knex';
import { Counter } from 'prom-client';
import {
  KnexReplayStore,
  createHttpClient,
  createKnex,
  createLogger,
  createRegistry,
  databaseConfigFromUrl,
  httpMetrics,
  listen,
  metricsHandler,
  migrateLatest,
  type HttpClient,
  type Logger,
  type RunningServer,
} from '@federizer/common';
import type { HttpGet } from '@federizer/protocol';
import { DiskBlobStore } from './blobs/index.js';
import { resourcesRouter } from './api/resources.js';
import { IssuerKeys, requireUser } from './api/user-auth.js';
import type { MailboxConfig, MailboxSecrets } from './config.js';
import { AccountStore } from './storage/accounts.js';
import { MAILBOX_MIGRATIONS_TABLE, mailboxMigrations } from './storage/migrations.js';

export interface MailboxOverrides {
  readonly knex?: Knex;
  readonly logger?: Logger;
  readonly httpClient?: HttpClient;
  readonly now?: () => number;
}

/** PROTOCOL.md §8: what a domain's mailbox publishes at /.well-known/federizer. */
export function wellKnown(config: MailboxConfig) {
  return {
    domain: config.domain,
    authorization_server: config.issuer,
    mta_client_id: config.mtaClientId,
    resource: `${config.publicUrl}/api/v1`,
    transfer_endpoint: `${config.publicUrl}/federation/v1/transfer`,
    fetch_endpoint: `${config.publicUrl}/federation/v1/fetch`,
    api: `${config.publicUrl}/api/v1`,
    webmail: config.webmailUrl,
    max_resource_size: config.maxResourceSize,
  };
}

export class MailboxService implements AsyncDisposable {
  #closed = false;

  private constructor(
    readonly config: MailboxConfig,
    readonly knex: Knex,
    readonly blobs: DiskBlobStore,
    readonly accounts: AccountStore,
    private readonly logger: Logger,
    private readonly ownsKnex: boolean,
    private readonly httpClient: HttpClient,
    private server: RunningServer | undefined,
  ) {}

  static async start(
    config: MailboxConfig,
    _secrets: MailboxSecrets,
    overrides: MailboxOverrides = {},
  ): Promise<MailboxService> {
    const logger = overrides.logger ?? createLogger({ name: 'federizer-mailbox', base: { domain: config.domain } });
    const now = overrides.now ?? Date.now;
    const knex = overrides.knex ?? createKnex(databaseConfigFromUrl(config.databaseUrl));
    await migrateLatest(knex, mailboxMigrations, MAILBOX_MIGRATIONS_TABLE);
    const blobs = new DiskBlobStore(config.blobDir);
    await blobs.removeStaleTemp(60 * 60_000);
    const accounts = new AccountStore(knex, { now });
    const httpClient = overrides.httpClient ?? createHttpClient({ dev: config.dev });
    const service = new MailboxService(
      config,
      knex,
      blobs,
      accounts,
      logger,
      overrides.knex === undefined,
      httpClient,
      undefined,
    );
    service.server = await listen(service.#app(now), { host: config.host, port: config.port });
    logger.info({ url: service.server.url, publicUrl: config.publicUrl }, 'mailbox listening');
    return service;
  }

  get url(): string {
    return this.server!.url;
  }

  #app(now: () => number) {
    const config = this.config;
    const registry = createRegistry('mailbox');
    const uploaded = new Counter({
      name: 'federizer_mailbox_uploaded_bytes_total',
      help: 'Bytes of resources uploaded by users.',
      registers: [registry],
    });
    const httpGet: HttpGet = (url, init) =>
      this.httpClient.fetch(url, init) as unknown as Promise<Response & globalThis.Response>;
    const requireUserToken = requireUser({
      issuer: config.issuer,
      resource: `${config.publicUrl}/api/v1`,
      publicUrl: config.publicUrl,
      keys: new IssuerKeys(config.issuer, httpGet, now),
      replay: new KnexReplayStore(this.knex, { table: 'mail_replay', now: () => Math.floor(now() / 1000) }),
      now,
    });

    const app = express();
    app.disable('x-powered-by');
    app.use(httpMetrics(registry, 'federizer_mailbox'));
    app.get('/healthz', (_req, res) => void res.json({ status: 'ok' }));
    app.get('/readyz', async (_req, res) => {
      try {
        await this.knex.raw('select 1');
        res.json({ status: 'ready' });
      } catch {
        res.status(503).json({ status: 'unavailable', reason: 'the database does not answer' });
      }
    });
    app.get('/metrics', metricsHandler(registry));
    app.get(
      '/.well-known/federizer',
      (_req, res) => void res.set('Cache-Control', 'public, max-age=300').json(wellKnown(config)),
    );

    const api = express.Router();
    // The webmail's origin only (PROTOCOL: CORS for the webmail's origin); DPoP and the headers the API reads.
    api.use(
      cors({
        origin: (origin, done) => done(null, origin !== undefined && config.corsOrigins.includes(origin)),
        allowedHeaders: ['Authorization', 'DPoP', 'Content-Type', 'Range', 'If-None-Match'],
        exposedHeaders: ['ETag', 'Content-Range', 'Repr-Digest', 'WWW-Authenticate', 'Location', 'Retry-After'],
        maxAge: 600,
      }),
    );
    api.use(requireUserToken);
    api.get('/session', async (req, res) => {
      const address = req.user!.address;
      await this.accounts.ensure(address);
      res.json({
        address,
        domain: config.domain,
        limits: { maxResourceSize: config.maxResourceSize, quotaBytes: config.quotaBytes },
        storageUsed: await this.accounts.storageUsed(address),
      });
    });
    api.use(
      '/resources',
      resourcesRouter({
        blobs: this.blobs,
        accounts: this.accounts,
        maxResourceSize: config.maxResourceSize,
        quotaBytes: config.quotaBytes,
        onUploaded: (n) => uploaded.inc(n),
      }),
    );
    app.use('/api/v1', api);

    app.use((_req, res) => void res.status(404).json({ error: 'not_found', error_description: 'no such endpoint' }));
    app.use((err: Error, _req: Request, res: Response, _next: NextFunction) => {
      this.logger.error({ err }, 'request failed');
      if (!res.headersSent)
        res.status(500).json({ error: 'server_error', error_description: 'an internal error; it has been logged' });
    });
    return app;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.server?.close();
    await this.httpClient.close();
    if (this.ownsKnex) await this.knex.destroy();
    this.logger.info('mailbox stopped');
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

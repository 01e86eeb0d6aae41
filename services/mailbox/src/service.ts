/**
 * The composition root of the mailbox service: `MailboxService.start(config, secrets, overrides)` builds the
 * database, the blob store, the stores, the MTA (AS client, outbox) and the HTTP API. Tests swap parts
 * through `overrides`.
 */
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import cors from 'cors';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Knex } from 'knex';
import {
  createDiscovery,
  httpGetOf,
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
import type { Discovery } from '@federizer/protocol';
import { externalContentType, formatDate, type SrvResolver, type TrustResolver } from '@federizer/protocol';
import { messagesRouter } from './api/messages.js';
import { ChangeNotifier, PgChangeChannel } from './api/notifier.js';
import { resourcesRouter } from './api/resources.js';
import { syncRouter } from './api/sync.js';
import { sendRouter, type SendDeps } from './api/send.js';
import { draftsRouter } from './api/drafts.js';
import { forwardRouter } from './api/forward.js';
import { IssuerKeys, requireUser } from './api/user-auth.js';
import { DiskBlobStore } from './blobs/index.js';
import type { MailboxConfig, MailboxSecrets } from './config.js';
import { UserDirectory } from './directory.js';
import { AsClient } from './mta/as-client.js';
import { Outbox } from './mta/outbox.js';
import { Fetcher } from './mta/fetcher.js';
import { Forwarder } from './mta/forwarding.js';
import { BlobCollector } from './gc/blob-collector.js';
import { fetchRouter } from './federation/fetch-endpoint.js';
import { TRANSFER_PATH, transferRouter } from './federation/transfer.js';
import {
  AccountStore,
  ChangeLog,
  ForwardingStore,
  JobQueue,
  MessageStore,
  ShareStore,
  TransferLog,
} from './storage/index.js';
import { mailboxMetrics, type MailboxMetrics } from './metrics.js';
import { mailboxOpenApi } from './openapi.js';
import { MAILBOX_MIGRATIONS_TABLE, mailboxMigrations } from './storage/migrations.js';

export interface MailboxOverrides {
  readonly knex?: Knex;
  readonly logger?: Logger;
  readonly httpClient?: HttpClient;
  readonly now?: () => number;
  /** Replaces the DNS client (config.dnsServer or the system resolvers). */
  readonly resolveSrv?: SrvResolver;
  /** Replaces DNS discovery of other domains altogether. */
  readonly trust?: TrustResolver & Pick<Discovery, 'mailbox'>;
  /** Whether the outbox runs on its own (tests may drive it with `service.outbox.poll()`). Default true. */
  readonly startWorkers?: boolean;
  /**
   * The change log's retention, which runs with the workers: how often (default hourly, the first run a
   * minute after start or sooner with a shorter interval) and what it keeps (`ChangeLog.prune`'s defaults:
   * 30 days, or the newest 100,000 changes of each account).
   */
  readonly changeRetention?: { readonly intervalMs?: number; readonly keepMs?: number; readonly keepCount?: number };
  /**
   * The retention of shares and jobs, which runs with the workers as the change log's does (hourly, the first
   * run a minute after start or sooner with a shorter interval): deliveries whose share window ended unfetched
   * are marked failed (`expired`); shares are deleted, with their deliveries and private DPoP keys,
   * `shareGraceMs` after their window ended (default 30 days); finished jobs are forgotten `jobKeepMs` after
   * they finished (default 7 days).
   */
  readonly housekeeping?: { readonly intervalMs?: number; readonly shareGraceMs?: number; readonly jobKeepMs?: number };
  /** How long an HTTP connection may stay silent mid-request before it is closed (default `IDLE_TIMEOUT_MS`, 120 s). */
  readonly httpIdleTimeoutMs?: number;
}

/** The change log is pruned hourly: what ages out in an hour is a small part of 30 days. */
const CHANGE_PRUNE_INTERVAL_MS = 60 * 60_000;
/** The first run comes soon after start, so a replica restarted more often than hourly still prunes. */
const FIRST_CHANGE_PRUNE_DELAY_MS = 60_000;
/** Shares and jobs are cleaned up hourly too: a delivery is marked expired within an hour of its window's end. */
const HOUSEKEEPING_INTERVAL_MS = 60 * 60_000;
/**
 * Every authorized request records its DPoP proof (`mail_replay`), and a record is useless a minute or two
 * later: the expired ones are deleted this often, so the table stays a few minutes of traffic.
 */
const REPLAY_PRUNE_INTERVAL_MS = 5 * 60_000;
/**
 * A share stays this long after its window ended, so that its sender still sees how each delivery ended
 * (fetched, failed, expired) and a late fetch is answered `410 share_expired`; then it goes, with its
 * deliveries and its private DPoP key, which nothing can use any more (no transfer or fetch of it is
 * accepted once its assertion has expired).
 */
const SHARE_DELETE_GRACE_MS = 30 * 24 * 3600_000;
/**
 * A finished job (done, failed, cancelled) is forgotten this long after it finished: longer than the five
 * days a job may keep retrying (`GIVE_UP_AFTER_MS`), so a relay waiting for its transfers always finds them
 * finished rather than missing (a missing transfer is not known to be done: the relayed message would be
 * given back to the inbox instead of deleted). A fetch forgotten is simply queued again if needed.
 */
const FINISHED_JOB_KEEP_MS = 7 * 24 * 3600_000;
/** Shares examined per `ShareStore.expire` batch, and batches per run (the rest waits for the next run). */
const EXPIRE_BATCH = 1000;
const EXPIRE_BATCHES_PER_RUN = 100;

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
  readonly messages: MessageStore;
  readonly shares: ShareStore;
  readonly jobs: JobQueue;
  readonly directory: UserDirectory;
  readonly discovery: TrustResolver & Pick<Discovery, 'mailbox'>;
  readonly as: AsClient;
  readonly outbox: Outbox;
  readonly fetcher: Fetcher;
  readonly transfers: TransferLog;
  readonly changes: ChangeLog;
  readonly forwarding: ForwardingStore;
  /** Forwarding (PROTOCOL §7), by hand and by the users' rules; its `relays` clean up after pure relays. */
  readonly forwarder: Forwarder;
  /** Deletes the blobs nothing refers to any more, once the share window has passed. */
  readonly collector: BlobCollector;
  /** Wakes long polls of /changes when an account changes, on every replica (PostgreSQL LISTEN/NOTIFY). */
  readonly notifier: ChangeNotifier;
  #server: RunningServer | undefined;
  #closed = false;
  #metrics: MailboxMetrics | undefined;
  #workers = false;
  readonly #retention: NonNullable<MailboxOverrides['changeRetention']>;
  readonly #housekeeping: NonNullable<MailboxOverrides['housekeeping']>;
  /** The timers of the recurring maintenance runs, and the runs in progress (close stops and awaits them). */
  readonly #maintenanceTimers = new Set<NodeJS.Timeout>();
  readonly #maintenanceRuns = new Set<Promise<void>>();

  private constructor(
    readonly config: MailboxConfig,
    readonly knex: Knex,
    readonly blobs: DiskBlobStore,
    readonly accounts: AccountStore,
    private readonly logger: Logger,
    private readonly ownsKnex: boolean,
    private readonly httpClient: HttpClient,
    secrets: MailboxSecrets,
    private readonly now: () => number,
    overrides: MailboxOverrides,
  ) {
    const clock = { now };
    this.#retention = overrides.changeRetention ?? {};
    const pruneInterval = this.#retention.intervalMs;
    if (pruneInterval !== undefined && (!Number.isSafeInteger(pruneInterval) || pruneInterval < 1))
      throw new TypeError('changeRetention.intervalMs must be a whole number of ms >= 1');
    this.#housekeeping = overrides.housekeeping ?? {};
    for (const [name, value, min] of [
      ['intervalMs', this.#housekeeping.intervalMs, 1],
      ['shareGraceMs', this.#housekeeping.shareGraceMs, 0],
      ['jobKeepMs', this.#housekeeping.jobKeepMs, 0],
    ] as const) {
      if (value !== undefined && (!Number.isSafeInteger(value) || value < min))
        throw new TypeError(`housekeeping.${name} must be a whole number of ms >= ${min}`);
    }
    this.messages = new MessageStore(knex, clock);
    this.shares = new ShareStore(knex, clock);
    this.jobs = new JobQueue(knex, { ...clock, retryBaseMs: config.retryBaseSeconds * 1000 });
    this.changes = new ChangeLog(knex, clock);
    this.transfers = new TransferLog(knex, clock);
    this.forwarding = new ForwardingStore(knex, clock);
    this.notifier = new ChangeNotifier({
      changes: this.changes,
      intervalMs: config.longPollCheckSeconds * 1000,
      // Replicas share a PostgreSQL database, and tell each other of changes through it; SQLite has one process.
      channel:
        knex.client.dialect === 'postgresql'
          ? new PgChangeChannel(knex, {
              onError: (err) => logger.warn({ err }, 'the change channel between replicas failed; opening it again'),
              onListening: (channel) => logger.info({ channel }, 'listening for the other replicas’ changes'),
            })
          : undefined,
      onError: (err, address) => logger.warn({ err, address }, 'change check failed'),
    });
    this.directory = new UserDirectory(config.authAdminUrl, secrets.authAdminToken ?? '', httpClient, now);
    this.discovery =
      overrides.trust ??
      createDiscovery({
        http: httpClient,
        dnsServer: config.dnsServer,
        resolveSrv: overrides.resolveSrv,
        dev: config.dev,
        now,
      });
    this.as = new AsClient({
      issuer: config.issuer,
      clientId: config.mtaClientId,
      privateJwk: secrets.mtaPrivateJwk,
      signingKey: secrets.mtaKey,
      clientSecret: secrets.mtaClientSecret,
      http: httpClient,
      now,
    });
    this.outbox = new Outbox({
      jobs: this.jobs,
      shares: this.shares,
      mailboxOf: (domain) => this.discovery.mailbox(domain),
      http: httpClient,
      logger,
      now,
      notifyFailure: (share, failed) => this.#failureNotice(share, failed),
      onChanged: (address) => this.notifier.notify(address),
      concurrency: config.outboxConcurrency,
      onOutcome: (outcome, seconds) => {
        this.#metrics?.deliveries.inc({ outcome });
        this.#metrics?.transferDuration.observe(seconds);
      },
    });
    this.fetcher = new Fetcher({
      domain: config.domain,
      jobs: this.jobs,
      blobs,
      messages: this.messages,
      as: this.as,
      mailboxOf: (domain) => this.discovery.mailbox(domain),
      http: httpClient,
      logger,
      now,
      maxResourceSize: config.maxResourceSize,
      concurrency: config.fetchConcurrency,
      onChanged: (addresses) => addresses.forEach((a) => this.notifier.notify(a)),
      onFetched: (bytes, seconds) => {
        this.#metrics?.fetchedBytes.inc(bytes);
        this.#metrics?.fetchDuration.observe(seconds);
      },
    });
    // Forwarding (PROTOCOL §7): by hand through the API, and by the users' rules as transfers arrive.
    this.forwarder = new Forwarder({
      domain: config.domain,
      shareWindowSeconds: config.shareWindowSeconds,
      maxResourceSize: config.maxResourceSize,
      maxMessageBytes: config.maxMessageBytes,
      quotaBytes: config.quotaBytes,
      as: this.as,
      accounts,
      messages: this.messages,
      shares: this.shares,
      jobs: this.jobs,
      forwarding: this.forwarding,
      blobs,
      recipientExists: (address) => this.directory.exists(address),
      trust: this.discovery,
      logger,
      now,
      onChanged: (addresses, queued) => {
        for (const address of addresses) this.notifier.notify(address);
        if (!this.#workers) return;
        if (queued.transfers) this.outbox.wake();
        if (queued.fetches) this.fetcher.wake();
      },
    });
    this.collector = new BlobCollector({
      domain: config.domain,
      jobs: this.jobs,
      accounts,
      blobs,
      logger,
      now,
      intervalMs: config.blobGcIntervalSeconds * 1000,
      shareWindowMs: config.shareWindowSeconds * 1000,
      diskGraceMs: config.blobGcGraceSeconds * 1000,
      onCollected: (n, bytes) => {
        this.#metrics?.blobsCollected.inc(n);
        this.#metrics?.blobBytesCollected.inc(bytes);
      },
      onRun: (outcome) => this.#metrics?.blobCollections.inc({ outcome }),
    });
  }

  static async start(
    config: MailboxConfig,
    secrets: MailboxSecrets,
    overrides: MailboxOverrides = {},
  ): Promise<MailboxService> {
    const logger = overrides.logger ?? createLogger({ name: 'federizer-mailbox', base: { domain: config.domain } });
    const now = overrides.now ?? Date.now;
    const knex = overrides.knex ?? createKnex(databaseConfigFromUrl(config.databaseUrl));
    await migrateLatest(knex, mailboxMigrations, MAILBOX_MIGRATIONS_TABLE);
    const blobs = new DiskBlobStore(config.blobDir);
    const moved = await blobs.migrateLayout();
    if (moved > 0) logger.info({ moved }, 'resources moved to the one-level layout of the blob store');
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
      secrets,
      now,
      overrides,
    );
    service.#server = await listen(service.#app(), {
      host: config.host,
      port: config.port,
      idleTimeoutMs: overrides.httpIdleTimeoutMs,
    });
    if (overrides.startWorkers ?? true) {
      service.#workers = true;
      service.outbox.start();
      service.fetcher.start();
      service.forwarder.relays.start();
      // Scheduled before start answers, so a started mailbox always has its collection run planned.
      await service.collector.schedule();
      service.collector.start();
      service.#startPruning();
      service.#startHousekeeping();
      service.#startReplayPruning();
    }
    logger.info({ url: service.#server.url, publicUrl: config.publicUrl }, 'mailbox listening');
    return service;
  }

  get url(): string {
    return this.#server!.url;
  }

  /**
   * Applies the change log's retention now and then (PROTOCOL.md §9: a client whose state is older than the
   * log gets 410 and resynchronizes), on a timer of this process that does not keep it alive. Every replica
   * runs it, possibly at the same moment: `ChangeLog.pruneBefore` cuts each account under its account lock,
   * so concurrent runs only find less to do. The next run is planned when one ends, so runs never overlap.
   */
  #startPruning(): void {
    this.#every(this.#retention.intervalMs ?? CHANGE_PRUNE_INTERVAL_MS, () => this.#pruneChanges());
  }

  /**
   * The retention of shares and jobs (nothing of them grows without bound), on the same kind of timer: every
   * replica runs it, and concurrent runs only find less to do (`ShareStore.expire` changes each share under
   * its sender's account lock, and the deletions are single statements).
   */
  #startHousekeeping(): void {
    this.#every(this.#housekeeping.intervalMs ?? HOUSEKEEPING_INTERVAL_MS, async () => {
      await this.#cleanUpShares();
      await this.#purgeJobs();
    });
  }

  /**
   * Runs `run` every `intervalMs`, the first time a minute after start (sooner with a shorter interval), on a
   * timer that does not keep the process alive. The next run is planned when one ends, so runs never overlap;
   * `close` stops the timer and waits for a run in progress. `run` reports its own failures.
   */
  #every(intervalMs: number, run: () => Promise<void>): void {
    const plan = (delayMs: number) => {
      if (this.#closed) return;
      const timer = setTimeout(() => {
        this.#maintenanceTimers.delete(timer);
        if (this.#closed) return;
        const running: Promise<void> = run().finally(() => {
          this.#maintenanceRuns.delete(running);
          plan(intervalMs);
        });
        this.#maintenanceRuns.add(running);
      }, delayMs);
      timer.unref();
      this.#maintenanceTimers.add(timer);
    };
    plan(Math.min(intervalMs, FIRST_CHANGE_PRUNE_DELAY_MS));
  }

  /**
   * Deliveries whose share window ended before they were fetched are marked failed (`expired`), in batches;
   * then the shares whose window ended more than the grace ago are deleted with their deliveries and DPoP
   * keys. Counted and logged; a failure is reported, never thrown (the next run tries again).
   */
  async #cleanUpShares(): Promise<void> {
    await this.#maintain(
      this.#metrics?.shareCleanups,
      'expired shares cleaned up',
      'cleaning up expired shares failed',
      async () => {
        let expired = 0;
        for (let batch = 0; batch < EXPIRE_BATCHES_PER_RUN; batch++) {
          const n = await this.shares.expire({ limit: EXPIRE_BATCH });
          this.#metrics?.deliveriesExpired.inc(n);
          expired += n;
          if (n === 0) break;
        }
        const deleted = await this.shares.deleteExpired(this.#housekeeping.shareGraceMs ?? SHARE_DELETE_GRACE_MS);
        this.#metrics?.sharesDeleted.inc(deleted);
        return { expired, deleted };
      },
    );
  }

  /**
   * Deletes the DPoP proof records that can no longer refuse anything (their proofs would be stale anyway),
   * every few minutes (`housekeeping.intervalMs` when set, as for the other clean-ups). Every replica runs
   * it; concurrent runs only find less to do.
   */
  #startReplayPruning(): void {
    const replay = new KnexReplayStore(this.knex, { table: 'mail_replay', now: () => Math.floor(this.now() / 1000) });
    this.#every(this.#housekeeping.intervalMs ?? REPLAY_PRUNE_INTERVAL_MS, () =>
      this.#maintain(
        this.#metrics?.replayPrunes,
        'DPoP replay records pruned',
        'pruning DPoP replay records failed',
        async () => {
          const pruned = await replay.prune();
          this.#metrics?.replayRecordsPruned.inc(pruned);
          return { pruned };
        },
      ),
    );
  }

  /** Forgets the jobs finished longer ago than the retention; counted and logged, never thrown. */
  async #purgeJobs(): Promise<void> {
    await this.#maintain(this.#metrics?.jobPurges, 'finished jobs purged', 'purging finished jobs failed', async () => {
      const purged = await this.jobs.purge(this.#housekeeping.jobKeepMs ?? FINISHED_JOB_KEEP_MS);
      this.#metrics?.jobsPurged.inc(purged);
      return { purged };
    });
  }

  /** One retention run: counted and logged; a failure is reported, never thrown (the next run tries again). */
  async #pruneChanges(): Promise<void> {
    await this.#maintain(
      this.#metrics?.changePrunes,
      'change log pruned',
      'pruning the change log failed',
      async () => {
        const removed = await this.changes.prune({
          keepMs: this.#retention.keepMs,
          keepCount: this.#retention.keepCount,
        });
        this.#metrics?.changesPruned.inc(removed);
        return { removed };
      },
    );
  }

  /**
   * One maintenance run: `work` answers what it did, logged (with the time taken) when it did anything; the
   * run is counted by outcome, and a failure is logged, never thrown (the next run tries again).
   */
  async #maintain(
    runs: MailboxMetrics['changePrunes'] | undefined,
    done: string,
    failed: string,
    work: () => Promise<Record<string, number>>,
  ): Promise<void> {
    const started = performance.now();
    try {
      const counts = await work();
      runs?.inc({ outcome: 'completed' });
      if (Object.values(counts).some((n) => n > 0))
        this.logger.info({ ...counts, ms: Math.round(performance.now() - started) }, done);
    } catch (err) {
      runs?.inc({ outcome: 'failed' });
      this.logger.error({ err }, failed);
    }
  }

  /** A delivery-failure notice in the sender's inbox: a short text resource naming who did not get it, and why. */
  async #failureNotice(
    share: { address: string; messageId: string },
    failed: readonly { address: string; reason: string }[],
  ): Promise<void> {
    if (failed.length === 0) return;
    const text = `Your message ${share.messageId} could not be delivered to:\n\n${failed.map((f) => `  ${f.address}: ${f.reason}`).join('\n')}\n`;
    const stored = await this.blobs.put(Readable.from([Buffer.from(text)]), { maxSize: this.config.maxResourceSize });
    await this.accounts.ensure(share.address);
    await this.accounts.addResource(share.address, {
      contentId: stored.contentId,
      size: stored.size,
      mediaType: 'text/plain; charset=utf-8',
    });
    const messageId = `<${randomUUID()}@${this.config.domain}>`;
    const from = `Mail Delivery System <postmaster@${this.config.domain}>`;
    const subject = 'Undeliverable: your message could not be delivered to everyone';
    await this.messages.create({
      address: share.address,
      mailbox: 'inbox',
      messageId,
      threadId: share.messageId,
      envelope: [
        {
          headers: [
            { Date: formatDate(new Date(this.now())) },
            { From: from },
            { To: share.address },
            { Subject: subject },
            { 'Message-ID': messageId },
            { 'X-Thread-ID': share.messageId },
            { 'In-Reply-To': share.messageId },
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': stored.contentId },
              { 'Content-Type': externalContentType(stored.size, 'text/plain; charset=utf-8') },
            ],
          },
        ],
      },
      subject,
      from,
      date: this.now(),
      resources: [{ contentId: stored.contentId, size: stored.size, status: 'held' }],
    });
  }

  #app() {
    const { config, now } = this;
    const registry = createRegistry('mailbox');
    const metrics = mailboxMetrics(registry, { jobs: this.jobs, openPolls: () => this.notifier.openPolls() });
    this.#metrics = metrics;
    const httpGet = httpGetOf(this.httpClient);
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
    app.get('/openapi.json', (_req, res) => void res.json(mailboxOpenApi(config)));
    app.get(
      '/.well-known/federizer',
      (_req, res) => void res.set('Cache-Control', 'public, max-age=300').json(wellKnown(config)),
    );

    const replay = new KnexReplayStore(this.knex, { table: 'mail_replay', now: () => Math.floor(now() / 1000) });
    // Federation (PROTOCOL §5, §6): the transfer endpoint reads its body itself, so it comes before any parser.
    app.use(
      TRANSFER_PATH,
      transferRouter({
        config: {
          domain: config.domain,
          publicUrl: config.publicUrl,
          maxMessageBytes: config.maxMessageBytes,
          maxResourceSize: config.maxResourceSize,
          quotaBytes: config.quotaBytes,
        },
        trust: this.discovery,
        replay,
        messages: this.messages,
        transfers: this.transfers,
        jobs: this.jobs,
        accounts: this.accounts,
        recipientExists: (address) => this.directory.exists(address),
        onReceived: (address, messageId, envelope, stored) =>
          this.forwarder.onReceived(address, messageId, envelope, stored),
        onAccepted: (result) => {
          for (const address of result.accepted) this.notifier.notify(address);
          if (this.#workers) this.fetcher.wake();
        },
        now,
        rateLimit: { perDomainPerMinute: config.transferRatePerMinute },
        // Answered 503 with Retry-After (PROTOCOL §5), not this app's 500: the sender retries.
        onError: (err) => this.logger.error({ err }, 'transfer failed; answered 503'),
      }),
    );
    app.use(
      '/federation/v1/fetch',
      fetchRouter({
        publicUrl: config.publicUrl,
        resource: `${config.publicUrl}/api/v1`,
        trust: this.discovery,
        replay,
        shares: this.shares,
        messages: this.messages,
        blobs: this.blobs,
        now,
        onChanged: (address) => this.notifier.notify(address),
        // Answered 503 with Retry-After (PROTOCOL §6.3), never a 401 the fetcher would take as final.
        onError: (err) => this.logger.error({ err }, 'fetch failed; answered 503'),
      }),
    );

    const api = express.Router();
    // The webmail's origin only; DPoP and the headers the API reads.
    api.use(
      cors({
        origin: (origin, done) => done(null, origin !== undefined && config.corsOrigins.includes(origin)),
        allowedHeaders: ['Authorization', 'DPoP', 'Content-Type', 'Range', 'If-None-Match', 'If-Range', 'If-Match'],
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
        limits: {
          maxResourceSize: config.maxResourceSize,
          quotaBytes: config.quotaBytes,
          maxMessageBytes: config.maxMessageBytes,
        },
        storageUsed: await this.accounts.storageUsed(address),
      });
    });
    // Sending a message and sending a draft share one path, and so one set of dependencies.
    const sending: SendDeps = {
      domain: config.domain,
      shareWindowSeconds: config.shareWindowSeconds,
      maxMessageBytes: config.maxMessageBytes,
      as: this.as,
      accounts: this.accounts,
      messages: this.messages,
      shares: this.shares,
      jobs: this.jobs,
      recipientExists: (address) => this.directory.exists(address),
      now,
      // A new transfer need not wait for the next poll; when tests drive the outbox, they poll themselves.
      onSent: (addresses) => {
        for (const address of addresses) this.notifier.notify(address);
        if (this.#workers) this.outbox.wake();
      },
    };
    api.use(sendRouter(sending));
    api.use(draftsRouter(sending));
    api.use(forwardRouter({ forwarder: this.forwarder, messages: this.messages }));
    api.use(syncRouter({ changes: this.changes, notifier: this.notifier, maxWaitSeconds: 50 }));
    api.use(
      messagesRouter({
        messages: this.messages,
        shares: this.shares,
        forwarding: this.forwarding,
        notifier: this.notifier,
      }),
    );
    api.use(
      '/resources',
      resourcesRouter({
        blobs: this.blobs,
        accounts: this.accounts,
        maxResourceSize: config.maxResourceSize,
        quotaBytes: config.quotaBytes,
        onUploaded: (n) => metrics.uploadedBytes.inc(n),
        onStorageFull: (err) => this.logger.error({ err }, 'an upload was refused: the storage is full (507)'),
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
    // Long polls answer first, so that they do not hold the server's close; the channel closes meanwhile.
    const notifierClosed = this.notifier.close();
    await this.#server?.close();
    await this.outbox.stop();
    await this.fetcher.stop();
    await this.forwarder.relays.stop();
    await this.collector.stop();
    for (const timer of this.#maintenanceTimers) clearTimeout(timer);
    this.#maintenanceTimers.clear();
    await Promise.all([...this.#maintenanceRuns]);
    await this.httpClient.close();
    await notifierClosed;
    if (this.ownsKnex) await this.knex.destroy();
    this.logger.info('mailbox stopped');
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * The composition root of the Authorization Server: `AuthService.start(config, secrets, overrides)` builds
 * every dependency (tests swap parts through `overrides`), serves HTTP, and keeps the signing keys fresh.
 */
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Knex } from 'knex';
import type Provider from 'oidc-provider';
import { Counter } from 'prom-client';
import {
  createDiscovery,
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
import type { SrvResolver, TrustResolver } from '@federizer/protocol';
import { adminRouter } from './admin.js';
import type { AuthConfig, AuthSecrets } from './config.js';
import { TOKEN_EXCHANGE, type ExchangeKind } from './exchange.js';
import { interactionRouter } from './interactions.js';
import { KeyRing } from './keys.js';
import { PAGE_CSP, errorPage, logoutPage, signedOutPage } from './pages.js';
import { createProvider, tokenErrorCode } from './provider.js';
import { KnexReplayStore, adapterFactory, pruneExpired } from './storage/adapter.js';
import { AUTH_MIGRATIONS_TABLE, authMigrations } from './storage/migrations.js';
import { LoginThrottle } from './storage/throttle.js';
import { UserStore } from './storage/users.js';
import { authOpenApi } from './openapi.js';

export interface AuthOverrides {
  readonly knex?: Knex;
  readonly logger?: Logger;
  /** Replaces DNS discovery of other domains altogether. */
  readonly trust?: TrustResolver;
  /** Replaces the DNS client (config.dnsServer or the system resolvers). */
  readonly resolveSrv?: SrvResolver;
  readonly httpClient?: HttpClient;
  readonly now?: () => number;
}

/**
 * Makes the provider see every request at the issuer's scheme and host (it reads them from X-Forwarded-Proto
 * and X-Forwarded-Host: provider.proxy is on), and from the client address express decided on (`req.ip`,
 * which honours X-Forwarded-For only from the proxies `trustProxy` trusts). oidc-provider builds from the
 * request's host the endpoint URLs of its metadata (RFC 8414), the audiences it accepts in client assertions
 * (RFC 7523 §3) and the htu it requires of the DPoP proofs of its own grants (RFC 9449 §4.3): taken from a
 * Host or X-Forwarded-Host header, any caller could pick them. Rewriting rather than refusing other hosts
 * keeps the AS reachable by its listening address (127.0.0.1:<port> in the local federation and the tests)
 * and behind proxies that pass their own Host on; what it answers is the same whichever name reached it.
 */
export function seenAtIssuer(req: Request, issuer: URL): void {
  const client = req.ip ?? req.socket.remoteAddress ?? '';
  req.headers.host = issuer.host;
  req.headers['x-forwarded-host'] = issuer.host;
  req.headers['x-forwarded-proto'] = issuer.protocol.slice(0, -1);
  req.headers['x-forwarded-for'] = client;
  delete req.headers.forwarded;
}

export class AuthService implements AsyncDisposable {
  #provider: Provider;
  /** The provider's request handler: Koa composes its middleware anew on every callback() call. */
  #handle: ReturnType<Provider['callback']>;
  #timers: NodeJS.Timeout[] = [];
  #closed = false;

  private constructor(
    readonly config: AuthConfig,
    private readonly secrets: AuthSecrets,
    readonly knex: Knex,
    readonly keys: KeyRing,
    readonly users: UserStore,
    private readonly logger: Logger,
    private readonly ownsKnex: boolean,
    private readonly httpClient: HttpClient,
    private readonly build: () => Provider,
    private server: RunningServer | undefined,
    private readonly now: () => number,
  ) {
    this.#provider = build();
    this.#handle = this.#provider.callback();
  }

  static async start(config: AuthConfig, secrets: AuthSecrets, overrides: AuthOverrides = {}): Promise<AuthService> {
    const logger = overrides.logger ?? createLogger({ name: 'federizer-auth', base: { domain: config.domain } });
    const now = overrides.now ?? Date.now;
    const knex = overrides.knex ?? createKnex(databaseConfigFromUrl(config.databaseUrl));
    await migrateLatest(knex, authMigrations, AUTH_MIGRATIONS_TABLE);
    const users = new UserStore(knex, { domain: config.domain, now: () => new Date(now()) });
    const keys = await KeyRing.load(
      knex,
      {
        alg: config.signingAlg,
        rotationSeconds: config.keyRotationSeconds,
        shareWindowSeconds: config.shareWindowSeconds,
      },
      now(),
    );
    const httpClient = overrides.httpClient ?? createHttpClient({ dev: config.dev });
    const trust =
      overrides.trust ??
      createDiscovery({
        http: httpClient,
        dnsServer: config.dnsServer,
        resolveSrv: overrides.resolveSrv,
        dev: config.dev,
        now,
      });
    const adapter = adapterFactory(knex);
    const registry = createRegistry('auth');
    const tokensIssued = new Counter({
      name: 'federizer_auth_tokens_issued_total',
      help: 'Tokens issued, by grant type (and exchange for the token exchange).',
      labelNames: ['grant_type', 'exchange'],
      registers: [registry],
    });
    const exchangeFailures = new Counter({
      name: 'federizer_auth_token_exchange_failures_total',
      help: 'Refused token exchanges, by OAuth error code.',
      labelNames: ['error'],
      registers: [registry],
    });
    const logins = new Counter({
      name: 'federizer_auth_logins_total',
      help: 'Sign-in attempts, by outcome.',
      labelNames: ['outcome'],
      registers: [registry],
    });
    const basePath = new URL(config.issuer).pathname.replace(/\/$/, '');

    const build = (): Provider => {
      const provider = createProvider({
        config,
        secrets,
        keys,
        users,
        adapter,
        basePath,
        exchange: {
          users,
          replay: new KnexReplayStore(knex),
          trust,
          now,
          // Date.now, the clock the provider's adapter stamps a Grant's expires_at with (adapterFactory above).
          subject: (address, grantId) => users.getWithGrant(address, grantId, Date.now()),
          sendUnderGrant: (address, grantId, at) =>
            users.consumeSendQuotaUnderGrant(address, grantId, 1, at, Date.now()),
          onIssued: (kind: ExchangeKind) => tokensIssued.inc({ grant_type: TOKEN_EXCHANGE, exchange: kind }),
        },
        renderError: async (ctx, out) => {
          ctx.type = 'html';
          ctx.set('Content-Security-Policy', PAGE_CSP);
          ctx.body = errorPage(String(out.error), out.error_description as string | undefined);
        },
        logoutSource: async (ctx, form) => {
          ctx.set('Content-Security-Policy', PAGE_CSP);
          ctx.body = logoutPage(form, config.domain);
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.set('Content-Security-Policy', PAGE_CSP);
          ctx.body = signedOutPage(config.domain);
        },
      });
      provider.on('grant.success', (ctx) => {
        const grantType = String(ctx.oidc.params?.grant_type);
        if (grantType !== TOKEN_EXCHANGE) tokensIssued.inc({ grant_type: grantType, exchange: '' });
      });
      provider.on('grant.error', (ctx, err: Error & { error?: string; error_description?: string }) => {
        const error = tokenErrorCode(err);
        if (ctx.oidc.params?.grant_type === TOKEN_EXCHANGE) exchangeFailures.inc({ error: error ?? 'server_error' });
        logger.info(
          {
            grant_type: ctx.oidc.params?.grant_type,
            client_id: ctx.oidc.client?.clientId,
            error,
            description: err.error_description,
          },
          'grant refused',
        );
      });
      provider.on('server_error', (_ctx, err) => logger.error({ err }, 'provider error'));
      return provider;
    };

    const service = new AuthService(
      config,
      secrets,
      knex,
      keys,
      users,
      logger,
      overrides.knex === undefined,
      httpClient,
      build,
      undefined,
      now,
    );
    const app = service.#app(registry, logins, basePath, now);
    service.server = await listen(app, { host: config.host, port: config.port });
    service.#schedule(now);
    logger.info(
      { url: service.server.url, issuer: config.issuer, kid: keys.current.kid },
      'authorization server listening',
    );
    return service;
  }

  /** Where this process listens (may differ from the issuer behind a proxy). */
  get url(): string {
    return this.server!.url;
  }

  get provider(): Provider {
    return this.#provider;
  }

  /** Makes a new key current now, and rebuilds the provider so it signs with it. */
  async rotateKeys(): Promise<string> {
    const kid = await this.keys.rotate(this.now());
    await this.#refreshKeys(this.now());
    return kid;
  }

  async #refreshKeys(now: number): Promise<void> {
    if (await this.keys.refresh(now)) {
      this.#provider = this.build();
      this.#handle = this.#provider.callback();
      this.logger.info(
        { kid: this.keys.current.kid, published: this.keys.keys.map((k) => k.kid) },
        'signing keys changed',
      );
    }
  }

  #schedule(now: () => number): void {
    const every = (ms: number, task: () => Promise<unknown>, what: string) => {
      const timer = setInterval(() => {
        task().catch((err: unknown) => this.logger.error({ err }, `${what} failed`));
      }, ms);
      timer.unref();
      this.#timers.push(timer);
    };
    every(this.config.keyCheckSeconds * 1000, () => this.#refreshKeys(now()), 'key refresh');
    every(10 * 60_000, () => pruneExpired(this.knex, new Date(now())), 'pruning expired records');
  }

  #app(registry: ReturnType<typeof createRegistry>, logins: Counter, basePath: string, now: () => number) {
    const app = express();
    app.disable('x-powered-by');
    // req.ip feeds the per-address login throttle: a forged X-Forwarded-For must not pick its own bucket.
    app.set('trust proxy', this.config.trustProxy ? 'loopback, linklocal, uniquelocal' : false);
    app.use(httpMetrics(registry, 'federizer_auth'));
    const router = express.Router();
    router.get('/healthz', (_req, res) => void res.json({ status: 'ok' }));
    router.get('/readyz', async (_req, res) => {
      try {
        await this.knex.raw('select 1');
        res.json({ status: 'ready', kid: this.keys.current.kid });
      } catch (err) {
        this.logger.warn({ err }, 'not ready');
        res.status(503).json({ status: 'unavailable', reason: 'the database does not answer' });
      }
    });
    router.get('/metrics', metricsHandler(registry));
    router.get('/openapi.json', (_req, res) => void res.json(authOpenApi(this.config)));
    router.use(
      '/admin/v1',
      adminRouter({
        users: this.users,
        keys: () => this.keys,
        adminToken: this.secrets.adminToken,
        rotateKeys: () => this.rotateKeys(),
      }),
    );
    router.use(
      '/interaction',
      interactionRouter({
        provider: () => this.#provider,
        users: this.users,
        throttle: new LoginThrottle(this.knex),
        domain: this.config.domain,
        csrfKey: this.secrets.cookieKeys[0]!,
        clientNames: {
          [this.config.webmail.clientId]: `${this.config.domain} webmail`,
          [this.config.cli.clientId]: 'the federizer command',
        },
        firstParty: new Set([this.config.webmail.clientId, this.config.cli.clientId]),
        now,
        onLogin: (outcome) => logins.inc({ outcome }),
      }),
    );
    // RFC 8414 §3: the metadata of an issuer with a path lives at /.well-known/oauth-authorization-server/<path>
    // (and, by common practice, under the issuer too); oidc-provider serves the same document as OpenID discovery.
    const toDiscovery = (req: Request, _res: Response, next: NextFunction) => {
      req.url = `${basePath}/.well-known/openid-configuration`;
      req.routeLabel = '/.well-known/oauth-authorization-server';
      next();
    };
    app.get(`/.well-known/oauth-authorization-server${basePath}`, toDiscovery);
    if (basePath !== '') app.get(`${basePath}/.well-known/oauth-authorization-server`, toDiscovery);
    app.use(basePath || '/', router);
    const issuer = new URL(this.config.issuer);
    app.use(basePath || '/', (req, res) => {
      req.routeLabel ??= 'oidc-provider';
      seenAtIssuer(req, issuer);
      return this.#handle(req, res);
    });
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
    for (const timer of this.#timers) clearInterval(timer);
    await this.server?.close();
    await this.httpClient.close();
    if (this.ownsKnex) await this.knex.destroy();
    this.logger.info('authorization server stopped');
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

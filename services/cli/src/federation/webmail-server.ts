/**
 * The webmail's static server: the built PWA (`webmail/dist`) with a fallback to index.html for the
 * app's own routes, long-lived caching for the content-hashed `/assets/*`, revalidation for what must
 * change in place (index.html, the service worker, the manifest), and `/config.json`, which tells the
 * app which domain it serves and where its AS and mailbox are. Until the app is built, every page says
 * how to build it (checked per request, so a build in another terminal needs no restart).
 *
 * `/metrics` and `/healthz` are served on a second listener, the metrics port, and never on the public
 * one: the public Ingress gives the webmail every path (a single-page application's routes are its own),
 * so what is for Prometheus and the kubelet must not be on the port the Ingress reaches. The public port
 * answers 404 for both rather than the app's index.html.
 */
import { stat } from 'node:fs/promises';
import { basename, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import express, { type NextFunction, type Request, type Response } from 'express';
import {
  createLogger,
  createRegistry,
  httpMetrics,
  listen,
  metricsHandler,
  type Logger,
  type RunningServer,
} from '@federizer/common';

type Registry = ReturnType<typeof createRegistry>;

export interface WebmailServerConfig {
  readonly domain: string;
  /** The domain's Authorization Server. */
  readonly issuer: string;
  /** The origin of the domain's mailbox; its client API is at mailboxUrl + /api/v1. */
  readonly mailboxUrl: string;
  /** The origin the webmail is reached at from browsers; the OAuth redirect URIs are built on it. */
  readonly publicUrl: string;
  readonly clientId: string;
  /** The built app: index.html and assets/. */
  readonly distDir: string;
  readonly host: string;
  readonly port: number;
  /** Where /metrics and /healthz are served (never on the public port); by default on `host`. */
  readonly metricsHost: string;
  /** 0: any free port (the embedded default: `federizer up`, tests); `federizer webmail` defaults to 9090. */
  readonly metricsPort: number;
  /** Development mode: http URLs allowed. */
  readonly dev: boolean;
}

/** The metrics port of `federizer webmail` when FEDERIZER_WEBMAIL_METRICS_PORT is not set (the pod's `metrics` port). */
export const DEFAULT_WEBMAIL_METRICS_PORT = 9090;

/** Paths of the metrics listener: the public port answers 404 for them, not the app. */
const OPERATIONAL_PATHS = ['/metrics', '/healthz'];

/** What `GET /config.json` answers: the webmail's whole configuration. */
export interface WebmailClientConfig {
  readonly domain: string;
  readonly issuer: string;
  readonly clientId: string;
  readonly mailboxUrl: string;
  readonly redirectUri: string;
  readonly postLogoutRedirectUri: string;
}

/** The repository's `webmail/` (this file is services/cli/{src,dist}/federation/webmail-server.*). */
export const WEBMAIL_ROOT = fileURLToPath(new URL('../../../../webmail/', import.meta.url)).replace(/\/$/, '');
export const DEFAULT_WEBMAIL_DIST = join(WEBMAIL_ROOT, 'dist');

const IMMUTABLE = 'public, max-age=31536000, immutable';
const REVALIDATE = 'no-cache';

function origin(value: string, name: string, dev: boolean): string {
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new TypeError(`${name} must be an absolute URL, not ${JSON.stringify(value)}`);
  }
  if (parsed.protocol !== 'https:' && !(dev && parsed.protocol === 'http:'))
    throw new TypeError(`${name} must be an https URL${dev ? ' (or http in development mode)' : ''}: ${value}`);
  if (parsed.pathname !== '/' || parsed.search !== '' || parsed.hash !== '')
    throw new TypeError(`${name} must be an origin (scheme, host and port only), not ${value}`);
  return parsed.origin;
}

/** Validated configuration with its defaults, which live here and nowhere else. */
export function webmailServerConfig(
  input: Partial<WebmailServerConfig> &
    Pick<WebmailServerConfig, 'domain' | 'issuer' | 'mailboxUrl'> & { publicUrl?: string },
): WebmailServerConfig {
  const dev = input.dev ?? false;
  const domain = input.domain.toLowerCase();
  if (!/^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$/.test(domain))
    throw new TypeError(`domain is not a domain name: ${input.domain}`);
  const host = input.host ?? '127.0.0.1';
  const port = input.port ?? 0;
  if (!Number.isSafeInteger(port) || port < 0 || port > 65535)
    throw new TypeError(`port must be an integer from 0 to 65535, not ${input.port}`);
  const metricsPort = input.metricsPort ?? 0;
  if (!Number.isSafeInteger(metricsPort) || metricsPort < 0 || metricsPort > 65535)
    throw new TypeError(`metricsPort must be an integer from 0 to 65535, not ${input.metricsPort}`);
  // One port for both would put /metrics where the Ingress sends the public.
  if (metricsPort !== 0 && metricsPort === port)
    throw new TypeError(`metricsPort must differ from port (${port}): /metrics is never served on the public port`);
  if (input.publicUrl === undefined && port === 0)
    throw new TypeError('publicUrl is required with a random port: the redirect URIs must be known in advance');
  const issuerUrl = new URL(input.issuer);
  if (issuerUrl.protocol !== 'https:' && !(dev && issuerUrl.protocol === 'http:'))
    throw new TypeError(`issuer must be an https URL${dev ? ' (or http in development mode)' : ''}: ${input.issuer}`);
  return {
    domain,
    issuer: input.issuer.replace(/\/$/, ''),
    mailboxUrl: origin(input.mailboxUrl, 'mailboxUrl', dev),
    publicUrl: origin(input.publicUrl ?? `http://${host}:${port}`, 'publicUrl', dev),
    clientId: input.clientId ?? 'webmail',
    distDir: resolve(input.distDir ?? DEFAULT_WEBMAIL_DIST),
    host,
    port,
    metricsHost: input.metricsHost ?? host,
    metricsPort,
    dev,
  };
}

/** Reads FEDERIZER_* variables; the one function of the webmail server that touches the environment. */
export function readWebmailEnv(env: Readonly<Record<string, string | undefined>> = process.env): WebmailServerConfig {
  const need = (name: string): string => {
    const value = env[name];
    if (value === undefined || value === '') throw new TypeError(`${name} is required`);
    return value;
  };
  const portOf = (name: string): number | undefined => {
    const value = env[name];
    if (value === undefined || value === '') return undefined;
    if (!/^\d+$/.test(value)) throw new TypeError(`${name} must be a port number, not ${JSON.stringify(value)}`);
    return Number(value);
  };
  const port = portOf('FEDERIZER_WEBMAIL_PORT');
  const metricsPort = portOf('FEDERIZER_WEBMAIL_METRICS_PORT') ?? DEFAULT_WEBMAIL_METRICS_PORT;
  const dev = env.FEDERIZER_DEV === '1' || env.FEDERIZER_DEV === 'true';
  return webmailServerConfig({
    domain: need('FEDERIZER_DOMAIN'),
    issuer: need('FEDERIZER_AUTH_ISSUER'),
    mailboxUrl: need('FEDERIZER_MAILBOX_PUBLIC_URL'),
    publicUrl: env.FEDERIZER_WEBMAIL_URL || undefined,
    clientId: env.FEDERIZER_WEBMAIL_CLIENT_ID || undefined,
    distDir: env.FEDERIZER_WEBMAIL_DIST || undefined,
    host: env.FEDERIZER_WEBMAIL_HOST || undefined,
    port,
    metricsHost: env.FEDERIZER_WEBMAIL_METRICS_HOST || undefined,
    metricsPort,
    dev,
  });
}

export function webmailClientConfig(config: WebmailServerConfig): WebmailClientConfig {
  return {
    domain: config.domain,
    issuer: config.issuer,
    clientId: config.clientId,
    mailboxUrl: config.mailboxUrl,
    redirectUri: `${config.publicUrl}/callback`,
    postLogoutRedirectUri: `${config.publicUrl}/`,
  };
}

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

export function notBuiltPage(config: Pick<WebmailServerConfig, 'domain' | 'distDir'>): string {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Webmail not built — ${escapeHtml(config.domain)}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}
code{background:#f2f2f2;padding:.1rem .3rem;border-radius:3px}</style></head>
<body>
<h1>The webmail of ${escapeHtml(config.domain)} is not built yet</h1>
<p>This server serves the built app from <code>${escapeHtml(config.distDir)}</code>, which has no
<code>index.html</code>.</p>
<p>Build it from the repository's root with <code>npm run build -w webmail</code>, then reload this page
(no restart needed). <code>npm start</code> builds it by itself when it starts.</p>
</body>
</html>
`;
}

/** An app route (`/inbox/123`, `/callback`) rather than a file: no extension in its last segment. */
function isAppRoute(path: string): boolean {
  if (path === '/assets' || path.startsWith('/assets/')) return false;
  return !basename(path).includes('.');
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

export interface WebmailServerOverrides {
  readonly logger?: Logger;
}

export class WebmailServer implements AsyncDisposable {
  private constructor(
    readonly config: WebmailServerConfig,
    private readonly server: RunningServer,
    private readonly metrics: RunningServer,
    private readonly logger: Logger,
  ) {}

  static async start(config: WebmailServerConfig, overrides: WebmailServerOverrides = {}): Promise<WebmailServer> {
    const logger = overrides.logger ?? createLogger({ name: 'federizer-webmail', base: { domain: config.domain } });
    const registry = createRegistry('webmail');
    const server = await listen(webmailApp(config, logger, registry), { host: config.host, port: config.port });
    let metrics: RunningServer;
    try {
      metrics = await listen(webmailMetricsApp(registry), { host: config.metricsHost, port: config.metricsPort });
    } catch (e) {
      await server.close();
      throw e;
    }
    logger.info(
      { url: server.url, metricsUrl: metrics.url, publicUrl: config.publicUrl, distDir: config.distDir },
      'webmail listening',
    );
    return new WebmailServer(config, server, metrics, logger);
  }

  get url(): string {
    return this.server.url;
  }

  get port(): number {
    return this.server.port;
  }

  /** The metrics listener: /metrics and /healthz. */
  get metricsUrl(): string {
    return this.metrics.url;
  }

  get metricsPort(): number {
    return this.metrics.port;
  }

  async close(): Promise<void> {
    await this.server.close();
    await this.metrics.close();
    this.logger.info('webmail stopped');
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The metrics listener: Prometheus's /metrics and the kubelet's /healthz, nothing else. */
export function webmailMetricsApp(registry: Registry): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.get('/healthz', (_req, res) => void res.json({ status: 'ok' }));
  app.get('/metrics', metricsHandler(registry));
  app.use((req, res) => void res.status(404).type('text').send(`not found: ${req.path}\n`));
  return app;
}

/** The public listener; its requests are counted in `registry`, which the metrics listener serves. */
export function webmailApp(config: WebmailServerConfig, logger: Logger, registry: Registry): express.Express {
  const distDir = config.distDir;
  const indexFile = join(distDir, 'index.html');
  const clientConfig = webmailClientConfig(config);

  const app = express();
  app.disable('x-powered-by');
  app.use(httpMetrics(registry, 'federizer_webmail'));
  app.use((_req, res, next) => {
    res.set('X-Content-Type-Options', 'nosniff');
    next();
  });
  // Without this they would be app routes, answered with index.html. (Counted under their own route, 404.)
  for (const path of OPERATIONAL_PATHS)
    app.all(path, (req, res) => {
      res.status(404).type('text').set('Cache-Control', 'no-store').send(`not found: ${req.path}\n`);
    });
  app.get('/config.json', (_req, res) => void res.set('Cache-Control', REVALIDATE).json(clientConfig));

  const sendIndex = async (req: Request, res: Response, next: NextFunction) => {
    req.routeLabel = 'index.html';
    if (!(await isFile(indexFile))) {
      res
        .status(503)
        .set({
          'Cache-Control': 'no-store',
          'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'",
        })
        .type('html')
        .send(notBuiltPage(config));
      return;
    }
    res.sendFile(indexFile, { cacheControl: false, headers: { 'Cache-Control': REVALIDATE } }, (err) => {
      if (err && !res.headersSent) next(err);
    });
  };

  app.get('/index.html', sendIndex);
  app.use(
    express.static(distDir, {
      index: false,
      redirect: false,
      cacheControl: false,
      fallthrough: true,
      setHeaders(res, path) {
        // Vite names everything under assets/ by content hash: a changed file is a new URL.
        const immutable = path.startsWith(join(distDir, 'assets') + sep);
        res.setHeader('Cache-Control', immutable ? IMMUTABLE : REVALIDATE);
      },
    }),
  );
  app.use((req, res, next) => {
    if ((req.method === 'GET' || req.method === 'HEAD') && isAppRoute(req.path)) return void sendIndex(req, res, next);
    req.routeLabel ??= 'not found';
    res.status(404).type('text').set('Cache-Control', 'no-store').send(`not found: ${req.path}\n`);
  });
  app.use((err: Error & { status?: number }, req: Request, res: Response, _next: NextFunction) => {
    if (err.status !== undefined && err.status < 500) {
      res.status(err.status).type('text').send(`${err.message}\n`);
      return;
    }
    logger.error({ err, path: req.path }, 'request failed');
    if (!res.headersSent) res.status(500).type('text').send('an internal error; it has been logged\n');
  });
  return app;
}

/**
 * The webmail's static server over real HTTP: /config.json, the app's routes falling back to index.html,
 * the cache headers of hashed assets and of what changes in place, the page shown before the app is built,
 * /metrics and /healthz on their own listener and never on the public one, its configuration checks, and
 * `federizer webmail` configured by the environment.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '@federizer/common';
import {
  readWebmailEnv,
  WebmailServer,
  webmailServerConfig,
  type WebmailServerConfig,
} from '../src/federation/webmail-server.js';

// promtool comes from Debian's prometheus package, which .ci/run installs.
const PROMTOOL = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' }).stdout.trim() || undefined;

/** The exposition passes `promtool check metrics` (the house rule for every /metrics), where promtool is installed. */
function expectValidExposition(text: string): void {
  if (!PROMTOOL) return;
  const lint = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' });
  expect(lint.status, lint.stdout + lint.stderr).toBe(0);
}

const BIN = new URL('../../../node_modules/.bin/federizer', import.meta.url).pathname;
const INDEX =
  '<!doctype html><title>Federizer webmail</title><script type="module" src="/assets/index-Cx3a9.js"></script>';

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const base = {
  domain: 'example.com',
  issuer: 'http://as.example-com.localhost:8410',
  mailboxUrl: 'http://mail.example-com.localhost:8411',
  publicUrl: 'http://webmail.example-com.localhost:8412',
  dev: true,
};

describe('the webmail server', () => {
  let dir: string;
  let server: WebmailServer;
  let emptyDist: string;
  let unbuilt: WebmailServer;
  const get = (path: string, init?: RequestInit) => fetch(`${server.url}${path}`, init);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-webmail-'));
    const dist = join(dir, 'dist');
    await mkdir(join(dist, 'assets'), { recursive: true });
    await writeFile(join(dist, 'index.html'), INDEX);
    await writeFile(join(dist, 'assets', 'index-Cx3a9.js'), 'console.log("app")');
    await writeFile(join(dist, 'sw.js'), 'self.addEventListener("fetch", () => {})');
    await writeFile(join(dist, 'manifest.webmanifest'), '{"name":"Federizer"}');
    await writeFile(join(dist, 'icon.svg'), '<svg xmlns="http://www.w3.org/2000/svg"/>');
    await writeFile(join(dir, 'secret.txt'), 'outside the dist directory');
    server = await WebmailServer.start(webmailServerConfig({ ...base, distDir: dist }), { logger: silentLogger() });
    emptyDist = join(dir, 'empty-dist');
    await mkdir(emptyDist);
    unbuilt = await WebmailServer.start(webmailServerConfig({ ...base, distDir: emptyDist }), {
      logger: silentLogger(),
    });
  });

  afterAll(async () => {
    await server?.close();
    await unbuilt?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('GET /config.json tells the app its domain, AS, client and mailbox, and is revalidated', async () => {
    const res = await get('/config.json');
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-cache');
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await res.json()).toEqual({
      domain: 'example.com',
      issuer: 'http://as.example-com.localhost:8410',
      clientId: 'webmail',
      mailboxUrl: 'http://mail.example-com.localhost:8411',
      redirectUri: 'http://webmail.example-com.localhost:8412/callback',
      postLogoutRedirectUri: 'http://webmail.example-com.localhost:8412/',
    });
  });

  it("serves index.html for the app's own routes (no file extension), revalidated each time", async () => {
    for (const path of ['/', '/inbox', '/messages/0190a5b2-7c1e', '/callback?code=abc&state=xyz', '/index.html']) {
      const res = await get(path);
      expect(res.status, path).toBe(200);
      expect(res.headers.get('content-type'), path).toMatch(/^text\/html/);
      expect(res.headers.get('cache-control'), path).toBe('no-cache');
      expect(await res.text(), path).toBe(INDEX);
    }
    const head = await get('/settings', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('cache-control')).toBe('no-cache');
  });

  it('caches the content-hashed /assets/* for a year, immutable; sw.js, the manifest and other files revalidate', async () => {
    const asset = await get('/assets/index-Cx3a9.js');
    expect(asset.status).toBe(200);
    expect(asset.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
    expect(asset.headers.get('content-type')).toMatch(/javascript/);
    for (const path of ['/sw.js', '/manifest.webmanifest', '/icon.svg']) {
      const res = await get(path);
      expect(res.status, path).toBe(200);
      expect(res.headers.get('cache-control'), path).toBe('no-cache');
    }
    expect((await get('/manifest.webmanifest')).headers.get('content-type')).toMatch(/manifest\+json/);
    // A revalidation of an unchanged file is answered 304 (the ETag comes from the file).
    const etag = (await get('/sw.js')).headers.get('etag')!;
    // (fetch would add Cache-Control: no-cache to a conditional request, which forbids a 304: say max-age=0.)
    const revalidated = await get('/sw.js', { headers: { 'if-none-match': etag, 'cache-control': 'max-age=0' } });
    expect(revalidated.status).toBe(304);
  });

  it('answers 404, not the app, for missing files and anything under /assets/', async () => {
    for (const path of ['/missing.js', '/assets/index-gone.js', '/assets/chunk', '/favicon.ico']) {
      const res = await get(path);
      expect(res.status, path).toBe(404);
      expect(await res.text(), path).not.toContain('<title>');
    }
    expect((await get('/', { method: 'POST' })).status).toBe(404);
  });

  it('never serves a file outside its dist directory', async () => {
    for (const path of ['/../secret.txt', '/%2e%2e/secret.txt', '/assets/..%2f..%2fsecret.txt']) {
      const res = await get(path);
      expect(await res.text(), path).not.toContain('outside the dist directory');
      expect(res.status, path).toBeGreaterThanOrEqual(400);
    }
  });

  it('serves /metrics and /healthz on its metrics port only: the public port, which the Ingress reaches, answers 404', async () => {
    expect(server.metricsPort).not.toBe(server.port);
    await get('/inbox');
    // The public port: not the metrics, and not the app's index.html either (every other extensionless path is).
    for (const path of ['/metrics', '/healthz', '/metrics/', '/METRICS']) {
      for (const method of ['GET', 'HEAD']) {
        const res = await get(path, { method });
        expect(res.status, `${method} ${path}`).toBe(404);
        if (method === 'GET') expect(await res.text(), path).not.toMatch(/federizer_webmail|<title>|status/);
      }
    }
    // The metrics port: Prometheus's text format, counting the public port's requests (the 404s above too).
    const res = await fetch(`${server.metricsUrl}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const metrics = await res.text();
    const count = (method: string, route: string, code: number) =>
      Number(
        metrics.match(
          new RegExp(
            `^federizer_webmail_http_request_duration_seconds_count\\{service="webmail",method="${method}",route="${route}",code="${code}"\\} (\\d+)$`,
            'm',
          ),
        )?.[1] ?? 0,
      );
    expect(count('GET', 'index.html', 200)).toBeGreaterThanOrEqual(1);
    expect(count('GET', '/metrics', 404)).toBe(3);
    expect(count('HEAD', '/healthz', 404)).toBe(1);
    expectValidExposition(metrics);
    expect(await (await fetch(`${server.metricsUrl}/healthz`)).json()).toEqual({ status: 'ok' });
    // Nothing of the app is on the metrics port.
    for (const path of ['/', '/config.json', '/inbox', '/assets/index-Cx3a9.js'])
      expect((await fetch(`${server.metricsUrl}${path}`)).status, path).toBe(404);
  });

  it('before the app is built, says so and how to build it; a build appears without a restart', async () => {
    for (const path of ['/', '/inbox', '/index.html']) {
      const res = await fetch(`${unbuilt.url}${path}`);
      expect(res.status, path).toBe(503);
      expect(res.headers.get('cache-control')).toBe('no-store');
      const page = await res.text();
      expect(page).toContain('The webmail of example.com is not built yet');
      expect(page).toContain('npm run build -w webmail');
    }
    // The configuration is there all the same: the app is what is missing, not the server.
    expect((await fetch(`${unbuilt.url}/config.json`)).status).toBe(200);
    await writeFile(join(emptyDist, 'index.html'), INDEX);
    const built = await fetch(`${unbuilt.url}/inbox`);
    expect(built.status).toBe(200);
    expect(await built.text()).toBe(INDEX);
  });
});

describe('the webmail configuration', () => {
  const check = (input: Partial<WebmailServerConfig> & { publicUrl?: string }) => () =>
    webmailServerConfig({ ...base, ...input });

  it('rejects what would break the OAuth flow, naming the rule', () => {
    // The API is at mailboxUrl + /api/v1: a path would double it.
    expect(check({ mailboxUrl: 'http://mail.example-com.localhost:8411/api/v1' })).toThrow(
      'mailboxUrl must be an origin (scheme, host and port only)',
    );
    // Outside development mode everything is https (as for the AS and the mailbox).
    expect(check({ dev: false })).toThrow('issuer must be an https URL: http:');
    expect(check({ dev: false, issuer: 'https://as.example.com' })).toThrow('mailboxUrl must be an https URL');
    expect(check({ issuer: 'ftp://as.example.com' })).toThrow('issuer must be an https URL (or http in development');
    // Redirect URIs are registered at the AS before the server starts, so a random port needs a public URL.
    expect(check({ publicUrl: undefined, port: 0 })).toThrow('publicUrl is required with a random port');
    expect(check({ domain: 'not a domain' })).toThrow('domain is not a domain name');
    expect(check({ port: 70000 })).toThrow('port must be an integer from 0 to 65535');
    expect(check({ metricsPort: -1 })).toThrow('metricsPort must be an integer from 0 to 65535');
    // The Ingress reaches the public port: /metrics there would be on the Internet.
    expect(check({ port: 8412, metricsPort: 8412 })).toThrow('metricsPort must differ from port (8412)');
  });

  it('fills the defaults: client webmail, the public URL from a fixed port, the trailing slash of the issuer off', () => {
    const config = webmailServerConfig({ ...base, publicUrl: undefined, port: 8412, issuer: `${base.issuer}/` });
    expect(config).toMatchObject({
      clientId: 'webmail',
      publicUrl: 'http://127.0.0.1:8412',
      issuer: base.issuer,
      host: '127.0.0.1',
      // Embedded (federizer up, tests): any free port, on the webmail's own host.
      metricsHost: '127.0.0.1',
      metricsPort: 0,
    });
    expect(config.distDir).toMatch(/\/webmail\/dist$/);
  });

  it('reads FEDERIZER_* variables and says which one is missing or wrong', () => {
    const env = {
      FEDERIZER_DOMAIN: 'example.com',
      FEDERIZER_AUTH_ISSUER: base.issuer,
      FEDERIZER_MAILBOX_PUBLIC_URL: base.mailboxUrl,
      FEDERIZER_WEBMAIL_URL: base.publicUrl,
      FEDERIZER_WEBMAIL_PORT: '8412',
      FEDERIZER_WEBMAIL_DIST: '/srv/webmail',
      FEDERIZER_DEV: '1',
    };
    // `federizer webmail` (a container's command) has a fixed metrics port, 9090 unless told otherwise.
    expect(readWebmailEnv(env)).toMatchObject({
      port: 8412,
      distDir: '/srv/webmail',
      publicUrl: base.publicUrl,
      metricsPort: 9090,
      metricsHost: '127.0.0.1',
    });
    expect(
      readWebmailEnv({
        ...env,
        FEDERIZER_WEBMAIL_METRICS_PORT: '9464',
        FEDERIZER_WEBMAIL_HOST: '0.0.0.0',
        FEDERIZER_WEBMAIL_METRICS_HOST: '127.0.0.1',
      }),
    ).toMatchObject({ host: '0.0.0.0', metricsPort: 9464, metricsHost: '127.0.0.1' });
    expect(() => readWebmailEnv({ ...env, FEDERIZER_DOMAIN: '' })).toThrow('FEDERIZER_DOMAIN is required');
    expect(() => readWebmailEnv({ ...env, FEDERIZER_WEBMAIL_PORT: 'eighty' })).toThrow(
      'FEDERIZER_WEBMAIL_PORT must be a port number',
    );
    expect(() => readWebmailEnv({ ...env, FEDERIZER_WEBMAIL_METRICS_PORT: '9090x' })).toThrow(
      'FEDERIZER_WEBMAIL_METRICS_PORT must be a port number',
    );
  });
});

describe('federizer webmail', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-webmail-cmd-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('serves the configuration the environment gives, metrics on their port, and stops cleanly on SIGTERM', async () => {
    const port = await freePort();
    let metricsPort = await freePort();
    while (metricsPort === port) metricsPort = await freePort();
    const child = spawn(BIN, ['webmail'], {
      env: {
        ...process.env,
        FEDERIZER_DOMAIN: 'example.net',
        FEDERIZER_AUTH_ISSUER: 'http://as.example-net.localhost:8420',
        FEDERIZER_MAILBOX_PUBLIC_URL: 'http://mail.example-net.localhost:8421',
        FEDERIZER_WEBMAIL_URL: 'http://webmail.example-net.localhost:8422',
        FEDERIZER_WEBMAIL_PORT: String(port),
        FEDERIZER_WEBMAIL_METRICS_PORT: String(metricsPort),
        FEDERIZER_WEBMAIL_DIST: dir,
        FEDERIZER_DEV: '1',
      },
    });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let config: Record<string, unknown> | undefined;
    for (let i = 0; i < 300 && config === undefined && child.exitCode === null; i++) {
      try {
        config = (await (await fetch(`http://127.0.0.1:${port}/config.json`)).json()) as Record<string, unknown>;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    expect(config, output).toMatchObject({
      domain: 'example.net',
      redirectUri: 'http://webmail.example-net.localhost:8422/callback',
      mailboxUrl: 'http://mail.example-net.localhost:8421',
    });
    expect((await fetch(`http://127.0.0.1:${port}/`)).status).toBe(503);
    expect((await fetch(`http://127.0.0.1:${port}/metrics`)).status).toBe(404);
    const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(metrics.status).toBe(200);
    expectValidExposition(await metrics.text());
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(output).toMatch(/webmail stopped/);
  });

  it('exits with 2 and names the missing variable', async () => {
    const child = spawn(BIN, ['webmail'], { env: { ...process.env, FEDERIZER_DOMAIN: '' } });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    expect(code).toBe(2);
    expect(stderr).toMatch(/configuration: FEDERIZER_DOMAIN is required/);
  });
});

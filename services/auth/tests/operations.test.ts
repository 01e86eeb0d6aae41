/**
 * Running the AS: health and readiness (and readiness failing without a database), Prometheus metrics that
 * count real sign-ins and tokens and pass `promtool check metrics`, logs that never carry credentials, and a
 * graceful shutdown that lets a request in flight finish.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as client from 'openid-client';
import type { Knex } from 'knex';
import { createKnex, createLogger, silentLogger, type Logger } from '@federizer/common';
import { testDatabases, type TestDatabase } from '../../common/src/testing/databases.js';
import { AuthService, authConfig } from '../src/index.js';
import { ADMIN_TOKEN, freePort, hostOf, startFederation, type Federation, type TestDomain } from './harness.js';
import {
  BrowserAgent,
  atRedirectUri,
  authorizationRequest,
  closeLocalHttp,
  isLoginPage,
  localFetch,
  publicClient,
  signInWithCode,
} from './browser-agent.js';

const COOKIE_KEY = 'test-cookie-key-0123456789abcdef';
const hasPromtool = spawnSync('promtool', ['--version'], { encoding: 'utf8' }).status === 0;

/** An AS of its own (not the harness's), for tests that break or stop it or capture its logs. */
async function dedicatedAs(database: TestDatabase, logger: Logger = silentLogger()) {
  const db = await database.create();
  const knex: Knex = createKnex(db.config);
  const port = await freePort();
  const issuer = `http://${hostOf('as', 'example.com')}:${port}`;
  const webmailRedirectUri = `http://${hostOf('mail', 'example.com')}/callback`;
  const { config, secrets } = authConfig(
    {
      issuer,
      domain: 'example.com',
      mailboxResource: `http://${hostOf('mail', 'example.com')}/api`,
      dev: true,
      port,
      trustProxy: true,
      webmail: { clientId: 'webmail', redirectUris: [webmailRedirectUri], postLogoutRedirectUris: [] },
    },
    { adminToken: ADMIN_TOKEN, cookieKeys: [COOKIE_KEY], mtaClientSecret: 'mta-secret-0123456789' },
  );
  const as = await AuthService.start(config, secrets, { knex, logger });
  return {
    as,
    knex,
    issuer,
    webmailRedirectUri,
    async dispose() {
      await as.close();
      await knex.destroy().catch(() => undefined);
      await db.destroy();
    },
  };
}

/** The value of one sample of the exposition (0 when absent), labels given in any order. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return 0;
}

describe.each(testDatabases())('operations on $name', (database) => {
  let fed: Federation;
  let d: TestDomain;
  let webmail: client.Configuration;
  let addresses = 0;

  beforeAll(async () => {
    // Behind a proxy (trustProxy), so each test's user agent can come from its own address (X-Forwarded-For).
    fed = await startFederation(['example.com'], { database: database.create, config: { trustProxy: true } });
    d = fed.domains['example.com']!;
    webmail = await publicClient(d.issuer, 'webmail');
  });
  afterAll(async () => {
    await fed?.close();
    await closeLocalHttp();
  });

  const agent = () => new BrowserAgent({ headers: { 'x-forwarded-for': `198.18.0.${++addresses}` } });
  const metrics = async () => {
    const res = await fetch(`${d.as.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return res.text();
  };

  it('/healthz answers ok and /readyz answers ready with the current kid', async () => {
    const health = await fetch(`${d.as.url}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: 'ok' });
    const ready = await fetch(`${d.as.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready', kid: d.as.keys.current.kid });
  });

  it('/readyz answers 503 once the database is gone, while /healthz stays 200', async () => {
    const own = await dedicatedAs(database);
    try {
      expect((await fetch(`${own.as.url}/readyz`)).status).toBe(200);
      await own.knex.destroy();
      const ready = await fetch(`${own.as.url}/readyz`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toMatchObject({ status: 'unavailable' });
      expect((await fetch(`${own.as.url}/healthz`)).status).toBe(200);
    } finally {
      await own.dispose();
    }
  });

  it('/metrics counts real sign-ins, failures and issued tokens, and times HTTP requests by route', async () => {
    const address = `metrics-${randomBytes(3).toString('hex')}@example.com`;
    const password = `pw-${randomBytes(9).toString('base64url')}`;
    await d.createUser(address, password);
    const before = await metrics();

    // One failure, then a success, on the real form.
    const browser = agent();
    const stopAt = atRedirectUri(d.webmailRedirectUri);
    const page = await browser.request((await authorizationRequest(webmail, d.webmailRedirectUri)).url, { stopAt });
    expect(isLoginPage(page)).toBe(true);
    expect((await browser.submitLogin(page, address, 'wrong-password')).status).toBe(401);
    const { tokens, DPoP } = await signInWithCode(webmail, d.webmailRedirectUri, { address, password }, agent());
    await client.refreshTokenGrant(webmail, tokens.refresh_token!, undefined, { DPoP });
    await fetch(`${d.as.url}/healthz`);

    const after = await metrics();
    const delta = (name: string, labels: Record<string, string>) =>
      sample(after, name, labels) - sample(before, name, labels);
    expect(delta('federizer_auth_logins_total', { outcome: 'success' })).toBe(1);
    expect(delta('federizer_auth_logins_total', { outcome: 'failure' })).toBe(1);
    expect(delta('federizer_auth_tokens_issued_total', { grant_type: 'authorization_code' })).toBe(1);
    expect(delta('federizer_auth_tokens_issued_total', { grant_type: 'refresh_token' })).toBe(1);
    expect(after).toMatch(/^# TYPE federizer_auth_http_request_duration_seconds histogram$/m);
    expect(
      sample(after, 'federizer_auth_http_request_duration_seconds_count', {
        method: 'GET',
        route: '/healthz',
        code: '200',
      }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      sample(after, 'federizer_auth_http_request_duration_seconds_count', {
        method: 'POST',
        route: '/interaction/:uid/login',
        code: '401',
      }),
    ).toBeGreaterThanOrEqual(1);
    // Raw paths never become labels (one series per interaction id would grow without bound).
    expect(after).not.toMatch(/route="\/interaction\/[A-Za-z0-9_-]{10,}/);
  });

  // promtool comes from Debian's `prometheus` package (installed by .ci/run); without it, only this is skipped.
  it.skipIf(!hasPromtool)('the exposition passes `promtool check metrics`', async () => {
    // Exercise the labelled series first so the check sees them with samples, not only their HELP lines.
    const browser = agent();
    const page = await browser.request((await authorizationRequest(webmail, d.webmailRedirectUri)).url);
    await browser.submitLogin(page, 'nobody@example.com', 'wrong-password');
    const text = await metrics();
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(check.status, `${check.stdout}${check.stderr}`).toBe(0);
  });

  it('logs redact secrets: passwords, tokens, DPoP proofs, cookies and the admin token never appear', async () => {
    const chunks: string[] = [];
    const logger = createLogger({
      name: 'federizer-auth',
      level: 'trace',
      destination: { write: (line: string) => void chunks.push(line) },
    });
    const own = await dedicatedAs(database, logger);
    const secrets: string[] = [ADMIN_TOKEN, COOKIE_KEY];
    try {
      const config = await publicClient(own.issuer, 'webmail');
      // Record what openid-client sends: the Authorization and DPoP headers and the form bodies.
      const sent: string[] = [];
      config[client.customFetch] = (url, options) => {
        for (const [k, v] of Object.entries(options.headers))
          if (k.toLowerCase() === 'dpop' || k.toLowerCase() === 'authorization') sent.push(v.replace(/^\w+ /, ''));
        if (options.body instanceof URLSearchParams) for (const [, v] of options.body) sent.push(v);
        return localFetch(url, options as RequestInit);
      };
      const address = `logs-${randomBytes(3).toString('hex')}@example.com`;
      const password = `Correct-Horse-${randomBytes(9).toString('base64url')}`;
      const wrongPassword = `Wrong-Battery-${randomBytes(9).toString('base64url')}`;
      const created = await fetch(`${own.as.url}/admin/v1/users`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ address, password }),
      });
      expect(created.status).toBe(201);

      // A failed login, an empty-address login, then a real sign-in with DPoP and a refresh.
      const browser = new BrowserAgent({ headers: { 'x-forwarded-for': '198.18.1.1' } });
      const page = await browser.request((await authorizationRequest(config, own.webmailRedirectUri)).url);
      expect((await browser.submitLogin(page, address, wrongPassword)).status).toBe(401);
      await browser.submitLogin(page, '', wrongPassword);
      const { tokens, DPoP, callback } = await signInWithCode(
        config,
        own.webmailRedirectUri,
        { address, password },
        browser,
      );
      const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token!, undefined, { DPoP });
      // Reusing the rotated-out refresh token is refused, and the AS logs the refusal.
      await expect(client.refreshTokenGrant(config, tokens.refresh_token!, undefined, { DPoP })).rejects.toThrow();
      // Credentials in headers of requests that fail: userinfo with the mailbox token, the admin API.
      await client.fetchUserInfo(config, refreshed.access_token, address, { DPoP }).catch(() => undefined);
      await fetch(`${own.as.url}/admin/v1/users`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}-wrong` } });
      await fetch(`${own.as.url}/token`, {
        method: 'POST',
        headers: {
          authorization: `DPoP ${refreshed.access_token}`,
          dpop: sent.find((s) => s.split('.').length === 3) ?? 'x',
          cookie: browser.cookieValues().join('; '),
          'content-type': 'application/x-www-form-urlencoded',
        },
        body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshed.refresh_token! }),
      });

      secrets.push(
        password,
        wrongPassword,
        tokens.access_token,
        tokens.refresh_token!,
        tokens.id_token!,
        refreshed.access_token,
        refreshed.refresh_token!,
        callback.searchParams.get('code')!,
        ...browser.cookieValues(),
        // The code_verifier, the code, the refresh tokens and the DPoP proofs; not the parameter names.
        ...sent.filter((s) => s.length >= 16 && /^[\w.~-]+$/.test(s) && !/^[a-z_]+$/.test(s)),
      );
      // The AS logs no requests itself; were one logged (pino's `req` shape), its logger would redact it.
      const headers = {
        authorization: `DPoP ${refreshed.access_token}`,
        dpop: sent.find((s) => s.split('.').length === 3),
        cookie: browser.cookieValues().join('; '),
      };
      logger.info({ req: { method: 'POST', url: '/token', headers } }, 'probe');
    } finally {
      await own.dispose();
    }
    const log = chunks.join('');
    // The capture works: the AS did log, including the refused refresh.
    expect(log).toMatch(/authorization server listening/);
    expect(log).toMatch(/grant refused/);
    expect(log).toMatch(/"authorization":"\[redacted\]"/);
    for (const secret of secrets) {
      expect(log, `a secret (${secret.slice(0, 12)}...) is in the log`).not.toContain(secret);
      // A JWT may leak in part (its signature is what makes it a credential).
      const signature = secret.split('.')[2];
      if (signature !== undefined && signature.length > 20) expect(log).not.toContain(signature);
    }
  });

  it('graceful shutdown: close() lets a request in flight finish, and refuses new connections', async () => {
    const own = await dedicatedAs(database);
    try {
      const url = new URL(`${own.as.url}/admin/v1/users`);
      const body = JSON.stringify({ address: 'late@example.com', password: 'a-fine-password' });
      // Expect: 100-continue: the "continue" answer proves the server holds the request before close() is called.
      const req = httpRequest(url, {
        method: 'POST',
        agent: false,
        headers: {
          authorization: `Bearer ${ADMIN_TOKEN}`,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          expect: '100-continue',
        },
      });
      const response = new Promise<{ status: number; text: string }>((resolve, reject) => {
        req.on('response', (res: IncomingMessage) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode!, text }));
        });
        req.on('error', reject);
      });
      await new Promise<void>((resolve) => req.on('continue', () => resolve()));
      req.write(body.slice(0, 10));

      const closing = own.as.close();
      // The listener is closed: a new connection is refused while the old request is still open.
      await expect(fetch(`${own.as.url}/healthz`)).rejects.toThrow();

      req.end(body.slice(10));
      const answer = await response;
      await closing;
      expect(answer.status, answer.text).toBe(201);
      expect(JSON.parse(answer.text)).toMatchObject({ address: 'late@example.com' });
      // The request's work was done, not abandoned.
      const rows = await own.knex('users').where({ address: 'late@example.com' }).select('address');
      expect(rows).toHaveLength(1);
    } finally {
      await own.dispose();
    }
  });
});

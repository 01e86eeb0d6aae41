/**
 * The public Ingress routes only what must be public. Its paths are checked against what the services really
 * serve: every path of openapi/auth.openapi.json and openapi/mailbox.openapi.json, every endpoint in the
 * discovery document of a real AS started from the environment the builder gives it, and the sign-in page
 * that AS sends a browser to. Path matching is the Ingress API's (Exact, and Prefix by path element).
 * No /metrics is reachable through it: those of the AS and the mailbox are not routed, and the webmail's
 * route leads to a real webmail's public port, which answers 404, while the ServiceMonitor's `metrics`
 * port leads to its metrics listener.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthService, readAuthEnv } from '@federizer/auth';
import { silentLogger } from '@federizer/common';
import { readWebmailEnv, WebmailServer } from '../../../services/cli/src/federation/webmail-server.js';
import type { MailDomain } from '../model.js';
import { buildMailDomain } from './mail-domain.js';
import { PUBLIC_AUTH_PATHS, PUBLIC_MAILBOX_PATHS } from './edge.js';
import { containerEnv, find, serviceTarget, type Loose } from './testing/manifests.js';
import { ROOT } from './testing/validate.js';

const md: MailDomain = {
  apiVersion: 'federizer.io/v1alpha1',
  kind: 'MailDomain',
  metadata: { name: 'example-com', namespace: 'mail', uid: '8d7e3c1e-0000-4000-8000-000000000002' },
  spec: { domain: 'example.com' },
};
const ctx = { existingSecrets: [], hasServiceMonitorCrd: false };

interface HttpPath {
  path: string;
  pathType: 'Exact' | 'Prefix';
  backend: { service: { name: string; port: { name?: string; number?: number } } };
}

/** The Service an Ingress sends `host` + `path` to, as the Ingress API defines matching; undefined: none. */
function routedTo(ingress: Loose, host: string, path: string): string | undefined {
  return backendOf(ingress, host, path)?.name;
}

/** The Service and its port that an Ingress sends `host` + `path` to; undefined: none. */
function backendOf(ingress: Loose, host: string, path: string): HttpPath['backend']['service'] | undefined {
  const rule = (ingress.spec.rules as { host: string; http: { paths: HttpPath[] } }[]).find((r) => r.host === host);
  const elements = (p: string) => p.split('/').filter((e) => e !== '');
  const matches = (rulePath: HttpPath) => {
    if (rulePath.pathType === 'Exact') return path === rulePath.path;
    const want = elements(rulePath.path);
    const have = elements(path);
    return want.length <= have.length && want.every((e, i) => have[i] === e);
  };
  const best = (rule?.http.paths ?? [])
    .filter(matches)
    .sort((a, b) => b.path.length - a.path.length || (a.pathType === 'Exact' ? -1 : 1))[0];
  return best?.backend.service;
}

const ingress = () => find(buildMailDomain(md, ctx).objects, 'Ingress', 'example-com');

// promtool comes from Debian's prometheus package, which .ci/run installs.
const PROMTOOL = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' }).stdout.trim() || undefined;

/** The paths of an OpenAPI document, with each `{parameter}` given a value. */
function openApiPaths(file: string): string[] {
  const doc = JSON.parse(readFileSync(join(ROOT, file), 'utf8')) as { paths: Record<string, unknown> };
  return Object.keys(doc.paths).map((p) => p.replace(/\{[^}]+\}/g, 'x1'));
}

/** In the cluster only: Prometheus scrapes the Services, the kubelet probes the pods, the operator administers. */
const INTERNAL = /^\/(metrics|healthz|readyz|admin)(\/|$)/;

describe('the Ingress of a MailDomain', () => {
  it('uses Exact and Prefix paths only, and gives the webmail every path', () => {
    const rules = ingress().spec.rules as { host: string; http: { paths: HttpPath[] } }[];
    for (const rule of rules)
      for (const p of rule.http.paths) expect(['Exact', 'Prefix'], `${rule.host}${p.path}`).toContain(p.pathType);
    expect(routedTo(ingress(), 'webmail.example.com', '/inbox/42')).toBe('example-com-webmail');
    const paths = (host: string) => rules.find((r) => r.host === host)!.http.paths.map((p) => p.path);
    expect(paths('as.example.com')).toEqual(PUBLIC_AUTH_PATHS.map((p) => p.path));
    expect(paths('mail.example.com')).toEqual(PUBLIC_MAILBOX_PATHS.map((p) => p.path));
  });

  it("routes every public path of the mailbox's OpenAPI document, and none of its operational ones", () => {
    const paths = openApiPaths('openapi/mailbox.openapi.json');
    expect(paths).toContain('/metrics');
    for (const path of paths)
      expect(routedTo(ingress(), 'mail.example.com', path), path).toBe(
        INTERNAL.test(path) ? undefined : 'example-com-mailbox',
      );
    // An element boundary: a prefix of a path element is not a match.
    expect(routedTo(ingress(), 'mail.example.com', '/apis')).toBeUndefined();
    expect(PUBLIC_MAILBOX_PATHS.map((p) => p.path)).toEqual([
      '/.well-known/federizer',
      '/api',
      '/federation',
      '/openapi.json',
    ]);
  });

  it("keeps the AS's admin API, metrics, probes and API description off the Internet", () => {
    const paths = openApiPaths('openapi/auth.openapi.json');
    expect(paths).toEqual(expect.arrayContaining(['/admin/v1/users', '/admin/v1/keys/rotate', '/metrics']));
    for (const path of paths) {
      // /openapi.json of the AS documents its admin API: nobody outside needs it.
      const internal = INTERNAL.test(path) || path === '/openapi.json';
      expect(routedTo(ingress(), 'as.example.com', path), path).toBe(internal ? undefined : 'example-com-auth');
    }
  });

  describe('against a real AS configured by the MailDomain builder', () => {
    let dir: string;
    let as: AuthService;
    const objects = buildMailDomain(md, ctx).objects;

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'federizer-ingress-'));
      const settings = readAuthEnv({
        ...containerEnv(objects, 'example-com-auth'),
        FEDERIZER_AUTH_DATABASE: `sqlite:${join(dir, 'auth.db')}`,
        FEDERIZER_AUTH_HOST: '127.0.0.1',
        FEDERIZER_AUTH_PORT: '0',
      });
      as = await AuthService.start(settings.config, settings.secrets);
    });
    afterAll(async () => {
      await as?.close();
      await rm(dir, { recursive: true, force: true });
    });

    // What the Ingress controller adds (fetch cannot set Host): the AS trusts it (FEDERIZER_TRUST_PROXY).
    const viaIngress = (path: string, init: RequestInit = {}) =>
      fetch(`${as.url}${path}`, {
        ...init,
        redirect: 'manual',
        headers: {
          'x-forwarded-proto': 'https',
          'x-forwarded-host': 'as.example.com',
          ...(init.headers as Record<string, string>),
        },
      });

    it('routes every endpoint its discovery documents publish', async () => {
      const documents = ['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server'];
      const endpoints = new Set<string>();
      for (const path of documents) {
        expect(routedTo(ingress(), 'as.example.com', path), path).toBe('example-com-auth');
        const res = await viaIngress(path);
        expect(res.status, path).toBe(200);
        const doc = (await res.json()) as Record<string, unknown>;
        expect(doc.issuer).toBe('https://as.example.com');
        for (const [key, value] of Object.entries(doc))
          if ((key.endsWith('_endpoint') || key === 'jwks_uri') && typeof value === 'string') endpoints.add(value);
      }
      // Authorization, token, revocation, userinfo, logout, pushed requests, JWKS: whatever the AS enables.
      expect(endpoints.size).toBeGreaterThanOrEqual(7);
      for (const url of endpoints) {
        const { host, pathname } = new URL(url);
        expect(host).toBe('as.example.com');
        expect(routedTo(ingress(), host, pathname), pathname).toBe('example-com-auth');
      }
    });

    it("serves /metrics where its Service's metrics port leads, which no Ingress path reaches", async () => {
      const target = serviceTarget(objects, 'example-com-auth', 'metrics');
      expect(String(target.containerPort)).toBe(containerEnv(objects, 'example-com-auth').FEDERIZER_AUTH_PORT);
      expect((await fetch(`${as.url}/metrics`)).status).toBe(200);
      expect(routedTo(ingress(), 'as.example.com', '/metrics')).toBeUndefined();
    });

    it('routes the sign-in page a browser is sent to, and the form it posts to', async () => {
      const verifier = randomBytes(32).toString('base64url');
      const query = new URLSearchParams({
        client_id: 'webmail',
        response_type: 'code',
        scope: 'openid',
        redirect_uri: 'https://webmail.example.com/callback',
        code_challenge: createHash('sha256').update(verifier).digest('base64url'),
        code_challenge_method: 'S256',
      });
      const authorize = `/auth?${query}`;
      expect(routedTo(ingress(), 'as.example.com', '/auth')).toBe('example-com-auth');
      const res = await viaIngress(authorize);
      expect(res.status).toBe(303);
      const location = new URL(res.headers.get('location')!, 'https://as.example.com');
      expect(location.pathname).toMatch(/^\/interaction\/[-\w]+$/);
      expect(routedTo(ingress(), location.host, location.pathname)).toBe('example-com-auth');
      const cookie = res.headers
        .getSetCookie()
        .map((c) => c.split(';')[0])
        .join('; ');
      const page = await viaIngress(location.pathname, { headers: { cookie } });
      expect(page.status).toBe(200);
      const html = await page.text();
      const actions = [...html.matchAll(/action="([^"]+)"/g)].map((m) => new URL(m[1]!, location).pathname);
      expect(actions).toEqual([`${location.pathname}/login`, `${location.pathname}/abort`]);
      for (const action of actions) expect(routedTo(ingress(), 'as.example.com', action)).toBe('example-com-auth');
      // Nothing else of the page is fetched from the AS (no stylesheet, script or image): nothing else to route.
      // Its one link is the empty icon, inline (data:), which keeps browsers from asking for /favicon.ico.
      expect(html).not.toMatch(/<(script|img)\b/);
      const links = [...html.matchAll(/<link\b[^>]*>/g)].map((m) => m[0]);
      expect(links).toEqual(['<link rel="icon" href="data:," />']);
    });
  });
});

describe('metrics and probes of a MailDomain, never through the Ingress', () => {
  const objects = buildMailDomain(md, { ...ctx, hasServiceMonitorCrd: true }).objects;
  const rules = () => ingress().spec.rules as { host: string; http: { paths: HttpPath[] } }[];
  const services = ['example-com-auth', 'example-com-mailbox', 'example-com-webmail'];

  it("sends the Ingress only to the Services' http port, and never routes /metrics, /healthz or /readyz of the AS or the mailbox", () => {
    for (const rule of rules())
      for (const p of rule.http.paths)
        expect(p.backend.service.port, `${rule.host}${p.path}`).toEqual({ name: 'http' });
    for (const host of ['as.example.com', 'mail.example.com'])
      for (const path of ['/metrics', '/healthz', '/readyz', '/metrics/x'])
        expect(routedTo(ingress(), host, path), `${host}${path}`).toBeUndefined();
    // Only a webmail pod has a metrics port apart from its public one.
    expect(serviceTarget(objects, 'example-com-webmail', 'http')).toEqual({ name: 'http', containerPort: 8080 });
    expect(serviceTarget(objects, 'example-com-webmail', 'metrics')).toEqual({ name: 'metrics', containerPort: 9090 });
    for (const name of ['example-com-auth', 'example-com-mailbox'])
      expect(serviceTarget(objects, name, 'metrics')).toEqual(serviceTarget(objects, name, 'http'));
  });

  it('scrapes every Service through its metrics port, and annotates and probes each pod on the port that serves them', () => {
    const monitor = find(objects, 'ServiceMonitor', 'example-com');
    expect(monitor.spec.endpoints).toEqual([{ port: 'metrics', path: '/metrics', interval: '30s', scheme: 'http' }]);
    const { matchLabels, matchExpressions } = monitor.spec.selector as {
      matchLabels: Record<string, string>;
      matchExpressions: { key: string; values: string[] }[];
    };
    const selected = objects.filter(
      (o) =>
        o.kind === 'Service' &&
        Object.entries(matchLabels).every(([k, v]) => o.metadata.labels?.[k] === v) &&
        matchExpressions.every((e) => e.values.includes(o.metadata.labels?.[e.key] ?? '')),
    );
    expect(selected.map((o) => o.metadata.name)).toEqual(services);
    for (const name of services) {
      const target = serviceTarget(objects, name, 'metrics');
      const pod = find(objects, 'Deployment', name).spec.template;
      expect(pod.metadata.annotations['prometheus.io/port'], name).toBe(String(target.containerPort));
      const c = pod.spec.containers[0];
      for (const probe of [c.startupProbe, c.livenessProbe, c.readinessProbe])
        expect(probe.httpGet.port, name).toBe(target.name);
    }
  });

  describe('against a real webmail configured by the MailDomain builder', () => {
    let dir: string;
    let webmail: WebmailServer;
    const env = containerEnv(objects, 'example-com-webmail');
    /** What the pod's container ports are in this test: the real webmail's listeners, by the variable that sets them. */
    const listener = (containerPort: number) => {
      if (String(containerPort) === env.FEDERIZER_WEBMAIL_PORT) return webmail.url;
      if (String(containerPort) === env.FEDERIZER_WEBMAIL_METRICS_PORT) return webmail.metricsUrl;
      throw new Error(`container port ${containerPort} is none the webmail listens on`);
    };

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'federizer-webmail-ingress-'));
      const config = readWebmailEnv({
        ...env,
        FEDERIZER_WEBMAIL_HOST: '127.0.0.1',
        FEDERIZER_WEBMAIL_PORT: '0',
        FEDERIZER_WEBMAIL_METRICS_PORT: '0',
        FEDERIZER_WEBMAIL_DIST: dir,
      });
      webmail = await WebmailServer.start(config, { logger: silentLogger() });
    });
    afterAll(async () => {
      await webmail?.close();
      await rm(dir, { recursive: true, force: true });
    });

    it('answers 404 for /metrics and /healthz where the Ingress sends them; serves them where Prometheus and the kubelet look', async () => {
      for (const path of ['/metrics', '/healthz']) {
        const backend = backendOf(ingress(), 'webmail.example.com', path)!;
        expect(backend.name).toBe('example-com-webmail');
        const publicPort = serviceTarget(objects, backend.name, backend.port.name!);
        const res = await fetch(`${listener(publicPort.containerPort)}${path}`);
        expect(res.status, path).toBe(404);
        expect(await res.text(), path).toBe(`not found: ${path}\n`);
      }
      // What the ServiceMonitor scrapes: the Service's metrics port, to the pod's metrics listener.
      const scraped = serviceTarget(objects, 'example-com-webmail', 'metrics');
      const res = await fetch(`${listener(scraped.containerPort)}/metrics`);
      expect(res.status).toBe(200);
      const text = await res.text();
      expect(text).toMatch(
        /^federizer_webmail_http_request_duration_seconds_count\{service="webmail",[^}]*code="404"\} 1$/m,
      );
      if (PROMTOOL) {
        const lint = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' });
        expect(lint.status, lint.stdout + lint.stderr).toBe(0);
      }
      // What the kubelet probes: the port the Deployment's probes name.
      const c = find(objects, 'Deployment', 'example-com-webmail').spec.template.spec.containers[0];
      for (const probe of [c.startupProbe, c.livenessProbe, c.readinessProbe]) {
        const port = (c.ports as { name: string; containerPort: number }[]).find((p) => p.name === probe.httpGet.port)!;
        expect((await fetch(`${listener(port.containerPort)}${probe.httpGet.path}`)).status).toBe(200);
      }
    });
  });
});

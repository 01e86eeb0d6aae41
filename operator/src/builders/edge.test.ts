/**
 * The public Ingress routes only what must be public. Its paths are checked against what the services really
 * serve: every path of openapi/auth.openapi.json and openapi/mailbox.openapi.json, every endpoint in the
 * discovery document of a real AS started from the environment the builder gives it, and the sign-in page
 * that AS sends a browser to. Path matching is the Ingress API's (Exact, and Prefix by path element).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthService, readAuthEnv } from '@federizer/auth';
import type { MailDomain } from '../model.js';
import { buildMailDomain } from './mail-domain.js';
import { PUBLIC_AUTH_PATHS, PUBLIC_MAILBOX_PATHS } from './edge.js';
import { containerEnv, find, type Loose } from './testing/manifests.js';
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
  backend: { service: { name: string } };
}

/** The Service an Ingress sends `host` + `path` to, as the Ingress API defines matching; undefined: none. */
function routedTo(ingress: Loose, host: string, path: string): string | undefined {
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
  return best?.backend.service.name;
}

const ingress = () => find(buildMailDomain(md, ctx).objects, 'Ingress', 'example-com');

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
      expect(html).not.toMatch(/<(link|script|img)\b/);
    });
  });
});

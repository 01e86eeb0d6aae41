/**
 * What faces outside the namespace: the Ingress (TLS from a Secret or from cert-manager), the ServiceMonitor
 * for the Prometheus Operator, and the SRV records that tie the domain to its AS and mailbox (PROTOCOL.md §8),
 * as ExternalDNS DNSEndpoint objects when dns.mode is externaldns.
 */
import type { ResolvedMailDomain, SrvRecord } from '../model.js';
import { metadata, names, type Manifest } from './meta.js';

/** The Ingress serves HTTPS on 443; the SRV records point there. */
export const PUBLIC_PORT = 443;

export interface IngressPath {
  readonly path: string;
  readonly pathType: 'Exact' | 'Prefix';
}

/**
 * What the AS serves to the Internet, and nothing else: its admin API, /metrics, /healthz, /readyz and
 * /openapi.json (which documents the admin API) stay on the cluster network, where the operator and
 * Prometheus reach the Service. The paths are oidc-provider's default routes of the endpoints the AS enables
 * (services/auth/src/provider.ts) and the routes services/auth/src/service.ts adds; a test checks them
 * against a real AS's discovery document and openapi/auth.openapi.json. The sign-in pages have no static
 * assets of their own: their style is inline.
 */
export const PUBLIC_AUTH_PATHS: readonly IngressPath[] = [
  // Discovery (OpenID Connect, RFC 8414 for an issuer without a path) and the keys that verify the AS's tokens.
  { path: '/.well-known/openid-configuration', pathType: 'Exact' },
  { path: '/.well-known/oauth-authorization-server', pathType: 'Exact' },
  { path: '/jwks', pathType: 'Exact' },
  // Authorization, with its resume step at /auth/<uid>; pushed authorization requests (RFC 9126).
  { path: '/auth', pathType: 'Prefix' },
  { path: '/request', pathType: 'Exact' },
  // The token endpoint (the token exchange of PROTOCOL.md too) and revocation at /token/revocation.
  { path: '/token', pathType: 'Prefix' },
  { path: '/me', pathType: 'Exact' },
  // RP-initiated logout, with its confirmation and success pages below it.
  { path: '/session/end', pathType: 'Prefix' },
  // The sign-in pages: the form, its login and abort posts.
  { path: '/interaction', pathType: 'Prefix' },
];

/** What the mailbox serves to the Internet: discovery, the client API, the federation API and their description. */
export const PUBLIC_MAILBOX_PATHS: readonly IngressPath[] = [
  { path: '/.well-known/federizer', pathType: 'Exact' },
  { path: '/api', pathType: 'Prefix' },
  { path: '/federation', pathType: 'Prefix' },
  { path: '/openapi.json', pathType: 'Exact' },
];

export function buildIngress(md: ResolvedMailDomain): Manifest | undefined {
  const { ingress, hostnames, webmail } = md.spec;
  if (!ingress.enabled) return undefined;
  const n = names(md);
  const routes: [string, string, readonly IngressPath[]][] = [
    [hostnames.authServer, n.auth, PUBLIC_AUTH_PATHS],
    [hostnames.mailbox, n.mailbox, PUBLIC_MAILBOX_PATHS],
    // The webmail is a single-page application whose routes are its own: it gets every path of its public
    // port, which answers 404 for /metrics and /healthz (they are on its metrics port, see workloads.ts).
    ...(webmail.enabled
      ? [[hostnames.webmail, n.webmail, [{ path: '/', pathType: 'Prefix' }]] as [string, string, IngressPath[]]]
      : []),
  ];
  const annotations: Record<string, string> = { ...ingress.annotations };
  let secretName: string | undefined;
  if (ingress.tls && 'certManager' in ingress.tls) {
    const { kind, issuer } = ingress.tls.certManager;
    annotations[kind === 'Issuer' ? 'cert-manager.io/issuer' : 'cert-manager.io/cluster-issuer'] = issuer;
    // cert-manager's ingress-shim writes the certificate it obtains into this Secret.
    secretName = n.certificate;
  } else if (ingress.tls) {
    secretName = ingress.tls.secretName;
  }
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'Ingress',
    metadata: metadata(md, 'ingress', n.ingress, { annotations }),
    spec: {
      ...(ingress.className !== undefined ? { ingressClassName: ingress.className } : {}),
      ...(secretName !== undefined ? { tls: [{ hosts: routes.map(([host]) => host), secretName }] } : {}),
      rules: routes.map(([host, service, paths]) => ({
        host,
        http: {
          paths: paths.map(({ path, pathType }) => ({
            path,
            pathType,
            backend: { service: { name: service, port: { name: 'http' } } },
          })),
        },
      })),
    },
  };
}

/**
 * Scrapes /metrics of the AS, the mailbox and the webmail through their Services' `metrics` port (the
 * webmail serves /metrics on a listener of its own, never on the port the Ingress reaches).
 */
export function buildServiceMonitor(md: ResolvedMailDomain): Manifest {
  return {
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'ServiceMonitor',
    metadata: metadata(md, 'monitoring', names(md).serviceMonitor),
    spec: {
      selector: {
        matchLabels: { 'app.kubernetes.io/name': 'federizer', 'app.kubernetes.io/instance': md.metadata.name },
        matchExpressions: [
          { key: 'app.kubernetes.io/component', operator: 'In', values: ['auth', 'mailbox', 'webmail'] },
        ],
      },
      endpoints: [{ port: 'metrics', path: '/metrics', interval: '30s', scheme: 'http' }],
    },
  };
}

/** `_federizer._as._tcp` and `_federizer._rs._tcp` (PROTOCOL.md §8), whatever publishes them. */
export function srvRecords(md: ResolvedMailDomain): SrvRecord[] {
  const { domain, hostnames, dns } = md.spec;
  const record = (service: 'as' | 'rs', target: string): SrvRecord => ({
    name: `_federizer._${service}._tcp.${domain}`,
    target,
    port: PUBLIC_PORT,
    priority: 0,
    weight: 0,
    ttl: dns.ttl,
  });
  return [record('as', hostnames.authServer), record('rs', hostnames.mailbox)];
}

/**
 * ExternalDNS manages SRV records only when started with `--managed-record-types=SRV` (among others); its
 * SRV targets are `priority weight port host.` with an absolute host.
 */
export function buildDnsEndpoint(md: ResolvedMailDomain, records: readonly SrvRecord[]): Manifest {
  return {
    apiVersion: 'externaldns.k8s.io/v1alpha1',
    kind: 'DNSEndpoint',
    metadata: metadata(md, 'dns', names(md).dnsEndpoint),
    spec: {
      endpoints: records.map((r) => ({
        dnsName: r.name,
        recordType: 'SRV',
        recordTTL: r.ttl,
        targets: [`${r.priority} ${r.weight} ${r.port} ${r.target}.`],
      })),
    },
  };
}

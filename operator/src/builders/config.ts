/**
 * The environment of each component: plain settings in a ConfigMap (loaded with envFrom), secrets as
 * secretKeyRefs. The variable names are exactly those `federizer auth` (services/auth/src/config.ts,
 * readAuthEnv) and `federizer mailbox` (services/mailbox/src/config.ts, readMailboxEnv) read; a test feeds
 * these values to those functions.
 */
import { createHash } from 'node:crypto';
import type { ResolvedMailDomain } from '../model.js';
import { metadata, names, urls, type Component, type Manifest } from './meta.js';
import { SECRET_KEYS } from './secrets.js';

/** Every component listens on this port in its pod; Services map port 80 to it. */
export const CONTAINER_PORT = 8080;

/**
 * The webmail's metrics listener (/metrics and /healthz) in its pod: the Ingress gives the webmail every
 * path of its public port, so those are served on this one instead. Every Service exposes a `metrics`
 * port on this number, the one the ServiceMonitor scrapes (for the AS and the mailbox it leads to their
 * one port, whose Ingress rules list only public paths).
 */
export const METRICS_PORT = 9090;

/** Where the PersistentVolumeClaims are mounted. */
export const DATA_DIR = '/data';

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef: { name: string; key: string } };
}

const secretEnv = (name: string, secret: string, key: string): EnvVar => ({
  name,
  valueFrom: { secretKeyRef: { name: secret, key } },
});

/**
 * The database URL variable of a service: a SQLite file on the data volume, a plain setting; or the PostgreSQL
 * URL, a secret read from the Secret the spec names.
 */
function databaseEnv(
  md: ResolvedMailDomain,
  variable: string,
  sqliteFile: string,
): { config: Record<string, string>; secrets: EnvVar[] } {
  const { database } = md.spec;
  if (database.type === 'sqlite') return { config: { [variable]: `sqlite:${DATA_DIR}/${sqliteFile}` }, secrets: [] };
  return {
    config: {},
    secrets: [secretEnv(variable, database.postgres.secretRef.name, database.postgres.secretRef.key)],
  };
}

export function authEnv(md: ResolvedMailDomain): { config: Record<string, string>; secrets: EnvVar[] } {
  const { spec } = md;
  const u = urls(md);
  const n = names(md);
  const webmail = spec.webmail.enabled;
  const database = databaseEnv(md, 'FEDERIZER_AUTH_DATABASE', 'auth.db');
  const config: Record<string, string> = {
    FEDERIZER_DOMAIN: spec.domain,
    FEDERIZER_AUTH_ISSUER: u.issuer,
    FEDERIZER_MAILBOX_RESOURCE: u.mailboxResource,
    FEDERIZER_AUTH_HOST: '0.0.0.0',
    FEDERIZER_AUTH_PORT: String(CONTAINER_PORT),
    FEDERIZER_AUTH_SIGNING_ALG: spec.authServer.signingAlgorithm,
    FEDERIZER_AUTH_KEY_ROTATION: spec.authServer.keyRotation,
    FEDERIZER_SHARE_WINDOW: spec.shareWindow,
    // The Ingress terminates TLS: the AS must believe X-Forwarded-Proto to see its https issuer.
    FEDERIZER_TRUST_PROXY: '1',
    FEDERIZER_LOG_LEVEL: spec.logLevel,
    ...database.config,
    // The webmail signs users in with the authorization code flow from its own origin.
    ...(webmail
      ? {
          // services/cli/src/federation/webmail-server.ts: the webmail comes back to /callback.
          FEDERIZER_WEBMAIL_REDIRECT_URIS: `${u.webmail}/callback`,
          FEDERIZER_WEBMAIL_POST_LOGOUT_URIS: `${u.webmail}/`,
          FEDERIZER_AUTH_CORS_ORIGINS: u.webmail,
        }
      : {}),
  };
  const secrets = [
    secretEnv('FEDERIZER_AUTH_ADMIN_TOKEN', n.adminToken, SECRET_KEYS.adminToken),
    secretEnv('FEDERIZER_AUTH_COOKIE_KEYS', n.cookieKeys, SECRET_KEYS.cookieKeys),
    secretEnv('FEDERIZER_MTA_JWKS', n.mtaKey, SECRET_KEYS.mtaPublicJwks),
    ...database.secrets,
  ];
  return { config, secrets };
}

export function mailboxEnv(md: ResolvedMailDomain): { config: Record<string, string>; secrets: EnvVar[] } {
  const { spec } = md;
  const u = urls(md);
  const n = names(md);
  const database = databaseEnv(md, 'FEDERIZER_MAILBOX_DATABASE', 'mailbox.db');
  const config: Record<string, string> = {
    FEDERIZER_DOMAIN: spec.domain,
    FEDERIZER_MAILBOX_PUBLIC_URL: u.mailbox,
    FEDERIZER_AUTH_ISSUER: u.issuer,
    FEDERIZER_MAILBOX_BLOB_DIR: `${DATA_DIR}/blobs`,
    FEDERIZER_MAILBOX_HOST: '0.0.0.0',
    FEDERIZER_MAILBOX_PORT: String(CONTAINER_PORT),
    FEDERIZER_MAX_RESOURCE_SIZE: spec.maxResourceSize,
    FEDERIZER_MAILBOX_QUOTA: spec.mailbox.quota,
    // How long sent resources stay fetchable: the same window as the AS's assertions.
    FEDERIZER_SHARE_WINDOW: spec.shareWindow,
    FEDERIZER_LOG_LEVEL: spec.logLevel,
    ...database.config,
    ...(spec.webmail.enabled
      ? { FEDERIZER_MAILBOX_CORS_ORIGINS: u.webmail, FEDERIZER_WEBMAIL_URL: `${u.webmail}/` }
      : {}),
    // FEDERIZER_AUTH_ADMIN_URL stays unset (the issuer): the mailbox's outbound client speaks only https to
    // public addresses, so an in-cluster http://...svc URL would be refused.
  };
  const secrets = [
    secretEnv('FEDERIZER_AUTH_ADMIN_TOKEN', n.adminToken, SECRET_KEYS.adminToken),
    secretEnv('FEDERIZER_MTA_PRIVATE_JWK', n.mtaKey, SECRET_KEYS.mtaPrivateJwk),
    ...database.secrets,
  ];
  return { config, secrets };
}

/**
 * `federizer webmail` serves the built PWA and tells it where the domain's AS and mailbox are
 * (services/cli/src/federation/webmail-server.ts, readWebmailEnv).
 */
export function webmailEnv(md: ResolvedMailDomain): { config: Record<string, string>; secrets: EnvVar[] } {
  const u = urls(md);
  return {
    config: {
      FEDERIZER_DOMAIN: md.spec.domain,
      FEDERIZER_AUTH_ISSUER: u.issuer,
      FEDERIZER_MAILBOX_PUBLIC_URL: u.mailbox,
      FEDERIZER_WEBMAIL_URL: u.webmail,
      FEDERIZER_WEBMAIL_HOST: '0.0.0.0',
      FEDERIZER_WEBMAIL_PORT: String(CONTAINER_PORT),
      FEDERIZER_WEBMAIL_METRICS_PORT: String(METRICS_PORT),
      FEDERIZER_LOG_LEVEL: md.spec.logLevel,
    },
    secrets: [],
  };
}

export function configMap(md: ResolvedMailDomain, component: Component, data: Record<string, string>): Manifest {
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: metadata(md, component, names(md)[component as 'auth' | 'mailbox' | 'webmail']),
    data,
  };
}

/** A stable digest of a component's configuration, for the pod template's CONFIG_HASH_ANNOTATION. */
export function configHash(config: Record<string, string>, secrets: readonly EnvVar[]): string {
  const sorted = Object.keys(config)
    .sort()
    .map((k) => [k, config[k]]);
  return createHash('sha256')
    .update(JSON.stringify([sorted, secrets]))
    .digest('hex')
    .slice(0, 16);
}

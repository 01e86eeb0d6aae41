/**
 * The Authorization Server's configuration, in the three steps of the house style: `readAuthEnv` reads the
 * environment (the only place that does), `authConfig` validates and fills defaults (the only place that
 * knows them), and secrets travel in their own object so they are never logged with the rest.
 */
import type { JWK } from 'jose';
import { ALLOWED_ALGS, DEFAULT_SHARE_WINDOW_SECONDS, type JwsAlg } from '@federizer/protocol';

export interface AuthConfig {
  /** The issuer identifier; also the base URL the AS is reached at (RFC 8414). */
  readonly issuer: string;
  /** The mail domain this AS speaks for: `From` and `Message-ID` domains are checked against it. */
  readonly domain: string;
  readonly host: string;
  readonly port: number;
  /** `sqlite:...` or `postgres://...`. */
  readonly databaseUrl: string;
  /** Development mode: http issuers and peers, loopback peers, `client_secret_basic` for the MTA. */
  readonly dev: boolean;
  readonly signingAlg: JwsAlg;
  /** A new signing key becomes current after this many seconds. */
  readonly keyRotationSeconds: number;
  /** How long an assertion stays valid; retired keys stay published at least this long. */
  readonly shareWindowSeconds: number;
  /** Lifetime of the access tokens issued to the webmail and CLI. */
  readonly userAccessTokenSeconds: number;
  /** Lifetime of the access tokens the fetch exchange issues (RFC 9068). */
  readonly fetchAccessTokenSeconds: number;
  /** The resource indicator (RFC 8707) of the domain's mailbox client API: the `aud` of user tokens. */
  readonly mailboxResource: string;
  readonly webmail: {
    readonly clientId: string;
    readonly redirectUris: readonly string[];
    readonly postLogoutRedirectUris: readonly string[];
  };
  /** The registered public client of the `federizer` CLI (loopback redirect, RFC 8252 §7.3). */
  readonly cli: { readonly clientId: string; readonly redirectUris: readonly string[] };
  readonly mta: { readonly clientId: string; readonly jwks?: { readonly keys: readonly JWK[] } };
  /** `host:port` of the DNS server to ask for `_federizer` records; the system resolvers when absent. */
  readonly dnsServer?: string;
  /** Origins allowed to call the token endpoint from a browser (the webmail's). */
  readonly corsOrigins: readonly string[];
  /** Seconds between checks for a due key rotation and for keys created by other replicas. */
  readonly keyCheckSeconds: number;
  /**
   * Whether X-Forwarded-For from a loopback or private-network peer is trusted for the client address (the
   * login throttle's key), as when a proxy or ingress terminates TLS. The scheme and host of every request are
   * the issuer's whatever a proxy forwards (service.ts, `seenAtIssuer`).
   */
  readonly trustProxy: boolean;
}

export interface AuthSecrets {
  /** Bearer secret of the admin API. */
  readonly adminToken: string;
  /** Cookie signing keys, newest first (rotation: prepend a new one). */
  readonly cookieKeys: readonly string[];
  /** Only in development mode: the MTA's `client_secret_basic` secret. */
  readonly mtaClientSecret?: string;
}

export type AuthEnv = Readonly<Record<string, string | undefined>>;

const DAY = 24 * 3600;

function required(env: AuthEnv, name: string): string {
  const value = env[name];
  if (value === undefined || value === '') throw new TypeError(`${name} is required`);
  return value;
}

function list(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function seconds(value: string | undefined, fallback: number, name: string): number {
  if (value === undefined || value === '') return fallback;
  const m = /^(\d+)\s*(s|m|h|d)?$/.exec(value.trim());
  if (!m) throw new TypeError(`${name} must be a duration like 3600, 90m, 12h or 7d, not ${JSON.stringify(value)}`);
  const unit = { s: 1, m: 60, h: 3600, d: DAY }[(m[2] ?? 's') as 's' | 'm' | 'h' | 'd'];
  return Number(m[1]) * unit;
}

function url(value: string, name: string, dev: boolean): string {
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new TypeError(`${name} must be an absolute URL, not ${JSON.stringify(value)}`);
  }
  if (parsed.protocol !== 'https:' && !(dev && parsed.protocol === 'http:')) {
    throw new TypeError(`${name} must be an https URL${dev ? ' (or http in development mode)' : ''}: ${value}`);
  }
  return value;
}

/** Validated configuration with defaults. Every default is here and nowhere else. */
export function authConfig(
  input: Partial<AuthConfig> & Pick<AuthConfig, 'issuer' | 'domain' | 'mailboxResource'>,
  secrets: Partial<AuthSecrets> = {},
): {
  config: AuthConfig;
  secrets: AuthSecrets;
} {
  const dev = input.dev ?? false;
  const issuer = url(input.issuer, 'issuer', dev).replace(/\/$/, '');
  const domain = input.domain.toLowerCase();
  if (!/^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$/.test(domain))
    throw new TypeError(`domain is not a domain name: ${input.domain}`);
  const signingAlg = input.signingAlg ?? 'ES256';
  if (!ALLOWED_ALGS.includes(signingAlg)) throw new TypeError(`signingAlg must be one of ${ALLOWED_ALGS.join(', ')}`);
  const mta = input.mta ?? { clientId: `mta.${domain}` };
  if (!mta.jwks && !(dev && secrets.mtaClientSecret)) {
    throw new TypeError(
      'the MTA client needs a JWKS for private_key_jwt (a client secret is allowed only in development mode)',
    );
  }
  if (secrets.mtaClientSecret && !dev)
    throw new TypeError('client_secret_basic for the MTA is allowed only in development mode');
  if (!secrets.adminToken || secrets.adminToken.length < 16)
    throw new TypeError('the admin token must be at least 16 characters');
  if (!secrets.cookieKeys || secrets.cookieKeys.length === 0 || secrets.cookieKeys.some((k) => k.length < 16)) {
    throw new TypeError('at least one cookie key of at least 16 characters is required');
  }
  const config: AuthConfig = {
    issuer,
    domain,
    host: input.host ?? '127.0.0.1',
    port: input.port ?? 0,
    databaseUrl: input.databaseUrl ?? 'sqlite:auth.db',
    dev,
    signingAlg,
    keyRotationSeconds: input.keyRotationSeconds ?? 30 * DAY,
    shareWindowSeconds: input.shareWindowSeconds ?? DEFAULT_SHARE_WINDOW_SECONDS,
    userAccessTokenSeconds: input.userAccessTokenSeconds ?? 15 * 60,
    fetchAccessTokenSeconds: input.fetchAccessTokenSeconds ?? 5 * 60,
    mailboxResource: url(input.mailboxResource, 'mailboxResource', dev),
    webmail: input.webmail ?? { clientId: 'webmail', redirectUris: [], postLogoutRedirectUris: [] },
    cli: input.cli ?? { clientId: 'federizer-cli', redirectUris: ['http://127.0.0.1/callback'] },
    mta,
    dnsServer: input.dnsServer,
    corsOrigins: input.corsOrigins ?? [],
    keyCheckSeconds: input.keyCheckSeconds ?? 60,
    trustProxy: input.trustProxy ?? false,
  };
  return {
    config,
    secrets: {
      adminToken: secrets.adminToken,
      cookieKeys: secrets.cookieKeys,
      mtaClientSecret: secrets.mtaClientSecret,
    },
  };
}

/** Reads FEDERIZER_* variables. The one function that touches the environment. */
export function readAuthEnv(env: AuthEnv = process.env): ReturnType<typeof authConfig> {
  const dev = env.FEDERIZER_DEV === '1' || env.FEDERIZER_DEV === 'true';
  const mtaJwks = env.FEDERIZER_MTA_JWKS;
  return authConfig(
    {
      issuer: required(env, 'FEDERIZER_AUTH_ISSUER'),
      domain: required(env, 'FEDERIZER_DOMAIN'),
      mailboxResource: required(env, 'FEDERIZER_MAILBOX_RESOURCE'),
      host: env.FEDERIZER_AUTH_HOST,
      port: env.FEDERIZER_AUTH_PORT === undefined ? undefined : Number(env.FEDERIZER_AUTH_PORT),
      databaseUrl: env.FEDERIZER_AUTH_DATABASE,
      dev,
      signingAlg: env.FEDERIZER_AUTH_SIGNING_ALG as JwsAlg | undefined,
      keyRotationSeconds: env.FEDERIZER_AUTH_KEY_ROTATION
        ? seconds(env.FEDERIZER_AUTH_KEY_ROTATION, 0, 'FEDERIZER_AUTH_KEY_ROTATION')
        : undefined,
      shareWindowSeconds: env.FEDERIZER_SHARE_WINDOW
        ? seconds(env.FEDERIZER_SHARE_WINDOW, 0, 'FEDERIZER_SHARE_WINDOW')
        : undefined,
      webmail: {
        clientId: env.FEDERIZER_WEBMAIL_CLIENT_ID ?? 'webmail',
        redirectUris: list(env.FEDERIZER_WEBMAIL_REDIRECT_URIS),
        postLogoutRedirectUris: list(env.FEDERIZER_WEBMAIL_POST_LOGOUT_URIS),
      },
      mta: {
        clientId: env.FEDERIZER_MTA_CLIENT_ID ?? `mta.${required(env, 'FEDERIZER_DOMAIN')}`,
        jwks: mtaJwks ? (JSON.parse(mtaJwks) as { keys: JWK[] }) : undefined,
      },
      dnsServer: env.FEDERIZER_DNS,
      corsOrigins: list(env.FEDERIZER_AUTH_CORS_ORIGINS),
      trustProxy: env.FEDERIZER_TRUST_PROXY === '1' || env.FEDERIZER_TRUST_PROXY === 'true',
    },
    {
      adminToken: env.FEDERIZER_AUTH_ADMIN_TOKEN,
      cookieKeys: list(env.FEDERIZER_AUTH_COOKIE_KEYS),
      mtaClientSecret: env.FEDERIZER_MTA_CLIENT_SECRET,
    },
  );
}

/**
 * The mailbox service's configuration: `mailboxConfig` validates and fills the defaults (the only place
 * that knows them); `readMailboxEnv` reads FEDERIZER_* variables (the only place that touches the
 * environment); secrets are kept apart so they are never logged with the rest.
 */
import type { CryptoKey, JWK, KeyObject } from 'jose';
import { DEFAULT_SHARE_WINDOW_SECONDS, type JwsAlg } from '@federizer/protocol';

export interface MailboxConfig {
  readonly domain: string;
  /** Where this mailbox is reached from outside, e.g. https://mail.example.com; `htu` is checked against it. */
  readonly publicUrl: string;
  /** The issuer of the domain's own AS. */
  readonly issuer: string;
  readonly host: string;
  readonly port: number;
  readonly databaseUrl: string;
  /** Directory of the content-addressed resources. */
  readonly blobDir: string;
  readonly dev: boolean;
  /** The MTA's OAuth client id at the domain's AS (published as `mta_client_id`). */
  readonly mtaClientId: string;
  readonly maxResourceSize: number;
  /** Bytes of resources an account may hold. */
  readonly quotaBytes: number;
  /** Origins allowed to call the client API from a browser (the webmail's). */
  readonly corsOrigins: readonly string[];
  /** The webmail's URL, published in /.well-known/federizer. */
  readonly webmailUrl: string;
  readonly dnsServer?: string;
  /** How long a share stays open to fetches (the assertion lifetime the AS uses). */
  readonly shareWindowSeconds: number;
  /** Bytes of a Placeholder Message (JSON), sent or received. */
  readonly maxMessageBytes: number;
  /** The AS admin API, asked which users exist (defaults to the issuer). */
  readonly authAdminUrl: string;
  /** Time between runs of the blob collector (one run at a time across the replicas of a database). */
  readonly blobGcIntervalSeconds: number;
  /**
   * A blob file touched more recently than this is never deleted: an upload of the same bytes may be between
   * storing them and recording them. It must exceed the longest such pause; an hour is generous.
   */
  readonly blobGcGraceSeconds: number;
  /**
   * The wait after a first failed transfer or fetch, doubling after each further failure up to an hour.
   * A minute spares a domain that is down; tests and local federations shorten it.
   */
  readonly retryBaseSeconds: number;
  /** Transfers accepted per minute from one sending domain; more answer 429 with Retry-After. */
  readonly transferRatePerMinute: number;
  /** Transfers run at once by this replica (half of them at most to one destination, so none starves the rest). */
  readonly outboxConcurrency: number;
  /** Fetches run at once by this replica (half of them at most from one origin). */
  readonly fetchConcurrency: number;
  /**
   * How often the long polls' accounts are checked for changes no notification announced (a delivery status
   * recorded by a worker, a notification lost while the PostgreSQL channel between replicas reconnected).
   * Changes made through any replica's API wake the polls at once: on PostgreSQL through LISTEN/NOTIFY.
   */
  readonly longPollCheckSeconds: number;
}

export interface MailboxSecrets {
  /** Bearer token of the AS admin API. */
  readonly authAdminToken?: string;
  /** The MTA's private key for private_key_jwt client authentication (a private JWK with kid and alg). */
  readonly mtaPrivateJwk?: JWK;
  /** Development mode only: client_secret_basic for the MTA. */
  readonly mtaClientSecret?: string;
  /** The MTA's key as a key object (embedding the service in a program or a test): instead of mtaPrivateJwk. */
  readonly mtaKey?: { readonly key: CryptoKey | KeyObject; readonly alg: JwsAlg; readonly kid: string };
}

const GIB = 1024 ** 3;

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
  return value.replace(/\/$/, '');
}

function seconds(value: number, name: string, min: number): number {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new TypeError(`${name} must be a whole number of seconds >= ${min}, not ${JSON.stringify(value)}`);
  }
  return value;
}

function count(value: number, name: string, min: number): number {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new TypeError(`${name} must be a whole number >= ${min}, not ${JSON.stringify(value)}`);
  }
  return value;
}

export function mailboxConfig(
  input: Partial<MailboxConfig> & Pick<MailboxConfig, 'domain' | 'publicUrl' | 'issuer' | 'blobDir'>,
  secrets: MailboxSecrets = {},
): { config: MailboxConfig; secrets: MailboxSecrets } {
  const dev = input.dev ?? false;
  const domain = input.domain.toLowerCase();
  if (!/^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$/.test(domain))
    throw new TypeError(`domain is not a domain name: ${input.domain}`);
  if (!secrets.mtaPrivateJwk && !secrets.mtaKey && !(dev && secrets.mtaClientSecret)) {
    throw new TypeError(
      'the MTA needs its private key (private_key_jwt); a client secret is allowed only in development mode',
    );
  }
  const publicUrl = url(input.publicUrl, 'publicUrl', dev);
  const config: MailboxConfig = {
    domain,
    publicUrl,
    issuer: url(input.issuer, 'issuer', dev),
    host: input.host ?? '127.0.0.1',
    port: input.port ?? 0,
    databaseUrl: input.databaseUrl ?? 'sqlite:mailbox.db',
    blobDir: input.blobDir,
    dev,
    mtaClientId: input.mtaClientId ?? `mta.${domain}`,
    maxResourceSize: input.maxResourceSize ?? 5 * GIB,
    quotaBytes: input.quotaBytes ?? 50 * GIB,
    corsOrigins: input.corsOrigins ?? [],
    webmailUrl: input.webmailUrl ?? `${publicUrl}/`,
    dnsServer: input.dnsServer,
    // The AS's assertions live as long (FEDERIZER_SHARE_WINDOW is given to both): a share outliving its
    // assertion could not be fetched, one expiring before it would refuse fetches the assertion allows.
    shareWindowSeconds: seconds(input.shareWindowSeconds ?? DEFAULT_SHARE_WINDOW_SECONDS, 'shareWindowSeconds', 1),
    maxMessageBytes: input.maxMessageBytes ?? 1024 * 1024,
    authAdminUrl: (input.authAdminUrl ?? input.issuer).replace(/\/$/, ''),
    blobGcIntervalSeconds: seconds(input.blobGcIntervalSeconds ?? 3600, 'blobGcIntervalSeconds', 1),
    blobGcGraceSeconds: seconds(input.blobGcGraceSeconds ?? 3600, 'blobGcGraceSeconds', 0),
    retryBaseSeconds: seconds(input.retryBaseSeconds ?? 60, 'retryBaseSeconds', 1),
    transferRatePerMinute: count(input.transferRatePerMinute ?? 600, 'transferRatePerMinute', 1),
    outboxConcurrency: count(input.outboxConcurrency ?? 16, 'outboxConcurrency', 1),
    fetchConcurrency: count(input.fetchConcurrency ?? 8, 'fetchConcurrency', 1),
    longPollCheckSeconds: seconds(input.longPollCheckSeconds ?? 1, 'longPollCheckSeconds', 1),
  };
  return { config, secrets };
}

/** Reads FEDERIZER_* variables. The one function that touches the environment. */
export function readMailboxEnv(
  env: Readonly<Record<string, string | undefined>> = process.env,
): ReturnType<typeof mailboxConfig> {
  const need = (name: string): string => {
    const value = env[name];
    if (value === undefined || value === '') throw new TypeError(`${name} is required`);
    return value;
  };
  const list = (value: string | undefined) =>
    (value ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== '');
  const bytes = (name: string): number | undefined => {
    const value = env[name];
    if (value === undefined || value === '') return undefined;
    const m = /^(\d+)\s*([kmgt]i?b?)?$/i.exec(value.trim());
    if (!m) throw new TypeError(`${name} must be a size like 5GiB or 1048576, not ${JSON.stringify(value)}`);
    const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[
      (m[2] ?? '').charAt(0).toLowerCase() as '' | 'k' | 'm' | 'g' | 't'
    ];
    return Number(m[1]) * unit;
  };
  const duration = (name: string): number | undefined => {
    const value = env[name];
    if (value === undefined || value === '') return undefined;
    const m = /^(\d+)\s*([smhd]?)$/i.exec(value.trim());
    if (!m)
      throw new TypeError(`${name} must be a duration like 3600, 90s, 30m, 6h or 1d, not ${JSON.stringify(value)}`);
    const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? '').toLowerCase() as '' | 's' | 'm' | 'h' | 'd'];
    return Number(m[1]) * unit;
  };
  const whole = (name: string): number | undefined => {
    const value = env[name];
    if (value === undefined || value === '') return undefined;
    if (!/^\d+$/.test(value.trim()))
      throw new TypeError(`${name} must be a whole number, not ${JSON.stringify(value)}`);
    return Number(value.trim());
  };
  const jwk = env.FEDERIZER_MTA_PRIVATE_JWK;
  return mailboxConfig(
    {
      domain: need('FEDERIZER_DOMAIN'),
      publicUrl: need('FEDERIZER_MAILBOX_PUBLIC_URL'),
      issuer: need('FEDERIZER_AUTH_ISSUER'),
      blobDir: need('FEDERIZER_MAILBOX_BLOB_DIR'),
      host: env.FEDERIZER_MAILBOX_HOST,
      port: env.FEDERIZER_MAILBOX_PORT === undefined ? undefined : Number(env.FEDERIZER_MAILBOX_PORT),
      databaseUrl: env.FEDERIZER_MAILBOX_DATABASE,
      dev: env.FEDERIZER_DEV === '1' || env.FEDERIZER_DEV === 'true',
      mtaClientId: env.FEDERIZER_MTA_CLIENT_ID,
      maxResourceSize: bytes('FEDERIZER_MAX_RESOURCE_SIZE'),
      quotaBytes: bytes('FEDERIZER_MAILBOX_QUOTA'),
      corsOrigins: list(env.FEDERIZER_MAILBOX_CORS_ORIGINS),
      webmailUrl: env.FEDERIZER_WEBMAIL_URL,
      dnsServer: env.FEDERIZER_DNS,
      authAdminUrl: env.FEDERIZER_AUTH_ADMIN_URL,
      blobGcIntervalSeconds: duration('FEDERIZER_MAILBOX_GC_INTERVAL'),
      blobGcGraceSeconds: duration('FEDERIZER_MAILBOX_GC_GRACE'),
      retryBaseSeconds: duration('FEDERIZER_MAILBOX_RETRY_BASE'),
      transferRatePerMinute: whole('FEDERIZER_MAILBOX_TRANSFER_RATE'),
      outboxConcurrency: whole('FEDERIZER_MAILBOX_OUTBOX_CONCURRENCY'),
      fetchConcurrency: whole('FEDERIZER_MAILBOX_FETCH_CONCURRENCY'),
      longPollCheckSeconds: duration('FEDERIZER_MAILBOX_LONG_POLL_CHECK'),
      shareWindowSeconds: duration('FEDERIZER_SHARE_WINDOW'),
    },
    {
      mtaPrivateJwk: jwk ? (JSON.parse(jwk) as JWK) : undefined,
      mtaClientSecret: env.FEDERIZER_MTA_CLIENT_SECRET,
      // Without it no recipient could be looked up: every transfer would be refused.
      authAdminToken: need('FEDERIZER_AUTH_ADMIN_TOKEN'),
    },
  );
}

/**
 * One domain of the local federation: its Authorization Server, its mailbox and its webmail, built from the
 * same config functions an operator's environment goes through (`authConfig`, `mailboxConfig`,
 * `webmailServerConfig`), with its state in `<data-dir>/<domain>/`. Run either in a child process
 * (domain-process.ts) or in the caller's process; the two differ only in where the logs go.
 */
import { join } from 'node:path';
import type { DestinationStream } from 'pino';
import { AuthService, authConfig } from '@federizer/auth';
import { createLogger } from '@federizer/common';
import { MailboxService, mailboxConfig, type MailboxConfig } from '@federizer/mailbox';
import { PortInUseError, WEBMAIL_CLIENT_ID } from './layout.js';
import { loadOrCreateSecrets, publicJwkOf, sqliteUrl } from './state.js';
import { WebmailServer, webmailServerConfig } from './webmail-server.js';

/**
 * The mailbox settings a federation may change from their defaults (each is also an environment variable
 * of `federizer mailbox`): tests shorten the retry base so a domain that was down is retried in seconds.
 */
export type MailboxSettings = Partial<
  Pick<
    MailboxConfig,
    | 'retryBaseSeconds'
    | 'transferRatePerMinute'
    | 'blobGcIntervalSeconds'
    | 'blobGcGraceSeconds'
    | 'outboxConcurrency'
    | 'fetchConcurrency'
  >
>;

/**
 * The domains of a local federation trust each other and share one machine: the per-domain transfer rate
 * limit, a protection against a flooding peer on the Internet, would only throttle the federation's own
 * mail (600 a minute by default, less than a benchmark or a demo sends). A spec may still set its own.
 */
export const LOCAL_TRANSFER_RATE_PER_MINUTE = 1_000_000;

/** Everything a domain needs to start; plain data, so that it can cross to a child process. */
export interface DomainSpec {
  readonly domain: string;
  /** `<data-dir>/<domain>`, absolute. */
  readonly dir: string;
  readonly host: string;
  readonly ports: { readonly as: number; readonly mailbox: number; readonly webmail: number };
  readonly issuer: string;
  /** The mailbox's origin (its API is at + /api/v1). */
  readonly mailboxUrl: string;
  /** The webmail's origin. */
  readonly webmailUrl: string;
  /** `host:port` of the federation's DNS server. */
  readonly dnsServer: string;
  readonly webmailDist: string;
  readonly logLevel: string;
  /** Overrides of the mailbox's defaults, checked by `mailboxConfig` like the environment's values. */
  readonly mailbox?: MailboxSettings;
}

export interface RunningDomain {
  close(): Promise<void>;
}

/** Says which service could not have its port, instead of node's bare "address already in use". */
async function named<T>(starting: Promise<T>, what: string, port: number): Promise<T> {
  try {
    return await starting;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EADDRINUSE')
      throw new PortInUseError(`port ${port} (${what}) is already in use`);
    throw e;
  }
}

export async function startDomainServices(spec: DomainSpec, logs: DestinationStream): Promise<RunningDomain> {
  const secrets = await loadOrCreateSecrets(spec.dir, spec.domain);
  const logger = (name: string) =>
    createLogger({ name, level: spec.logLevel, base: { domain: spec.domain }, destination: logs });
  const webmailOrigin = spec.webmailUrl;
  const auth = authConfig(
    {
      issuer: spec.issuer,
      domain: spec.domain,
      mailboxResource: `${spec.mailboxUrl}/api/v1`,
      host: spec.host,
      port: spec.ports.as,
      databaseUrl: sqliteUrl(join(spec.dir, 'auth.db')),
      dev: true,
      mta: { clientId: `mta.${spec.domain}`, jwks: { keys: [publicJwkOf(secrets.mtaPrivateJwk)] } },
      webmail: {
        clientId: WEBMAIL_CLIENT_ID,
        redirectUris: [`${webmailOrigin}/callback`],
        postLogoutRedirectUris: [`${webmailOrigin}/`],
      },
      dnsServer: spec.dnsServer,
      corsOrigins: [webmailOrigin],
    },
    { adminToken: secrets.adminToken, cookieKeys: secrets.cookieKeys },
  );
  const mailbox = mailboxConfig(
    {
      transferRatePerMinute: LOCAL_TRANSFER_RATE_PER_MINUTE,
      ...spec.mailbox,
      domain: spec.domain,
      publicUrl: spec.mailboxUrl,
      issuer: spec.issuer,
      blobDir: join(spec.dir, 'blobs'),
      host: spec.host,
      port: spec.ports.mailbox,
      databaseUrl: sqliteUrl(join(spec.dir, 'mailbox.db')),
      dev: true,
      corsOrigins: [webmailOrigin],
      webmailUrl: `${webmailOrigin}/`,
      dnsServer: spec.dnsServer,
    },
    { mtaPrivateJwk: secrets.mtaPrivateJwk, authAdminToken: secrets.adminToken },
  );
  const webmail = webmailServerConfig({
    domain: spec.domain,
    issuer: spec.issuer,
    mailboxUrl: spec.mailboxUrl,
    publicUrl: webmailOrigin,
    clientId: WEBMAIL_CLIENT_ID,
    distDir: spec.webmailDist,
    host: spec.host,
    port: spec.ports.webmail,
    dev: true,
  });

  const started: { close(): Promise<void> }[] = [];
  const close = async () => {
    // The reverse of the start: the webmail first, the mailbox hands back claimed work while its AS still answers.
    for (const service of started.reverse()) await service.close().catch(() => undefined);
  };
  try {
    const as = AuthService.start(auth.config, auth.secrets, { logger: logger('auth') });
    started.push(await named(as, `the Authorization Server of ${spec.domain}`, spec.ports.as));
    const mbx = MailboxService.start(mailbox.config, mailbox.secrets, { logger: logger('mailbox') });
    started.push(await named(mbx, `the mailbox of ${spec.domain}`, spec.ports.mailbox));
    const web = WebmailServer.start(webmail, { logger: logger('webmail') });
    started.push(await named(web, `the webmail of ${spec.domain}`, spec.ports.webmail));
  } catch (e) {
    await close();
    throw e;
  }
  let closing: Promise<void> | undefined;
  return { close: () => (closing ??= close()) };
}

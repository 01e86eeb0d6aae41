/**
 * Where things are in a local federation: host names, ports and demo users, derived from the domain names
 * and the port base alone, so that a restart finds every issuer URL where it was (tokens, assertions and
 * stored discovery results all name them).
 */

export const DEFAULT_DOMAINS: readonly string[] = ['example.com', 'example.net', 'example.org'];
export const DEFAULT_PORT_BASE = 8400;
export const DEFAULT_DATA_DIR = '.federizer';

/** Ports per domain in a fixed-base layout: room for a few more services per domain later. */
export const PORTS_PER_DOMAIN = 10;
export const MAX_DOMAINS = 50;

/** The webmail's OAuth client id at every AS of the federation. */
export const WEBMAIL_CLIENT_ID = 'webmail';
/** The CLI's public client registered at every AS (authConfig's default). */
export const CLI_CLIENT_ID = 'federizer-cli';

/** A port the federation needs is taken: the message names the port and what it was for. */
export class PortInUseError extends Error {
  override readonly name = 'PortInUseError';
  readonly code = 'EADDRINUSE';
}

export type HostKind = 'as' | 'mail' | 'webmail';

export interface DomainPorts {
  readonly as: number;
  readonly mailbox: number;
  readonly webmail: number;
}

/** `as.example-com.localhost`: browsers send `*.localhost` to loopback and keep cookies per host. */
export function hostOf(kind: HostKind, domain: string): string {
  return `${kind}.${domain.replace(/\./g, '-')}.localhost`;
}

/**
 * The fixed layout of a port base B: the DNS server on B (UDP and TCP), then domain i (from 0) on
 * B + 10(i+1): its AS, +1 its mailbox, +2 its webmail. `--port-base 8400` gives example.com 8410–8412.
 */
export function fixedPorts(base: number, index: number): DomainPorts {
  const first = base + PORTS_PER_DOMAIN * (index + 1);
  return { as: first, mailbox: first + 1, webmail: first + 2 };
}

/** Every port of the fixed layout of base `base`, with what listens there (for messages). */
export function fixedLayout(base: number, domains: readonly string[]): { port: number; what: string }[] {
  return [
    { port: base, what: 'the DNS server' },
    ...domains.flatMap((d, i) => {
      const p = fixedPorts(base, i);
      return [
        { port: p.as, what: `the Authorization Server of ${d}` },
        { port: p.mailbox, what: `the mailbox of ${d}` },
        { port: p.webmail, what: `the webmail of ${d}` },
      ];
    }),
  ];
}

export function highestFixedPort(base: number, domainCount: number): number {
  return fixedPorts(base, domainCount - 1).webmail;
}

const DOMAIN_NAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$/;

/** The checks `authConfig` and `mailboxConfig` make, up front, with the reason in the message. */
export function checkDomains(domains: readonly string[]): string[] {
  if (domains.length === 0) throw new TypeError('at least one domain is needed');
  if (domains.length > MAX_DOMAINS) throw new TypeError(`at most ${MAX_DOMAINS} domains, not ${domains.length}`);
  const seen = new Set<string>();
  return domains.map((raw) => {
    const domain = raw.trim().toLowerCase();
    if (!DOMAIN_NAME.test(domain)) throw new TypeError(`"${raw}" is not a domain name (like example.com)`);
    if (domain.endsWith('.localhost')) throw new TypeError(`${domain}: *.localhost names are the services' hosts`);
    if (seen.has(domain)) throw new TypeError(`${domain} is listed twice`);
    seen.add(domain);
    return domain;
  });
}

const KNOWN_DEMO_USERS: Readonly<Record<string, string>> = {
  'example.com': 'alice',
  'example.net': 'bob',
  'example.org': 'bobby',
};
const OTHER_NAMES = ['carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'mallory', 'niaj'];

/**
 * The demo user of a domain: alice@example.com, bob@example.net and bobby@example.org (issue 5), and for
 * other domains a name by position, so that every domain has someone to sign in as.
 */
export function demoUserOf(domain: string, index: number): { address: string; displayName: string } {
  const local = KNOWN_DEMO_USERS[domain] ?? OTHER_NAMES[index % OTHER_NAMES.length]!;
  return { address: `${local}@${domain}`, displayName: local.charAt(0).toUpperCase() + local.slice(1) };
}

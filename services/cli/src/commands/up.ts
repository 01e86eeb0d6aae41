import { relative } from 'node:path';
import { parseArgs } from 'node:util';
// Not the federation's index: it would load the services themselves, which only the children need.
import { DEFAULT_DATA_DIR, DEFAULT_DOMAINS, DEFAULT_PORT_BASE } from '../federation/layout.js';
import { startLocalFederation, type LocalFederation } from '../federation/local-federation.js';
import { formatLogLine } from '../federation/log-format.js';
import { DomainRestarts } from '../federation/restarts.js';
import { ensureWebmailBuilt } from '../federation/webmail-build.js';
import { WEBMAIL_ROOT } from '../federation/webmail-server.js';
import type { CommandIo } from '../io.js';
import { optionMistake, UsageError } from '../io.js';
import { parseDnsOption } from '../mail/locate.js';
import { untilSignal } from '../signals.js';

const HELP = `federizer up [--domains LIST] [--data-dir DIR] [--port-base N] [--dns-forward HOST:PORT] [--verbose]
             [--no-webmail-build]

Runs a local federation: for each domain its Authorization Server, mailbox and webmail in a process of
its own, and a DNS server answering the domains' _federizer SRV records. Each domain gets a demo user,
whose password is printed. Everything is kept in the data directory, so a restart keeps users and mail.

  --domains LIST      comma-separated mail domains (default ${DEFAULT_DOMAINS.join(',')})
  --data-dir DIR      where state is kept (default ./${DEFAULT_DATA_DIR}); DIR/federation.json describes
                      the running federation: URLs, the DNS server, the demo users and their passwords
  --port-base N       the DNS server listens on N, domain i (from 0) on N+10(i+1) (AS), +1 (mailbox) and
                      +2 (webmail); default ${DEFAULT_PORT_BASE}. 0 picks free ports (kept across restarts while free)
  --dns-forward HOST:PORT
                      a DNS server (IP address and port) that answers for domains outside this federation:
                      the embedded DNS server relays their queries to it, so these domains can send to and
                      fetch from mail domains run elsewhere, and their software can use this DNS server too
  --verbose           the services' info logs, not only warnings and errors
  --no-webmail-build  do not build webmail/ first (by default it is built when its build is missing or stale)

The services are reached at http://as.<domain-with-dashes>.localhost:PORT and the like: browsers and curl
send *.localhost to loopback. A domain whose process dies is started again after 1 s (then 2, 4, 8 and 16 s
while it keeps dying within a minute of each restart; left down when it dies that soon after the fifth).
Stops gracefully on Ctrl-C (SIGINT) or SIGTERM.`;

const UNSUPPORTED_RUNTIME = /^oidc-provider WARNING: Unsupported runtime/;

function banner(fed: LocalFederation): string {
  const lines = [`Federizer: a local federation of ${Object.keys(fed.domains).length} mail domains is running.`, ''];
  for (const domain of Object.values(fed.domains)) {
    const user = fed.users.find((u) => u.domain === domain.domain);
    lines.push(`  ${domain.domain}`);
    lines.push(`    webmail  ${domain.webmailUrl}/`);
    if (user) lines.push(`    user     ${user.address}   password ${user.password}`);
    lines.push(`    AS       ${domain.issuer}`);
    lines.push(`    mailbox  ${domain.mailboxUrl}`);
  }
  const where = relative(process.cwd(), fed.file) || fed.file;
  const first = Object.keys(fed.domains)[0]!;
  lines.push(
    '',
    `  DNS server ${fed.dns.host}:${fed.dns.port}  (dig @${fed.dns.host} -p ${fed.dns.port} _federizer._rs._tcp.${first} SRV)`,
    `  All of this, for scripts: ${where.startsWith('..') ? fed.file : where}`,
    '',
    'Ctrl-C to stop.',
    '',
  );
  return lines.join('\n');
}

export async function upCommand(args: readonly string[], io: CommandIo): Promise<number> {
  let values: {
    domains?: string;
    'data-dir'?: string;
    'port-base'?: string;
    'dns-forward'?: string;
    verbose?: boolean;
    'no-webmail-build'?: boolean;
    help?: boolean;
  };
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: {
        domains: { type: 'string' },
        'data-dir': { type: 'string' },
        'port-base': { type: 'string' },
        'dns-forward': { type: 'string' },
        verbose: { type: 'boolean', short: 'v' },
        'no-webmail-build': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw optionMistake(e, 'up');
  }
  if (values.help) {
    io.stdout.write(`${HELP}\n`);
    return 0;
  }
  const portText = values['port-base'];
  if (portText !== undefined && !/^\d{1,5}$/.test(portText))
    throw new UsageError(`--port-base is a port number (or 0 for free ports), not ${JSON.stringify(portText)}`);
  const domains = values.domains?.split(',').filter((d) => d.trim() !== '');
  if (values['data-dir'] === '') throw new UsageError('--data-dir needs a directory');
  const dnsForward =
    values['dns-forward'] === undefined ? undefined : parseDnsOption(values['dns-forward'], '--dns-forward');

  // Listening from the start: a Ctrl-C while the domains start stops them all once they are up.
  const signal = untilSignal();

  if (!values['no-webmail-build']) {
    const outcome = await ensureWebmailBuilt(WEBMAIL_ROOT);
    if (outcome.status === 'built') io.stderr.write(`federizer up: built the webmail (${outcome.reason})\n`);
    else if (outcome.status !== 'fresh')
      io.stderr.write(
        `federizer up: warning: ${outcome.status === 'failed' ? `the webmail build failed: ${outcome.reason}` : outcome.reason}; its pages will say how to build it\n`,
      );
  }

  // A domain whose process dies is started again; the federation object is there once every domain is up.
  let started!: (fed: LocalFederation) => void;
  const federation = new Promise<LocalFederation>((resolve) => (started = resolve));
  const restarts = new DomainRestarts({
    start: async (domain) => (await federation).startDomain(domain),
    say: (line) => io.stderr.write(`federizer up: ${line}\n`),
  });
  let fed: LocalFederation;
  try {
    fed = await startLocalFederation({
      domains,
      dataDir: values['data-dir'] ?? DEFAULT_DATA_DIR,
      portBase: portText === undefined ? undefined : Number(portText),
      ...(dnsForward === undefined ? {} : { dnsForward }),
      processes: true,
      logLevel: values.verbose ? 'info' : 'warn',
      log: (domain, line) => {
        // Known and harmless (ARCHITECTURE.md): repeated by every domain, it would bury the banner.
        if (!values.verbose && UNSUPPORTED_RUNTIME.test(line)) return;
        io.stderr.write(formatLogLine(domain, line));
      },
      onEvent: (event) => {
        if (event.type === 'exit') restarts.died(event.domain, event.signal ?? `exit code ${event.code}`);
        else io.stderr.write(`federizer up: warning: ${event.message}\n`);
      },
    });
  } catch (e) {
    restarts.stop();
    // Caller mistakes (a bad domain name, a port base out of range) are usage errors.
    if (e instanceof TypeError) throw new UsageError(e.message);
    throw e;
  }
  started(fed);
  io.stdout.write(banner(fed));
  const received = await signal;
  restarts.stop();
  io.stderr.write(`federizer up: ${received}: stopping the domains…\n`);
  await fed.close();
  io.stderr.write('federizer up: stopped\n');
  return 0;
}

/**
 * A whole local federation (issue 5): several mail domains, each with its AS, mailbox and webmail, found
 * through an embedded DNS server that answers their `_federizer` SRV records. `npm start` runs it with one
 * child process per domain and fixed ports; the cross-service tests run the very same code on random ports
 * in a temporary directory, in processes (to kill one) or in their own process (to be quick).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer, type Server } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { DnsServer, freePorts, isFetchBadPort } from '@federizer/common';
import type { ChildMessage, ParentMessage } from './domain-process.js';
import type { DomainSpec, MailboxSettings, RunningDomain } from './domain-services.js';
import {
  CLI_CLIENT_ID,
  DEFAULT_DOMAINS,
  PortInUseError,
  WEBMAIL_CLIENT_ID,
  DEFAULT_PORT_BASE,
  checkDomains,
  demoUserOf,
  fixedLayout,
  fixedPorts,
  highestFixedPort,
  hostOf,
  type DomainPorts,
} from './layout.js';
import {
  ensureDomainDir,
  loadOrCreateDemoUser,
  loadOrCreateSecrets,
  lockDataDir,
  readEndpoints,
  writeEndpoints,
  writeJsonFile,
  type DemoUser,
} from './state.js';
import { DEFAULT_WEBMAIL_DIST } from './webmail-server.js';

export interface LocalFederationOptions {
  /** Default: example.com, example.net, example.org. */
  readonly domains?: readonly string[];
  /** Where the state lives (created if missing); relative paths are taken from the current directory. */
  readonly dataDir: string;
  /**
   * Default 8400: the DNS server on the base, domain i on base + 10(i+1) (AS), +1 (mailbox), +2 (webmail).
   * 0: random free ports, except that the ports of the data directory's last start are taken again while
   * they are free, so that issuer URLs survive a restart there too.
   */
  readonly portBase?: number;
  /** One child process per domain (default true), or every domain in this process. */
  readonly processes?: boolean;
  /** Extra Node.js options for each domain's process (process mode), e.g. `--cpu-prof` for a benchmark. */
  readonly nodeOptions?: readonly string[];
  /** Level of the services' logs (pino): default 'warn'. */
  readonly logLevel?: string;
  /** Receives every log line of a domain: pino JSON from its services, or raw text its process wrote to stderr. */
  readonly log?: (domain: string, line: string) => void;
  /** Unexpected exits of a domain's process, and warnings about the federation (not its services). */
  readonly onEvent?: (event: FederationEvent) => void;
  /** The built webmail; default `<repo>/webmail/dist`. */
  readonly webmailDist?: string;
  /** Mailbox settings for every domain instead of the defaults (e.g. a short retry base in tests). */
  readonly mailbox?: MailboxSettings;
  /**
   * A DNS server that answers the names outside the federation's domains: the embedded server relays those
   * queries to it, so the domains reach mail domains run elsewhere (another implementation, another machine).
   */
  readonly dnsForward?: { readonly host: string; readonly port: number };
}

export type FederationEvent =
  | { readonly type: 'exit'; readonly domain: string; readonly code: number | null; readonly signal: string | null }
  | { readonly type: 'warning'; readonly domain?: string; readonly message: string };

export interface FederationDomain {
  readonly domain: string;
  /** The AS's issuer, e.g. http://as.example-com.localhost:8410. */
  readonly issuer: string;
  /** The mailbox's origin; its client API is at mailboxUrl + /api/v1. */
  readonly mailboxUrl: string;
  /** The webmail's origin. */
  readonly webmailUrl: string;
  readonly ports: DomainPorts;
  /** Bearer token of the AS admin API (`federizer user ...`). */
  readonly adminToken: string;
  /** The domain's child process while it runs in process mode. */
  readonly pid: number | undefined;
  readonly running: boolean;
}

export interface LocalFederation {
  readonly dataDir: string;
  /** Path of federation.json. */
  readonly file: string;
  readonly dns: { readonly host: string; readonly port: number };
  readonly domains: Readonly<Record<string, FederationDomain>>;
  /** One demo user per domain, with the password it was created with. */
  readonly users: readonly FederationUser[];
  /** Stops a domain gracefully, or with `kill: true` by SIGKILL (process mode only); its DNS records stay. */
  stopDomain(domain: string, options?: { kill?: boolean }): Promise<void>;
  /** Starts a stopped domain again, on the same ports and data. */
  startDomain(domain: string): Promise<void>;
  /** Stops every domain gracefully and the DNS server; the data directory is kept. */
  close(): Promise<void>;
}

export interface FederationUser extends DemoUser {
  readonly domain: string;
}

/** The content of `<data-dir>/federation.json`. */
export interface FederationFile {
  readonly pid: number;
  readonly startedAt: string;
  readonly dataDir: string;
  readonly dns: { readonly host: string; readonly port: number };
  readonly domains: Readonly<
    Record<
      string,
      {
        readonly issuer: string;
        readonly mailboxUrl: string;
        readonly webmailUrl: string;
        readonly adminToken: string;
        readonly webmailClientId: string;
        readonly cliClientId: string;
      }
    >
  >;
  readonly users: readonly FederationUser[];
}

const HOST = '127.0.0.1';
const READY_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 20_000;

/** The child's entry: the TypeScript source through tsx in a checkout, the compiled file in an image. */
function childEntry(): { entry: string; execArgv: string[] } {
  const source = fileURLToPath(new URL('./domain-process.ts', import.meta.url));
  if (existsSync(source)) {
    const tsx = dirname(createRequire(import.meta.url).resolve('tsx/package.json'));
    return { entry: source, execArgv: ['--import', pathToFileURL(join(tsx, 'dist', 'loader.mjs')).href] };
  }
  return { entry: fileURLToPath(new URL('./domain-process.js', import.meta.url)), execArgv: [] };
}

async function listenOn(port: number): Promise<Server> {
  const server = createServer();
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen({ port, host: HOST, exclusive: true }, () => ok());
  });
  return server;
}

const closeServer = (s: Server) => new Promise<void>((ok) => s.close(() => ok()));

async function isFree(port: number): Promise<boolean> {
  try {
    await closeServer(await listenOn(port));
    return true;
  } catch {
    return false;
  }
}

function portsFromEndpoints(e: { issuer: string; mailboxUrl: string; webmailUrl: string }): DomainPorts | undefined {
  const port = (u: string) => Number(new URL(u).port);
  const ports = { as: port(e.issuer), mailbox: port(e.mailboxUrl), webmail: port(e.webmailUrl) };
  return Object.values(ports).every((p) => Number.isSafeInteger(p) && p > 0) ? ports : undefined;
}

/** Splits a stream of text into lines for `log`. */
function lineWriter(emit: (line: string) => void): { write(chunk: string): void } {
  let pending = '';
  return {
    write(chunk) {
      pending += chunk;
      let at: number;
      while ((at = pending.indexOf('\n')) >= 0) {
        emit(pending.slice(0, at));
        pending = pending.slice(at + 1);
      }
    },
  };
}

interface DomainState {
  readonly spec: DomainSpec;
  readonly adminToken: string;
  readonly user: DemoUser;
  child?: ChildProcess;
  inProcess?: RunningDomain;
  running: boolean;
  /** Set while a stop asked for by the caller is under way: the exit is then expected. */
  stopping: boolean;
}

export async function startLocalFederation(options: LocalFederationOptions): Promise<LocalFederation> {
  const domains = checkDomains(options.domains ?? DEFAULT_DOMAINS);
  const portBase = options.portBase ?? DEFAULT_PORT_BASE;
  if (!Number.isSafeInteger(portBase) || portBase < 0 || (portBase > 0 && portBase < 1024))
    throw new TypeError(`the port base is 0 (random ports) or a port from 1024, not ${options.portBase}`);
  if (portBase > 0 && highestFixedPort(portBase, domains.length) > 65535)
    throw new TypeError(
      `--port-base ${portBase} leaves no room for ${domains.length} domains (up to port ${highestFixedPort(portBase, domains.length)})`,
    );
  if (portBase > 0) {
    const bad = fixedLayout(portBase, domains).find((l) => isFetchBadPort(l.port));
    if (bad)
      throw new TypeError(
        `--port-base ${portBase} puts ${bad.what} on port ${bad.port}, which browsers and fetch refuse to connect to (a "bad port" of the Fetch standard); choose another`,
      );
  }
  const processes = options.processes ?? true;
  const dataDir = resolve(options.dataDir);
  const logLevel = options.logLevel ?? 'warn';
  const log = options.log ?? (() => undefined);
  const event = options.onEvent ?? (() => undefined);
  const webmailDist = resolve(options.webmailDist ?? DEFAULT_WEBMAIL_DIST);
  const file = join(dataDir, 'federation.json');

  const lock = await lockDataDir(dataDir);
  const cleanups: (() => Promise<unknown>)[] = [() => lock.release()];
  const states = new Map<string, DomainState>();
  const startDns = async (port: number): Promise<DnsServer> => {
    let server: DnsServer;
    try {
      server = await DnsServer.start({
        host: HOST,
        port,
        zones: [...domains, 'localhost'],
        ...(options.dnsForward === undefined ? {} : { forwardTo: options.dnsForward }),
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EADDRINUSE')
        throw new PortInUseError(`port ${port} (the DNS server) is already in use; choose another --port-base`);
      throw e;
    }
    cleanups.push(() => server.close());
    return server;
  };
  let dns: DnsServer;
  try {
    // Ports first: with a fixed base, one that is taken is reported before anything starts.
    const portsOf = new Map<string, DomainPorts>();
    const dirs = new Map<string, string>();
    for (const domain of domains) dirs.set(domain, await ensureDomainDir(dataDir, domain));
    if (portBase > 0) {
      for (const [i, domain] of domains.entries()) portsOf.set(domain, fixedPorts(portBase, i));
      for (const { port, what } of fixedLayout(portBase, domains)) {
        if (!(await isFree(port)))
          throw new PortInUseError(
            `port ${port} (${what}) is already in use: is another local federation running? Stop it, or choose another --port-base`,
          );
      }
      dns = await startDns(portBase);
    } else {
      // The DNS server first, so that no domain is given the port it picked.
      dns = await startDns(0);
      const taken = new Set<number>([dns.address.port]);
      for (const domain of domains) {
        const previous = await readEndpoints(dirs.get(domain)!).catch(() => undefined);
        const again = previous && portsFromEndpoints(previous);
        const reusable =
          again &&
          Object.values(again).every((p) => !taken.has(p)) &&
          (await isFree(again.as)) &&
          (await isFree(again.mailbox)) &&
          (await isFree(again.webmail));
        if (reusable) {
          portsOf.set(domain, again);
          Object.values(again).forEach((p) => taken.add(p));
        }
      }
      for (const domain of domains.filter((d) => !portsOf.has(d))) {
        let ports: number[];
        do ports = await freePorts(3);
        while (ports.some((p) => taken.has(p)));
        ports.forEach((p) => taken.add(p));
        portsOf.set(domain, { as: ports[0]!, mailbox: ports[1]!, webmail: ports[2]! });
      }
    }

    const dnsServer = `${dns.address.host}:${dns.address.port}`;

    for (const [i, domain] of domains.entries()) {
      const dir = dirs.get(domain)!;
      const ports = portsOf.get(domain)!;
      const url = (kind: 'as' | 'mail' | 'webmail', port: number) => `http://${hostOf(kind, domain)}:${port}`;
      const spec: DomainSpec = {
        domain,
        dir,
        host: HOST,
        ports,
        issuer: url('as', ports.as),
        mailboxUrl: url('mail', ports.mailbox),
        webmailUrl: url('webmail', ports.webmail),
        dnsServer,
        webmailDist,
        logLevel,
        ...(options.mailbox === undefined ? {} : { mailbox: { ...options.mailbox } }),
      };
      const previous = await readEndpoints(dir).catch(() => undefined);
      if (previous && previous.issuer !== spec.issuer)
        event({
          type: 'warning',
          domain,
          message: `the issuer of ${domain} changed from ${previous.issuer} to ${spec.issuer}: sessions and tokens of the last start are void, and other domains may hold the old address for a few minutes`,
        });
      await writeEndpoints(dir, { issuer: spec.issuer, mailboxUrl: spec.mailboxUrl, webmailUrl: spec.webmailUrl });
      // The parent makes the secrets, so that the children (started at once) never race to create them.
      const secrets = await loadOrCreateSecrets(dir, domain);
      const user = await loadOrCreateDemoUser(dir, demoUserOf(domain, i));
      states.set(domain, { spec, adminToken: secrets.adminToken, user, running: false, stopping: false });

      dns.setRecords(`_federizer._as._tcp.${domain}`, 'SRV', [
        { priority: 10, weight: 5, port: ports.as, target: hostOf('as', domain) },
      ]);
      dns.setRecords(`_federizer._rs._tcp.${domain}`, 'SRV', [
        { priority: 10, weight: 5, port: ports.mailbox, target: hostOf('mail', domain) },
      ]);
      for (const kind of ['as', 'mail', 'webmail'] as const) dns.setRecords(hostOf(kind, domain), 'A', [HOST]);
    }
  } catch (e) {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    throw e;
  }

  const stateOf = (domain: string): DomainState => {
    const state = states.get(domain.toLowerCase());
    if (state === undefined)
      throw new TypeError(`${domain} is not a domain of this federation (${[...states.keys()].join(', ')})`);
    return state;
  };

  const launchChild = (state: DomainState): Promise<void> => {
    const { domain } = state.spec;
    const { entry, execArgv } = childEntry();
    const child = fork(entry, [], {
      execArgv: [...(options.nodeOptions ?? []), ...execArgv],
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: process.env,
    });
    state.child = child;
    for (const stream of [child.stdout!, child.stderr!])
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => log(domain, line));
    return new Promise<void>((ready, failed) => {
      let settled = false;
      const settle = (error?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (error) failed(error);
        else ready();
      };
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        settle(new Error(`${domain} did not start within ${READY_TIMEOUT_MS / 1000} s`));
      }, READY_TIMEOUT_MS);
      child.once('error', (e) => settle(new Error(`could not run the process of ${domain}: ${e.message}`)));
      child.on('message', (message: ChildMessage) => {
        if (message.type === 'ready') {
          state.running = true;
          settle();
        } else if (message.type === 'failed') {
          const error = new Error(`${domain} could not start: ${message.message}`);
          settle(message.code === 'EADDRINUSE' ? new PortInUseError(error.message) : error);
        }
      });
      child.once('exit', (code, signal) => {
        const wasRunning = state.running;
        state.running = false;
        if (state.child === child) state.child = undefined;
        settle(new Error(`${domain}'s process exited while starting (code ${code}, signal ${signal})`));
        if (wasRunning && !state.stopping) event({ type: 'exit', domain, code, signal });
      });
      child.send({ type: 'start', spec: state.spec } satisfies ParentMessage);
    });
  };

  const ensureDemoUser = async (state: DomainState): Promise<void> => {
    // The AS's own address, not the issuer's *.localhost name: node's resolver does not know those here.
    const base = `http://${HOST}:${state.spec.ports.as}/admin/v1/users`;
    const headers = { authorization: `Bearer ${state.adminToken}`, 'content-type': 'application/json' };
    const { address, displayName, password } = state.user;
    const found = await fetch(`${base}/${encodeURIComponent(address)}`, { headers });
    if (found.ok) return;
    if (found.status !== 404) throw new Error(`checking ${address}: ${found.status} ${await found.text()}`);
    const created = await fetch(base, {
      method: 'POST',
      headers,
      body: JSON.stringify({ address, displayName, password }),
    });
    if (created.status !== 201) throw new Error(`creating ${address}: ${created.status} ${await created.text()}`);
  };

  const bringUp = async (state: DomainState): Promise<void> => {
    state.stopping = false;
    if (processes) {
      await launchChild(state);
    } else {
      // Loaded here only: in process mode the parent never needs oidc-provider, knex and the rest.
      const { startDomainServices } = await import('./domain-services.js');
      state.inProcess = await startDomainServices(
        state.spec,
        lineWriter((line) => log(state.spec.domain, line)),
      );
      state.running = true;
    }
    await ensureDemoUser(state);
  };

  const bringDown = async (state: DomainState, kill = false): Promise<void> => {
    if (kill && !processes) throw new TypeError('stopDomain with kill needs a federation started with processes: true');
    state.stopping = true;
    try {
      if (state.inProcess) {
        await state.inProcess.close();
        state.inProcess = undefined;
        state.running = false;
        return;
      }
      const child = state.child;
      if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((done) => child.once('exit', () => done()));
      if (kill) {
        child.kill('SIGKILL');
        await exited;
        return;
      }
      if (child.connected) child.send({ type: 'stop' } satisfies ParentMessage);
      else child.kill('SIGTERM');
      const timer = setTimeout(() => {
        event({
          type: 'warning',
          domain: state.spec.domain,
          message: `${state.spec.domain} did not stop in time: killed`,
        });
        child.kill('SIGKILL');
      }, STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    } finally {
      state.running = false;
    }
  };

  const started = await Promise.allSettled([...states.values()].map(bringUp));
  const failure = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) {
    await Promise.all([...states.values()].map((s) => bringDown(s).catch(() => undefined)));
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    throw failure.reason;
  }

  const users: FederationUser[] = [...states.values()].map((s) => ({ domain: s.spec.domain, ...s.user }));
  const view = (state: DomainState): FederationDomain => ({
    domain: state.spec.domain,
    issuer: state.spec.issuer,
    mailboxUrl: state.spec.mailboxUrl,
    webmailUrl: state.spec.webmailUrl,
    ports: state.spec.ports,
    adminToken: state.adminToken,
    get pid() {
      return state.child?.pid;
    },
    get running() {
      return state.running;
    },
  });
  const domainViews = Object.fromEntries([...states].map(([name, state]) => [name, view(state)]));
  const address = dns.address;
  const description: FederationFile = {
    pid: process.pid,
    startedAt: new Date().toISOString(),
    dataDir,
    dns: address,
    domains: Object.fromEntries(
      [...states].map(([name, s]) => [
        name,
        {
          issuer: s.spec.issuer,
          mailboxUrl: s.spec.mailboxUrl,
          webmailUrl: s.spec.webmailUrl,
          adminToken: s.adminToken,
          webmailClientId: WEBMAIL_CLIENT_ID,
          cliClientId: CLI_CLIENT_ID,
        },
      ]),
    ),
    users,
  };
  await writeJsonFile(file, description);

  let closing: Promise<void> | undefined;
  return {
    dataDir,
    file,
    dns: address,
    domains: domainViews,
    users,
    async stopDomain(domain, stopOptions = {}) {
      await bringDown(stateOf(domain), stopOptions.kill ?? false);
    },
    async startDomain(domain) {
      const state = stateOf(domain);
      if (closing) throw new Error('the federation is closed');
      if (state.running || state.child || state.inProcess) throw new Error(`${state.spec.domain} is already running`);
      await bringUp(state);
    },
    close() {
      closing ??= (async () => {
        await Promise.all([...states.values()].map((s) => bringDown(s).catch(() => undefined)));
        for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
      })();
      return closing;
    },
  };
}

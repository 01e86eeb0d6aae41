/**
 * One large External Resource through real mailbox processes (issue 4): the upload (`POST /api/v1/resources`),
 * the cross-domain fetch (PROTOCOL.md §6: example.net's fetch job pulls it from example.com's fetch endpoint
 * after a send), and the download (`GET /api/v1/resources/{digest}`, whole and with Range). Each domain's AS
 * and mailbox run as their own `federizer auth` and `federizer mailbox` processes on SQLite, beside an
 * embedded DNS server in this process, so each process's peak RSS is its own (VmHWM, reset before each phase).
 *
 * The bytes come from a deterministic generator and are never held whole, here or in a server; every round
 * sends a new resource (a Content-ID already held is never fetched again). Targets: ≥ 100 MB/s for each
 * transfer, peak RSS < 150 MiB for every process. BENCH_TRANSFER_MIB (default 1024) sets the size,
 * BENCH_TRANSFER_ROUNDS (default 3) the rounds; BENCH_PROFILE_DIR=dir writes CPU profiles of the mailboxes.
 * BENCH_BUNDLE=1 builds the production bundle (scripts/build.ts, into dist/) first and runs the services from
 * it instead of from the TypeScript sources through tsx; opt-in, so that a stale dist/ never stands in for the
 * code under test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash, randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';

import { Agent, request, type Dispatcher } from 'undici';
import { DnsServer, createHttpClient } from '@federizer/common';
import {
  createDpopProof,
  exportDpopKey,
  externalContentType,
  generateDpopKey,
  type DpopKey,
  type Message,
  dpopKeyOf,
} from '@federizer/protocol';
import { freePort, hostOf, type TestDomain } from '../services/auth/tests/harness.js';
import { signIn } from '../services/auth/tests/exchange-client.js';
import {
  cpuSeconds,
  currentRss,
  loadAverageText,
  medianOf,
  mibText,
  peakRss,
  resetPeakRss,
  versusTarget,
} from './lib.js';
import { DEFAULT_ENTRY, buildBundle } from '../scripts/build.js';

const MIB = 1024 ** 2;
const SIZE = Number(process.env.BENCH_TRANSFER_MIB ?? 1024) * MIB;
const ROUNDS = Number(process.env.BENCH_TRANSFER_ROUNDS ?? 3);
const TARGET_MBPS = 100;
const TARGET_RSS = 150 * MIB;
const ADMIN = 'bench-admin-token-0123456789';
const PASSWORD = 'bench password';
/** This process: its RSS is shown, but the target is the services'. */
const CLIENT = 'bench client';
const BUNDLE = process.env.BENCH_BUNDLE === '1';
const BIN = BUNDLE ? DEFAULT_ENTRY : new URL('../services/cli/bin/federizer.js', import.meta.url).pathname;

// ---------------------------------------------------------------------------------------------------
// The bytes: a deterministic stream that any range of can be made again, without keeping it.

const CHUNK = 256 * 1024;
const TEMPLATE_CHUNKS = 4;

/** `size` bytes named by `seed`: chunk k is a slice of a seeded AES-CTR keystream, stamped with seed and k. */
class Generated {
  readonly #template: Buffer;

  constructor(
    readonly seed: number,
    readonly size: number,
  ) {
    const key = createHash('sha256').update(`federizer bench ${seed}`).digest();
    this.#template = createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(CHUNK * TEMPLATE_CHUNKS));
  }

  /** Bytes `start` to `end` inclusive, in fresh buffers of at most CHUNK bytes (the sink may keep them). */
  *chunks(start = 0, end = this.size - 1): Generator<Buffer> {
    for (let k = Math.floor(start / CHUNK); k * CHUNK <= end; k++) {
      const chunk = Buffer.allocUnsafe(CHUNK);
      const from = (k % TEMPLATE_CHUNKS) * CHUNK;
      this.#template.copy(chunk, 0, from, from + CHUNK);
      chunk.writeUInt32BE(this.seed, 0);
      chunk.writeUInt32BE(k, 4);
      const first = Math.max(start - k * CHUNK, 0);
      const last = Math.min(end - k * CHUNK, CHUNK - 1);
      yield first === 0 && last === CHUNK - 1 ? chunk : chunk.subarray(first, last + 1);
    }
  }

  /** SHA-256 (base64url) of bytes `start` to `end`. */
  digest(start = 0, end = this.size - 1): string {
    const hash = createHash('sha256');
    for (const chunk of this.chunks(start, end)) hash.update(chunk);
    return hash.digest('base64url');
  }
}

// ---------------------------------------------------------------------------------------------------
// The processes

interface Service {
  readonly name: string;
  readonly child: ChildProcess;
  readonly port: number;
}

interface BenchDomain {
  readonly name: string;
  readonly issuer: string;
  readonly mailboxUrl: string;
  readonly as: Service;
  readonly mailbox: Service;
}

function start(name: string, command: 'auth' | 'mailbox', port: number, env: Record<string, string>): Service {
  const profile =
    process.env.BENCH_PROFILE_DIR && command === 'mailbox'
      ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE_DIR}`, `--cpu-prof-name=${name}.cpuprofile`]
      : [];
  const child = spawn(process.execPath, [...profile, BIN, command], {
    env: { ...process.env, FEDERIZER_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn', FEDERIZER_DEV: '1', ...env },
    stdio: ['ignore', process.env.BENCH_LOG_LEVEL ? 'inherit' : 'ignore', 'inherit'],
  });
  return { name, child, port };
}

async function untilHealthy(service: Service): Promise<void> {
  for (let i = 0; ; i++) {
    if (service.child.exitCode !== null) throw new Error(`${service.name} exited with ${service.child.exitCode}`);
    try {
      const res = await request(`http://127.0.0.1:${service.port}/healthz`);
      await res.body.dump();
      if (res.statusCode === 200) return;
    } catch {
      // not listening yet
    }
    if (i > 600) throw new Error(`${service.name} did not start`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function startDomain(name: string, dns: DnsServer, dir: string): Promise<BenchDomain> {
  const [asPort, mailboxPort] = [await freePort(), await freePort()];
  const issuer = `http://${hostOf('as', name)}:${asPort}`;
  const mailboxUrl = `http://${hostOf('mail', name)}:${mailboxPort}`;
  const key = await generateDpopKey();
  const kid = `mta-${name}`;
  const publicJwk = { ...key.publicJwk, alg: 'ES256', kid };
  const privateJwk = { ...(await exportDpopKey(key)), alg: 'ES256', kid };
  const dnsServer = `${dns.address.host}:${dns.address.port}`;
  const as = start(`AS ${name}`, 'auth', asPort, {
    FEDERIZER_AUTH_ISSUER: issuer,
    FEDERIZER_AUTH_PORT: String(asPort),
    FEDERIZER_DOMAIN: name,
    FEDERIZER_MAILBOX_RESOURCE: `${mailboxUrl}/api/v1`,
    FEDERIZER_AUTH_ADMIN_TOKEN: ADMIN,
    FEDERIZER_AUTH_COOKIE_KEYS: 'bench-cookie-key-0123456789abcdef',
    FEDERIZER_MTA_JWKS: JSON.stringify({ keys: [publicJwk] }),
    FEDERIZER_AUTH_DATABASE: `sqlite:${join(dir, `auth-${name}.db`)}`,
    FEDERIZER_WEBMAIL_REDIRECT_URIS: `${mailboxUrl}/callback`,
    FEDERIZER_DNS: dnsServer,
  });
  const mailbox = start(`mailbox ${name}`, 'mailbox', mailboxPort, {
    FEDERIZER_DOMAIN: name,
    FEDERIZER_MAILBOX_PUBLIC_URL: mailboxUrl,
    FEDERIZER_AUTH_ISSUER: issuer,
    FEDERIZER_MAILBOX_BLOB_DIR: join(dir, `blobs-${name}`),
    FEDERIZER_MAILBOX_DATABASE: `sqlite:${join(dir, `mailbox-${name}.db`)}`,
    FEDERIZER_MAILBOX_PORT: String(mailboxPort),
    FEDERIZER_AUTH_ADMIN_TOKEN: ADMIN,
    FEDERIZER_MTA_PRIVATE_JWK: JSON.stringify(privateJwk),
    FEDERIZER_DNS: dnsServer,
  });
  dns.setRecords(`_federizer._as._tcp.${name}`, 'SRV', [
    { priority: 10, weight: 5, port: asPort, target: hostOf('as', name) },
  ]);
  dns.setRecords(`_federizer._rs._tcp.${name}`, 'SRV', [
    { priority: 10, weight: 5, port: mailboxPort, target: hostOf('mail', name) },
  ]);
  return { name, issuer, mailboxUrl, as, mailbox };
}

async function stop(service: Service): Promise<void> {
  if (service.child.exitCode !== null || service.child.signalCode !== null) return;
  const exited = new Promise((r) => service.child.once('exit', r));
  service.child.kill('SIGTERM');
  await exited;
}

// ---------------------------------------------------------------------------------------------------
// A signed-in user of the client API, with DPoP on every request

class ApiUser {
  constructor(
    readonly address: string,
    private readonly domain: BenchDomain,
    private readonly token: string,
    private readonly key: DpopKey,
    private readonly dispatcher: Dispatcher,
  ) {}

  static async signIn(domain: BenchDomain, address: string, dispatcher: Dispatcher): Promise<ApiUser> {
    const created = await request(`http://127.0.0.1:${domain.as.port}/admin/v1/users`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ address, password: PASSWORD }),
    });
    if (created.statusCode !== 201) throw new Error(`creating ${address}: ${await created.body.text()}`);
    const http = createHttpClient({ dev: true });
    try {
      const session = await signIn(
        {
          issuer: domain.issuer,
          config: { webmail: { clientId: 'webmail' }, signingAlg: 'ES256' },
          webmailRedirectUri: `${domain.mailboxUrl}/callback`,
          mailboxResource: `${domain.mailboxUrl}/api/v1`,
        } as unknown as TestDomain,
        http,
        address,
        PASSWORD,
      );
      const key = await dpopKeyOf(session.dpopKey);
      return new ApiUser(address, domain, session.accessToken, key, dispatcher);
    } finally {
      await http.close();
    }
  }

  /** Sent to the mailbox's port on 127.0.0.1; the DPoP `htu` names its public URL, as the server checks. */
  async call(
    method: string,
    path: string,
    init: { headers?: Record<string, string>; body?: Dispatcher.DispatchOptions['body'] } = {},
  ): Promise<Dispatcher.ResponseData> {
    const htu = `${this.domain.mailboxUrl}/api/v1${path}`;
    return request(`http://127.0.0.1:${this.domain.mailbox.port}/api/v1${path}`, {
      method: method as Dispatcher.HttpMethod,
      dispatcher: this.dispatcher,
      headers: {
        authorization: `DPoP ${this.token}`,
        dpop: await createDpopProof(this.key, { htm: method, htu, accessToken: this.token }),
        ...init.headers,
      },
      body: init.body,
    });
  }

  async json<T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const res = await this.call(method, path, {
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.statusCode, body: (await res.body.json()) as T };
  }
}

async function fetchMetrics(domain: BenchDomain): Promise<{ count: number; seconds: number; bytes: number }> {
  const res = await request(`http://127.0.0.1:${domain.mailbox.port}/metrics`);
  const text = await res.body.text();
  // Every series carries the registry's default label (service="mailbox").
  const value = (name: string) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
  return {
    count: value('federizer_mailbox_fetch_duration_seconds_count'),
    seconds: value('federizer_mailbox_fetch_duration_seconds_sum'),
    bytes: value('federizer_mailbox_fetched_bytes_total'),
  };
}

// ---------------------------------------------------------------------------------------------------
// The phases

type Phase = 'upload' | 'fetch' | 'download' | 'range download';
const PHASES: readonly Phase[] = ['upload', 'fetch', 'download', 'range download'];

interface PhaseResult {
  /** Bytes per second. */
  readonly rate: number;
  /** Peak RSS of each process during the phase, and its RSS when the phase began. */
  readonly rss: ReadonlyMap<string, number | undefined>;
  readonly rssBefore: ReadonlyMap<string, number | undefined>;
  /** CPU seconds each process used during the phase, in user and system mode. */
  readonly cpu: ReadonlyMap<string, { user: number; system: number } | undefined>;
  readonly note?: string;
}

async function measured(
  pids: ReadonlyMap<string, number>,
  phase: () => Promise<{ rate: number; note?: string }>,
): Promise<PhaseResult> {
  const cpuBefore = new Map<string, { user: number; system: number } | undefined>();
  const rssBefore = new Map<string, number | undefined>();
  for (const [name, pid] of pids) {
    await resetPeakRss(pid);
    rssBefore.set(name, await currentRss(pid));
    cpuBefore.set(name, await cpuSeconds(pid));
  }
  const { rate, note } = await phase();
  const rss = new Map<string, number | undefined>();
  const cpu = new Map<string, { user: number; system: number } | undefined>();
  for (const [name, pid] of pids) {
    rss.set(name, await peakRss(pid));
    const [before, after] = [cpuBefore.get(name), await cpuSeconds(pid)];
    cpu.set(
      name,
      before === undefined || after === undefined
        ? undefined
        : { user: after.user - before.user, system: after.system - before.system },
    );
  }
  return { rate, rss, rssBefore, cpu, note };
}

/** Reads a body to its end, hashing it; answers the base64url SHA-256 and the byte count. */
async function drain(body: AsyncIterable<Uint8Array>): Promise<{ digest: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of body) {
    hash.update(chunk);
    bytes += chunk.byteLength;
  }
  return { digest: hash.digest('base64url'), bytes };
}

const seconds = (t0: number) => (performance.now() - t0) / 1000;

async function round(
  seed: number,
  size: number,
  users: { alice: ApiUser; bob: ApiUser },
  receiver: BenchDomain,
  pids: ReadonlyMap<string, number>,
): Promise<Map<Phase, PhaseResult>> {
  const bytes = new Generated(seed, size);
  const digest = bytes.digest(); // before the clock starts: it verifies what the servers answer
  // An unaligned window of half the resource, in the middle, for the Range download.
  const rangeStart = Math.floor(size / 4) + 12_345;
  const rangeEnd = rangeStart + Math.floor(size / 2) - 1;
  const rangeDigest = bytes.digest(rangeStart, rangeEnd);
  const results = new Map<Phase, PhaseResult>();

  results.set(
    'upload',
    await measured(pids, async () => {
      const t0 = performance.now();
      const res = await users.alice.call('POST', '/resources', {
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
        // Pulled a chunk at a time as the socket drains: never more than a chunk or two in memory.
        body: Readable.from(bytes.chunks(), { objectMode: false, highWaterMark: CHUNK }),
      });
      const answer = (await res.body.json()) as { contentId?: string };
      const elapsed = seconds(t0);
      if (res.statusCode !== 201) throw new Error(`upload: ${res.statusCode} ${JSON.stringify(answer)}`);
      if (answer.contentId !== `<${digest}>`)
        throw new Error(`upload: Content-ID ${answer.contentId}, not <${digest}>`);
      return { rate: size / elapsed };
    }),
  );

  results.set(
    'fetch',
    await measured(pids, async () => {
      const before = await fetchMetrics(receiver);
      const messageId = `<${randomUUID()}@example.com>`;
      const message: Message = {
        envelope: [
          {
            headers: [
              { From: users.alice.address },
              { To: users.bob.address },
              { Subject: `bench round ${seed}` },
              { 'Message-ID': messageId },
            ],
          },
        ],
        body: {
          parts: [
            {
              headers: [
                { 'Content-Disposition': 'attachment; filename="bench.bin"' },
                { 'Content-ID': `<${digest}>` },
                { 'Content-Type': externalContentType(size, 'application/octet-stream') },
              ],
            },
          ],
        },
      };
      const t0 = performance.now();
      const sent = await users.alice.json('POST', '/messages/send', { message });
      if (sent.status !== 202) throw new Error(`send: ${sent.status} ${JSON.stringify(sent.body)}`);
      let after = before;
      for (const deadline = Date.now() + 10 * 60_000; after.count === before.count;) {
        if (Date.now() > deadline) throw new Error('the fetch did not finish within 10 minutes');
        await new Promise((r) => setTimeout(r, 25));
        after = await fetchMetrics(receiver);
      }
      const endToEnd = seconds(t0);
      const fetchSeconds = after.seconds - before.seconds;
      if (after.bytes - before.bytes !== size)
        throw new Error(`fetched ${after.bytes - before.bytes} bytes, not ${size}`);
      return {
        rate: size / fetchSeconds,
        note: `fetch job ${fetchSeconds.toFixed(2)} s (exchange at the AS, POST, stream, fsync, publish); send to held ${endToEnd.toFixed(2)} s`,
      };
    }),
  );

  // Downloaded from the receiving mailbox: the client's hash also proves the fetch published the right bytes.
  results.set(
    'download',
    await measured(pids, async () => {
      const t0 = performance.now();
      const res = await users.bob.call('GET', `/resources/${digest}`);
      const got = await drain(res.body);
      const elapsed = seconds(t0);
      if (res.statusCode !== 200 || got.digest !== digest || got.bytes !== size) {
        throw new Error(`download: ${res.statusCode}, ${got.bytes} bytes hashing to ${got.digest}`);
      }
      return { rate: size / elapsed };
    }),
  );

  results.set(
    'range download',
    await measured(pids, async () => {
      const t0 = performance.now();
      const res = await users.alice.call('GET', `/resources/${digest}`, {
        headers: { range: `bytes=${rangeStart}-${rangeEnd}` },
      });
      const got = await drain(res.body);
      const elapsed = seconds(t0);
      const length = rangeEnd - rangeStart + 1;
      if (res.statusCode !== 206 || got.digest !== rangeDigest || got.bytes !== length) {
        throw new Error(`range download: ${res.statusCode}, ${got.bytes} bytes hashing to ${got.digest}`);
      }
      return { rate: length / elapsed };
    }),
  );
  return results;
}

export async function run(): Promise<void> {
  if (BUNDLE) await buildBundle();
  const dir = await mkdtemp(join(tmpdir(), 'federizer-bench-transfer-'));
  const dns = await DnsServer.start({ zones: ['example.com', 'example.net', 'localhost'] });
  const domains: BenchDomain[] = [];
  const dispatcher = new Agent({ connections: 4 });
  // Interrupted (Ctrl-C, a timeout): the services must not outlive the bench, nor its GiBs stay on disk.
  const interrupted = (signal: NodeJS.Signals) => {
    for (const d of domains) for (const s of [d.mailbox, d.as]) s.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    process.kill(process.pid, signal);
  };
  process.once('SIGINT', interrupted).once('SIGTERM', interrupted);
  try {
    for (const name of ['example.com', 'example.net']) domains.push(await startDomain(name, dns, dir));
    const [origin, receiver] = domains as [BenchDomain, BenchDomain];
    for (const d of domains) await Promise.all([untilHealthy(d.as), untilHealthy(d.mailbox)]);
    const users = {
      alice: await ApiUser.signIn(origin, 'alice@example.com', dispatcher),
      bob: await ApiUser.signIn(receiver, 'bob@example.net', dispatcher),
    };
    const pids = new Map<string, number>([
      ['mailbox example.com', origin.mailbox.child.pid!],
      ['mailbox example.net', receiver.mailbox.child.pid!],
      ['AS example.com', origin.as.child.pid!],
      ['AS example.net', receiver.as.child.pid!],
      [CLIENT, process.pid],
    ]);

    console.log(
      `${mibText(SIZE)} per transfer, ${ROUNDS} rounds, a new resource each; AS and mailbox of example.com and ` +
        `example.net each its own process (SQLite), run ${BUNDLE ? 'from the bundle (dist/federizer.mjs)' : 'from the sources through tsx'}; ` +
        `${loadAverageText()} before`,
    );
    const idle = await Promise.all([...pids].map(async ([name, pid]) => `${name} ${mibText(await currentRss(pid))}`));
    console.log(`RSS when idle, before the first round: ${idle.join(', ')}`);
    // A small untimed round first: the first requests load code, compile undici's parser and fill caches,
    // memory every later transfer shares; the rounds measure what streaming adds to it.
    await round(1_000, 4 * MIB, users, receiver, pids);
    const warm = await Promise.all([...pids].map(async ([name, pid]) => `${name} ${mibText(await currentRss(pid))}`));
    console.log(`RSS after a warm-up round of 4 MiB: ${warm.join(', ')}`);
    const rounds: Map<Phase, PhaseResult>[] = [];
    for (let r = 0; r < ROUNDS; r++) rounds.push(await round(r + 1, SIZE, users, receiver, pids));

    const services = [...pids.keys()].filter((name) => name !== CLIENT);
    for (const phase of PHASES) {
      const results = rounds.map((r) => r.get(phase)!);
      const rates = results.map((r) => r.rate / 1e6);
      const median = medianOf(rates);
      console.log(
        `${phase.padEnd(14)}  median ${median.toFixed(0)} MB/s (rounds ${rates.map((x) => x.toFixed(0)).join(', ')})  ` +
          `(target ≥ ${TARGET_MBPS} MB/s: ${versusTarget(median, TARGET_MBPS)})`,
      );
      const peakOf = (name: string) => {
        const values = results.map((r) => r.rss.get(name)).filter((v): v is number => v !== undefined);
        return values.length === 0 ? undefined : Math.max(...values);
      };
      // What the phase added: a process keeps memory it grew in an earlier phase, and that shows in its peak.
      const growthOf = (name: string) => {
        const values = results
          .map((r) => (r.rss.get(name) ?? Number.NaN) - (r.rssBefore.get(name) ?? Number.NaN))
          .filter((v) => !Number.isNaN(v));
        return values.length === 0 ? 'n/a' : `+${(Math.max(...values) / MIB).toFixed(1)}`;
      };
      const worst = Math.max(...services.map((name) => peakOf(name) ?? 0));
      console.log(
        `${''.padEnd(14)}  peak RSS (most added in a round): ${[...pids.keys()].map((name) => `${name} ${mibText(peakOf(name))} (${growthOf(name)})`).join(', ')}; ` +
          `largest service ${mibText(worst)} (target < 150 MiB: ${versusTarget(worst, TARGET_RSS, true)})`,
      );
      const gibs = (phase === 'range download' ? SIZE / 2 : SIZE) / 1024 ** 3;
      const cpuPerGiB = (name: string) => {
        const values = results.map((r) => r.cpu.get(name)).filter((v) => v !== undefined);
        if (values.length === 0) return 'n/a';
        const user = medianOf(values.map((v) => v.user)) / gibs;
        const system = medianOf(values.map((v) => v.system)) / gibs;
        return `${user.toFixed(2)} + ${system.toFixed(2)} s`;
      };
      console.log(
        `${''.padEnd(14)}  CPU per GiB moved, user + system (median): ${[...pids.keys()].map((name) => `${name} ${cpuPerGiB(name)}`).join(', ')}`,
      );
      for (const r of results) if (r.note) console.log(`${''.padEnd(14)}  ${r.note}`);
    }
    console.log(`${loadAverageText()} after`);
  } finally {
    process.off('SIGINT', interrupted).off('SIGTERM', interrupted);
    await Promise.all(domains.flatMap((d) => [stop(d.mailbox), stop(d.as)]));
    await dispatcher.close();
    await dns.close();
    await rm(dir, { recursive: true, force: true });
  }
}

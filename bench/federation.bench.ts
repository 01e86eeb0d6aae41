/**
 * Mail end to end through the local federation of `npm start` (issue 5): three domains, each its AS, mailbox
 * and webmail in a process of its own, found through the embedded DNS server, on SQLite. A delivery is
 * timed from the send call (`POST /api/v1/messages/send`, after the upload of its resources) to the moment
 * the recipient's client, following its account with the long poll of `GET /api/v1/changes` and reading
 * messages in batches as a webmail does, sees the message with its inline text fetched by its mailbox, and
 * has downloaded that text and checked it against its Content-ID. In between: the send exchange at the
 * sender's AS, the transfer, the receiver's checks (DNS, JWKS, DPoP), the fetch exchange at the receiver's
 * AS, the fetch from the sender's mailbox, and the sync.
 *
 * Phases:
 * - small: 1,000 messages of 3 KB of text from 16 concurrent senders (16 users spread over the three
 *   domains), each to one of two readers of another domain, so every domain sends and receives. Goal:
 *   ≥ 200 deliveries per second.
 * - large: 200 messages of 3 KB of text and a 1 MB attachment, 16 senders; the delivery also waits for the
 *   attachment.
 * - big: one 1 GiB attachment, its bytes generated as they are sent and never held whole: upload, send to
 *   held at the receiver, download, with the peak RSS (VmHWM) of every domain's process in each step.
 *
 * Figures: deliveries per second, p50/p99 latency, the CPU seconds each process used, peak RSS, and the
 * machine's load average (the machine is shared: read the figures with it). No assertions.
 *
 * The small phase runs a warm-up round and then three rounds (BENCH_FED_ROUNDS) in the same federation,
 * printing each, then the median of each figure of the three with the lowest and highest: the first round
 * after a start costs about a fifth more CPU (V8 has not optimized the hot code yet, caches are cold), and
 * on a shared machine one round can be off by a tenth.
 *
 * Knobs: BENCH_QUICK=1 runs 200 small in one round (no warm-up), 40 large and a 128 MiB big one;
 * BENCH_FED_SMALL, BENCH_FED_LARGE, BENCH_FED_SENDERS, BENCH_FED_BIG_MIB set them one by one;
 * BENCH_FED_PHASES=small,large,big chooses the phases; BENCH_LOG=1 prints the services' logs;
 * BENCH_FED_PROCESSES=0 runs the domains in the bench's own process (for `node --cpu-prof --import tsx
 * bench/run.ts federation`); BENCH_FED_OUTBOX_CONCURRENCY and
 * BENCH_FED_FETCH_CONCURRENCY set the mailboxes' worker concurrency (defaults: the mailbox's, 16 and 8);
 * BENCH_PROFILE_DIR=dir writes a CPU profile of each domain's process there.
 * The local federation lifts the per-domain transfer rate limit (domain-services.ts), as `npm start` does.
 */
import { execFileSync } from 'node:child_process';
import { createCipheriv, createHash, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';

import { Agent, request, type Dispatcher } from 'undici';
import { createHttpClient } from '@federizer/common';
import {
  createDpopProof,
  externalContentType,
  type DpopKey,
  type Message,
  type Part,
  dpopKeyOf,
} from '@federizer/protocol';
import { signIn } from '../services/auth/tests/exchange-client.js';
import type { TestDomain } from '../services/auth/tests/harness.js';
import {
  WEBMAIL_CLIENT_ID,
  startLocalFederation,
  type FederationDomain,
  type LocalFederation,
} from '../services/cli/src/federation/index.js';
import { loadAverageText, medianOf, mibText, peakRss, resetPeakRss, versusTarget } from './lib.js';

const QUICK = process.env.BENCH_QUICK === '1';
const int = (name: string, fallback: number) => {
  const value = process.env[name];
  return value === undefined || value === '' ? fallback : Number(value);
};
const SMALL = int('BENCH_FED_SMALL', QUICK ? 200 : 1000);
const LARGE = int('BENCH_FED_LARGE', QUICK ? 40 : 200);
const SENDERS = int('BENCH_FED_SENDERS', 16);
const SMALL_ROUNDS = int('BENCH_FED_ROUNDS', QUICK ? 1 : 3);
const BIG = int('BENCH_FED_BIG_MIB', QUICK ? 128 : 1024) * 1024 * 1024;
const PHASES = new Set((process.env.BENCH_FED_PHASES ?? 'small,large,big').split(','));
/** 0: every domain in the bench's own process (to profile them all with `node --cpu-prof`). */
const PROCESSES = process.env.BENCH_FED_PROCESSES !== '0';
const WORKERS = {
  ...(process.env.BENCH_FED_OUTBOX_CONCURRENCY ? { outboxConcurrency: int('BENCH_FED_OUTBOX_CONCURRENCY', 16) } : {}),
  ...(process.env.BENCH_FED_FETCH_CONCURRENCY ? { fetchConcurrency: int('BENCH_FED_FETCH_CONCURRENCY', 8) } : {}),
};
/** A CPU profile of each domain's process is written there when the federation stops. */
const PROFILE_DIR = process.env.BENCH_PROFILE_DIR;
const TARGET_PER_SECOND = 200;
const TEXT_SIZE = 3 * 1024;
const ATTACHMENT_SIZE = 1024 * 1024;
const READERS_PER_DOMAIN = 2;
const DOMAINS = ['example.com', 'example.net', 'example.org'];
const PHASE_TIMEOUT_MS = 15 * 60_000;
const PASSWORD = 'bench password 0123456789';

// ---------------------------------------------------------------------------------------------------
// A signed-in user of the client API, as the webmail is: authorization code + PKCE, DPoP on each request

class ApiUser {
  private constructor(
    readonly address: string,
    private readonly domain: FederationDomain,
    private readonly token: string,
    private readonly key: DpopKey,
    private readonly dispatcher: Dispatcher,
  ) {}

  static async signIn(domain: FederationDomain, address: string, dispatcher: Dispatcher): Promise<ApiUser> {
    const http = createHttpClient({ dev: true });
    try {
      const session = await signIn(
        {
          domain: domain.domain,
          issuer: domain.issuer,
          config: { webmail: { clientId: WEBMAIL_CLIENT_ID }, signingAlg: 'ES256' },
          webmailRedirectUri: `${domain.webmailUrl}/callback`,
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

  /** Sent to the mailbox's port on 127.0.0.1 (no name lookup); the DPoP `htu` names its public URL. */
  async call(
    method: Dispatcher.HttpMethod,
    path: string,
    init: { headers?: Record<string, string>; body?: Dispatcher.DispatchOptions['body']; signal?: AbortSignal } = {},
  ): Promise<Dispatcher.ResponseData> {
    const htu = `${this.domain.mailboxUrl}/api/v1${path.replace(/\?.*$/, '')}`;
    return request(`http://127.0.0.1:${this.domain.ports.mailbox}/api/v1${path}`, {
      method,
      dispatcher: this.dispatcher,
      headers: {
        authorization: `DPoP ${this.token}`,
        dpop: await createDpopProof(this.key, { htm: method, htu, accessToken: this.token }),
        ...init.headers,
      },
      body: init.body,
      signal: init.signal,
    });
  }

  async json<T>(method: Dispatcher.HttpMethod, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const res = await this.call(method, path, {
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    const answer = (await res.body.json()) as T;
    if (res.statusCode >= 300) throw new Error(`${method} ${path}: ${res.statusCode} ${JSON.stringify(answer)}`);
    return answer;
  }

  async upload(bytes: Uint8Array | Readable, mediaType: string, size: number): Promise<string> {
    const res = await this.call('POST', '/resources', {
      headers: { 'content-type': mediaType, 'content-length': String(size) },
      body: bytes,
    });
    const answer = (await res.body.json()) as { contentId?: string };
    if (res.statusCode !== 201) throw new Error(`upload: ${res.statusCode} ${JSON.stringify(answer)}`);
    return answer.contentId!;
  }
}

// ---------------------------------------------------------------------------------------------------
// Processes: CPU and peak RSS of each domain's process

const TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / TICKS;
  } catch {
    return Number.NaN;
  }
}

const ownCpu = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
};

interface Usage {
  readonly cpu: Map<string, number>;
  readonly rss: Map<string, number | undefined>;
  /** What each mailbox's /metrics counted meanwhile. */
  readonly mail: Map<string, MailFigures>;
}

/** A mailbox's counters of transfer attempts and fetches (PROTOCOL §5, §6), from its /metrics. */
interface MailFigures {
  readonly transferred: number;
  readonly retried: number;
  readonly transferSeconds: number;
  readonly transfers: number;
  readonly fetches: number;
  readonly fetchSeconds: number;
}

async function mailFigures(domain: FederationDomain): Promise<MailFigures> {
  const res = await request(`http://127.0.0.1:${domain.ports.mailbox}/metrics`);
  const text = await res.body.text();
  const value = (name: string, label = '') =>
    Number(new RegExp(`^${name}\\{${label}[^}]*\\} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
  return {
    transferred: value('federizer_mailbox_deliveries_total', 'outcome="transferred"'),
    retried: value('federizer_mailbox_deliveries_total', 'outcome="retried"'),
    transferSeconds: value('federizer_mailbox_transfer_duration_seconds_sum'),
    transfers: value('federizer_mailbox_transfer_duration_seconds_count'),
    fetches: value('federizer_mailbox_fetch_duration_seconds_count'),
    fetchSeconds: value('federizer_mailbox_fetch_duration_seconds_sum'),
  };
}

function minus(a: MailFigures, b: MailFigures): MailFigures {
  return {
    transferred: a.transferred - b.transferred,
    retried: a.retried - b.retried,
    transferSeconds: a.transferSeconds - b.transferSeconds,
    transfers: a.transfers - b.transfers,
    fetches: a.fetches - b.fetches,
    fetchSeconds: a.fetchSeconds - b.fetchSeconds,
  };
}

/** Runs `work` with every domain's peak RSS reset before and read after, and the CPU each used meanwhile. */
async function measured<T>(fed: LocalFederation, work: () => Promise<T>): Promise<{ result: T; usage: Usage }> {
  const pids = new Map(
    Object.values(fed.domains).flatMap((d) => (d.pid === undefined ? [] : [[d.domain, d.pid] as const])),
  );
  for (const pid of pids.values()) await resetPeakRss(pid);
  await resetPeakRss(process.pid);
  const domains = Object.values(fed.domains);
  const mail0 = new Map(await Promise.all(domains.map(async (d) => [d.domain, await mailFigures(d)] as const)));
  const cpu0 = new Map([...pids].map(([d, pid]) => [d, cpuSeconds(pid)]));
  const own0 = ownCpu();
  const result = await work();
  const cpu = new Map([...pids].map(([d, pid]) => [d, cpuSeconds(pid) - cpu0.get(d)!]));
  const mail = new Map(
    await Promise.all(domains.map(async (d) => [d.domain, minus(await mailFigures(d), mail0.get(d.domain)!)] as const)),
  );
  cpu.set('bench client', ownCpu() - own0);
  const rss = new Map<string, number | undefined>();
  for (const [d, pid] of pids) rss.set(d, await peakRss(pid));
  rss.set('bench client', await peakRss(process.pid));
  return { result, usage: { cpu, rss, mail } };
}

function usageLines(usage: Usage, seconds: number): string[] {
  const ms = (total: number, n: number) => (n > 0 ? `${((1000 * total) / n).toFixed(0)} ms` : '-');
  return [...new Set([...usage.mail.keys(), ...usage.cpu.keys()])].map((name) => {
    const cpu = usage.cpu.get(name);
    let line = `    ${name.padEnd(12)}`;
    if (cpu !== undefined)
      line += ` CPU ${cpu.toFixed(1)} s (${((100 * cpu) / seconds).toFixed(0)}% of one core)  peak RSS ${mibText(usage.rss.get(name))}`;
    const m = usage.mail.get(name);
    if (m && (m.transfers > 0 || m.fetches > 0))
      line +=
        `  transfers ${m.transferred} (+${m.retried} retried), mean attempt ${ms(m.transferSeconds, m.transfers)};` +
        ` fetches ${m.fetches}, mean ${ms(m.fetchSeconds, m.fetches)}`;
    return line;
  });
}

// ---------------------------------------------------------------------------------------------------
// What went wrong, counted: the services' retries and warnings, the client's errors

/** Collapses what differs between occurrences (ids, digests, numbers, ports) so that alike lines count together. */
function shape(text: string): string {
  return text
    .replace(/<[^>]*>/g, '<…>')
    .replace(/[0-9a-f]{8}-[0-9a-f-]{27}/gi, '…')
    .replace(/\d+/g, 'N')
    .slice(0, 240);
}

class Tally {
  readonly #counts = new Map<string, number>();

  add(what: string): void {
    this.#counts.set(what, (this.#counts.get(what) ?? 0) + 1);
  }

  /** The services' log lines worth counting: retries of transfers and fetches, and every warning or error. */
  addLog(domain: string, line: string): void {
    if (!line.startsWith('{')) return this.add(`${domain}: ${shape(line)}`);
    try {
      const entry = JSON.parse(line) as { level?: number; msg?: string; reason?: string; err?: { message?: string } };
      if ((entry.level ?? 0) < 40 && !/will be retried/.test(entry.msg ?? '')) return;
      this.add(`${domain}: ${entry.msg}: ${shape(entry.reason ?? entry.err?.message ?? '')}`);
    } catch {
      this.add(`${domain}: ${shape(line)}`);
    }
  }

  /** The most frequent entries, as lines, and a fresh start. */
  take(top = 6): string[] {
    const lines = [...this.#counts]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([what, n]) => `    ${String(n).padStart(5)}×  ${what}`);
    this.#counts.clear();
    return lines;
  }
}

const serviceEvents = new Tally();

// ---------------------------------------------------------------------------------------------------
// Readers: a webmail's sync loop per recipient

interface Expected {
  readonly sentAt: number;
  readonly textCid: string;
  /** Wait for every resource, not only the text. */
  readonly whole: boolean;
  /** Whether the reader downloads the text (not a 1 GiB "text": that is downloaded on its own). */
  readonly download: boolean;
  text?: number;
  done?: number;
  failed?: boolean;
}

/** Messages not delivered yet, across readers; `finished` ends the readers' long polls when none is left. */
class Outstanding {
  readonly finished = new AbortController();
  constructor(public n: number) {
    if (n <= 0) this.finished.abort();
  }

  done(): void {
    if (--this.n <= 0) this.finished.abort();
  }
}

interface StoredMessage {
  readonly id: string;
  readonly messageId: string;
  readonly resources: { contentId: string; status: string }[];
}

/**
 * Follows one account from `state`: long polls `/changes`, reads the created and updated messages in
 * batches, and for each expected message whose text is held downloads the text and checks its digest.
 * Ends when no message is outstanding (for any reader) or at the deadline. A failed request is retried
 * from the same state, as a webmail would after showing the error; `errors` counts it.
 */
async function follow(
  reader: ApiUser,
  state: string,
  expected: Map<string, Expected>,
  outstanding: Outstanding,
  deadline: number,
  errors: string[],
): Promise<void> {
  const signal = outstanding.finished.signal;
  while (!signal.aborted && Date.now() < deadline) {
    try {
      const changes = await reader.json<{ state: string; created: string[]; updated: string[] }>(
        'GET',
        `/changes?since=${encodeURIComponent(state)}&wait=10&maxChanges=500`,
        undefined,
        signal,
      );
      const ids = [...new Set([...changes.created, ...changes.updated])];
      for (let i = 0; i < ids.length; i += 200) {
        const { messages } = await reader.json<{ messages: StoredMessage[] }>('POST', '/messages/get', {
          ids: ids.slice(i, i + 200),
        });
        await Promise.all(messages.map((m) => see(reader, m, expected.get(m.messageId), outstanding, errors)));
      }
      // Only once all of it is read: a failure above reads the same changes again.
      state = changes.state;
    } catch (e) {
      if (signal.aborted) return;
      errors.push(`reader ${reader.address}: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** A message as the reader's sync reads it: delivered once its text is held, downloaded and verified. */
async function see(
  reader: ApiUser,
  m: StoredMessage,
  e: Expected | undefined,
  outstanding: Outstanding,
  errors: string[],
): Promise<void> {
  if (e === undefined || e.done !== undefined || e.failed) return;
  const failed = m.resources.find((r) => r.status === 'failed');
  if (failed) {
    e.failed = true;
    errors.push(`${m.messageId}: ${failed.contentId} failed to be fetched`);
    outstanding.done();
    return;
  }
  const text = m.resources.find((r) => r.contentId === e.textCid);
  if (text?.status !== 'held') return;
  if (e.text === undefined && !e.download) e.text = performance.now();
  if (e.text === undefined) {
    const res = await reader.call('GET', `/resources/${e.textCid.slice(1, -1)}`);
    const bytes = Buffer.from(await res.body.arrayBuffer());
    if (res.statusCode !== 200 || `<${createHash('sha256').update(bytes).digest('base64url')}>` !== e.textCid)
      throw new Error(`${m.messageId}: the text downloaded (${res.statusCode}) is not ${e.textCid}`);
    e.text = performance.now();
  }
  if (e.done === undefined && (!e.whole || m.resources.every((r) => r.status === 'held'))) {
    e.done = performance.now();
    outstanding.done();
  }
}

// ---------------------------------------------------------------------------------------------------
// The phases of many messages

interface Population {
  readonly senders: ApiUser[];
  readonly readers: ApiUser[];
}

async function signInAll(fed: LocalFederation, dispatcher: Dispatcher): Promise<Population> {
  const senders = [];
  for (let i = 0; i < SENDERS; i++) {
    const domain = fed.domains[DOMAINS[i % DOMAINS.length]!]!;
    senders.push(await ApiUser.signIn(domain, `sender${i}@${domain.domain}`, dispatcher));
  }
  const readers = [];
  for (const name of DOMAINS)
    for (let j = 0; j < READERS_PER_DOMAIN; j++)
      readers.push(await ApiUser.signIn(fed.domains[name]!, `reader${j}@${name}`, dispatcher));
  return { senders, readers };
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** Unique text of `size` bytes: every message's text is a resource of its own, fetched on its own. */
function textOf(n: number, size: number): Buffer {
  const head = `Message ${n}, ${randomUUID()}.\n\n`;
  const filler = 'Federizer carries mail as signed Placeholder Messages and External Resources. ';
  return Buffer.from((head + filler.repeat(Math.ceil(size / filler.length))).slice(0, size));
}

async function manyMessages(
  fed: LocalFederation,
  dispatcher: Dispatcher,
  name: string,
  count: number,
  attachment: number,
): Promise<RoundFigures | undefined> {
  const people = await signInAll(fed, dispatcher);
  const expected = new Map<string, Map<string, Expected>>(people.readers.map((r) => [r.address, new Map()]));
  const states = await Promise.all(people.readers.map((r) => r.json<{ state: string }>('GET', '/state')));
  const outstanding = new Outstanding(count);
  const sendLatency: number[] = [];
  const errors: string[] = [];
  const deadline = Date.now() + PHASE_TIMEOUT_MS;
  let next = 0;

  const sender = async (who: ApiUser, s: number) => {
    const domain = who.address.slice(who.address.indexOf('@') + 1);
    const others = people.readers.filter((r) => !r.address.endsWith(`@${domain}`));
    for (let n = next++; n < count; n = next++) {
      try {
        const to = others[(n + s) % others.length]!;
        const text = textOf(n, TEXT_SIZE);
        const textCid = await who.upload(text, 'text/plain; charset=utf-8', text.length);
        const parts: Part[] = [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': textCid },
              { 'Content-Type': externalContentType(text.length, 'text/plain; charset=utf-8') },
            ],
          },
        ];
        if (attachment > 0) {
          const bytes = randomBytes(attachment);
          const cid = await who.upload(bytes, 'application/octet-stream', bytes.length);
          parts.push({
            headers: [
              { 'Content-Disposition': `attachment; filename="file-${n}.bin"` },
              { 'Content-ID': cid },
              { 'Content-Type': externalContentType(bytes.length, 'application/octet-stream') },
            ],
          });
        }
        const messageId = `<${randomUUID()}@${domain}>`;
        const message: Message = {
          envelope: [
            {
              headers: [
                { From: who.address },
                { To: to.address },
                { Subject: `${name} ${n}` },
                { 'Message-ID': messageId },
                ...(parts.length > 1 ? [{ 'Content-Type': 'multipart/mixed' }] : []),
              ],
            },
          ],
          body: { parts },
        };
        const sentAt = performance.now();
        expected.get(to.address)!.set(messageId, { sentAt, textCid, whole: attachment > 0, download: true });
        await who.json('POST', '/messages/send', { message });
        sendLatency.push(performance.now() - sentAt);
      } catch (e) {
        errors.push((e as Error).message);
        outstanding.done();
      }
    }
  };

  let t0 = performance.now();
  const { usage } = await measured(fed, async () => {
    t0 = performance.now();
    const readers = people.readers.map((r, i) =>
      follow(r, states[i]!.state, expected.get(r.address)!, outstanding, deadline, errors),
    );
    await Promise.all(people.senders.map((who, s) => sender(who, s)));
    await Promise.all(readers);
  });
  const all = [...expected.values()].flatMap((m) => [...m.values()]);
  const done = all.filter((e) => e.done !== undefined);
  // From the start of the first upload to the last delivery: every upload and send is inside.
  const lastDone = Math.max(...done.map((e) => e.done!));
  const seconds = (lastDone - t0) / 1000;
  const latencies = done.map((e) => e.done! - e.sentAt).sort((a, b) => a - b);
  const textLatencies = done.map((e) => e.text! - e.sentAt).sort((a, b) => a - b);
  const sends = [...sendLatency].sort((a, b) => a - b);
  const rate = done.length / seconds;
  const what = attachment > 0 ? `3 KB text + ${mibText(attachment)} attachment` : '3 KB text';
  console.log(`${name}: ${count} messages of ${what}, ${SENDERS} senders, ${people.readers.length} readers`);
  console.log(
    `  delivered ${done.length}/${count} in ${seconds.toFixed(1)} s: ${rate.toFixed(1)} deliveries/s` +
      (attachment === 0 ? `  (target ≥ ${TARGET_PER_SECOND}/s: ${versusTarget(rate, TARGET_PER_SECOND)})` : '') +
      (attachment > 0 ? `, ${((done.length * attachment) / seconds / 1e6).toFixed(1)} MB/s of attachments` : ''),
  );
  if (latencies.length > 0) {
    const ms = (v: number) => `${v.toFixed(0)} ms`;
    console.log(
      `  send call to visible${attachment > 0 ? ' with the attachment held' : ''}: p50 ${ms(percentile(latencies, 50))}, p99 ${ms(percentile(latencies, 99))}, max ${ms(latencies.at(-1)!)}`,
    );
    if (attachment > 0)
      console.log(
        `  send call to the inline text read: p50 ${ms(percentile(textLatencies, 50))}, p99 ${ms(percentile(textLatencies, 99))}`,
      );
    console.log(`  the send call itself: p50 ${ms(percentile(sends, 50))}, p99 ${ms(percentile(sends, 99))}`);
  }
  for (const line of usageLines(usage, (performance.now() - t0) / 1000)) console.log(line);
  let cpuMs: number | undefined;
  if (done.length > 0) {
    // CPU time does not depend on how many others share the machine (much): it tells what the work costs.
    const client = usage.cpu.get('bench client')!;
    if (PROCESSES) {
      const perDelivery = DOMAINS.reduce((sum, d) => sum + usage.cpu.get(d)!, 0) / done.length;
      cpuMs = perDelivery * 1000;
      console.log(
        `  CPU per delivery: ${(perDelivery * 1000).toFixed(1)} ms in the three domains, ` +
          `${((client / done.length) * 1000).toFixed(1)} ms in the bench client; ` +
          `two cores doing nothing else would then deliver at most ${(2 / perDelivery).toFixed(0)}/s`,
      );
    } else {
      console.log(
        `  CPU per delivery: ${((client / done.length) * 1000).toFixed(1)} ms (domains and client in one process)`,
      );
    }
  }
  if (errors.length > 0) {
    console.log(`  ${errors.length} errors of the bench client (sends and reads), by kind:`);
    const kinds = new Tally();
    for (const e of errors) kinds.add(shape(e));
    for (const line of kinds.take(4)) console.log(line);
  }
  const events = serviceEvents.take();
  if (events.length > 0) {
    console.log('  retries and warnings of the services, by kind:');
    for (const line of events) console.log(line);
  }
  console.log(`  ${loadAverageText()}`);
  if (latencies.length === 0) return undefined;
  return { rate, p50: percentile(latencies, 50), p99: percentile(latencies, 99), cpuMs };
}

interface RoundFigures {
  readonly rate: number;
  readonly p50: number;
  readonly p99: number;
  /** CPU of the three domains per delivery, when they run in processes of their own. */
  readonly cpuMs: number | undefined;
}

/**
 * The small phase once to warm up (V8 optimizes the hot code, caches of keys, JWKS and discovery fill),
 * then `SMALL_ROUNDS` times over, then the median of each figure of those (the machine is shared).
 */
async function smallRounds(fed: LocalFederation, dispatcher: Dispatcher): Promise<void> {
  if (SMALL_ROUNDS < 2) {
    await manyMessages(fed, dispatcher, 'small', SMALL, 0);
    return;
  }
  await manyMessages(fed, dispatcher, 'small, warm-up round (not in the median)', SMALL, 0);
  const rounds: RoundFigures[] = [];
  for (let r = 1; r <= SMALL_ROUNDS; r++) {
    const figures = await manyMessages(fed, dispatcher, `small, round ${r} of ${SMALL_ROUNDS}`, SMALL, 0);
    if (figures) rounds.push(figures);
  }
  if (rounds.length === 0) return;
  const cpu = rounds.flatMap((f) => (f.cpuMs === undefined ? [] : [f.cpuMs]));
  const spread = (values: number[], digits: number) =>
    `${medianOf(values).toFixed(digits)} (${Math.min(...values).toFixed(digits)}-${Math.max(...values).toFixed(digits)})`;
  const rates = rounds.map((f) => f.rate);
  const target = `target ≥ ${TARGET_PER_SECOND}/s: ${versusTarget(medianOf(rates), TARGET_PER_SECOND)}`;
  console.log(`small, median of ${rounds.length} rounds (lowest-highest):`);
  console.log(`  ${spread(rates, 1)} deliveries/s  (${target})`);
  const p50s = rounds.map((f) => f.p50);
  const p99s = rounds.map((f) => f.p99);
  console.log(`  send call to visible: p50 ${spread(p50s, 0)} ms, p99 ${spread(p99s, 0)} ms`);
  if (cpu.length > 0) console.log(`  CPU per delivery in the three domains: ${spread(cpu, 1)} ms`);
}

// ---------------------------------------------------------------------------------------------------
// One big attachment

const CHUNK = 1024 * 1024;

/** `size` deterministic bytes (an AES-CTR keystream), made a chunk at a time as the socket takes them. */
function* generated(seed: string, size: number): Generator<Buffer> {
  const cipher = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  for (let at = 0; at < size; at += CHUNK) yield cipher.update(zeros.subarray(0, Math.min(CHUNK, size - at)));
}

function digestOf(seed: string, size: number): string {
  const hash = createHash('sha256');
  for (const chunk of generated(seed, size)) hash.update(chunk);
  return `<${hash.digest('base64url')}>`;
}

async function bigAttachment(fed: LocalFederation, dispatcher: Dispatcher): Promise<void> {
  const alice = await ApiUser.signIn(fed.domains['example.com']!, 'sender0@example.com', dispatcher);
  const bob = await ApiUser.signIn(fed.domains['example.net']!, 'reader0@example.net', dispatcher);
  const seed = `federation bench ${randomUUID()}`;
  const cid = digestOf(seed, BIG); // before any clock: it checks what the services answer
  const rate = (seconds: number) => `${(BIG / seconds / 1e6).toFixed(0)} MB/s`;
  console.log(`big: one ${mibText(BIG)} attachment from example.com to example.net`);

  const step = async (label: string, work: () => Promise<string>) => {
    const t0 = performance.now();
    const { result, usage } = await measured(fed, work);
    const seconds = (performance.now() - t0) / 1000;
    console.log(`  ${label}: ${seconds.toFixed(1)} s, ${rate(seconds)}${result ? `  ${result}` : ''}`);
    for (const line of usageLines(usage, seconds)) console.log(line);
  };

  await step('upload', async () => {
    const got = await alice.upload(
      Readable.from(generated(seed, BIG), { objectMode: false }),
      'application/octet-stream',
      BIG,
    );
    if (got !== cid) throw new Error(`the upload answered ${got}, not ${cid}`);
    return '';
  });
  await step('send to held at example.net (transfer, fetch exchange, fetch, fsync, publish)', async () => {
    const messageId = `<${randomUUID()}@example.com>`;
    const { state } = await bob.json<{ state: string }>('GET', '/state');
    const expected = new Map<string, Expected>([
      [messageId, { sentAt: performance.now(), textCid: cid, whole: true, download: false }],
    ]);
    await alice.json('POST', '/messages/send', {
      message: {
        envelope: [
          {
            headers: [{ From: alice.address }, { To: bob.address }, { Subject: 'big' }, { 'Message-ID': messageId }],
          },
        ],
        body: {
          parts: [
            {
              headers: [
                { 'Content-Disposition': 'attachment; filename="big.bin"' },
                { 'Content-ID': cid },
                { 'Content-Type': externalContentType(BIG, 'application/octet-stream') },
              ],
            },
          ],
        },
      },
    });
    // The reader's sync sees the message with the attachment held; the download is the next step.
    const errors: string[] = [];
    await follow(bob, state, expected, new Outstanding(1), Date.now() + PHASE_TIMEOUT_MS, errors);
    if (errors.length > 0) console.log(`  ${errors.length} errors of the reader, the first: ${errors[0]}`);
    if (expected.get(messageId)!.done === undefined) throw new Error('the attachment was not delivered');
    return '';
  });
  await step('download by the recipient', async () => {
    const res = await bob.call('GET', `/resources/${cid.slice(1, -1)}`);
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of res.body) {
      hash.update(chunk as Buffer);
      size += (chunk as Buffer).length;
    }
    if (res.statusCode !== 200 || size !== BIG || `<${hash.digest('base64url')}>` !== cid)
      throw new Error(`download: ${res.statusCode}, ${size} bytes`);
    return '';
  });
  for (const line of serviceEvents.take()) console.log(line);
  console.log(`  ${loadAverageText()}`);
}

// ---------------------------------------------------------------------------------------------------

export async function run(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'federizer-bench-federation-'));
  const dist = join(dir, 'webmail-dist');
  await mkdir(dist);
  await writeFile(join(dist, 'index.html'), '<!doctype html><title>webmail</title>');
  const fed = await startLocalFederation({
    dataDir: join(dir, 'data'),
    portBase: 0,
    processes: PROCESSES,
    ...(PROFILE_DIR ? { nodeOptions: ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`] } : {}),
    // Info, for the retries of transfers and fetches, which the figures would not explain otherwise.
    logLevel: 'info',
    webmailDist: dist,
    ...(Object.keys(WORKERS).length > 0 ? { mailbox: WORKERS } : {}),
    log: (domain, line) => {
      serviceEvents.addLog(domain, line);
      if (process.env.BENCH_LOG) console.error(`[${domain}] ${line}`);
    },
    onEvent: (e) => console.error(`federation: ${JSON.stringify(e)}`),
  });
  const dispatcher = new Agent({ connections: 64, pipelining: 1, keepAliveTimeout: 30_000 });
  try {
    const where = PROCESSES
      ? `one process each (pids ${Object.values(fed.domains)
          .map((d) => `${d.domain} ${d.pid}`)
          .join(', ')})`
      : 'all in this process';
    console.log(`3 domains, ${where}, SQLite; ${loadAverageText()}`);
    const http = createHttpClient({ dev: true });
    try {
      const create = async (address: string) => {
        const domain = fed.domains[address.slice(address.indexOf('@') + 1)]!;
        const res = await http.fetch(`${domain.issuer}/admin/v1/users`, {
          method: 'POST',
          headers: { authorization: `Bearer ${domain.adminToken}`, 'content-type': 'application/json' },
          body: JSON.stringify({ address, password: PASSWORD, sendQuotaPerDay: 1_000_000 }),
        });
        if (res.status !== 201) throw new Error(`creating ${address}: ${res.status} ${await res.text()}`);
      };
      for (let i = 0; i < SENDERS; i++) await create(`sender${i}@${DOMAINS[i % DOMAINS.length]}`);
      for (const name of DOMAINS) for (let j = 0; j < READERS_PER_DOMAIN; j++) await create(`reader${j}@${name}`);
    } finally {
      await http.close();
    }
    serviceEvents.take();
    if (PHASES.has('small')) await smallRounds(fed, dispatcher);
    if (PHASES.has('large')) await manyMessages(fed, dispatcher, 'large', LARGE, ATTACHMENT_SIZE);
    if (PHASES.has('big')) await bigAttachment(fed, dispatcher);
  } finally {
    await dispatcher.close();
    await fed.close();
    await rm(dir, { recursive: true, force: true });
  }
}

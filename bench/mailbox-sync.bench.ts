/**
 * Webmail synchronization against a mailbox of 100,000 messages (issue 4, PROTOCOL.md §9), in process: a real
 * AS and a real `MailboxService` (the mail-federation harness), real HTTP with DPoP-bound tokens.
 *
 * - A sync with no changes (`GET /api/v1/changes?since=<current state>`): target < 5 ms of server time. The
 *   server time is taken inside the server, from the request's start to the response's finish, through
 *   node:diagnostics_channel (`http.server.request.start`, `http.server.response.finish`): authentication
 *   (token signature, DPoP proof, replay record) included. The handler's own part is its `Server-Timing`,
 *   and the client's view (proof made beforehand) is printed beside them.
 * - A long poll (`wait=30`) woken by a change made through the API by another client: target ≤ 50 ms from
 *   the change being sent to the poll's answer arriving. Then one woken by a change written past the API (as
 *   a worker's delivery status is), which only the notifier's periodic check sees: printed, not a target here.
 * - On PostgreSQL, a second replica of the mailbox (its own pool and listening connection, same database and
 *   blob directory): a long poll held by the first replica woken by a change made through the second's API,
 *   which reaches it by LISTEN/NOTIFY. Same measure and target as the first wake.
 *
 * The messages (and 10,000 of another account, so the index has to tell accounts apart) are written through
 * MessageStore, 1,000 to a transaction. SQLite by default; MAILBOX_DATABASE=pg runs it on PostgreSQL at
 * 127.0.0.1:5432. BENCH_SYNC_MESSAGES changes the count.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { IncomingMessage } from 'node:http';
import { randomUUID } from 'node:crypto';

import { Agent, request, type Dispatcher } from 'undici';
import { createDpopProof, type DpopKey, dpopKeyOf } from '@federizer/protocol';
import { createKnex, silentLogger, type DatabaseConfig } from '@federizer/common';
import { testDatabases } from '../services/common/src/testing/databases.js';
import { signIn, testHttp } from '../services/auth/tests/exchange-client.js';
import { ADMIN_TOKEN } from '../services/auth/tests/harness.js';
import { startMailFederation, type MailFederation } from '../services/mailbox/tests/mail-federation.js';
import { MailboxService } from '../services/mailbox/src/index.js';
import { PgChangeChannel } from '../services/mailbox/src/api/notifier.js';
import { MessageStore, type NewMessage } from '../services/mailbox/src/storage/index.js';
import { loadAverageText, medianOf, versusTarget } from './lib.js';

const MESSAGES = Number(process.env.BENCH_SYNC_MESSAGES ?? 100_000);
const OTHER_MESSAGES = Math.round(MESSAGES / 10);
const BATCH = 1_000;
const ROUNDS = 5;
const SYNCS_PER_ROUND = 400;
const WAKES = 25;
const TARGET_SERVER_MS = 5;
const TARGET_WAKE_MS = 50;
const PASSWORD = 'bench password';

interface Session {
  readonly token: string;
  readonly key: DpopKey;
}

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

const ms = (value: number) => `${value.toFixed(2)} ms`;

function message(address: string, i: number): NewMessage {
  const messageId = `<${randomUUID()}@example.net>`;
  const subject = `Quarterly figures, part ${i}`;
  const date = Date.UTC(2024, 0, 1) + i * 60_000;
  return {
    address,
    mailbox: i % 10 === 0 ? 'archive' : 'inbox',
    messageId,
    threadId: `<thread-${Math.floor(i / 5)}@example.net>`,
    envelope: [
      {
        headers: [
          { Date: new Date(date).toUTCString() },
          { From: 'Carol <carol@example.net>' },
          { To: address },
          { Subject: subject },
          { 'Message-ID': messageId },
        ],
      },
    ],
    body: { parts: [] },
    subject,
    from: 'Carol <carol@example.net>',
    date,
    seen: i % 3 === 0,
  };
}

/** Through MessageStore, as the service writes, but many messages to a transaction (savepoints inside). */
async function seed(fed: MailFederation, address: string, count: number): Promise<string[]> {
  const { knex } = fed.domains['example.com']!.mailbox;
  const ids: string[] = [];
  for (let done = 0; done < count; done += BATCH) {
    await knex.transaction(async (trx) => {
      const store = new MessageStore(trx);
      for (let i = done; i < Math.min(count, done + BATCH); i++) ids.push(await store.create(message(address, i)));
    });
  }
  return ids;
}

/** Signs in at the domain's AS as the webmail does: one browser tab's session. */
async function sessionOf(fed: MailFederation, address: string): Promise<Session> {
  const http = testHttp();
  try {
    const session = await signIn(fed.auth.domains['example.com']!, http, address, PASSWORD);
    return { token: session.accessToken, key: await dpopKeyOf(session.dpopKey) };
  } finally {
    await http.close();
  }
}

/**
 * A request with its DPoP proof made in advance, so that the clock measures only the exchange. It goes to
 * `replica` (default: the harness's mailbox); the proof names the public URL, as behind a load balancer.
 */
async function prepared(
  fed: MailFederation,
  session: Session,
  method: 'GET' | 'PATCH',
  path: string,
  json?: unknown,
  replica?: MailboxService,
): Promise<{ url: string; options: NonNullable<Parameters<typeof request>[1]> }> {
  const { publicUrl, mailbox } = fed.domains['example.com']!;
  const htu = `${publicUrl}/api/v1${path}`;
  return {
    url: `${(replica ?? mailbox).url}/api/v1${path}`,
    options: {
      method,
      headers: {
        authorization: `DPoP ${session.token}`,
        dpop: await createDpopProof(session.key, { htm: method, htu, accessToken: session.token }),
        ...(json === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: json === undefined ? undefined : JSON.stringify(json),
    },
  };
}

/** Server time of each request, keyed by the request object, from inside the server. */
class ServerClock {
  readonly #started = new WeakMap<IncomingMessage, bigint>();
  readonly #durations = new Map<string, number>();
  readonly #onStart = (message: unknown) => {
    this.#started.set((message as { request: IncomingMessage }).request, process.hrtime.bigint());
  };
  readonly #onFinish = (message: unknown) => {
    const { request } = message as { request: IncomingMessage };
    const started = this.#started.get(request);
    const tag = request.headers['x-bench-request'];
    if (started !== undefined && typeof tag === 'string') {
      this.#durations.set(tag, Number(process.hrtime.bigint() - started) / 1e6);
    }
  };

  constructor() {
    subscribe('http.server.request.start', this.#onStart);
    subscribe('http.server.response.finish', this.#onFinish);
  }

  take(tag: string): number | undefined {
    const value = this.#durations.get(tag);
    this.#durations.delete(tag);
    return value;
  }

  close(): void {
    unsubscribe('http.server.request.start', this.#onStart);
    unsubscribe('http.server.response.finish', this.#onFinish);
  }
}

function handlerMs(headers: Dispatcher.ResponseData['headers']): number | undefined {
  const value = headers['server-timing'];
  const match = /changes;dur=([0-9.]+)/.exec(Array.isArray(value) ? value.join(',') : (value ?? ''));
  return match ? Number(match[1]) : undefined;
}

/**
 * A second replica of example.com's mailbox: the same configuration and database (its own pool, so its own
 * listening connection), on a port of its own, as a second pod behind the same public URL.
 */
async function secondReplica(fed: MailFederation, databases: readonly DatabaseConfig[]): Promise<MailboxService> {
  const first = fed.domains['example.com']!.mailbox;
  const { rows } = (await first.knex.raw('select current_schema() as schema')) as { rows: { schema: string }[] };
  const db = databases.find((d) => d.client === 'postgres' && d.schema === rows[0]!.schema);
  if (db === undefined) throw new Error("the mailbox's database was not among those created");
  const as = fed.auth.domains['example.com']!;
  return MailboxService.start(
    { ...first.config, port: 0 },
    { mtaKey: { key: as.mtaKey.privateKey, alg: 'ES256', kid: as.mtaKey.jwk.kid! }, authAdminToken: ADMIN_TOKEN },
    { knex: createKnex(db), logger: silentLogger() },
  );
}

export async function run(): Promise<void> {
  const pg = process.env.MAILBOX_DATABASE === 'pg';
  const database = testDatabases().find((d) => d.name === (pg ? 'postgres' : 'sqlite'))!;
  const created: DatabaseConfig[] = [];
  const fed = await startMailFederation(['example.com'], {
    database: async () => {
      const db = await database.create();
      created.push(db.config);
      return db;
    },
  });
  const clock = new ServerClock();
  const dispatcher = new Agent({ connections: 2 });
  let replica: MailboxService | undefined;
  try {
    const alice = 'alice@example.com';
    for (const address of [alice, 'bob@example.com']) {
      await fed.auth.domains['example.com']!.createUser(address, PASSWORD);
    }
    const aliceSession = await sessionOf(fed, alice);
    // A second tab of the same account: it makes the changes the long polls of the first wait for.
    const otherTab = await sessionOf(fed, alice);

    const t0 = performance.now();
    const ids = await seed(fed, alice, MESSAGES);
    await seed(fed, 'bob@example.com', OTHER_MESSAGES);
    const seeding = (performance.now() - t0) / 1000;
    const mailbox = fed.domains['example.com']!.mailbox;
    const state = await mailbox.changes.state(alice);
    console.log(
      `${MESSAGES.toLocaleString('en-US')} messages of alice (change log state ${state}) and ` +
        `${OTHER_MESSAGES.toLocaleString('en-US')} of bob, on ${pg ? 'PostgreSQL' : 'SQLite'}, written through ` +
        `MessageStore in ${seeding.toFixed(1)} s; ${loadAverageText()}`,
    );

    let sequence = 0;
    const sync = async (): Promise<{ client: number; server: number; handler: number }> => {
      const tag = String(++sequence);
      const { url, options } = await prepared(fed, aliceSession, 'GET', `/changes?since=${state}`);
      const started = performance.now();
      const res = await request(url, {
        ...options,
        dispatcher,
        headers: { ...(options.headers as Record<string, string>), 'x-bench-request': tag },
      });
      const body = (await res.body.json()) as { state?: string; created?: unknown[] };
      const client = performance.now() - started;
      if (res.statusCode !== 200 || body.state !== state || body.created?.length !== 0) {
        throw new Error(`the sync answered ${res.statusCode} ${JSON.stringify(body)}`);
      }
      const server = clock.take(tag);
      const handler = handlerMs(res.headers);
      if (server === undefined || handler === undefined) throw new Error('no server time was recorded');
      return { client, server, handler };
    };

    for (let i = 0; i < 200; i++) await sync(); // warm-up: JIT, statement cache, connections
    const rounds: { client: number; server: number; handler: number }[][] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const samples = [];
      for (let i = 0; i < SYNCS_PER_ROUND; i++) samples.push(await sync());
      rounds.push(samples);
    }
    const all = rounds.flat();
    const roundMedian = (pick: (s: { client: number; server: number; handler: number }) => number) =>
      rounds.map((samples) => medianOf(samples.map(pick)));
    const server = medianOf(roundMedian((s) => s.server));
    console.log(
      `sync, no changes     server time median ${ms(server)} (rounds ${roundMedian((s) => s.server)
        .map((x) => x.toFixed(2))
        .join(', ')}), p99 ${ms(
        percentile(
          all.map((s) => s.server),
          99,
        ),
      )}  ` + `(target < ${TARGET_SERVER_MS} ms: ${versusTarget(server, TARGET_SERVER_MS, true)})`,
    );
    console.log(
      `                     of which the handler (Server-Timing) median ${ms(medianOf(roundMedian((s) => s.handler)))}, ` +
        `p99 ${ms(
          percentile(
            all.map((s) => s.handler),
            99,
          ),
        )}; client-observed median ${ms(medianOf(roundMedian((s) => s.client)))}, ` +
        `p99 ${ms(
          percentile(
            all.map((s) => s.client),
            99,
          ),
        )}  (${ROUNDS} rounds of ${SYNCS_PER_ROUND}, one at a time)`,
    );

    // Long polls woken by a change another tab makes through the API.
    const target = ids[ids.length - 1]!;
    const wake = async (change: () => Promise<void>): Promise<{ fromSent: number; fromDone: number }> => {
      const current = await mailbox.changes.state(alice);
      const poll = await prepared(fed, aliceSession, 'GET', `/changes?since=${current}&wait=30`, undefined, mailbox);
      let answered = 0;
      const polling = request(poll.url, { ...poll.options, dispatcher }).then(async (res) => {
        const body = (await res.body.json()) as { state?: string; updated?: string[] };
        answered = performance.now();
        if (res.statusCode !== 200 || body.state === current || !body.updated?.includes(target)) {
          throw new Error(`the long poll answered ${res.statusCode} ${JSON.stringify(body)}`);
        }
      });
      // Parked: the server holds it in the notifier.
      while (mailbox.notifier.openPolls() === 0) await new Promise((r) => setTimeout(r, 2));
      const sent = performance.now();
      await change();
      const done = performance.now();
      await polling;
      return { fromSent: answered - sent, fromDone: answered - done };
    };

    const store = new MessageStore(mailbox.knex);
    // Each change flips the flag: setting it to what it already is would change nothing, and wake no poll.
    let seen = (await store.get(alice, target))!.seen;
    const throughApi = [];
    for (let i = 0; i < WAKES; i++) {
      seen = !seen;
      const patch = await prepared(fed, otherTab, 'PATCH', `/messages/${target}`, { seen });
      throughApi.push(
        await wake(async () => {
          const res = await request(patch.url, { ...patch.options, dispatcher });
          await res.body.dump();
          if (res.statusCode !== 200) throw new Error(`PATCH answered ${res.statusCode}`);
        }),
      );
    }
    const wakeMedian = medianOf(throughApi.map((w) => w.fromSent));
    console.log(
      `long poll, woken by a change through the API  median ${ms(wakeMedian)} from sending the change to the ` +
        `poll's answer, max ${ms(Math.max(...throughApi.map((w) => w.fromSent)))}; median ${ms(medianOf(throughApi.map((w) => w.fromDone)))} ` +
        `after the change was answered  (${WAKES} polls; target ≤ ${TARGET_WAKE_MS} ms: ${versusTarget(wakeMedian, TARGET_WAKE_MS, true)})`,
    );

    const behindTheApi = [];
    for (let i = 0; i < 5; i++) {
      seen = !seen;
      behindTheApi.push(
        await wake(async () => {
          await store.update(alice, target, { seen });
        }),
      );
    }
    console.log(
      `long poll, woken by a change written past the API (as a worker's delivery status is)  median ` +
        `${ms(medianOf(behindTheApi.map((w) => w.fromSent)))}, max ${ms(Math.max(...behindTheApi.map((w) => w.fromSent)))} ` +
        `(5 polls; seen only by the notifier's periodic check)`,
    );

    if (pg) {
      // The same long polls on the first replica, the changes made through a second one's API.
      replica = await secondReplica(fed, created);
      const channels = [mailbox, replica].map((r) => r.notifier.channel);
      await Promise.all(channels.map((c) => (c instanceof PgChangeChannel ? c.listening() : undefined)));
      const before = mailbox.notifier.wakeCounts();
      const acrossReplicas = [];
      for (let i = 0; i < WAKES; i++) {
        seen = !seen;
        const patch = await prepared(fed, otherTab, 'PATCH', `/messages/${target}`, { seen }, replica);
        acrossReplicas.push(
          await wake(async () => {
            const res = await request(patch.url, { ...patch.options, dispatcher });
            await res.body.dump();
            if (res.statusCode !== 200) throw new Error(`PATCH answered ${res.statusCode}`);
          }),
        );
      }
      const after = mailbox.notifier.wakeCounts();
      const median = medianOf(acrossReplicas.map((w) => w.fromSent));
      console.log(
        `long poll on replica A, woken by a change through replica B's API (PostgreSQL NOTIFY)  median ` +
          `${ms(median)} from sending the change to the poll's answer, max ` +
          `${ms(Math.max(...acrossReplicas.map((w) => w.fromSent)))}; median ` +
          `${ms(medianOf(acrossReplicas.map((w) => w.fromDone)))} after the change was answered  (${WAKES} polls; ` +
          `woken by NOTIFY ${after.replica - before.replica}, by the periodic check ${after.check - before.check}; ` +
          `target ≤ ${TARGET_WAKE_MS} ms: ${versusTarget(median, TARGET_WAKE_MS, true)})`,
      );
    }
  } finally {
    clock.close();
    await dispatcher.close();
    await replica?.close();
    await replica?.knex.destroy();
    await fed.close();
  }
}

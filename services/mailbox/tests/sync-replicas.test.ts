/**
 * Long polls across replicas (PROTOCOL.md §9): two mailbox services of example.com, as two pods behind one
 * public URL, on one PostgreSQL database (a fresh schema) and one blob directory. A long poll held by replica
 * A is answered when Alice changes her mailbox through replica B's API: B's `notify` reaches A through
 * PostgreSQL LISTEN/NOTIFY. The notifiers' periodic check runs once an hour here, so only the notification
 * can answer the poll before its 50 s are up (and before the test's own time-out). SQLite has no such path:
 * one process owns the file.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKnex, silentLogger, type HttpClient } from '@federizer/common';
import { createDpopProof, jwkThumbprint, type DpopKey } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { signIn, testHttp } from '../../auth/tests/exchange-client.js';
import { ADMIN_TOKEN, freePort, hostOf, startFederation, type Federation } from '../../auth/tests/harness.js';
import { MailboxService, mailboxConfig } from '../src/index.js';
import { PgChangeChannel } from '../src/api/notifier.js';
import { until } from './fetch-helpers.js';
import { documented } from './openapi-check.js';

interface Changes {
  state: string;
  created: string[];
  updated: string[];
  destroyed: string[];
  hasMore: boolean;
}

const postgres = testDatabases().filter((d) => d.name === 'postgres');

describe.each(postgres)('long polls across two replicas on one database ($name)', (database) => {
  let auth: Federation;
  let http: HttpClient;
  let a: MailboxService;
  let b: MailboxService;
  let publicUrl: string;
  let session: { token: string; key: DpopKey };
  const cleanups: (() => Promise<unknown>)[] = [];

  /** Alice's API through one replica: the DPoP proof names the public URL, the request goes to the pod. */
  async function api(replica: MailboxService, path: string, init: { method?: string; json?: unknown } = {}) {
    const method = init.method ?? 'GET';
    const headers: Record<string, string> = {
      authorization: `DPoP ${session.token}`,
      dpop: await createDpopProof(session.key, {
        htm: method,
        htu: `${publicUrl}/api/v1${path}`,
        accessToken: session.token,
      }),
    };
    if (init.json !== undefined) headers['content-type'] = 'application/json';
    const body = init.json === undefined ? undefined : JSON.stringify(init.json);
    const url = `${replica.url}/api/v1${path}`;
    return documented(method, url, await http.fetch(url, { method, headers, body }));
  }

  async function saveDraft(replica: MailboxService, subject: string): Promise<string> {
    const message = {
      envelope: [{ headers: [{ From: 'alice@example.com' }, { Subject: subject }] }],
      body: { parts: [] },
    };
    const res = await api(replica, '/drafts', { method: 'POST', json: { message } });
    expect(res.status, await res.clone().text()).toBe(201);
    return ((await res.json()) as { id: string }).id;
  }

  async function state(replica: MailboxService): Promise<string> {
    return ((await (await api(replica, '/state')).json()) as { state: string }).state;
  }

  /** A long poll on `replica`, parked (held in its notifier) by the time this resolves. */
  async function parkedPoll(replica: MailboxService, since: string): Promise<{ answer: Promise<Changes> }> {
    const before = replica.notifier.openPolls();
    const answer = api(replica, `/changes?since=${since}&wait=50`).then(async (res) => {
      expect(res.status).toBe(200);
      return (await res.json()) as Changes;
    });
    await until('the poll held', async () => (replica.notifier.openPolls() > before ? true : undefined));
    // Wrapped: an async function returning the promise itself would wait for the answer.
    return { answer };
  }

  function channelOf(replica: MailboxService): PgChangeChannel {
    const channel = replica.notifier.channel;
    if (!(channel instanceof PgChangeChannel)) throw new Error('a PostgreSQL mailbox listens on a PgChangeChannel');
    return channel;
  }

  beforeAll(async () => {
    const port = await freePort();
    publicUrl = `http://${hostOf('mail', 'example.com')}:${port}`;
    auth = await startFederation(['example.com'], {
      database: database.create,
      mailboxResourceFor: () => `${publicUrl}/api/v1`,
    });
    cleanups.push(() => auth.close());
    http = testHttp();
    cleanups.push(() => http.close());
    const domain = auth.domains['example.com']!;
    const db = await database.create();
    const blobDir = await mkdtemp(join(tmpdir(), 'federizer-replicas-'));
    cleanups.push(
      () => db.destroy(),
      () => rm(blobDir, { recursive: true, force: true }),
    );
    const { config, secrets } = mailboxConfig(
      {
        domain: 'example.com',
        publicUrl,
        issuer: domain.issuer,
        blobDir,
        dev: true,
        port,
        dnsServer: `${auth.dns.address.host}:${auth.dns.address.port}`,
        // An hour: a poll answered within the test was answered by a notification, not by this check.
        longPollCheckSeconds: 3600,
      },
      {
        mtaKey: { key: domain.mtaKey.privateKey, alg: 'ES256', kid: domain.mtaKey.jwk.kid! },
        authAdminToken: ADMIN_TOKEN,
      },
    );
    // Two pods: each its own process in production, so each its own pool and listening connection here.
    const start = async (replicaPort: number) => {
      const knex = createKnex(db.config);
      cleanups.push(() => knex.destroy());
      const replica = await MailboxService.start({ ...config, port: replicaPort }, secrets, {
        knex,
        logger: silentLogger(),
      });
      cleanups.push(() => replica.close());
      return replica;
    };
    a = await start(port);
    b = await start(0);
    await domain.createUser('alice@example.com', 'alice password');
    const signedIn = await signIn(domain, http, 'alice@example.com', 'alice password');
    const publicJwk = await exportJWK(signedIn.dpopKey.publicKey);
    session = {
      token: signedIn.accessToken,
      key: { alg: 'ES256', privateKey: signedIn.dpopKey.privateKey, publicJwk, jkt: await jwkThumbprint(publicJwk) },
    };
    await Promise.all([channelOf(a).listening(), channelOf(b).listening()]);
  });
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  });

  it("a poll held by replica A answers with a draft saved through replica B's API (NOTIFY, not the periodic check)", async () => {
    const since = await state(a);
    const wakesBefore = a.notifier.wakeCounts();
    const poll = await parkedPoll(a, since);
    const id = await saveDraft(b, 'Saved on the other pod');
    const changes = await poll.answer;
    expect(changes.state).not.toBe(since);
    expect(changes.created).toEqual([id]);
    const wakes = a.notifier.wakeCounts();
    expect(wakes.replica - wakesBefore.replica).toBe(1);
    expect(wakes.check - wakesBefore.check).toBe(0);
  });

  it('the other way round, and a replica skips its own notifications (its notify already woke its polls)', async () => {
    const id = await saveDraft(a, 'To be read');
    const since = await state(b);
    const before = { a: a.notifier.wakeCounts(), b: b.notifier.wakeCounts() };
    const onB = await parkedPoll(b, since);
    const onA = await parkedPoll(a, since);
    const res = await api(a, `/messages/${id}`, { method: 'PATCH', json: { flagged: true } });
    expect(res.status, await res.clone().text()).toBe(200);
    expect((await onA.answer).updated).toEqual([id]);
    expect((await onB.answer).updated).toEqual([id]);
    const after = { a: a.notifier.wakeCounts(), b: b.notifier.wakeCounts() };
    expect(after.a.local - before.a.local).toBe(1);
    expect(after.a.replica - before.a.replica).toBe(0);
    expect(after.b.replica - before.b.replica).toBe(1);
  });

  it("after its listening connection is cut (pg_terminate_backend), replica A listens again and B's changes wake it", async () => {
    const channel = channelOf(a);
    const cut = channel.backendPid!;
    expect(cut).toBeGreaterThan(0);
    await b.knex.raw('select pg_terminate_backend(?)', [cut]);
    const again = await until('replica A listening on a new connection', async () => {
      const pid = channel.backendPid;
      return pid !== undefined && pid !== cut ? pid : undefined;
    });
    const listening = await b.knex.raw<{ rows: { n: string }[] }>(
      'select count(*) as n from pg_stat_activity where pid = ?',
      [again],
    );
    expect(Number(listening.rows[0]!.n)).toBe(1);

    const since = await state(a);
    const poll = await parkedPoll(a, since);
    const id = await saveDraft(b, 'After the reconnection');
    expect((await poll.answer).created).toEqual([id]);
  });
});

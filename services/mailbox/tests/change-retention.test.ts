/**
 * The change log's retention as a running mailbox applies it (PROTOCOL.md §9, after RFC 8620 §5.2): the
 * service prunes `mail_changes` on its own schedule, counts what it removed, and a client whose state is
 * older than what is left gets `410 cannot_calculate_changes` from `GET /api/v1/changes` through real HTTP,
 * with a DPoP-bound token of the domain's real AS, over real SQLite and PostgreSQL.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { exportJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createKnex, createLogger } from '@federizer/common';
import { createDpopProof, jwkThumbprint, type DpopKey } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { freePort, hostOf, startFederation, type Federation } from '../../auth/tests/harness.js';
import { signIn, testHttp } from '../../auth/tests/exchange-client.js';
import { MailboxService, mailboxConfig } from '../src/index.js';
import { MessageStore, type NewMessage } from '../src/storage/index.js';
import { documented } from './openapi-check.js';

const ALICE = 'alice@example.com';

let counter = 0;
function newMessage(): NewMessage {
  counter++;
  return {
    address: ALICE,
    mailbox: 'inbox',
    messageId: `<${randomUUID()}@example.net>`,
    threadId: `<thread-${counter}@example.net>`,
    envelope: [{ headers: [{ Subject: `message ${counter}` }] }],
    body: { parts: [] },
    subject: `message ${counter}`,
    from: 'carol@example.net',
    date: Date.UTC(2030, 0, 1) + counter,
  };
}

/** The value of the series of `name` carrying `labels` (among others) in the Prometheus text format; 0 when absent. */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  const line = text
    .split('\n')
    .find(
      (l) =>
        (l.startsWith(`${name} `) || l.startsWith(`${name}{`)) &&
        Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)),
    );
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe.each(testDatabases())('the change log retention of a running mailbox ($name)', (database) => {
  const http = testHttp();
  let fed: Federation;
  let publicUrl: string;
  let mailboxArgs: Parameters<typeof mailboxConfig>;
  let token: string;
  let key: DpopKey;
  const cleanups: (() => Promise<void>)[] = [];

  async function start(options: { changeRetention: { intervalMs: number; keepMs?: number; keepCount?: number } }) {
    const db = await database.create();
    const knex = createKnex(db.config);
    cleanups.push(async () => {
      await knex.destroy();
      await db.destroy();
    });
    const lines: { level: number; msg: string; removed?: number }[] = [];
    const logger = createLogger({
      name: 'mailbox-test',
      level: 'info',
      destination: { write: (line: string) => void lines.push(JSON.parse(line) as (typeof lines)[number]) },
    });
    // Each mailbox listens on a port of its own; tokens and proofs name the one public URL.
    const { config, secrets } = mailboxConfig({ ...mailboxArgs[0], port: await freePort() }, mailboxArgs[1]);
    const mailbox = await MailboxService.start(config, secrets, { knex, logger, ...options });
    cleanups.push(() => mailbox.close());
    return { mailbox, knex, lines };
  }

  /** One API request as the webmail makes it, checked against the OpenAPI document. */
  async function api(mailbox: MailboxService, path: string) {
    const url = `${mailbox.url}/api/v1${path}`;
    // The token's audience is the public URL; the request goes to wherever this mailbox listens.
    const htu = `${publicUrl}/api/v1${path}`;
    const proof = await createDpopProof(key, { htm: 'GET', htu, accessToken: token });
    const res = await http.fetch(url, { headers: { authorization: `DPoP ${token}`, dpop: proof } });
    return documented('GET', htu, res);
  }

  beforeAll(async () => {
    const port = await freePort();
    publicUrl = `http://${hostOf('mail', 'example.com')}:${port}`;
    fed = await startFederation(['example.com'], {
      database: database.create,
      config: { mailboxResource: `${publicUrl}/api/v1` },
    });
    const domain = fed.domains['example.com']!;
    await domain.createUser(ALICE, 'alice password');
    const blobDir = await mkdtemp(join(tmpdir(), 'federizer-blobs-'));
    mailboxArgs = [
      { domain: 'example.com', publicUrl, issuer: domain.issuer, blobDir, dev: true, port },
      { mtaClientSecret: 'unused in these tests' },
    ];
    const session = await signIn(domain, http, ALICE, 'alice password');
    token = session.accessToken;
    const publicJwk = await exportJWK(session.dpopKey.publicKey);
    key = { alg: 'ES256', privateKey: session.dpopKey.privateKey, publicJwk, jkt: await jwkThumbprint(publicJwk) };
    return async () => {
      for (const cleanup of cleanups.reverse()) await cleanup();
      await fed.close();
      await rm(blobDir, { recursive: true, force: true });
    };
  });
  afterAll(() => http.close());

  it('RFC 8620 §5.2: the service prunes on its own, counts it, and a client with an older state then gets 410', async () => {
    // Every change is old at once (keepMs 0); each account keeps its newest one.
    const { mailbox } = await start({ changeRetention: { intervalMs: 100, keepMs: 0, keepCount: 1 } });
    const messages = new MessageStore(mailbox.knex);
    await messages.create(newMessage());
    const stale = ((await (await api(mailbox, '/state')).json()) as { state: string }).state;
    await messages.create(newMessage());
    const kept = ((await (await api(mailbox, '/state')).json()) as { state: string }).state;
    const last = await messages.create(newMessage());

    await vi.waitFor(
      async () => {
        const rows = (await mailbox.knex('mail_changes').where({ address: ALICE })) as unknown[];
        expect(rows).toHaveLength(1);
      },
      { timeout: 10_000, interval: 50 },
    );
    const gone = await api(mailbox, `/changes?since=${stale}&wait=5`);
    expect(gone.status).toBe(410);
    expect(gone.headers.get('cache-control')).toBe('no-store');
    expect(await gone.json()).toMatchObject({ error: 'cannot_calculate_changes' });
    // A client that saw the newer state is still answered.
    const current = await api(mailbox, `/changes?since=${kept}`);
    expect(current.status).toBe(200);
    expect(await current.json()).toMatchObject({ created: [last], hasMore: false });

    const metrics = await (await http.fetch(`${mailbox.url}/metrics`)).text();
    expect(metric(metrics, 'federizer_mailbox_changes_pruned_total')).toBe(2);
    expect(metric(metrics, 'federizer_mailbox_change_prunes_total', { outcome: 'completed' })).toBeGreaterThan(0);
  });

  it('a failed run is logged and counted, never thrown, and the next run prunes', async () => {
    const { mailbox, knex, lines } = await start({ changeRetention: { intervalMs: 50, keepMs: 0, keepCount: 1 } });
    // The log is out of reach for a while: every run fails.
    await knex.schema.renameTable('mail_changes', 'mail_changes_away');
    await vi.waitFor(() => expect(lines.some((l) => l.msg === 'pruning the change log failed')).toBe(true), {
      timeout: 10_000,
      interval: 20,
    });
    const failed = await (await http.fetch(`${mailbox.url}/metrics`)).text();
    expect(metric(failed, 'federizer_mailbox_change_prunes_total', { outcome: 'failed' })).toBeGreaterThan(0);
    await knex.schema.renameTable('mail_changes_away', 'mail_changes');
    // The schedule went on: the next runs prune what is written now.
    const messages = new MessageStore(mailbox.knex);
    await messages.create(newMessage());
    await messages.create(newMessage());
    await vi.waitFor(() => expect(lines.some((l) => l.msg === 'change log pruned' && l.removed === 1)).toBe(true), {
      timeout: 10_000,
      interval: 20,
    });
    expect((await api(mailbox, '/state')).status).toBe(200);
  });

  it('stops with the service: no run after close', async () => {
    const { mailbox, lines } = await start({ changeRetention: { intervalMs: 20 } });
    await vi.waitFor(() => expect(lines.some((l) => l.msg === 'mailbox listening')).toBe(true));
    await mailbox.close();
    const after = lines.length;
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(lines.slice(after).filter((l) => l.level >= 50)).toEqual([]);
    expect(lines.at(-1)?.msg).toBe('mailbox stopped');
  });

  it('refuses a retention interval that is not a whole number of ms', async () => {
    await expect(start({ changeRetention: { intervalMs: 0 } })).rejects.toThrow(/intervalMs/);
  });
});

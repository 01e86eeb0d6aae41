/**
 * The client API's messages, threads, deliveries, unsend and forwarding rule through real HTTP: users of
 * example.com sign in at the domain's real AS and call the API with DPoP-bound tokens, as the webmail does.
 * The routers are mounted on a small app of the test (behind the service's `requireUser`) over the database
 * of a running `MailboxService`; state is set up through the stores.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import express, { type NextFunction, type Request, type Response } from 'express';
import { exportJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KnexReplayStore, createKnex, listen, silentLogger, type RunningServer } from '@federizer/common';
import { createDpopProof, jwkThumbprint, type DpopKey, type HttpGet } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { freePort, hostOf, startFederation, type Federation, type TestDomain } from '../../auth/tests/harness.js';
import { signIn, testHttp } from '../../auth/tests/exchange-client.js';
import { MailboxService, mailboxConfig } from '../src/index.js';
import {
  ChangeLog,
  ForwardingStore,
  MessageStore,
  ShareStore,
  createIdGenerator,
  type NewMessage,
} from '../src/storage/index.js';
import { cid } from '../src/storage/testing.js';
import { IssuerKeys, requireUser } from '../src/api/user-auth.js';
import { ChangeNotifier } from '../src/api/notifier.js';
import { syncRouter } from '../src/api/sync.js';
import { messagesRouter } from '../src/api/messages.js';
import { documented } from './openapi-check.js';

interface User {
  readonly address: string;
  readonly token: string;
  readonly key: DpopKey;
}

interface Summary {
  id: string;
  mailbox: string;
  messageId: string;
  threadId: string;
  subject: string;
  seen: boolean;
  flagged: boolean;
}

interface Changes {
  state: string;
  created: string[];
  updated: string[];
  destroyed: string[];
  hasMore: boolean;
}

interface Problem {
  error: string;
  error_description: string;
}

async function userOf(domain: TestDomain, http: ReturnType<typeof testHttp>, address: string): Promise<User> {
  const session = await signIn(domain, http, address, `${address} password`);
  const publicJwk = await exportJWK(session.dpopKey.publicKey);
  return {
    address,
    token: session.accessToken,
    key: { alg: 'ES256', privateKey: session.dpopKey.privateKey, publicJwk, jkt: await jwkThumbprint(publicJwk) },
  };
}

let counter = 0;
function newMessage(address: string, overrides: Partial<NewMessage> = {}): NewMessage {
  counter++;
  return {
    address,
    mailbox: 'inbox',
    messageId: `<${randomUUID()}@example.net>`,
    threadId: `<thread-${counter}@example.net>`,
    envelope: [{ headers: [{ Subject: `message ${counter}` }] }],
    body: { parts: [{ headers: [{ 'Content-Type': 'text/plain' }] }] },
    subject: `message ${counter}`,
    from: 'carol@example.net',
    date: Date.UTC(2030, 0, 1) + counter,
    ...overrides,
  };
}

/** An id that is well formed but names no message. */
const unknownId = createIdGenerator(Date.now)();

describe.each(testDatabases())('the messages API over HTTP ($name)', (database) => {
  const http = testHttp();
  let fed: Federation;
  let mailbox: MailboxService;
  let server: RunningServer;
  let origin: string;
  let messages: MessageStore;
  let shares: ShareStore;
  let changes: ChangeLog;
  let alice: User;
  let bob: User;

  /** One request as the webmail makes it: the access token and a fresh DPoP proof for this URL. */
  async function api(
    user: User,
    path: string,
    init: { method?: string; json?: unknown; body?: string; headers?: Record<string, string> } = {},
  ) {
    const method = init.method ?? 'GET';
    const url = `${origin}/api/v1${path}`;
    const proof = await createDpopProof(user.key, { htm: method, htu: url, accessToken: user.token });
    const res = await http.fetch(url, {
      method,
      body: init.json === undefined ? init.body : JSON.stringify(init.json),
      headers: {
        authorization: `DPoP ${user.token}`,
        dpop: proof,
        ...(init.json === undefined ? {} : { 'content-type': 'application/json' }),
        ...init.headers,
      },
    });
    return documented(method, url, res);
  }

  async function ok<T>(res: Awaited<ReturnType<typeof api>>, status = 200): Promise<T> {
    const text = await res.text();
    expect(res.status, text).toBe(status);
    return (text === '' ? undefined : JSON.parse(text)) as T;
  }

  async function problem(res: Awaited<ReturnType<typeof api>>, status: number, error: string): Promise<Problem> {
    const body = (await res.json()) as Problem;
    expect(res.status, JSON.stringify(body)).toBe(status);
    expect(body.error, JSON.stringify(body)).toBe(error);
    expect(typeof body.error_description).toBe('string');
    return body;
  }

  const state = async (user: User) => (await ok<{ state: string }>(await api(user, '/state'))).state;
  const changesSince = (user: User, since: string) => api(user, `/changes?since=${since}`).then(ok<Changes>);

  beforeAll(async () => {
    const port = await freePort();
    const mailboxUrl = `http://${hostOf('mail', 'example.com')}:${port}`;
    fed = await startFederation(['example.com'], {
      database: database.create,
      config: { mailboxResource: `${mailboxUrl}/api/v1` },
    });
    const domain = fed.domains['example.com']!;
    await domain.createUser('alice@example.com', 'alice@example.com password');
    await domain.createUser('bob@example.com', 'bob@example.com password');
    const blobDir = await mkdtemp(join(tmpdir(), 'federizer-blobs-'));
    const db = await database.create();
    const knex = createKnex(db.config);
    const { config, secrets } = mailboxConfig(
      { domain: 'example.com', publicUrl: mailboxUrl, issuer: domain.issuer, blobDir, dev: true, port },
      { mtaClientSecret: 'unused in these tests' },
    );
    mailbox = await MailboxService.start(config, secrets, { knex, logger: silentLogger() });

    messages = new MessageStore(mailbox.knex);
    shares = new ShareStore(mailbox.knex);
    changes = new ChangeLog(mailbox.knex);
    const notifier = new ChangeNotifier({ changes });
    const appPort = await freePort();
    origin = `http://127.0.0.1:${appPort}`;
    const httpGet: HttpGet = (url, init) => http.fetch(url, init) as unknown as Promise<globalThis.Response>;
    const app = express();
    app.use(
      '/api/v1',
      requireUser({
        issuer: domain.issuer,
        resource: `${mailboxUrl}/api/v1`,
        publicUrl: origin,
        keys: new IssuerKeys(domain.issuer, httpGet),
        replay: new KnexReplayStore(mailbox.knex, { table: 'mail_replay' }),
      }),
    );
    app.use('/api/v1', syncRouter({ changes, notifier }));
    app.use('/api/v1', messagesRouter({ messages, shares, forwarding: new ForwardingStore(mailbox.knex), notifier }));
    app.use((_req: Request, res: Response) => void res.status(404).json({ error: 'no_route' }));
    app.use((err: Error, _req: Request, res: Response, _next: NextFunction) => {
      res.status(500).json({ error: 'server_error', error_description: err.message });
    });
    server = await listen(app, { port: appPort });

    alice = await userOf(domain, http, 'alice@example.com');
    bob = await userOf(domain, http, 'bob@example.com');
    return async () => {
      notifier.close();
      await server.close();
      await mailbox.close();
      await knex.destroy();
      await db.destroy();
      await fed.close();
      await rm(blobDir, { recursive: true, force: true });
    };
  });
  afterAll(() => http.close());

  it('pages 250 messages newest first, without duplicates or gaps, and lists one mailbox only', async () => {
    const created: string[] = [];
    for (let i = 0; i < 250; i++) created.push(await messages.create(newMessage(alice.address)));
    await messages.create(newMessage(alice.address, { mailbox: 'sent' }));
    for (const limit of [100, 7, 200]) {
      const listed: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const query: string = `/messages?mailbox=inbox&limit=${limit}${cursor === null ? '' : `&cursor=${cursor}`}`;
        const res = await api(alice, query);
        expect(res.headers.get('cache-control')).toBe('no-store');
        const page = await ok<{ messages: Summary[]; next: string | null }>(res);
        expect(page.messages.length).toBeLessThanOrEqual(limit);
        listed.push(...page.messages.map((m) => m.id));
        expect(page.messages.every((m) => m.mailbox === 'inbox')).toBe(true);
        cursor = page.next;
        pages++;
      } while (cursor !== null);
      expect(listed, `limit ${limit}`).toEqual([...created].reverse());
      expect(pages).toBe(Math.ceil(250 / limit));
    }
    // The default mailbox is the inbox and the default page 50.
    const first = await ok<{ messages: Summary[] }>(await api(alice, '/messages'));
    expect(first.messages.map((m) => m.id)).toEqual([...created].reverse().slice(0, 50));
    // Bob sees none of it.
    expect((await ok<{ messages: Summary[] }>(await api(bob, '/messages'))).messages).toEqual([]);
  });

  it('list parameters are validated: limit 1..200, one of the five mailboxes, a cursor it issued', async () => {
    for (const limit of ['0', '201', 'abc', '1.5', '-1']) {
      const body = await problem(await api(alice, `/messages?limit=${limit}`), 400, 'invalid_request');
      expect(body.error_description).toMatch(/limit must be an integer from 1 to 200/);
    }
    const mailboxProblem = await problem(await api(alice, '/messages?mailbox=spam'), 400, 'invalid_request');
    expect(mailboxProblem.error_description).toMatch(/inbox, sent, drafts, archive, trash/);
    await problem(await api(alice, '/messages?mailbox=inbox&mailbox=sent'), 400, 'invalid_request');
    await problem(await api(alice, '/messages?cursor=garbage'), 400, 'invalid_cursor');
  });

  it('GET /messages/:id answers the whole message with its resources; anything else is 404', async () => {
    const id = await messages.create(
      newMessage(alice.address, {
        subject: 'with attachment',
        resources: [
          { contentId: cid('a'), size: 100, status: 'held' },
          { contentId: cid('b'), size: 20, status: 'pending' },
        ],
      }),
    );
    const message = await ok<Summary & { envelope: unknown; body: unknown; size: number; resources: unknown[] }>(
      await api(alice, `/messages/${id}`),
    );
    expect(message).toMatchObject({ id, subject: 'with attachment', mailbox: 'inbox', seen: false, size: 120 });
    expect(message.envelope).toEqual((await messages.get(alice.address, id))!.envelope);
    expect(message.body).toEqual({ parts: [{ headers: [{ 'Content-Type': 'text/plain' }] }] });
    expect(message.resources).toHaveLength(2);
    expect(message.resources).toContainEqual({ contentId: cid('b'), size: 20, status: 'pending' });
    expect(message).not.toHaveProperty('transferEht');
    await problem(await api(alice, `/messages/${unknownId}`), 404, 'not_found');
    await problem(await api(alice, '/messages/not-an-id'), 404, 'not_found');
  });

  it("another account's message is 404 for every route, exactly like a missing one, and stays untouched", async () => {
    const id = await messages.create(newMessage(alice.address));
    const mine = await problem(await api(bob, `/messages/${unknownId}`), 404, 'not_found');
    const theirs = await problem(await api(bob, `/messages/${id}`), 404, 'not_found');
    expect(theirs).toEqual(mine);
    await problem(await api(bob, `/messages/${id}`, { method: 'PATCH', json: { seen: true } }), 404, 'not_found');
    await problem(await api(bob, `/messages/${id}`, { method: 'DELETE' }), 404, 'not_found');
    await problem(await api(bob, `/messages/${id}/deliveries`), 404, 'not_found');
    await problem(await api(bob, `/messages/${id}/unsend`, { method: 'POST' }), 404, 'not_found');
    const batch = await ok<{ messages: Summary[]; notFound: string[] }>(
      await api(bob, '/messages/get', { method: 'POST', json: { ids: [id] } }),
    );
    expect(batch).toEqual({ messages: [], notFound: [id] });
    expect(await messages.get(alice.address, id)).toMatchObject({ seen: false, mailbox: 'inbox' });
  });

  it('POST /messages/get reads a batch in the order asked, listing what is missing in notFound', async () => {
    const ids = [
      await messages.create(newMessage(alice.address)),
      await messages.create(newMessage(alice.address, { mailbox: 'drafts' })),
      await messages.create(newMessage(alice.address, { mailbox: 'trash' })),
    ];
    const bobs = await messages.create(newMessage(bob.address));
    const asked = [ids[2]!, unknownId, ids[0]!, 'garbage', bobs, ids[1]!, ids[0]!];
    const batch = await ok<{ messages: (Summary & { body: unknown })[]; notFound: string[] }>(
      await api(alice, '/messages/get', { method: 'POST', json: { ids: asked } }),
    );
    expect(batch.messages.map((m) => m.id)).toEqual([ids[2], ids[0], ids[1]]);
    expect(batch.messages.map((m) => m.mailbox)).toEqual(['trash', 'inbox', 'drafts']);
    expect(batch.messages[0]!.body).toBeDefined();
    expect(batch.notFound).toEqual([unknownId, 'garbage', bobs]);
    expect(await ok(await api(alice, '/messages/get', { method: 'POST', json: { ids: [] } }))).toEqual({
      messages: [],
      notFound: [],
    });

    const tooMany = Array.from({ length: 201 }, () => unknownId);
    const body = await problem(
      await api(alice, '/messages/get', { method: 'POST', json: { ids: tooMany } }),
      400,
      'invalid_request',
    );
    expect(body.error_description).toMatch(/at most 200/);
    await problem(await api(alice, '/messages/get', { method: 'POST', json: { ids: 'x' } }), 400, 'invalid_request');
    await problem(await api(alice, '/messages/get', { method: 'POST', json: { ids: [1] } }), 400, 'invalid_request');
    await problem(await api(alice, '/messages/get', { method: 'POST', json: [ids[0]] }), 400, 'invalid_request');
    const malformed = await api(alice, '/messages/get', {
      method: 'POST',
      body: '{"ids": [',
      headers: { 'content-type': 'application/json' },
    });
    expect((await problem(malformed, 400, 'invalid_request')).error_description).toMatch(/not JSON/);
    const plain = await api(alice, '/messages/get', {
      method: 'POST',
      body: JSON.stringify({ ids }),
      headers: { 'content-type': 'text/plain' },
    });
    await problem(plain, 415, 'unsupported_media_type');
  });

  it('PATCH, move, trash and DELETE each show up in /changes', async () => {
    const id = await messages.create(newMessage(alice.address));
    let s = await state(alice);
    const expectChange = async (kind: 'updated' | 'destroyed') => {
      const c = await changesSince(alice, s);
      expect(c).toMatchObject({ created: [], [kind]: [id] });
      s = c.state;
    };

    expect(
      await ok<Summary>(await api(alice, `/messages/${id}`, { method: 'PATCH', json: { seen: true } })),
    ).toMatchObject({ id, seen: true, flagged: false, mailbox: 'inbox' });
    await expectChange('updated');
    await ok(await api(alice, `/messages/${id}`, { method: 'PATCH', json: { flagged: true, seen: false } }));
    await expectChange('updated');
    expect((await messages.get(alice.address, id))!).toMatchObject({ seen: false, flagged: true });

    await ok(await api(alice, `/messages/${id}`, { method: 'PATCH', json: { mailbox: 'archive' } }));
    await expectChange('updated');
    const archive = await ok<{ messages: Summary[] }>(await api(alice, '/messages?mailbox=archive'));
    expect(archive.messages.map((m) => m.id)).toContain(id);

    const trashed = await ok<Summary>(
      await api(alice, `/messages/${id}`, { method: 'PATCH', json: { mailbox: 'trash' } }),
    );
    expect(trashed.mailbox).toBe('trash');
    await expectChange('updated');
    const trash = await ok<{ messages: Summary[] }>(await api(alice, '/messages?mailbox=trash'));
    expect(trash.messages.map((m) => m.id)).toContain(id);

    // Setting what is already set changes nothing.
    await ok(await api(alice, `/messages/${id}`, { method: 'PATCH', json: { mailbox: 'trash' } }));
    expect(await changesSince(alice, s)).toMatchObject({ state: s, updated: [] });

    const deleted = await api(alice, `/messages/${id}`, { method: 'DELETE' });
    expect(deleted.status).toBe(204);
    await expectChange('destroyed');
    await problem(await api(alice, `/messages/${id}`), 404, 'not_found');
    await problem(await api(alice, `/messages/${id}`, { method: 'DELETE' }), 404, 'not_found');
    await problem(await api(alice, `/messages/${id}`, { method: 'PATCH', json: { seen: true } }), 404, 'not_found');
  });

  it('a patch is validated: known fields, booleans, one of the five mailboxes, not empty', async () => {
    const id = await messages.create(newMessage(alice.address));
    const cases: [unknown, RegExp][] = [
      [{}, /none of seen, flagged, mailbox/],
      [{ seen: 'yes' }, /seen must be true or false/],
      [{ flagged: 1 }, /flagged must be true or false/],
      [{ mailbox: 'spam' }, /mailbox must be one of/],
      [{ seen: true, subject: 'x' }, /unknown field "subject"/],
      [[true], /JSON object/],
    ];
    for (const [json, description] of cases) {
      const body = await problem(
        await api(alice, `/messages/${id}`, { method: 'PATCH', json }),
        400,
        'invalid_request',
      );
      expect(body.error_description, JSON.stringify(json)).toMatch(description);
    }
    const empty = await problem(await api(alice, `/messages/${id}`, { method: 'PATCH' }), 400, 'invalid_request');
    expect(empty.error_description).toMatch(/JSON object body is required/);
    expect(await messages.get(alice.address, id)).toMatchObject({ seen: false, flagged: false, mailbox: 'inbox' });
  });

  it('GET /threads/:threadId lists the account’s messages of the thread across mailboxes, oldest first', async () => {
    const threadId = '<thread/x+1@example.com>';
    const ids = [
      await messages.create(newMessage(alice.address, { threadId })),
      await messages.create(newMessage(alice.address, { threadId, mailbox: 'sent' })),
      await messages.create(newMessage(alice.address, { threadId, mailbox: 'archive' })),
    ];
    await messages.create(newMessage(alice.address));
    await messages.create(newMessage(bob.address, { threadId }));
    const thread = await ok<{ threadId: string; messages: Summary[] }>(
      await api(alice, `/threads/${encodeURIComponent(threadId)}`),
    );
    expect(thread.threadId).toBe(threadId);
    expect(thread.messages.map((m) => m.id)).toEqual(ids);
    expect(thread.messages.map((m) => m.mailbox)).toEqual(['inbox', 'sent', 'archive']);
    // Bob's copy is his alone; a thread nobody has is 404.
    expect(
      (await ok<{ messages: Summary[] }>(await api(bob, `/threads/${encodeURIComponent(threadId)}`))).messages,
    ).toHaveLength(1);
    await problem(await api(alice, `/threads/${encodeURIComponent('<nothing@example.com>')}`), 404, 'not_found');
    await problem(await api(alice, '/threads/%E0%A4%A'), 400, 'invalid_request');
  });

  it('deliveries show each recipient’s status; unsend withdraws what was not fetched yet', async () => {
    const sent = await messages.create(newMessage(alice.address, { mailbox: 'sent' }));
    const share = (recipients: string[]) =>
      shares.create({
        message: sent,
        address: alice.address,
        messageId: `<${randomUUID()}@example.com>`,
        assertionDigest: randomUUID(),
        envelope: [],
        recipients,
        dpopKey: { kty: 'EC' },
        expiresAt: Date.now() + 3_600_000,
      });
    const toCc = await share(['bob@example.net', 'carol@example.net', 'dave@example.org']);
    const bcc = await share(['erin@example.org']);
    await shares.setDelivery(toCc, { recipient: 'carol@example.net' }, 'transferred');
    await shares.setDelivery(toCc, { domain: 'example.org' }, 'fetched', { fetchedBy: 'example.org' });
    await shares.setDelivery(bcc, { recipient: 'erin@example.org' }, 'failed', { detail: 'connection refused' });

    type Delivery = { recipient: string; status: string; fetchedBy?: string; fetchedAt?: number; detail?: string };
    const deliveries = async () =>
      (await ok<{ deliveries: Delivery[] }>(await api(alice, `/messages/${sent}/deliveries`))).deliveries;
    const byRecipient = (list: Delivery[]) => Object.fromEntries(list.map((d) => [d.recipient, d]));
    const before = byRecipient(await deliveries());
    expect(Object.keys(before).sort()).toEqual([
      'bob@example.net',
      'carol@example.net',
      'dave@example.org',
      'erin@example.org',
    ]);
    expect(before['bob@example.net']).toMatchObject({ status: 'queued' });
    expect(before['bob@example.net']).not.toHaveProperty('fetchedBy');
    expect(before['carol@example.net']).toMatchObject({ status: 'transferred' });
    expect(before['dave@example.org']).toMatchObject({ status: 'fetched', fetchedBy: 'example.org' });
    expect(typeof before['dave@example.org']!.fetchedAt).toBe('number');
    expect(before['erin@example.org']).toMatchObject({ status: 'failed', detail: 'connection refused' });

    // Some recipients: written as addresses may be written, compared as addresses compare.
    let s = await state(alice);
    const some = await ok<{ withdrawn: string[]; fetched: string[]; unknown: string[] }>(
      await api(alice, `/messages/${sent}/unsend`, {
        method: 'POST',
        json: { recipients: ['Carol <Carol@Example.NET>', 'dave@example.org', 'zed@example.com'] },
      }),
    );
    expect(some).toEqual({
      withdrawn: ['carol@example.net'],
      fetched: ['dave@example.org'],
      unknown: ['zed@example.com'],
    });
    const c = await changesSince(alice, s);
    expect(c.updated).toEqual([sent]);
    s = c.state;
    expect(byRecipient(await deliveries())['carol@example.net']).toMatchObject({ status: 'withdrawn' });
    expect(byRecipient(await deliveries())['bob@example.net']).toMatchObject({ status: 'queued' });

    // All recipients, without a body: every copy, the failed Bcc copy too; fetched stays fetched.
    const all = await ok<{ withdrawn: string[]; fetched: string[]; unknown: string[] }>(
      await api(alice, `/messages/${sent}/unsend`, { method: 'POST' }),
    );
    expect(all.withdrawn.sort()).toEqual(['bob@example.net', 'carol@example.net', 'erin@example.org']);
    expect(all).toMatchObject({ fetched: ['dave@example.org'], unknown: [] });
    expect((await changesSince(alice, s)).updated).toEqual([sent]);
    const after = byRecipient(await deliveries());
    expect(
      Object.values(after)
        .map((d) => `${d.recipient} ${d.status}`)
        .sort(),
    ).toEqual([
      'bob@example.net withdrawn',
      'carol@example.net withdrawn',
      'dave@example.org fetched',
      'erin@example.org withdrawn',
    ]);

    // A message never sent has nothing to withdraw and no deliveries.
    const draft = await messages.create(newMessage(alice.address, { mailbox: 'drafts' }));
    await problem(await api(alice, `/messages/${draft}/unsend`, { method: 'POST' }), 409, 'not_sent');
    expect(await ok(await api(alice, `/messages/${draft}/deliveries`))).toEqual({ deliveries: [] });
    for (const json of [
      { recipients: [] },
      { recipients: ['not an address'] },
      { recipients: 'bob@example.net' },
      { all: true },
    ]) {
      await problem(await api(alice, `/messages/${sent}/unsend`, { method: 'POST', json }), 400, 'invalid_request');
    }
    // A body that is not JSON is refused rather than read as "withdraw every copy".
    const plain = await api(alice, `/messages/${sent}/unsend`, {
      method: 'POST',
      body: '{"recipients":["bob@example.net"]}',
      headers: { 'content-type': 'text/plain' },
    });
    await problem(plain, 415, 'unsupported_media_type');
  });

  it('the forwarding rule is read and replaced, its targets validated as addresses', async () => {
    expect(await ok(await api(bob, '/forwarding'))).toEqual({
      targets: [],
      keepCopy: true,
      enabled: false,
      updatedAt: null,
    });
    const put = await ok<{ targets: string[]; keepCopy: boolean; enabled: boolean; updatedAt: number }>(
      await api(bob, '/forwarding', {
        method: 'PUT',
        json: {
          targets: ['Bob Elsewhere <Bob@Example.NET>', 'bob.archive@example.org'],
          keepCopy: false,
          enabled: true,
        },
      }),
    );
    expect(put).toMatchObject({
      targets: ['bob@example.net', 'bob.archive@example.org'],
      keepCopy: false,
      enabled: true,
    });
    expect(typeof put.updatedAt).toBe('number');
    expect(await ok(await api(bob, '/forwarding'))).toEqual(put);
    // Alice's rule is hers.
    expect(await ok(await api(alice, '/forwarding'))).toMatchObject({ targets: [], enabled: false });

    const eleven = Array.from({ length: 11 }, (_, i) => `t${i}@example.org`);
    const cases: [unknown, RegExp][] = [
      [{ targets: eleven, keepCopy: true, enabled: true }, /at most 10/],
      [{ targets: ['not an address'], keepCopy: true, enabled: true }, /targets\[0\] is not an address/],
      [{ targets: ['a@example.org, b@example.org'], keepCopy: true, enabled: true }, /exactly one address/],
      [{ targets: [42], keepCopy: true, enabled: true }, /targets\[0\] must be an address/],
      [{ targets: ['BOB@example.com'], keepCopy: true, enabled: true }, /cannot forward to itself/],
      [{ targets: [], keepCopy: true, enabled: true }, /at least one target/],
      [{ targets: ['a@example.org'], enabled: true }, /keepCopy must be true or false/],
      [{ targets: ['a@example.org'], keepCopy: true, enabled: 'yes' }, /enabled must be true or false/],
      [{ targets: 'a@example.org', keepCopy: true, enabled: true }, /targets must be an array/],
      [{ targets: [], keepCopy: true, enabled: false, hops: 3 }, /unknown field "hops"/],
    ];
    for (const [json, description] of cases) {
      const body = await problem(await api(bob, '/forwarding', { method: 'PUT', json }), 400, 'invalid_request');
      expect(body.error_description, JSON.stringify(json)).toMatch(description);
    }
    expect(await ok(await api(bob, '/forwarding'))).toEqual(put);

    const ten = eleven.slice(0, 10);
    expect(
      await ok(await api(bob, '/forwarding', { method: 'PUT', json: { targets: ten, keepCopy: true, enabled: true } })),
    ).toMatchObject({ targets: ten });
    const off = await ok(
      await api(bob, '/forwarding', { method: 'PUT', json: { targets: [], keepCopy: true, enabled: false } }),
    );
    expect(off).toMatchObject({ targets: [], keepCopy: true, enabled: false });
  });

  it('every route needs a DPoP-bound access token', async () => {
    for (const path of ['/messages', `/messages/${unknownId}`, '/forwarding', '/threads/x']) {
      expect((await http.fetch(`${origin}/api/v1${path}`)).status, path).toBe(401);
    }
  });
});

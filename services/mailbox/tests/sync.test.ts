/**
 * Webmail synchronization (PROTOCOL.md §9) through real HTTP: users of example.com sign in at the domain's
 * real AS and poll `GET /api/v1/changes` with DPoP-bound tokens. The routers are mounted on a small app of
 * the test (behind the service's `requireUser`) over the database of a running `MailboxService`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import express, { type NextFunction, type Request, type Response } from 'express';
import { exportJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { KnexReplayStore, createKnex, listen, silentLogger, type RunningServer } from '@federizer/common';
import { createDpopProof, jwkThumbprint, type DpopKey, type HttpGet } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { freePort, hostOf, startFederation, type Federation, type TestDomain } from '../../auth/tests/harness.js';
import { signIn, testHttp } from '../../auth/tests/exchange-client.js';
import { MailboxService, mailboxConfig } from '../src/index.js';
import { ChangeLog, ForwardingStore, MessageStore, ShareStore, type NewMessage } from '../src/storage/index.js';
import { IssuerKeys, requireUser } from '../src/api/user-auth.js';
import { ChangeNotifier, type ChangeChannel, type ChangeListener } from '../src/api/notifier.js';
import { syncRouter } from '../src/api/sync.js';
import { messagesRouter } from '../src/api/messages.js';

interface User {
  readonly address: string;
  readonly token: string;
  readonly key: DpopKey;
}

interface Changes {
  state: string;
  created: string[];
  updated: string[];
  destroyed: string[];
  hasMore: boolean;
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
    body: { parts: [] },
    subject: `message ${counter}`,
    from: 'carol@example.net',
    date: Date.UTC(2030, 0, 1) + counter,
    ...overrides,
  };
}

describe.each(testDatabases())('sync over HTTP: GET /api/v1/changes ($name)', (database) => {
  const http = testHttp();
  let fed: Federation;
  let mailbox: MailboxService;
  let server: RunningServer;
  let origin: string;
  let notifier: ChangeNotifier;
  /** A notifier whose periodic check never runs in a test: only `notify` wakes its polls. */
  let notifyOnly: ChangeNotifier;
  let messages: MessageStore;
  let changes: ChangeLog;
  let alice: User;
  let bob: User;

  /** One request as the webmail makes it: the access token and a fresh DPoP proof for this URL. */
  async function call(
    user: User,
    path: string,
    init: { method?: string; json?: unknown; signal?: AbortSignal } = {},
  ): Promise<Awaited<ReturnType<typeof http.fetch>>> {
    const method = init.method ?? 'GET';
    const url = `${origin}${path}`;
    const proof = await createDpopProof(user.key, { htm: method, htu: url, accessToken: user.token });
    return http.fetch(url, {
      method,
      body: init.json === undefined ? undefined : JSON.stringify(init.json),
      signal: init.signal,
      headers: {
        authorization: `DPoP ${user.token}`,
        dpop: proof,
        ...(init.json === undefined ? {} : { 'content-type': 'application/json' }),
      },
    });
  }
  const api = (user: User, path: string, init: Parameters<typeof call>[2] = {}) => call(user, `/api/v1${path}`, init);

  async function state(user: User): Promise<string> {
    const res = await api(user, '/state');
    expect(res.status).toBe(200);
    return ((await res.json()) as { state: string }).state;
  }

  async function poll(user: User, query: string, signal?: AbortSignal): Promise<Changes> {
    const res = await api(user, `/changes?${query}`, { signal });
    expect(res.status, await res.clone().text()).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    return (await res.json()) as Changes;
  }

  /** Waits until the server holds `n` polls: the request is then certainly waiting, not still reading. */
  const openPolls = (n: number) => vi.waitFor(() => expect(notifier.openPolls()).toBe(n), { timeout: 5_000 });

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
    changes = new ChangeLog(mailbox.knex);
    notifier = new ChangeNotifier({ changes });
    notifyOnly = new ChangeNotifier({ changes, intervalMs: 3_600_000 });
    const appPort = await freePort();
    origin = `http://127.0.0.1:${appPort}`;
    const httpGet: HttpGet = (url, init) => http.fetch(url, init) as unknown as Promise<globalThis.Response>;
    const auth = requireUser({
      issuer: domain.issuer,
      resource: `${mailboxUrl}/api/v1`,
      publicUrl: origin,
      keys: new IssuerKeys(domain.issuer, httpGet),
      replay: new KnexReplayStore(mailbox.knex, { table: 'mail_replay' }),
    });
    const app = express();
    app.use('/api/v1', auth, syncRouter({ changes, notifier }));
    app.use(
      '/api/v1',
      messagesRouter({
        messages,
        shares: new ShareStore(mailbox.knex),
        forwarding: new ForwardingStore(mailbox.knex),
        notifier: {
          notify: (address) => {
            notifier.notify(address);
            notifyOnly.notify(address);
          },
        },
      }),
    );
    app.use('/short', auth, syncRouter({ changes, notifier, maxWaitSeconds: 1 }));
    app.use('/notify-only', auth, syncRouter({ changes, notifier: notifyOnly }));
    app.use((err: Error, _req: Request, res: Response, _next: NextFunction) => {
      res.status(500).json({ error: 'server_error', error_description: err.message });
    });
    server = await listen(app, { port: appPort });

    alice = await userOf(domain, http, 'alice@example.com');
    bob = await userOf(domain, http, 'bob@example.com');
    return async () => {
      notifier.close();
      notifyOnly.close();
      await server.close();
      await mailbox.close();
      await knex.destroy();
      await db.destroy();
      await fed.close();
      await rm(blobDir, { recursive: true, force: true });
    };
  });
  afterAll(() => http.close());

  it('GET /state names the current state, and wait=0 answers at once with no changes', async () => {
    const s = await state(alice);
    expect(s).toMatch(/^[0-9]+$/);
    const res = await api(alice, '/state');
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(await poll(alice, `since=${s}&wait=0`)).toEqual({
      state: s,
      created: [],
      updated: [],
      destroyed: [],
      hasMore: false,
    });
    expect(await poll(alice, `since=${s}`)).toMatchObject({ state: s, created: [] });
    expect(notifier.openPolls()).toBe(0);
  });

  it('lists created, updated and destroyed ids, each once, and moves the state', async () => {
    const s0 = await state(alice);
    const a = await messages.create(newMessage(alice.address));
    const b = await messages.create(newMessage(alice.address));
    const c = await messages.create(newMessage(alice.address));
    const s1 = await state(alice);
    await messages.update(alice.address, a, { seen: true });
    await messages.delete(alice.address, b);
    const since0 = await poll(alice, `since=${s0}`);
    // b was created and destroyed since s0: destroyed (a client may have listed it in between).
    expect(since0).toMatchObject({ created: [a, c], updated: [], destroyed: [b], hasMore: false });
    const since1 = await poll(alice, `since=${s1}`);
    expect(since1).toMatchObject({ created: [], updated: [a], destroyed: [b], hasMore: false });
    expect(since1.state).toBe(since0.state);
    expect(since1.state).toBe(await state(alice));
    // Nothing of alice's reaches bob.
    const bobState = await state(bob);
    expect(await poll(bob, `since=${bobState}`)).toMatchObject({ created: [], updated: [], destroyed: [] });
  });

  it('maxChanges pages the changes with hasMore, and the pages join up', async () => {
    const s0 = await state(alice);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await messages.create(newMessage(alice.address)));
    const seen: string[] = [];
    let s = s0;
    let pages = 0;
    for (;;) {
      const page = await poll(alice, `since=${s}&maxChanges=2`);
      pages++;
      seen.push(...page.created);
      s = page.state;
      if (!page.hasMore) break;
    }
    expect(seen).toEqual(ids);
    expect(pages).toBe(3);
    expect(s).toBe(await state(alice));
  });

  it('a long poll (wait=10) answers with the change as soon as an API mutation happens', async () => {
    const id = await messages.create(newMessage(alice.address));
    const s = await state(alice);
    // Through the notifier without a periodic check: the PATCH's notify is what answers this poll.
    const pending = call(alice, `/notify-only/changes?since=${s}&wait=10`);
    await vi.waitFor(() => expect(notifyOnly.openPolls()).toBe(1), { timeout: 5_000 });
    const patched = await api(alice, `/messages/${id}`, { method: 'PATCH', json: { flagged: true } });
    expect(patched.status).toBe(200);
    const res = await pending;
    expect(res.status).toBe(200);
    const answer = (await res.json()) as Changes;
    expect(answer).toMatchObject({ created: [], updated: [id], destroyed: [], hasMore: false });
    expect(answer.state).not.toBe(s);
    expect(notifyOnly.openPolls()).toBe(0);
  });

  it('a long poll answers a change no notify announced (the periodic state check wakes it)', async () => {
    const s = await state(alice);
    const pending = poll(alice, `since=${s}&wait=10`);
    await openPolls(1);
    // Written straight to the database, as a worker recording a delivery status does (or another replica
    // while the channel between replicas is down).
    const id = await messages.create(newMessage(alice.address));
    const answer = await pending;
    expect(answer).toMatchObject({ created: [id], updated: [], destroyed: [] });
    expect(answer.state).toBe(await state(alice));
  });

  it('a change of another account, or a mutation that changes nothing, does not answer the poll', async () => {
    const id = await messages.create(newMessage(bob.address, { seen: true }));
    const s = await state(alice);
    const bobState = await state(bob);
    const alicePoll = poll(alice, `since=${s}&wait=4`);
    await openPolls(1);
    await messages.create(newMessage(bob.address));
    notifier.notify(bob.address);
    // A PATCH that sets what is already set records no change; the woken poll goes back to waiting.
    const bobPoll = poll(bob, `since=${await state(bob)}&wait=2`);
    await openPolls(2);
    expect((await api(bob, `/messages/${id}`, { method: 'PATCH', json: { seen: true } })).status).toBe(200);
    expect(await alicePoll).toMatchObject({ state: s, created: [], updated: [], destroyed: [] });
    expect(await bobPoll).toMatchObject({ created: [], updated: [], destroyed: [] });
    expect((await poll(bob, `since=${bobState}`)).created).toHaveLength(1);
  });

  it('a poll whose time is up answers with no changes; a wait above the maximum is lowered to it', async () => {
    const s = await state(alice);
    expect(await poll(alice, `since=${s}&wait=1`)).toEqual({
      state: s,
      created: [],
      updated: [],
      destroyed: [],
      hasMore: false,
    });
    const res = await call(alice, `/short/changes?since=${s}&wait=3600`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ state: s, created: [] });
  });

  it('a poll whose client disconnects is released (openPolls back to 0)', async () => {
    const s = await state(alice);
    const abort = new AbortController();
    const pending = poll(alice, `since=${s}&wait=10`, abort.signal);
    await openPolls(1);
    abort.abort();
    await expect(pending).rejects.toThrow();
    await openPolls(0);
    // The server still serves that account's next poll.
    const id = await messages.create(newMessage(alice.address));
    expect((await poll(alice, `since=${s}`)).created).toEqual([id]);
  });

  it('RFC 8620 §5.2: a state older than the retained log is 410 cannot_calculate_changes', async () => {
    const old = await state(alice);
    await messages.create(newMessage(alice.address));
    await messages.create(newMessage(alice.address));
    const current = await state(alice);
    await changes.pruneBefore(current, { address: alice.address });
    const res = await api(alice, `/changes?since=${old}&wait=5`);
    expect(res.status).toBe(410);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(await res.json()).toMatchObject({ error: 'cannot_calculate_changes' });
    // A state this account never reached is just as unanswerable.
    const future = await api(alice, `/changes?since=${Number(current) + 1000}`);
    expect(future.status).toBe(410);
    // The client starts again from GET /state.
    expect(await poll(alice, `since=${await state(alice)}`)).toMatchObject({ created: [], hasMore: false });
  });

  it('a state this server never issues is 400 invalid_state', async () => {
    for (const garbage of ['abc', '-1', '01', '1.5', '99999999999999999999', '%20']) {
      const res = await api(alice, `/changes?since=${garbage}`);
      expect(res.status, garbage).toBe(400);
      expect(await res.json(), garbage).toMatchObject({ error: 'invalid_state' });
    }
  });

  it('malformed parameters are 400 invalid_request with a precise description', async () => {
    const s = await state(alice);
    const cases: [string, RegExp][] = [
      ['', /since is required/],
      ['since=', /since is required/],
      [`since=${s}&since=${s}`, /since must be given once/],
      [`since=${s}&wait=abc`, /wait must be an integer/],
      [`since=${s}&wait=-1`, /wait must be an integer/],
      [`since=${s}&wait=1.5`, /wait must be an integer/],
      [`since=${s}&maxChanges=0`, /maxChanges must be an integer from 1 to 10000/],
      [`since=${s}&maxChanges=10001`, /maxChanges must be an integer from 1 to 10000/],
    ];
    for (const [query, description] of cases) {
      const res = await api(alice, `/changes?${query}`);
      expect(res.status, query).toBe(400);
      const body = (await res.json()) as { error: string; error_description: string };
      expect(body.error, query).toBe('invalid_request');
      expect(body.error_description, query).toMatch(description);
    }
  });

  it('polling needs a DPoP-bound access token', async () => {
    expect((await http.fetch(`${origin}/api/v1/changes?since=0`)).status).toBe(401);
    expect((await http.fetch(`${origin}/api/v1/state`)).status).toBe(401);
  });
});

describe('ChangeNotifier', () => {
  function stubLog(initial: string) {
    let current = initial;
    let reads = 0;
    return {
      state: async () => {
        reads++;
        return current;
      },
      set: (s: string) => {
        current = s;
      },
      reads: () => reads,
    };
  }

  it('notify wakes the waiters of that account only, and openPolls counts the waiting', async () => {
    const notifier = new ChangeNotifier({ changes: stubLog('1') });
    const a1 = notifier.wait('a@example.com', undefined, 10_000);
    const a2 = notifier.wait('a@example.com', undefined, 10_000);
    const b = notifier.wait('b@example.com', undefined, 50);
    expect(notifier.openPolls()).toBe(3);
    notifier.notify('a@example.com');
    expect(await a1).toBe('changed');
    expect(await a2).toBe('changed');
    expect(await b).toBe('timeout');
    expect(notifier.openPolls()).toBe(0);
    notifier.close();
  });

  it('the periodic check wakes a waiter whose state the account has left, and only then', async () => {
    const log = stubLog('5');
    const notifier = new ChangeNotifier({ changes: log, intervalMs: 60_000 });
    const behind = notifier.wait('a@example.com', undefined, 10_000, { state: '4' });
    const current = notifier.wait('a@example.com', undefined, 10_000, { state: '5' });
    const unknown = notifier.wait('a@example.com', undefined, 10_000);
    await notifier.check();
    expect(await behind).toBe('changed');
    expect(notifier.openPolls()).toBe(2);
    await notifier.check();
    expect(notifier.openPolls()).toBe(2);
    log.set('6');
    await notifier.check();
    expect(await current).toBe('changed');
    expect(await unknown).toBe('changed');
    const reads = log.reads();
    await notifier.check();
    expect(log.reads()).toBe(reads);
    notifier.close();
  });

  it('an abort releases the waiter; close releases all and later waits time out at once', async () => {
    const notifier = new ChangeNotifier({ changes: stubLog('1') });
    const abort = new AbortController();
    const aborted = notifier.wait('a@example.com', abort.signal, 10_000);
    const open = notifier.wait('b@example.com', undefined, 10_000);
    abort.abort();
    expect(await aborted).toBe('aborted');
    expect(await notifier.wait('a@example.com', abort.signal, 10_000)).toBe('aborted');
    expect(notifier.openPolls()).toBe(1);
    notifier.close();
    expect(await open).toBe('timeout');
    expect(await notifier.wait('a@example.com', undefined, 10_000)).toBe('timeout');
    expect(notifier.openPolls()).toBe(0);
  });

  /** A channel between replicas that the test drives: what `notify` publishes, and the listener to call. */
  function fakeChannel() {
    const published: string[] = [];
    let listener: ChangeListener | undefined;
    let closed = false;
    const channel: ChangeChannel = {
      start: (l) => {
        listener = l;
      },
      publish: (address) => void published.push(address),
      close: async () => {
        closed = true;
      },
    };
    return { channel, published, listener: () => listener!, closed: () => closed };
  }

  it("notify publishes to the other replicas; their notifications wake this replica's waiters", async () => {
    const fake = fakeChannel();
    const notifier = new ChangeNotifier({ changes: stubLog('1'), intervalMs: 3_600_000, channel: fake.channel });
    const local = notifier.wait('a@example.com', undefined, 10_000);
    notifier.notify('a@example.com');
    expect(await local).toBe('changed');
    expect(fake.published).toEqual(['a@example.com']);
    const remote = notifier.wait('b@example.com', undefined, 10_000);
    const other = notifier.wait('c@example.com', undefined, 10_000);
    fake.listener().changed('b@example.com');
    expect(await remote).toBe('changed');
    expect(notifier.openPolls()).toBe(1);
    expect(notifier.wakeCounts()).toEqual({ local: 1, replica: 1, check: 0 });
    // A replica's own notify is not published again by what it receives.
    expect(fake.published).toEqual(['a@example.com']);
    await notifier.close();
    expect(await other).toBe('timeout');
    expect(fake.closed()).toBe(true);
    notifier.notify('a@example.com');
    expect(fake.published).toEqual(['a@example.com']);
  });

  it('after a gap in the channel (resync), every waiting account is checked at once', async () => {
    const fake = fakeChannel();
    const log = stubLog('7');
    const notifier = new ChangeNotifier({ changes: log, intervalMs: 3_600_000, channel: fake.channel });
    const behind = notifier.wait('a@example.com', undefined, 10_000, { state: '6' });
    const current = notifier.wait('b@example.com', undefined, 200, { state: '7' });
    fake.listener().resync();
    expect(await behind).toBe('changed');
    expect(await current).toBe('timeout');
    expect(notifier.wakeCounts()).toEqual({ local: 0, replica: 0, check: 1 });
    await notifier.close();
  });

  it('a failing state read is reported and the check carries on', async () => {
    const errors: string[] = [];
    const notifier = new ChangeNotifier({
      changes: {
        state: async (address: string) => {
          if (address === 'bad@example.com') throw new Error('database down');
          return '2';
        },
      },
      onError: (_e, address) => errors.push(address),
    });
    const bad = notifier.wait('bad@example.com', undefined, 10_000, { state: '1' });
    const good = notifier.wait('good@example.com', undefined, 10_000, { state: '1' });
    await notifier.check();
    expect(await good).toBe('changed');
    expect(errors).toEqual(['bad@example.com']);
    notifier.close();
    expect(await bad).toBe('timeout');
  });
});

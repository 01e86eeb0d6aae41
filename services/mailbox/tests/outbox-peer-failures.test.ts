/**
 * The outbox against a peer that is dead, slow or misbehaving. The rule: such a peer gets a clear error and
 * loses nothing; the sender is told what happened to each recipient.
 *
 * example.com's side is the real Outbox on real stores (JobQueue, ShareStore, MessageStore) in a database of
 * its own, on a clock the tests move; its copies carry real assertions A1 from example.com's AS. example.net
 * is the real transfer endpoint (PROTOCOL §5) behind a scripted front on the same port, over real HTTP: the
 * front passes a request through, holds or trickles the real answer, or answers in the endpoint's place.
 * Bob's mailbox is example.net's real message store, so "no duplicate delivery" is counted where it lands.
 */
import express, { type NextFunction, type Request, type Response } from 'express';
import { generateKeyPair } from 'jose';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createLogger, listen } from '@federizer/common';
import { assertionDigest, exportDpopKey, dpopKeyOf, prepareSend, withAssertion } from '@federizer/protocol';
import { freePort, hostOf } from '../../auth/tests/harness.js';
import { MtaClient, sendParams, signIn } from '../../auth/tests/exchange-client.js';
import {
  JobQueue,
  MessageStore,
  NOT_NAMED,
  Outbox,
  ShareStore,
  TRANSFER_LEASE_MS,
  type Delivery,
  type OutboxDeps,
} from '../src/index.js';
import { TRANSFER_PATH, transferRouter } from '../src/federation/transfer.js';
import {
  clearMailboxTables,
  openMailboxDatabase,
  testDatabases,
  type MailboxTestDatabase,
} from '../src/storage/testing.js';
import { draft, startTransferHarness, type TransferHarness } from './transfer-harness.js';
import { until } from './fetch-helpers.js';

const HOUR = 3_600_000;
const RULE =
  'a dead, slow or misbehaving peer gets a clear error and loses nothing; the sender is told what happened to each recipient';

/** What the front of example.net does with the `n`th transfer request: `next()` passes it to the endpoint. */
type Script = (n: number, req: Request, res: Response, next: NextFunction) => void;
const passThrough: Script = (_n, _req, _res, next) => next();

/** Answers in the endpoint's place, once the request has been read. */
function answer(status: number, body: string, contentType = 'application/json'): Script {
  return (_n, req, res) => {
    req.resume();
    req.on('end', () => void res.writeHead(status, { 'content-type': contentType }).end(body));
  };
}

/** Lets the endpoint decide, then sends the head of its answer at once and the body when `release` is called. */
function holdingAnswer(): { script: Script; held: Promise<() => void> } {
  let onHeld!: (release: () => void) => void;
  const held = new Promise<() => void>((resolve) => (onHeld = resolve));
  const script: Script = (_n, _req, res, next) => {
    const end = res.end.bind(res) as (...args: unknown[]) => Response;
    res.end = ((...args: unknown[]) => {
      res.flushHeaders();
      onHeld(() => void end(...args));
      return res;
    }) as Response['end'];
    next();
  };
  return { script, held };
}

/**
 * Lets the endpoint decide, then sends the head of its answer and, instead of its body, a space every
 * `everyMs` (`0`: nothing at all): an answer that would parse if it ever ended, and never does.
 */
function tricklingAnswer(everyMs: number): Script {
  return (_n, _req, res, next) => {
    res.end = (() => {
      res.removeHeader('content-length');
      res.flushHeaders();
      if (everyMs > 0) {
        const timer = setInterval(() => res.write(' '), everyMs);
        res.on('close', () => clearInterval(timer));
      }
      return res;
    }) as Response['end'];
    next();
  };
}

describe.each(testDatabases())(`the outbox and a peer that fails: ${RULE} ($name)`, (database) => {
  let h: TransferHarness;
  let sender: MailboxTestDatabase;
  let front: { close(graceMs?: number): Promise<void> };
  let endpoint: string;
  let script: Script = passThrough;
  let requests = 0;
  /** How far example.com's clock is ahead of the wall clock. */
  let offsetMs = 0;
  const now = () => Date.now() + offsetMs;
  let jobs: JobQueue;
  let shares: ShareStore;
  let messages: MessageStore;
  let accessToken: string;
  let mta: MtaClient;
  let notices: { address: string; messageId: string; failed: { address: string; reason: string }[] }[];
  let logs: { level: number; msg: string; err?: { message?: string } }[];
  /** The outcomes the outboxes counted, as their runs ended. */
  let outcomes: string[];
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => void unhandled.push(reason);
  const outboxes: Outbox[] = [];
  let messageNumber = 0;

  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    h = await startTransferHarness(database);
    sender = await openMailboxDatabase(database);
    const port = await freePort();
    const publicUrl = `http://${hostOf('mail', 'example.net')}:${port}`;
    endpoint = `${publicUrl}${TRANSFER_PATH}`;
    const app = express();
    app.use(TRANSFER_PATH, (req, res, next) => script(++requests, req, res, next), transferRouter(h.deps(publicUrl)));
    front = await listen(app, { port });
    accessToken = (await signIn(h.com, h.http, 'alice@example.com', 'alice password')).accessToken;
    mta = await MtaClient.connect(h.com, h.http);
  });
  afterAll(async () => {
    await front?.close(100);
    await sender?.destroy();
    await h?.close();
    process.off('unhandledRejection', onUnhandled);
  });

  beforeEach(async () => {
    await clearMailboxTables(sender.knex);
    offsetMs = 0;
    script = passThrough;
    requests = 0;
    notices = [];
    logs = [];
    outcomes = [];
    unhandled.length = 0;
    jobs = new JobQueue(sender.knex, { now });
    shares = new ShareStore(sender.knex, { now });
    messages = new MessageStore(sender.knex, { now });
  });
  afterEach(async () => {
    for (const outbox of outboxes.splice(0)) await outbox.stop();
    // A rejection nobody handles ends a mailbox process (Node's default): none may happen.
    await new Promise((r) => setTimeout(r, 20));
    expect(unhandled).toEqual([]);
  });

  function outbox(overrides: Partial<OutboxDeps> = {}): Outbox {
    const logger = createLogger({
      name: 'outbox-test',
      level: 'debug',
      destination: { write: (line: string) => void logs.push(JSON.parse(line) as (typeof logs)[number]) },
    });
    const o = new Outbox({
      jobs,
      shares,
      mailboxOf: async () => ({ transfer_endpoint: endpoint }) as never,
      http: h.http,
      logger,
      now,
      notifyFailure: async (share, failed) =>
        void notices.push({ address: share.address, messageId: share.messageId, failed: [...failed] }),
      pollMs: HOUR,
      onOutcome: (outcome) => void outcomes.push(outcome),
      ...overrides,
    });
    outboxes.push(o);
    return o;
  }

  /**
   * What example.com's send does for one copy: A1 from its AS for alice's message, the sent message, the
   * share and its queued deliveries, and the transfer to example.net.
   */
  async function queueTransfer(to: string, jobQueue: JobQueue = jobs) {
    const messageId = `<outbox-${++messageNumber}-${Date.now()}@example.com>`;
    const message = draft({ messageId, to });
    const copy = prepareSend(message, { date: new Date() })[0]!;
    const pair = await generateKeyPair('ES256', { extractable: true });
    const a1 = await mta.exchange(sendParams(accessToken, copy.exchangeHeaders), { dpopKey: pair });
    const sentId = await messages.create({
      address: 'alice@example.com',
      mailbox: 'sent',
      messageId,
      threadId: messageId,
      envelope: message.envelope,
      body: message.body,
      subject: 'Transfer test',
      from: 'Alice <alice@example.com>',
      date: now(),
      seen: true,
      resources: [],
    });
    const share = await shares.create({
      message: sentId,
      address: 'alice@example.com',
      messageId,
      assertionDigest: assertionDigest(a1.token),
      envelope: withAssertion(copy.message, a1.token).envelope,
      recipients: copy.recipients,
      dpopKey: (await exportDpopKey(await dpopKeyOf(pair))) as Record<string, unknown>,
      expiresAt: Date.now() + 7 * 24 * HOUR,
    });
    const key = `${share}:example.net`;
    await jobQueue.enqueue('transfer', key, 'example.net', { share, domain: 'example.net' });
    return { messageId, share, key };
  }

  const job = async (key: string) => (await jobs.find('transfer', key))!;
  const statuses = async (share: string) =>
    Object.fromEntries(
      (await shares.deliveries({ share })).map((d: Delivery) => [d.recipient, [d.status, d.detail ?? null]]),
    );
  const inBobsMailbox = async (messageId: string) =>
    (await h.messages.byMessageId('bob@example.net', messageId)).length;
  const logged = (msg: string) => logs.filter((l) => l.msg === msg);
  const NOT_RECORDED = 'transfer outcome not recorded: its lease was taken over, and its new holder decides';

  /**
   * Lets the held answer go and waits for the run that was waiting for it to end (counted, or logged as not
   * recorded), or to reject: the worker is not stopped first, for stopping would handle that rejection.
   */
  async function releaseAndWait(release: () => void): Promise<void> {
    const before = { outcomes: outcomes.length, logs: logged(NOT_RECORDED).length };
    release();
    await until('the run holding the answer ended', async () =>
      outcomes.length > before.outcomes || logged(NOT_RECORDED).length > before.logs || unhandled.length > 0
        ? true
        : undefined,
    );
    await new Promise((r) => setTimeout(r, 20));
    // A rejection nobody handles ends a mailbox process (Node's default).
    expect(unhandled).toEqual([]);
  }

  it(`${RULE}: a transfer whose lease expires while the receiver holds its answer does not end the process, and is done once`, async () => {
    // The receiver accepts at once but sends its answer's body only later; meanwhile the 120 s lease runs
    // out (example.com's clock jumps past it) and this very worker claims the transfer again.
    const sent = await queueTransfer('bob@example.net');
    const { script: hold, held } = holdingAnswer();
    script = (n, req, res, next) => (n === 1 ? hold : passThrough)(n, req, res, next);
    const a = outbox();
    a.start();
    const release = await held;
    expect((await job(sent.key)).leaseOwner).toBe(a.owner);
    offsetMs += TRANSFER_LEASE_MS + 1000;
    a.wake();
    await until('the transfer claimed again', async () => ((await job(sent.key)).attempts === 2 ? true : undefined));
    await releaseAndWait(release);
    const done = await job(sent.key);
    await a.stop();
    // Once: one request (the run in flight settled it; no second run was started beside it), one copy for Bob.
    expect(done).toMatchObject({ status: 'done', attempts: 2, lastError: undefined });
    expect(requests).toBe(1);
    expect(await inBobsMailbox(sent.messageId)).toBe(1);
    expect(await statuses(sent.share)).toEqual({ 'bob@example.net': ['transferred', null] });
    expect(notices).toEqual([]);
  });

  it(`${RULE}: when another replica took over the expired lease and finished, the late answer is logged, not thrown`, async () => {
    const sent = await queueTransfer('bob@example.net');
    const { script: hold, held } = holdingAnswer();
    script = (n, req, res, next) => (n === 1 ? hold : passThrough)(n, req, res, next);
    const a = outbox();
    const b = outbox();
    a.start();
    const release = await held;
    offsetMs += TRANSFER_LEASE_MS + 1000;
    // The other replica's retry: example.net answers 200 with its recorded answer (PROTOCOL §5).
    await b.poll();
    expect(await job(sent.key)).toMatchObject({ status: 'done', attempts: 2 });
    await releaseAndWait(release);
    await a.stop();
    expect(logged(NOT_RECORDED)).toHaveLength(1);
    expect(await job(sent.key)).toMatchObject({ status: 'done', attempts: 2, lastError: undefined });
    expect(requests).toBe(2);
    expect(await inBobsMailbox(sent.messageId)).toBe(1);
    expect(await statuses(sent.share)).toEqual({ 'bob@example.net': ['transferred', null] });
    expect(notices).toEqual([]);
  });

  it(`${RULE}: a transfer that finds at its lease's renewal that another replica took it over stops, deciding nothing`, async () => {
    const sent = await queueTransfer('bob@example.net');
    // A lease of 6 s, renewed after 2 s; the answer trickles, so only the whole-request deadline (3 s) would end it.
    script = (n, req, res, next) => (n === 1 ? tricklingAnswer(200) : passThrough)(n, req, res, next);
    const a = outbox({ leaseMs: 6000 });
    const b = outbox({ leaseMs: 6000 });
    const first = a.poll();
    await until('the first transfer answering', async () => (requests === 1 ? true : undefined));
    offsetMs += 7000;
    await b.poll();
    expect(await job(sent.key)).toMatchObject({ status: 'done', attempts: 2 });
    await first;
    expect(logged('transfer stopped, its outcome not recorded: another worker holds its lease now')).toHaveLength(1);
    expect(outcomes).toEqual(['transferred']); // b's; a recorded nothing
    expect(await job(sent.key)).toMatchObject({ status: 'done', attempts: 2, lastError: undefined });
    expect(await statuses(sent.share)).toEqual({ 'bob@example.net': ['transferred', null] });
    expect(await inBobsMailbox(sent.messageId)).toBe(1);
    expect(notices).toEqual([]);
  });

  it(`${RULE}: a receiver that trickles or stalls its answer is cut off well inside the lease, renewed meanwhile, and retried`, async () => {
    const sent = await queueTransfer('bob@example.net');
    // A lease of 6 s: the request must end within 3 s, pause at most 1.5 s; the lease is renewed every 2 s.
    const o = outbox({ leaseMs: 6000 });
    script = tricklingAnswer(200);
    const first = o.poll();
    const claimed = await until('the transfer claimed', async () => (await job(sent.key)).leaseUntil);
    const renewed = await until('the lease renewed', async () => {
      const j = await job(sent.key);
      if (j.leaseUntil === undefined) throw new Error('the transfer ended before its lease was renewed');
      return j.leaseUntil > claimed ? j.leaseUntil : undefined;
    });
    expect(renewed).toBeGreaterThan(claimed);
    await first;
    const trickled = await job(sent.key);
    expect(trickled).toMatchObject({ status: 'pending', attempts: 1, leaseOwner: undefined });
    expect(trickled.lastError).toBe(`${endpoint} did not finish answering within 3 seconds`);
    expect(await statuses(sent.share)).toEqual({ 'bob@example.net': ['queued', null] });

    script = tricklingAnswer(0);
    expect(await jobs.advance('transfer', sent.key, now())).toBe(true);
    await o.poll();
    const stalled = await job(sent.key);
    expect(stalled).toMatchObject({ status: 'pending', attempts: 2 });
    expect(stalled.lastError).toBe(`${endpoint} sent nothing for 1.5 seconds`);

    script = passThrough;
    expect(await jobs.advance('transfer', sent.key, now())).toBe(true);
    await o.poll();
    expect(await job(sent.key)).toMatchObject({ status: 'done', attempts: 3 });
    expect(await statuses(sent.share)).toEqual({ 'bob@example.net': ['transferred', null] });
    expect(await inBobsMailbox(sent.messageId)).toBe(1);
    expect(notices).toEqual([]);
  });

  it(`${RULE}: a failure to record the outcome (the notice cannot be written) is logged, and the transfer is settled once its lease expires`, async () => {
    const sent = await queueTransfer('bob@example.net');
    script = answer(403, '{"error":"forbidden","error_description":"sender not allowed"}');
    let full = true;
    const o = outbox({
      notifyFailure: async (share, failed) => {
        if (full) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        notices.push({ address: share.address, messageId: share.messageId, failed: [...failed] });
      },
    });
    await o.poll();
    expect(logged('transfer outcome not recorded; the transfer is retried when its lease expires')).toHaveLength(1);
    // Nothing decided: still leased (to be taken up when the lease expires), the delivery still queued.
    expect(await job(sent.key)).toMatchObject({ status: 'pending', attempts: 1, leaseOwner: o.owner });
    expect(await statuses(sent.share)).toEqual({ 'bob@example.net': ['queued', null] });

    full = false;
    offsetMs += TRANSFER_LEASE_MS + 1000;
    await o.poll();
    const reason = `${endpoint} answered 403 forbidden: sender not allowed`;
    expect(await job(sent.key)).toMatchObject({ status: 'failed', attempts: 2, lastError: reason });
    expect(await statuses(sent.share)).toEqual({ 'bob@example.net': ['failed', reason] });
    expect(notices).toEqual([
      { address: 'alice@example.com', messageId: sent.messageId, failed: [{ address: 'bob@example.net', reason }] },
    ]);
  });

  it(`${RULE}: a 200/202 whose body is not a transfer answer is retried with a clear error, and nothing is recorded`, async () => {
    const sent = await queueTransfer('Bob <bob@example.net>, Carol <carol@example.net>');
    const o = outbox();
    const bodies: [string, string, string][] = [
      ['<html><body>OK</body></html>', 'text/html', 'it is not JSON'],
      ['', 'application/json', 'it is empty'],
      ['{"accepted":"bob@example.net"}', 'application/json', '"accepted" is not a list'],
      // A malformed rejection beside a recipient accepted: bob must not end up failed, nor carol.
      [
        '{"accepted":["bob@example.net"],"rejected":["carol@example.net"]}',
        'application/json',
        '"rejected" holds something that is not an {address, reason} object',
      ],
      [
        '{"accepted":["bob@example.net"],"rejected":[{"address":"carol@example.net"}]}',
        'application/json',
        '"rejected" holds something that is not an {address, reason} object',
      ],
    ];
    for (const [i, [body, contentType, why]] of bodies.entries()) {
      script = answer(202, body, contentType);
      if (i > 0) expect(await jobs.advance('transfer', sent.key, now())).toBe(true);
      await o.poll();
      const j = await job(sent.key);
      expect(j, body).toMatchObject({ status: 'pending', attempts: i + 1, leaseOwner: undefined });
      expect(j.lastError, body).toBe(`example.net answered 202 with a body that is not a transfer answer: ${why}`);
      expect(await statuses(sent.share), body).toEqual({
        'bob@example.net': ['queued', null],
        'carol@example.net': ['queued', null],
      });
    }
    expect(notices).toEqual([]);
    // The receiver's real answer, once it comes, settles both.
    script = passThrough;
    expect(await jobs.advance('transfer', sent.key, now())).toBe(true);
    await o.poll();
    expect(await job(sent.key)).toMatchObject({ status: 'done' });
    expect(await statuses(sent.share)).toEqual({
      'bob@example.net': ['transferred', null],
      'carol@example.net': ['transferred', null],
    });
    expect(notices).toEqual([]);
  });

  it(`${RULE}: recipients a well-formed answer names in neither list are failed and the sender told, not left queued`, async () => {
    const sent = await queueTransfer('Bob <bob@example.net>, Carol <carol@example.net>');
    script = answer(202, '{"accepted":["bob@example.net"],"rejected":[]}');
    await outbox().poll();
    expect(await job(sent.key)).toMatchObject({ status: 'done', attempts: 1 });
    expect(await statuses(sent.share)).toEqual({
      'bob@example.net': ['transferred', null],
      'carol@example.net': ['failed', NOT_NAMED],
    });
    expect(NOT_NAMED).toBe("not named in the receiver's answer");
    expect(notices).toEqual([
      {
        address: 'alice@example.com',
        messageId: sent.messageId,
        failed: [{ address: 'carol@example.net', reason: NOT_NAMED }],
      },
    ]);
  });

  it(`${RULE}: 408 Request Timeout is temporary (RFC 9110 §15.5.9: the request may be repeated)`, async () => {
    const sent = await queueTransfer('bob@example.net');
    script = answer(408, '{"error":"request_timeout","error_description":"the request took too long"}');
    const o = outbox();
    await o.poll();
    const j = await job(sent.key);
    expect(j).toMatchObject({ status: 'pending', attempts: 1, leaseOwner: undefined });
    expect(j.lastError).toBe(`${endpoint} answered 408 request_timeout: the request took too long`);
    expect(await statuses(sent.share)).toEqual({ 'bob@example.net': ['queued', null] });
    expect(notices).toEqual([]);
    script = passThrough;
    expect(await jobs.advance('transfer', sent.key, now())).toBe(true);
    await o.poll();
    expect(await job(sent.key)).toMatchObject({ status: 'done', attempts: 2 });
    expect(await inBobsMailbox(sent.messageId)).toBe(1);
  });

  it(`${RULE}: the give-up notice says how long the transfer was tried, not "5 days" whatever the setting`, async () => {
    jobs = new JobQueue(sender.knex, { now, giveUpAfterMs: HOUR });
    const sent = await queueTransfer('bob@example.net', jobs);
    script = answer(503, '{"error":"unavailable","error_description":"retry later"}');
    const o = outbox();
    await o.poll();
    expect(await job(sent.key)).toMatchObject({ status: 'pending', attempts: 1 });
    offsetMs += 2 * HOUR;
    await o.poll();
    const reason = `gave up after 2 hours: ${endpoint} answered 503 unavailable: retry later`;
    expect(await job(sent.key)).toMatchObject({ status: 'failed', attempts: 2 });
    expect(await statuses(sent.share)).toEqual({ 'bob@example.net': ['failed', reason] });
    expect(notices).toEqual([
      { address: 'alice@example.com', messageId: sent.messageId, failed: [{ address: 'bob@example.net', reason }] },
    ]);
  });
});

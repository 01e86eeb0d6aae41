/**
 * Scenario 5: example.net is down for a while. Alice's message to Bob stays queued in example.com's
 * outbox, which retries with backoff (nothing is lost, nothing fails, the sender is not told of a failure);
 * once example.net is back, the retry delivers it, exactly once, and Bob's mailbox fetches it.
 *
 * The outbox retries with "equal jitter" from a base that doubles (`retryDelayMs` in
 * services/mailbox/src/storage/jobs.ts): a minute by default. The federation here runs its mailboxes with
 * a base of 2 s (`FEDERIZER_MAILBOX_RETRY_BASE`, the `mailbox` settings of startLocalFederation), so the
 * retries while example.net is down, and the one that delivers, come within seconds.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  TRANSFER_ROUTE,
  arrived,
  copiesOf,
  deliveries,
  draft,
  list,
  messageIdOf,
  render,
  requests,
  send,
  startScenario,
  until,
  upload,
  type Scenario,
} from './helpers.js';

async function refused(url: string): Promise<boolean> {
  try {
    await fetch(url);
    return false;
  } catch (e) {
    return ((e as Error).cause as NodeJS.ErrnoException | undefined)?.code === 'ECONNREFUSED';
  }
}

const RETRY_BASE_SECONDS = 2;

describe('scenario 5: example.net down for a while, then back', () => {
  let s: Scenario;
  beforeAll(async () => {
    s = await startScenario({ processes: true, mailbox: { retryBaseSeconds: RETRY_BASE_SECONDS } });
  });
  afterAll(() => s?.close());

  it('the message stays queued with retries while example.net is down, and is delivered once it is back', async () => {
    const alice = await s.user('alice@example.com');
    const bob = await s.user('bob@example.net');
    // A first message, so that example.com knows example.net (its mailbox document is cached, as in a
    // federation that has been running): the outage is then met at the transfer itself.
    const hello = draft({
      from: 'alice@example.com',
      to: 'bob@example.net',
      subject: 'Hello',
      parts: [{ resource: await upload(alice, 'Hello Bob.\n', 'text/plain') }],
    });
    await send(alice, hello);
    await arrived(bob, messageIdOf(hello), { held: true });

    const net = s.fed.domains['example.net']!;
    await s.fed.stopDomain('example.net');
    expect(await refused(`http://127.0.0.1:${net.ports.mailbox}/healthz`)).toBe(true);
    const before = await s.metrics('example.com');
    const text = 'Bob,\n\nthis one was written while your server was down.\n';
    const message = draft({
      from: 'Alice <alice@example.com>',
      to: 'Bob <bob@example.net>',
      subject: 'While you were down',
      parts: [{ resource: await upload(alice, text, 'text/plain; charset=utf-8') }],
    });
    const messageId = messageIdOf(message);
    const sent = await send(alice, message);
    expect(sent.deliveries.map((d) => d.status)).toEqual(['queued']);

    // The first attempt fails (connection refused) and is put back in the queue, not failed.
    const afterAttempt = await until('a failed transfer attempt retried', async () => {
      const m = await s.metrics('example.com');
      const retried = m.value('federizer_mailbox_deliveries_total', { outcome: 'retried' });
      return retried > before.value('federizer_mailbox_deliveries_total', { outcome: 'retried' }) ? m : undefined;
    });
    expect(afterAttempt.value('federizer_mailbox_deliveries_total', { outcome: 'failed' })).toBe(
      before.value('federizer_mailbox_deliveries_total', { outcome: 'failed' }),
    );
    expect(afterAttempt.value('federizer_mailbox_queue_depth', { kind: 'transfer' })).toBe(1);
    expect((await deliveries(alice, sent.id)).map((d) => d.status)).toEqual(['queued']);
    // Still queued a while later, and Alice is not told of a failure.
    await new Promise((r) => setTimeout(r, 3000));
    const still = await s.metrics('example.com');
    expect(still.value('federizer_mailbox_queue_depth', { kind: 'transfer' })).toBe(1);
    expect(still.value('federizer_mailbox_queue_oldest_age_seconds', { kind: 'transfer' })).toBeGreaterThanOrEqual(3);
    expect((await deliveries(alice, sent.id)).map((d) => d.status)).toEqual(['queued']);
    expect((await list(alice)).filter((m) => m.subject.startsWith('Undeliverable'))).toEqual([]);

    await s.fed.startDomain('example.net');
    const bobAgain = await s.user('bob@example.net');
    // The retries back off from 2 s while example.net is down (1-2 s, 2-4 s, 4-8 s, ...); the one after the
    // restart is due within twice the time it has been down, far sooner than the default's 30 to 60 s.
    const got = await arrived(bobAgain, messageId, { held: true, timeoutMs: 60_000 });
    expect((await render(bobAgain, got)).text).toBe(text);
    expect(await copiesOf(bobAgain, messageId)).toHaveLength(1);
    const done = await until('the delivery fetched', async () => {
      const d = await deliveries(alice, sent.id);
      return d[0]?.status === 'fetched' ? d : undefined;
    });
    expect(done[0]).toMatchObject({ recipient: 'bob@example.net', fetchedBy: 'example.net' });
    const after = await s.metrics('example.com');
    expect(after.value('federizer_mailbox_queue_depth', { kind: 'transfer' })).toBe(0);
    expect(
      after.value('federizer_mailbox_deliveries_total', { outcome: 'transferred' }) -
        before.value('federizer_mailbox_deliveries_total', { outcome: 'transferred' }),
    ).toBe(1);
    // example.net took the transfer once (its counters began again at its restart).
    expect(requests(await s.metrics('example.net'), 'POST', TRANSFER_ROUTE, 202)).toBe(1);
  }, 150_000);
});

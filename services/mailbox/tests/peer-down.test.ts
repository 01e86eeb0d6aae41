/**
 * A peer that is down (issue: "a peer that is down is retried with backoff and delivered after it
 * returns"): example.net's mailbox is stopped while Alice of example.com writes to Bob. Her outbox's
 * attempts fail, each one rescheduled later than the last (a minute, then two, with jitter), the job still
 * pending and the delivery still `queued`. Once example.net runs again, on the same port with the same
 * database, the retry made due delivers the message, which Bob's mailbox fetches: exactly once.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testDatabases } from '../../common/src/testing/databases.js';
import { testHttp } from '../../auth/tests/exchange-client.js';
import { RETRY_BASE_MS, type Job } from '../src/index.js';
import { allHeld, fetchRequestsServed, received, sendMessage, until, upload } from './fetch-helpers.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';

describe.each(testDatabases())('a peer that is down ($name)', (database) => {
  let fed: MailFederation;
  let alice: UserClient;
  let bob: UserClient;
  const http = testHttp();

  const com = () => fed.domains['example.com']!.mailbox;

  async function metric(name: string): Promise<number> {
    const text = await (await http.fetch(`${com().url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(name));
    return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
  }

  /** The transfer job once the attempt `attempts` has ended (its lease handed back). */
  function attempted(key: string, attempts: number): Promise<Job> {
    return until(`attempt ${attempts} of ${key} over`, async () => {
      const job = await com().jobs.find('transfer', key);
      return job !== undefined && job.attempts >= attempts && job.leaseOwner === undefined ? job : undefined;
    });
  }

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net'], { database: database.create });
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password');
    alice = await fed.user('alice@example.com', 'alice password');
    bob = await fed.user('bob@example.net', 'bob password');
  });
  afterAll(async () => {
    await http.close();
    await fed?.close();
  });

  it('retries with backoff while example.net is down, and delivers once it is back', async () => {
    // example.com has met example.net before (its mailbox document is cached), as after earlier mail.
    await com().discovery.mailbox('example.net');
    const retriedBefore = await metric('federizer_mailbox_deliveries_total{outcome="retried"');
    const fetchesBefore = await fetchRequestsServed(http, com().url);
    await fed.stop('example.net');

    const photo = await upload(alice, randomBytes(20_000), 'image/jpeg');
    const sent = await sendMessage(alice, {
      to: ['bob@example.net'],
      subject: 'While you were down',
      resources: [photo],
    });
    const [share] = await com().shares.sharesOf(sent.sentId);
    const key = `${share!.id}:example.net`;

    // First attempt: refused connection; the job waits between half a minute and a minute (60 s, jittered).
    const first = await attempted(key, 1);
    expect(first).toMatchObject({ status: 'pending', attempts: 1 });
    expect(first.lastError).toMatch(/did not answer/);
    expect(first.nextAttemptAt - first.updatedAt).toBeGreaterThanOrEqual(RETRY_BASE_MS / 2 - 1000);
    expect(first.nextAttemptAt - first.updatedAt).toBeLessThanOrEqual(RETRY_BASE_MS);
    const queued = (await (await alice.api(`/messages/${sent.sentId}/deliveries`)).json()) as {
      deliveries: { recipient: string; status: string }[];
    };
    expect(queued.deliveries).toMatchObject([{ recipient: 'bob@example.net', status: 'queued' }]);

    // The retry made due while example.net is still down: the next wait doubles (120 s, jittered).
    expect(await com().jobs.advance('transfer', key)).toBe(true);
    const second = await attempted(key, 2);
    expect(second).toMatchObject({ status: 'pending', attempts: 2 });
    expect(second.nextAttemptAt - second.updatedAt).toBeGreaterThanOrEqual(RETRY_BASE_MS - 1000);
    expect(second.nextAttemptAt - second.updatedAt).toBeLessThanOrEqual(2 * RETRY_BASE_MS);
    const retried = await until('both failed attempts counted', async () => {
      const n = (await metric('federizer_mailbox_deliveries_total{outcome="retried"')) - retriedBefore;
      return n >= 2 ? n : undefined;
    });
    expect(retried).toBe(2);

    // example.net is back, same port and database; the retry made due again delivers.
    await fed.restart('example.net');
    expect(await com().jobs.advance('transfer', key)).toBe(true);
    const arrived = await received(bob, sent.messageId);
    const held = await allHeld(bob, arrived.id);
    expect(held.resources).toEqual([{ contentId: photo.contentId, size: photo.size, status: 'held' }]);
    const download = await bob.api(`/resources/${photo.contentId.slice(1, -1)}`);
    expect(Buffer.from(await download.arrayBuffer()).equals(photo.bytes)).toBe(true);
    const fetched = await until('the delivery marked fetched', async () => {
      const d = (await (await alice.api(`/messages/${sent.sentId}/deliveries`)).json()) as {
        deliveries: { status: string; fetchedBy?: string }[];
      };
      return d.deliveries[0]?.status === 'fetched' ? d.deliveries[0] : undefined;
    });
    expect(fetched.fetchedBy).toBe('example.net');

    // Exactly once: one transfer completed, one copy in Bob's mailbox, one fetch of the photo. (The workers
    // record the end of their jobs just after the effects the client saw.)
    const net = fed.domains['example.net']!.mailbox;
    const transfer = await until('the transfer job done', async () => {
      const job = await com().jobs.find('transfer', key);
      return job?.status === 'done' ? job : undefined;
    });
    expect(transfer.attempts).toBe(3);
    const fetch = await until('the fetch job done', async () => {
      const job = await net.jobs.find('fetch', photo.contentId);
      return job?.status === 'done' ? job : undefined;
    });
    expect(fetch.attempts).toBe(1);
    expect(await net.messages.byMessageId('bob@example.net', sent.messageId)).toHaveLength(1);
    expect((await fetchRequestsServed(http, com().url)) - fetchesBefore).toBe(1);
    const transferred = await until('the transfer counted', async () => {
      const n = await metric('federizer_mailbox_deliveries_total{outcome="transferred"');
      return n > 0 ? n : undefined;
    });
    expect(transferred).toBe(1);
  });
});

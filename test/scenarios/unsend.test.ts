/**
 * Scenario 7: unsend before the fetch. Alice sends Bob a private note and withdraws it after example.net
 * has taken the Placeholder but before its mailbox has fetched the note. Bob's mailbox then asks
 * example.com for it, which answers 410; Bob keeps the Placeholder, marked failed, and never the bytes.
 *
 * To hold the fetch back without touching example.net, its fetch worker is kept busy first with large
 * fetches from example.org and example.edu, whose processes are frozen mid-answer (`occupyFetchWorker`).
 * Alice's transfer is taken meanwhile (the transfer endpoint needs no fetch worker), and her note's fetch
 * waits until the frozen domains are thawed, after the unsend.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FETCH_ROUTE,
  HOG_DOMAINS,
  HOG_MAILBOX,
  arrived,
  deliveries,
  download,
  draft,
  list,
  messageIdOf,
  occupyFetchWorker,
  partialSize,
  read,
  requests,
  send,
  sleep,
  startScenario,
  until,
  upload,
  type Scenario,
} from './helpers.js';

describe('scenario 7: unsend before the fetch', () => {
  let s: Scenario;
  let thaw: () => void = () => undefined;

  beforeAll(async () => {
    s = await startScenario({
      processes: true,
      domains: ['example.com', 'example.net', ...HOG_DOMAINS],
      mailbox: HOG_MAILBOX,
    });
  });
  afterAll(async () => {
    thaw();
    await s?.close();
  });

  it('the fetch after the unsend is answered 410, and Bob never gets the note', async () => {
    ({ thaw } = await occupyFetchWorker(s));

    const alice = await s.user('alice@example.com');
    const bob = await s.user('bob@example.net');
    const note = await upload(alice, 'Bob, the code of the safe is 4711.\n', 'text/plain');
    const message = draft({
      from: 'alice@example.com',
      to: 'bob@example.net',
      subject: 'Oops',
      parts: [{ resource: note }],
    });
    const messageId = messageIdOf(message);
    const sent = await send(alice, message);
    const placeholder = await arrived(bob, messageId);
    expect(placeholder.resources).toEqual([{ contentId: note.contentId, size: note.size, status: 'pending' }]);
    await until('the transfer acknowledged', async () =>
      (await deliveries(alice, sent.id))[0]?.status === 'transferred' ? true : undefined,
    );
    // Several polls of example.net's fetch worker later, the note is still not fetched: no place is free.
    const fetchesBefore = requests(await s.metrics('example.com'), 'POST', FETCH_ROUTE);
    await sleep(2500);
    expect((await read(bob, placeholder.id)).resources[0]!.status).toBe('pending');
    expect(requests(await s.metrics('example.com'), 'POST', FETCH_ROUTE)).toBe(fetchesBefore);

    const unsent = await alice.api(`/messages/${sent.id}/unsend`, { method: 'POST', json: {} });
    expect(unsent.status).toBe(200);
    expect(await unsent.json()).toEqual({ withdrawn: ['bob@example.net'], fetched: [], unknown: [] });
    expect((await deliveries(alice, sent.id)).map((d) => d.status)).toEqual(['withdrawn']);

    thaw();
    const failed = await until(
      "the note's fetch refused",
      async () => {
        const m = await read(bob, placeholder.id);
        return m.resources[0]!.status === 'failed' ? m : undefined;
      },
      120_000,
    );
    // Bob's client is told why: the origin's answer to the fetch.
    expect(failed.resources).toEqual([
      {
        contentId: note.contentId,
        size: note.size,
        status: 'failed',
        failure: expect.stringMatching(/answered 410 Gone: .*the sender withdrew this message/),
      },
    ]);
    // example.com answered that fetch 410 (the sender withdrew it), and nothing else for the note.
    const origin = await s.metrics('example.com');
    expect(requests(origin, 'POST', FETCH_ROUTE, 410)).toBe(1);
    expect(requests(origin, 'POST', FETCH_ROUTE)).toBe(fetchesBefore + 1);
    // Bob never gets the bytes: not in his mailbox, not on example.net's disk.
    expect((await download(bob, note.contentId)).res.status).toBe(404);
    expect((await partialSize(s, 'example.net', note.contentId)) ?? 0).toBe(0);
    expect((await list(bob)).filter((m) => m.messageId === messageId)).toHaveLength(1);
    // The fetch worker went on with its other work: the large files arrived whole.
    for (const subject of ['Two big files from example.org', 'Two big files from example.edu']) {
      const entry = (await list(bob)).find((m) => m.subject === subject)!;
      await arrived(bob, entry.messageId, { held: true, timeoutMs: 120_000 });
    }
  }, 300_000);
});

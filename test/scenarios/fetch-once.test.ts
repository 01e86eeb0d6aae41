/**
 * Scenario 8: one 10 MB attachment sent to five users of example.net is fetched once (PROTOCOL.md §6.4:
 * resources are content-addressed, and a Content-ID the fetching mailbox holds is never fetched again).
 * Three of the five are visible recipients and two are in Bcc, so three signed copies travel to example.net,
 * yet example.com's fetch endpoint serves each resource once, and every recipient downloads it whole.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FETCH_ROUTE,
  TRANSFER_ROUTE,
  arrived,
  downloadDigest,
  draft,
  messageIdOf,
  requests,
  send,
  startScenario,
  upload,
  type Scenario,
} from './helpers.js';

const SIZE = 10 * 1024 * 1024;
const RECIPIENTS = [
  'bob@example.net',
  'carol@example.net',
  'dave@example.net',
  'erin@example.net',
  'frank@example.net',
];

describe('scenario 8: one attachment for five users of a domain', () => {
  let s: Scenario;
  beforeAll(async () => {
    s = await startScenario({ processes: false });
    for (const address of RECIPIENTS.slice(1)) await s.createUser(address);
  });
  afterAll(() => s?.close());

  it('is fetched once from example.com, and each of the five has it', async () => {
    const alice = await s.user('alice@example.com');
    const before = { com: await s.metrics('example.com'), net: await s.metrics('example.net') };
    const report = await upload(alice, randomBytes(SIZE), 'application/pdf');
    const note = await upload(alice, 'The annual report, for the five of you.\n', 'text/plain; charset=utf-8');
    const message = draft({
      from: 'alice@example.com',
      to: 'bob@example.net, carol@example.net',
      cc: 'dave@example.net',
      bcc: 'erin@example.net, frank@example.net',
      subject: 'Annual report',
      parts: [{ resource: note }, { resource: report, filename: 'report.pdf' }],
    });
    const messageId = messageIdOf(message);
    const sent = await send(alice, message);
    expect(sent.copies).toBe(3);

    for (const address of RECIPIENTS) {
      const user = await s.user(address);
      const m = await arrived(user, messageId, { held: true, timeoutMs: 60_000 });
      expect(m.resources.map((r) => r.contentId).sort()).toEqual([note.contentId, report.contentId].sort());
      expect(await downloadDigest(user, report.contentId)).toEqual({
        status: 200,
        contentId: report.contentId,
        size: SIZE,
      });
    }

    const com = await s.metrics('example.com');
    const net = await s.metrics('example.net');
    // Three copies were transferred (one per distinct view)...
    expect(requests(net, 'POST', TRANSFER_ROUTE, 202) - requests(before.net, 'POST', TRANSFER_ROUTE, 202)).toBe(3);
    // ...and each resource fetched once: two fetches, 10 MB and the note, all answered whole.
    expect(requests(com, 'POST', FETCH_ROUTE) - requests(before.com, 'POST', FETCH_ROUTE)).toBe(2);
    expect(requests(com, 'POST', FETCH_ROUTE, 200) - requests(before.com, 'POST', FETCH_ROUTE, 200)).toBe(2);
    expect(
      net.value('federizer_mailbox_fetched_bytes_total') - before.net.value('federizer_mailbox_fetched_bytes_total'),
    ).toBe(SIZE + note.size);
    expect(
      net.value('federizer_mailbox_fetch_duration_seconds_count') -
        before.net.value('federizer_mailbox_fetch_duration_seconds_count'),
    ).toBe(2);
  }, 120_000);
});

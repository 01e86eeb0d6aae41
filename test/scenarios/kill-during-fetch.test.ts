/**
 * Scenario 6: `kill -9` of the receiving domain while its mailbox fetches a large attachment. Alice sends
 * Bob a 160 MiB file; once example.net's fetch has written part of it, the process of example.net is killed
 * with SIGKILL (no graceful stop: no lease handed back, no file closed). Started again on the same data,
 * its mailbox resumes the fetch with Range from the bytes it kept, publishes the resource only under its
 * digest, and Bob has the message exactly once, whole and verified.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FETCH_ROUTE,
  arrived,
  bigFile,
  copiesOf,
  deliveries,
  draft,
  downloadDigest,
  list,
  messageIdOf,
  partialSize,
  requests,
  send,
  startScenario,
  until,
  upload,
  uploadFile,
  type Scenario,
} from './helpers.js';

const SIZE = 160 * 1024 * 1024;

describe('scenario 6: kill -9 of the receiving domain during a fetch', () => {
  let s: Scenario;

  beforeAll(async () => {
    s = await startScenario({ processes: true });
  });
  afterAll(() => s?.close());

  it('after the restart the resource is complete and verified, and the message appears exactly once', async () => {
    const alice = await s.user('alice@example.com');
    const file = join(s.dir, 'film.bin');
    const cid = await bigFile(file, SIZE, 'scenario 6');
    const film = await uploadFile(s, 'alice@example.com', undefined, file, 'video/mp4');
    expect(film).toMatchObject({ contentId: cid, size: SIZE });
    const note = await upload(alice, 'The film of the trip, 160 MiB.\n', 'text/plain; charset=utf-8');
    const message = draft({
      from: 'alice@example.com',
      to: 'bob@example.net',
      subject: 'The film',
      parts: [{ resource: note }, { resource: film, filename: 'trip.mp4' }],
    });
    const messageId = messageIdOf(message);
    const sent = await send(alice, message);

    // Killed once a part of the file is on example.net's disk, and well before all of it is.
    const net = s.fed.domains['example.net']!;
    const pid = net.pid!;
    let atKill = 0;
    const deadline = Date.now() + 60_000;
    for (;;) {
      const size = (await partialSize(s, 'example.net', cid)) ?? 0;
      if (size >= 4 * 1024 * 1024) {
        await s.fed.stopDomain('example.net', { kill: true });
        atKill = (await partialSize(s, 'example.net', cid)) ?? 0;
        break;
      }
      if (Date.now() > deadline) throw new Error(`the fetch did not start within 60 s (partial: ${size} bytes)`);
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(net.running).toBe(false);
    expect(() => process.kill(pid, 0)).toThrow(); // the process is gone
    // The kill came mid-fetch: what is on disk is a strict prefix of the file.
    expect(atKill).toBeGreaterThan(0);
    expect(atKill).toBeLessThan(SIZE);

    await s.fed.startDomain('example.net');
    const bob = await s.user('bob@example.net');
    // The restarted mailbox takes up the fetch its killed predecessor had claimed, at once: the lease of a dead
    // process of this host is taken back at start (LeasedWorker), not waited out (a minute for a fetch).
    const whole = await arrived(bob, messageId, { held: true, timeoutMs: 120_000 });
    expect(whole.resources.map((r) => [r.contentId, r.size, r.status]).sort()).toEqual(
      [
        [note.contentId, note.size, 'held'],
        [cid, SIZE, 'held'],
      ].sort(),
    );
    expect(await partialSize(s, 'example.net', cid)).toBeUndefined();

    // Bob downloads the film: every byte, hashing to its Content-ID.
    expect(await downloadDigest(bob, cid)).toEqual({ status: 200, contentId: cid, size: SIZE });
    // Exactly once, in every mailbox of Bob's.
    expect(await copiesOf(bob, messageId)).toHaveLength(1);
    expect((await list(bob)).filter((m) => m.messageId === messageId)).toHaveLength(1);

    // The fetch resumed where it stopped (a Range request answered 206), rather than starting over.
    const origin = await s.metrics('example.com');
    expect(requests(origin, 'POST', FETCH_ROUTE, 206)).toBe(1);
    const receiver = await s.metrics('example.net');
    expect(receiver.value('federizer_mailbox_fetched_bytes_total')).toBeLessThanOrEqual(SIZE - atKill);
    await until('the delivery marked fetched', async () =>
      (await deliveries(alice, sent.id))[0]?.status === 'fetched' ? true : undefined,
    );
  }, 300_000);
});

/**
 * A companion of scenarios 5 and 6, found by the federation benchmark: the sender's domain is unreachable
 * for a moment when the receiving mailbox starts its fetch. Alice's message reaches example.net; before
 * example.net's mailbox fetches it, example.com goes down. The fetch cannot happen now, and must happen later:
 * like a transfer to a domain that is down (scenario 5), it is retried, and Bob gets the message once
 * example.com is back. Losing it for good would turn a blip of the sender's domain into lost mail.
 *
 * The fetch is held back until example.com is down by keeping example.net's fetch worker busy first
 * (`occupyFetchWorker`); example.net itself is never touched.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  HOG_DOMAINS,
  HOG_MAILBOX,
  arrived,
  draft,
  messageIdOf,
  occupyFetchWorker,
  read,
  send,
  startScenario,
  until,
  upload,
  type Scenario,
} from './helpers.js';

interface LogEntry {
  msg?: string;
  contentId?: string;
  reason?: string;
}

describe('the origin domain down when the fetch starts', () => {
  let s: Scenario;
  let thaw: () => void = () => undefined;

  beforeAll(async () => {
    s = await startScenario({
      processes: true,
      domains: ['example.com', 'example.net', ...HOG_DOMAINS],
      // Retries come 2.5 to 5 s after a first failure (production: 30 to 60 s), doubling after each.
      mailbox: { ...HOG_MAILBOX, retryBaseSeconds: 5 },
    });
  });
  afterAll(async () => {
    thaw();
    await s?.close();
  });

  it('the fetch is retried rather than failed, and Bob gets the message once example.com is back', async () => {
    ({ thaw } = await occupyFetchWorker(s));
    const alice = await s.user('alice@example.com');
    const bob = await s.user('bob@example.net');
    const text = 'Bob, the minutes of the board meeting.\n';
    const note = await upload(alice, text, 'text/plain; charset=utf-8');
    const message = draft({
      from: 'alice@example.com',
      to: 'bob@example.net',
      subject: 'Minutes',
      parts: [{ resource: note }],
    });
    const messageId = messageIdOf(message);
    await send(alice, message);
    const placeholder = await arrived(bob, messageId);
    expect(placeholder.resources[0]!.status).toBe('pending');

    await s.fed.stopDomain('example.com');
    thaw();
    // example.net's first attempt at the note, made while example.com is down.
    const attempt = await until(
      "example.net's attempt at the note",
      async () =>
        s.logs
          .filter((l) => l.domain === 'example.net' && l.line.startsWith('{'))
          .map((l) => JSON.parse(l.line) as LogEntry)
          .find((e) => e.contentId === note.contentId && /^fetch (will be retried|failed)$/.test(e.msg ?? '')),
      120_000,
    );
    expect(attempt.msg, `the attempt ended with "${attempt.msg}": ${attempt.reason}`).toBe('fetch will be retried');
    expect((await read(bob, placeholder.id)).resources[0]!.status).toBe('pending');

    // Back: a retry (a second one, should the first come before example.com is up) fetches the note.
    await s.fed.startDomain('example.com');
    const got = await arrived(await s.user('bob@example.net'), messageId, { held: true, timeoutMs: 75_000 });
    expect(got.resources[0]!.status).toBe('held');
  }, 300_000);
});

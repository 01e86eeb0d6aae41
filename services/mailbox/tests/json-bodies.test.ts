/**
 * The JSON bodies of `POST /api/v1/messages/send` and `POST /federation/v1/fetch` that cannot be read, through
 * real HTTP to a real mailbox (its real AS, SQLite and PostgreSQL). The rule: bad input or a misbehaving
 * client gets a clear, specific error and loses nothing. Every failure of reading the body is a 4xx naming
 * what was wrong, never the 500 of an internal error: another charset than UTF-8 and a content coding the
 * mailbox does not decode are 415, a body that does not decode is 400, a body too large is 413.
 */
import { randomUUID } from 'node:crypto';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { externalContentType, type Message } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { testHttp } from '../../auth/tests/exchange-client.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';
import { documented } from './openapi-check.js';

interface Problem {
  status: number;
  error: string;
  error_description: string;
  acceptEncoding: string | null;
}

describe.each(testDatabases())('JSON bodies that cannot be read ($name)', (database) => {
  let fed: MailFederation;
  let alice: UserClient;
  let draft: Message;
  const http = testHttp();

  beforeAll(async () => {
    fed = await startMailFederation(['example.com'], { database: database.create, mailbox: { startWorkers: false } });
    const as = fed.auth.domains['example.com']!;
    await as.createUser('alice@example.com', 'alice password');
    await as.createUser('bob@example.com', 'bob password');
    alice = await fed.user('alice@example.com', 'alice password');
    const text = 'Hello Bob\n';
    const up = (await (
      await alice.api('/resources', { method: 'POST', raw: text, headers: { 'content-type': 'text/plain' } })
    ).json()) as { contentId: string; size: number };
    draft = {
      envelope: [
        {
          headers: [
            { From: 'Alice <alice@example.com>' },
            { To: 'bob@example.com' },
            { Subject: 'Hello' },
            { 'Message-ID': `<${randomUUID()}@example.com>` },
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': up.contentId },
              { 'Content-Type': externalContentType(up.size, 'text/plain') },
            ],
          },
        ],
      },
    };
  });
  afterAll(async () => {
    await fed?.close();
    await http.close();
  });

  /** What Alice's send answers to a body of these bytes and headers. */
  async function send(body: string | Uint8Array, headers: Record<string, string>): Promise<Problem> {
    const res = await alice.api('/messages/send', { method: 'POST', raw: body, headers });
    return {
      status: res.status,
      acceptEncoding: res.headers.get('accept-encoding'),
      ...((await res.json()) as Omit<Problem, 'status' | 'acceptEncoding'>),
    };
  }

  /** What the fetch endpoint answers another domain's MTA (the body is read before anything is checked). */
  async function fetchEndpoint(body: string | Uint8Array, headers: Record<string, string>): Promise<Problem> {
    const mailbox = fed.domains['example.com']!;
    const res = await http.fetch(`${mailbox.mailbox.url}/federation/v1/fetch`, { method: 'POST', body, headers });
    const checked = await documented('POST', `${mailbox.publicUrl}/federation/v1/fetch`, res);
    return {
      status: checked.status,
      acceptEncoding: checked.headers.get('accept-encoding'),
      ...((await checked.json()) as Omit<Problem, 'status' | 'acceptEncoding'>),
    };
  }

  const json = 'application/json';
  const endpoints = [
    ['POST /api/v1/messages/send', send],
    ['POST /federation/v1/fetch', fetchEndpoint],
  ] as const;

  for (const [name, post] of endpoints) {
    it(`the rule, ${name}: a charset other than UTF-8 is 415 unsupported_media_type, naming the charset`, async () => {
      const answer = await post('{}', { 'content-type': 'application/json; charset=latin1' });
      expect(answer).toMatchObject({ status: 415, error: 'unsupported_media_type' });
      expect(answer.error_description).toMatch(/UTF-8.*"latin1"/);
    });

    it(`the rule, ${name}: a content coding not decoded here (br, zstd, a list) is 415, with Accept-Encoding naming gzip and deflate`, async () => {
      for (const coding of ['br', 'zstd', 'gzip, br', 'compress']) {
        const body = coding === 'br' ? brotliCompressSync(Buffer.from('{}')) : Buffer.from('{}');
        const answer = await post(body, { 'content-type': json, 'content-encoding': coding });
        expect(answer, coding).toMatchObject({ status: 415, error: 'unsupported_media_type' });
        expect(answer.error_description, coding).toMatch(/Content-Encoding .* is not supported/);
        expect(answer.acceptEncoding, coding).toBe('gzip, deflate');
      }
    });

    it(`the rule, ${name}: a body that does not decode as its gzip is 400, saying so; too large is 413; not JSON is 400`, async () => {
      const broken = await post('not gzip at all', { 'content-type': json, 'content-encoding': 'gzip' });
      expect(broken).toMatchObject({ status: 400, error: 'invalid_request' });
      expect(broken.error_description).toMatch(/does not decode as gzip/);
      // A body within the limit compressed, beyond it once decoded: the limit counts decoded bytes.
      const bomb = gzipSync(Buffer.from(JSON.stringify({ pad: ' '.repeat(5 * 1024 * 1024) })));
      expect(await post(bomb, { 'content-type': json, 'content-encoding': 'gzip' })).toMatchObject({
        status: 413,
        error: 'too_large',
      });
      const malformed = await post('{"message":', { 'content-type': json });
      expect(malformed.status).toBe(400);
      expect(malformed.error_description).toMatch(/^the body is not JSON/);
    });
  }

  it('docs/protocol.md §2.7 rule 3: a fetch body naming a member twice, at any level, is 400 invalid_request, naming it', async () => {
    const envelope = '[{"headers":[{"From":"alice@example.com"}]}]';
    for (const [body, member] of [
      [`{"envelope":${envelope},"content_id":"<x>","domain":"example.net","domain":"example.org"}`, 'domain'],
      [
        `{"envelope":[{"headers":[{"From":"a@example.com","From":"b@example.com"}]}],"content_id":"<x>","domain":"example.net"}`,
        'From',
      ],
    ] as const) {
      const answer = await fetchEndpoint(body, { 'content-type': json });
      expect(answer, member).toMatchObject({ status: 400, error: 'invalid_request' });
      expect(answer.error_description, member).toMatch(
        new RegExp(`^the body is not strict JSON: member "${member}" appears twice in one object`),
      );
    }
    // The same body without the repetition gets past reading (to the token check).
    const once = await fetchEndpoint(`{"envelope":${envelope},"content_id":"<x>","domain":"example.net"}`, {
      'content-type': json,
    });
    expect(once.status).not.toBe(400);
  });

  it('the rule, loses nothing: a gzip body is still decoded and sent, and the refused ones left nothing behind', async () => {
    const mailbox = fed.domains['example.com']!.mailbox;
    const before = (await mailbox.knex('mail_messages').where({ address: 'alice@example.com', mailbox: 'sent' }))
      .length;
    const res = await alice.api('/messages/send', {
      method: 'POST',
      raw: gzipSync(Buffer.from(JSON.stringify({ message: draft }))),
      headers: { 'content-type': json, 'content-encoding': 'gzip' },
    });
    expect(res.status, await res.clone().text()).toBe(202);
    const sent = (await mailbox.knex('mail_messages').where({ address: 'alice@example.com', mailbox: 'sent' })).length;
    expect(sent).toBe(before + 1);
    // Only that one send was stored: the refused bodies before it stored no message, share or job.
    expect((await mailbox.knex('mail_shares')).length).toBe(1);
  });
});

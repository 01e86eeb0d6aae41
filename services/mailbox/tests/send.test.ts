/**
 * Sending through the client API (PROTOCOL.md §4) with a real AS: the draft's checks, the copies signed by
 * the AS, local delivery, a transfer queued for another domain, and the outbox backing off from a peer
 * that does not answer.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { exportJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKnex, silentLogger } from '@federizer/common';
import {
  createDpopProof,
  decodeJwt,
  externalContentType,
  jwkThumbprint,
  type DpopKey,
  type Message,
} from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { ADMIN_TOKEN, freePort, hostOf, startFederation, type Federation } from '../../auth/tests/harness.js';
import { signIn, testHttp } from '../../auth/tests/exchange-client.js';
import { MailboxService, mailboxConfig } from '../src/index.js';
import { documented } from './openapi-check.js';

describe.each(testDatabases())('sending ($name)', (database) => {
  let fed: Federation;
  let mailbox: MailboxService;
  let publicUrl: string;
  let token: string;
  let key: DpopKey;
  const http = testHttp();

  async function api(
    path: string,
    init: {
      method?: string;
      body?: unknown;
      raw?: Uint8Array | string;
      headers?: Record<string, string>;
      as?: { token: string; key: DpopKey };
    } = {},
  ) {
    const method = init.method ?? 'GET';
    const url = `${publicUrl}/api/v1${path}`;
    const caller = init.as ?? { token, key };
    const headers: Record<string, string> = {
      authorization: `DPoP ${caller.token}`,
      dpop: await createDpopProof(caller.key, { htm: method, htu: url, accessToken: caller.token }),
      ...init.headers,
    };
    let body = init.raw;
    if (init.body !== undefined) {
      body = JSON.stringify(init.body);
      headers['content-type'] = 'application/json';
    }
    return documented(method, url, await http.fetch(url, { method, body, headers }));
  }

  async function upload(text: string): Promise<{ contentId: string; size: number }> {
    const res = await api('/resources', {
      method: 'POST',
      raw: text,
      headers: { 'content-type': 'text/plain; charset=utf-8' },
    });
    expect(res.status).toBe(201);
    return (await res.json()) as { contentId: string; size: number };
  }

  function draft(
    to: string,
    resource: { contentId: string; size: number },
    extra: Record<string, string>[] = [],
  ): Message {
    return {
      envelope: [
        {
          headers: [
            { From: 'Alice <alice@example.com>' },
            { To: to },
            { Subject: 'Hello' },
            { 'Message-ID': `<${randomUUID()}@example.com>` },
            ...extra,
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': resource.contentId },
              { 'Content-Type': externalContentType(resource.size, 'text/plain; charset=utf-8') },
            ],
          },
        ],
      },
    };
  }

  beforeAll(async () => {
    const port = await freePort();
    publicUrl = `http://${hostOf('mail', 'example.com')}:${port}`;
    fed = await startFederation(['example.com', 'example.net'], {
      database: database.create,
      config: { mailboxResource: `${publicUrl}/api/v1` },
    });
    const com = fed.domains['example.com']!;
    await com.createUser('alice@example.com', 'alice password', { sendQuotaPerDay: 5 });
    await com.createUser('bob@example.com', 'bob password');
    const blobDir = await mkdtemp(join(tmpdir(), 'federizer-blobs-'));
    const db = await database.create();
    const knex = createKnex(db.config);
    const { config, secrets } = mailboxConfig(
      {
        domain: 'example.com',
        publicUrl,
        issuer: com.issuer,
        blobDir,
        dev: true,
        port,
        dnsServer: `${fed.dns.address.host}:${fed.dns.address.port}`,
      },
      { mtaKey: { key: com.mtaKey.privateKey, alg: 'ES256', kid: com.mtaKey.jwk.kid! }, authAdminToken: ADMIN_TOKEN },
    );
    mailbox = await MailboxService.start(config, secrets, { knex, logger: silentLogger(), startWorkers: false });
    const session = await signIn(com, http, 'alice@example.com', 'alice password');
    token = session.accessToken;
    const publicJwk = await exportJWK(session.dpopKey.publicKey);
    key = { alg: 'ES256', privateKey: session.dpopKey.privateKey, publicJwk, jkt: await jwkThumbprint(publicJwk) };
    return async () => {
      await mailbox.close();
      await knex.destroy();
      await db.destroy();
      await fed.close();
      await rm(blobDir, { recursive: true, force: true });
    };
  });
  afterAll(() => http.close());

  it('PROTOCOL §4: a local recipient gets the signed copy at once; a remote one is queued for transfer', async () => {
    const text = await upload('Hi Bob and Carol!\n');
    const message = draft('Bob <bob@example.com>, carol@example.net', text);
    const res = await api('/messages/send', { method: 'POST', body: { message } });
    expect(res.status, await res.clone().text()).toBe(202);
    const sent = (await res.json()) as {
      id: string;
      messageId: string;
      copies: number;
      deliveries: { recipient: string; status: string }[];
    };
    expect(sent.copies).toBe(1);
    // The words GET /messages/:id/deliveries uses: Bob's domain holds the message and the resource already.
    expect(sent.deliveries).toEqual([
      {
        recipient: 'bob@example.com',
        domain: 'example.com',
        status: 'fetched',
        fetchedBy: 'example.com',
        fetchedAt: expect.any(Number),
        updatedAt: expect.any(Number),
      },
      { recipient: 'carol@example.net', domain: 'example.net', status: 'queued', updatedAt: expect.any(Number) },
    ]);
    const listed = await api(`/messages/${sent.id}/deliveries`);
    expect(((await listed.json()) as { deliveries: unknown }).deliveries).toEqual(sent.deliveries);
    const bobs = await mailbox.messages.byMessageId('bob@example.com', sent.messageId);
    expect(bobs).toHaveLength(1);
    const received = await mailbox.messages.get('bob@example.com', bobs[0]!.id);
    // The receive block on top, then the assertion the AS signed, then the stamped origin block.
    const [receive, assertion, origin] = received!.envelope as [
      { headers: Record<string, string>[] },
      { 'jwt-assertion': string },
      { headers: Record<string, string>[] },
    ];
    expect(receive.headers.map((h) => Object.keys(h)[0])).toEqual(['Message-ID', 'JWT-Assertion-Digest', 'Received']);
    expect(decodeJwt(assertion['jwt-assertion']).payload).toMatchObject({
      iss: fed.domains['example.com']!.issuer,
      azp: 'mta.example.com',
      scope: 'internet_mail',
    });
    expect(origin.headers.slice(0, 3).map((h) => Object.keys(h)[0])).toEqual([
      'Date',
      'Recipients-Digest',
      'Body-Digest',
    ]);
    const job = await mailbox.jobs.find('transfer', `${(await mailbox.shares.sharesOf(sent.id))[0]!.id}:example.net`);
    expect(job?.status).toBe('pending');
  });

  it('PROTOCOL §4.1: From must be the signed-in user (403)', async () => {
    const text = await upload('x');
    const message = draft('bob@example.com', text);
    (message.envelope[0] as { headers: Record<string, string>[] }).headers[0] = { From: 'mallory@example.com' };
    const res = await api('/messages/send', { method: 'POST', body: { message } });
    expect(res.status).toBe(403);
    expect(((await res.json()) as { error: string }).error).toBe('from_not_user');
  });

  it('PROTOCOL §4.1: every resource must be held with its declared size (400)', async () => {
    const text = await upload('sized');
    const wrongSize = draft('bob@example.com', { contentId: text.contentId, size: text.size + 1 });
    expect(
      (
        (await (await api('/messages/send', { method: 'POST', body: { message: wrongSize } })).json()) as {
          error: string;
        }
      ).error,
    ).toBe('resource_size_mismatch');
    const unknown = draft('bob@example.com', { contentId: `<${'A'.repeat(43)}>`, size: 1 });
    expect(
      (
        (await (await api('/messages/send', { method: 'POST', body: { message: unknown } })).json()) as {
          error: string;
        }
      ).error,
    ).toBe('resource_not_held');
  });

  it('PROTOCOL §4.1: the declared size is the size parameter as §2 parses it (RFC 2045 names, any case)', async () => {
    const text = await upload('size as parsed');
    const withType = (type0: string): Message => {
      const message = draft('bob@example.com', text);
      const leaf = message.body.parts[0]!.headers as Record<string, unknown>[];
      leaf[2] = { 'Content-Type': [type0, 'text/plain; charset=utf-8'] };
      return message;
    };
    const base = 'message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"';
    const send = async (message: Message) => {
      const res = await api('/messages/send', { method: 'POST', body: { message } });
      return { status: res.status, body: (await res.json()) as { error?: string } };
    };
    // Parameter names are case-insensitive (RFC 2045 §5.1): SIZE is the size.
    expect((await send(withType(`${base}; SIZE="${text.size}"`))).status).toBe(202);
    // x-size is another parameter: the size is the one named size, whatever comes before it.
    expect((await send(withType(`${base}; x-size="1"; size="${text.size}"`))).status).toBe(202);
    expect(await send(withType(`${base}; x-size="${text.size}"; size="${text.size + 1}"`))).toMatchObject({
      status: 400,
      body: { error: 'resource_size_mismatch' },
    });
  });

  it('RFC 5322 §2.2.3: a Subject longer than a line (folded) is sent whole; the list shows its first 998 characters', async () => {
    const text = await upload('long subject');
    const subject = `${'Very long subject '.repeat(90)}😀 end`;
    const message = draft('bob@example.com', text, [{ Subject: subject }]);
    (message.envelope[0] as { headers: Record<string, string>[] }).headers.splice(2, 1); // the default Subject
    const res = await api('/messages/send', { method: 'POST', body: { message } });
    expect(res.status, await res.clone().text()).toBe(202);
    const { id } = (await res.json()) as { id: string };
    const stored = (await (await api(`/messages/${id}`)).json()) as {
      subject: string;
      envelope: { headers?: Record<string, string>[] }[];
    };
    expect(stored.subject).toBe(subject.slice(0, 998));
    const h0 = stored.envelope.at(-1)!.headers!;
    expect(h0.find((h) => 'Subject' in h)).toEqual({ Subject: subject });
  });

  it('PROTOCOL §4.1: a draft holding a header only mailboxes write is refused (400 invalid_message)', async () => {
    const text = await upload('stamped already');
    const message = draft('bob@example.com', text, [{ 'Body-Digest': `<${'B'.repeat(43)}>` }]);
    const res = await api('/messages/send', { method: 'POST', body: { message } });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({
      error: 'invalid_message',
      error_description: expect.stringMatching(/Body-Digest/),
    });
  });

  it('PROTOCOL §2: a malformed draft is refused with the parser rule (400 invalid_message)', async () => {
    const res = await api('/messages/send', {
      method: 'POST',
      body: { message: { envelope: [{ headers: [{ a: 'b', c: 'd' }] }], body: { parts: [] } } },
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error_description: string }).error_description).toMatch(
      /envelope\[0\]\.headers\[0\]: a header object has exactly one key/,
    );
  });

  it('the outbox backs off from a peer that does not answer, and keeps the transfer queued', async () => {
    const text = await upload('for carol');
    const res = await api('/messages/send', { method: 'POST', body: { message: draft('carol@example.net', text) } });
    const { id } = (await res.json()) as { id: string };
    const share = (await mailbox.shares.sharesOf(id))[0]!;
    await mailbox.outbox.poll();
    const job = await mailbox.jobs.find('transfer', `${share.id}:example.net`);
    // example.net's mailbox document names a transfer endpoint nobody listens on: a temporary failure.
    expect(job).toMatchObject({ status: 'pending', attempts: 1 });
    expect(job!.nextAttemptAt).toBeGreaterThan(Date.now());
    expect(job!.lastError).toMatch(/did not answer/);
    expect((await mailbox.shares.deliveries({ share: share.id }))[0]!.status).toBe('queued');
  });

  it('PROTOCOL §4.5, RFC 6750 §3.1: a sign-in ended by a new password makes its still-unexpired token 401 invalid_token at send', async () => {
    const com = fed.domains['example.com']!;
    await com.createUser('dana@example.com', 'dana password');
    const session = await signIn(com, http, 'dana@example.com', 'dana password');
    const publicJwk = await exportJWK(session.dpopKey.publicKey);
    const dana = {
      token: session.accessToken,
      key: { alg: 'ES256', privateKey: session.dpopKey.privateKey, publicJwk, jkt: await jwkThumbprint(publicJwk) },
    } as const;
    const up = await api('/resources', {
      method: 'POST',
      raw: 'from Dana',
      headers: { 'content-type': 'text/plain; charset=utf-8' },
      as: dana,
    });
    const text = (await up.json()) as { contentId: string; size: number };
    const message = (): Message => {
      const m = draft('bob@example.com', text);
      const headers = (m.envelope[0] as { headers: Record<string, string>[] }).headers;
      headers[0] = { From: 'dana@example.com' };
      return m;
    };
    expect((await api('/messages/send', { method: 'POST', body: { message: message() }, as: dana })).status).toBe(202);
    const reset = await com.admin(`/users/${encodeURIComponent('dana@example.com')}/password`, {
      method: 'PUT',
      body: JSON.stringify({ password: 'a new dana password' }),
    });
    expect(reset.status).toBe(204);
    // The token itself still verifies here (reading works until it expires); the AS no longer signs for it.
    expect((await api('/messages?mailbox=sent', { as: dana })).status).toBe(200);
    const refused = await api('/messages/send', { method: 'POST', body: { message: message() }, as: dana });
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toMatch(/^DPoP .*error="invalid_token"/);
    const body = (await refused.json()) as { error: string; error_description: string };
    expect(body.error).toBe('invalid_token');
    expect(body.error_description).toMatch(/no longer valid.*the grant it was issued under was revoked/);
  });

  it('PROTOCOL §4.5: beyond the send quota the AS refuses to sign, and the user gets 429 with Retry-After', async () => {
    const text = await upload('quota');
    let res: Response | undefined;
    for (let i = 0; i < 6; i++) {
      res = (await api('/messages/send', {
        method: 'POST',
        body: { message: draft('bob@example.com', text) },
      })) as unknown as Response;
      if (res.status === 429) break;
    }
    expect(res!.status).toBe(429);
    expect(res!.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(((await res!.json()) as { error: string }).error).toBe('quota_exceeded');
  });
});

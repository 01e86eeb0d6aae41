/**
 * The transfer endpoint (PROTOCOL §5) of example.net over real HTTP, with real assertions A1 issued by
 * example.com's AS for copies made by `prepareSend`, verified through real DNS discovery. Every check of
 * §5.2 has a test that breaks that check alone and expects its answer (docs/protocol.md §5.3, §11).
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { deflateSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  assertionDigest,
  contentId,
  createDpopProof,
  decodeJwt,
  generateDpopKey,
  parseDate,
  type Block,
  type Header,
  type HeadersBlock,
  type Message,
} from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { hostOf } from '../../auth/tests/harness.js';
import type { FetchJobPayload } from '../src/federation/transfer.js';
import { MAX_MESSAGE_BYTES, startTransferHarness, type Sent, type TransferHarness } from './transfer-harness.js';

const DAY = 24 * 3600;

/** Runs `fn` once; later calls share its promise, so each test can also run alone. */
function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | undefined;
  return () => (result ??= fn());
}

interface ErrorBody {
  error: string;
  code?: string;
  path?: string;
  error_description: string;
}

/** The answer is the error of §5.3: status, `error`, `code`, and for a 401 the DPoP challenge. */
async function expectRefusal(
  res: Response,
  status: number,
  error: string,
  code?: string,
  challengeError: string = error,
): Promise<ErrorBody> {
  const body = (await res.json()) as ErrorBody;
  expect({ status: res.status, error: body.error, code: body.code }).toEqual({ status, error, code });
  expect(body.error_description).toEqual(expect.any(String));
  if (status === 401) {
    const challenge = res.headers.get('www-authenticate') ?? '';
    expect(challenge).toMatch(/^DPoP /);
    expect(challenge).toContain(`error="${challengeError}"`);
    expect(challenge).toContain('algs="ES256 EdDSA RS256"');
    expect(challenge).toMatch(/error_description="[^"]+/);
  }
  return body;
}

/** The message with its origin block (the last block) changed. */
function withOriginHeaders(message: Message, change: (headers: Header[]) => Header[]): Message {
  const envelope = [...message.envelope];
  const last = envelope[envelope.length - 1] as HeadersBlock;
  envelope[envelope.length - 1] = { headers: change([...last.headers]) };
  return { envelope, body: message.body };
}

function replaceHeader(headers: Header[], name: string, value: string): Header[] {
  return headers.map((h) => (Object.hasOwn(h, name) ? { [name]: value } : h));
}

/** The message with another assertion on top (the one the Authorization header then presents). */
function withToken(message: Message, token: string): Message {
  return { envelope: [{ 'jwt-assertion': token }, ...message.envelope.slice(1)], body: message.body };
}

/** The same signing input signed by a key that is not the issuer's (same kid, same alg). */
function forgeSignature(token: string): string {
  const input = token.slice(0, token.lastIndexOf('.'));
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return `${input}.${sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}

function leafContentIds(message: Message): string[] {
  return [
    ...new Set(
      message.body.parts.map((p) => p.headers.find((h) => Object.hasOwn(h, 'Content-ID'))!['Content-ID'] as string),
    ),
  ];
}

describe.each(testDatabases())('PROTOCOL §5: the transfer endpoint of example.net ($name)', (database) => {
  let h: TransferHarness;

  beforeAll(async () => {
    h = await startTransferHarness(database);
  });
  afterAll(async () => {
    await h?.close();
  });

  const fetchJobs = async (contentIds: readonly string[]) =>
    (
      await h
        .knex('mail_jobs')
        .select('key', 'destination', 'payload')
        .where('kind', 'fetch')
        .whereIn('key', contentIds)
    )
      .map((r: { key: string; destination: string; payload: unknown }) => ({
        key: r.key,
        destination: r.destination,
        payload: (typeof r.payload === 'string' ? JSON.parse(r.payload) : r.payload) as FetchJobPayload,
      }))
      .sort((a, b) => a.key.localeCompare(b.key));
  const count = async (table: string) =>
    Number(((await h.knex(table).count({ n: '*' }).first()) as { n: unknown } | undefined)?.n ?? 0);

  // A copy to Bob: the message every failing check starts from (a refused transfer stores nothing).
  const victim = once(() =>
    h.send({ messageId: '<victim@example.com>', to: 'Bob <bob@example.net>', resources: ['victim text'] }),
  );

  const delivered = once(async () => {
    const sent = await h.send({
      messageId: '<delivered@example.com>',
      to: 'Bob <bob@example.net>',
      subject: 'The report',
      threadId: '<thread-1@example.com>',
      resources: ['Hello Bob, the report is attached.', 'the report bytes', 'the report bytes'],
    });
    const before = Date.now();
    const res = await h.post(sent);
    return { sent, res, body: (await res.json()) as unknown, before, after: Date.now() };
  });

  it('PROTOCOL §5: an accepted transfer answers 202, stores the message under the receive block, queues one fetch per Content-ID', async () => {
    const { sent, res, body, before, after } = await delivered();
    expect(res.status).toBe(202);
    expect(body).toEqual({ accepted: ['bob@example.net'], rejected: [] });

    const [summary, ...others] = await h.messages.byMessageId('bob@example.net', '<delivered@example.com>');
    expect(others).toEqual([]);
    const stored = (await h.messages.get('bob@example.net', summary!.id))!;
    const eht = (decodeJwt(sent.token).payload.eh as { eht: string }).eht;
    expect(stored).toMatchObject({
      mailbox: 'inbox',
      threadId: '<thread-1@example.com>',
      subject: 'The report',
      from: 'Alice <alice@example.com>',
      transferEht: eht,
    });
    // §5.5: the receive block on top of the envelope exactly as it arrived.
    expect(stored.envelope.slice(1)).toEqual(sent.message.envelope);
    const [receive] = stored.envelope as [HeadersBlock, ...Block[]];
    expect(receive.headers).toEqual([
      { 'Message-ID': '<delivered@example.com>' },
      { 'JWT-Assertion-Digest': assertionDigest(sent.token) },
      { Received: expect.stringMatching(/^from example\.com by example\.net; /) as unknown as string },
    ]);
    const date = parseDate((receive.headers[2]!.Received as string).replace(/^[^;]*; /, '')).getTime();
    expect(date).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
    expect(date).toBeLessThanOrEqual(after);
    expect(stored.body).toEqual(sent.message.body);

    // Three leaves, two Content-IDs: both pending, one fetch job each, to the origin domain.
    const contentIds = leafContentIds(sent.message);
    expect(contentIds).toHaveLength(2);
    expect((await h.messages.resourcesOf(stored.id)).map((r) => [r.contentId, r.status]).sort()).toEqual(
      contentIds.map((c) => [c, 'pending']).sort(),
    );
    const jobs = await fetchJobs(contentIds);
    expect(jobs.map((j) => j.key)).toEqual([...contentIds].sort());
    for (const job of jobs) {
      expect(job.destination).toBe('example.com');
      expect(job.payload).toEqual({
        messageId: '<delivered@example.com>',
        envelope: sent.message.envelope,
        contentId: job.key,
        size: Buffer.byteLength(
          job.key === contentId('the report bytes') ? 'the report bytes' : 'Hello Bob, the report is attached.',
        ),
        senderDomain: 'example.com',
        fetchEndpoint: `http://${hostOf('mail', 'example.com')}/federation/v1/fetch`,
      });
    }
    expect(await h.transfers.seen('<delivered@example.com>', eht)).toEqual(body);
    expect(h.received).toContainEqual({
      address: 'bob@example.net',
      messageId: '<delivered@example.com>',
      created: true,
    });
  });

  it('PROTOCOL §5: a transfer already received (same Message-ID and eht, new DPoP proof) answers 200 with the first answer and changes nothing', async () => {
    const { sent, body } = await delivered();
    const tables = ['mail_messages', 'mail_message_resources', 'mail_jobs', 'mail_transfers', 'mail_changes'];
    const before = await Promise.all(tables.map(count));
    const hookCalls = h.received.length;
    const res = await h.post(sent);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual(body);
    expect(await Promise.all(tables.map(count))).toEqual(before);
    expect(h.received).toHaveLength(hookCalls);
  });

  // ---- check 1: size and shape

  it('PROTOCOL §5.1: a body over the size limit is refused with 413 while it is read, before it is parsed', async () => {
    const sent = await victim();
    const res = await h.post(sent, { body: 'x'.repeat(70 * 1024) });
    const body = await expectRefusal(res, 413, 'too_large', 'message_too_large');
    expect(body.error_description).toContain('larger than');

    // Without a Content-Length (chunked): counted while it arrives, refused once past the limit, and the
    // connection closed, so a sender streaming 64 MiB is cut off after what the socket buffers held.
    const chunk = new Uint8Array(64 * 1024).fill(0x20);
    let pulled = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (pulled++ < 1024) controller.enqueue(chunk);
        else controller.close();
      },
    });
    const streamed = await h.http.fetch(h.app.endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `DPoP ${sent.token}` },
      body: stream,
      duplex: 'half',
    } as unknown as Parameters<typeof h.http.fetch>[1]);
    await expectRefusal(streamed, 413, 'too_large', 'message_too_large');
    expect(pulled).toBeLessThan(1024);

    // A body within the limit whose message is not: the message is measured as written.
    const text = JSON.stringify(sent.message);
    const padded = `{"message":${text.slice(0, -1)}${' '.repeat(MAX_MESSAGE_BYTES - text.length + 1)}}}`;
    const inner = await expectRefusal(await h.post(sent, { body: padded }), 413, 'too_large', 'message_too_large');
    expect(inner.error_description).toContain(`the message is ${MAX_MESSAGE_BYTES + 1} bytes`);
  });

  it('PROTOCOL §5.1, RFC 9110 §8.4: a gzip or deflate body is decoded and accepted; the limit counts decoded bytes', async () => {
    for (const [coding, encode] of [
      ['gzip', gzipSync],
      ['deflate', deflateSync],
    ] as const) {
      const sent = await h.send({
        messageId: `<coded-${coding}@example.com>`,
        to: 'Bob <bob@example.net>',
        resources: [`${coding} text`],
      });
      const body = encode(Buffer.from(JSON.stringify({ message: sent.message })));
      const res = await h.post(sent, { body, headers: { 'content-encoding': coding } });
      expect(res.status, coding).toBe(202);
      expect(await res.json()).toEqual({ accepted: ['bob@example.net'], rejected: [] });
    }
    // Small on the wire, beyond the limit once inflated: cut as soon as it passes it.
    const sent = await victim();
    const bomb = gzipSync(Buffer.from(`{"message":"${' '.repeat(8 * MAX_MESSAGE_BYTES)}"}`));
    expect(bomb.length).toBeLessThan(MAX_MESSAGE_BYTES);
    await expectRefusal(
      await h.post(sent, { body: bomb, headers: { 'content-encoding': 'gzip' } }),
      413,
      'too_large',
      'message_too_large',
    );
  });

  it('RFC 9110 §15.5.16: another content coding is 415 naming gzip and deflate; a body that does not decode is 400', async () => {
    const sent = await victim();
    for (const coding of ['br', 'compress', 'gzip, br']) {
      const res = await h.post(sent, {
        body: JSON.stringify({ message: sent.message }),
        headers: { 'content-encoding': coding },
      });
      const body = await expectRefusal(res, 415, 'unsupported_media_type');
      expect(body.error_description, coding).toMatch(/Content-Encoding .* is not supported/);
      expect(res.headers.get('accept-encoding')).toBe('gzip, deflate');
    }
    const broken = await h.post(sent, { body: 'not gzip at all', headers: { 'content-encoding': 'gzip' } });
    const body = await expectRefusal(broken, 400, 'invalid_message', 'invalid_encoding');
    expect(body.error_description).toMatch(/^the body does not decode as gzip/);
  });

  it('PROTOCOL §5.1: a body that is not JSON is refused with 400 invalid_message (invalid_syntax)', async () => {
    const sent = await victim();
    await expectRefusal(await h.post(sent, { body: '{"message": ' }), 400, 'invalid_message', 'invalid_syntax');
  });

  it('PROTOCOL §5.1: a body that is not {"message": Message} by the rules of §2.7 is refused with 400 and the path', async () => {
    const sent = await victim();
    const extra = JSON.stringify({ message: sent.message, note: 'hi' });
    await expectRefusal(await h.post(sent, { body: extra }), 400, 'invalid_message', 'invalid_shape');
    const duplicate = JSON.stringify({ message: sent.message }).replace('"body":', '"body":{"parts":[]},"body":');
    await expectRefusal(await h.post(sent, { body: duplicate }), 400, 'invalid_message', 'invalid_shape');
    const badHeader = withOriginHeaders(sent.message, (headers) => [...headers, { Subject: 'a', Comments: 'b' }]);
    const body = await expectRefusal(
      await h.post(sent, { message: badHeader }),
      400,
      'invalid_message',
      'invalid_header',
    );
    expect(body.path).toMatch(/^envelope\[1\]\.headers\[\d+\]$/);
  });

  it('PROTOCOL §5.1: the Authorization token must be the newest assertion of the envelope (envelope[0])', async () => {
    const sent = await victim();
    const other = await h.send({ messageId: '<other@example.com>', to: 'bob@example.net' });
    // A valid assertion with a valid proof for it, but not the one on top of this envelope.
    const res = await h.post(sent, { token: other.token, proofOptions: { key: other.key } });
    const body = await expectRefusal(res, 401, 'invalid_token');
    expect(body.error_description).toContain('envelope[0]');
  });

  // ---- check 2: the JOSE header

  it('PROTOCOL §5.2: an assertion typed at+jwt is refused (401 invalid_typ)', async () => {
    const sent = await victim();
    const token = await h.resign(sent.token, { header: { typ: 'at+jwt' } });
    await expectRefusal(
      await h.post(sent, { message: withToken(sent.message, token) }),
      401,
      'invalid_token',
      'invalid_typ',
    );
  });

  it('PROTOCOL §5.2: an unsigned assertion (alg none) is refused (401 alg_not_allowed)', async () => {
    const sent = await victim();
    const [, payload, signature] = sent.token.split('.');
    const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'eh+jwt' })).toString('base64url');
    const token = `${header}.${payload}.${signature}`;
    await expectRefusal(
      await h.post(sent, { message: withToken(sent.message, token) }),
      401,
      'invalid_token',
      'alg_not_allowed',
    );
  });

  // ---- check 3: the issuer DNS names for the sender domain

  it('PROTOCOL §5.3: iss must be the issuer that _federizer._as._tcp of the From domain leads to', async () => {
    const sent = await victim();
    // Signed by example.com's real key, but claiming example.net's AS as its issuer.
    const token = await h.resign(sent.token, { claims: { iss: h.fed.domains['example.net']!.issuer } });
    await expectRefusal(
      await h.post(sent, { message: withToken(sent.message, token) }),
      401,
      'invalid_token',
      'issuer_mismatch',
    );
  });

  // ---- check 4: the signature

  it('PROTOCOL §5.4: an assertion whose signature does not verify with the issuer key is refused', async () => {
    const sent = await victim();
    const token = forgeSignature(sent.token);
    await expectRefusal(
      await h.post(sent, { message: withToken(sent.message, token) }),
      401,
      'invalid_token',
      'invalid_signature',
    );
  });

  // ---- check 5: exp, iat, scope

  it('PROTOCOL §5.5: an expired assertion is refused (401 token_expired)', async () => {
    const sent = await victim();
    const now = Math.floor(Date.now() / 1000);
    const token = await h.resign(sent.token, { claims: { iat: now - 8 * DAY, exp: now - DAY } });
    await expectRefusal(
      await h.post(sent, { message: withToken(sent.message, token) }),
      401,
      'invalid_token',
      'token_expired',
    );
  });

  it('PROTOCOL §5.5: an assertion whose scope lacks internet_mail is refused (§11 invalid_scope: 403)', async () => {
    const sent = await victim();
    const token = await h.resign(sent.token, { claims: { scope: 'mailbox' } });
    const res = await h.post(sent, { message: withToken(sent.message, token) });
    await expectRefusal(res, 403, 'forbidden', 'invalid_scope');
    expect(res.headers.get('www-authenticate')).toContain('error="insufficient_scope"');
  });

  // ---- check 6: DPoP

  it('PROTOCOL §5.6: a transfer without a DPoP proof is refused (401 invalid_token, challenge invalid_dpop_proof)', async () => {
    const sent = await victim();
    await expectRefusal(
      await h.post(sent, { proof: null }),
      401,
      'invalid_token',
      'invalid_dpop_proof',
      'invalid_dpop_proof',
    );
  });

  it('PROTOCOL §5.6: DPoP htu must be the transfer endpoint (its public URL, never the Host header)', async () => {
    const sent = await victim();
    // Reached through the loopback address, with a proof naming exactly the URL the request was sent to.
    const loopback = h.app.loopbackEndpoint;
    await expectRefusal(
      await h.post(sent, { url: loopback, endpoint: loopback }),
      401,
      'invalid_token',
      'dpop_htu_mismatch',
      'invalid_dpop_proof',
    );
    const fetchEndpoint = h.app.endpoint.replace(/transfer$/, 'fetch');
    await expectRefusal(
      await h.post(sent, { proofOptions: { htu: fetchEndpoint } }),
      401,
      'invalid_token',
      'dpop_htu_mismatch',
      'invalid_dpop_proof',
    );
  });

  it('PROTOCOL §5.6: DPoP htm must be POST', async () => {
    const sent = await victim();
    await expectRefusal(
      await h.post(sent, { proofOptions: { htm: 'PUT' } }),
      401,
      'invalid_token',
      'dpop_htm_mismatch',
      'invalid_dpop_proof',
    );
  });

  it('PROTOCOL §5.6: DPoP ath must be the hash of the presented assertion', async () => {
    const sent = await victim();
    await expectRefusal(
      await h.post(sent, { proofOptions: { accessToken: `${sent.token}x` } }),
      401,
      'invalid_token',
      'dpop_ath_mismatch',
      'invalid_dpop_proof',
    );
  });

  it('PROTOCOL §5.6: a DPoP proof is used once; a retry with the same jti is refused (dpop_replayed)', async () => {
    const sent = await h.send({ messageId: '<replayed@example.com>', to: 'bob@example.net', resources: ['replayed'] });
    const proof = await createDpopProof(sent.key, { htm: 'POST', htu: h.app.endpoint, accessToken: sent.token });
    expect((await h.post(sent, { proof })).status).toBe(202);
    await expectRefusal(await h.post(sent, { proof }), 401, 'invalid_token', 'dpop_replayed', 'invalid_dpop_proof');
    expect((await h.post(sent)).status).toBe(200);
  });

  it('PROTOCOL §5.6: the DPoP key must be the one the assertion’s cnf.jkt names', async () => {
    const sent = await victim();
    await expectRefusal(
      await h.post(sent, { proofOptions: { key: await generateDpopKey('ES256') } }),
      401,
      'invalid_token',
      'dpop_key_mismatch',
      'invalid_dpop_proof',
    );
  });

  // ---- check 7: the DNS-bound client identity

  it('PROTOCOL §5.7: azp must be the mta_client_id example.com publishes (§11 azp_mismatch: 401)', async () => {
    const sent = await victim();
    const token = await h.resign(sent.token, { claims: { azp: 'mta.example.net' } });
    await expectRefusal(
      await h.post(sent, { message: withToken(sent.message, token) }),
      401,
      'invalid_token',
      'azp_mismatch',
    );
  });

  // ---- check 8: binding

  it('PROTOCOL §5.8: eht must match the signed block (a From display name changed in transit)', async () => {
    const sent = await victim();
    const message = withOriginHeaders(sent.message, (headers) =>
      replaceHeader(headers, 'From', 'Mallory <alice@example.com>'),
    );
    const body = await expectRefusal(await h.post(sent, { message }), 400, 'invalid_message', 'eht_mismatch');
    expect(body.path).toBe('envelope[1].headers');
  });

  it('PROTOCOL §5.8: Body-Digest must match the body (a part changed in transit)', async () => {
    const sent = await victim();
    const [part] = sent.message.body.parts;
    const tampered: Message = {
      envelope: sent.message.envelope,
      body: {
        parts: [{ headers: replaceHeader([...part!.headers], 'Content-Disposition', 'attachment; filename="x.exe"') }],
      },
    };
    await expectRefusal(await h.post(sent, { message: tampered }), 400, 'invalid_message', 'body_digest_mismatch');
  });

  it('PROTOCOL §5.8: Recipients-Digest must match the recipients (a To added in transit)', async () => {
    const sent = await victim();
    const message = withOriginHeaders(sent.message, (headers) =>
      replaceHeader(headers, 'To', 'Bob <bob@example.net>, Carol <carol@example.net>'),
    );
    await expectRefusal(await h.post(sent, { message }), 400, 'invalid_message', 'recipients_digest_mismatch');
  });

  // ---- check 9: recipients

  it('PROTOCOL §5.9: a copy with no recipient of example.net is refused (404 no_recipient)', async () => {
    const sent = await h.send({ messageId: '<elsewhere@example.com>', to: 'Dave <dave@example.org>' });
    await expectRefusal(await h.post(sent), 404, 'no_recipient');
    const ghosts = await h.send({ messageId: '<ghosts@example.com>', to: 'ghost@example.net, dave@example.org' });
    await expectRefusal(await h.post(ghosts), 404, 'no_recipient');
    expect(await h.messages.byMessageId('ghost@example.net', '<ghosts@example.com>')).toEqual([]);
  });

  it('PROTOCOL §5.9: an unknown recipient among known ones is rejected, the others accepted (202)', async () => {
    const sent = await h.send({
      messageId: '<some-unknown@example.com>',
      to: 'Bob <bob@example.net>, Dave <dave@example.org>',
      cc: 'Ghost <GHOST@Example.NET>',
    });
    const res = await h.post(sent);
    expect(res.status).toBe(202);
    expect(await res.json()).toEqual({
      accepted: ['bob@example.net'],
      rejected: [{ address: 'ghost@example.net', reason: 'no_such_user' }],
    });
    expect(await h.messages.byMessageId('bob@example.net', '<some-unknown@example.com>')).toHaveLength(1);
    expect(await h.messages.byMessageId('ghost@example.net', '<some-unknown@example.com>')).toEqual([]);
  });

  it('PROTOCOL §4.3: a Bcc copy is delivered to its Bcc recipient only, never to the To/Cc recipients', async () => {
    const sent = await h.send(
      { messageId: '<bcc@example.com>', to: 'Carol <carol@example.net>', bcc: 'Bob <bob@example.net>' },
      1,
    );
    expect(sent.copy.view).toEqual({ bcc: 'bob@example.net' });
    const res = await h.post(sent);
    expect(res.status).toBe(202);
    expect(await res.json()).toEqual({ accepted: ['bob@example.net'], rejected: [] });
    expect(await h.messages.byMessageId('carol@example.net', '<bcc@example.com>')).toEqual([]);
  });

  // ---- forward hops (§7)

  it('PROTOCOL §5.8, §7.4: a forward hop [A2, H1, A1, H0] is accepted from the domain of Forwarded-From, whole chain checked', async () => {
    const origin = await h.send({
      messageId: '<forwarded@example.com>',
      to: 'Zed <zed@example.com>',
      resources: ['forwarded bytes'],
    });
    const sent = await h.forward(origin, 'Zed <zed@example.com>', 'Bob <bob@example.net>');
    expect(sent.message.envelope).toHaveLength(4);
    const res = await h.post(sent);
    expect(res.status).toBe(202);
    expect(await res.json()).toEqual({ accepted: ['bob@example.net'], rejected: [] });
    const [summary] = await h.messages.byMessageId('bob@example.net', '<forwarded@example.com>');
    const stored = (await h.messages.get('bob@example.net', summary!.id))!;
    expect(stored.envelope.slice(1)).toEqual(sent.message.envelope);
    expect((stored.envelope[0] as HeadersBlock).headers[1]).toEqual({
      'JWT-Assertion-Digest': assertionDigest(sent.token),
    });
    // Fetched from the origin domain (From of H0), with the chain as it arrived.
    const [job] = await fetchJobs(leafContentIds(sent.message));
    expect(job).toMatchObject({ destination: 'example.com', payload: { envelope: sent.message.envelope } });
  });

  it('PROTOCOL §5.8, §7.4: a forward by someone who was not a recipient of the hop before is refused (403 forwarder_not_recipient)', async () => {
    const sent = await victim();
    // The AS vouches for zed as its user, but zed was not a recipient of alice's copy to Bob.
    const forwarded = await h.forward(sent, 'Zed <zed@example.com>', 'Carol <carol@example.net>');
    const body = await expectRefusal(await h.post(forwarded), 403, 'forbidden', 'forwarder_not_recipient');
    expect(body.path).toBe('envelope[1].headers');
  });

  // ---- rate limit, relays, resources already held

  it('PROTOCOL §5: a sender domain over its rate limit gets 429 with Retry-After; forged requests spend nothing', async () => {
    const app = await h.startApp({ rateLimit: { perDomainPerMinute: 1 } });
    try {
      const sent = await h.send({ messageId: '<limited@example.com>', to: 'bob@example.net', resources: ['limited'] });
      const forged = withToken(sent.message, forgeSignature(sent.token));
      const forgedRes = await h.post(sent, { message: forged, endpoint: app.endpoint });
      await expectRefusal(forgedRes, 401, 'invalid_token', 'invalid_signature');
      expect((await h.post(sent, { endpoint: app.endpoint })).status).toBe(202);
      const res = await h.post(sent, { endpoint: app.endpoint });
      await expectRefusal(res, 429, 'rate_limited');
      const retryAfter = Number(res.headers.get('retry-after'));
      expect(retryAfter).toBeGreaterThanOrEqual(1);
      expect(retryAfter).toBeLessThanOrEqual(60);
    } finally {
      await app.close();
    }
  });

  it('PROTOCOL §6.5: a pure relay hop (no recipient keeps the message) queues no fetch', async () => {
    h.keep = () => false;
    try {
      const sent = await h.send({ messageId: '<relayed@example.com>', to: 'bob@example.net', resources: ['relayed'] });
      const res = await h.post(sent);
      expect(res.status).toBe(202);
      expect(h.received).toContainEqual({
        address: 'bob@example.net',
        messageId: '<relayed@example.com>',
        created: true,
      });
      expect(await fetchJobs(leafContentIds(sent.message))).toEqual([]);
    } finally {
      h.keep = () => true;
    }
  });

  it('PROTOCOL §6.5: a Content-ID this domain already holds is given to the recipient, not fetched again', async () => {
    const known = 'bytes carol already has';
    await h.accounts.addResource('carol@example.net', {
      contentId: contentId(known),
      size: Buffer.byteLength(known),
      mediaType: 'text/plain',
    });
    const sent: Sent = await h.send({
      messageId: '<partly-held@example.com>',
      to: 'bob@example.net',
      resources: [known, 'bytes nobody has'],
    });
    expect((await h.post(sent)).status).toBe(202);
    const [summary] = await h.messages.byMessageId('bob@example.net', '<partly-held@example.com>');
    const statuses = Object.fromEntries(
      (await h.messages.resourcesOf(summary!.id)).map((r) => [r.contentId, r.status]),
    );
    expect(statuses).toEqual({ [contentId(known)]: 'held', [contentId('bytes nobody has')]: 'pending' });
    expect(await h.accounts.hasResource('bob@example.net', contentId(known))).toBe(true);
    expect((await fetchJobs([contentId(known), contentId('bytes nobody has')])).map((j) => j.key)).toEqual([
      contentId('bytes nobody has'),
    ]);
  });
});

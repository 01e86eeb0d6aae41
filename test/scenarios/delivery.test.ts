/**
 * The design's delivery scenario on the local federation of `npm start`, each domain in its own process:
 * Alice of example.com sends Bob of example.net a text and a photo (a real PNG). Her mailbox has her AS
 * sign the copy and transfers the Placeholder; Bob's mailbox fetches both resources from example.com; Bob's
 * client rebuilds the message from the Placeholder alone: the headers of the signed origin block, the text,
 * and the photo, each downloaded by its Content-ID and checked against it, and the signature chain checked
 * through DNS as any reader can. Only HTTP, as real clients.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { contentId, messageToYaml, parseMessage } from '@federizer/protocol';
import {
  FETCH_ROUTE,
  arrived,
  deliveries,
  draft,
  makePng,
  messageIdOf,
  readPng,
  render,
  requests,
  send,
  startScenario,
  until,
  upload,
  verifyChain,
  type Scenario,
  type Stored,
} from './helpers.js';

describe('scenario 1: Alice sends Bob text and a photo', () => {
  let s: Scenario;
  const text = 'Hi Bob,\n\nthe view from our hotel in Venice, as promised.\n\nAlice\n';
  const photo = makePng(96, 64);
  let received: Stored;
  let messageId: string;
  let sentId: string;

  beforeAll(async () => {
    s = await startScenario({ processes: true });
    const alice = await s.user('alice@example.com');
    const bob = await s.user('bob@example.net');
    const textPart = await upload(alice, text, 'text/plain; charset=utf-8');
    const photoPart = await upload(alice, photo, 'image/png');
    // The upload answers the content address of the bytes: the client can compute it too.
    expect(photoPart.contentId).toBe(contentId(photo));
    const message = draft({
      from: 'Alice <alice@example.com>',
      to: 'Bob <bob@example.net>',
      subject: 'Venice',
      parts: [{ resource: textPart }, { resource: photoPart, filename: 'venice.png' }],
    });
    messageId = messageIdOf(message);
    const sent = await send(alice, message);
    sentId = sent.id;
    expect(sent.deliveries).toEqual([expect.objectContaining({ recipient: 'bob@example.net', status: 'queued' })]);
    received = await arrived(bob, messageId, { held: true });
  });
  afterAll(() => s?.close());

  it("Bob's mailbox holds the Placeholder under its receive block, with the origin's signed blocks", async () => {
    expect(received.subject).toBe('Venice');
    expect(received.from).toBe('Alice <alice@example.com>');
    // PROTOCOL §5: [receive block, A1, H0].
    expect(received.envelope).toHaveLength(3);
    expect(received.envelope[0]).toEqual({
      headers: [
        { 'Message-ID': messageId },
        { 'JWT-Assertion-Digest': expect.stringMatching(/^<[\w-]{43}>$/) },
        { Received: expect.stringMatching(/^from example\.com by example\.net; /) },
      ],
    });
    const chain = await verifyChain(s, received);
    expect(chain.hops).toHaveLength(1);
    expect(chain.origin.claims.iss).toBe(s.fed.domains['example.com']!.issuer);
    expect(chain.origin.claims.azp).toBe('mta.example.com');
    expect(chain.origin.recipients).toEqual(['bob@example.net']);
  });

  it("Bob's client rebuilds the message from the Placeholder: text and photo, each checked by its digest", async () => {
    const bob = await s.user('bob@example.net');
    const view = await render(bob, received);
    expect(view).toMatchObject({ from: 'Alice <alice@example.com>', to: 'Bob <bob@example.net>', subject: 'Venice' });
    expect(view.text).toBe(text);
    expect(view.attachments.map((a) => [a.filename, a.mediaType, a.size])).toEqual([
      ['venice.png', 'image/png', photo.length],
    ]);
    expect(view.attachments[0]!.bytes.equals(photo)).toBe(true);
    // The photo is a picture a viewer can show: a valid PNG of the size it was made.
    expect(readPng(view.attachments[0]!.bytes)).toMatchObject({ width: 96, height: 64 });
    // The Placeholder's human rendering (YAML) reads back to the very message Bob holds.
    const placeholder = { envelope: received.envelope, body: received.body };
    const yaml = messageToYaml(placeholder);
    expect(yaml).toContain('venice.png');
    expect(parseMessage(yaml)).toEqual(placeholder);
  });

  it('example.net fetched each resource once from example.com, and Alice sees it fetched', async () => {
    const alice = await s.user('alice@example.com');
    const done = await until('the delivery marked fetched', async () => {
      const d = await deliveries(alice, sentId);
      return d[0]?.status === 'fetched' ? d : undefined;
    });
    expect(done).toEqual([expect.objectContaining({ recipient: 'bob@example.net', fetchedBy: 'example.net' })]);
    const origin = await s.metrics('example.com');
    const receiver = await s.metrics('example.net');
    expect(requests(origin, 'POST', FETCH_ROUTE, 200)).toBe(2);
    expect(receiver.value('federizer_mailbox_fetched_bytes_total')).toBe(Buffer.byteLength(text) + photo.length);
    expect(receiver.value('federizer_mailbox_queue_depth', { kind: 'fetch' })).toBe(0);
    expect(origin.value('federizer_mailbox_deliveries_total', { outcome: 'transferred' })).toBe(1);
  });

  // The client API's download answers "the resource, with its media type as Content-Type" (mailbox
  // OpenAPI). A resource fetched from another domain must keep the type its part declares.
  it('a fetched resource is served to its recipient with the media type its part declares', async () => {
    const bob = await s.user('bob@example.net');
    const photoCid = contentId(photo);
    const res = await bob.api(`/resources/${photoCid.slice(1, -1)}`);
    await res.arrayBuffer();
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
  });
});

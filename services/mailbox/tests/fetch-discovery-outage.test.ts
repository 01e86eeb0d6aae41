/**
 * The origin's fetch endpoint while the fetching domain cannot be discovered (PROTOCOL.md §6.3, §8, §11
 * `discovery_failed`), between two real domains over real DNS and HTTP. Alice of example.com sends Bob of
 * example.net a photo; example.com's mailbox then has to find example.net's issuer, keys and `mta_client_id`
 * through the embedded DNS server to check the fetch.
 *
 * - A failure that may pass (the DNS server is down; the SRV target of example.net's AS or mailbox refuses
 *   connections) answers 503 `temporarily_unavailable` with Retry-After; once example.net can be found again
 *   the same fetch succeeds, and example.net's own fetcher, which retried the 503, holds the photo.
 * - A definitive answer (no SRV record; an SRV record leading to another domain's issuer) still refuses
 *   with 401 `invalid_token`, which the fetcher takes as final.
 *
 * Each case starts example.com's mailbox afresh, so that its discovery cache has met no other domain yet.
 * The mailboxes' periodic long-poll check runs once an hour: only a notification wakes a poll here.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsServer, type DnsSrvData, type HttpClient } from '@federizer/common';
import { createDpopProof, dpopKeyOf, type Block, type DpopKey, type MailboxMetadata } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { MtaClient, fetchParams, testHttp } from '../../auth/tests/exchange-client.js';
import { freePort } from '../../auth/tests/harness.js';
import type { FetchJob, Job } from '../src/index.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';
import { allHeld, received, sendMessage, until, upload, type Uploaded } from './fetch-helpers.js';
import { documented } from './openapi-check.js';

interface Delivered {
  /** The id of Alice's sent copy. */
  readonly sentId: string;
  readonly messageId: string;
  readonly envelope: Block[];
  readonly inBob: string;
  readonly photo: Uploaded;
}

const AS_NET = '_federizer._as._tcp.example.net';
const RS_NET = '_federizer._rs._tcp.example.net';

describe.each(testDatabases())('fetch while example.net cannot be discovered ($name)', (database) => {
  let fed: MailFederation;
  let http: HttpClient;
  let alice: UserClient;
  let bob: UserClient;
  let origin: MailboxMetadata;
  let netMta: MtaClient;
  /** The DNS server that answers now: the harness's, or the one started again in its place. */
  let dns: DnsServer;
  let restartedDns: DnsServer | undefined;

  const com = () => fed.domains['example.com']!.mailbox;
  const net = () => fed.domains['example.net']!.mailbox;

  /**
   * A photo from Alice in Bob's inbox, not fetched yet (example.net's fetcher is paused). example.com's mailbox
   * starts afresh first, so that no failure an earlier case left in its discovery cache holds the transfer.
   */
  async function deliverToBob(subject: string): Promise<Delivered> {
    await freshOrigin();
    const photo = await upload(alice, randomBytes(30_000), 'image/jpeg');
    const sent = await sendMessage(alice, { to: ['bob@example.net'], subject, resources: [photo] });
    const inBob = await received(bob, sent.messageId);
    return { sentId: sent.sentId, messageId: sent.messageId, envelope: inBob.envelope, inBob: inBob.id, photo };
  }

  /** A real fetch token of example.net's AS for the message, and the DPoP key it is bound to. */
  async function fetchToken(m: Delivered): Promise<{ token: string; key: DpopKey }> {
    const assertion = (m.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    const exchanged = await netMta.exchange(fetchParams(assertion, origin.resource, m.messageId, 'example.com'));
    return { token: exchanged.token, key: await dpopKeyOf(exchanged.dpopKey) };
  }

  /** POST to example.com's fetch endpoint as example.net's fetcher does, with a fresh proof each time. */
  async function postFetch(m: Delivered, issued: { token: string; key: DpopKey }): Promise<Response> {
    const headers = {
      'content-type': 'application/json',
      authorization: `DPoP ${issued.token}`,
      dpop: await createDpopProof(issued.key, {
        htm: 'POST',
        htu: origin.fetch_endpoint,
        accessToken: issued.token,
      }),
    };
    const body = JSON.stringify({ envelope: m.envelope, content_id: m.photo.contentId, domain: 'example.net' });
    return documented(
      'POST',
      origin.fetch_endpoint,
      await http.fetch(origin.fetch_endpoint, { method: 'POST', headers, body }),
    );
  }

  /** example.com's mailbox as just started: it has discovered no other domain yet. */
  async function freshOrigin(): Promise<void> {
    await fed.stop('example.com');
    await fed.restart('example.com');
  }

  /** Replaces an SRV RRset for the time of `during`, and puts the original back whatever happens. */
  async function withSrv<T>(name: string, records: DnsSrvData[], during: () => Promise<T>): Promise<T> {
    const original = dns.getRecords(name, 'SRV')!;
    dns.setRecords(name, 'SRV', records);
    try {
      return await during();
    } finally {
      dns.setRecords(name, 'SRV', original.records, original.ttl);
    }
  }

  /** A port on which nothing listens: a target that refuses connections, as a host whose server is down. */
  async function deadTarget(name: string): Promise<DnsSrvData[]> {
    const port = await freePort();
    return dns.getRecords(name, 'SRV')!.records.map((r) => ({ ...r, port }));
  }

  async function expectUnavailable(res: Response, about: RegExp): Promise<void> {
    const text = await res.text();
    expect(res.status, text).toBe(503);
    const body = JSON.parse(text) as { error: string; error_description: string };
    expect(body.error).toBe('temporarily_unavailable');
    expect(body.error_description).toMatch(about);
    expect(res.headers.get('retry-after')).toBe('30');
    expect(res.headers.get('www-authenticate')).toBeNull();
  }

  async function expectRefused(res: Response, why: RegExp): Promise<void> {
    const text = await res.text();
    expect(res.status, text).toBe(401);
    expect((JSON.parse(text) as { error: string }).error).toBe('invalid_token');
    expect(text).toMatch(why);
    expect(res.headers.get('www-authenticate')).toMatch(/^DPoP error="invalid_token"/);
    expect(res.headers.get('retry-after')).toBeNull();
  }

  /** Asks until example.com's discovery has forgotten the failure (its transient negative cache) and answers. */
  async function originFindsNet(m: Delivered, issued: { token: string; key: DpopKey }): Promise<Response> {
    return until('the fetch answered by something else than 503', async () => {
      const res = await postFetch(m, issued);
      if (res.status !== 503) return res;
      await res.arrayBuffer();
      return undefined;
    });
  }

  /**
   * Alice's long poll on example.com, held from the state after her delivery to Bob was recorded as
   * transferred: the next change of her account is the delivery becoming fetched.
   */
  async function aliceWatches(m: Delivered): Promise<{ answer: Promise<{ updated: string[] }> }> {
    await until('the delivery transferred', async () => {
      const res = await alice.api(`/messages/${m.sentId}/deliveries`);
      const { deliveries } = (await res.json()) as { deliveries: { status: string }[] };
      return deliveries[0]?.status === 'transferred' ? true : undefined;
    });
    const { state } = (await (await alice.api('/state')).json()) as { state: string };
    const before = com().notifier.openPolls();
    // Below the test client's 10 s wait for headers; a poll nothing wakes answers empty.
    const answer = alice
      .api(`/changes?since=${state}&wait=8`)
      .then((res) => res.json() as Promise<{ updated: string[] }>);
    await until('the poll held', async () => (com().notifier.openPolls() > before ? true : undefined));
    // Wrapped: an async function returning the promise itself would wait for the answer.
    return { answer };
  }

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net'], {
      database: database.create,
      // A retry base of 1 s, so that a wait of 30 s after a 503 can only come from its Retry-After.
      config: { longPollCheckSeconds: 3600, retryBaseSeconds: 1 },
    });
    dns = fed.auth.dns;
    http = testHttp();
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password');
    // The tests drive the fetch themselves until one lets the fetcher go.
    net().fetcher.pause();
    [alice, bob] = await Promise.all([
      fed.user('alice@example.com', 'alice password'),
      fed.user('bob@example.net', 'bob password'),
    ]);
    origin = (await (
      await http.fetch(`${fed.domains['example.com']!.publicUrl}/.well-known/federizer`)
    ).json()) as MailboxMetadata;
    netMta = await MtaClient.connect(fed.auth.domains['example.net']!, http);
  });
  afterAll(async () => {
    await http?.close();
    await fed?.close();
    await restartedDns?.close();
  });

  it('PROTOCOL §6.3, §11 discovery_failed: while the DNS server does not answer, 503 with Retry-After; once it does, the fetch succeeds', async () => {
    const m = await deliverToBob('While DNS was down');
    const issued = await fetchToken(m);
    await freshOrigin();

    // The DNS server stops: example.com's lookups of _federizer._as._tcp.example.net are refused (ICMP).
    const { host, port } = dns.address;
    const snapshot = [AS_NET, RS_NET, '_federizer._as._tcp.example.com', '_federizer._rs._tcp.example.com'].map(
      (name) => ({ name, rrset: dns.getRecords(name, 'SRV')! }),
    );
    const zones = dns.zones;
    await dns.close();
    await expectUnavailable(await postFetch(m, issued), /_federizer\._as\._tcp\.example\.net.*SRV lookup failed/);

    // The same server comes back, same port and records: after the short negative cache, the fetch succeeds.
    restartedDns = await DnsServer.start({ host, port, zones });
    dns = restartedDns;
    for (const { name, rrset } of snapshot) dns.setRecords(name, 'SRV', rrset.records, rrset.ttl);
    const res = await originFindsNet(m, issued);
    expect(res.status, await res.clone().text()).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(m.photo.bytes)).toBe(true);
  });

  it("PROTOCOL §6.3, §11 discovery_failed: example.net's mailbox document does not answer (its SRV target refuses): 503, then 200", async () => {
    const m = await deliverToBob('While the mailbox document was unreachable');
    const issued = await fetchToken(m);
    await freshOrigin();
    const watching = await aliceWatches(m);
    await withSrv(RS_NET, await deadTarget(RS_NET), async () => {
      await expectUnavailable(
        await postFetch(m, issued),
        /the mailbox of example\.net.*_federizer\._rs\._tcp\.example\.net/,
      );
    });
    const res = await originFindsNet(m, issued);
    expect(res.status, await res.clone().text()).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(m.photo.bytes)).toBe(true);
    // The 503s changed nothing; the complete fetch marked the delivery fetched, and told Alice's long poll.
    expect((await watching.answer).updated).toEqual([m.sentId]);
  });

  it("PROTOCOL §6.5: example.net's fetcher retries the 503 of an unreachable AS, and fetches once example.com can reach it", async () => {
    const m = await deliverToBob('Fetched by the fetcher after the outage');
    await freshOrigin();
    const key = m.photo.contentId;
    await withSrv(AS_NET, await deadTarget(AS_NET), async () => {
      net().fetcher.resume();
      // The first attempt: example.com could not reach example.net's AS, so the job waits for a retry.
      const first = await until('the first fetch attempt over', async () => {
        const job = (await net().jobs.find('fetch', key)) as Job<FetchJob> | undefined;
        return job !== undefined && job.attempts >= 1 && job.leaseOwner === undefined ? job : undefined;
      });
      expect(first).toMatchObject({ status: 'pending', attempts: 1 });
      expect(first.lastError).toMatch(/answered 503/);
      expect(first.lastError).toMatch(/temporarily_unavailable/);
      // RFC 9110 §10.2.3: the fetcher waits as long as the origin's Retry-After (30 s) asks, not its backoff (1 to 2 s).
      expect(first.nextAttemptAt - first.updatedAt).toBeGreaterThan(29_000); // less the milliseconds between the two clocks
      net().fetcher.pause();
    });
    // example.com finds example.net's AS again (once its short negative cache has passed); the retry made due
    // now fetches the photo.
    await until('example.com discovers the issuer of example.net', () =>
      com()
        .discovery.issuerFor('example.net')
        .then(
          () => true,
          () => undefined,
        ),
    );
    expect(await net().jobs.advance('fetch', key)).toBe(true);
    net().fetcher.resume();
    try {
      const held = await allHeld(bob, m.inBob);
      expect(held.resources).toEqual([{ contentId: key, size: m.photo.size, status: 'held' }]);
      const download = await bob.api(`/resources/${key.slice(1, -1)}`);
      expect(Buffer.from(await download.arrayBuffer()).equals(m.photo.bytes)).toBe(true);
      const done = await until('the fetch job done', async () => {
        const job = await net().jobs.find('fetch', key);
        return job?.status === 'done' ? job : undefined;
      });
      expect(done.attempts).toBe(2);
    } finally {
      net().fetcher.pause();
    }
  });

  it('PROTOCOL §6.3 check 2, §11 discovery_no_records: no SRV record for example.net’s AS is definitive: 401 invalid_token', async () => {
    const m = await deliverToBob('No AS record');
    const issued = await fetchToken(m);
    await freshOrigin();
    await withSrv(AS_NET, [], async () => {
      await expectRefused(await postFetch(m, issued), /no SRV records/);
    });
  });

  it('PROTOCOL §6.3 check 3, §11 discovery_no_records: no SRV record for example.net’s mailbox is definitive: 401 invalid_token', async () => {
    const m = await deliverToBob('No mailbox record');
    const issued = await fetchToken(m);
    await freshOrigin();
    await withSrv(RS_NET, [], async () => {
      await expectRefused(await postFetch(m, issued), /the MTA of example\.net.*no SRV records/);
    });
  });

  it("PROTOCOL §6.3 check 2, §11 issuer_mismatch: example.net's AS record leading to example.com's issuer is definitive: 401", async () => {
    const m = await deliverToBob('Another issuer');
    const issued = await fetchToken(m);
    await freshOrigin();
    const comAs = dns.getRecords('_federizer._as._tcp.example.com', 'SRV')!.records;
    await withSrv(AS_NET, comAs, async () => {
      await expectRefused(await postFetch(m, issued), /iss .* is not .*the issuer of example\.net/);
    });
  });
});

/**
 * Scenarios 3 and 4: forwarding (PROTOCOL.md §6.5, §7).
 *
 * 3. The forward chain: Bob of example.net forwards everything to bobby@example.org with a rule that keeps
 *    no copy. Alice's message reaches example.net, which signs the forward hop and transfers
 *    `[A2, H1, A1, H0]` to example.org without fetching anything (a pure relay); example.org fetches every
 *    resource straight from example.com, presenting the chain, and Bobby's client verifies it through DNS.
 * 4. Forwarding denied by policy: the forward exchange at example.net's AS refuses a rule of a user whose
 *    policy allows manual forwards only, and a manual forward of a user whose policy is `none`. The user
 *    keeps the message and is told why; the target never hears of it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headerValue, isHeadersBlock, type Header } from '@federizer/protocol';
import {
  FETCH_ROUTE,
  TRANSFER_ROUTE,
  arrived,
  copiesOf,
  deliveries,
  download,
  draft,
  list,
  makePng,
  messageIdOf,
  read,
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

describe('forwarding across three domains', () => {
  let s: Scenario;
  beforeAll(async () => {
    s = await startScenario({ processes: false });
  });
  afterAll(() => s?.close());

  describe('scenario 3: the forward chain through a relay-only hop', () => {
    const text = 'Bob,\n\nthe tickets for Saturday.\n\nAlice\n';
    const photo = makePng(120, 80);
    let messageId: string;
    let sentId: string;
    let atBobby: Stored;
    let before: { net: number; comFetches: number };

    beforeAll(async () => {
      await s.updateUser('bob@example.net', { forwardingPolicy: 'any' });
      const bob = await s.user('bob@example.net');
      const rule = await bob.api('/forwarding', {
        method: 'PUT',
        json: { targets: ['bobby@example.org'], keepCopy: false, enabled: true },
      });
      expect(rule.status, await rule.clone().text()).toBe(200);
      const net = await s.metrics('example.net');
      before = {
        net: net.value('federizer_mailbox_fetch_duration_seconds_count'),
        comFetches: requests(await s.metrics('example.com'), 'POST', FETCH_ROUTE),
      };
      const alice = await s.user('alice@example.com');
      const message = draft({
        from: 'Alice <alice@example.com>',
        to: 'Bob <bob@example.net>',
        subject: 'Tickets',
        parts: [
          { resource: await upload(alice, text, 'text/plain; charset=utf-8') },
          { resource: await upload(alice, photo, 'image/png'), filename: 'tickets.png' },
        ],
      });
      messageId = messageIdOf(message);
      sentId = (await send(alice, message)).id;
      atBobby = await arrived(await s.user('bobby@example.org'), messageId, { held: true });
    });

    it('Bobby holds the chain [receive, A2, H1, A1, H0], valid from DNS alone: origin example.com, hop example.net', async () => {
      expect(atBobby.envelope).toHaveLength(5);
      const receive = atBobby.envelope[0]!;
      expect(isHeadersBlock(receive) && headerValue(receive.headers, 'Received')).toMatch(
        /^from example\.net by example\.org; /,
      );
      const chain = await verifyChain(s, atBobby);
      expect(chain.hops.map((h) => [h.kind, h.sender, h.claims.iss, h.claims.azp])).toEqual([
        ['origin', 'alice@example.com', s.fed.domains['example.com']!.issuer, 'mta.example.com'],
        ['forward', 'bob@example.net', s.fed.domains['example.net']!.issuer, 'mta.example.net'],
      ]);
      expect(chain.newest.recipients).toEqual(['bobby@example.org']);
      const h1 = (atBobby.envelope[2] as { headers: Header[] }).headers;
      expect(headerValue(h1, 'Forwarded-From')).toBe('Bob <bob@example.net>');
      expect(headerValue(h1, 'Forwarded-To')).toBe('bobby@example.org');
    });

    it("Bobby's client rebuilds the message: Alice's text and photo, unchanged", async () => {
      const view = await render(await s.user('bobby@example.org'), atBobby);
      expect(view.from).toBe('Alice <alice@example.com>');
      expect(view.to).toBe('Bob <bob@example.net>');
      expect(view.text).toBe(text);
      expect(view.attachments[0]!.bytes.equals(photo)).toBe(true);
    });

    it('example.org fetched from example.com directly; example.net, a relay, fetched nothing', async () => {
      const net = await s.metrics('example.net');
      expect(net.value('federizer_mailbox_fetch_duration_seconds_count') - before.net).toBe(0);
      expect(net.value('federizer_mailbox_fetched_bytes_total')).toBe(0);
      expect(net.value('federizer_mailbox_queue_depth', { kind: 'fetch' })).toBe(0);
      // example.com served the two resources once each, and counts the delivery to Bob as fetched by example.org.
      const com = await s.metrics('example.com');
      expect(requests(com, 'POST', FETCH_ROUTE) - before.comFetches).toBe(2);
      expect(requests(com, 'POST', FETCH_ROUTE, 200) - before.comFetches).toBe(2);
      const alice = await s.user('alice@example.com');
      const d = await until('the delivery to Bob fetched', async () => {
        const all = await deliveries(alice, sentId);
        return all[0]?.status === 'fetched' ? all : undefined;
      });
      expect(d).toEqual([expect.objectContaining({ recipient: 'bob@example.net', fetchedBy: 'example.org' })]);
      // Nor does Bob's mailbox hold the bytes: they were never in example.net.
      const bob = await s.user('bob@example.net');
      for (const r of atBobby.resources) expect((await download(bob, r.contentId)).res.status).toBe(404);
    });

    it('the relay keeps no copy: once the forward is transferred, Bob has nothing of it', async () => {
      const bob = await s.user('bob@example.net');
      await until('the relayed message gone from every mailbox of Bob', async () =>
        (await copiesOf(bob, messageId)).length === 0 ? true : undefined,
      );
    });

    afterAll(async () => {
      const bob = await s.user('bob@example.net');
      await bob.api('/forwarding', { method: 'PUT', json: { targets: [], keepCopy: true, enabled: false } });
    });
  });

  describe('scenario 4: forwarding denied by policy', () => {
    const text = 'Frank,\n\nthe contract, for your eyes only.\n';
    let messageId: string;
    let sentId: string;
    let atFrank: Stored;
    let orgTransfers: number;

    beforeAll(async () => {
      // The AS's default policy, `manual`: forwards Frank makes by hand, never by a rule.
      await s.createUser('frank@example.net', { displayName: 'Frank' });
      await s.createUser('gina@example.net', { displayName: 'Gina', forwardingPolicy: 'none' });
      const frank = await s.user('frank@example.net');
      const rule = await frank.api('/forwarding', {
        method: 'PUT',
        json: { targets: ['bobby@example.org'], keepCopy: false, enabled: true },
      });
      expect(rule.status, await rule.clone().text()).toBe(200);
      orgTransfers = requests(await s.metrics('example.org'), 'POST', TRANSFER_ROUTE);
      const alice = await s.user('alice@example.com');
      const message = draft({
        from: 'alice@example.com',
        to: 'Frank <frank@example.net>, Gina <gina@example.net>',
        subject: 'Contract',
        parts: [{ resource: await upload(alice, text, 'text/plain; charset=utf-8') }],
      });
      messageId = messageIdOf(message);
      sentId = (await send(alice, message)).id;
      atFrank = await arrived(frank, messageId, { held: true });
    });

    it('a rule of a user whose policy is `manual` is refused by the AS: Frank keeps the message and is told why', async () => {
      const frank = await s.user('frank@example.net');
      // Kept in the inbox despite keepCopy false: the forward did not happen.
      expect(atFrank.mailbox).toBe('inbox');
      expect((await render(frank, atFrank)).text).toBe(text);
      const notice = await until("the notice in Frank's inbox", async () =>
        (await list(frank)).find((m) => m.subject === 'Auto-forwarding denied by policy'),
      );
      expect(notice.from).toBe('Mail System <postmaster@example.net>');
      const view = await render(frank, await read(frank, notice.id), { signed: false });
      expect(view.text).toContain(`forward the message ${messageId} ("Contract") to bobby@example.org`);
      expect(view.text).toContain(
        'the forwarding policy of frank@example.net (manual) does not allow automatic forwarding',
      );
      // No forward was signed: the received message has no copy of its own going anywhere.
      expect(await deliveries(frank, atFrank.id)).toEqual([]);
    });

    it('a manual forward of a user whose policy is `none` answers 403 forwarding_denied with the reason', async () => {
      const gina = await s.user('gina@example.net');
      const mine = await arrived(gina, messageId, { held: true });
      const res = await gina.api(`/messages/${mine.id}/forward`, { method: 'POST', json: { to: 'bobby@example.org' } });
      expect(res.status).toBe(403);
      expect(await res.json()).toEqual({
        error: 'forwarding_denied',
        error_description: 'the forwarding policy of gina@example.net (none) does not allow forwarding',
      });
      expect(await deliveries(gina, mine.id)).toEqual([]);
    });

    it('nothing leaks: example.org received no transfer, Bobby has nothing, only example.net fetched', async () => {
      const bobby = await s.user('bobby@example.org');
      expect(await copiesOf(bobby, messageId)).toEqual([]);
      // The counter counts: example.org took the forward of scenario 3 through it.
      expect(orgTransfers).toBeGreaterThan(0);
      expect(requests(await s.metrics('example.org'), 'POST', TRANSFER_ROUTE)).toBe(orgTransfers);
      const alice = await s.user('alice@example.com');
      const d = await until('both deliveries fetched', async () => {
        const all = await deliveries(alice, sentId);
        return all.every((x) => x.status === 'fetched') ? all : undefined;
      });
      expect(d.map((x) => [x.recipient, x.fetchedBy]).sort()).toEqual([
        ['frank@example.net', 'example.net'],
        ['gina@example.net', 'example.net'],
      ]);
      // The bytes reached example.org by no other way either.
      const resource = atFrank.resources[0]!.contentId;
      expect((await download(bobby, resource)).res.status).toBe(404);
    });

    it('the same user may still forward by hand (the policy `manual` allows it), and then Bobby gets it', async () => {
      const frank = await s.user('frank@example.net');
      const res = await frank.api(`/messages/${atFrank.id}/forward`, {
        method: 'POST',
        json: { to: 'Bobby <bobby@example.org>' },
      });
      expect(res.status, await res.clone().text()).toBe(202);
      const got = await arrived(await s.user('bobby@example.org'), messageId, { held: true });
      expect((await verifyChain(s, got)).hops.map((h) => h.sender)).toEqual(['alice@example.com', 'frank@example.net']);
    });
  });
});

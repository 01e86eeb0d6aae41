/**
 * Two local federations started apart, as two operators (or two implementations) would run them: one with
 * example.com, the other with example.net, each with its own DNS server, which relays the queries for the
 * other's domain to the other's server (`federizer up --dns-forward`). Mail goes both ways through the
 * protocol alone: discovery of the other domain's AS and mailbox through SRV records served by the other
 * DNS server (PROTOCOL §8), the transfer (§5) and the fetch (§6). Only HTTP, as real clients.
 */
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsClient } from '@federizer/common';
import { arrived, download, draft, messageIdOf, send, startScenario, upload, type Scenario } from './helpers.js';

/** Whether every port of base..base+12 (the DNS server and one domain's three services) is free now. */
async function free(base: number): Promise<boolean> {
  for (let port = base; port <= base + 12; port++) {
    const ok = await new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (!ok) return false;
  }
  return true;
}

describe('two federations that find each other through DNS forwarding', () => {
  let com: Scenario;
  let net: Scenario;

  beforeAll(async () => {
    // example.net's federation gets a fixed port base, so that example.com's DNS server can relay to its DNS
    // server before it starts; below Linux's ephemeral range (32768 and up), as up.test.ts explains.
    let base = 0;
    for (let attempt = 0; attempt < 20 && base === 0; attempt++) {
      const candidate = 20_000 + Math.floor(Math.random() * 12_000);
      if (await free(candidate)) base = candidate;
    }
    expect(base, 'no free port base').not.toBe(0);
    com = await startScenario({
      processes: false,
      domains: ['example.com'],
      dnsForward: { host: '127.0.0.1', port: base },
    });
    net = await startScenario({ processes: false, domains: ['example.net'], portBase: base, dnsForward: com.fed.dns });
  });
  afterAll(async () => {
    await net?.close();
    await com?.close();
  });

  it("each DNS server answers its own domain's SRV records and relays the other's", async () => {
    for (const [here, there] of [
      [com, 'example.net'],
      [net, 'example.com'],
    ] as const) {
      const client = new DnsClient({ servers: [here.fed.dns], timeoutMs: 2000, retries: 1 });
      const rs = await client.resolveSrv(`_federizer._rs._tcp.${there}`);
      const theirs = there === 'example.net' ? net : com;
      expect(rs.records.map((r) => r.port)).toEqual([Number(new URL(theirs.fed.domains[there]!.mailboxUrl).port)]);
    }
  });

  it('Alice of one federation writes to Bob of the other, who answers; both fetch the other’s resources', async () => {
    const alice = await com.user('alice@example.com');
    const bob = await net.user('bob@example.net');

    const note = await upload(alice, 'Hello from the other federation.\n', 'text/plain; charset=utf-8');
    const attachment = await upload(alice, Buffer.alloc(200_000, 7), 'application/octet-stream');
    const first = draft({
      from: 'Alice <alice@example.com>',
      to: 'Bob <bob@example.net>',
      subject: 'Across federations',
      parts: [{ resource: note }, { resource: attachment, filename: 'data.bin' }],
    });
    await send(alice, first);
    const received = await arrived(bob, messageIdOf(first), { held: true });
    expect(received.envelope[0]).toEqual({
      headers: [
        { 'Message-ID': messageIdOf(first) },
        { 'JWT-Assertion-Digest': expect.stringMatching(/^<[\w-]{43}>$/) },
        { Received: expect.stringMatching(/^from example\.com by example\.net; /) },
      ],
    });
    const got = await download(bob, attachment.contentId);
    expect(got.res.status).toBe(200);
    expect(got.bytes.equals(Buffer.alloc(200_000, 7))).toBe(true);

    const answer = await upload(bob, 'Received, thank you.\n', 'text/plain; charset=utf-8');
    const reply = draft({
      from: 'Bob <bob@example.net>',
      to: 'Alice <alice@example.com>',
      subject: 'Re: Across federations',
      parts: [{ resource: answer }],
    });
    await send(bob, reply);
    const back = await arrived(alice, messageIdOf(reply), { held: true });
    expect(back.subject).toBe('Re: Across federations');
  });
});

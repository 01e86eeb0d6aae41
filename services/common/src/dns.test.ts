import dgram from 'node:dgram';
import dns from 'node:dns';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import type { Answer, DecodedPacket } from 'dns-packet';
import type { SrvResolver } from '@federizer/protocol';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DnsClient, DnsError, localhostLookup } from './dns-client.js';
import { DnsServer } from './dns-server.js';

// ---------------------------------------------------------------------------------------------------
// Helpers: raw DNS messages, so that the server is checked on the wire and not only through our client

const SRV_NAME = '_federizer._as._tcp.example.com';

interface RawReply {
  packet: DecodedPacket;
  rcode: number;
  bytes: Buffer;
}

function decodeReply(bytes: Buffer): RawReply {
  const packet = dnsPacket.decode(bytes);
  return { packet, rcode: (packet.flags ?? 0) & 0xf, bytes };
}

function encodeQuery(name: string, type: string, id = 4242): Buffer {
  return dnsPacket.encode({ type: 'query', id, questions: [{ type, name } as dnsPacket.Question] });
}

/** Sends datagrams from one socket and collects every reply for `waitMs`, or until `count` arrived. */
async function udpExchange(port: number, messages: Buffer[], count: number, waitMs = 1000): Promise<Buffer[]> {
  const socket = dgram.createSocket('udp4');
  const replies: Buffer[] = [];
  try {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, waitMs);
      socket.on('message', (message) => {
        replies.push(message);
        if (replies.length >= count) {
          clearTimeout(timer);
          resolve();
        }
      });
      socket.connect(port, '127.0.0.1', () => {
        for (const message of messages) socket.send(message);
      });
    });
  } finally {
    socket.close();
  }
  return replies;
}

async function udpQuery(port: number, message: Buffer): Promise<RawReply> {
  const [reply] = await udpExchange(port, [message], 1);
  if (reply === undefined) throw new Error('no UDP reply');
  return decodeReply(reply);
}

function frame(message: Buffer): Buffer {
  const length = Buffer.alloc(2);
  length.writeUInt16BE(message.length, 0);
  return Buffer.concat([length, message]);
}

/** Writes `chunks` as they are (framing is the caller's) and reads `count` length-prefixed replies. */
async function tcpExchange(port: number, chunks: Buffer[], count: number): Promise<Buffer[]> {
  const socket = net.connect({ host: '127.0.0.1', port });
  try {
    return await new Promise<Buffer[]>((resolve, reject) => {
      let pending = Buffer.alloc(0);
      const replies: Buffer[] = [];
      socket.on('error', reject);
      socket.on('data', (chunk) => {
        pending = Buffer.concat([pending, chunk]);
        while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
          replies.push(pending.subarray(2, 2 + pending.readUInt16BE(0)));
          pending = pending.subarray(2 + pending.readUInt16BE(0));
        }
        if (replies.length >= count) resolve(replies);
      });
      socket.on('connect', async () => {
        for (const chunk of chunks) {
          socket.write(chunk);
          // Lets the server see the pieces of a split frame separately.
          await new Promise((r) => setTimeout(r, 20));
        }
      });
    });
  } finally {
    socket.destroy();
  }
}

function wireName(name: string): Buffer {
  const labels = name.split('.').filter((label) => label.length > 0);
  return Buffer.concat([
    ...labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])),
    Buffer.from([0]),
  ]);
}

/** One resource record by hand: dns-packet cannot encode class NONE (254) nor an empty RDATA for most types. */
function wireRecord(name: string, type: number, klass: number, ttl: number, rdata: Buffer = Buffer.alloc(0)): Buffer {
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(type, 0);
  fixed.writeUInt16BE(klass, 2);
  fixed.writeUInt32BE(ttl, 4);
  fixed.writeUInt16BE(rdata.length, 8);
  return Buffer.concat([wireName(name), fixed, rdata]);
}

function srvRdata(priority: number, weight: number, port: number, target: string): Buffer {
  const fixed = Buffer.alloc(6);
  fixed.writeUInt16BE(priority, 0);
  fixed.writeUInt16BE(weight, 2);
  fixed.writeUInt16BE(port, 4);
  return Buffer.concat([fixed, wireName(target)]);
}

/** An RFC 2136 UPDATE from raw sections: prerequisites travel in the answer section, updates in the authority. */
function wireUpdate(zone: string, prerequisites: Buffer[], updates: Buffer[], id = 777): Buffer {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(5 << 11, 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(prerequisites.length, 6);
  header.writeUInt16BE(updates.length, 8);
  const zoneSection = Buffer.concat([wireName(zone), Buffer.from([0, 6, 0, 1])]);
  return Buffer.concat([header, zoneSection, ...prerequisites, ...updates]);
}

const TYPE = { A: 1, CNAME: 5, TXT: 16, SRV: 33, ANY: 255 } as const;
const CLASS = { IN: 1, NONE: 254, ANY: 255 } as const;

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  await expect(promise).rejects.toMatchObject({ code });
}

function sortSrv<T extends { port: number }>(records: T[]): T[] {
  return [...records].sort((a, b) => a.port - b.port);
}

/** A UDP socket that reads queries and never answers, standing in for an unreachable server. */
async function silentServer(): Promise<{ port: number; received: Buffer[]; close: () => Promise<void> }> {
  const socket = dgram.createSocket('udp4');
  const received: Buffer[] = [];
  socket.on('message', (message) => received.push(message));
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return {
    port: socket.address().port,
    received,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

async function startHttp(): Promise<{ port: number; server: http.Server }> {
  const server = http.createServer((req, res) => res.end(`hello ${req.headers.host}`));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as AddressInfo).port, server };
}

function httpGet(options: http.RequestOptions): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ ...options, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

function lookupOnce(
  lookup: DnsClient['lookup'],
  hostname: string,
  options: dns.LookupOptions,
): Promise<{ address: string | dns.LookupAddress[]; family: number | undefined }> {
  return new Promise((resolve, reject) => {
    lookup(hostname, options, (error, address, family) => (error ? reject(error) : resolve({ address, family })));
  });
}

// ---------------------------------------------------------------------------------------------------

describe('embedded DNS server and client', () => {
  let server: DnsServer;
  let client: DnsClient;
  let resolver: dns.promises.Resolver;

  beforeEach(async () => {
    server = await DnsServer.start({ zones: ['example.com', 'localhost'], allowUpdates: true });
    client = new DnsClient({ servers: [server.address], timeoutMs: 1000, retries: 1 });
    // c-ares: a DNS client written independently of ours and of dns-packet.
    resolver = new dns.promises.Resolver({ timeout: 1000, tries: 1 });
    resolver.setServers([`127.0.0.1:${server.address.port}`]);
  });

  afterEach(async () => {
    await server.close();
  });

  it('RFC 2782: SRV records are answered with their RRset TTL over UDP', async () => {
    server.setRecords(
      SRV_NAME,
      'SRV',
      [
        { priority: 10, weight: 60, port: 8443, target: 'as1.example-com.localhost' },
        { priority: 20, weight: 0, port: 9443, target: 'as2.example-com.localhost' },
      ],
      120,
    );
    const answer = await client.resolveSrv(SRV_NAME);
    expect(sortSrv(answer.records)).toEqual([
      { name: 'as1.example-com.localhost', port: 8443, priority: 10, weight: 60 },
      { name: 'as2.example-com.localhost', port: 9443, priority: 20, weight: 0 },
    ]);
    expect(answer.ttl).toBe(120);

    const raw = await udpQuery(server.address.port, encodeQuery(SRV_NAME, 'SRV'));
    expect(raw.packet.flag_aa).toBe(true);
    expect(raw.packet.answers?.map((a) => (a as { ttl?: number }).ttl)).toEqual([120, 120]);

    // The client is what discovery.ts is given as its SrvResolver.
    const resolveSrv: SrvResolver = client.resolveSrv;
    expect((await resolveSrv(SRV_NAME)).records).toHaveLength(2);
  });

  it("RFC 2782: node's own resolver (c-ares) reads the same SRV records", async () => {
    server.addRecord(SRV_NAME, 'SRV', { priority: 1, weight: 5, port: 4000, target: 'as.example-com.localhost' });
    expect(await resolver.resolveSrv(SRV_NAME)).toEqual([
      { name: 'as.example-com.localhost', port: 4000, priority: 1, weight: 5 },
    ]);
  });

  it('RFC 1035 §4.2.1, RFC 7766 §5 TCP: an answer over 512 bytes sets TC over UDP and arrives whole over TCP', async () => {
    const records = Array.from({ length: 30 }, (_, i) => ({
      priority: 10,
      weight: i,
      port: 10_000 + i,
      target: `mail-${i}.example-com.localhost`,
    }));
    server.setRecords(SRV_NAME, 'SRV', records);

    const raw = await udpQuery(server.address.port, encodeQuery(SRV_NAME, 'SRV'));
    expect(raw.packet.flag_tc).toBe(true);
    expect(raw.bytes.length).toBeLessThanOrEqual(512);
    expect(raw.packet.answers).toEqual([]);
    expect(raw.packet.questions?.[0]?.name).toBe(SRV_NAME);

    const ours = await client.resolveSrv(SRV_NAME);
    expect(sortSrv(ours.records).map((r) => r.port)).toEqual(records.map((r) => r.port));

    const theirs = await resolver.resolveSrv(SRV_NAME);
    expect(sortSrv(theirs).map((r) => r.name)).toEqual(records.map((r) => r.target));
  });

  it('RFC 7766 §6.2.1 TCP: one connection carries pipelined queries, whatever the segmentation', async () => {
    server.setRecords('mail.example-com.localhost', 'A', ['127.0.0.1']);
    const first = frame(encodeQuery('mail.example-com.localhost', 'A', 1));
    const second = frame(encodeQuery(SRV_NAME, 'SRV', 2));
    const third = frame(encodeQuery('mail.example-com.localhost', 'AAAA', 3));
    const replies = await tcpExchange(
      server.address.port,
      [Buffer.concat([first, second]), third.subarray(0, 1), third.subarray(1, 9), third.subarray(9)],
      3,
    );
    const decoded = replies.map(decodeReply);
    expect(decoded.map((r) => r.packet.id)).toEqual([1, 2, 3]);
    expect(decoded[0]!.packet.answers?.[0]).toMatchObject({ type: 'A', data: '127.0.0.1' });
    expect(decoded[1]!.rcode).toBe(3);
    expect(decoded.map((r) => r.packet.flag_tc)).toEqual([false, false, false]);
  });

  it('RFC 1035 §3.4.1, RFC 3596: A and AAAA records come with their TTL', async () => {
    server.setRecords('mail.example-com.localhost', 'A', ['127.0.0.1', '127.0.0.2'], 30);
    server.setRecords('mail.example-com.localhost', 'AAAA', ['0:0:0:0:0:0:0:1'], 45);

    expect(await client.resolve4('mail.example-com.localhost')).toEqual([
      { address: '127.0.0.1', ttl: 30 },
      { address: '127.0.0.2', ttl: 30 },
    ]);
    expect(await client.resolve6('mail.example-com.localhost')).toEqual([{ address: '::1', ttl: 45 }]);
    expect(await resolver.resolve4('mail.example-com.localhost', { ttl: true })).toEqual([
      { address: '127.0.0.1', ttl: 30 },
      { address: '127.0.0.2', ttl: 30 },
    ]);
    expect(await resolver.resolve6('mail.example-com.localhost', { ttl: true })).toEqual([{ address: '::1', ttl: 45 }]);
  });

  it('RFC 1035 §4.1.1 RCODE 3 and RFC 2308 §2.2 NODATA: NXDOMAIN for unknown names, no answers for others', async () => {
    server.setRecords('as.example-com.localhost', 'A', ['127.0.0.1']);
    server.setRecords(SRV_NAME, 'SRV', [{ priority: 0, weight: 0, port: 1, target: 'as.example-com.localhost' }]);

    const missing = await udpQuery(server.address.port, encodeQuery('_federizer._rs._tcp.example.com', 'SRV'));
    expect(missing.rcode).toBe(3);
    expect(missing.packet.flag_aa).toBe(true);
    expect(missing.packet.authorities?.[0]).toMatchObject({ type: 'SOA', name: 'example.com', ttl: 5 });
    const nodata = await udpQuery(server.address.port, encodeQuery('as.example-com.localhost', 'SRV'));
    expect(nodata.rcode).toBe(0);
    expect(nodata.packet.answers).toEqual([]);
    expect(nodata.packet.authorities?.[0]).toMatchObject({ type: 'SOA', name: 'localhost' });

    await expectCode(client.resolveSrv('_federizer._rs._tcp.example.com'), 'ENOTFOUND');
    expect(await client.resolveSrv('as.example-com.localhost')).toEqual({ records: [], ttl: 5 });
    // RFC 8020: an empty non-terminal exists, so it is NODATA too.
    expect((await client.resolveSrv('_tcp.example.com')).records).toEqual([]);
    expect(await client.resolve6('as.example-com.localhost')).toEqual([]);

    await expectCode(resolver.resolveSrv('_federizer._rs._tcp.example.com'), 'ENOTFOUND');
    await expectCode(resolver.resolveSrv('as.example-com.localhost'), 'ENODATA');
  });

  it('RFC 1035 §4.1.1 RCODE 5: names outside the zones are REFUSED', async () => {
    const raw = await udpQuery(server.address.port, encodeQuery('_federizer._as._tcp.example.net', 'SRV'));
    expect(raw.rcode).toBe(5);
    expect(raw.packet.flag_aa).toBe(false);
    expect(raw.packet.answers).toEqual([]);

    await expectCode(client.resolveSrv('_federizer._as._tcp.example.net'), 'EREFUSED');
    await expectCode(resolver.resolveSrv('_federizer._as._tcp.example.net'), 'EREFUSED');
    expect(() => server.setRecords('as.example.net', 'A', ['127.0.0.1'])).toThrow(/outside the zones/);
  });

  it('RFC 1035 §4.1.1 RCODE 1: undecodable packets get FORMERR and the server keeps serving', async () => {
    server.setRecords(SRV_NAME, 'SRV', [{ priority: 0, weight: 0, port: 443, target: 'as.example-com.localhost' }]);
    const valid = encodeQuery(SRV_NAME, 'SRV', 0x0101);
    const garbage = [
      Buffer.from([0x12, 0x34, 0x00]), // shorter than a header
      Buffer.concat([Buffer.from([0x12, 0x35, 0x01, 0x00, 0x00, 0x01]), Buffer.alloc(6), Buffer.from([0x3f, 0x61])]),
      Buffer.concat([encodeQuery(SRV_NAME, 'SRV', 0x1236), Buffer.from([1, 2, 3])]), // trailing bytes
      (() => {
        const q = Buffer.from(encodeQuery(SRV_NAME, 'SRV', 0x1237));
        q.writeUInt16BE(2, 4); // QDCOUNT says two questions, only one follows
        return q;
      })(),
      (() => {
        const q = Buffer.from(encodeQuery(SRV_NAME, 'SRV', 0x1238));
        q[12] = 0x80; // a label type reserved by RFC 1035 §4.1.4
        return q;
      })(),
    ];
    const udpReplies = (await udpExchange(server.address.port, garbage, garbage.length)).map(decodeReply);
    expect(udpReplies.map((r) => [r.packet.id, r.rcode]).sort()).toEqual([
      [0x1234, 1],
      [0x1235, 1],
      [0x1236, 1],
      [0x1237, 1],
      [0x1238, 1],
    ]);

    // A message with QR set is a response: answering it could start a loop, so it is dropped.
    const response = Buffer.from(encodeQuery(SRV_NAME, 'SRV', 0x0bad));
    response[2]! |= 0x80;
    const [first] = await udpExchange(server.address.port, [response, Buffer.from([7]), valid], 1);
    expect(decodeReply(first!).packet.id).toBe(0x0101);

    const random = Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 37 + 11) % 256));
    random[2] = 0x01;
    const [overTcp] = await tcpExchange(server.address.port, [frame(random), frame(valid)], 2);
    expect(decodeReply(overTcp!).rcode).toBe(1);

    expect((await client.resolveSrv(SRV_NAME)).records).toHaveLength(1);
    expect(await resolver.resolveSrv(SRV_NAME)).toHaveLength(1);
  });

  it('RFC 4343: names match case-insensitively and the question comes back as it was asked', async () => {
    server.setRecords('Mail.Example-Com.localhost', 'A', ['127.0.0.9']);
    const raw = await udpQuery(server.address.port, encodeQuery('MAIL.example-COM.LocalHost', 'A'));
    expect(raw.packet.questions?.[0]?.name).toBe('MAIL.example-COM.LocalHost');
    expect(raw.packet.answers?.[0]).toMatchObject({ data: '127.0.0.9' });
    expect(await client.resolve4('mail.EXAMPLE-com.localhost.')).toEqual([{ address: '127.0.0.9', ttl: 60 }]);
    expect(server.getRecords('MAIL.example-com.localhost', 'A')).toEqual({ ttl: 60, records: ['127.0.0.9'] });
  });

  it('RFC 1034 §3.6.2: a CNAME is followed to its target and cannot share its name with other data', async () => {
    server.setRecords('webmail.example-com.localhost', 'CNAME', ['mail.example-com.localhost'], 300);
    server.setRecords('mail.example-com.localhost', 'A', ['127.0.0.3'], 20);
    const raw = await udpQuery(server.address.port, encodeQuery('webmail.example-com.localhost', 'A'));
    expect(raw.packet.answers?.map((a) => a.type)).toEqual(['CNAME', 'A']);
    expect(await client.resolve4('webmail.example-com.localhost')).toEqual([{ address: '127.0.0.3', ttl: 20 }]);
    expect(await resolver.resolve4('webmail.example-com.localhost')).toEqual(['127.0.0.3']);
    expect(() => server.setRecords('webmail.example-com.localhost', 'A', ['127.0.0.4'])).toThrow(/CNAME/);
    expect(() => server.setRecords('mail.example-com.localhost', 'CNAME', ['x.localhost'])).toThrow(/CNAME/);
  });

  it('RFC 5452 §9.1: the client drops replies whose ID or question do not match and waits for the real one', async () => {
    const fake = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => fake.bind(0, '127.0.0.1', resolve));
    let honest = true;
    fake.on('message', (message, remote) => {
      const query = dnsPacket.decode(message);
      const answer = (name: string): Answer => ({ type: 'A', name, ttl: 9, class: 'IN', data: '10.9.9.9' });
      const forged = (id: number, name: string): Buffer =>
        dnsPacket.encode({
          type: 'response',
          id,
          flags: dnsPacket.AUTHORITATIVE_ANSWER,
          questions: [{ type: 'A', name }],
          answers: [answer(name)],
        });
      const real = query.questions![0]!.name;
      fake.send(forged((query.id! + 1) % 65536, real), remote.port, remote.address);
      fake.send(forged(query.id!, 'other.example-com.localhost'), remote.port, remote.address);
      fake.send(Buffer.from('not dns at all'), remote.port, remote.address);
      if (honest) {
        const reply = dnsPacket.encode({
          type: 'response',
          id: query.id!,
          flags: dnsPacket.AUTHORITATIVE_ANSWER,
          questions: [{ type: 'A', name: real }],
          answers: [{ type: 'A', name: real, ttl: 7, class: 'IN', data: '127.0.0.7' }],
        });
        setTimeout(() => fake.send(reply, remote.port, remote.address), 30);
      }
    });
    try {
      const port = (fake.address() as AddressInfo).port;
      const fakeClient = new DnsClient({ servers: [{ host: '127.0.0.1', port }], timeoutMs: 300, retries: 0 });
      expect(await fakeClient.resolve4('mail.example-com.localhost')).toEqual([{ address: '127.0.0.7', ttl: 7 }]);
      honest = false;
      await expectCode(fakeClient.resolve4('mail.example-com.localhost'), 'ETIMEOUT');
    } finally {
      fake.close();
    }
  });

  it('RFC 1035 §4.2.1: a server that never answers times out with ETIMEOUT after every retry', async () => {
    const silent = await silentServer();
    try {
      const slow = new DnsClient({ servers: [{ host: '127.0.0.1', port: silent.port }], timeoutMs: 100, retries: 2 });
      const started = Date.now();
      const error = await slow.resolveSrv(SRV_NAME).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(DnsError);
      expect(error).toMatchObject({ code: 'ETIMEOUT', syscall: 'querySrv', hostname: SRV_NAME });
      expect(Date.now() - started).toBeGreaterThanOrEqual(290);
      expect(silent.received).toHaveLength(3);
      // Every retry is a new query: a fresh ID, so that a late answer to an earlier one is not taken.
      expect(new Set(silent.received.map((m) => m.readUInt16BE(0))).size).toBe(3);
    } finally {
      await silent.close();
    }
  });

  it('RFC 1035 §4.2.1: retries rotate through the servers, so a dead first server is skipped', async () => {
    server.setRecords(SRV_NAME, 'SRV', [{ priority: 0, weight: 0, port: 443, target: 'as.example-com.localhost' }]);
    const silent = await silentServer();
    const closed = await silentServer();
    await closed.close();
    try {
      const rotating = new DnsClient({
        servers: [{ host: '127.0.0.1', port: silent.port }, { host: '127.0.0.1', port: closed.port }, server.address],
        timeoutMs: 100,
        retries: 2,
      });
      expect((await rotating.resolveSrv(SRV_NAME)).records).toHaveLength(1);
      expect(silent.received).toHaveLength(1);
      // A port nobody listens on answers with ICMP port unreachable, which a connected socket reports.
      const refused = new DnsClient({ servers: [{ host: '127.0.0.1', port: closed.port }], retries: 0 });
      await expectCode(refused.resolveSrv(SRV_NAME), 'ECONNREFUSED');
    } finally {
      await silent.close();
    }
  });

  it('records set, added and removed through the API are answered at once', async () => {
    const name = '_federizer._rs._tcp.example.com';
    await expectCode(client.resolveSrv(name), 'ENOTFOUND');
    server.setRecords(name, 'SRV', [{ priority: 0, weight: 0, port: 1000, target: 'mail.example-com.localhost' }]);
    expect((await client.resolveSrv(name)).records.map((r) => r.port)).toEqual([1000]);
    server.addRecord(name, 'SRV', { priority: 5, weight: 0, port: 2000, target: 'mail2.example-com.localhost' }, 10);
    server.addRecord(name, 'SRV', { priority: 5, weight: 0, port: 2000, target: 'MAIL2.example-com.localhost.' }, 10);
    expect(await client.resolveSrv(name)).toMatchObject({ ttl: 10 });
    expect(sortSrv((await client.resolveSrv(name)).records).map((r) => r.port)).toEqual([1000, 2000]);
    server.setRecords(name, 'SRV', [{ priority: 0, weight: 0, port: 3000, target: 'mail.example-com.localhost' }]);
    expect((await resolver.resolveSrv(name)).map((r) => r.port)).toEqual([3000]);
    server.setRecords(name, 'TXT', ['v=1', 'x'.repeat(300)]);
    expect(server.getRecords(name, 'TXT')?.records).toEqual(['v=1', 'x'.repeat(300)]);
    expect((await resolver.resolveTxt(name)).map((chunks) => chunks.join(''))).toEqual(['v=1', 'x'.repeat(300)]);
    expect(server.removeRecords(name, 'SRV')).toBe(true);
    expect((await client.resolveSrv(name)).records).toEqual([]);
    expect(server.removeRecords(name)).toBe(true);
    await expectCode(client.resolveSrv(name), 'ENOTFOUND');
    expect(server.removeRecords(name)).toBe(false);
    expect(() => server.setRecords('mail.example-com.localhost', 'A', ['300.1.1.1'])).toThrow(TypeError);
    expect(() => server.setRecords('mail.example-com.localhost', 'A', ['127.0.0.1'], -1)).toThrow(TypeError);
  });

  it('RFC 2136 §2.5: UPDATE adds records (class IN) and deletes RRsets (class ANY), records (class NONE) and names', async () => {
    const { port } = server.address;
    // The form dns-packet users write (ARCHITECTURE.md pitfalls): the zone in `questions`, changes in `authorities`.
    const add = dnsPacket.encode({
      type: 'query',
      id: 1,
      flags: 5 << 11,
      questions: [{ type: 'SOA', name: 'example.com' }],
      authorities: [
        {
          type: 'SRV',
          class: 'IN',
          name: SRV_NAME,
          ttl: 90,
          data: { priority: 1, weight: 1, port: 1111, target: 'a.x' },
        },
        {
          type: 'SRV',
          class: 'IN',
          name: SRV_NAME,
          ttl: 90,
          data: { priority: 2, weight: 1, port: 2222, target: 'b.x' },
        },
        { type: 'TXT', class: 'IN', name: SRV_NAME, ttl: 90, data: 'hello' },
      ],
    });
    const added = await udpQuery(port, add);
    expect(added.rcode).toBe(0);
    expect(added.packet.id).toBe(1);
    expect((added.packet.flags! >> 11) & 0xf).toBe(5);
    expect(await client.resolveSrv(SRV_NAME)).toMatchObject({ ttl: 90 });
    expect(sortSrv((await resolver.resolveSrv(SRV_NAME)).map((r) => r)).map((r) => r.port)).toEqual([1111, 2222]);

    // Class NONE deletes one record; dns-packet cannot encode it, so the bytes are written by hand.
    const deleteOne = wireUpdate(
      'example.com',
      [],
      [wireRecord(SRV_NAME, TYPE.SRV, CLASS.NONE, 0, srvRdata(1, 1, 1111, 'a.x'))],
    );
    expect((await udpQuery(port, deleteOne)).rcode).toBe(0);
    expect((await client.resolveSrv(SRV_NAME)).records.map((r) => r.port)).toEqual([2222]);

    // Class ANY with TTL 0 and no RDATA deletes the RRset; dns-packet writes an empty RDATA only for a type
    // it does not know, hence `UNKNOWN_33` for SRV.
    const deleteRRset = dnsPacket.encode({
      type: 'query',
      id: 2,
      flags: 5 << 11,
      questions: [{ type: 'SOA', name: 'example.com' }],
      authorities: [
        { type: 'UNKNOWN_33', class: 'ANY', name: SRV_NAME, ttl: 0, data: Buffer.alloc(0) } as unknown as Answer,
        {
          type: 'SRV',
          class: 'IN',
          name: SRV_NAME,
          ttl: 30,
          data: { priority: 3, weight: 0, port: 3333, target: 'c.x' },
        },
      ],
    });
    expect((await udpQuery(port, deleteRRset)).rcode).toBe(0);
    expect(await client.resolveSrv(SRV_NAME)).toEqual({
      records: [{ name: 'c.x', port: 3333, priority: 3, weight: 0 }],
      ttl: 30,
    });
    expect(server.getRecords(SRV_NAME, 'TXT')?.records).toEqual(['hello']);

    // Class ANY, type ANY deletes every RRset of the name.
    const deleteName = wireUpdate('example.com', [], [wireRecord(SRV_NAME, TYPE.ANY, CLASS.ANY, 0)]);
    expect((await udpQuery(port, deleteName)).rcode).toBe(0);
    await expectCode(client.resolveSrv(SRV_NAME), 'ENOTFOUND');

    // The same over TCP, as updates larger than 512 bytes must be sent.
    const overTcp = wireUpdate(
      'example.com',
      [],
      [wireRecord('as.example.com', TYPE.A, CLASS.IN, 60, Buffer.from([127, 0, 0, 5]))],
    );
    const [tcpReply] = await tcpExchange(port, [frame(overTcp)], 1);
    expect(decodeReply(tcpReply!).rcode).toBe(0);
    expect(await client.resolve4('as.example.com')).toEqual([{ address: '127.0.0.5', ttl: 60 }]);
  });

  it('RFC 2136 §3.1–3.4: UPDATE is refused, rejected or ignored as a whole when it may not apply', async () => {
    const { port } = server.address;
    const addA = (name: string): Buffer => wireRecord(name, TYPE.A, CLASS.IN, 60, Buffer.from([127, 0, 0, 1]));
    const rcodeOf = async (message: Buffer): Promise<number> => (await udpQuery(port, message)).rcode;

    expect(await rcodeOf(wireUpdate('example.net', [], [addA('a.example.net')]))).toBe(9); // NOTAUTH
    expect(await rcodeOf(wireUpdate('sub.example.com', [], [addA('a.sub.example.com')]))).toBe(9); // not a zone apex
    expect(await rcodeOf(wireUpdate('example.com', [], [addA('a.example.com'), addA('a.localhost')]))).toBe(10); // NOTZONE
    // BIND and Knot answer FORMERR to a delete with a TTL or with RDATA, the form dns-packet writes by default.
    const deleteWithRdata = wireRecord(SRV_NAME, TYPE.SRV, CLASS.ANY, 0, srvRdata(0, 0, 0, '.'));
    expect(await rcodeOf(wireUpdate('example.com', [], [addA('a.example.com'), deleteWithRdata]))).toBe(1);
    expect(await rcodeOf(wireUpdate('example.com', [], [wireRecord(SRV_NAME, TYPE.SRV, CLASS.ANY, 60)]))).toBe(1);
    // §3.4.1: nothing of a rejected update is applied, not even the records before the bad one.
    await expectCode(client.resolve4('a.example.com'), 'ENOTFOUND');

    // §3.4.2.2: a CNAME beside other data is silently ignored.
    server.setRecords('www.example.com', 'A', ['127.0.0.1']);
    const cname = wireRecord('www.example.com', TYPE.CNAME, CLASS.IN, 60, wireName('other.example.com'));
    expect(await rcodeOf(wireUpdate('example.com', [], [cname]))).toBe(0);
    expect(server.getRecords('www.example.com', 'CNAME')).toBeUndefined();

    const closed = await DnsServer.start({ zones: ['example.com'] });
    try {
      const reply = await udpQuery(closed.address.port, wireUpdate('example.com', [], [addA('a.example.com')]));
      expect(reply.rcode).toBe(5); // REFUSED without allowUpdates
      expect(closed.getRecords('a.example.com', 'A')).toBeUndefined();
    } finally {
      await closed.close();
    }
  });

  it('RFC 2136 §3.2: UPDATE prerequisites must all hold before anything changes', async () => {
    const { port } = server.address;
    server.setRecords(SRV_NAME, 'SRV', [{ priority: 0, weight: 0, port: 443, target: 'as.example-com.localhost' }]);
    const addA = wireRecord('new.example.com', TYPE.A, CLASS.IN, 60, Buffer.from([127, 0, 0, 8]));
    const rcodeWith = async (prerequisite: Buffer): Promise<number> =>
      (await udpQuery(port, wireUpdate('example.com', [prerequisite], [addA]))).rcode;

    expect(await rcodeWith(wireRecord(SRV_NAME, TYPE.SRV, CLASS.NONE, 0))).toBe(7); // YXRRSET
    expect(await rcodeWith(wireRecord(SRV_NAME, TYPE.ANY, CLASS.NONE, 0))).toBe(6); // YXDOMAIN
    expect(await rcodeWith(wireRecord('nothing.example.com', TYPE.ANY, CLASS.ANY, 0))).toBe(3); // NXDOMAIN
    expect(await rcodeWith(wireRecord(SRV_NAME, TYPE.TXT, CLASS.ANY, 0))).toBe(8); // NXRRSET
    const wrongValue = wireRecord(SRV_NAME, TYPE.SRV, CLASS.IN, 0, srvRdata(0, 0, 80, 'as.example-com.localhost'));
    expect(await rcodeWith(wrongValue)).toBe(8);
    expect(server.getRecords('new.example.com', 'A')).toBeUndefined();

    const rightValue = wireRecord(SRV_NAME, TYPE.SRV, CLASS.IN, 0, srvRdata(0, 0, 443, 'AS.example-com.localhost'));
    expect(await rcodeWith(rightValue)).toBe(0);
    expect(server.getRecords('new.example.com', 'A')).toEqual({ ttl: 60, records: ['127.0.0.8'] });
  });

  it('lookup() lets a real http.get reach a *.localhost name registered as an A record', async () => {
    const { port, server: web } = await startHttp();
    try {
      server.setRecords('mail.example-com.localhost', 'A', ['127.0.0.1']);
      const body = await httpGet({ host: 'mail.example-com.localhost', port, path: '/', lookup: client.lookup });
      expect(body).toBe(`hello mail.example-com.localhost:${port}`);
      await expect(
        httpGet({ host: 'nowhere.example-com.localhost', port, lookup: client.lookup }),
      ).rejects.toMatchObject({ code: 'ENOTFOUND' });
    } finally {
      web.close();
    }
  });

  it('lookup() follows the family and all options of dns.lookup', async () => {
    server.setRecords('dual.localhost', 'A', ['127.0.0.1']);
    server.setRecords('dual.localhost', 'AAAA', ['::1']);
    server.setRecords('v4.localhost', 'A', ['127.0.0.2']);
    expect(await lookupOnce(client.lookup, 'dual.localhost', {})).toEqual({ address: '127.0.0.1', family: 4 });
    expect(await lookupOnce(client.lookup, 'dual.localhost', { family: 6 })).toEqual({ address: '::1', family: 6 });
    expect((await lookupOnce(client.lookup, 'dual.localhost', { all: true })).address).toEqual([
      { address: '127.0.0.1', family: 4 },
      { address: '::1', family: 6 },
    ]);
    expect((await lookupOnce(client.lookup, 'dual.localhost', { all: true, order: 'ipv6first' })).address).toEqual([
      { address: '::1', family: 6 },
      { address: '127.0.0.1', family: 4 },
    ]);
    expect(await lookupOnce(client.lookup, '192.0.2.1', {})).toEqual({ address: '192.0.2.1', family: 4 });
    await expect(lookupOnce(client.lookup, 'v4.localhost', { family: 6 })).rejects.toMatchObject({ code: 'ENOTFOUND' });
  });

  it('RFC 6761 §6.3: localhostLookup answers loopback for *.localhost without DNS and delegates other names', async () => {
    const { port, server: web } = await startHttp();
    try {
      const body = await httpGet({ host: 'as.example-com.localhost', port, lookup: localhostLookup });
      expect(body).toBe(`hello as.example-com.localhost:${port}`);
    } finally {
      web.close();
    }
    expect(await lookupOnce(localhostLookup, 'LOCALHOST.', {})).toEqual({ address: '127.0.0.1', family: 4 });
    expect(await lookupOnce(localhostLookup, 'x.localhost', { family: 6 })).toEqual({ address: '::1', family: 6 });
    expect((await lookupOnce(localhostLookup, 'x.localhost', { all: true })).address).toEqual([
      { address: '127.0.0.1', family: 4 },
      { address: '::1', family: 6 },
    ]);
    // Delegated: dns.lookup answers an IP literal itself, without asking any server.
    expect(await lookupOnce(localhostLookup, '192.0.2.7', {})).toEqual({ address: '192.0.2.7', family: 4 });
  });

  it('a server closed through Symbol.asyncDispose frees its port for UDP and TCP', async () => {
    let port: number;
    {
      await using scoped = await DnsServer.start({ zones: ['localhost'] });
      port = scoped.address.port;
      scoped.setRecords('a.localhost', 'A', ['127.0.0.1']);
    }
    const again = await DnsServer.start({ zones: ['localhost'], port });
    try {
      expect(again.address).toEqual({ host: '127.0.0.1', port });
      await expect(DnsServer.start({ zones: ['localhost'], port })).rejects.toMatchObject({ code: 'EADDRINUSE' });
    } finally {
      await again.close();
    }
  });
});

describe('embedded DNS server forwarding names outside its zones (forwardTo)', () => {
  const FOREIGN = '_federizer._as._tcp.example.test';
  let upstream: DnsServer;
  let server: DnsServer;

  beforeEach(async () => {
    // Another domain's DNS server (another implementation's federation, say), holding its own records.
    upstream = await DnsServer.start({ zones: ['example.test'] });
    upstream.addRecord(FOREIGN, 'SRV', { priority: 1, weight: 1, port: 9443, target: 'as.example.test' });
    upstream.addRecord('as.example.test', 'A', '127.0.0.1');
    server = await DnsServer.start({ zones: ['example.com', 'localhost'], forwardTo: upstream.address });
    server.addRecord(SRV_NAME, 'SRV', { priority: 1, weight: 1, port: 8443, target: 'as.example-com.localhost' });
  });
  afterEach(async () => {
    await server.close();
    await upstream.close();
  });

  it('answers the other server’s records through UDP and TCP, and its own zones itself', async () => {
    const client = new DnsClient({ servers: [server.address], timeoutMs: 1000, retries: 1 });
    expect((await client.resolveSrv(FOREIGN)).records).toEqual([
      { name: 'as.example.test', port: 9443, priority: 1, weight: 1 },
    ]);
    // c-ares, over UDP; the relayed answer is the upstream's (authoritative there), with the query's ID.
    const resolver = new dns.promises.Resolver({ timeout: 1000, tries: 1 });
    resolver.setServers([`127.0.0.1:${server.address.port}`]);
    expect(await resolver.resolve4('as.example.test')).toEqual(['127.0.0.1']);
    const raw = await udpQuery(server.address.port, encodeQuery(FOREIGN, 'SRV'));
    expect(raw.packet.flag_aa).toBe(true);
    // Over TCP (RFC 7766 framing), relayed over TCP.
    const [tcpReply] = await tcpExchange(server.address.port, [frame(encodeQuery(FOREIGN, 'SRV', 77))], 1);
    const tcp = decodeReply(tcpReply!);
    expect(tcp.packet.id).toBe(77);
    expect(tcp.packet.answers?.map((a) => (a as { data: { port: number } }).data.port)).toEqual([9443]);
    // Its own zones are still its own, and a name of the upstream's zone that does not exist is its NXDOMAIN.
    expect((await client.resolveSrv(SRV_NAME)).records.map((r) => r.port)).toEqual([8443]);
    expect((await udpQuery(server.address.port, encodeQuery('_nope._tcp.example.test', 'SRV'))).rcode).toBe(3);
  });

  it('RFC 1035 §4.1.1: an upstream that does not answer in time gives SERVFAIL, promptly', async () => {
    await server.close();
    const silent = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => silent.bind(0, '127.0.0.1', resolve));
    try {
      server = await DnsServer.start({
        zones: ['example.com'],
        forwardTo: { host: '127.0.0.1', port: silent.address().port },
        forwardTimeoutMs: 300,
      });
      const started = Date.now();
      const raw = await udpQuery(server.address.port, encodeQuery(FOREIGN, 'SRV'));
      expect(raw.rcode).toBe(2); // SERVFAIL
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      silent.close();
    }
  });

  it('refuses a forwardTo that is not an IP address and a port', async () => {
    await expect(DnsServer.start({ forwardTo: { host: 'dns.example.test', port: 53 } })).rejects.toThrow(
      /forwardTo must be an IP address and a port/,
    );
  });
});

/**
 * An embedded authoritative DNS server for the local federation and the tests (ARCHITECTURE.md, "Local
 * development hostnames"): it answers the `_federizer` SRV records of PROTOCOL.md §8 and the A/AAAA records of
 * the `*.localhost` hosts, over UDP and TCP on one port, and accepts RFC 2136 UPDATE messages so that code which
 * maintains records through dynamic updates can be tested against it.
 *
 * With `forwardTo`, a query for a name outside its zones is relayed, as it came, to another DNS server and its
 * answer relayed back (over the transport the query came by): the local federation then resolves the
 * `_federizer` records of domains run elsewhere (another implementation, another machine) through one server.
 *
 * Deliberately left out: TSIG (RFC 8945) — update messages are accepted unauthenticated when `allowUpdates` is
 * set, any TSIG record in them is ignored and responses are not signed; EDNS (RFC 6891) — an OPT record is ignored
 * and UDP answers stay within 512 bytes; wildcards, delegations (NS), zone transfers and DNSSEC.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import type { Answer } from 'dns-packet';

export interface DnsSrvData {
  priority: number;
  weight: number;
  port: number;
  target: string;
}

/** The record data the server stores, by type. A TXT record given as an array holds several strings. */
export interface DnsRecordDataByType {
  SRV: DnsSrvData;
  A: string;
  AAAA: string;
  TXT: string | readonly string[];
  CNAME: string;
}

export type DnsRecordType = keyof DnsRecordDataByType;

/** One RRset: RFC 2181 §5.2 gives all the records of a set one TTL. */
export interface DnsRRset<T extends DnsRecordType = DnsRecordType> {
  ttl: number;
  records: DnsRecordDataByType[T][];
}

export interface DnsServerOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0: a random free port, the same for UDP and TCP. */
  port?: number;
  /**
   * The zones the server is authoritative for (`example.com`, `localhost`, ...); names outside them are REFUSED.
   * Default: the root zone, i.e. every name.
   */
  zones?: string[];
  /**
   * Accept RFC 2136 UPDATE messages for the zones. There is no TSIG: whoever reaches the port may change the
   * records, so this is for loopback and tests only. Default false: updates are REFUSED.
   */
  allowUpdates?: boolean;
  /** RFC 7766 §6.2.3: an idle TCP connection is closed after this long. Default 10 s. */
  tcpIdleTimeoutMs?: number;
  /**
   * Where queries for names outside `zones` go instead of being REFUSED: a DNS server (an IP address and
   * port) that answers them. Its answer is relayed unchanged; no answer within `forwardTimeoutMs` is SERVFAIL.
   */
  forwardTo?: { host: string; port: number };
  /** Default 3 s. */
  forwardTimeoutMs?: number;
}

export const DEFAULT_DNS_TTL = 60;

// RFC 1035 §4.2.1: the largest UDP message without EDNS.
const UDP_LIMIT = 512;
const TCP_LIMIT = 0xffff;
// RFC 2308 §5: the negative-caching TTL, kept short because records are added while clients are running.
const NEGATIVE_TTL = 5;
const SOA_TTL = 60;
const MAX_CNAME_CHAIN = 8;
const MAX_TTL = 0x7fffffff;

const OPCODE_QUERY = 0;
const OPCODE_UPDATE = 5;

const RCODE = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  YXDOMAIN: 6,
  YXRRSET: 7,
  NXRRSET: 8,
  NOTAUTH: 9,
  NOTZONE: 10,
} as const;

const CLASS_IN = 1;
const CLASS_NONE = 254;
const CLASS_ANY = 255;

const TYPE_SOA = 6;
const TYPE_OPT = 41;
const TYPE_ANY = 255;
/** Types that only make sense in a question (RFC 1035 §3.2.3, RFC 1995, RFC 6891, RFC 8945, RFC 2930). */
const META_TYPES = new Set([TYPE_OPT, 249, 250, 251, 252, 253, 254, TYPE_ANY]);
const TRANSFER_TYPES = new Set([251, 252, 253, 254]);

const FLAG_QR = 0x8000;
const FLAG_AA = 0x0400;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;

const STORED_TYPES: readonly DnsRecordType[] = ['SRV', 'A', 'AAAA', 'TXT', 'CNAME'];

function isStoredType(type: string): type is DnsRecordType {
  return (STORED_TYPES as readonly string[]).includes(type);
}

function validPort(port: number): boolean {
  return Number.isInteger(port) && port >= 1 && port <= 65535;
}

function frameLength(length: number): Buffer {
  const prefix = Buffer.alloc(2);
  prefix.writeUInt16BE(length, 0);
  return prefix;
}

/** One query to another server over UDP: its first response with the query's ID, or a time-out. */
function relayUdp(message: Buffer, to: { host: string; port: number }, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket(net.isIPv6(to.host) ? 'udp6' : 'udp4');
    let finished = false;
    const done = (error: Error | undefined, reply?: Buffer) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      socket.close();
      if (error) reject(error);
      else resolve(reply!);
    };
    const timer = setTimeout(() => done(new Error('no answer in time')), timeoutMs);
    socket.on('error', (error) => done(error));
    socket.on('message', (reply) => {
      if (reply.length >= 2 && reply.readUInt16BE(0) === message.readUInt16BE(0)) done(undefined, reply);
    });
    socket.send(message, to.port, to.host);
  });
}

/** One query to another server over TCP (RFC 7766 framing): the first framed response, or a time-out. */
function relayTcp(message: Buffer, to: { host: string; port: number }, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: to.host, port: to.port });
    let received = Buffer.alloc(0);
    const done = (error: Error | undefined, reply?: Buffer) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(reply!);
    };
    const timer = setTimeout(() => done(new Error('no answer in time')), timeoutMs);
    socket.on('error', (error) => done(error));
    socket.on('connect', () => socket.write(Buffer.concat([frameLength(message.length), message])));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= 2 && received.length >= 2 + received.readUInt16BE(0))
        done(undefined, received.subarray(2, 2 + received.readUInt16BE(0)));
    });
    socket.on('end', () => done(new Error('the connection closed before an answer')));
  });
}

// ---------------------------------------------------------------------------------------------------
// Names

/** RFC 4343: DNS compares names case-insensitively in ASCII only. */
function asciiLower(name: string): string {
  return name.replace(/[A-Z]+/g, (s) => s.toLowerCase());
}

/** The key of a name as it came off the wire: lower-cased, without the trailing dot, '' for the root. */
function wireKey(name: string): string {
  return asciiLower(name === '.' ? '' : name.replace(/\.$/, ''));
}

/** Bad record data or names, from the API or from an UPDATE (where it becomes FORMERR). */
class DnsDataError extends TypeError {}

const LABEL = /^[\x21-\x2d\x2f-\x7e]{1,63}$/;

/** Validates a name given through the API: dns-packet would silently mis-encode an over-long label. */
function canonicalName(name: string, what: string): string {
  const key = wireKey(name);
  if (key === '') return key;
  if (key.length > 253 || !key.split('.').every((label) => LABEL.test(label))) {
    throw new DnsDataError(`${what}: ${JSON.stringify(name)} is not a valid DNS name`);
  }
  return key;
}

function displayName(key: string): string {
  return key === '' ? '.' : key;
}

function isInZone(name: string, zone: string): boolean {
  return zone === '' || name === zone || name.endsWith(`.${zone}`);
}

// ---------------------------------------------------------------------------------------------------
// Record data

interface StoredRecord {
  /** Identity within an RRset: RFC 2181 §5 forbids duplicate records. */
  key: string;
  /** What dns-packet encodes. */
  wire: unknown;
  view: unknown;
}

interface StoredRRset {
  ttl: number;
  records: StoredRecord[];
}

function uint16(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new DnsDataError(`SRV ${field}: ${String(value)} is not an integer in [0, 65535]`);
  }
  return value;
}

function canonicalTtl(ttl: number): number {
  if (!Number.isInteger(ttl) || ttl < 0 || ttl > MAX_TTL) {
    throw new DnsDataError(`TTL ${ttl}: not an integer in [0, 2^31 - 1] (RFC 2181 §8)`);
  }
  return ttl;
}

/** RFC 1035 §3.3: a <character-string> holds at most 255 bytes; longer text is split between code points. */
function txtStrings(text: string): Buffer[] {
  const chunks: Buffer[] = [];
  let current = '';
  for (const char of text) {
    if (Buffer.byteLength(current + char) > 255) {
      chunks.push(Buffer.from(current));
      current = '';
    }
    current += char;
  }
  chunks.push(Buffer.from(current));
  return chunks;
}

function toStored(type: DnsRecordType, value: unknown): StoredRecord {
  switch (type) {
    case 'A': {
      if (typeof value !== 'string' || !net.isIPv4(value)) throw new DnsDataError(`A: ${String(value)} is not IPv4`);
      const address = value.split('.').map(Number).join('.');
      return { key: address, wire: address, view: address };
    }
    case 'AAAA': {
      if (typeof value !== 'string' || !net.isIPv6(value)) throw new DnsDataError(`AAAA: ${String(value)} is not IPv6`);
      const address = new URL(`http://[${value}]/`).hostname.slice(1, -1);
      return { key: address, wire: address, view: address };
    }
    case 'CNAME': {
      if (typeof value !== 'string') throw new DnsDataError('CNAME: the target must be a string');
      const target = canonicalName(value, 'CNAME target');
      return { key: target, wire: displayName(target), view: displayName(target) };
    }
    case 'SRV': {
      const srv = (typeof value === 'object' && value !== null ? value : {}) as Partial<
        Record<keyof DnsSrvData, unknown>
      >;
      if (typeof srv.target !== 'string') throw new DnsDataError('SRV: the target must be a string');
      const data = {
        priority: uint16(srv.priority, 'priority'),
        weight: uint16(srv.weight, 'weight'),
        port: uint16(srv.port, 'port'),
        target: displayName(canonicalName(srv.target, 'SRV target')),
      };
      return { key: `${data.priority} ${data.weight} ${data.port} ${data.target}`, wire: data, view: data };
    }
    case 'TXT': {
      const parts = Array.isArray(value) ? (value as unknown[]) : [value];
      const strings = parts.flatMap((part): Buffer[] => {
        if (typeof part === 'string') return Array.isArray(value) ? [Buffer.from(part)] : txtStrings(part);
        if (Buffer.isBuffer(part)) return [part];
        throw new DnsDataError('TXT: the data must be a string or an array of strings');
      });
      if (strings.length === 0 || strings.some((s) => s.length > 255)) {
        throw new DnsDataError('TXT: needs at least one string, each of at most 255 bytes');
      }
      // Read back in the form it was given: one text (split on the wire only), or the strings of an array.
      const texts = strings.map((s) => s.toString('utf8'));
      const fromWire = parts.every((part) => Buffer.isBuffer(part));
      const view = typeof value === 'string' ? value : fromWire && texts.length === 1 ? texts[0] : texts;
      return { key: strings.map((s) => s.toString('hex')).join(' '), wire: strings, view };
    }
  }
}

function sameKeys(a: readonly StoredRecord[], b: readonly StoredRecord[]): boolean {
  const keys = new Set(a.map((r) => r.key));
  return keys.size === new Set(b.map((r) => r.key)).size && b.every((r) => keys.has(r.key));
}

// ---------------------------------------------------------------------------------------------------
// Wire format

/** dns-packet's per-part codecs: exported at run time but absent from its type declarations. */
interface PartCodecs {
  name: { decode: ((buf: Buffer, offset: number) => string) & { bytes: number } };
  question: { decode: ((buf: Buffer, offset: number) => { name: string; type: string }) & { bytes: number } };
  answer: { decode: ((buf: Buffer, offset: number) => { data?: unknown }) & { bytes: number } };
}

const codecs = dnsPacket as unknown as PartCodecs;

class MalformedMessage extends Error {}

interface WireQuestion {
  name: string;
  type: string;
  typeCode: number;
  classCode: number;
}

interface WireRecord extends WireQuestion {
  ttl: number;
  rdlength: number;
  /** Undefined when RDLENGTH is 0, which dns-packet itself cannot decode (RFC 2136 deletions send it). */
  data: unknown;
}

interface WireMessage {
  id: number;
  flags: number;
  opcode: number;
  questions: WireQuestion[];
  /** Echoed byte for byte, so that the client sees its own question (case and class included). */
  questionBytes: Buffer;
  answers: WireRecord[];
  authorities: WireRecord[];
  additionals: WireRecord[];
}

function readQuestion(buf: Buffer, offset: number): { question: WireQuestion; end: number } {
  const decoded = codecs.question.decode(buf, offset);
  const end = offset + codecs.question.decode.bytes;
  if (end > buf.length) throw new MalformedMessage('question runs past the end');
  // dns-packet maps classes it does not know (NONE among them) to strings; RFC 2136 needs the numbers.
  const question = {
    name: decoded.name,
    type: decoded.type,
    typeCode: buf.readUInt16BE(end - 4),
    classCode: buf.readUInt16BE(end - 2),
  };
  return { question, end };
}

function readRecord(buf: Buffer, offset: number): { record: WireRecord; end: number } {
  const { question, end: fixed } = readQuestion(buf, offset);
  if (fixed + 6 > buf.length) throw new MalformedMessage('record header runs past the end');
  const ttl = buf.readUInt32BE(fixed);
  const rdlength = buf.readUInt16BE(fixed + 4);
  const end = fixed + 6 + rdlength;
  if (end > buf.length) throw new MalformedMessage('RDATA runs past the end');
  let data: unknown;
  if (rdlength > 0 && question.typeCode !== TYPE_OPT) {
    data = codecs.answer.decode(buf, offset).data;
    let consumed = offset + codecs.answer.decode.bytes;
    // dns-packet trusts RDLENGTH for SRV and the name for CNAME: check that the two agree.
    if (question.type === 'SRV' && codecs.name.decode.bytes + 6 !== rdlength) consumed = -1;
    if (consumed !== end) throw new MalformedMessage(`${question.type} RDATA does not match RDLENGTH`);
  }
  return { record: { ...question, ttl, rdlength, data }, end };
}

/** Strict where dns-packet's own `decode` is lenient: counts, lengths and trailing bytes must all agree. */
function parseMessage(buf: Buffer): WireMessage {
  if (buf.length < 12) throw new MalformedMessage('shorter than a header');
  const counts = [4, 6, 8, 10].map((at) => buf.readUInt16BE(at));
  let offset = 12;
  const questions: WireQuestion[] = [];
  for (let i = 0; i < counts[0]!; i++) {
    const { question, end } = readQuestion(buf, offset);
    questions.push(question);
    offset = end;
  }
  const questionBytes = buf.subarray(12, offset);
  const sections = counts.slice(1).map((count) => {
    const records: WireRecord[] = [];
    for (let i = 0; i < count; i++) {
      const { record, end } = readRecord(buf, offset);
      records.push(record);
      offset = end;
    }
    return records;
  });
  if (offset !== buf.length) throw new MalformedMessage(`${buf.length - offset} bytes after the last record`);
  const flags = buf.readUInt16BE(2);
  return {
    id: buf.readUInt16BE(0),
    flags,
    opcode: (flags >> 11) & 0xf,
    questions,
    questionBytes,
    answers: sections[0]!,
    authorities: sections[1]!,
    additionals: sections[2]!,
  };
}

/** A header-only answer for a message that could not be parsed at all. */
function formatErrorFor(message: Buffer): Buffer {
  const reply = Buffer.alloc(12);
  reply.writeUInt16BE(message.readUInt16BE(0), 0);
  const opcode = message.length > 2 ? (message[2]! >> 3) & 0xf : 0;
  reply.writeUInt16BE(FLAG_QR | (opcode << 11) | RCODE.FORMERR, 2);
  return reply;
}

interface ReplyParts {
  rcode: number;
  authoritative?: boolean;
  answers?: Answer[];
  authorities?: Answer[];
}

function encodeReply(query: WireMessage, parts: ReplyParts, transport: 'udp' | 'tcp'): Buffer {
  const rd = query.opcode === OPCODE_QUERY ? query.flags & FLAG_RD : 0;
  const flags = (query.opcode << 11) | rd | (parts.authoritative ? FLAG_AA : 0) | parts.rcode;
  const body = dnsPacket.encode({
    type: 'response',
    id: query.id,
    flags,
    answers: parts.answers ?? [],
    authorities: parts.authorities ?? [],
  });
  const header = body.subarray(0, 12);
  header.writeUInt16BE(query.questions.length, 4);
  const reply = Buffer.concat([header, query.questionBytes, body.subarray(12)]);
  if (transport === 'udp' && reply.length > UDP_LIMIT) {
    // RFC 2181 §9: rather no records than a partial RRset; TC sends the client to TCP (RFC 7766 §5).
    const truncated = Buffer.concat([header, query.questionBytes]);
    truncated.writeUInt16BE(flags | FLAG_QR | FLAG_TC, 2);
    truncated.fill(0, 6, 12);
    return truncated;
  }
  if (reply.length > TCP_LIMIT) return encodeReply(query, { rcode: RCODE.SERVFAIL }, transport);
  return reply;
}

function rr(name: string, type: string, ttl: number, data: unknown): Answer {
  return { name: displayName(name), type, class: 'IN', ttl, data } as Answer;
}

// ---------------------------------------------------------------------------------------------------
// Server

interface UpdateOperation {
  name: string;
  classCode: number;
  type: string;
  ttl: number;
  stored?: StoredRecord;
}

/** An authoritative DNS server over UDP and TCP on one port; see the module comment for what it leaves out. */
export class DnsServer {
  /** Most specific first, so that the first match is the zone a name belongs to. */
  readonly #zones: string[];
  readonly #allowUpdates: boolean;
  readonly #tcpIdleTimeoutMs: number;
  readonly #forwardTo: { host: string; port: number } | undefined;
  readonly #forwardTimeoutMs: number;
  readonly #nodes = new Map<string, Map<DnsRecordType, StoredRRset>>();
  readonly #connections = new Set<net.Socket>();
  #serial = 1;
  #address = { host: '127.0.0.1', port: 0 };
  #udp: dgram.Socket | undefined;
  #tcp: net.Server | undefined;
  #closing: Promise<void> | undefined;

  private constructor(options: DnsServerOptions) {
    const zones = (options.zones ?? ['.']).map((zone) => canonicalName(zone, 'zone'));
    this.#zones = [...new Set(zones)].sort((a, b) => b.length - a.length);
    this.#allowUpdates = options.allowUpdates ?? false;
    this.#tcpIdleTimeoutMs = options.tcpIdleTimeoutMs ?? 10_000;
    if (
      options.forwardTo !== undefined &&
      (net.isIP(options.forwardTo.host) === 0 || !validPort(options.forwardTo.port))
    )
      throw new TypeError(`forwardTo must be an IP address and a port, not ${JSON.stringify(options.forwardTo)}`);
    this.#forwardTo = options.forwardTo;
    this.#forwardTimeoutMs = options.forwardTimeoutMs ?? 3000;
  }

  static async start(options: DnsServerOptions = {}): Promise<DnsServer> {
    const server = new DnsServer(options);
    await server.#listen(options.host ?? '127.0.0.1', options.port ?? 0);
    return server;
  }

  get address(): { host: string; port: number } {
    return { ...this.#address };
  }

  get zones(): string[] {
    return this.#zones.map(displayName);
  }

  /** Replaces the RRset; an empty `records` removes it. */
  setRecords<T extends DnsRecordType>(
    name: string,
    type: T,
    records: readonly DnsRecordDataByType[T][],
    ttl: number = DEFAULT_DNS_TTL,
  ): void {
    const owner = this.#ownerInZone(name);
    const stored = records.map((record) => toStored(type, record));
    this.#put(owner, type, stored, canonicalTtl(ttl));
  }

  /** Adds one record to the RRset (a duplicate is not added twice); the whole RRset takes the new TTL. */
  addRecord<T extends DnsRecordType>(
    name: string,
    type: T,
    record: DnsRecordDataByType[T],
    ttl: number = DEFAULT_DNS_TTL,
  ): void {
    const owner = this.#ownerInZone(name);
    const stored = toStored(type, record);
    const existing = this.#nodes.get(owner)?.get(type)?.records ?? [];
    const records = existing.some((r) => r.key === stored.key) ? existing : [...existing, stored];
    this.#put(owner, type, records, canonicalTtl(ttl));
  }

  /** Removes one RRset, or every RRset of the name; false when there was nothing to remove. */
  removeRecords(name: string, type?: DnsRecordType): boolean {
    const owner = canonicalName(name, 'name');
    const node = this.#nodes.get(owner);
    if (node === undefined) return false;
    const removed = type === undefined ? node.size > 0 : node.delete(type);
    if (type === undefined || node.size === 0) this.#nodes.delete(owner);
    if (removed) this.#bumpSerial();
    return removed;
  }

  getRecords<T extends DnsRecordType>(name: string, type: T): DnsRRset<T> | undefined {
    const rrset = this.#nodes.get(canonicalName(name, 'name'))?.get(type);
    if (rrset === undefined) return undefined;
    return { ttl: rrset.ttl, records: rrset.records.map((r) => structuredClone(r.view) as DnsRecordDataByType[T]) };
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const socket of this.#connections) socket.destroy();
      const udp = this.#udp;
      const tcp = this.#tcp;
      await Promise.all([
        udp && new Promise<void>((resolve) => udp.close(() => resolve())),
        tcp && new Promise<void>((resolve) => tcp.close(() => resolve())),
      ]);
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // -------------------------------------------------------------------------------------------------
  // Transport

  async #listen(host: string, port: number): Promise<void> {
    const type = net.isIPv6(host) ? 'udp6' : 'udp4';
    // With port 0 the port UDP picked may be taken for TCP: pick again rather than fail.
    for (let attempt = 0; ; attempt++) {
      const udp = dgram.createSocket({ type });
      try {
        await new Promise<void>((resolve, reject) => {
          udp.once('error', reject);
          udp.bind({ port, address: host, exclusive: true }, () => {
            udp.off('error', reject);
            resolve();
          });
        });
      } catch (error) {
        udp.close();
        throw error;
      }
      const chosen = udp.address().port;
      const tcp = net.createServer((socket) => this.#accept(socket));
      try {
        await new Promise<void>((resolve, reject) => {
          tcp.once('error', reject);
          tcp.listen({ port: chosen, host, exclusive: true }, () => {
            tcp.off('error', reject);
            resolve();
          });
        });
      } catch (error) {
        await new Promise<void>((resolve) => udp.close(() => resolve()));
        if (port === 0 && (error as NodeJS.ErrnoException).code === 'EADDRINUSE' && attempt < 20) continue;
        throw error;
      }
      // A send to a vanished client can report an error here; the server must keep serving the others.
      udp.on('error', () => undefined);
      tcp.on('error', () => undefined);
      udp.on('message', (message, remote) => {
        const send = (reply: Buffer | undefined) => {
          if (reply !== undefined && this.#closing === undefined)
            udp.send(reply, remote.port, remote.address, () => undefined);
        };
        const query = this.#forwarded(message);
        if (query !== undefined) void this.#forward(message, query, 'udp').then(send);
        else send(this.#handle(message, 'udp'));
      });
      this.#udp = udp;
      this.#tcp = tcp;
      this.#address = { host, port: chosen };
      return;
    }
  }

  /** RFC 7766 §6.2.1: a connection carries any number of length-prefixed queries, answered in turn. */
  #accept(socket: net.Socket): void {
    if (this.#closing !== undefined) {
      socket.destroy();
      return;
    }
    this.#connections.add(socket);
    socket.setNoDelay(true);
    socket.setTimeout(this.#tcpIdleTimeoutMs, () => socket.destroy());
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.#connections.delete(socket));
    let pending: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        const message = pending.subarray(2, 2 + pending.readUInt16BE(0));
        pending = pending.subarray(2 + message.length);
        const send = (reply: Buffer | undefined) => {
          if (reply === undefined || socket.destroyed) return;
          socket.write(Buffer.concat([frameLength(reply.length), reply]));
        };
        // RFC 7766 §7: answers on one connection may come out of order; the client matches them by ID.
        const query = this.#forwarded(message);
        if (query !== undefined) void this.#forward(Buffer.from(message), query, 'tcp').then(send);
        else send(this.#handle(message, 'tcp'));
      }
    });
  }

  /** The query, when it is one that `forwardTo` answers: a standard query for one name outside the zones. */
  #forwarded(message: Buffer): WireMessage | undefined {
    if (this.#forwardTo === undefined || message.length < 3 || (message[2]! & 0x80) !== 0) return undefined;
    let query: WireMessage;
    try {
      query = parseMessage(message);
    } catch {
      return undefined;
    }
    const [question, ...more] = query.questions;
    if (query.opcode !== OPCODE_QUERY || question === undefined || more.length > 0) return undefined;
    return this.#zoneOf(wireKey(question.name)) === undefined ? query : undefined;
  }

  /** Relays the query to `forwardTo` by the same transport; SERVFAIL when no answer comes in time. Never throws. */
  async #forward(message: Buffer, query: WireMessage, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> {
    const upstream = this.#forwardTo!;
    try {
      const reply = await (transport === 'udp'
        ? relayUdp(message, upstream, this.#forwardTimeoutMs)
        : relayTcp(message, upstream, this.#forwardTimeoutMs));
      // The answer must be to this query: its ID, and the response bit set.
      if (reply.length >= 12 && reply.readUInt16BE(0) === query.id && (reply[2]! & 0x80) !== 0) return reply;
    } catch {
      // No answer, or an unusable one: SERVFAIL below.
    }
    return encodeReply(query, { rcode: RCODE.SERVFAIL }, transport);
  }

  /** Never throws: whatever arrives gets an answer or is dropped, and the server keeps serving. */
  #handle(message: Buffer, transport: 'udp' | 'tcp'): Buffer | undefined {
    // Without an ID there is nothing to answer; answering a response could start a loop between servers.
    if (message.length < 2 || (message.length > 2 && (message[2]! & 0x80) !== 0)) return undefined;
    let query: WireMessage;
    try {
      query = parseMessage(message);
    } catch {
      return formatErrorFor(message);
    }
    try {
      if (query.opcode === OPCODE_QUERY) return encodeReply(query, this.#answer(query), transport);
      if (query.opcode === OPCODE_UPDATE) return encodeReply(query, this.#update(query), transport);
      return encodeReply(query, { rcode: RCODE.NOTIMP }, transport);
    } catch (error) {
      // Record data that does not validate is the sender's fault; anything else is ours.
      const rcode = error instanceof DnsDataError || error instanceof MalformedMessage ? RCODE.FORMERR : RCODE.SERVFAIL;
      return encodeReply(query, { rcode }, transport);
    }
  }

  // -------------------------------------------------------------------------------------------------
  // Queries (RFC 1034 §4.3.2)

  #answer(query: WireMessage): ReplyParts {
    const [question, ...more] = query.questions;
    if (question === undefined || more.length > 0) return { rcode: RCODE.FORMERR };
    if (question.classCode !== CLASS_IN && question.classCode !== CLASS_ANY) return { rcode: RCODE.REFUSED };
    let name = wireKey(question.name);
    if (this.#zoneOf(name) === undefined) return { rcode: RCODE.REFUSED };
    if (TRANSFER_TYPES.has(question.typeCode)) return { rcode: RCODE.NOTIMP };

    const answers: Answer[] = [];
    // The question's own spelling is kept for the first owner: RFC 4343 §4.1 asks servers to preserve case.
    let owner = question.name === '.' ? '' : question.name;
    for (let hop = 0; hop <= MAX_CNAME_CHAIN; hop++) {
      const zone = this.#zoneOf(name);
      // A target outside the zones is left for the client to resolve elsewhere.
      if (zone === undefined) break;
      const node = this.#nodes.get(name);
      const cname = node?.get('CNAME');
      if (cname !== undefined && question.type !== 'CNAME' && question.typeCode !== TYPE_ANY) {
        const target = cname.records[0]!.wire as string;
        answers.push(rr(owner, 'CNAME', cname.ttl, target));
        name = wireKey(target);
        owner = name;
        continue;
      }
      const found = this.#rrsetsFor(name, zone, question.typeCode === TYPE_ANY ? undefined : question.type);
      answers.push(
        ...found.map(([type, rrset]) => rrset.records.map((r) => rr(owner, type, rrset.ttl, r.wire))).flat(),
      );
      if (found.length > 0) break;
      // RFC 2308 §2–3: NXDOMAIN and NODATA carry the zone's SOA, whose MINIMUM bounds the negative caching.
      const rcode = this.#nameExists(name) ? RCODE.NOERROR : RCODE.NXDOMAIN;
      const soa = this.#soa(zone);
      return { rcode, authoritative: true, answers, authorities: [{ ...soa, ttl: NEGATIVE_TTL } as Answer] };
    }
    return { rcode: RCODE.NOERROR, authoritative: true, answers };
  }

  #rrsetsFor(name: string, zone: string, type: string | undefined): [string, StoredRRset][] {
    const found: [string, StoredRRset][] = [];
    if (name === zone && (type === undefined || type === 'SOA')) {
      const soa = this.#soa(zone);
      found.push(['SOA', { ttl: SOA_TTL, records: [{ key: '', wire: soa.data, view: undefined }] }]);
    }
    for (const [stored, rrset] of this.#nodes.get(name) ?? []) {
      if (type === undefined || type === stored) found.push([stored, rrset]);
    }
    return found;
  }

  #soa(zone: string): Answer & { data: unknown } {
    const data = {
      mname: 'localhost',
      rname: `hostmaster.${zone === '' ? 'localhost' : zone}`,
      serial: this.#serial,
      refresh: 3600,
      retry: 600,
      expire: 86400,
      minimum: NEGATIVE_TTL,
    };
    return rr(zone, 'SOA', SOA_TTL, data) as Answer & { data: unknown };
  }

  #zoneOf(name: string): string | undefined {
    return this.#zones.find((zone) => isInZone(name, zone));
  }

  /** RFC 2136 §2.4.4 "name is in use": it owns at least one record (a zone apex owns its SOA). */
  #nameInUse(name: string): boolean {
    return this.#nodes.has(name) || this.#zones.includes(name);
  }

  /** RFC 8020: a name that only has descendants (an empty non-terminal like `_tcp.example.com`) exists too. */
  #nameExists(name: string): boolean {
    if (this.#nameInUse(name)) return true;
    const suffix = `.${name}`;
    for (const owner of this.#nodes.keys()) if (owner.endsWith(suffix)) return true;
    return false;
  }

  #ownerInZone(name: string): string {
    const owner = canonicalName(name, 'name');
    if (this.#zoneOf(owner) === undefined) {
      throw new RangeError(`${displayName(owner)} is outside the zones ${this.zones.join(', ')}`);
    }
    return owner;
  }

  /** RFC 1034 §3.6.2 (CNAME and other data) and RFC 2181 §10.1 (a single CNAME) hold for every change. */
  #put(owner: string, type: DnsRecordType, records: StoredRecord[], ttl: number): void {
    const node = this.#nodes.get(owner) ?? new Map<DnsRecordType, StoredRRset>();
    if (records.length === 0) {
      if (node.delete(type)) this.#bumpSerial();
      if (node.size === 0) this.#nodes.delete(owner);
      return;
    }
    if (type === 'CNAME' && records.length > 1) throw new RangeError(`${owner}: a name has at most one CNAME`);
    const others = [...node.keys()].filter((t) => t !== type);
    if ((type === 'CNAME' && others.length > 0) || (type !== 'CNAME' && others.includes('CNAME'))) {
      throw new RangeError(`${owner}: a CNAME cannot coexist with other records`);
    }
    node.set(type, { ttl, records: [...records] });
    this.#nodes.set(owner, node);
    this.#bumpSerial();
  }

  #bumpSerial(): void {
    // RFC 1982 serial arithmetic wraps; 0 is skipped as some tools read it as "unset".
    this.#serial = (this.#serial % 0xffffffff) + 1;
  }

  // -------------------------------------------------------------------------------------------------
  // RFC 2136 UPDATE

  #update(message: WireMessage): ReplyParts {
    // §3.1.1: exactly one zone, named by type SOA.
    const [zoneSection, ...more] = message.questions;
    if (zoneSection === undefined || more.length > 0 || zoneSection.typeCode !== TYPE_SOA) {
      return { rcode: RCODE.FORMERR };
    }
    if (!this.#allowUpdates) return { rcode: RCODE.REFUSED };
    const zone = wireKey(zoneSection.name);
    if (zoneSection.classCode !== CLASS_IN || !this.#zones.includes(zone)) return { rcode: RCODE.NOTAUTH };

    const prerequisite = this.#checkPrerequisites(zone, message.answers);
    if (prerequisite !== RCODE.NOERROR) return { rcode: prerequisite };
    const operations = this.#prescan(zone, message.authorities);
    if (!Array.isArray(operations)) return { rcode: operations };
    for (const operation of operations) this.#apply(operation);
    return { rcode: RCODE.NOERROR };
  }

  /** §3.2: every prerequisite in the answer section must hold, or nothing is changed. */
  #checkPrerequisites(zone: string, prerequisites: readonly WireRecord[]): number {
    const expected = new Map<string, { name: string; type: DnsRecordType; records: StoredRecord[] }>();
    for (const record of prerequisites) {
      const name = wireKey(record.name);
      if (!isInZone(name, zone)) return RCODE.NOTZONE;
      if (record.ttl !== 0) return RCODE.FORMERR;
      const any = record.typeCode === TYPE_ANY;
      if (record.classCode === CLASS_ANY || record.classCode === CLASS_NONE) {
        if (record.rdlength !== 0) return RCODE.FORMERR;
        const present = any ? this.#nameInUse(name) : this.#rrsetExists(name, record.type);
        if (record.classCode === CLASS_ANY && !present) return any ? RCODE.NXDOMAIN : RCODE.NXRRSET;
        if (record.classCode === CLASS_NONE && present) return any ? RCODE.YXDOMAIN : RCODE.YXRRSET;
      } else if (record.classCode === CLASS_IN) {
        if (META_TYPES.has(record.typeCode) || record.data === undefined) return RCODE.FORMERR;
        // §3.2.3: a value-dependent prerequisite on a type never stored cannot hold.
        if (!isStoredType(record.type)) return RCODE.NXRRSET;
        const key = `${name}\n${record.type}`;
        const entry = expected.get(key) ?? { name, type: record.type, records: [] };
        entry.records.push(toStored(record.type, record.data));
        expected.set(key, entry);
      } else {
        return RCODE.FORMERR;
      }
    }
    for (const { name, type, records } of expected.values()) {
      const rrset = this.#nodes.get(name)?.get(type);
      if (rrset === undefined || !sameKeys(rrset.records, records)) return RCODE.NXRRSET;
    }
    return RCODE.NOERROR;
  }

  #rrsetExists(name: string, type: string): boolean {
    if (type === 'SOA') return this.#zones.includes(name);
    return isStoredType(type) && (this.#nodes.get(name)?.has(type) ?? false);
  }

  /** §3.4.1: the whole update section is checked before any of it is applied, so that it applies atomically. */
  #prescan(zone: string, updates: readonly WireRecord[]): UpdateOperation[] | number {
    const operations: UpdateOperation[] = [];
    for (const record of updates) {
      const name = canonicalName(record.name, 'name');
      if (!isInZone(name, zone)) return RCODE.NOTZONE;
      const { classCode, type } = record;
      if (classCode === CLASS_IN) {
        if (META_TYPES.has(record.typeCode) || record.data === undefined) return RCODE.FORMERR;
        // Only the types this server stores can be added; SOA and NS are synthesized or not served.
        if (!isStoredType(type)) return RCODE.REFUSED;
        canonicalTtl(record.ttl);
        operations.push({ name, classCode, type, ttl: record.ttl, stored: toStored(type, record.data) });
      } else if (classCode === CLASS_ANY) {
        // BIND and Knot reject RDATA here too, so a client that passes this server passes them.
        if (record.ttl !== 0 || record.rdlength !== 0) return RCODE.FORMERR;
        if (META_TYPES.has(record.typeCode) && record.typeCode !== TYPE_ANY) return RCODE.FORMERR;
        operations.push({ name, classCode, type, ttl: 0 });
      } else if (classCode === CLASS_NONE) {
        if (record.ttl !== 0 || META_TYPES.has(record.typeCode) || record.data === undefined) return RCODE.FORMERR;
        const stored = isStoredType(type) ? toStored(type, record.data) : undefined;
        operations.push({ name, classCode, type, ttl: 0, stored });
      } else {
        return RCODE.FORMERR;
      }
    }
    return operations;
  }

  /** §3.4.2; changes that the section forbids are ignored silently, as the RFC requires. */
  #apply({ name, classCode, type, ttl, stored }: UpdateOperation): void {
    const node = this.#nodes.get(name);
    if (classCode === CLASS_ANY) {
      if (type === 'ANY') this.removeRecords(displayName(name));
      else if (isStoredType(type)) this.removeRecords(displayName(name), type);
      return;
    }
    if (!isStoredType(type) || stored === undefined) return;
    const existing = node?.get(type)?.records ?? [];
    if (classCode === CLASS_NONE) {
      if (existing.some((r) => r.key === stored.key)) {
        this.#put(
          name,
          type,
          existing.filter((r) => r.key !== stored.key),
          node!.get(type)!.ttl,
        );
      }
      return;
    }
    const hasOthers = [...(node?.keys() ?? [])].some((t) => t !== 'CNAME');
    if (type === 'CNAME' && hasOthers) return; // §3.4.2.2: a CNAME is not added beside other data
    if (type !== 'CNAME' && node?.has('CNAME')) return; // ... nor other data beside a CNAME
    if (type === 'CNAME') {
      this.#put(name, type, [stored], ttl); // ... and a new CNAME replaces the old one
      return;
    }
    const records = existing.some((r) => r.key === stored.key) ? existing : [...existing, stored];
    this.#put(name, type, records, ttl);
  }
}

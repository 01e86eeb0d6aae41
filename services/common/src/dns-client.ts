/**
 * A small stub resolver that asks given DNS servers directly, so that the services can discover each other
 * through the embedded DNS server (ARCHITECTURE.md, "Local development hostnames"): node's own resolver reads
 * only the system configuration, and the system resolver here does not resolve `*.localhost`.
 */
import { randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import dns from 'node:dns';
import type { LookupAddress, LookupOptions } from 'node:dns';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import type { Answer, DecodedPacket } from 'dns-packet';

export interface DnsServerAddress {
  host: string;
  port: number;
}

export interface DnsClientOptions {
  /** IP addresses only. Default: `dns.getServers()` at construction. */
  servers?: DnsServerAddress[];
  /** For one UDP exchange, and again for the TCP retry of a truncated answer. Default 2000. */
  timeoutMs?: number;
  /** Further attempts after the first, each against the next server in turn. Default 2. */
  retries?: number;
}

/** Structurally the `SrvRecord` of `@federizer/protocol`'s discovery; `name` is the target host. */
export interface DnsSrvRecord {
  name: string;
  port: number;
  priority: number;
  weight: number;
}

/** Structurally the `SrvAnswer` that discovery's `SrvResolver` returns. */
export interface DnsSrvAnswer {
  records: DnsSrvRecord[];
  /** The smallest TTL of the answer; for an empty answer, the negative-caching TTL of RFC 2308 §5. */
  ttl?: number;
}

export interface DnsAddressRecord {
  address: string;
  ttl: number;
}

export type DnsLookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

/** The shape of node's `dns.lookup`, accepted by the `lookup` option of `net`, `http` and `https`. */
export type DnsLookup = (
  hostname: string,
  options: LookupOptions | number | DnsLookupCallback,
  callback?: DnsLookupCallback,
) => void;

/** Carries the codes of node's `dns` module (`ENOTFOUND`, `ETIMEOUT`, `ESERVFAIL`, ...), which callers map. */
export class DnsError extends Error implements NodeJS.ErrnoException {
  readonly code: string;
  readonly syscall: string;
  readonly hostname: string;

  constructor(syscall: string, code: string, hostname: string, options?: ErrorOptions) {
    super(`${syscall} ${code} ${hostname}`, options);
    this.name = 'DnsError';
    this.code = code;
    this.syscall = syscall;
    this.hostname = hostname;
  }
}

type QueryType = 'SRV' | 'A' | 'AAAA';

/** RFC 1035 §4.1.1 RCODEs as node's `dns` module names them. */
const RCODE_ERRORS: Record<number, string> = { 1: 'EFORMERR', 2: 'ESERVFAIL', 4: 'ENOTIMP', 5: 'EREFUSED' };
const NOERROR = 0;
const NXDOMAIN = 3;
const MAX_CNAME_CHAIN = 8;

/** RFC 4343: DNS compares names case-insensitively in ASCII only. */
function nameKey(name: string): string {
  return (name === '.' ? '' : name.replace(/\.$/, '')).replace(/[A-Z]+/g, (s) => s.toLowerCase());
}

function isValidQueryName(name: string): boolean {
  const key = nameKey(name);
  return key.length <= 253 && (key === '' || key.split('.').every((l) => l.length > 0 && Buffer.byteLength(l) <= 63));
}

/** `dns.getServers()` writes `1.2.3.4`, `1.2.3.4:53`, `::1` or `[::1]:53`. */
function parseServer(entry: string): DnsServerAddress {
  const bracketed = /^\[(.+)\](?::(\d+))?$/.exec(entry);
  if (bracketed) return { host: bracketed[1]!, port: Number(bracketed[2] ?? 53) };
  const withPort = /^([^:]+):(\d+)$/.exec(entry);
  if (withPort) return { host: withPort[1]!, port: Number(withPort[2]) };
  return { host: entry, port: 53 };
}

function familyOf(family: LookupOptions['family']): 0 | 4 | 6 {
  if (family === 4 || family === 'IPv4') return 4;
  if (family === 6 || family === 'IPv6') return 6;
  return 0;
}

function lookupArguments(
  options: LookupOptions | number | DnsLookupCallback,
  callback: DnsLookupCallback | undefined,
): [LookupOptions, DnsLookupCallback] {
  if (typeof options === 'function') return [{}, options];
  const cb = callback ?? (() => undefined);
  return [typeof options === 'number' ? { family: options } : (options ?? {}), cb];
}

function ordered(addresses: LookupAddress[], options: LookupOptions): LookupAddress[] {
  const v6First = options.order === 'ipv6first';
  return [...addresses].sort((a, b) => (v6First ? b.family - a.family : a.family - b.family));
}

function deliver(addresses: LookupAddress[], options: LookupOptions, callback: DnsLookupCallback): void {
  const first = addresses[0]!;
  if (options.all === true) callback(null, addresses);
  else callback(null, first.address, first.family);
}

/** Answers with the literal itself, as `dns.lookup` does; undefined when `hostname` is not an IP literal. */
function literalLookup(hostname: string): LookupAddress | undefined {
  const family = net.isIP(hostname);
  return family === 0 ? undefined : { address: hostname, family };
}

/** The `ttl` of a NODATA or NXDOMAIN answer: RFC 2308 §5 takes the smaller of the SOA's TTL and MINIMUM. */
function negativeTtl(packet: DecodedPacket): number | undefined {
  const soa = (packet.authorities ?? []).find((a) => a.type === 'SOA');
  if (soa === undefined || soa.type !== 'SOA') return undefined;
  return Math.min(soa.ttl ?? 0, soa.data.minimum ?? 0);
}

/** Asks the servers it is given, over UDP and then TCP for truncated answers; holds no sockets between calls. */
export class DnsClient {
  readonly #servers: DnsServerAddress[];
  readonly #timeoutMs: number;
  readonly #retries: number;

  constructor(options: DnsClientOptions = {}) {
    const servers = options.servers ?? dns.getServers().map(parseServer);
    if (servers.length === 0) throw new RangeError('DnsClient: no DNS servers');
    for (const server of servers) {
      // A connected UDP socket filters replies by address, which only works against the literal asked.
      if (net.isIP(server.host) === 0) throw new RangeError(`DnsClient: ${server.host} is not an IP address`);
      if (!Number.isInteger(server.port) || server.port < 1 || server.port > 0xffff) {
        throw new RangeError(`DnsClient: ${server.port} is not a port`);
      }
    }
    this.#servers = servers.map((s) => ({ ...s }));
    this.#timeoutMs = options.timeoutMs ?? 2000;
    this.#retries = options.retries ?? 2;
  }

  get servers(): DnsServerAddress[] {
    return this.#servers.map((s) => ({ ...s }));
  }

  /** RFC 2782 SRV; a discovery `SrvResolver`. NXDOMAIN throws `ENOTFOUND`; a name without SRV gives no records. */
  readonly resolveSrv = async (name: string): Promise<DnsSrvAnswer> => {
    const { records, ttl } = await this.#resolve(name, 'SRV', 'querySrv');
    const srv = records.flatMap((r) => (r.type === 'SRV' ? [r.data] : []));
    return {
      records: srv.map((d) => ({ name: d.target, port: d.port, priority: d.priority ?? 0, weight: d.weight ?? 0 })),
      ...(ttl === undefined ? {} : { ttl }),
    };
  };

  /** A records; empty when the name exists without any. */
  readonly resolve4 = async (name: string): Promise<DnsAddressRecord[]> => this.#addresses(name, 'A', 'queryA');

  /** AAAA records; empty when the name exists without any. */
  readonly resolve6 = async (name: string): Promise<DnsAddressRecord[]> => this.#addresses(name, 'AAAA', 'queryAaaa');

  /**
   * A `lookup` for `net.connect`, `http.request` and the like that resolves through this client: A and AAAA
   * records, IPv4 first unless `order: 'ipv6first'`; `hints` are ignored.
   */
  readonly lookup: DnsLookup = (hostname, options, callback) => {
    const [opts, cb] = lookupArguments(options, callback);
    const literal = literalLookup(hostname);
    if (literal !== undefined) {
      process.nextTick(() => deliver([literal], opts, cb));
      return;
    }
    // The callback runs outside the promise chain, so that an exception it throws is not swallowed.
    this.#lookupAll(hostname, familyOf(opts.family)).then(
      (addresses) => process.nextTick(() => deliver(ordered(addresses, opts), opts, cb)),
      (error: NodeJS.ErrnoException) => process.nextTick(() => cb(error, opts.all === true ? [] : '', 0)),
    );
  };

  async #lookupAll(hostname: string, family: 0 | 4 | 6): Promise<LookupAddress[]> {
    const wanted: [4 | 6, Promise<DnsAddressRecord[]>][] = [];
    if (family !== 6) wanted.push([4, this.resolve4(hostname)]);
    if (family !== 4) wanted.push([6, this.resolve6(hostname)]);
    const settled = await Promise.allSettled(wanted.map(([, promise]) => promise));
    const addresses = settled.flatMap((result, i) =>
      result.status === 'fulfilled' ? result.value.map((r) => ({ address: r.address, family: wanted[i]![0] })) : [],
    );
    if (addresses.length > 0) return addresses;
    // A transient failure must not pass for "no such host": the caller may well retry.
    const failure = settled.find(
      (r): r is PromiseRejectedResult => r.status === 'rejected' && (r.reason as DnsError).code !== 'ENOTFOUND',
    );
    if (failure !== undefined) throw failure.reason;
    throw new DnsError('getaddrinfo', 'ENOTFOUND', hostname);
  }

  async #addresses(name: string, type: 'A' | 'AAAA', syscall: string): Promise<DnsAddressRecord[]> {
    const { records } = await this.#resolve(name, type, syscall);
    return records.flatMap((r) => (r.type === type ? [{ address: r.data, ttl: r.ttl ?? 0 }] : []));
  }

  /** Follows CNAMEs (RFC 1034 §3.6.2), asking again when a chain leaves what one answer covered. */
  async #resolve(name: string, type: QueryType, syscall: string): Promise<{ records: Answer[]; ttl?: number }> {
    let owner = name;
    let chainTtl = Infinity;
    for (let hops = 0; ;) {
      const packet = await this.#query(owner, type, syscall, name);
      if ((packet.flags ?? 0) % 16 === NXDOMAIN) throw new DnsError(syscall, 'ENOTFOUND', name);
      const answers = packet.answers ?? [];
      let key = nameKey(owner);
      for (;;) {
        const cname = answers.find((a) => a.type === 'CNAME' && nameKey(a.name) === key);
        if (cname === undefined || cname.type !== 'CNAME') break;
        if (++hops > MAX_CNAME_CHAIN) throw new DnsError(syscall, 'EBADRESP', name);
        chainTtl = Math.min(chainTtl, cname.ttl ?? 0);
        key = nameKey(cname.data);
      }
      const records = answers.filter((a) => a.type === type && nameKey(a.name) === key);
      if (records.length === 0 && key !== nameKey(owner)) {
        owner = key;
        continue;
      }
      const ttls = [chainTtl, ...records.map((r) => ('ttl' in r ? (r.ttl ?? 0) : 0))];
      const ttl = records.length > 0 ? Math.min(...ttls) : negativeTtl(packet);
      return { records, ...(ttl === undefined ? {} : { ttl }) };
    }
  }

  /** One question, tried against the servers in turn; only NOERROR and NXDOMAIN end the attempts. */
  async #query(qname: string, type: QueryType, syscall: string, asked: string): Promise<DecodedPacket> {
    if (!isValidQueryName(qname)) throw new DnsError(syscall, 'EBADNAME', asked);
    let lastError: unknown;
    for (let attempt = 0; attempt <= this.#retries; attempt++) {
      const server = this.#servers[attempt % this.#servers.length]!;
      try {
        const packet = await this.#exchange(server, qname, type, syscall, asked);
        const rcode = (packet.flags ?? 0) % 16;
        if (rcode === NOERROR || rcode === NXDOMAIN) return packet;
        lastError = new DnsError(syscall, RCODE_ERRORS[rcode] ?? 'EBADRESP', asked);
      } catch (error) {
        lastError = error;
      }
    }
    throw lastError;
  }

  async #exchange(
    server: DnsServerAddress,
    qname: string,
    type: QueryType,
    syscall: string,
    asked: string,
  ): Promise<DecodedPacket> {
    // RFC 5452 §9.2: an unpredictable ID (and the fresh source port of a new socket) for every attempt.
    const id = randomInt(0x10000);
    const query = dnsPacket.encode({
      type: 'query',
      id,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type, name: qname, class: 'IN' }],
    });
    const accept = (message: Buffer): DecodedPacket | undefined => acceptReply(message, id, qname, type);
    const fail = (code: string, cause?: unknown): DnsError =>
      new DnsError(syscall, code, asked, cause === undefined ? undefined : { cause });
    const reply = await this.#overUdp(server, query, accept, fail);
    // RFC 7766 §5: a truncated answer is asked again over TCP.
    return reply.flag_tc ? this.#overTcp(server, query, accept, fail) : reply;
  }

  #overUdp(
    server: DnsServerAddress,
    query: Buffer,
    accept: (message: Buffer) => DecodedPacket | undefined,
    fail: (code: string, cause?: unknown) => DnsError,
  ): Promise<DecodedPacket> {
    return new Promise((resolve, reject) => {
      const socket = dgram.createSocket(net.isIPv6(server.host) ? 'udp6' : 'udp4');
      let settled = false;
      const finish = (error: DnsError | undefined, reply?: DecodedPacket): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.close();
        if (error === undefined) resolve(reply!);
        else reject(error);
      };
      const timer = setTimeout(() => finish(fail('ETIMEOUT')), this.#timeoutMs);
      // Connected, so that the kernel drops datagrams from anyone but the server and reports ICMP unreachable.
      socket.on('error', (error) => finish(fail('ECONNREFUSED', error)));
      socket.on('message', (message) => {
        // RFC 5452 §9.1: an answer that does not match is dropped, not taken as the failure of the query.
        const reply = accept(message);
        if (reply !== undefined) finish(undefined, reply);
      });
      socket.connect(server.port, server.host, () => {
        socket.send(query, (error) => {
          if (error) finish(fail('ECONNREFUSED', error));
        });
      });
    });
  }

  #overTcp(
    server: DnsServerAddress,
    query: Buffer,
    accept: (message: Buffer) => DecodedPacket | undefined,
    fail: (code: string, cause?: unknown) => DnsError,
  ): Promise<DecodedPacket> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: server.host, port: server.port });
      let settled = false;
      const finish = (error: DnsError | undefined, reply?: DecodedPacket): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        if (error === undefined) resolve(reply!);
        else reject(error);
      };
      const timer = setTimeout(() => finish(fail('ETIMEOUT')), this.#timeoutMs);
      let pending: Buffer = Buffer.alloc(0);
      socket.on('connect', () => {
        const frame = Buffer.alloc(2 + query.length);
        frame.writeUInt16BE(query.length, 0);
        query.copy(frame, 2);
        socket.write(frame);
      });
      socket.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        if (pending.length < 2 || pending.length < 2 + pending.readUInt16BE(0)) return;
        // One query per connection, so anything but its answer means the stream cannot be trusted.
        const reply = accept(pending.subarray(2, 2 + pending.readUInt16BE(0)));
        finish(reply === undefined ? fail('EBADRESP') : undefined, reply);
      });
      // c-ares reports an unreachable or failing server as ECONNREFUSED, and discovery treats it as transient.
      socket.on('error', (error) => finish(fail('ECONNREFUSED', error)));
      socket.on('close', () => finish(fail('ECONNREFUSED')));
    });
  }
}

/** RFC 5452 §9.1: the reply must carry the ID and the question (compared case-insensitively) that were sent. */
function acceptReply(message: Buffer, id: number, qname: string, type: QueryType): DecodedPacket | undefined {
  let packet: DecodedPacket;
  try {
    packet = dnsPacket.decode(message);
  } catch {
    return undefined;
  }
  const flags = packet.flags ?? 0;
  if (packet.type !== 'response' || packet.id !== id || (flags >> 11) % 16 !== 0) return undefined;
  const questions = packet.questions ?? [];
  // RFC 1035 lets a server that could not parse the query (FORMERR, NOTIMP) leave the question out.
  if (questions.length === 0) return flags % 16 !== NOERROR && flags % 16 !== NXDOMAIN ? packet : undefined;
  const [question] = questions;
  if (questions.length !== 1 || question === undefined) return undefined;
  const sameQuestion =
    nameKey(question.name) === nameKey(qname) && question.type === type && (question.class ?? 'IN') === 'IN';
  return sameQuestion ? packet : undefined;
}

/**
 * A `lookup` that answers `localhost` and every `*.localhost` name with loopback itself, as RFC 6761 §6.3 lets
 * (and browsers do), and hands every other name to node's `dns.lookup`.
 */
export function localhostLookup(
  hostname: string,
  options: LookupOptions | number | DnsLookupCallback,
  callback?: DnsLookupCallback,
): void {
  const [opts, cb] = lookupArguments(options, callback);
  const key = nameKey(hostname);
  if (key !== 'localhost' && !key.endsWith('.localhost')) {
    dns.lookup(hostname, opts, cb);
    return;
  }
  const family = familyOf(opts.family);
  const loopback: LookupAddress[] = [];
  if (family !== 6) loopback.push({ address: '127.0.0.1', family: 4 });
  if (family !== 4) loopback.push({ address: '::1', family: 6 });
  process.nextTick(() => deliver(ordered(loopback, opts), opts, cb));
}

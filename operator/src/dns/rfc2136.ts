/**
 * RFC 2136 dynamic updates of a domain's `_federizer` SRV records, signed with TSIG. Each name's RRset is
 * deleted (class ANY) and then added again in one UPDATE message, which the server applies atomically:
 * dns-packet cannot encode class NONE (deleting single records), and replacing the whole RRset needs no
 * knowledge of what was there.
 */
import { randomInt } from 'node:crypto';
import net from 'node:net';
import type { SrvRecord } from '../model.js';
import { signMessage, TsigError, verifyMessage, type TsigKey } from './tsig.js';
import { encodeEmptyRecord, encodeQuestion, encodeRecord, layout } from './wire.js';

/** The records the builders compute are the ones the server is sent. */
export type SrvRecordSpec = SrvRecord;

export interface Rfc2136Server {
  /** An IP address or a host name. */
  host: string;
  port: number;
  /** The zone the records live in (the UPDATE's zone section). */
  zone: string;
  key: TsigKey;
  /** For the whole exchange; default 5000. */
  timeoutMs?: number;
}

const OPCODE_UPDATE = 5 << 11;
const RCODES: Record<number, string> = {
  0: 'NOERROR',
  1: 'FORMERR',
  2: 'SERVFAIL',
  3: 'NXDOMAIN',
  4: 'NOTIMP',
  5: 'REFUSED',
  6: 'YXDOMAIN',
  7: 'YXRRSET',
  8: 'NXRRSET',
  9: 'NOTAUTH',
  10: 'NOTZONE',
};

/** The server answered, and said no (or could not be understood); `rcode` is its answer's name. */
export class Rfc2136Error extends Error {
  override readonly name = 'Rfc2136Error';
  constructor(
    readonly rcode: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

function bare(name: string): string {
  return name.replace(/\.$/, '').toLowerCase();
}

/** `host`, `host:port`, `[v6]:port` or a bare IPv6 address; the port defaults to 53. */
export function parseServerAddress(value: string): { host: string; port: number } {
  const trimmed = value.trim();
  const bracketed = /^\[(.+)\](?::(\d+))?$/.exec(trimmed);
  const withPort = /^([^:]+):(\d+)$/.exec(trimmed);
  const [host, port] = bracketed
    ? [bracketed[1]!, bracketed[2]]
    : withPort
      ? [withPort[1]!, withPort[2]]
      : [trimmed, undefined];
  const portNumber = port === undefined ? 53 : Number(port);
  if (host === '' || !Number.isInteger(portNumber) || portNumber < 1 || portNumber > 0xffff)
    throw new TypeError(`DNS server "${value}" is not host, host:port or [ipv6]:port`);
  return { host, port: portNumber };
}

function checkRecord(zone: string, r: SrvRecordSpec): void {
  const name = bare(r.name);
  // RFC 2136 §3.4.1.3: the server would refuse it with NOTZONE; saying so here names the record.
  if (name !== zone && !name.endsWith(`.${zone}`)) throw new TypeError(`SRV record ${r.name} is outside zone ${zone}`);
  for (const [field, value, max] of [
    ['port', r.port, 0xffff],
    ['priority', r.priority, 0xffff],
    ['weight', r.weight, 0xffff],
    ['ttl', r.ttl, 0x7fffffff],
  ] as const) {
    if (!Number.isInteger(value) || value < 0 || value > max)
      throw new TypeError(`SRV record ${r.name}: ${field} ${value} is not an integer from 0 to ${max}`);
  }
  if (bare(r.target) === '') throw new TypeError(`SRV record ${r.name} has no target`);
}

/**
 * An unsigned UPDATE for `zone` that deletes the SRV RRsets at `deleteNames` and at every name in `add`,
 * then adds `add`.
 */
export function buildSrvUpdate(
  zone: string,
  deleteNames: readonly string[],
  add: readonly SrvRecordSpec[],
  id: number,
) {
  const z = bare(zone);
  for (const r of add) checkRecord(z, r);
  const names = [...new Set([...deleteNames.map(bare), ...add.map((r) => bare(r.name))])];
  for (const n of names)
    if (n !== z && !n.endsWith(`.${z}`)) throw new TypeError(`SRV name ${n} is outside zone ${zone}`);
  const updates = [
    ...names.map((n) => encodeEmptyRecord(n, 'SRV', 'ANY')),
    ...add.map((r) =>
      encodeRecord({
        name: bare(r.name),
        type: 'SRV',
        class: 'IN',
        ttl: r.ttl,
        data: { target: bare(r.target), port: r.port, priority: r.priority, weight: r.weight },
      }),
    ),
  ];
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(OPCODE_UPDATE, 2);
  header.writeUInt16BE(1, 4); // ZOCOUNT
  header.writeUInt16BE(updates.length, 8); // UPCOUNT
  return Buffer.concat([header, encodeQuestion(z, 'SOA', 'IN'), ...updates]);
}

/** One DNS exchange over TCP (RFC 7766): UPDATE messages may exceed a UDP datagram, and TCP is never truncated. */
export function exchangeTcp(host: string, port: number, message: Buffer, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    let received = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Rfc2136Error('TIMEOUT', `no answer from ${host}:${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    const finish = (error: Error | undefined, answer?: Buffer) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(answer!);
    };
    socket.on('connect', () => {
      const length = Buffer.alloc(2);
      length.writeUInt16BE(message.length);
      socket.write(Buffer.concat([length, message]));
    });
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= 2 && received.length >= 2 + received.readUInt16BE(0))
        finish(undefined, received.subarray(2, 2 + received.readUInt16BE(0)));
    });
    socket.on('error', (e) =>
      finish(new Rfc2136Error('UNREACHABLE', `DNS server ${host}:${port}: ${e.message}`, { cause: e })),
    );
    socket.on('close', () =>
      finish(new Rfc2136Error('UNREACHABLE', `DNS server ${host}:${port} closed the connection without an answer`)),
    );
  });
}

/** Signs `message`, sends it, verifies the answer's signature and its RCODE. */
export async function sendSignedUpdate(server: Rfc2136Server, message: Buffer): Promise<void> {
  const signed = signMessage(message, server.key);
  const answer = await exchangeTcp(server.host, server.port, signed.message, server.timeoutMs ?? 5000);
  const { id, flags } = layout(answer);
  if (id !== message.readUInt16BE(0)) throw new Rfc2136Error('FORMERR', `answer ID ${id} does not match the request`);
  const rcode = flags & 0xf;
  const rcodeName = RCODES[rcode] ?? `RCODE ${rcode}`;
  try {
    verifyMessage(answer, server.key, { requestMac: signed.mac });
  } catch (e) {
    // An unsigned refusal still tells why the update failed; it just cannot be trusted for success.
    if (e instanceof TsigError && e.code === 'UNSIGNED' && rcode !== 0)
      throw new Rfc2136Error(
        rcodeName,
        `${server.host}:${server.port} refused the update of ${server.zone}: ${rcodeName}`,
      );
    throw e;
  }
  if (rcode !== 0)
    throw new Rfc2136Error(
      rcodeName,
      `${server.host}:${server.port} refused the update of ${server.zone}: ${rcodeName}`,
    );
}

/** Keeps a domain's SRV records in an authoritative server that accepts TSIG-signed updates. */
export class Rfc2136Client {
  constructor(readonly server: Rfc2136Server) {}

  /** Makes the SRV RRsets at the records' names exactly `records`; also empties the RRsets at `alsoDelete`. */
  async replaceSrvRecords(records: readonly SrvRecordSpec[], alsoDelete: readonly string[] = []): Promise<void> {
    await sendSignedUpdate(this.server, buildSrvUpdate(this.server.zone, alsoDelete, records, randomInt(0x10000)));
  }

  /** Deletes the SRV RRsets at `names`; deleting what is not there is not an error (RFC 2136 §3.4.2.3). */
  async deleteSrvRecords(names: readonly string[]): Promise<void> {
    if (names.length === 0) return;
    await sendSignedUpdate(this.server, buildSrvUpdate(this.server.zone, names, [], randomInt(0x10000)));
  }
}

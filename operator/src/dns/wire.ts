/**
 * The few pieces of DNS wire format that dns-packet does not give: owner names in canonical form (RFC 4034
 * §6.2, what TSIG digests), records with empty RDATA (RFC 2136 deletions), and the offset of a message's last
 * record (to take a TSIG record off a response before verifying it).
 */
import dnsPacket from 'dns-packet';
import type { RecordClass, RecordType } from 'dns-packet';

const HEADER_BYTES = 12;

/** Uncompressed, lowercase (RFC 4034 §6.2), fully qualified. */
export function canonicalName(name: string): Buffer {
  const lower = name.replace(/\.$/, '').replace(/[A-Z]+/g, (s) => s.toLowerCase());
  // dns-packet never compresses, so the question section of a one-question packet is NAME TYPE CLASS.
  const bytes = dnsPacket.encode({ questions: [{ name: lower === '' ? '.' : lower, type: 'A', class: 'IN' }] });
  return Buffer.from(bytes.subarray(HEADER_BYTES, bytes.length - 4));
}

/** The bytes of one question (NAME TYPE CLASS), for the zone section of an UPDATE. */
export function encodeQuestion(name: string, type: RecordType, klass: RecordClass): Buffer {
  const bytes = dnsPacket.encode({ questions: [{ name, type, class: klass }] });
  return Buffer.from(bytes.subarray(HEADER_BYTES));
}

/** The bytes of one resource record as dns-packet encodes it in an answer section. */
export function encodeRecord(record: dnsPacket.Answer): Buffer {
  const bytes = dnsPacket.encode({ answers: [record] });
  return Buffer.from(bytes.subarray(HEADER_BYTES));
}

/**
 * A record with TTL 0 and no RDATA: with class ANY it deletes an RRset (RFC 2136 §2.5.2). dns-packet cannot
 * write empty RDATA for a known type, so this one is written by hand.
 */
export function encodeEmptyRecord(name: string, type: RecordType, klass: RecordClass): Buffer {
  return Buffer.concat([encodeQuestion(name, type, klass), Buffer.alloc(4 + 2)]);
}

/** Offset just past the (possibly compressed) name at `offset`. */
export function skipName(buf: Buffer, offset: number): number {
  let at = offset;
  for (;;) {
    if (at >= buf.length) throw new RangeError('DNS message truncated inside a name');
    const len = buf[at]!;
    if (len === 0) return at + 1;
    if ((len & 0xc0) === 0xc0) return at + 2;
    if ((len & 0xc0) !== 0) throw new RangeError(`DNS name label with reserved bits 0x${len.toString(16)}`);
    at += 1 + len;
  }
}

export interface MessageLayout {
  id: number;
  flags: number;
  counts: { qd: number; an: number; ns: number; ar: number };
  /** Offset of each resource record (answer, authority, then additional), in order. */
  recordOffsets: number[];
  end: number;
}

/** Walks a message's sections without decoding RDATA, so that a record type dns-packet lacks does not matter. */
export function layout(buf: Buffer): MessageLayout {
  if (buf.length < HEADER_BYTES) throw new RangeError(`DNS message of ${buf.length} bytes is shorter than a header`);
  const counts = {
    qd: buf.readUInt16BE(4),
    an: buf.readUInt16BE(6),
    ns: buf.readUInt16BE(8),
    ar: buf.readUInt16BE(10),
  };
  let at = HEADER_BYTES;
  for (let i = 0; i < counts.qd; i++) at = skipName(buf, at) + 4;
  const recordOffsets: number[] = [];
  for (let i = 0; i < counts.an + counts.ns + counts.ar; i++) {
    recordOffsets.push(at);
    at = skipName(buf, at);
    if (at + 10 > buf.length) throw new RangeError('DNS message truncated inside a record header');
    at += 10 + buf.readUInt16BE(at + 8);
  }
  if (at > buf.length) throw new RangeError('DNS message truncated inside RDATA');
  return { id: buf.readUInt16BE(0), flags: buf.readUInt16BE(2), counts, recordOffsets, end: at };
}

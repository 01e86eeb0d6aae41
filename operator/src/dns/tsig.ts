/**
 * TSIG (RFC 8945): HMAC signatures over whole DNS messages, which is how an authoritative server accepts
 * dynamic updates (RFC 2136) from the operator. dns-packet has no TSIG, so the record is written and read
 * here, byte for byte.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { canonicalName, layout } from './wire.js';

export type TsigAlgorithm = 'hmac-sha256' | 'hmac-sha384' | 'hmac-sha512';

const DIGESTS: Record<TsigAlgorithm, string> = {
  'hmac-sha256': 'sha256',
  'hmac-sha384': 'sha384',
  'hmac-sha512': 'sha512',
};

export interface TsigKey {
  /** The key's name as the server knows it (`key "name" { ... }` in BIND). */
  name: string;
  algorithm: TsigAlgorithm;
  secret: Buffer;
}

const TYPE_TSIG = 250;
const CLASS_ANY = 255;
const RCODE_NOTAUTH = 9;
/** RFC 8945 §3 and the IANA registry of TSIG error codes. */
const TSIG_ERRORS: Record<number, string> = { 16: 'BADSIG', 17: 'BADKEY', 18: 'BADTIME', 22: 'BADTRUNC' };
/** RFC 8945 §10: 300 seconds is the recommended fudge. */
export const DEFAULT_FUDGE_SECONDS = 300;

/** A signature that is missing, malformed or wrong; `code` names which (or the server's TSIG error). */
export class TsigError extends Error {
  override readonly name = 'TsigError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Accepts the names BIND, Knot and `tsig-keygen` use: `hmac-sha256`, `HMAC-SHA256`, `hmac-sha256.`. */
export function parseTsigAlgorithm(value: string): TsigAlgorithm {
  const normal = value
    .trim()
    .toLowerCase()
    .replace(/\.$/, '')
    .replace(/^hmacsha/, 'hmac-sha');
  if (normal in DIGESTS) return normal as TsigAlgorithm;
  throw new TypeError(`TSIG algorithm "${value}" is not supported: use hmac-sha256, hmac-sha384 or hmac-sha512`);
}

/** A key from its name, algorithm and base64 secret, as BIND's `tsig-keygen` prints them. */
export function tsigKey(name: string, algorithm: string, secretBase64: string): TsigKey {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(secretBase64.trim()))
    throw new TypeError(`the TSIG secret of key "${name}" is not base64`);
  const secret = Buffer.from(secretBase64.trim(), 'base64');
  // RFC 8945 §6: a key shorter than half the hash's output gives a weak MAC.
  if (secret.length < 16) throw new TypeError(`the TSIG secret of key "${name}" is ${secret.length} bytes; 16 or more`);
  if (name.trim() === '') throw new TypeError('a TSIG key needs a name');
  return { name: name.trim(), algorithm: parseTsigAlgorithm(algorithm), secret };
}

function uint48(seconds: number): Buffer {
  const out = Buffer.alloc(6);
  out.writeUIntBE(seconds, 0, 6);
  return out;
}

function uint16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(value);
  return out;
}

interface TsigFields {
  timeSigned: number;
  fudge: number;
  error: number;
  otherData: Buffer;
}

/** RFC 8945 §4.3.3: the TSIG variables that follow the message in the digest. */
function variables(key: TsigKey, f: TsigFields): Buffer {
  return Buffer.concat([
    canonicalName(key.name),
    uint16(CLASS_ANY),
    Buffer.alloc(4), // TTL 0
    canonicalName(key.algorithm),
    uint48(f.timeSigned),
    uint16(f.fudge),
    uint16(f.error),
    uint16(f.otherData.length),
    f.otherData,
  ]);
}

function mac(key: TsigKey, parts: Buffer[]): Buffer {
  const hmac = createHmac(DIGESTS[key.algorithm], key.secret);
  for (const part of parts) hmac.update(part);
  return hmac.digest();
}

export interface SignOptions {
  /** Seconds since the epoch; default now. */
  timeSigned?: number;
  fudge?: number;
  /** Signing a response: the request's MAC, digested first (RFC 8945 §4.3.1). */
  requestMac?: Buffer;
  error?: number;
}

export interface SignedMessage {
  message: Buffer;
  /** Kept to verify the response, whose MAC covers this one. */
  mac: Buffer;
}

/** Appends a TSIG record to `message` (which must not carry one) and raises ARCOUNT. */
export function signMessage(message: Buffer, key: TsigKey, options: SignOptions = {}): SignedMessage {
  layout(message); // refuses a malformed message before it is signed
  const fields: TsigFields = {
    timeSigned: options.timeSigned ?? Math.floor(Date.now() / 1000),
    fudge: options.fudge ?? DEFAULT_FUDGE_SECONDS,
    error: options.error ?? 0,
    otherData: Buffer.alloc(0),
  };
  const prefix = options.requestMac ? [uint16(options.requestMac.length), options.requestMac] : [];
  const digest = mac(key, [...prefix, message, variables(key, fields)]);
  const rdata = Buffer.concat([
    canonicalName(key.algorithm),
    uint48(fields.timeSigned),
    uint16(fields.fudge),
    uint16(digest.length),
    digest,
    message.subarray(0, 2), // original ID
    uint16(fields.error),
    uint16(0),
  ]);
  const record = Buffer.concat([
    canonicalName(key.name),
    uint16(TYPE_TSIG),
    uint16(CLASS_ANY),
    Buffer.alloc(4),
    uint16(rdata.length),
    rdata,
  ]);
  const signed = Buffer.concat([message, record]);
  signed.writeUInt16BE(message.readUInt16BE(10) + 1, 10);
  return { message: signed, mac: digest };
}

/** Reads a possibly compressed name; TSIG names are compared, not digested, so any form is accepted. */
function readName(buf: Buffer, offset: number): string {
  const labels: string[] = [];
  let at = offset;
  for (let jumps = 0; jumps < 64;) {
    const len = buf[at];
    if (len === undefined) throw new TsigError('FORMERR', 'TSIG record truncated inside a name');
    if (len === 0) return labels.join('.').toLowerCase();
    if ((len & 0xc0) === 0xc0) {
      at = buf.readUInt16BE(at) & 0x3fff;
      jumps++;
      continue;
    }
    labels.push(buf.toString('latin1', at + 1, at + 1 + len));
    at += 1 + len;
  }
  throw new TsigError('FORMERR', 'TSIG record name has a compression loop');
}

function nameEnd(buf: Buffer, offset: number): number {
  let at = offset;
  for (;;) {
    const len = buf[at];
    if (len === undefined) throw new TsigError('FORMERR', 'TSIG record truncated inside a name');
    if (len === 0) return at + 1;
    if ((len & 0xc0) === 0xc0) return at + 2;
    at += 1 + len;
  }
}

export interface ParsedTsig {
  keyName: string;
  algorithm: string;
  timeSigned: number;
  fudge: number;
  mac: Buffer;
  originalId: number;
  error: number;
  otherData: Buffer;
  /** Where the TSIG record starts: the signed message is everything before it. */
  offset: number;
}

/** The TSIG record of a message, which RFC 8945 §5.1 puts last in the additional section; undefined if none. */
export function readTsig(message: Buffer): ParsedTsig | undefined {
  const { counts, recordOffsets } = layout(message);
  if (counts.ar === 0) return undefined;
  const offset = recordOffsets[recordOffsets.length - 1]!;
  let at = nameEnd(message, offset);
  if (message.readUInt16BE(at) !== TYPE_TSIG) return undefined;
  const keyName = readName(message, offset);
  const rdlength = message.readUInt16BE(at + 8);
  at += 10;
  const end = at + rdlength;
  const algorithm = readName(message, at);
  at = nameEnd(message, at);
  if (at + 10 > end) throw new TsigError('FORMERR', 'TSIG RDATA too short');
  const timeSigned = message.readUIntBE(at, 6);
  const fudge = message.readUInt16BE(at + 6);
  const macSize = message.readUInt16BE(at + 8);
  at += 10;
  const macBytes = message.subarray(at, at + macSize);
  at += macSize;
  if (at + 6 > end) throw new TsigError('FORMERR', 'TSIG RDATA too short for its MAC size');
  const originalId = message.readUInt16BE(at);
  const error = message.readUInt16BE(at + 2);
  const otherLen = message.readUInt16BE(at + 4);
  const otherData = message.subarray(at + 6, at + 6 + otherLen);
  if (at + 6 + otherLen !== end) throw new TsigError('FORMERR', 'TSIG RDATA length does not match its fields');
  return {
    keyName,
    algorithm,
    timeSigned,
    fudge,
    mac: Buffer.from(macBytes),
    originalId,
    error,
    otherData: Buffer.from(otherData),
    offset,
  };
}

export interface VerifyOptions {
  /** The MAC of the request this message answers; absent when verifying a request. */
  requestMac?: Buffer;
  /** Seconds since the epoch; default now. */
  now?: number;
}

/**
 * Checks the TSIG of a message (a response when `requestMac` is given) with `key`; throws a TsigError naming
 * the rule it breaks. Returns the TSIG record read.
 */
export function verifyMessage(message: Buffer, key: TsigKey, options: VerifyOptions = {}): ParsedTsig {
  const tsig = readTsig(message);
  if (tsig === undefined) {
    const rcode = message.length >= 4 ? message.readUInt16BE(2) & 0xf : -1;
    throw new TsigError('UNSIGNED', `the message is not signed (RFC 8945 §5.3.1 requires it; rcode ${rcode})`);
  }
  if (tsig.keyName !== key.name.toLowerCase().replace(/\.$/, ''))
    throw new TsigError('BADKEY', `signed with key "${tsig.keyName}", expected "${key.name}"`);
  if (tsig.algorithm !== key.algorithm)
    throw new TsigError('BADKEY', `signed with ${tsig.algorithm}, expected ${key.algorithm}`);
  // RFC 8945 §5.3.2: a server that could not verify the request answers NOTAUTH with the reason, unsigned or not.
  if (tsig.error !== 0) {
    const rcode = message.readUInt16BE(2) & 0xf;
    const name = TSIG_ERRORS[tsig.error] ?? `error ${tsig.error}`;
    const answer = rcode === RCODE_NOTAUTH ? 'NOTAUTH' : `rcode ${rcode}`;
    throw new TsigError(name, `the server refused the request's signature: ${answer}, TSIG error ${name}`);
  }
  // Truncated MACs (RFC 8945 §5.2.2.1) are refused: nothing here sends or needs them.
  const expectedLength = createHmac(DIGESTS[key.algorithm], key.secret).digest().length;
  if (tsig.mac.length !== expectedLength)
    throw new TsigError('BADTRUNC', `MAC of ${tsig.mac.length} bytes, expected ${expectedLength}`);
  const unsigned = Buffer.from(message.subarray(0, tsig.offset));
  unsigned.writeUInt16BE(tsig.originalId, 0);
  unsigned.writeUInt16BE(unsigned.readUInt16BE(10) - 1, 10);
  const prefix = options.requestMac ? [uint16(options.requestMac.length), options.requestMac] : [];
  const expected = mac(key, [...prefix, unsigned, variables(key, tsig)]);
  if (!timingSafeEqual(expected, tsig.mac)) throw new TsigError('BADSIG', 'the MAC does not match the message');
  // RFC 8945 §5.2.3: time is checked after the MAC, so that a forged time cannot be told from a forged MAC.
  const now = options.now ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - tsig.timeSigned) > tsig.fudge)
    throw new TsigError('BADTIME', `signed at ${tsig.timeSigned}, now is ${now}, fudge ${tsig.fudge} seconds`);
  return tsig;
}

/** TSIG signing and verification (RFC 8945), byte for byte; the interoperability test is rfc2136.test.ts against BIND. */
import { createHmac } from 'node:crypto';
import dnsPacket from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { readTsig, signMessage, tsigKey, TsigError, verifyMessage } from './tsig.js';

const key = tsigKey('update-key.', 'hmac-sha256', Buffer.alloc(32, 7).toString('base64'));
const query = (id: number) =>
  dnsPacket.encode({ type: 'query', id, questions: [{ type: 'SOA', name: 'example.com' }] });
const response = (id: number) =>
  dnsPacket.encode({ type: 'response', id, flags: 5 << 11, questions: [{ type: 'SOA', name: 'example.com' }] });

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof TsigError) return e.code;
    throw e;
  }
  return 'no error';
}

describe('signMessage', () => {
  it('appends a TSIG record (RFC 8945 §4.2) and raises ARCOUNT; the MAC covers message and variables (§4.3.3)', () => {
    const message = query(0x1234);
    const { message: signed, mac } = signMessage(message, key, { timeSigned: 1_700_000_000, fudge: 300 });
    expect(signed.readUInt16BE(10)).toBe(1);
    const tsig = readTsig(signed)!;
    expect(tsig).toMatchObject({
      keyName: 'update-key',
      algorithm: 'hmac-sha256',
      timeSigned: 1_700_000_000,
      fudge: 300,
    });
    expect(tsig.originalId).toBe(0x1234);
    // Recomputed independently from the RFC's layout of the digest input.
    const name = (n: string) =>
      Buffer.concat([
        ...n.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])),
        Buffer.from([0]),
      ]);
    const time = Buffer.alloc(6);
    time.writeUIntBE(1_700_000_000, 0, 6);
    const variables = Buffer.concat([
      name('update-key'),
      Buffer.from([0, 255, 0, 0, 0, 0]),
      name('hmac-sha256'),
      time,
      Buffer.from([1, 44, 0, 0, 0, 0]),
    ]);
    const expected = createHmac('sha256', Buffer.alloc(32, 7)).update(message).update(variables).digest();
    expect(mac).toEqual(expected);
    expect(tsig.mac).toEqual(expected);
  });
});

describe('verifyMessage', () => {
  const now = 1_700_000_000;
  const request = signMessage(query(7), key, { timeSigned: now });
  const signedResponse = signMessage(response(7), key, { timeSigned: now, requestMac: request.mac });

  it('accepts a response signed over the request MAC (§4.3.1)', () => {
    expect(verifyMessage(signedResponse.message, key, { requestMac: request.mac, now }).error).toBe(0);
  });

  it('refuses a response answering another request: its digest covers that request MAC (BADSIG)', () => {
    const other = signMessage(query(7), key, { timeSigned: now + 1 });
    expect(code(() => verifyMessage(signedResponse.message, key, { requestMac: other.mac, now }))).toBe('BADSIG');
  });

  it('refuses a changed byte (BADSIG), another key name or algorithm (BADKEY), a stale time (BADTIME, §5.2.3)', () => {
    const tampered = Buffer.from(signedResponse.message);
    tampered[3] = tampered[3]! ^ 1;
    expect(code(() => verifyMessage(tampered, key, { requestMac: request.mac, now }))).toBe('BADSIG');
    const stranger = tsigKey('other', 'hmac-sha256', key.secret.toString('base64'));
    expect(code(() => verifyMessage(signedResponse.message, stranger, { requestMac: request.mac, now }))).toBe(
      'BADKEY',
    );
    const sha512 = tsigKey('update-key', 'hmac-sha512', key.secret.toString('base64'));
    expect(code(() => verifyMessage(signedResponse.message, sha512, { requestMac: request.mac, now }))).toBe('BADKEY');
    expect(code(() => verifyMessage(signedResponse.message, key, { requestMac: request.mac, now: now + 301 }))).toBe(
      'BADTIME',
    );
  });

  it('refuses an unsigned response (§5.3.1), and reports the TSIG error a server answered with', () => {
    expect(code(() => verifyMessage(response(7), key, { requestMac: request.mac, now }))).toBe('UNSIGNED');
    const refused = signMessage(response(7), key, { timeSigned: now, error: 16 });
    expect(code(() => verifyMessage(refused.message, key, { now }))).toBe('BADSIG');
  });
});

describe('tsigKey', () => {
  it('refuses what BIND would not load, saying which rule', () => {
    expect(() => tsigKey('k', 'hmac-md5', Buffer.alloc(32).toString('base64'))).toThrow(/not supported/);
    expect(() => tsigKey('k', 'hmac-sha256', 'not base64!')).toThrow(/not base64/);
    expect(() => tsigKey('k', 'hmac-sha256', Buffer.alloc(8).toString('base64'))).toThrow(/8 bytes; 16 or more/);
    expect(tsigKey('k', 'HMACSHA256', Buffer.alloc(32).toString('base64')).algorithm).toBe('hmac-sha256');
  });
});

import { generateKeyPair as generateNodeKeyPair, webcrypto } from 'node:crypto';
import { promisify } from 'node:util';
import { describe, it, expect, beforeAll } from 'vitest';
import { CompactSign, exportJWK, generateKeyPair, generateSecret } from 'jose';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import { ProtocolError } from './errors.js';
import type { ProtocolErrorCode } from './errors.js';
import {
  ALLOWED_ALGS,
  JWT_TYPES,
  decodeJwt,
  exportPublicJwk,
  importPublicJwk,
  keyFromJwks,
  signJwt,
  verifyJwt,
} from './jwt.js';
import type { JwsAlg } from './jwt.js';

const NOW = 1_700_000_000;
const ISS = 'https://as.example.com';

type Pair = { privateKey: CryptoKey; publicKey: CryptoKey };
const keys = {} as Record<JwsAlg, Pair>;
let other: Pair;

beforeAll(async () => {
  for (const alg of ALLOWED_ALGS) keys[alg] = await generateKeyPair(alg);
  other = await generateKeyPair('ES256');
});

function claims(extra: JWTPayload = {}): JWTPayload {
  return { iss: ISS, sub: 'alice@example.com', iat: NOW, exp: NOW + 600, jti: 'j1', ...extra };
}

function es256(extra: JWTPayload = {}, typ: string = JWT_TYPES.assertion): Promise<string> {
  return signJwt(claims(extra), { typ, alg: 'ES256', key: keys.ES256.privateKey, kid: 'k1' });
}

function enc(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** Signs an arbitrary header with ES256 directly, bypassing the guards of signJwt and jose. */
async function signRaw(header: object, payload: object, key: CryptoKey = keys.ES256.privateKey): Promise<string> {
  const input = `${enc(header)}.${enc(payload)}`;
  const data = new TextEncoder().encode(input);
  const sig = await webcrypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, key as webcrypto.CryptoKey, data);
  return `${input}.${Buffer.from(sig).toString('base64url')}`;
}

async function rejection(p: Promise<unknown>): Promise<ProtocolError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ProtocolError);
  return err as ProtocolError;
}

async function expectCode(p: Promise<unknown>, code: ProtocolErrorCode): Promise<void> {
  expect((await rejection(p)).code).toBe(code);
}

function verifyEs256(token: string, extra: Partial<Parameters<typeof verifyJwt>[1]> = {}) {
  return verifyJwt(token, { typ: JWT_TYPES.assertion, key: keys.ES256.publicKey, now: NOW, ...extra });
}

describe('signJwt / verifyJwt round trips', () => {
  for (const alg of ALLOWED_ALGS) {
    it(`signs and verifies ${alg}`, async () => {
      const token = await signJwt(claims({ aud: 'https://mbx.example.net' }), {
        typ: JWT_TYPES.accessToken,
        alg,
        key: keys[alg].privateKey,
        kid: `kid-${alg}`,
      });
      const { header, payload } = await verifyJwt(token, {
        typ: JWT_TYPES.accessToken,
        key: keys[alg].publicKey,
        now: NOW,
        issuer: ISS,
        audience: 'https://mbx.example.net',
      });
      expect(header).toEqual({ alg, typ: 'at+jwt', kid: `kid-${alg}` });
      expect(payload).toEqual(claims({ aud: 'https://mbx.example.net' }));
    });
  }

  it('resolves the key through a callback given the protected header', async () => {
    const seen: string[] = [];
    const key = (h: { kid?: string }) => (seen.push(h.kid ?? ''), keys.ES256.publicKey);
    await verifyEs256(await es256(), { key });
    expect(seen).toEqual(['k1']);
  });

  it('refuses to embed a private jwk in the header', async () => {
    const jwk = await exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey);
    const signing = signJwt(claims(), { typ: 'dpop+jwt', alg: 'ES256', key: keys.ES256.privateKey, jwk });
    await expectCode(signing, 'forbidden_header_parameter');
  });
});

describe('decodeJwt (compact JWS shape, RFC 7515 §7.1)', () => {
  it('decodes header and payload without verifying', async () => {
    const { header, payload } = decodeJwt(await es256());
    expect(header.kid).toBe('k1');
    expect(payload.sub).toBe('alice@example.com');
  });

  const cases: [string, string, RegExp][] = [
    ['rejects a token without three segments', `${enc({ alg: 'ES256' })}.${enc({})}`, /3 segments, found 2/],
    [
      'rejects a header that is not base64url',
      `${enc({ alg: 'ES256' })}+.${enc({})}.c2ln`,
      /header segment is not base64url/,
    ],
    ['rejects an empty payload segment', `${enc({ alg: 'ES256' })}..c2ln`, /payload segment is not base64url/],
    [
      'rejects a header that is not JSON',
      `${Buffer.from('{alg').toString('base64url')}.${enc({})}.c2ln`,
      /header is not UTF-8 JSON/,
    ],
    ['rejects a header that is a JSON array', `${enc(['ES256'])}.${enc({})}.c2ln`, /header is not a JSON object/],
    [
      'rejects a payload that is not a JSON object',
      `${enc({ alg: 'ES256' })}.${enc('x')}.c2ln`,
      /payload is not a JSON object/,
    ],
    [
      'rejects a signature that is not base64url',
      `${enc({ alg: 'ES256' })}.${enc({})}.c2l=`,
      /signature segment is not base64url/,
    ],
  ];
  it('rejects invalid UTF-8, also between valid tokens (one decoder serves every call)', async () => {
    const valid = await es256();
    // A JSON object whose string ends in a truncated two-byte sequence (0xc3 without its continuation).
    const truncated = Buffer.concat([Buffer.from('{"alg":"ES256","x":"'), Buffer.of(0xc3), Buffer.from('"}')]);
    const bad = `${truncated.toString('base64url')}.${enc({})}.c2ln`;
    expect(decodeJwt(valid).header.kid).toBe('k1');
    expect(() => decodeJwt(bad)).toThrow(/header is not UTF-8 JSON/);
    expect(decodeJwt(valid).header.kid).toBe('k1');
    const utf8 = `${enc({ alg: 'ES256', name: 'Jörg 📮' })}.${enc({})}.c2ln`;
    expect(decodeJwt(utf8).header.name).toBe('Jörg 📮');
  });

  for (const [title, token, message] of cases) {
    it(title, () => {
      let err: unknown;
      try {
        decodeJwt(token);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ProtocolError);
      expect((err as ProtocolError).code).toBe('invalid_jwt');
      expect((err as ProtocolError).message).toMatch(message);
    });
  }
});

describe('verifyJwt header rules', () => {
  it('rejects alg none (RFC 8725 §3.1, PROTOCOL §5.2)', async () => {
    const token = `${enc({ alg: 'none', typ: 'eh+jwt' })}.${enc(claims())}.`;
    await expectCode(verifyEs256(token), 'alg_not_allowed');
  });

  it('rejects a token without alg (RFC 7515 §4.1.1)', async () => {
    await expectCode(verifyEs256(await signRaw({ typ: 'eh+jwt' }, claims())), 'alg_not_allowed');
  });

  it('rejects HS256, an alg off the allow-list (RFC 8725 §3.1, PROTOCOL §4.6)', async () => {
    const secret = await generateSecret('HS256');
    const token = await new CompactSign(new TextEncoder().encode(JSON.stringify(claims())))
      .setProtectedHeader({ alg: 'HS256', typ: 'eh+jwt' })
      .sign(secret);
    await expectCode(verifyEs256(token), 'alg_not_allowed');
  });

  it('rejects an allowed alg the caller narrowed away (algorithms option)', async () => {
    await expectCode(verifyEs256(await es256(), { algorithms: ['EdDSA'] }), 'alg_not_allowed');
  });

  for (const [name, value] of [
    ['jku', 'https://evil.example/jwks.json'],
    ['x5u', 'https://evil.example/cert.pem'],
    ['x5c', ['MIIB']],
    ['crit', ['exp']],
    ['jwk', { kty: 'EC', crv: 'P-256', x: 'AAAA', y: 'AAAA' }],
  ] as const) {
    it(`rejects the ${name} header parameter (RFC 8725 §3.10, PROTOCOL §5.2)`, async () => {
      const token = await signRaw({ alg: 'ES256', typ: 'eh+jwt', [name]: value }, claims());
      await expectCode(verifyEs256(token), 'forbidden_header_parameter');
    });
  }

  it('accepts the jwk header when dpop+jwt is expected (RFC 9449 §4.2)', async () => {
    const jwk = await exportJWK(keys.ES256.publicKey);
    const token = await signJwt(claims(), { typ: 'dpop+jwt', alg: 'ES256', key: keys.ES256.privateKey, jwk });
    const { header } = await verifyEs256(token, { typ: JWT_TYPES.dpop });
    expect(header.jwk).toEqual(jwk);
  });

  it('rejects a dpop+jwt without its jwk header (RFC 9449 §4.2)', async () => {
    await expectCode(verifyEs256(await es256({}, 'dpop+jwt'), { typ: JWT_TYPES.dpop }), 'invalid_dpop_proof');
  });

  it('rejects a wrong typ (RFC 8725 §3.11: an access token is not an assertion)', async () => {
    await expectCode(verifyEs256(await es256({}, 'at+jwt')), 'invalid_typ');
  });

  it('rejects a missing typ (RFC 8725 §3.11)', async () => {
    await expectCode(verifyEs256(await signRaw({ alg: 'ES256' }, claims())), 'invalid_typ');
  });

  it('accepts the application/ prefix and any case in typ (RFC 7515 §4.1.9)', async () => {
    await expect(verifyEs256(await es256({}, 'application/eh+jwt'))).resolves.toBeDefined();
    await expect(verifyEs256(await es256({}, 'EH+JWT'))).resolves.toBeDefined();
    await expect(verifyEs256(await es256(), { typ: 'application/eh+jwt' })).resolves.toBeDefined();
  });
});

describe('verifyJwt signature', () => {
  it('rejects a tampered payload (RFC 7515 §5.2)', async () => {
    const [h, , s] = (await es256()).split('.');
    const forged = `${h}.${enc(claims({ sub: 'mallory@example.com' }))}.${s}`;
    await expectCode(verifyEs256(forged), 'invalid_signature');
  });

  it('rejects a signature made by another key (RFC 7515 §5.2)', async () => {
    const token = await signJwt(claims(), { typ: 'eh+jwt', alg: 'ES256', key: other.privateKey });
    await expectCode(verifyEs256(token), 'invalid_signature');
  });

  it('rejects a key whose type does not fit alg, as a bad signature', async () => {
    await expectCode(verifyEs256(await es256(), { key: keys.RS256.publicKey }), 'invalid_signature');
  });

  it('passes an unknown_key from the key callback through unchanged (PROTOCOL §5.4)', async () => {
    const jwks = { keys: [{ ...(await exportJWK(keys.ES256.publicKey)), kid: 'k2' }] };
    const err = await rejection(verifyEs256(await es256(), { key: (h) => keyFromJwks(jwks, h) }));
    expect(err.code).toBe('unknown_key');
    expect(err.message).toMatch(/kid k1/);
  });

  it('maps any other key callback failure to unknown_key', async () => {
    const key = () => Promise.reject(new Error('JWKS fetch failed'));
    await expectCode(verifyEs256(await es256(), { key }), 'unknown_key');
  });
});

describe('verifyJwt claims', () => {
  it('accepts a token expired 10 s ago within the default 30 s tolerance (RFC 7519 §4.1.4)', async () => {
    await expect(verifyEs256(await es256({ exp: NOW - 10 }))).resolves.toBeDefined();
  });

  it('rejects a token expired 10 s ago with no tolerance (RFC 7519 §4.1.4)', async () => {
    await expectCode(verifyEs256(await es256({ exp: NOW - 10 }), { clockToleranceSeconds: 0 }), 'token_expired');
  });

  it('rejects a token expired 31 s ago, beyond the default tolerance (RFC 7519 §4.1.4)', async () => {
    await expectCode(verifyEs256(await es256({ exp: NOW - 31 })), 'token_expired');
  });

  it('rejects a token at exactly exp with no tolerance (RFC 7519 §4.1.4: now must be before exp)', async () => {
    await expectCode(verifyEs256(await es256({ exp: NOW }), { clockToleranceSeconds: 0 }), 'token_expired');
  });

  it('rejects a token without exp unless requireExp is false (PROTOCOL §4.6)', async () => {
    const token = await es256({ exp: undefined });
    await expectCode(verifyEs256(token), 'invalid_claims');
    await expect(verifyEs256(token, { requireExp: false })).resolves.toBeDefined();
  });

  it('rejects a non-numeric exp (RFC 7519 §2 NumericDate)', async () => {
    await expectCode(verifyEs256(await es256({ exp: String(NOW + 60) as unknown as number })), 'invalid_claims');
  });

  it('rejects an iat in the future beyond tolerance (PROTOCOL §5.5)', async () => {
    await expectCode(verifyEs256(await es256({ iat: NOW + 31 })), 'token_not_yet_valid');
  });

  it('accepts an iat in the future within tolerance (clock skew)', async () => {
    await expect(verifyEs256(await es256({ iat: NOW + 30 }))).resolves.toBeDefined();
  });

  it('rejects an nbf in the future beyond tolerance (RFC 7519 §4.1.5)', async () => {
    await expectCode(verifyEs256(await es256({ nbf: NOW + 31 })), 'token_not_yet_valid');
  });

  it('rejects another issuer when one is expected (PROTOCOL §5.3)', async () => {
    await expectCode(verifyEs256(await es256(), { issuer: 'https://as.example.org' }), 'issuer_mismatch');
  });

  it('rejects an audience that does not include the expected one (RFC 7519 §4.1.3)', async () => {
    const token = await es256({ aud: ['https://a.example', 'https://b.example'] });
    await expect(verifyEs256(token, { audience: 'https://b.example' })).resolves.toBeDefined();
    await expectCode(verifyEs256(token, { audience: 'https://c.example' }), 'invalid_claims');
  });
});

describe('keyFromJwks (PROTOCOL §5.4)', () => {
  let jwks: { keys: JWK[] };
  beforeAll(async () => {
    jwks = {
      keys: [
        { ...(await exportJWK(other.publicKey)), kid: 'old', use: 'sig' },
        { ...(await exportJWK(keys.ES256.publicKey)), kid: 'k1', alg: 'ES256' },
        { ...(await exportJWK(keys.RS256.publicKey)), kid: 'rsa' },
        { ...(await exportJWK(keys.EdDSA.publicKey)), kid: 'ed', use: 'enc' },
      ],
    };
  });

  it('picks the key named by kid', async () => {
    const key = await keyFromJwks(jwks, { alg: 'ES256', kid: 'k1' });
    await expect(verifyEs256(await es256(), { key })).resolves.toBeDefined();
  });

  it('without kid, picks the single key compatible with alg', async () => {
    const token = await signJwt(claims(), { typ: 'eh+jwt', alg: 'RS256', key: keys.RS256.privateKey });
    const key = await keyFromJwks(jwks, { alg: 'RS256' });
    await expect(verifyEs256(token, { key })).resolves.toBeDefined();
  });

  it('without kid, rejects when several keys fit alg (unknown_key)', async () => {
    await expectCode(keyFromJwks(jwks, { alg: 'ES256' }), 'unknown_key');
  });

  it('rejects an unknown kid (unknown_key)', async () => {
    await expectCode(keyFromJwks(jwks, { alg: 'ES256', kid: 'nope' }), 'unknown_key');
  });

  it('rejects a kid whose key type does not fit alg (unknown_key)', async () => {
    await expectCode(keyFromJwks(jwks, { alg: 'ES256', kid: 'rsa' }), 'unknown_key');
  });

  it('ignores keys whose use is not sig (RFC 7517 §4.2)', async () => {
    await expectCode(keyFromJwks(jwks, { alg: 'EdDSA', kid: 'ed' }), 'unknown_key');
  });

  it('ignores keys whose alg differs from the header alg (RFC 7517 §4.4)', async () => {
    const set = { keys: [{ ...(await exportJWK(keys.ES256.publicKey)), kid: 'x', alg: 'ES384' }] };
    await expectCode(keyFromJwks(set, { alg: 'ES256', kid: 'x' }), 'unknown_key');
  });

  it('rejects a header alg off the allow-list (alg_not_allowed)', async () => {
    await expectCode(keyFromJwks(jwks, { alg: 'HS256', kid: 'k1' }), 'alg_not_allowed');
  });
});

describe('importPublicJwk (the cache of imported public keys)', () => {
  // Not generateKeyPairSync: on Node 20, a JWK export of a key it made can deadlock with the garbage collector.
  const generate = promisify(generateNodeKeyPair);
  const ecJwk = async () => (await generate('ec', { namedCurve: 'P-256' })).publicKey.export({ format: 'jwk' }) as JWK;

  it('returns the key already imported for the same key members, whatever the other members and their order', async () => {
    const jwk = await ecJwk();
    const first = await importPublicJwk(jwk, 'ES256', 'unknown_key');
    const reordered = { y: jwk.y, x: jwk.x, crv: 'P-256', kty: 'EC', kid: 'k9', alg: 'ES256', use: 'sig' } as JWK;
    expect(await importPublicJwk(reordered, 'ES256', 'unknown_key')).toBe(first);
    expect(await importPublicJwk(await ecJwk(), 'ES256', 'unknown_key')).not.toBe(first);
  });

  it('checks the JWK on every call, also when its key is cached (RFC 7517 §7: a public key has no d)', async () => {
    const jwk = (await exportJWK(keys.ES256.publicKey)) as JWK;
    await importPublicJwk(jwk, 'ES256', 'unknown_key');
    const privateJwk = (await exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey)) as JWK;
    const { d: _d, ...publicPart } = privateJwk;
    await importPublicJwk(publicPart, 'ES256', 'unknown_key');
    await expectCode(importPublicJwk(privateJwk, 'ES256', 'unknown_key'), 'unknown_key');
    await expectCode(importPublicJwk(jwk, 'EdDSA', 'invalid_dpop_proof'), 'invalid_dpop_proof');
    await expectCode(importPublicJwk({ ...jwk, crv: 'P-384' }, 'ES256', 'unknown_key'), 'unknown_key');
  });

  it('verifies with the cached key exactly as with a fresh import (PROTOCOL §5.4)', async () => {
    const jwk = (await exportJWK(keys.ES256.publicKey)) as JWK;
    const token = await es256();
    for (let i = 0; i < 2; i++) {
      const key = await importPublicJwk(jwk, 'ES256', 'unknown_key');
      await expect(verifyEs256(token, { key })).resolves.toBeDefined();
      await expectCode(
        verifyEs256(await signRaw({ alg: 'ES256', typ: 'eh+jwt' }, claims(), other.privateKey), { key }),
        'invalid_signature',
      );
    }
  });

  it('does not cache a JWK that fails to import', async () => {
    const jwk = { ...(await ecJwk()), x: 'AAAA' };
    await expectCode(importPublicJwk(jwk, 'ES256', 'unknown_key'), 'unknown_key');
    await expectCode(importPublicJwk(jwk, 'ES256', 'unknown_key'), 'unknown_key');
  });

  it('keeps at most 1,000 keys, dropping the least recently used', async () => {
    const kept = await ecJwk();
    const dropped = await ecJwk();
    const keptKey = await importPublicJwk(kept, 'ES256', 'unknown_key');
    const droppedKey = await importPublicJwk(dropped, 'ES256', 'unknown_key');
    for (let i = 0; i < 1_000; i++) {
      if (i % 100 === 0) expect(await importPublicJwk(kept, 'ES256', 'unknown_key')).toBe(keptKey);
      await importPublicJwk(await ecJwk(), 'ES256', 'unknown_key');
    }
    expect(await importPublicJwk(kept, 'ES256', 'unknown_key')).toBe(keptKey);
    expect(await importPublicJwk(dropped, 'ES256', 'unknown_key')).not.toBe(droppedKey);
  });

  it('exportPublicJwk gives the public JWK of a KeyObject and remembers the key for its import', async () => {
    const { publicKey, privateKey } = await generate('ed25519');
    const jwk = exportPublicJwk(publicKey);
    expect(jwk).toEqual(publicKey.export({ format: 'jwk' }));
    expect(await importPublicJwk(jwk, 'EdDSA', 'unknown_key')).toBe(publicKey);
    expect(() => exportPublicJwk(privateKey)).toThrow(TypeError);
  });
});

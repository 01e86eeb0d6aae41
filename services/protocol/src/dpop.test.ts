import { KeyObject, sign } from 'node:crypto';
import type { webcrypto } from 'node:crypto';
import { describe, it, expect, beforeAll } from 'vitest';
import { calculateJwkThumbprint, errors, exportJWK, generateKeyPair } from 'jose';
import type { JWK, JWTPayload } from 'jose';
import { ProtocolError } from './errors.js';
import type { ProtocolErrorCode } from './errors.js';
import {
  MemoryReplayStore,
  accessTokenHash,
  createDpopProof,
  dpopKeyOf,
  exportDpopKey,
  generateDpopKey,
  importDpopKey,
  jwkThumbprint,
  normalizeHtu,
  verifyDpopProof,
} from './dpop.js';
import type { DpopKey, VerifyDpopProofOptions } from './dpop.js';
import { ALLOWED_ALGS } from './jwt.js';
import type { JwsAlg } from './jwt.js';

const NOW = 1_700_000_000;
const HTU = 'https://mbx1.example.com/transfer';
const TOKEN = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJtdGEyIn0.c2ln';

let key: DpopKey;
let otherKey: DpopKey;
/** One key per alg, generated once: RSA generation is slow. */
const byAlg = {} as Record<JwsAlg, DpopKey>;

beforeAll(async () => {
  key = await generateDpopKey();
  otherKey = await generateDpopKey();
  for (const alg of ALLOWED_ALGS) byAlg[alg] = await generateDpopKey(alg);
});

function store(): MemoryReplayStore {
  return new MemoryReplayStore({ now: () => NOW });
}

function proof(opts: Partial<Parameters<typeof createDpopProof>[1]> = {}, k: DpopKey = key): Promise<string> {
  return createDpopProof(k, { htm: 'POST', htu: HTU, accessToken: TOKEN, now: NOW, jti: 'jti-1', ...opts });
}

function verify(p: string, opts: Partial<VerifyDpopProofOptions> = {}) {
  return verifyDpopProof(p, {
    htm: 'POST',
    htu: HTU,
    accessToken: TOKEN,
    expectedJkt: key.jkt,
    now: NOW,
    replay: store(),
    ...opts,
  });
}

function enc(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** Signs an arbitrary ES256 proof directly, bypassing the guards of createDpopProof. */
async function signRaw(
  header: object,
  payload: object,
  signer: DpopKey['privateKey'] = key.privateKey,
): Promise<string> {
  const input = `${enc(header)}.${enc(payload)}`;
  const privateKey = signer instanceof KeyObject ? signer : KeyObject.from(signer as webcrypto.CryptoKey);
  const sig = sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}

function validClaims(extra: JWTPayload = {}): JWTPayload {
  return { jti: 'jti-1', htm: 'POST', htu: HTU, iat: NOW, ath: accessTokenHash(TOKEN), ...extra };
}

async function expectCode(p: Promise<unknown>, code: ProtocolErrorCode): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ProtocolError);
  expect((err as ProtocolError).code).toBe(code);
}

describe('DPoP keys', () => {
  for (const alg of ALLOWED_ALGS) {
    it(`generates a ${alg} key whose jkt is the RFC 7638 thumbprint of a public JWK`, async () => {
      const k = byAlg[alg];
      expect(k.alg).toBe(alg);
      expect(k.publicJwk).not.toHaveProperty('d');
      expect(k.jkt).toBe(await calculateJwkThumbprint(k.publicJwk, 'sha256'));
    });

    it(`exports and re-imports a ${alg} key that still proves possession (PROTOCOL §4.4 queued transfer)`, async () => {
      const k = byAlg[alg];
      const stored = JSON.parse(JSON.stringify(await exportDpopKey(k))) as JWK;
      expect(stored.d).toBeTypeOf('string');
      const restored = await importDpopKey(stored, alg);
      expect(restored.jkt).toBe(k.jkt);
      expect(restored.publicJwk).toEqual(k.publicJwk);
      const p = await proof({}, restored);
      await expect(verify(p, { expectedJkt: k.jkt })).resolves.toMatchObject({ jkt: k.jkt });
    });
  }

  it('makes P-256 keys whose stored form always holds the full 32-byte d and re-imports (RFC 7518 §6.2.2.1)', async () => {
    // 1 in 256 scalars has a leading zero byte: 1,000 keys meet one with a probability of about 98 %.
    for (let i = 0; i < 1_000; i++) {
      const k = await generateDpopKey('ES256');
      const stored = await exportDpopKey(k);
      for (const member of ['d', 'x', 'y'] as const) expect(Buffer.from(stored[member]!, 'base64url')).toHaveLength(32);
      expect((await importDpopKey(stored, 'ES256')).jkt).toBe(k.jkt);
    }
  });

  it('refuses to import a public JWK as a DPoP key', async () => {
    await expectCode(importDpopKey(key.publicJwk, 'ES256'), 'invalid_dpop_proof');
  });

  it('computes the RFC 7638 §3.1 example thumbprint', async () => {
    const jwk: JWK = {
      kty: 'RSA',
      n: '0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw',
      e: 'AQAB',
      alg: 'RS256',
      kid: '2011-04-29',
    };
    expect(await jwkThumbprint(jwk)).toBe('NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs');
  });

  it("computes the same RFC 7638 thumbprints as jose's calculateJwkThumbprint for random keys", async () => {
    const jwks: JWK[] = [byAlg.RS256.publicJwk];
    for (let i = 0; i < 20; i++) {
      jwks.push(await exportJWK((await generateKeyPair('ES256', { extractable: true })).publicKey));
      jwks.push(await exportJWK((await generateKeyPair('EdDSA', { extractable: true })).publicKey));
    }
    // Extra members and their order do not count (RFC 7638 §3.2, §3.3).
    jwks.push({ kid: 'k', use: 'sig', ...jwks[1]!, alg: 'ES256' }, { x: jwks[2]!.x, crv: 'Ed25519', kty: 'OKP' });
    for (const jwk of jwks) expect(await jwkThumbprint(jwk)).toBe(await calculateJwkThumbprint(jwk, 'sha256'));
  });

  it('refuses a JWK without its required members, or of an unknown kty, with the errors jose gives', async () => {
    const { y: _y, ...noY } = byAlg.ES256.publicJwk;
    await expect(jwkThumbprint(noY)).rejects.toThrow(errors.JWKInvalid);
    await expect(jwkThumbprint(noY)).rejects.toThrow('"y" (Y Coordinate) Parameter missing or invalid');
    await expect(jwkThumbprint({ ...byAlg.EdDSA.publicJwk, x: '' })).rejects.toThrow(errors.JWKInvalid);
    await expect(jwkThumbprint({ kty: 'XYZ' })).rejects.toThrow(errors.JOSENotSupported);
    await expect(jwkThumbprint({ kty: 'toString' })).rejects.toThrow(errors.JOSENotSupported);
    await expect(jwkThumbprint({} as JWK)).rejects.toThrow(TypeError);
  });

  it('imports a key stored by the WebCrypto implementation of earlier versions (PROTOCOL §4.4 queued transfer)', async () => {
    for (const alg of ['ES256', 'EdDSA'] as const) {
      const pair = await generateKeyPair(alg, { extractable: true });
      const stored = { ...(await exportJWK(pair.privateKey)), alg };
      const restored = await importDpopKey(JSON.parse(JSON.stringify(stored)) as JWK, alg);
      const publicJwk = await exportJWK(pair.publicKey);
      expect(restored.jkt).toBe(await calculateJwkThumbprint(publicJwk, 'sha256'));
      await expect(verify(await proof({}, restored), { expectedJkt: restored.jkt })).resolves.toBeDefined();
    }
  });

  it('signs proofs with a WebCrypto CryptoKey too (the DpopKey of an openid-client key pair)', async () => {
    const pair = await generateKeyPair('ES256');
    const publicJwk = await exportJWK(pair.publicKey);
    const webKey: DpopKey = {
      alg: 'ES256',
      privateKey: pair.privateKey,
      publicJwk,
      jkt: await jwkThumbprint(publicJwk),
    };
    await expect(verify(await proof({}, webKey), { expectedJkt: webKey.jkt })).resolves.toMatchObject({
      jkt: webKey.jkt,
    });
  });

  for (const alg of ['ES256', 'EdDSA'] as const) {
    it(`refuses a stored ${alg} key whose public members are not those of its d (it could sign no valid proof)`, async () => {
      const stored = await exportDpopKey(byAlg[alg]);
      const { d } = await exportDpopKey(await generateDpopKey(alg));
      await expectCode(importDpopKey({ ...stored, d }, alg), 'invalid_dpop_proof');
    });
  }

  it('refuses a stored key whose key_ops do not allow signing (RFC 7517 §4.3), as the WebCrypto import did', async () => {
    const stored = await exportDpopKey(key);
    await expectCode(importDpopKey({ ...stored, key_ops: ['verify'] }, 'ES256'), 'invalid_dpop_proof');
    await expectCode(importDpopKey({ ...stored, key_ops: [] }, 'ES256'), 'invalid_dpop_proof');
    await expect(importDpopKey({ ...stored, key_ops: ['sign'] }, 'ES256')).resolves.toMatchObject({ jkt: key.jkt });
  });

  it('refuses a stored key for another alg, or of a key type that does not fit the alg', async () => {
    const stored = await exportDpopKey(key);
    await expectCode(importDpopKey(stored, 'EdDSA'), 'alg_not_allowed');
    await expectCode(importDpopKey({ ...stored, alg: undefined }, 'EdDSA'), 'invalid_dpop_proof');
  });
});

describe('accessTokenHash and normalizeHtu', () => {
  it('computes the RFC 9449 §7.1 example ath', () => {
    expect(accessTokenHash('Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU')).toBe(
      'fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo',
    );
  });

  it('lower-cases scheme and host, drops the default port, query and fragment, keeps the path (RFC 9449 §4.3)', () => {
    expect(normalizeHtu('HTTPS://MBX1.Example.COM:443/Transfer/X?a=1#frag')).toBe(
      'https://mbx1.example.com/Transfer/X',
    );
    expect(normalizeHtu('http://example.com:80/')).toBe('http://example.com/');
    expect(normalizeHtu('https://example.com:8443/t')).toBe('https://example.com:8443/t');
  });

  it('rejects a URL that is not absolute http(s)', () => {
    expect(() => normalizeHtu('/transfer')).toThrow(ProtocolError);
    expect(() => normalizeHtu('ftp://example.com/x')).toThrow(ProtocolError);
  });
});

describe('createDpopProof / verifyDpopProof', () => {
  it('accepts a valid proof and returns its key thumbprint (RFC 9449 §4.3)', async () => {
    const result = await verify(await proof());
    expect(result.jkt).toBe(key.jkt);
    expect(result.jwk).toEqual(key.publicJwk);
    expect(result.payload).toMatchObject({ htm: 'POST', htu: HTU, iat: NOW, ath: accessTokenHash(TOKEN) });
  });

  it('puts typ, alg and the public jwk in the header and a 128-bit random jti in the claims (RFC 9449 §4.2)', async () => {
    const p = await createDpopProof(key, { htm: 'POST', htu: HTU, now: NOW });
    const header = JSON.parse(Buffer.from(p.split('.')[0]!, 'base64url').toString()) as Record<string, unknown>;
    expect(header).toEqual({ alg: 'ES256', typ: 'dpop+jwt', jwk: key.publicJwk });
    const { payload } = await verify(p, { accessToken: undefined });
    expect(payload).not.toHaveProperty('ath');
    expect(Buffer.from(payload.jti as string, 'base64url').length).toBeGreaterThanOrEqual(16);
    const again = await createDpopProof(key, { htm: 'POST', htu: HTU, now: NOW });
    expect(again).not.toBe(p);
  });

  for (const alg of ALLOWED_ALGS) {
    it(`accepts a valid ${alg} proof`, async () => {
      const k = byAlg[alg];
      await expect(verify(await proof({}, k), { expectedJkt: k.jkt })).resolves.toMatchObject({ jkt: k.jkt });
    });
  }

  it('rejects a proof that is not a compact JWS', async () => {
    await expectCode(verify('a.b'), 'invalid_jwt');
  });

  it('rejects typ application/dpop+jwt: typ must be exactly dpop+jwt (RFC 9449 §4.2)', async () => {
    const p = await signRaw({ typ: 'application/dpop+jwt', alg: 'ES256', jwk: key.publicJwk }, validClaims());
    await expectCode(verify(p), 'invalid_typ');
  });

  it('rejects alg none (RFC 9449 §4.3 check 5)', async () => {
    const p = `${enc({ typ: 'dpop+jwt', alg: 'none', jwk: key.publicJwk })}.${enc(validClaims())}.`;
    await expectCode(verify(p), 'alg_not_allowed');
  });

  it('rejects a proof without the jwk header (RFC 9449 §4.3 check 6)', async () => {
    await expectCode(verify(await signRaw({ typ: 'dpop+jwt', alg: 'ES256' }, validClaims())), 'invalid_dpop_proof');
  });

  it('rejects private key material in the jwk header (RFC 9449 §4.3 check 7)', async () => {
    const privateJwk = await exportDpopKey(key);
    const p = await signRaw({ typ: 'dpop+jwt', alg: 'ES256', jwk: privateJwk }, validClaims());
    await expectCode(verify(p), 'invalid_dpop_proof');
  });

  it('rejects a jwk header of a key type that does not fit alg', async () => {
    const p = await signRaw({ typ: 'dpop+jwt', alg: 'ES256', jwk: byAlg.RS256.publicJwk }, validClaims());
    await expectCode(verify(p), 'invalid_dpop_proof');
  });

  it('rejects a proof not signed by its embedded jwk (RFC 9449 §4.3 check 8)', async () => {
    const p = await signRaw({ typ: 'dpop+jwt', alg: 'ES256', jwk: otherKey.publicJwk }, validClaims());
    await expectCode(verify(p, { expectedJkt: otherKey.jkt }), 'invalid_signature');
  });

  it('rejects a proof without jti (RFC 9449 §4.3 check 4)', async () => {
    const p = await signRaw({ typ: 'dpop+jwt', alg: 'ES256', jwk: key.publicJwk }, validClaims({ jti: undefined }));
    await expectCode(verify(p), 'invalid_dpop_proof');
  });

  it('rejects a wrong htm (RFC 9449 §4.3 check 9)', async () => {
    await expectCode(verify(await proof({ htm: 'GET' })), 'dpop_htm_mismatch');
  });

  it('accepts an htu that differs only by query, fragment, case and default port (RFC 9449 §4.3 check 10)', async () => {
    const p = await signRaw(
      { typ: 'dpop+jwt', alg: 'ES256', jwk: key.publicJwk },
      validClaims({ htu: 'HTTPS://MBX1.example.com:443/transfer?x=1#y' }),
    );
    await expect(verify(p)).resolves.toMatchObject({ jkt: key.jkt });
  });

  it('rejects an htu with a different path (RFC 9449 §4.3 check 10)', async () => {
    await expectCode(verify(await proof({ htu: 'https://mbx1.example.com/fetch' })), 'dpop_htu_mismatch');
  });

  it('rejects a proof without ath when an access token is presented (RFC 9449 §4.3 check 11)', async () => {
    await expectCode(verify(await proof({ accessToken: undefined })), 'dpop_ath_mismatch');
  });

  it('rejects an ath of another access token (RFC 9449 §4.3 check 11)', async () => {
    await expectCode(verify(await proof({ accessToken: 'another-token' })), 'dpop_ath_mismatch');
  });

  it('accepts an iat exactly 60 s old (PROTOCOL §5.6 window edge)', async () => {
    await expect(verify(await proof({ now: NOW - 60 }))).resolves.toBeDefined();
  });

  it('rejects an iat 61 s old (PROTOCOL §5.6: iat within 60 s)', async () => {
    await expectCode(verify(await proof({ now: NOW - 61 })), 'dpop_iat_out_of_window');
  });

  it('rejects an iat 61 s in the future (PROTOCOL §5.6: iat within 60 s)', async () => {
    await expectCode(verify(await proof({ now: NOW + 61 })), 'dpop_iat_out_of_window');
  });

  it('rejects a proof key whose thumbprint is not cnf.jkt (RFC 9449 §6.1, PROTOCOL §5.6)', async () => {
    await expectCode(verify(await proof({}, otherKey)), 'dpop_key_mismatch');
  });

  it('rejects a replayed proof (RFC 9449 §11.1, PROTOCOL §5.6: jti unseen)', async () => {
    const replay = store();
    const p = await proof();
    await verify(p, { replay });
    await expectCode(verify(p, { replay }), 'dpop_replayed');
  });

  it('does not treat the same jti from another key as a replay (replay key is jkt:jti)', async () => {
    const replay = store();
    await verify(await proof(), { replay });
    await expect(verify(await proof({}, otherKey), { replay, expectedJkt: otherKey.jkt })).resolves.toBeDefined();
  });

  it('does not consume the jti of a proof that fails another check', async () => {
    const replay = store();
    const p = await proof();
    await expectCode(verify(p, { replay, htm: 'PUT' }), 'dpop_htm_mismatch');
    await expectCode(verify(p, { replay, expectedJkt: otherKey.jkt }), 'dpop_key_mismatch');
    await expect(verify(p, { replay })).resolves.toBeDefined();
  });
});

describe('MemoryReplayStore', () => {
  it('accepts a key again once its entry has expired', async () => {
    let now = NOW;
    const replay = new MemoryReplayStore({ now: () => now });
    expect(await replay.checkAndRecord('a', NOW + 10)).toBe(true);
    expect(await replay.checkAndRecord('a', NOW + 10)).toBe(false);
    now = NOW + 10;
    expect(await replay.checkAndRecord('a', NOW + 20)).toBe(true);
  });

  it('drops expired entries to stay within its bound', async () => {
    let now = NOW;
    const replay = new MemoryReplayStore({ now: () => now, maxEntries: 2 });
    await replay.checkAndRecord('a', NOW + 5);
    await replay.checkAndRecord('b', NOW + 50);
    now = NOW + 5;
    expect(await replay.checkAndRecord('c', NOW + 50)).toBe(true);
    expect(replay.size).toBe(2);
  });

  it('fails closed when full of live entries rather than forgetting one', async () => {
    const replay = new MemoryReplayStore({ now: () => NOW, maxEntries: 1 });
    await replay.checkAndRecord('a', NOW + 50);
    await expect(replay.checkAndRecord('b', NOW + 50)).rejects.toThrow(/full/);
    expect(await replay.checkAndRecord('a', NOW + 50)).toBe(false);
  });
});

describe('dpopKeyOf', () => {
  it('makes a WebCrypto pair (as openid-client holds it) sign proofs that verify under its RFC 7638 jkt', async () => {
    const pair = await generateKeyPair('ES256', { extractable: true });
    const key = await dpopKeyOf(pair);
    const publicJwk = await exportJWK(pair.publicKey);
    expect(key.publicJwk).toEqual({ kty: 'EC', crv: 'P-256', x: publicJwk.x, y: publicJwk.y });
    expect(key.jkt).toBe(await calculateJwkThumbprint(publicJwk, 'sha256'));
    const htu = 'https://mail.example.com/api/v1/messages';
    const proof = await createDpopProof(key, { htm: 'GET', htu });
    const now = Math.floor(Date.now() / 1000);
    const verified = await verifyDpopProof(proof, { htm: 'GET', htu, now, replay: new MemoryReplayStore() });
    expect(verified.jkt).toBe(key.jkt);
  });
});

import { createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';
import { calculateJwkThumbprint } from 'jose';
import { describe, expect, it } from 'vitest';
import { generateMaterial, publicJwks } from './secrets.js';

describe('generated domain material', () => {
  it('the MTA key is a P-256 private JWK (RFC 7518 §6.2.2.1: d of 32 bytes) whose x and y belong to its d', () => {
    for (let i = 0; i < 200; i++) {
      const { mtaPrivateJwk: jwk } = generateMaterial();
      expect(Buffer.from(jwk.d!, 'base64url')).toHaveLength(32);
      const privateKey = createPrivateKey({ key: jwk, format: 'jwk' });
      const derived = createPublicKey(privateKey).export({ format: 'jwk' });
      expect({ x: derived.x, y: derived.y }).toEqual({ x: jwk.x, y: jwk.y });
    }
  });

  it('its published JWKS verifies what the private key signs, under the RFC 7638 thumbprint as kid', async () => {
    const { mtaPrivateJwk } = generateMaterial();
    const [published] = publicJwks(mtaPrivateJwk).keys;
    expect(published).not.toHaveProperty('d');
    expect(published!.kid).toBe(await calculateJwkThumbprint(published!, 'sha256'));
    const data = Buffer.from('an assertion');
    const signature = sign('sha256', data, createPrivateKey({ key: mtaPrivateJwk, format: 'jwk' }));
    expect(verify('sha256', data, createPublicKey({ key: published!, format: 'jwk' }), signature)).toBe(true);
  });

  it('tokens are 256 random bits, different each time', () => {
    const a = generateMaterial();
    const b = generateMaterial();
    expect(Buffer.from(a.adminToken, 'base64url')).toHaveLength(32);
    expect(a.adminToken).not.toBe(b.adminToken);
    expect(a.cookieKey).not.toBe(b.cookieKey);
  });
});

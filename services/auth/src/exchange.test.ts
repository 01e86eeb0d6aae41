import { describe, expect, it } from 'vitest';
import { VerifiedTokens } from './exchange.js';

describe('VerifiedTokens, the send exchange’s memory of users’ access tokens it verified', () => {
  const T = 2_000_000_000;

  it('answers a verified token only while verifyJwt (no clock tolerance) would accept its time claims', () => {
    const tokens = new VerifiedTokens(10);
    tokens.add('a', { sub: 'alice@example.com', iat: T, nbf: T, exp: T + 600 });
    expect(tokens.get('a', T)?.sub).toBe('alice@example.com');
    expect(tokens.get('a', T + 599)?.sub).toBe('alice@example.com');
    // RFC 7519 §4.1.4: at exp the token has expired; it is forgotten, so the next use is verified in full
    expect(tokens.get('a', T + 600)).toBeUndefined();
    expect(tokens.get('a', T + 1)).toBeUndefined();
    expect(tokens.size).toBe(0);
  });

  it('does not answer a token whose iat or nbf is ahead of a clock that went back (§4.1.5, §4.1.6)', () => {
    const tokens = new VerifiedTokens(10);
    tokens.add('iat', { iat: T, exp: T + 600 });
    tokens.add('nbf', { nbf: T, exp: T + 600 });
    expect(tokens.get('iat', T - 1)).toBeUndefined();
    expect(tokens.get('nbf', T - 1)).toBeUndefined();
    // a token without exp is never answered (verifyJwt requires exp)
    tokens.add('no-exp', { iat: T });
    expect(tokens.get('no-exp', T)).toBeUndefined();
  });

  it('answers only the exact token text, with claims the caller cannot change', () => {
    const tokens = new VerifiedTokens(10);
    const payload = { sub: 'alice@example.com', exp: T + 600 };
    tokens.add('header.payload.signature', payload);
    payload.sub = 'mallory@example.com';
    expect(tokens.get('header.payload.signaturf', T)).toBeUndefined();
    const answered = tokens.get('header.payload.signature', T)!;
    expect(answered.sub).toBe('alice@example.com');
    expect(Object.isFrozen(answered)).toBe(true);
  });

  it('holds at most maxEntries tokens, forgetting the oldest first', () => {
    const tokens = new VerifiedTokens(3);
    for (const t of ['t1', 't2', 't3', 't4']) tokens.add(t, { exp: T + 600 });
    expect(tokens.size).toBe(3);
    expect(tokens.get('t1', T)).toBeUndefined();
    expect(['t2', 't3', 't4'].map((t) => tokens.get(t, T) !== undefined)).toEqual([true, true, true]);
  });
});

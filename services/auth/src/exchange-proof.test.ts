/**
 * The token exchange's DPoP check when the replay store fails (its database is down): nothing is known
 * against the proof, so the answer is RFC 6749 `temporarily_unavailable` with 503 and Retry-After, which the
 * MTA retries, not `invalid_dpop_proof`, a refusal of its request (docs/protocol.md §10.3). A broken rule
 * still answers 400 `invalid_dpop_proof`.
 */
import { describe, expect, it } from 'vitest';
import { MemoryReplayStore, createDpopProof, generateDpopKey, type ReplayStore } from '@federizer/protocol';
import { ExchangeError, verifyProof } from './exchange.js';

const ISSUER = 'https://as.example.com';

async function check(proof: string, replay: ReplayStore): Promise<unknown> {
  const req = { ctx: { get: (name: string) => (name === 'DPoP' ? proof : '') }, params: {}, now: Date.now() };
  return verifyProof(req as never, { config: { issuer: ISSUER }, replay } as never).catch((e: unknown) => e);
}

describe('verifyProof, the token exchange’s DPoP check (docs/protocol.md §10.3)', () => {
  it('answers 503 temporarily_unavailable with Retry-After when the replay store fails', async () => {
    const key = await generateDpopKey();
    const proof = await createDpopProof(key, { htm: 'POST', htu: `${ISSUER}/token` });
    const down: ReplayStore = {
      checkAndRecord: () => Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:5432')),
    };
    const e = await check(proof, down);
    expect(e).toBeInstanceOf(ExchangeError);
    expect(e).toMatchObject({ status: 503, error: 'temporarily_unavailable', headers: { 'Retry-After': '30' } });
  });

  it('still answers 400 invalid_dpop_proof for a proof that breaks a rule (a replay)', async () => {
    const key = await generateDpopKey();
    const proof = await createDpopProof(key, { htm: 'POST', htu: `${ISSUER}/token` });
    const replay = new MemoryReplayStore();
    expect(await check(proof, replay)).toBe(key.jkt);
    expect(await check(proof, replay)).toMatchObject({ status: 400, error: 'invalid_dpop_proof' });
  });
});

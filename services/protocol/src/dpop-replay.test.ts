/**
 * What `verifyDpopProof` hands its ReplayStore (docs/protocol.md §10.3): whole seconds, whatever the proof's
 * `iat` (RFC 7519 §2: a NumericDate may have a fraction), and a key of fixed length, whatever the `jti`
 * (RFC 9449 bounds neither). The store here keeps the contract the database store enforces: an integer
 * expiry, a key of at most 512 characters.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { b64uSha256 } from './encoding.js';
import { ProtocolError } from './errors.js';
import { MemoryReplayStore, createDpopProof, dpopReplayKey, generateDpopKey, verifyDpopProof } from './dpop.js';
import type { DpopKey, ReplayStore } from './dpop.js';

const NOW = 1_700_000_000;
const HTU = 'https://mbx1.example.com/federation/v1/transfer';
const TOKEN = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJtdGEyIn0.c2ln';

/** A MemoryReplayStore that refuses what KnexReplayStore refuses, and remembers what it was given. */
class StrictStore implements ReplayStore {
  readonly calls: { key: string; expiresAt: number }[] = [];
  readonly #inner = new MemoryReplayStore({ now: () => NOW });

  async checkAndRecord(key: string, expiresAt: number): Promise<boolean> {
    if (!Number.isSafeInteger(expiresAt)) throw new TypeError('expiresAt must be an integer (unix seconds)');
    if (key.length > 512) throw new TypeError('replay key must be at most 512 characters');
    this.calls.push({ key, expiresAt });
    return this.#inner.checkAndRecord(key, expiresAt);
  }
}

let key: DpopKey;

beforeAll(async () => {
  key = await generateDpopKey();
});

function verify(proof: string, replay: ReplayStore) {
  return verifyDpopProof(proof, { htm: 'POST', htu: HTU, accessToken: TOKEN, expectedJkt: key.jkt, now: NOW, replay });
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  const e = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ProtocolError);
  return (e as ProtocolError).code;
}

describe('a DPoP proof with a fractional iat (RFC 7519 §2 NumericDate; docs/protocol.md §10.3)', () => {
  it('is accepted, and recorded until the whole second at or after iat + 60 s + 30 s', async () => {
    const replay = new StrictStore();
    const proof = await createDpopProof(key, { htm: 'POST', htu: HTU, accessToken: TOKEN, now: NOW + 0.25 });
    await expect(verify(proof, replay)).resolves.toMatchObject({ jkt: key.jkt, payload: { iat: NOW + 0.25 } });
    expect(replay.calls.map((c) => c.expiresAt)).toEqual([NOW + 91]);
    // Recorded all the same: the second use is a replay.
    expect(await codeOf(verify(proof, replay))).toBe('dpop_replayed');
  });

  it('keeps the 60 s window exact to the fraction, in both directions', async () => {
    const at = (iat: number) => createDpopProof(key, { htm: 'POST', htu: HTU, accessToken: TOKEN, now: iat });
    await expect(verify(await at(NOW - 59.5), new StrictStore())).resolves.toBeDefined();
    await expect(verify(await at(NOW + 59.5), new StrictStore())).resolves.toBeDefined();
    expect(await codeOf(verify(await at(NOW - 60.5), new StrictStore()))).toBe('dpop_iat_out_of_window');
    expect(await codeOf(verify(await at(NOW + 60.5), new StrictStore()))).toBe('dpop_iat_out_of_window');
  });
});

describe('the replay record of a proof (docs/protocol.md §10.3: SHA-256 of thumbprint ":" jti)', () => {
  it('is B64U(SHA-256(jkt ":" jti)), 43 characters, for a jti of kilobytes too', async () => {
    const replay = new StrictStore();
    const jti = 'j'.repeat(4000);
    const proof = await createDpopProof(key, { htm: 'POST', htu: HTU, accessToken: TOKEN, now: NOW, jti });
    await verify(proof, replay);
    expect(replay.calls.map((c) => c.key)).toEqual([b64uSha256(`${key.jkt}:${jti}`)]);
    expect(dpopReplayKey(key.jkt, jti)).toMatch(/^[A-Za-z0-9_-]{43}$/);
    // Still a replay the second time; and the refusal does not echo the kilobytes back.
    const again = await verify(proof, replay).catch((e: unknown) => e as ProtocolError);
    expect(again).toMatchObject({ code: 'dpop_replayed' });
    expect((again as ProtocolError).message.length).toBeLessThan(200);
  });

  it('keeps two keys using the same jti apart', async () => {
    const other = await generateDpopKey();
    expect(dpopReplayKey(key.jkt, 'same')).not.toBe(dpopReplayKey(other.jkt, 'same'));
    const replay = new StrictStore();
    const mine = await createDpopProof(key, { htm: 'POST', htu: HTU, now: NOW, jti: 'same' });
    const theirs = await createDpopProof(other, { htm: 'POST', htu: HTU, now: NOW, jti: 'same' });
    const opts = { htm: 'POST', htu: HTU, now: NOW, replay };
    await expect(verifyDpopProof(mine, opts)).resolves.toBeDefined();
    await expect(verifyDpopProof(theirs, opts)).resolves.toBeDefined();
  });
});

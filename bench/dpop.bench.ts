/**
 * The DPoP helpers of the protocol library, one at a time: every delivery makes several fresh keys
 * (PROTOCOL.md §4.4, §6.1) and signs and verifies several proofs, so their CPU cost bounds the federation's
 * throughput. Each line gives the median wall-clock rate over the rounds and the CPU time per call
 * (process.cpuUsage, user + system, over all timed rounds), which hardly depends on the machine's load.
 */
import {
  MemoryReplayStore,
  createDpopProof,
  exportDpopKey,
  generateDpopKey,
  importDpopKey,
  jwkThumbprint,
  verifyDpopProof,
  type DpopKey,
} from '@federizer/protocol';
import { loadAverageText, measure, report, type BenchResult, type MeasureOptions } from './lib.js';

const NOW = 1_700_000_000;
const HTU = 'https://mail.example-com.localhost/federation/v1/transfer';
const TOKEN = 'eyJhbGciOiJFUzI1NiIsInR5cCI6ImVoK2p3dCJ9.eyJpc3MiOiJodHRwczovL2FzLmV4YW1wbGUuY29tIn0.c2lnbmF0dXJl';
/** More distinct keys than the protocol library's bounded cache of imported keys holds (1,000). */
const FRESH_KEYS = 4_000;

interface Line {
  readonly result: BenchResult;
  readonly cpuMicros: number;
}

/** `measure`, plus the CPU time per call over the timed rounds (the warmup is excluded). */
async function measureCpu(name: string, fn: () => unknown, opts: MeasureOptions): Promise<Line> {
  const warmup = opts.warmup ?? opts.iterations;
  const rounds = opts.rounds ?? 7;
  // Warm up apart, then time the rounds with a warmup of one call (measure needs at least one).
  await measure(name, fn, { iterations: warmup, rounds: 1, warmup: 1 });
  const before = process.cpuUsage();
  const result = await measure(name, fn, { ...opts, rounds, warmup: 1 });
  const used = process.cpuUsage(before);
  return { result, cpuMicros: (used.user + used.system) / (opts.iterations * rounds + 1) };
}

function proofFor(key: DpopKey, jti: string): Promise<string> {
  return createDpopProof(key, { htm: 'POST', htu: HTU, accessToken: TOKEN, now: NOW, jti });
}

function verify(proof: string, key: DpopKey): Promise<unknown> {
  return verifyDpopProof(proof, {
    htm: 'POST',
    htu: HTU,
    accessToken: TOKEN,
    expectedJkt: key.jkt,
    now: NOW,
    replay: new MemoryReplayStore({ now: () => NOW }),
  });
}

export async function run(): Promise<void> {
  const key = await generateDpopKey('ES256');
  const stored = await exportDpopKey(key);
  const sameKeyProof = await proofFor(key, 'bench-1');
  const fresh: { key: DpopKey; proof: string }[] = [];
  for (let i = 0; i < FRESH_KEYS; i++) {
    const k = await generateDpopKey('ES256');
    fresh.push({ key: k, proof: await proofFor(k, `bench-${i}`) });
  }
  let next = 0;
  const opts = { iterations: 4_000, rounds: 5, warmup: 1_000 };

  console.log(`ES256 keys; ${opts.rounds} rounds of ${opts.iterations} calls each; ${loadAverageText()}`);
  const lines = [
    await measureCpu('generateDpopKey', () => generateDpopKey('ES256'), opts),
    await measureCpu('importDpopKey (a stored key)', () => importDpopKey(stored, 'ES256'), opts),
    await measureCpu('jwkThumbprint', () => jwkThumbprint(key.publicJwk), opts),
    await measureCpu('createDpopProof', () => proofFor(key, `bench-${next++}`), opts),
    await measureCpu('verifyDpopProof, one key (its import cached)', () => verify(sameKeyProof, key), opts),
    await measureCpu(
      `verifyDpopProof, ${FRESH_KEYS} keys in turn (imported anew)`,
      () => {
        const { key: k, proof } = fresh[next++ % FRESH_KEYS]!;
        return verify(proof, k);
      },
      opts,
    ),
  ];
  report(lines.map((l) => l.result));
  const width = Math.max(...lines.map((l) => l.result.name.length));
  for (const l of lines) console.log(`${l.result.name.padEnd(width)}  cpu ${l.cpuMicros.toFixed(2)} µs/call`);
}

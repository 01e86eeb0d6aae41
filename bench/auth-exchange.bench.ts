/**
 * Send-variant token exchanges over HTTP against a real `federizer auth` process (SQLite), as an MTA makes
 * them: private_key_jwt client authentication and a fresh DPoP key per request, as the protocol requires.
 * 16 exchanges in flight. Target: ≥ 500 exchanges per second on this 2-core machine.
 *
 * The load generator shares the two cores with the AS. By default it makes each round's keys, DPoP proofs
 * and client assertions just before the round's timed window, so that the window measures the AS and an
 * HTTP client rather than the generator's signing: every request still carries its own fresh key, proof
 * and assertion, which the AS verifies in full. This is within the protocol: a proof is accepted for 60 s
 * after its iat, an assertion until its exp (60 s), and a round lasts a few seconds, so a proof is at most
 * a few seconds old when it is used, as one queued briefly in a busy MTA would be. AUTH_PREGENERATE=0 makes
 * them inside the timed window instead. The CPU time of the AS (all its processes) and of the generator
 * during the timed rounds is printed, so the share of the machine each took can be judged.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, fetch } from 'undici';
import { createDpopProof, generateDpopKey, signJwt, type Header } from '@federizer/protocol';
import { createHttpClient } from '@federizer/common';
import { freePort, type TestDomain } from '../services/auth/tests/harness.js';
import { signIn } from '../services/auth/tests/exchange-client.js';

const CONCURRENCY = 16;
const ROUNDS = 5;
const PER_ROUND = 600;
const ADMIN = 'bench-admin-token-0123456789';
const PREGENERATE = process.env.AUTH_PREGENERATE !== '0';

const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** Clock ticks of CPU (user + system) a process and all its descendants (cluster workers) have used so far. */
function processTreeTicks(pid: number): number {
  try {
    // The fields after the parenthesized command name; utime and stime are fields 14 and 15 of the line.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    let ticks = Number(fields[11]) + Number(fields[12]);
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      const children = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim();
      for (const child of children === '' ? [] : children.split(' ')) ticks += processTreeTicks(Number(child));
    }
    return ticks;
  } catch {
    // The process ended between the reads: its time no longer counts.
    return 0;
  }
}

/** CPU seconds of a process tree (the AS and its workers). */
function processTreeCpu(pid: number): number {
  return processTreeTicks(pid) / TICKS_PER_SECOND;
}

function ownCpu(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export async function run(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'federizer-bench-as-'));
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const mailboxResource = 'http://127.0.0.1:1/api';
  const mta = await generateDpopKey();
  const mtaKey = mta.privateKey;
  const mtaJwk = { ...mta.publicJwk, alg: 'ES256', kid: 'bench-mta' };
  const redirect = 'http://127.0.0.1:1/callback';
  const bin = new URL('../services/cli/bin/federizer.js', import.meta.url).pathname;
  // BENCH_PROFILE_DIR=dir writes a CPU profile of the AS process there (for finding where the time goes).
  const profile = process.env.BENCH_PROFILE_DIR
    ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE_DIR}`]
    : [];
  // AUTH_WORKERS=n runs the AS as n processes on one port (federizer auth --workers n), to use n cores.
  const workers = process.env.AUTH_WORKERS ?? '1';
  const child = spawn(process.execPath, [...profile, bin, 'auth', '--workers', workers], {
    env: {
      ...process.env,
      FEDERIZER_LOG_LEVEL: 'warn',
      FEDERIZER_AUTH_ISSUER: issuer,
      FEDERIZER_AUTH_PORT: String(port),
      FEDERIZER_DOMAIN: 'example.com',
      FEDERIZER_MAILBOX_RESOURCE: mailboxResource,
      FEDERIZER_AUTH_ADMIN_TOKEN: ADMIN,
      FEDERIZER_AUTH_COOKIE_KEYS: 'bench-cookie-key-0123456789abcdef',
      FEDERIZER_MTA_JWKS: JSON.stringify({ keys: [mtaJwk] }),
      FEDERIZER_DEV: '1',
      // AUTH_DATABASE=postgres://... runs the AS on PostgreSQL (several workers write concurrently there).
      FEDERIZER_AUTH_DATABASE: process.env.AUTH_DATABASE ?? `sqlite:${join(dir, 'auth.db')}`,
      FEDERIZER_WEBMAIL_REDIRECT_URIS: redirect,
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  try {
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(`${issuer}/healthz`)).ok) break;
      } catch {
        if (i > 300) throw new Error('the AS did not start');
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const admin = (path: string, method: string, body: unknown) =>
      fetch(`${issuer}/admin/v1${path}`, {
        method,
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    const created = await admin('/users', 'POST', {
      address: 'alice@example.com',
      password: 'bench password',
      sendQuotaPerDay: 1_000_000,
    });
    if (created.status !== 201) throw new Error(`creating the user: ${created.status} ${await created.text()}`);
    const http = createHttpClient({ dev: true });
    const domain = {
      issuer,
      config: { webmail: { clientId: 'webmail' }, signingAlg: 'ES256' },
      webmailRedirectUri: redirect,
      mailboxResource,
    } as unknown as TestDomain;
    const { accessToken } = await signIn(domain, http, 'alice@example.com', 'bench password');
    await http.close();

    const tokenEndpoint = `${issuer}/token`;
    const tokenPath = new URL(tokenEndpoint).pathname;
    const headers: Header[] = [
      { 'Message-ID': '<bench@example.com>' },
      { From: 'Alice <alice@example.com>' },
      { 'Recipients-Digest': `<${'A'.repeat(43)}>` },
      { 'Body-Digest': `<${'B'.repeat(42)}A>` },
    ];
    const form = new URLSearchParams({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: accessToken,
      subject_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      requested_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      scope: 'internet_mail',
      headers: JSON.stringify(headers),
      client_id: 'mta.example.com',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
    });
    const dispatcher = new Agent({ connections: CONCURRENCY });
    interface Prepared {
      readonly dpop: string;
      readonly body: string;
    }
    // One request as an MTA makes it: a fresh DPoP key and proof, and a fresh client assertion.
    const prepare = async (): Promise<Prepared> => {
      const dpop = await generateDpopKey();
      const now = Math.floor(Date.now() / 1000);
      const assertion = await signJwt(
        { iss: 'mta.example.com', sub: 'mta.example.com', aud: issuer, jti: randomUUID(), iat: now, exp: now + 60 },
        { typ: 'JWT', alg: 'ES256', key: mtaKey, kid: 'bench-mta' },
      );
      const body = new URLSearchParams(form);
      body.set('client_assertion', assertion);
      return { dpop: await createDpopProof(dpop, { htm: 'POST', htu: tokenEndpoint }), body: body.toString() };
    };
    // undici's request() rather than its fetch(): the WHATWG layer of fetch costs the generator (and so the
    // machine the AS runs on) about twice the CPU per request, for nothing the AS sees.
    const send = async (request: Prepared): Promise<number> => {
      const started = performance.now();
      const res = await dispatcher.request({
        origin: issuer,
        path: tokenPath,
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', dpop: request.dpop },
        body: request.body,
      });
      const text = await res.body.text();
      if (res.statusCode !== 200) throw new Error(`exchange refused: ${res.statusCode} ${text}`);
      return performance.now() - started;
    };
    const drive = async (count: number) => {
      const prepareStarted = ownCpu();
      const ready = PREGENERATE ? await Promise.all(Array.from({ length: count }, prepare)) : [];
      const prepareCpu = ownCpu() - prepareStarted;
      const latencies: number[] = [];
      let next = 0;
      const cpu0 = { as: processTreeCpu(child.pid!), generator: ownCpu() };
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          for (let i = next++; i < count; i = next++) latencies.push(await send(ready[i] ?? (await prepare())));
        }),
      );
      const seconds = (performance.now() - t0) / 1000;
      return {
        rate: count / seconds,
        latencies,
        seconds,
        asCpu: processTreeCpu(child.pid!) - cpu0.as,
        generatorCpu: ownCpu() - cpu0.generator,
        prepareCpu,
      };
    };
    await drive(300); // warm-up: JIT, SQLite pages, connections
    const rounds = [];
    for (let r = 0; r < ROUNDS; r++) rounds.push(await drive(PER_ROUND));
    const rate = median(rounds.map((r) => r.rate));
    const all = rounds.flatMap((r) => r.latencies).sort((a, b) => a - b);
    const seconds = rounds.reduce((sum, r) => sum + r.seconds, 0);
    const exchanges = ROUNDS * PER_ROUND;
    const share = (cpu: number) => `${Math.round((100 * cpu) / seconds)}% of a core`;
    const perExchange = (cpu: number) => `${((1000 * cpu) / exchanges).toFixed(2)} ms CPU/exchange`;
    const asCpu = rounds.reduce((sum, r) => sum + r.asCpu, 0);
    const generatorCpu = rounds.reduce((sum, r) => sum + r.generatorCpu, 0);
    const prepareCpu = rounds.reduce((sum, r) => sum + r.prepareCpu, 0);
    console.log(
      `${exchanges} send exchanges in ${ROUNDS} rounds, ${CONCURRENCY} in flight, fresh ES256 DPoP key and private_key_jwt assertion each ` +
        `(${PREGENERATE ? 'made before each timed round' : 'made inside the timed rounds'}), AS on ${process.env.AUTH_DATABASE ? 'PostgreSQL' : 'SQLite'}, ` +
        `${workers} worker process(es) (federizer auth --workers ${workers})`,
    );
    console.log(
      `token exchange (send)  median ${Math.round(rate).toLocaleString('en-US')} exchanges/s (rounds ${rounds.map((r) => Math.round(r.rate)).join(', ')})  ` +
        `latency p50 ${percentile(all, 50).toFixed(1)} ms, p99 ${percentile(all, 99).toFixed(1)} ms  (target ≥ 500/s: ${rate >= 500 ? 'met' : 'NOT met'}, ${(rate / 500).toFixed(2)}×)`,
    );
    console.log(
      `  CPU in the timed rounds: AS ${share(asCpu)} (${perExchange(asCpu)}), generator ${share(generatorCpu)} (${perExchange(generatorCpu)})` +
        (PREGENERATE ? `; making the requests beforehand took the generator ${perExchange(prepareCpu)}` : ''),
    );
    await dispatcher.close();
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Send-variant token exchanges over HTTP against a real `federizer auth` process (SQLite), as an MTA makes
 * them: private_key_jwt client authentication and a fresh DPoP key per request, as the protocol requires.
 * 16 exchanges in flight. Target: ≥ 500 exchanges per second on this 2-core machine.
 */
import { spawn } from 'node:child_process';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CryptoKey, JWK } from 'jose';
import { Agent, fetch } from 'undici';
import { createDpopProof, jwkThumbprint, signJwt, type DpopKey, type Header } from '@federizer/protocol';
import { createHttpClient } from '@federizer/common';
import { freePort, type TestDomain } from '../services/auth/tests/harness.js';
import { signIn } from '../services/auth/tests/exchange-client.js';

const CONCURRENCY = 16;
const TOTAL = 3_000;
const ADMIN = 'bench-admin-token-0123456789';

async function freshDpopKey(): Promise<DpopKey> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const publicJwk = publicKey.export({ format: 'jwk' }) as JWK;
  return {
    alg: 'ES256',
    privateKey: privateKey as unknown as CryptoKey,
    publicJwk,
    jkt: await jwkThumbprint(publicJwk),
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export async function run(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'federizer-bench-as-'));
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const mailboxResource = 'http://127.0.0.1:1/api';
  const { privateKey: mtaKey, publicKey: mtaPublic } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const mtaJwk = { ...(mtaPublic.export({ format: 'jwk' }) as JWK), alg: 'ES256', kid: 'bench-mta' };
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
    // The load generator shares the two cores with the AS, so it makes its keys and signatures with
    // node:crypto (synchronous, cheap) rather than WebCrypto, leaving the AS as much CPU as possible.
    const exchange = async (): Promise<number> => {
      const dpop = await freshDpopKey();
      const now = Math.floor(Date.now() / 1000);
      const assertion = await signJwt(
        { iss: 'mta.example.com', sub: 'mta.example.com', aud: issuer, jti: randomUUID(), iat: now, exp: now + 60 },
        { typ: 'JWT', alg: 'ES256', key: mtaKey, kid: 'bench-mta' },
      );
      const body = new URLSearchParams(form);
      body.set('client_assertion', assertion);
      const started = performance.now();
      const res = await fetch(tokenEndpoint, {
        method: 'POST',
        dispatcher,
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          dpop: await createDpopProof(dpop, { htm: 'POST', htu: tokenEndpoint }),
        },
        body,
      });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`exchange refused: ${res.status} ${text}`);
      return performance.now() - started;
    };
    const drive = async (count: number) => {
      const latencies: number[] = [];
      let next = 0;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          while (next++ < count) latencies.push(await exchange());
        }),
      );
      return { seconds: (performance.now() - t0) / 1000, latencies: latencies.sort((a, b) => a - b) };
    };
    await drive(300); // warm-up: JIT, SQLite pages, connections
    const rounds = [];
    for (let r = 0; r < 3; r++) rounds.push(await drive(TOTAL / 3));
    const rates = rounds.map((r) => r.latencies.length / r.seconds).sort((a, b) => a - b);
    const all = rounds.flatMap((r) => r.latencies).sort((a, b) => a - b);
    const median = rates[1]!;
    console.log(
      `${TOTAL} send exchanges, ${CONCURRENCY} in flight, fresh ES256 DPoP key and private_key_jwt assertion each, AS on ${process.env.AUTH_DATABASE ? 'PostgreSQL' : 'SQLite'}, ${workers} worker process(es) (federizer auth --workers ${workers})`,
    );
    console.log(
      `token exchange (send)  median ${Math.round(median).toLocaleString('en-US')} exchanges/s (rounds ${rates.map((x) => Math.round(x)).join(', ')})  ` +
        `latency p50 ${percentile(all, 50).toFixed(1)} ms, p99 ${percentile(all, 99).toFixed(1)} ms  (target ≥ 500/s: ${median >= 500 ? 'met' : 'NOT met'}, ${(median / 500).toFixed(2)}×)`,
    );
    await dispatcher.close();
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    await rm(dir, { recursive: true, force: true });
  }
}

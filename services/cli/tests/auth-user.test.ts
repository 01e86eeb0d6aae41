/**
 * The real `federizer` binary as an operator uses it: `federizer auth` configured by the environment,
 * `federizer user ...` against its admin API, a graceful stop on SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../auth/tests/harness.js';

const BIN = new URL('../../../node_modules/.bin/federizer', import.meta.url).pathname;

function run(
  args: string[],
  env: NodeJS.ProcessEnv,
  stdin = '',
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

async function waitForHealth(url: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`federizer auth exited with ${child.exitCode}`);
    try {
      if ((await fetch(`${url}/healthz`)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('federizer auth did not become healthy');
}

describe('federizer auth and federizer user', () => {
  let dir: string;
  let as: ChildProcess;
  let env: NodeJS.ProcessEnv;
  let output = '';

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-cli-'));
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    env = {
      FEDERIZER_AUTH_ISSUER: url,
      FEDERIZER_AUTH_PORT: String(port),
      FEDERIZER_DOMAIN: 'example.com',
      FEDERIZER_MAILBOX_RESOURCE: 'http://127.0.0.1:1/api',
      FEDERIZER_AUTH_ADMIN_TOKEN: 'cli-test-admin-token-0123',
      FEDERIZER_AUTH_COOKIE_KEYS: 'cli-test-cookie-key-0123456789',
      FEDERIZER_MTA_CLIENT_SECRET: 'cli-test-mta-secret-0123',
      FEDERIZER_DEV: '1',
      FEDERIZER_AUTH_DATABASE: `sqlite:${join(dir, 'auth.db')}`,
      FEDERIZER_AUTH_ADMIN_URL: url,
    };
    as = spawn(BIN, ['auth'], { env: { ...process.env, ...env } });
    as.stdout!.on('data', (d) => (output += d));
    as.stderr!.on('data', (d) => (output += d));
    await waitForHealth(url, as);
  });

  afterAll(async () => {
    if (as.exitCode === null) as.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('user add reads the password from standard input and creates the user', async () => {
    const added = await run(
      ['user', 'add', 'alice@example.com', '--password-stdin', '--display-name', 'Alice', '--forwarding', 'any'],
      env,
      'correct horse battery\n',
    );
    expect(added.code, added.stderr).toBe(0);
    expect(JSON.parse(added.stdout)).toMatchObject({
      address: 'alice@example.com',
      displayName: 'Alice',
      forwardingPolicy: 'any',
    });
    const listed = await run(['user', 'list'], env);
    expect(JSON.parse(listed.stdout).map((u: { address: string }) => u.address)).toEqual(['alice@example.com']);
  });

  it('user set, show and delete', async () => {
    expect((await run(['user', 'set', 'alice@example.com', '--quota', '5', '--disable'], env)).code).toBe(0);
    expect(JSON.parse((await run(['user', 'show', 'alice@example.com'], env)).stdout)).toMatchObject({
      sendQuotaPerDay: 5,
      disabled: true,
    });
    expect((await run(['user', 'delete', 'alice@example.com'], env)).code).toBe(0);
    const gone = await run(['user', 'show', 'alice@example.com'], env);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/user_not_found/);
  });

  it('refusals are explained: another domain, a weak password (exit 1)', async () => {
    const other = await run(['user', 'add', 'bob@example.net', '--password-stdin'], env, 'long enough password\n');
    expect(other.code).toBe(1);
    expect(other.stderr).toMatch(/wrong_domain/);
    const weak = await run(['user', 'add', 'carol@example.com', '--password-stdin'], env, 'short\n');
    expect(weak.code).toBe(1);
    expect(weak.stderr).toMatch(/weak_password/);
  });

  it('usage mistakes exit with 2 and say what is missing', async () => {
    const noStdinFlag = await run(['user', 'add', 'dave@example.com'], env);
    expect(noStdinFlag.code).toBe(2);
    expect(noStdinFlag.stderr).toMatch(/--password-stdin/);
    const noUrl = await run(['user', 'list'], { ...env, FEDERIZER_AUTH_ADMIN_URL: '' });
    expect(noUrl.code).toBe(2);
    expect(noUrl.stderr).toMatch(/--admin-url/);
  });

  it('federizer auth stops cleanly on SIGTERM', async () => {
    const exited = new Promise<number | null>((resolve) => as.on('exit', (code) => resolve(code)));
    as.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(output).toMatch(/authorization server stopped/);
  });
});

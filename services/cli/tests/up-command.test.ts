/**
 * `federizer up` as a person runs it (`npm start` is `federizer up`): the banner, federation.json, a clean
 * exit on Ctrl-C (SIGINT to the command), and a second start that prints the same users and passwords.
 * Usage mistakes exit with 2 and say what is wrong; a taken port exits with 1 and names it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FederationFile } from '../src/federation/local-federation.js';

const BIN = new URL('../../../node_modules/.bin/federizer', import.meta.url).pathname;

interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

function start(args: string[]): Running {
  const child = spawn(BIN, args, { env: { ...process.env, FEDERIZER_LOG_LEVEL: '' } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, stdout: () => stdout, stderr: () => stderr, exited };
}

async function bannerOf(run: Running): Promise<string> {
  const deadline = Date.now() + 90_000;
  while (!run.stdout().includes('Ctrl-C to stop.')) {
    if (run.child.exitCode !== null) throw new Error(`federizer up exited with ${run.child.exitCode}: ${run.stderr()}`);
    if (Date.now() > deadline) throw new Error(`no banner: ${run.stderr()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return run.stdout();
}

/** Resolves with the match once the process's stderr matches `pattern`, within a minute. */
async function until(run: Running, pattern: RegExp): Promise<RegExpMatchArray> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const match = pattern.exec(run.stderr());
    if (match) return match;
    if (run.child.exitCode !== null) throw new Error(`federizer up exited with ${run.child.exitCode}: ${run.stderr()}`);
    if (Date.now() > deadline) throw new Error(`no ${pattern} on stderr: ${run.stderr()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The pids whose parent is `pid` (Linux's /proc: field 4 of /proc/PID/stat, after the command in brackets). */
async function childrenOf(pid: number): Promise<number[]> {
  const children: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (parent === pid) children.push(Number(entry));
  }
  return children.sort((a, b) => a - b);
}

async function refused(port: number): Promise<boolean> {
  try {
    await fetch(`http://127.0.0.1:${port}/healthz`);
    return false;
  } catch {
    return true;
  }
}

describe('federizer up', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-up-cmd-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  const args = () => [
    'up',
    '--port-base',
    '0',
    '--data-dir',
    join(dir, 'data'),
    '--domains',
    'example.com,example.net',
    '--no-webmail-build',
  ];

  it('prints the URLs, users, passwords and DNS server, writes federation.json, and stops on Ctrl-C', async () => {
    const run = start(args());
    const banner = await bannerOf(run);
    const file = JSON.parse(await readFile(join(dir, 'data', 'federation.json'), 'utf8')) as FederationFile;
    expect(file.pid).toBe(run.child.pid);
    for (const [name, d] of Object.entries(file.domains)) {
      expect(banner).toContain(`  ${name}\n`);
      expect(banner).toContain(`webmail  ${d.webmailUrl}/`);
      expect(banner).toContain(`AS       ${d.issuer}`);
      expect(banner).toContain(`mailbox  ${d.mailboxUrl}`);
    }
    for (const user of file.users) expect(banner).toContain(`${user.address}   password ${user.password}`);
    expect(banner).toContain(`DNS server 127.0.0.1:${file.dns.port}`);
    expect(banner).toContain(join(dir, 'data', 'federation.json'));
    // The known oidc-provider runtime warning of every child is kept off the screen (without --verbose).
    expect(run.stderr()).not.toMatch(/Unsupported runtime/);

    const ports = Object.values(file.domains).map((d) => Number(new URL(d.issuer).port));
    expect(await refused(ports[0]!)).toBe(false);
    run.child.kill('SIGINT');
    expect(await run.exited).toBe(0);
    expect(run.stderr()).toMatch(/SIGINT: stopping the domains…\nfederizer up: stopped\n$/);
    for (const port of ports) expect(await refused(port)).toBe(true);

    // federation.json stays, describing the last start; the mail CLI reads the stopped state off the lock.
    const user = file.users[0]!;
    const mail = start(['mail', 'list', '--user', user.address, '--password-stdin', '--data-dir', join(dir, 'data')]);
    mail.child.stdin!.end(`${user.password}\n`);
    expect(await mail.exited).toBe(1);
    expect(mail.stderr()).toContain(`federizer: the local federation of ${join(dir, 'data')} is not running`);
  });

  it('a second start prints the same users with the same passwords, and SIGTERM stops it too', async () => {
    const first = JSON.parse(await readFile(join(dir, 'data', 'federation.json'), 'utf8')) as FederationFile;
    const run = start(args());
    const banner = await bannerOf(run);
    for (const user of first.users) expect(banner).toContain(`${user.address}   password ${user.password}`);
    const again = JSON.parse(await readFile(join(dir, 'data', 'federation.json'), 'utf8')) as FederationFile;
    expect(again.domains).toEqual(first.domains);
    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
  });

  it('starts a domain whose process was killed again, on the same ports, and the others keep running', async () => {
    const run = start(args());
    await bannerOf(run);
    const file = JSON.parse(await readFile(join(dir, 'data', 'federation.json'), 'utf8')) as FederationFile;
    // The domains' processes are the children of `federizer up`: one of them dies as the OOM killer would do it.
    const children = await childrenOf(run.child.pid!);
    expect(children).toHaveLength(Object.keys(file.domains).length);
    process.kill(children[0]!, 'SIGKILL');
    const died = await until(run, /federizer up: (\S+) stopped unexpectedly \(SIGKILL\); starting it again in 1 s\n/);
    const domain = died[1]!;
    await until(run, new RegExp(`federizer up: ${domain.replace(/\./g, '\\.')} is running again\n`));
    // Same ports (its issuer is in every token and in DNS), and the other domains never stopped.
    for (const d of Object.values(file.domains)) {
      const res = await fetch(`http://127.0.0.1:${new URL(d.issuer).port}/.well-known/oauth-authorization-server`);
      expect(res.status).toBe(200);
      expect(((await res.json()) as { issuer: string }).issuer).toBe(d.issuer);
    }
    const now = await childrenOf(run.child.pid!);
    expect(now).toHaveLength(children.length);
    expect(now).not.toContain(children[0]);
    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
  });

  it('exits with 2 on usage mistakes, saying what is wrong', async () => {
    const cases: [string[], RegExp][] = [
      [['--port-base', 'abc'], /--port-base is a port number \(or 0 for free ports\), not "abc"/],
      [['--port-base', '80'], /the port base is 0 \(random ports\) or a port from 1024, not 80/],
      [['--domains', 'example_com'], /"example_com" is not a domain name/],
      [['--dns-forward', 'dns.example:53'], /--dns-forward "dns.example:53": the host must be an IP address/],
      [['--frobnicate'], /^federizer: unknown option --frobnicate\nRun `federizer up --help` for its options\.\n$/],
      [['--verbose=yes'], /^federizer: -v, --verbose takes no value\n/],
    ];
    for (const [extra, message] of cases) {
      const run = start(['up', '--data-dir', join(dir, 'never'), '--no-webmail-build', ...extra]);
      expect(await run.exited, extra.join(' ')).toBe(2);
      expect(run.stderr()).toMatch(message);
    }
    const help = start(['up', '--help']);
    expect(await help.exited).toBe(0);
    expect(help.stdout()).toMatch(/--port-base N/);
  });

  it('exits with 1 when a port of the layout is taken, naming the port and its service', async () => {
    let blocker: Server | undefined;
    let base = 0;
    // Below Linux's ephemeral range (32768 and up), where another test's client connection could take the
    // DNS port (base) at any moment and be reported instead.
    for (let attempt = 0; attempt < 20 && blocker === undefined; attempt++) {
      base = 20_000 + Math.floor(Math.random() * 12_000);
      const candidate = createServer();
      blocker = await new Promise<Server | undefined>((resolve) => {
        candidate.once('error', () => resolve(undefined));
        candidate.listen(base + 10, '127.0.0.1', () => resolve(candidate));
      });
    }
    try {
      const run = start(['up', '--port-base', String(base), '--data-dir', join(dir, 'taken'), '--no-webmail-build']);
      expect(await run.exited).toBe(1);
      expect(run.stderr()).toContain(
        `federizer: port ${base + 10} (the Authorization Server of example.com) is already in use: is another local federation running?`,
      );
    } finally {
      await new Promise((r) => blocker!.close(r));
    }
  });
});

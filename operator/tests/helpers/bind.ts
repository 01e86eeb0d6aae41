/**
 * A real BIND 9 `named` on loopback, on a free port, with one temporary zone that accepts RFC 2136 updates
 * signed with one TSIG key. Debian's `bind9` package provides it (.ci/run installs it).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '@federizer/common';

const CANDIDATES = ['/usr/sbin/named', '/usr/bin/named', '/sbin/named'];

/** The path of `named`, or undefined with the reason a test prints when it skips. */
export function findNamed(): { path?: string; reason?: string } {
  for (const path of CANDIDATES) if (existsSync(path)) return { path };
  const which = spawnSync('sh', ['-c', 'command -v named'], { encoding: 'utf8' });
  const path = which.stdout.trim();
  if (which.status === 0 && path !== '') return { path };
  return { reason: 'BIND 9 `named` is not installed (Debian package bind9; .ci/run installs it)' };
}

export interface RunningBind {
  host: string;
  port: number;
  zone: string;
  keyName: string;
  /** base64, as in BIND's `key` statement. */
  secret: string;
  /** Everything named wrote on stderr, for failure messages. */
  log(): string;
  stop(): Promise<void>;
}

async function waitForTcp(port: number, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`named exited with ${child.exitCode}:\n${log()}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open && /running/.test(log())) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`named did not start within 15 s:\n${log()}`);
}

export async function startBind(options: { zone: string; keyName?: string; namedPath: string }): Promise<RunningBind> {
  const dir = await mkdtemp(join(tmpdir(), 'federizer-bind-'));
  const zone = options.zone.replace(/\.$/, '');
  const keyName = options.keyName ?? 'federizer-operator';
  const secret = randomBytes(32).toString('base64');
  const port = await freePort({ udp: true });
  await writeFile(
    join(dir, 'zone.db'),
    [
      '$TTL 300',
      `@ IN SOA ns1.${zone}. hostmaster.${zone}. 1 3600 600 86400 60`,
      `@ IN NS ns1.${zone}.`,
      'ns1 IN A 127.0.0.1',
      '',
    ].join('\n'),
  );
  // update-policy grants the key only SRV records under the zone (what the operator writes), as an
  // administrator would; `controls {}` turns off rndc, whose key does not exist here.
  await writeFile(
    join(dir, 'named.conf'),
    `options {
  directory "${dir}";
  pid-file "${dir}/named.pid";
  session-keyfile "${dir}/session.key";
  managed-keys-directory "${dir}";
  listen-on port ${port} { 127.0.0.1; };
  listen-on-v6 { none; };
  recursion no;
  dnssec-validation no;
  notify no;
};
controls {};
key "${keyName}" { algorithm hmac-sha256; secret "${secret}"; };
zone "${zone}" {
  type primary;
  file "${dir}/zone.db";
  update-policy { grant ${keyName} subdomain ${zone}. SRV; };
};
`,
  );
  let stderr = '';
  const child = spawn(options.namedPath, ['-g', '-4', '-c', join(dir, 'named.conf'), '-n', '1'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const log = () => stderr;
  try {
    await waitForTcp(port, child, log);
  } catch (e) {
    child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    host: '127.0.0.1',
    port,
    zone,
    keyName,
    secret,
    log,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * `federizer operator run` as the chart runs it: the real command in its own process (bin/federizer.js),
 * configured by the environment, against the fake API server through a KUBECONFIG file; stopped by SIGTERM.
 * And `federizer operator render`, which must not load @kubernetes/client-node: a module resolve hook in the
 * child process lists every module it loads.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { run } from '../../services/cli/src/run.js';
import { ROOT } from '../src/builders/testing/validate.js';
import { FakeApiServer, type JsonObject } from './fake-apiserver.js';
import { eventually, mailDomain, MD_API } from './helpers/runtime-harness.js';

const BIN = join(ROOT, 'services/cli/bin/federizer.js');

interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

function federizer(args: string[], env: NodeJS.ProcessEnv, nodeArgs: string[] = []): Running {
  const child = spawn(process.execPath, [...nodeArgs, BIN, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: env.HOME ?? process.env.HOME, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, stdout: () => stdout, stderr: () => stderr, exited };
}

let dir: string;
let api: FakeApiServer | undefined;
let running: Running | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'federizer-operator-cli-'));
});
afterEach(async () => {
  if (running && running.child.exitCode === null) {
    running.child.kill('SIGKILL');
    await running.exited;
  }
  running = undefined;
  await api?.close();
  api = undefined;
  await rm(dir, { recursive: true, force: true });
});

describe('federizer operator run', () => {
  it('runs the operator with the real builder and the image of FEDERIZER_OPERATOR_IMAGE, and stops on SIGTERM', async () => {
    api = await FakeApiServer.start();
    const kubeconfig = join(dir, 'config');
    await writeFile(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        `clusters: [{ name: fake, cluster: { server: "${api.url}", insecure-skip-tls-verify: true } }]`,
        'users: [{ name: operator, user: { token: abc } }]',
        'contexts: [{ name: fake, context: { cluster: fake, user: operator } }]',
        'current-context: fake',
      ].join('\n'),
    );
    running = federizer(['operator', 'run'], {
      KUBECONFIG: kubeconfig,
      HOME: dir,
      POD_NAME: 'op-cli',
      POD_NAMESPACE: 'federizer-system',
      FEDERIZER_OPERATOR_IMAGE: 'registry.test/federizer:9.9.9',
      FEDERIZER_OPERATOR_METRICS_HOST: '127.0.0.1',
      FEDERIZER_OPERATOR_METRICS_PORT: '0',
    });
    // The runtime logs where its probes are (pino, JSON lines on stdout).
    const url = await eventually(() => {
      const started = running!
        .stdout()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { msg: string; url?: string })
        .find((l) => l.msg === 'operator started');
      expect(started, running!.stderr()).toBeDefined();
      return started!.url!;
    }, 30_000);
    await eventually(async () => expect((await fetch(`${url}/readyz`)).status).toBe(200));
    await eventually(() =>
      expect(api!.get('coordination.k8s.io/v1', 'Lease', 'federizer-system', 'federizer-operator')?.spec).toMatchObject(
        { holderIdentity: 'op-cli' },
      ),
    );

    api.create(mailDomain('example', 'mail', { domain: 'example.com' }));
    const deployment = await eventually(() => {
      const d = api!.get('apps/v1', 'Deployment', 'mail', 'example-auth');
      expect(d).toBeDefined();
      return d!;
    });
    const pod = ((deployment.spec as JsonObject).template as JsonObject).spec as JsonObject;
    expect((pod.containers as JsonObject[])[0]).toMatchObject({
      image: 'registry.test/federizer:9.9.9',
      args: ['auth'],
    });
    await eventually(() =>
      expect((api!.get(MD_API, 'MailDomain', 'mail', 'example')?.status as JsonObject | undefined)?.urls).toEqual({
        issuer: 'https://as.example.com',
        mailbox: 'https://mail.example.com',
        webmail: 'https://webmail.example.com',
      }),
    );

    running.child.kill('SIGTERM');
    expect(await running.exited).toBe(0);
    // Released on the way out, for a standby to take at once.
    expect(
      (api.get('coordination.k8s.io/v1', 'Lease', 'federizer-system', 'federizer-operator')!.spec as JsonObject)
        .holderIdentity,
    ).toBeNull();
  });

  it('exits 2 naming what is missing: a cluster, a valid setting; explains itself', async () => {
    running = federizer(['operator', 'run'], { HOME: dir });
    expect(await running.exited).toBe(2);
    expect(running.stderr()).toMatch(/^federizer: configuration: no Kubernetes cluster: set KUBECONFIG/);
    running = federizer(['operator', 'run'], { HOME: dir, FEDERIZER_OPERATOR_WORKERS: 'many' });
    expect(await running.exited).toBe(2);
    expect(running.stderr()).toContain('FEDERIZER_OPERATOR_WORKERS="many" is not an integer from 1 to 32');
    let stderr = '';
    let stdout = '';
    const io = {
      stdout: { write: (s: string) => (stdout += s) },
      stderr: { write: (s: string) => (stderr += s) },
      readStdin: async () => Buffer.alloc(0),
    };
    expect(await run(['operator', 'run', '--watch'], io)).toBe(2);
    expect(stderr).toMatch(/^federizer: operator run takes no arguments/);
    expect(await run(['operator', 'run', '--help'], io)).toBe(0);
    expect(stdout).toContain('FEDERIZER_OPERATOR_IMAGE');
    expect(await run(['--help'], io)).toBe(0);
    expect(stdout).toContain('federizer operator run ');
  });
});

describe('federizer operator render', () => {
  /** Runs the command with a resolve hook that writes every module URL it loads to a file; returns them. */
  async function loadedBy(
    args: string[],
    env: NodeJS.ProcessEnv = {},
  ): Promise<{ code: number | null; urls: string[] }> {
    const log = join(dir, 'modules.log');
    await writeFile(log, '');
    await writeFile(
      join(dir, 'hooks.mjs'),
      `import { appendFileSync } from 'node:fs';
let log;
export function initialize(data) { log = data.log; }
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context);
  appendFileSync(log, result.url + '\\n');
  return result;
}
`,
    );
    await writeFile(
      join(dir, 'register.mjs'),
      `import { register } from 'node:module';
register('./hooks.mjs', import.meta.url, { data: { log: ${JSON.stringify(log)} } });
`,
    );
    const run = federizer(args, { HOME: dir, ...env }, ['--import', join(dir, 'register.mjs')]);
    run.child.stdin!.end();
    const code = await run.exited;
    return { code, urls: (await readFile(log, 'utf8')).split('\n').filter((l) => l !== '') };
  }

  it('does not load @kubernetes/client-node (run does)', async () => {
    const file = join(dir, 'domain.yaml');
    await writeFile(
      file,
      'apiVersion: federizer.io/v1alpha1\nkind: MailDomain\nmetadata: { name: example-com }\nspec: { domain: example.com }\n',
    );
    const render = await loadedBy(['operator', 'render', '-f', file]);
    expect(render.code).toBe(0);
    // The hook saw the builders load, so it would have seen client-node.
    expect(render.urls.some((u) => u.includes('/operator/src/builders/'))).toBe(true);
    expect(render.urls.filter((u) => u.includes('@kubernetes/client-node'))).toEqual([]);
    // The witness that it would: `run` loads the runtime, then stops at its configuration.
    const run = await loadedBy(['operator', 'run'], { FEDERIZER_OPERATOR_WORKERS: 'many' });
    expect(run.code).toBe(2);
    expect(run.urls.some((u) => u.includes('@kubernetes/client-node'))).toBe(true);
  });
});

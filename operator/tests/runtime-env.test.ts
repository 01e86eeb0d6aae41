/** `runOperator` as `federizer operator run` calls it: settings from the environment, a kubeconfig file from KUBECONFIG. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '@federizer/common';
import { afterEach, describe, expect, it } from 'vitest';
import { readOperatorEnv, runOperator, type OperatorRuntime } from '../src/runtime/index.js';
import { FakeApiServer } from './fake-apiserver.js';
import { condition, eventually, mailDomain, MD_API, testBuilder } from './helpers/runtime-harness.js';

describe('readOperatorEnv', () => {
  it('has defaults for everything', () => {
    expect(readOperatorEnv({})).toMatchObject({
      leaseNamespace: 'default',
      leaseName: 'federizer-operator',
      leaderElection: true,
      metricsHost: '0.0.0.0',
      metricsPort: 8080,
      workers: 2,
      resyncMs: 300_000,
    });
  });

  it('reads the namespace scope, where the Lease lives and who this instance is', () => {
    const env = readOperatorEnv({
      FEDERIZER_OPERATOR_NAMESPACE: 'mail',
      POD_NAME: 'op-0',
      FEDERIZER_OPERATOR_LEADER_ELECTION: '0',
    });
    expect(env).toMatchObject({ namespace: 'mail', leaseNamespace: 'mail', identity: 'op-0', leaderElection: false });
    expect(readOperatorEnv({ POD_NAMESPACE: 'ops', FEDERIZER_OPERATOR_NAMESPACE: 'mail' }).leaseNamespace).toBe('ops');
  });

  it('names the variable of a bad value', () => {
    expect(() => readOperatorEnv({ FEDERIZER_OPERATOR_METRICS_PORT: '70000' })).toThrow(
      'FEDERIZER_OPERATOR_METRICS_PORT="70000" is not an integer from 0 to 65535',
    );
    expect(() => readOperatorEnv({ FEDERIZER_OPERATOR_WORKERS: 'many' })).toThrow('FEDERIZER_OPERATOR_WORKERS');
    expect(() => readOperatorEnv({ FEDERIZER_OPERATOR_LEADER_ELECTION: 'maybe' })).toThrow('is not 0 or 1');
  });
});

describe('runOperator', () => {
  let api: FakeApiServer | undefined;
  let operator: OperatorRuntime | undefined;
  let dir: string | undefined;
  const saved = process.env.KUBECONFIG;
  afterEach(async () => {
    await operator?.close();
    await api?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
    if (saved === undefined) delete process.env.KUBECONFIG;
    else process.env.KUBECONFIG = saved;
  });

  it('loads KUBECONFIG, takes a Lease, serves probes and reconciles', async () => {
    api = await FakeApiServer.start();
    dir = await mkdtemp(join(tmpdir(), 'federizer-kubeconfig-'));
    const file = join(dir, 'config');
    await writeFile(
      file,
      [
        'apiVersion: v1',
        'kind: Config',
        `clusters: [{ name: fake, cluster: { server: "${api.url}", insecure-skip-tls-verify: true } }]`,
        'users: [{ name: tester, user: { token: abc } }]',
        'contexts: [{ name: fake, context: { cluster: fake, user: tester } }]',
        'current-context: fake',
      ].join('\n'),
    );
    process.env.KUBECONFIG = file;
    operator = await runOperator({
      build: testBuilder(),
      logger: silentLogger(),
      env: {
        FEDERIZER_OPERATOR_METRICS_HOST: '127.0.0.1',
        FEDERIZER_OPERATOR_METRICS_PORT: '0',
        POD_NAMESPACE: 'ops',
        POD_NAME: 'op-0',
      },
    });
    await eventually(() => expect(operator!.isLeader).toBe(true));
    expect(api.get('coordination.k8s.io/v1', 'Lease', 'ops', 'federizer-operator')!.spec).toMatchObject({
      holderIdentity: 'op-0',
    });
    api.create(mailDomain('example', 'mail', { domain: 'example.com' }));
    await eventually(() => expect(condition(api!.get(MD_API, 'MailDomain', 'mail', 'example'), 'Ready')).toBeDefined());
    expect((await fetch(`${operator.url}/readyz`)).status).toBe(200);
  });
});

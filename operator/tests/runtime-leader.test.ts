/**
 * Lease leader election between operator instances on one fake API server: only the leader reconciles; a
 * leader that stops releases the Lease and another takes over at once; a leader that vanishes without
 * releasing is replaced once its Lease has gone unrenewed for a lease duration.
 */
import { silentLogger } from '@federizer/common';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KubeClient, LeaderElector, type OperatorRuntime } from '../src/runtime/index.js';
import { FakeApiServer, type JsonObject } from './fake-apiserver.js';
import { condition, eventually, mailDomain, MD_API, startOperator, testBuilder } from './helpers/runtime-harness.js';

let api: FakeApiServer;
const running: OperatorRuntime[] = [];

beforeEach(async () => {
  api = await FakeApiServer.start();
});
afterEach(async () => {
  for (const r of running.splice(0)) await r.close();
  await api.close();
});

const election = { namespace: 'ops', leaseDurationMs: 1500, renewDeadlineMs: 1000, retryPeriodMs: 100 };
const lease = () =>
  api.get('coordination.k8s.io/v1', 'Lease', 'ops', 'federizer-operator')?.spec as JsonObject | undefined;

describe('leader election', () => {
  it('lets only the leader reconcile, and hands over when the leader stops', async () => {
    const builds = [testBuilder(), testBuilder()];
    const [a, b] = await Promise.all(
      builds.map((build, i) =>
        startOperator(api, {
          build,
          identity: `op-${i}`,
          leaderElection: election,
          http: { host: '127.0.0.1', port: 0 },
        }),
      ),
    );
    running.push(a!, b!);
    await eventually(() => expect([a!.isLeader, b!.isLeader].filter(Boolean)).toHaveLength(1));
    const [leader, standby] = a!.isLeader ? [a!, b!] : [b!, a!];
    const [leaderBuild, standbyBuild] = a!.isLeader ? builds : [builds[1]!, builds[0]!];
    expect(lease()).toMatchObject({ holderIdentity: leader.identity, leaseDurationSeconds: 2 });

    api.create(mailDomain('first', 'mail', { domain: 'first.example' }));
    await eventually(() => expect(condition(api.get(MD_API, 'MailDomain', 'mail', 'first'), 'Ready')).toBeDefined());
    // Renewals go on for several retry periods; the standby never builds anything meanwhile.
    await new Promise((r) => setTimeout(r, 500));
    expect(leaderBuild!.calls).toBeGreaterThan(0);
    expect(standbyBuild!.calls).toBe(0);
    expect(standby.isLeader).toBe(false);
    const metrics = async (r: OperatorRuntime) =>
      r.metrics.registry.getSingleMetricAsString('federizer_operator_leader');
    expect(await metrics(leader)).toMatch(/ 1$/m);
    expect(await metrics(standby)).toMatch(/ 0$/m);
    // A standby is ready: a rollout of two replicas must not wait for the one that cannot lead.
    const readyz = async (r: OperatorRuntime) => {
      const res = await fetch(`${r.url}/readyz`);
      return `${res.status} ${(await res.text()).trim()}`;
    };
    expect(await readyz(standby)).toBe('200 ok (standby)');
    expect(await readyz(leader)).toBe('200 ok (leader)');

    await leader.close();
    running.splice(running.indexOf(leader), 1);
    // Released: the standby need not wait for the lease to expire.
    await eventually(() => expect(standby.isLeader).toBe(true), 1000);
    expect(lease()).toMatchObject({ holderIdentity: standby.identity });
    api.create(mailDomain('second', 'mail', { domain: 'second.example' }));
    await eventually(() => expect(condition(api.get(MD_API, 'MailDomain', 'mail', 'second'), 'Ready')).toBeDefined());
    expect(standbyBuild!.calls).toBeGreaterThan(0);
  });

  it('takes over a Lease that its holder stopped renewing, only after a full lease duration', async () => {
    const client = new KubeClient(api.kubeConfig());
    const now = new Date().toISOString().replace(/Z$/, '000Z');
    api.create({
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name: 'federizer-operator', namespace: 'ops' },
      spec: {
        holderIdentity: 'crashed',
        leaseDurationSeconds: 1,
        acquireTime: now,
        renewTime: now,
        leaseTransitions: 4,
      },
    });
    let leadingSince = 0;
    const started = performance.now();
    const elector = new LeaderElector({
      client,
      namespace: 'ops',
      name: 'federizer-operator',
      identity: 'successor',
      logger: silentLogger(),
      leaseDurationMs: 1000,
      renewDeadlineMs: 500,
      retryPeriodMs: 50,
      onStartedLeading: () => void (leadingSince = performance.now()),
      onStoppedLeading: () => undefined,
    });
    elector.start();
    try {
      await eventually(() => expect(elector.isLeader).toBe(true), 5000);
      // It saw the record unchanged for the holder's whole lease duration before it took over.
      expect(leadingSince - started).toBeGreaterThanOrEqual(1000);
      expect(lease()).toMatchObject({ holderIdentity: 'successor', leaseTransitions: 5 });
    } finally {
      await elector.stop();
    }
    expect(lease()).toMatchObject({ holderIdentity: null });
  });

  it('stops leading when its renewals fail past the renew deadline', async () => {
    let stopped = false;
    const elector = new LeaderElector({
      client: new KubeClient(api.kubeConfig()),
      namespace: 'ops',
      name: 'lease',
      identity: 'solo',
      logger: silentLogger(),
      leaseDurationMs: 1500,
      renewDeadlineMs: 600,
      retryPeriodMs: 50,
      onStartedLeading: () => undefined,
      onStoppedLeading: () => void (stopped = true),
    });
    elector.start();
    try {
      await eventually(() => expect(elector.isLeader).toBe(true));
      api.inject({ match: /leases\/lease$/, status: 503, times: 1000 });
      await eventually(() => expect(stopped).toBe(true), 5000);
      expect(elector.isLeader).toBe(false);
    } finally {
      await elector.stop();
    }
  });
});

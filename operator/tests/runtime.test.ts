/**
 * The operator runtime against the fake API server over real HTTP: informers, the work queue, server-side
 * apply, create-only Secrets, status conditions, watch-driven repair, retries of conflicts, pruning.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import type { JsonObject } from './fake-apiserver.js';
import {
  condition,
  eventually,
  mailDomain,
  makeDeploymentsAvailable,
  MD_API,
  startOperator,
  testBuilder,
  type TestBuilder,
} from './helpers/runtime-harness.js';
import { useFakeApiServer } from './helpers/operator-fixture.js';

const cluster = useFakeApiServer();
let build: TestBuilder;

beforeEach(() => {
  build = testBuilder();
});

const NS = 'mail';
const get = (name: string) => cluster.api.get(MD_API, 'MailDomain', NS, name);
const metaOf = (o: JsonObject | undefined) => (o?.metadata ?? {}) as JsonObject;

describe('a MailDomain', () => {
  it('becomes server-side applied objects owned by it, and status conditions with observedGeneration', async () => {
    cluster.operator = await startOperator(cluster.api, { build });
    cluster.api.create(mailDomain('example', NS, { domain: 'example.com' }));
    const md = await eventually(() => {
      const md = get('example');
      expect(condition(md, 'Ready')).toBeDefined();
      return md!;
    });
    const uid = metaOf(md).uid;
    for (const [apiVersion, kind, name] of [
      ['v1', 'ConfigMap', 'example-config'],
      ['v1', 'Service', 'example-auth'],
      ['apps/v1', 'Deployment', 'example-auth'],
      ['apps/v1', 'Deployment', 'example-mailbox'],
      ['apps/v1', 'Deployment', 'example-webmail'],
      ['v1', 'Secret', 'example-admin-token'],
    ] as const) {
      const object = cluster.api.get(apiVersion, kind, NS, name);
      expect(object, `${kind} ${name}`).toBeDefined();
      expect((metaOf(object).ownerReferences as JsonObject[])[0]).toMatchObject({ kind: 'MailDomain', uid });
    }
    // Everything but the Secret went through server-side apply with the one field manager, forced.
    const applies = cluster.api.requests.filter((r) => r.contentType === 'application/apply-patch+yaml');
    expect(applies.length).toBeGreaterThanOrEqual(5);
    for (const r of applies) expect(r.query).toMatchObject({ fieldManager: 'federizer-operator', force: 'true' });
    expect(applies.some((r) => r.path.includes('/secrets/'))).toBe(false);

    const status = md.status as JsonObject;
    expect(status.observedGeneration).toBe(1);
    for (const type of ['Ready', 'AuthServerReady', 'MailboxReady', 'WebmailReady', 'DNSRecordsReady'])
      expect(condition(md, type), type).toMatchObject({
        observedGeneration: 1,
        lastTransitionTime: expect.any(String),
      });
    // No pods run in the fake: the Deployments have no available replicas yet.
    expect(condition(md, 'Ready')).toMatchObject({ status: 'False', reason: 'NotReady' });
    expect(condition(md, 'AuthServerReady')).toMatchObject({ status: 'False', message: '0/1 replicas available' });
    // DNS mode none (the default): the records are listed for an administrator.
    expect(condition(md, 'DNSRecordsReady')).toMatchObject({ status: 'Unknown', reason: 'ManualDNS' });
    expect(status.dnsRecords).toEqual([
      {
        name: '_federizer._as._tcp.example.com',
        type: 'SRV',
        ttl: 300,
        priority: 0,
        weight: 1,
        port: 443,
        target: 'as.example.com',
      },
      {
        name: '_federizer._rs._tcp.example.com',
        type: 'SRV',
        ttl: 300,
        priority: 0,
        weight: 1,
        port: 443,
        target: 'mail.example.com',
      },
    ]);
    expect(build.contexts[0]).toMatchObject({ hasServiceMonitorCrd: false });
  });

  it('turns Ready when its Deployments become available (a Deployment watch event), keeping unchanged transition times', async () => {
    cluster.operator = await startOperator(cluster.api, { build });
    cluster.api.create(mailDomain('example', NS, { domain: 'example.com' }));
    const before = await eventually(() => {
      const md = get('example');
      expect(condition(md, 'AuthServerReady')?.status).toBe('False');
      return md!;
    });
    const dnsBefore = condition(before, 'DNSRecordsReady')!;
    // Transition times have a resolution of one second.
    await new Promise((r) => setTimeout(r, 1100));
    makeDeploymentsAvailable(cluster.api, NS);
    const after = await eventually(() => {
      const md = get('example');
      expect(condition(md, 'Ready')?.status).toBe('True');
      return md!;
    });
    expect(condition(after, 'AuthServerReady')).toMatchObject({
      status: 'True',
      reason: 'Available',
      message: '1/1 replicas available',
    });
    expect(condition(after, 'DNSRecordsReady')!.lastTransitionTime).toBe(dnsBefore.lastTransitionTime);
    expect(condition(after, 'Ready')!.lastTransitionTime).not.toBe(condition(before, 'Ready')!.lastTransitionTime);
    // The event follows the status write that announced the transition.
    const events = await eventually(() => {
      const events = cluster.api.list('events.k8s.io/v1', 'Event', NS);
      expect(events.map((e) => e.reason)).toEqual(expect.arrayContaining(['Generated', 'Ready']));
      return events;
    });
    const ready = events.find((e) => e.reason === 'Ready')!;
    expect(ready).toMatchObject({ type: 'Normal', regarding: { kind: 'MailDomain', name: 'example' } });
  });

  it('follows spec changes: a new generation is applied and observed', async () => {
    cluster.operator = await startOperator(cluster.api, { build });
    cluster.api.create(mailDomain('example', NS, { domain: 'example.com' }));
    await eventually(() => expect((get('example')?.status as JsonObject | undefined)?.observedGeneration).toBe(1));
    cluster.api.mergePatch(MD_API, 'MailDomain', NS, 'example', { spec: { replicas: 3 } });
    await eventually(() => {
      const md = get('example');
      expect((md?.status as JsonObject).observedGeneration).toBe(2);
      expect(condition(md, 'MailboxReady')).toMatchObject({ observedGeneration: 2, message: '0/3 replicas available' });
    });
    expect((cluster.api.get('apps/v1', 'Deployment', NS, 'example-mailbox')!.spec as JsonObject).replicas).toBe(3);
  });

  it('never overwrites a Secret: re-reconciles keep the first value even when the builder offers a new one', async () => {
    build = testBuilder({ alwaysReturnSecret: true });
    cluster.operator = await startOperator(cluster.api, { build });
    cluster.api.create(mailDomain('example', NS, { domain: 'example.com' }));
    const first = await eventually(() => {
      const secret = cluster.api.get('v1', 'Secret', NS, 'example-admin-token');
      expect(secret).toBeDefined();
      return secret!;
    });
    const calls = build.calls;
    cluster.api.mergePatch(MD_API, 'MailDomain', NS, 'example', { spec: { replicas: 2 } });
    await eventually(() => expect((get('example')?.status as JsonObject).observedGeneration).toBe(2));
    expect(build.calls).toBeGreaterThan(calls);
    const now = cluster.api.get('v1', 'Secret', NS, 'example-admin-token')!;
    expect(now.data).toEqual(first.data);
    expect(metaOf(now).resourceVersion).toBe(metaOf(first).resourceVersion);
    // The builder was told which Secrets exist, and the runtime only ever read and created Secrets.
    expect(build.contexts.at(-1)!.existingSecrets.has('example-admin-token')).toBe(true);
    const secretWrites = cluster.api.requests.filter((r) => r.path.includes('/secrets') && r.method !== 'GET');
    expect(secretWrites.map((r) => `${r.method} ${r.status}`)).toEqual(['POST 201']);
  });

  it('re-creates an owned Deployment deleted behind its back (through the Deployment watch)', async () => {
    cluster.operator = await startOperator(cluster.api, { build, resyncMs: 600_000 });
    cluster.api.create(mailDomain('example', NS, { domain: 'example.com' }));
    const original = await eventually(() => {
      const d = cluster.api.get('apps/v1', 'Deployment', NS, 'example-mailbox');
      expect(d).toBeDefined();
      return d!;
    });
    cluster.api.delete('apps/v1', 'Deployment', NS, 'example-mailbox');
    const recreated = await eventually(() => {
      const d = cluster.api.get('apps/v1', 'Deployment', NS, 'example-mailbox');
      expect(d).toBeDefined();
      return d!;
    });
    expect(metaOf(recreated).uid).not.toBe(metaOf(original).uid);
  });

  it('retries a status write refused with 409 Conflict, with backoff, until it lands', async () => {
    cluster.api.inject({ match: /^PATCH .*\/maildomains\/example\/status/, status: 409, reason: 'Conflict', times: 2 });
    cluster.operator = await startOperator(cluster.api, { build });
    cluster.api.create(mailDomain('example', NS, { domain: 'example.com' }));
    await eventually(() => expect(condition(get('example'), 'Ready')).toBeDefined());
    const statusWrites = cluster.api.requests.filter((r) => r.method === 'PATCH' && r.path.endsWith('/example/status'));
    expect(statusWrites.slice(0, 3).map((r) => r.status)).toEqual([409, 409, 200]);
    const metrics = await cluster.operator.metrics.registry.getSingleMetricAsString(
      'federizer_operator_reconciles_total',
    );
    expect(metrics).toMatch(/controller="maildomain",result="error"[^}]*} 2/);
  });

  it('reports an invalid spec in the status instead of retrying', async () => {
    cluster.operator = await startOperator(cluster.api, { build });
    cluster.api.create(mailDomain('broken', NS, {}));
    await eventually(() =>
      expect(condition(get('broken'), 'Ready')).toMatchObject({
        status: 'False',
        reason: 'InvalidSpec',
        message: 'spec.domain is required',
      }),
    );
    expect(cluster.api.list('apps/v1', 'Deployment', NS)).toEqual([]);
  });

  it('prunes owned objects the builder stops producing (webmail turned off), keeping create-only ones', async () => {
    cluster.operator = await startOperator(cluster.api, { build });
    cluster.api.create(mailDomain('example', NS, { domain: 'example.com' }));
    await eventually(() => expect(cluster.api.get('apps/v1', 'Deployment', NS, 'example-webmail')).toBeDefined());
    cluster.api.mergePatch(MD_API, 'MailDomain', NS, 'example', { spec: { webmail: { enabled: false } } });
    await eventually(() => expect(cluster.api.get('apps/v1', 'Deployment', NS, 'example-webmail')).toBeUndefined());
    await eventually(() =>
      expect(condition(get('example'), 'WebmailReady')).toMatchObject({ status: 'True', reason: 'Disabled' }),
    );
    expect(cluster.api.get('v1', 'Secret', NS, 'example-admin-token')).toBeDefined();
  });

  it('is collected with everything it owns when deleted (no finalizer outside rfc2136 mode)', async () => {
    cluster.operator = await startOperator(cluster.api, { build });
    cluster.api.create(mailDomain('example', NS, { domain: 'example.com' }));
    await eventually(() => expect(condition(get('example'), 'Ready')).toBeDefined());
    expect(metaOf(get('example')).finalizers).toBeUndefined();
    cluster.api.delete(MD_API, 'MailDomain', NS, 'example');
    expect(get('example')).toBeUndefined();
    expect(cluster.api.list('apps/v1', 'Deployment', NS)).toEqual([]);
    expect(cluster.api.list('v1', 'Secret', NS)).toEqual([]);
  });
});

describe('informers', () => {
  it('restart with backoff after a failed list, then reconcile what exists', async () => {
    cluster.api.create(mailDomain('example', NS, { domain: 'example.com' }));
    cluster.api.inject({ match: /^GET \/apis\/federizer\.io\/v1alpha1\/maildomains(\?|$)/, status: 500, times: 3 });
    cluster.operator = await startOperator(cluster.api, { build });
    await eventually(() => expect(condition(get('example'), 'Ready')).toBeDefined());
    const failedLists = cluster.api.requests.filter(
      (r) => r.path === '/apis/federizer.io/v1alpha1/maildomains' && r.status === 500,
    );
    expect(failedLists).toHaveLength(3);
    const restarts = await cluster.operator.metrics.registry.getSingleMetricAsString(
      'federizer_operator_informer_restarts_total',
    );
    expect(restarts).toMatch(/kind="MailDomain"[^}]*} 3/);
  });

  it('recover from a dropped watch and from 410 Expired (relist), seeing changes made meanwhile', async () => {
    cluster.operator = await startOperator(cluster.api, { build });
    cluster.api.create(mailDomain('one', NS, { domain: 'one.example' }));
    await eventually(() => expect(condition(get('one'), 'Ready')).toBeDefined());
    // In one tick, before any client can watch again: its resourceVersion is now older than the history.
    cluster.api.closeWatches();
    cluster.api.create(mailDomain('two', NS, { domain: 'two.example' }));
    cluster.api.compactHistory();
    await eventually(() => expect(condition(get('two'), 'Ready')).toBeDefined());
    const relists = cluster.api.requests.filter(
      (r) => r.path === '/apis/federizer.io/v1alpha1/maildomains' && !r.query.watch,
    );
    expect(relists.length).toBeGreaterThanOrEqual(2);
  });

  it('watch one namespace when scoped, and leave the others alone', async () => {
    cluster.operator = await startOperator(cluster.api, { build, namespace: NS });
    cluster.api.create(mailDomain('outside', 'other', { domain: 'other.example' }));
    cluster.api.create(mailDomain('inside', NS, { domain: 'inside.example' }));
    await eventually(() => expect(condition(get('inside'), 'Ready')).toBeDefined());
    expect(cluster.api.get(MD_API, 'MailDomain', 'other', 'outside')!.status).toBeUndefined();
    expect(cluster.api.requests.some((r) => r.path.startsWith('/apis/federizer.io/v1alpha1/namespaces/other'))).toBe(
      false,
    );
  });
});

/**
 * The operator runtime against the fake API server over real HTTP: informers, the work queue, server-side
 * apply, create-only Secrets, status conditions, watch-driven repair, retries of conflicts, pruning.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { OperatorRuntime } from '../src/runtime/index.js';
import { FakeApiServer, type JsonObject } from './fake-apiserver.js';
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

let api: FakeApiServer;
let operator: OperatorRuntime | undefined;
let build: TestBuilder;

beforeEach(async () => {
  api = await FakeApiServer.start();
  build = testBuilder();
});
afterEach(async () => {
  await operator?.close();
  operator = undefined;
  await api.close();
});

const NS = 'mail';
const get = (name: string) => api.get(MD_API, 'MailDomain', NS, name);
const metaOf = (o: JsonObject | undefined) => (o?.metadata ?? {}) as JsonObject;

describe('a MailDomain', () => {
  it('becomes server-side applied objects owned by it, and status conditions with observedGeneration', async () => {
    operator = await startOperator(api, { build });
    api.create(mailDomain('example', NS, { domain: 'example.com' }));
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
      const object = api.get(apiVersion, kind, NS, name);
      expect(object, `${kind} ${name}`).toBeDefined();
      expect((metaOf(object).ownerReferences as JsonObject[])[0]).toMatchObject({ kind: 'MailDomain', uid });
    }
    // Everything but the Secret went through server-side apply with the one field manager, forced.
    const applies = api.requests.filter((r) => r.contentType === 'application/apply-patch+yaml');
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
    operator = await startOperator(api, { build });
    api.create(mailDomain('example', NS, { domain: 'example.com' }));
    const before = await eventually(() => {
      const md = get('example');
      expect(condition(md, 'AuthServerReady')?.status).toBe('False');
      return md!;
    });
    const dnsBefore = condition(before, 'DNSRecordsReady')!;
    // Transition times have a resolution of one second.
    await new Promise((r) => setTimeout(r, 1100));
    makeDeploymentsAvailable(api, NS);
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
      const events = api.list('events.k8s.io/v1', 'Event', NS);
      expect(events.map((e) => e.reason)).toEqual(expect.arrayContaining(['Generated', 'Ready']));
      return events;
    });
    const ready = events.find((e) => e.reason === 'Ready')!;
    expect(ready).toMatchObject({ type: 'Normal', regarding: { kind: 'MailDomain', name: 'example' } });
  });

  it('follows spec changes: a new generation is applied and observed', async () => {
    operator = await startOperator(api, { build });
    api.create(mailDomain('example', NS, { domain: 'example.com' }));
    await eventually(() => expect((get('example')?.status as JsonObject | undefined)?.observedGeneration).toBe(1));
    api.mergePatch(MD_API, 'MailDomain', NS, 'example', { spec: { replicas: 3 } });
    await eventually(() => {
      const md = get('example');
      expect((md?.status as JsonObject).observedGeneration).toBe(2);
      expect(condition(md, 'MailboxReady')).toMatchObject({ observedGeneration: 2, message: '0/3 replicas available' });
    });
    expect((api.get('apps/v1', 'Deployment', NS, 'example-mailbox')!.spec as JsonObject).replicas).toBe(3);
  });

  it('never overwrites a Secret: re-reconciles keep the first value even when the builder offers a new one', async () => {
    build = testBuilder({ alwaysReturnSecret: true });
    operator = await startOperator(api, { build });
    api.create(mailDomain('example', NS, { domain: 'example.com' }));
    const first = await eventually(() => {
      const secret = api.get('v1', 'Secret', NS, 'example-admin-token');
      expect(secret).toBeDefined();
      return secret!;
    });
    const calls = build.calls;
    api.mergePatch(MD_API, 'MailDomain', NS, 'example', { spec: { replicas: 2 } });
    await eventually(() => expect((get('example')?.status as JsonObject).observedGeneration).toBe(2));
    expect(build.calls).toBeGreaterThan(calls);
    const now = api.get('v1', 'Secret', NS, 'example-admin-token')!;
    expect(now.data).toEqual(first.data);
    expect(metaOf(now).resourceVersion).toBe(metaOf(first).resourceVersion);
    // The builder was told which Secrets exist, and the runtime only ever read and created Secrets.
    expect(build.contexts.at(-1)!.existingSecrets.has('example-admin-token')).toBe(true);
    const secretWrites = api.requests.filter((r) => r.path.includes('/secrets') && r.method !== 'GET');
    expect(secretWrites.map((r) => `${r.method} ${r.status}`)).toEqual(['POST 201']);
  });

  it('re-creates an owned Deployment deleted behind its back (through the Deployment watch)', async () => {
    operator = await startOperator(api, { build, resyncMs: 600_000 });
    api.create(mailDomain('example', NS, { domain: 'example.com' }));
    const original = await eventually(() => {
      const d = api.get('apps/v1', 'Deployment', NS, 'example-mailbox');
      expect(d).toBeDefined();
      return d!;
    });
    api.delete('apps/v1', 'Deployment', NS, 'example-mailbox');
    const recreated = await eventually(() => {
      const d = api.get('apps/v1', 'Deployment', NS, 'example-mailbox');
      expect(d).toBeDefined();
      return d!;
    });
    expect(metaOf(recreated).uid).not.toBe(metaOf(original).uid);
  });

  it('retries a status write refused with 409 Conflict, with backoff, until it lands', async () => {
    api.inject({ match: /^PATCH .*\/maildomains\/example\/status/, status: 409, reason: 'Conflict', times: 2 });
    operator = await startOperator(api, { build });
    api.create(mailDomain('example', NS, { domain: 'example.com' }));
    await eventually(() => expect(condition(get('example'), 'Ready')).toBeDefined());
    const statusWrites = api.requests.filter((r) => r.method === 'PATCH' && r.path.endsWith('/example/status'));
    expect(statusWrites.slice(0, 3).map((r) => r.status)).toEqual([409, 409, 200]);
    const metrics = await operator.metrics.registry.getSingleMetricAsString('federizer_operator_reconciles_total');
    expect(metrics).toMatch(/controller="maildomain",result="error"[^}]*} 2/);
  });

  it('reports an invalid spec in the status instead of retrying', async () => {
    operator = await startOperator(api, { build });
    api.create(mailDomain('broken', NS, {}));
    await eventually(() =>
      expect(condition(get('broken'), 'Ready')).toMatchObject({
        status: 'False',
        reason: 'InvalidSpec',
        message: 'spec.domain is required',
      }),
    );
    expect(api.list('apps/v1', 'Deployment', NS)).toEqual([]);
  });

  it('prunes owned objects the builder stops producing (webmail turned off), keeping create-only ones', async () => {
    operator = await startOperator(api, { build });
    api.create(mailDomain('example', NS, { domain: 'example.com' }));
    await eventually(() => expect(api.get('apps/v1', 'Deployment', NS, 'example-webmail')).toBeDefined());
    api.mergePatch(MD_API, 'MailDomain', NS, 'example', { spec: { webmail: { enabled: false } } });
    await eventually(() => expect(api.get('apps/v1', 'Deployment', NS, 'example-webmail')).toBeUndefined());
    await eventually(() =>
      expect(condition(get('example'), 'WebmailReady')).toMatchObject({ status: 'True', reason: 'Disabled' }),
    );
    expect(api.get('v1', 'Secret', NS, 'example-admin-token')).toBeDefined();
  });

  it('is collected with everything it owns when deleted (no finalizer outside rfc2136 mode)', async () => {
    operator = await startOperator(api, { build });
    api.create(mailDomain('example', NS, { domain: 'example.com' }));
    await eventually(() => expect(condition(get('example'), 'Ready')).toBeDefined());
    expect(metaOf(get('example')).finalizers).toBeUndefined();
    api.delete(MD_API, 'MailDomain', NS, 'example');
    expect(get('example')).toBeUndefined();
    expect(api.list('apps/v1', 'Deployment', NS)).toEqual([]);
    expect(api.list('v1', 'Secret', NS)).toEqual([]);
  });
});

describe('informers', () => {
  it('restart with backoff after a failed list, then reconcile what exists', async () => {
    api.create(mailDomain('example', NS, { domain: 'example.com' }));
    api.inject({ match: /^GET \/apis\/federizer\.io\/v1alpha1\/maildomains(\?|$)/, status: 500, times: 3 });
    operator = await startOperator(api, { build });
    await eventually(() => expect(condition(get('example'), 'Ready')).toBeDefined());
    const failedLists = api.requests.filter(
      (r) => r.path === '/apis/federizer.io/v1alpha1/maildomains' && r.status === 500,
    );
    expect(failedLists).toHaveLength(3);
    const restarts = await operator.metrics.registry.getSingleMetricAsString(
      'federizer_operator_informer_restarts_total',
    );
    expect(restarts).toMatch(/kind="MailDomain"[^}]*} 3/);
  });

  it('recover from a dropped watch and from 410 Expired (relist), seeing changes made meanwhile', async () => {
    operator = await startOperator(api, { build });
    api.create(mailDomain('one', NS, { domain: 'one.example' }));
    await eventually(() => expect(condition(get('one'), 'Ready')).toBeDefined());
    // In one tick, before any client can watch again: its resourceVersion is now older than the history.
    api.closeWatches();
    api.create(mailDomain('two', NS, { domain: 'two.example' }));
    api.compactHistory();
    await eventually(() => expect(condition(get('two'), 'Ready')).toBeDefined());
    const relists = api.requests.filter((r) => r.path === '/apis/federizer.io/v1alpha1/maildomains' && !r.query.watch);
    expect(relists.length).toBeGreaterThanOrEqual(2);
  });

  it('watch one namespace when scoped, and leave the others alone', async () => {
    operator = await startOperator(api, { build, namespace: NS });
    api.create(mailDomain('outside', 'other', { domain: 'other.example' }));
    api.create(mailDomain('inside', NS, { domain: 'inside.example' }));
    await eventually(() => expect(condition(get('inside'), 'Ready')).toBeDefined());
    expect(api.get(MD_API, 'MailDomain', 'other', 'outside')!.status).toBeUndefined();
    expect(api.requests.some((r) => r.path.startsWith('/apis/federizer.io/v1alpha1/namespaces/other'))).toBe(false);
  });
});

/**
 * The fake API server, driven by @kubernetes/client-node 1.4 itself (KubernetesObjectApi, CustomObjectsApi,
 * Watch) and by plain HTTP where the client cannot say it: it must behave as a real API server does for
 * everything the operator's tests rely on.
 */
import {
  CustomObjectsApi,
  KubernetesObjectApi,
  PatchStrategy,
  setHeaderOptions,
  Watch,
  type KubernetesObject,
} from '@kubernetes/client-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeApiServer, SERVICEMONITOR_RESOURCE, type JsonObject } from './fake-apiserver.js';

let api: FakeApiServer;

beforeEach(async () => {
  api = await FakeApiServer.start();
});
afterEach(async () => {
  await api.close();
});

async function http(method: string, path: string, body?: unknown, contentType = 'application/json') {
  const res = await fetch(`${api.url}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': contentType },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as JsonObject };
}

const md = (name: string, extra: JsonObject = {}): JsonObject => ({
  apiVersion: 'federizer.io/v1alpha1',
  kind: 'MailDomain',
  metadata: { name, namespace: 'mail' },
  spec: { domain: `${name}.example` },
  ...extra,
});

const MD_PATH = '/apis/federizer.io/v1alpha1/namespaces/mail/maildomains';

describe('discovery', () => {
  it('lists core and group versions and their resources, status subresources included', async () => {
    expect((await http('GET', '/api')).body.versions).toEqual(['v1']);
    const groups = (await http('GET', '/apis')).body.groups as JsonObject[];
    expect(groups.map((g) => g.name)).toContain('federizer.io');
    const resources = (await http('GET', '/apis/federizer.io/v1alpha1')).body.resources as JsonObject[];
    expect(resources.map((r) => r.name)).toEqual([
      'maildomains',
      'maildomains/status',
      'mailusers',
      'mailusers/status',
    ]);
    // A CRD that is not installed is a 404, which is how the operator tells that ServiceMonitor is absent.
    expect((await http('GET', '/apis/monitoring.coreos.com/v1')).status).toBe(404);
    api.addResource(SERVICEMONITOR_RESOURCE);
    expect((await http('GET', '/apis/monitoring.coreos.com/v1')).status).toBe(200);
  });

  it("serves KubernetesObjectApi's discovery-driven CRUD for built-in and custom kinds", async () => {
    const client = KubernetesObjectApi.makeApiClient(api.kubeConfig('mail'));
    const created = await client.create({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'settings', namespace: 'mail' },
      data: { a: '1' },
    } as KubernetesObject);
    expect(created.metadata?.uid).toMatch(/^[0-9a-f-]{36}$/);
    const read = await client.read({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'settings', namespace: 'mail' },
    });
    expect((read as unknown as { data: unknown }).data).toEqual({ a: '1' });
    await client.create(md('one') as unknown as KubernetesObject);
    const list = await client.list('federizer.io/v1alpha1', 'MailDomain', 'mail');
    expect(list.items.map((i) => i.metadata?.name)).toEqual(['one']);
    await client.delete({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'settings', namespace: 'mail' } });
    expect(api.get('v1', 'ConfigMap', 'mail', 'settings')).toBeUndefined();
  });
});

describe('writes', () => {
  it('creates with uid, generation 1 and a resourceVersion; a second create is 409 AlreadyExists', async () => {
    const first = await http('POST', MD_PATH, md('a'));
    expect(first.status).toBe(201);
    expect(first.body.metadata).toMatchObject({ generation: 1, namespace: 'mail' });
    const again = await http('POST', MD_PATH, md('a'));
    expect(again.status).toBe(409);
    expect(again.body).toMatchObject({ kind: 'Status', reason: 'AlreadyExists', code: 409 });
  });

  it('refuses a body whose namespace differs from the URL (400)', async () => {
    const res = await http('POST', '/apis/federizer.io/v1alpha1/namespaces/other/maildomains', md('a'));
    expect(res.status).toBe(400);
  });

  it('answers 409 Conflict to a replace or a merge patch carrying a stale resourceVersion', async () => {
    const created = (await http('POST', MD_PATH, md('a'))).body;
    const rv = (created.metadata as JsonObject).resourceVersion;
    const ok = await http('PUT', `${MD_PATH}/a`, { ...created, spec: { domain: 'b.example' } });
    expect(ok.status).toBe(200);
    const stale = await http('PUT', `${MD_PATH}/a`, { ...created, spec: { domain: 'c.example' } });
    expect(stale.status).toBe(409);
    expect(stale.body.reason).toBe('Conflict');
    const patch = await http(
      'PATCH',
      `${MD_PATH}/a`,
      { metadata: { resourceVersion: rv }, spec: { domain: 'd.example' } },
      'application/merge-patch+json',
    );
    expect(patch.status).toBe(409);
  });

  it('raises generation for spec changes only, and never for status or metadata', async () => {
    await http('POST', MD_PATH, md('a'));
    await http('PATCH', `${MD_PATH}/a`, { metadata: { labels: { x: 'y' } } }, 'application/merge-patch+json');
    expect((api.get('federizer.io/v1alpha1', 'MailDomain', 'mail', 'a')!.metadata as JsonObject).generation).toBe(1);
    await http('PATCH', `${MD_PATH}/a/status`, { status: { phase: 'x' } }, 'application/merge-patch+json');
    expect((api.get('federizer.io/v1alpha1', 'MailDomain', 'mail', 'a')!.metadata as JsonObject).generation).toBe(1);
    await http('PATCH', `${MD_PATH}/a`, { spec: { domain: 'z.example' } }, 'application/merge-patch+json');
    expect((api.get('federizer.io/v1alpha1', 'MailDomain', 'mail', 'a')!.metadata as JsonObject).generation).toBe(2);
  });

  it('keeps the status subresource apart: status writes change only status, main writes never status', async () => {
    await http('POST', MD_PATH, md('a', { status: { ignored: true } }));
    expect(api.get('federizer.io/v1alpha1', 'MailDomain', 'mail', 'a')!.status).toBeUndefined();
    await http(
      'PATCH',
      `${MD_PATH}/a/status`,
      { status: { ok: 1 }, spec: { domain: 'x' } },
      'application/merge-patch+json',
    );
    const after = api.get('federizer.io/v1alpha1', 'MailDomain', 'mail', 'a')!;
    expect(after.status).toEqual({ ok: 1 });
    expect(after.spec).toEqual({ domain: 'a.example' });
    await http('PATCH', `${MD_PATH}/a`, { status: { ok: 2 } }, 'application/merge-patch+json');
    expect(api.get('federizer.io/v1alpha1', 'MailDomain', 'mail', 'a')!.status).toEqual({ ok: 1 });
  });

  it('applies JSON patches (RFC 6902) atomically and answers 422 to a failed test', async () => {
    await http('POST', MD_PATH, md('a'));
    const ok = await http(
      'PATCH',
      `${MD_PATH}/a`,
      [
        { op: 'test', path: '/spec/domain', value: 'a.example' },
        { op: 'add', path: '/metadata/labels', value: { k: 'v' } },
      ],
      'application/json-patch+json',
    );
    expect(ok.status).toBe(200);
    const failed = await http(
      'PATCH',
      `${MD_PATH}/a`,
      [
        { op: 'add', path: '/metadata/labels/k2', value: 'v2' },
        { op: 'test', path: '/spec/domain', value: 'other' },
      ],
      'application/json-patch+json',
    );
    expect(failed.status).toBe(422);
    expect((api.get('federizer.io/v1alpha1', 'MailDomain', 'mail', 'a')!.metadata as JsonObject).labels).toEqual({
      k: 'v',
    });
  });

  it('refuses strategic merge on a custom resource (415), as a real server does', async () => {
    await http('POST', MD_PATH, md('a'));
    const res = await http('PATCH', `${MD_PATH}/a`, { spec: {} }, 'application/strategic-merge-patch+json');
    expect(res.status).toBe(415);
  });

  it('server-side apply: needs a fieldManager, creates when absent, merges, drops what a manager stopped applying', async () => {
    const path = '/api/v1/namespaces/mail/configmaps/c';
    const doc = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: "1"\n  b: "2"\n';
    expect((await http('PATCH', path, doc, 'application/apply-patch+yaml')).status).toBe(422);
    const created = await http('PATCH', `${path}?fieldManager=op&force=true`, doc, 'application/apply-patch+yaml');
    expect(created.status).toBe(201);
    await http(
      'PATCH',
      '/api/v1/namespaces/mail/configmaps/c',
      { data: { other: 'kept' } },
      'application/merge-patch+json',
    );
    const reapplied = await http(
      'PATCH',
      `${path}?fieldManager=op&force=true`,
      'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: "3"\n',
      'application/apply-patch+yaml',
    );
    expect(reapplied.body.data).toEqual({ a: '3', other: 'kept' });
    expect(((reapplied.body.metadata as JsonObject).managedFields as JsonObject[])[0]).toMatchObject({
      manager: 'op',
      operation: 'Apply',
    });
  });

  it('works with client-node typed patches given the content type', async () => {
    await http('POST', MD_PATH, md('a'));
    const custom = api.kubeConfig().makeApiClient(CustomObjectsApi);
    await custom.patchNamespacedCustomObjectStatus(
      {
        group: 'federizer.io',
        version: 'v1alpha1',
        namespace: 'mail',
        plural: 'maildomains',
        name: 'a',
        body: { status: { s: 1 } },
      },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    expect(api.get('federizer.io/v1alpha1', 'MailDomain', 'mail', 'a')!.status).toEqual({ s: 1 });
  });
});

describe('deletion', () => {
  it('with finalizers sets deletionTimestamp; removing the last finalizer deletes; no new finalizer meanwhile', async () => {
    await http('POST', MD_PATH, md('a', { metadata: { name: 'a', namespace: 'mail', finalizers: ['x/y'] } }));
    const deleting = await http('DELETE', `${MD_PATH}/a`);
    expect((deleting.body.metadata as JsonObject).deletionTimestamp).toEqual(expect.any(String));
    const added = await http(
      'PATCH',
      `${MD_PATH}/a`,
      { metadata: { finalizers: ['x/y', 'z/w'] } },
      'application/merge-patch+json',
    );
    expect(added.status).toBe(422);
    await http('PATCH', `${MD_PATH}/a`, { metadata: { finalizers: [] } }, 'application/merge-patch+json');
    expect(api.get('federizer.io/v1alpha1', 'MailDomain', 'mail', 'a')).toBeUndefined();
  });

  it('collects dependents of a deleted owner (Background), and orphans them with Orphan', async () => {
    const owner = (await http('POST', MD_PATH, md('a'))).body;
    const ref = {
      apiVersion: 'federizer.io/v1alpha1',
      kind: 'MailDomain',
      name: 'a',
      uid: (owner.metadata as JsonObject).uid as string,
    };
    for (const name of ['dep1', 'dep2'])
      api.create({
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name, namespace: 'mail', ownerReferences: [ref] },
      });
    api.create({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'unrelated', namespace: 'mail' } });
    await http('DELETE', `${MD_PATH}/a`);
    expect(api.list('v1', 'ConfigMap', 'mail').map((o) => (o.metadata as JsonObject).name)).toEqual(['unrelated']);

    const owner2 = (await http('POST', MD_PATH, md('b'))).body;
    api.create({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: {
        name: 'orphan',
        namespace: 'mail',
        ownerReferences: [{ ...ref, name: 'b', uid: (owner2.metadata as JsonObject).uid as string }],
      },
    });
    await http('DELETE', `${MD_PATH}/b?propagationPolicy=Orphan`);
    expect((api.get('v1', 'ConfigMap', 'mail', 'orphan')!.metadata as JsonObject).ownerReferences).toEqual([]);
  });
});

describe('watch', () => {
  function collect(path: string, params: Record<string, string>) {
    const events: { type: string; name: string; rv: string }[] = [];
    let ended: unknown = 'open';
    const watch = new Watch(api.kubeConfig());
    const started = watch.watch(
      path,
      params,
      (type, obj: KubernetesObject) =>
        events.push({ type, name: obj.metadata?.name ?? '', rv: obj.metadata?.resourceVersion ?? '' }),
      (err) => (ended = err),
    );
    return { events, ended: () => ended, started };
  }

  async function until(check: () => boolean) {
    for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
    expect(check()).toBe(true);
  }

  it('streams ADDED, MODIFIED and DELETED in order from a resourceVersion, to client-node Watch', async () => {
    const from = api.resourceVersion;
    const w = collect(MD_PATH, { resourceVersion: from });
    const controller = await w.started;
    await until(() => api.watchCount === 1);
    await http('POST', MD_PATH, md('a'));
    await http('PATCH', `${MD_PATH}/a`, { spec: { domain: 'n.example' } }, 'application/merge-patch+json');
    await http('DELETE', `${MD_PATH}/a`);
    await until(() => w.events.length === 3);
    expect(w.events.map((e) => e.type)).toEqual(['ADDED', 'MODIFIED', 'DELETED']);
    expect(Number(w.events[2]!.rv)).toBeGreaterThan(Number(w.events[0]!.rv));
    controller.abort();
  });

  it('replays events after a past resourceVersion, and sends 410 Expired once the history is compacted', async () => {
    const from = api.resourceVersion;
    await http('POST', MD_PATH, md('a'));
    await http('POST', MD_PATH, md('b'));
    const replay = collect(MD_PATH, { resourceVersion: from });
    await until(() => replay.events.length === 2);
    (await replay.started).abort();
    api.compactHistory();
    const expired = collect(MD_PATH, { resourceVersion: from });
    await until(() => expired.ended() !== 'open');
    expect(expired.events).toEqual([{ type: 'ERROR', name: '', rv: '' }]);
  });

  it('filters by label selector and namespace, and gives synthetic ADDED without a resourceVersion', async () => {
    api.create({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x', namespace: 'a', labels: { app: 'f' } } });
    api.create({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'y', namespace: 'a', labels: { app: 'g' } } });
    api.create({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'z', namespace: 'b', labels: { app: 'f' } } });
    const w = collect('/api/v1/namespaces/a/configmaps', { labelSelector: 'app in (f)' });
    await until(() => w.events.length === 1);
    expect(w.events[0]).toMatchObject({ type: 'ADDED', name: 'x' });
    (await w.started).abort();
    const all = await http('GET', '/api/v1/configmaps?labelSelector=app%3Df');
    expect((all.body.items as JsonObject[]).map((i) => (i.metadata as JsonObject).name)).toEqual(['x', 'z']);
  });

  it('ends the stream after timeoutSeconds and on closeWatches', async () => {
    const timed = collect(MD_PATH, { timeoutSeconds: '1' });
    await until(() => timed.ended() === null);
    const open = collect(MD_PATH, {});
    await until(() => api.watchCount === 1);
    api.closeWatches();
    await until(() => open.ended() === null);
  });
});

describe('faults', () => {
  it('injects a status for the next matching requests only', async () => {
    api.inject({ match: /^GET .*\/maildomains/, status: 500, times: 2 });
    expect((await http('GET', MD_PATH)).status).toBe(500);
    expect((await http('GET', MD_PATH)).status).toBe(500);
    expect((await http('GET', MD_PATH)).status).toBe(200);
  });

  it('keeps a fault of times Infinity until clearFaults', async () => {
    api.inject({ match: /^GET .*\/maildomains/, status: 500, times: Number.POSITIVE_INFINITY });
    for (let i = 0; i < 5; i++) expect((await http('GET', MD_PATH)).status).toBe(500);
    api.clearFaults();
    expect((await http('GET', MD_PATH)).status).toBe(200);
  });
});

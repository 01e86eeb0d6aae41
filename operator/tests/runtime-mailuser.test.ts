/**
 * MailUser objects become users of a real Authorization Server (services/auth, on SQLite) through its admin
 * API, with the real builders on both sides: the MailDomain's objects from `buildMailDomain`, the admin calls
 * from `buildMailUser`. The operator addresses the AS by its in-cluster Service name; the injected fetch
 * routes that name to the AS on loopback, and nothing else changes.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { testDatabases } from '../../services/common/src/testing/databases.js';
import { ADMIN_TOKEN, startFederation, type Federation } from '../../services/auth/tests/harness.js';
import { buildMailDomain } from '../src/builders/index.js';
import { USER_FINALIZER } from '../src/runtime/index.js';
import { manifestIssues } from '../src/builders/testing/validate.js';
import type { JsonObject } from './fake-apiserver.js';
import {
  condition,
  eventually,
  mailDomain,
  makeDeploymentsAvailable,
  MD_API,
  startOperator,
} from './helpers/runtime-harness.js';
import { useFakeApiServer } from './helpers/operator-fixture.js';
import { rbacViolations } from './helpers/rbac.js';

const NS = 'mail';
let federation: Federation;
let routed: string[];

beforeAll(async () => {
  federation = await startFederation(['example.com'], { database: () => testDatabases()[0]!.create() });
});
afterAll(async () => {
  await federation?.close();
});

const start = () =>
  startOperator(cluster.api, {
    build: buildMailDomain,
    fetch: (url, init) => {
      routed.push(`${init.method} ${url}`);
      return fetch(
        url.replace(/^http:\/\/example-auth\.mail\.svc(?=\/)/, federation.domains['example.com']!.as.url),
        init,
      );
    },
  });

afterEach(async () => {
  // Whatever a test left in the shared AS. Registered before the fixture: it runs once the operator is closed.
  for (const address of ['alice@example.com', 'bob@example.com', 'dave@example.com'])
    await federation.domains['example.com']!.admin(`/users/${encodeURIComponent(address)}`, { method: 'DELETE' });
});
const cluster = useFakeApiServer();

beforeEach(async () => {
  routed = [];
  // The admin token Secret exists before the domain: the operator keeps it (create-only) and reads it.
  cluster.api.create({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: 'example-admin-token', namespace: NS },
    data: { token: Buffer.from(ADMIN_TOKEN).toString('base64') },
  });
  cluster.operator = await start();
  cluster.api.create(mailDomain('example', NS, { domain: 'example.com', forwarding: { defaultPolicy: 'none' } }));
});

const user = (name: string, spec: JsonObject): JsonObject => ({
  apiVersion: MD_API,
  kind: 'MailUser',
  metadata: { name, namespace: NS },
  spec,
});
const password = (name: string, value: string) =>
  cluster.api.create({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name, namespace: NS },
    data: { password: Buffer.from(value).toString('base64') },
  });
const asUser = async (address: string) => {
  const res = await federation.domains['example.com']!.admin(`/users/${encodeURIComponent(address)}`);
  return res.status === 200 ? ((await res.json()) as JsonObject) : res.status;
};
/** Waits until no admin call has been made for a while: the reconciles that events brought are over. */
async function settled(): Promise<number> {
  for (;;) {
    const before = routed.length;
    await new Promise((r) => setTimeout(r, 400));
    if (routed.length === before) return before;
  }
}
const mailUser = (name: string) => cluster.api.get(MD_API, 'MailUser', NS, name);
const finalizers = (name: string) => (mailUser(name)?.metadata as JsonObject | undefined)?.finalizers;

/** Plays the Deployment controller once the cluster.operator has made the Deployments, until the AS counts as ready. */
async function serveDomain(): Promise<void> {
  await eventually(() => expect(cluster.api.list('apps/v1', 'Deployment', NS)).toHaveLength(3));
  makeDeploymentsAvailable(cluster.api, NS);
  await eventually(() =>
    expect(condition(cluster.api.get(MD_API, 'MailDomain', NS, 'example'), 'AuthServerReady')?.status).toBe('True'),
  );
}

describe('a MailUser', () => {
  it("waits for the AS, is created with the domain's default forwarding policy, follows its spec and Secret, and is deleted with it", async () => {
    password('alice-password', 'correct horse battery staple');
    cluster.api.create(
      user('alice', {
        address: 'alice@example.com',
        displayName: 'Alice',
        passwordSecretRef: { name: 'alice-password' },
      }),
    );
    await eventually(() =>
      expect(condition(mailUser('alice'), 'Ready')).toMatchObject({ reason: 'AuthServerNotReady' }),
    );
    expect(await asUser('alice@example.com')).toBe(404);
    // Nothing exists outside the cluster yet: nothing to finalize.
    expect(finalizers('alice')).toBeUndefined();

    await serveDomain();
    await eventually(() =>
      expect(condition(mailUser('alice'), 'Ready')).toMatchObject({
        status: 'True',
        reason: 'Provisioned',
        observedGeneration: 1,
      }),
    );
    expect(finalizers('alice')).toEqual([USER_FINALIZER]);
    expect(routed.slice(0, 2)).toEqual([
      'GET http://example-auth.mail.svc/admin/v1/users/alice%40example.com',
      'POST http://example-auth.mail.svc/admin/v1/users',
    ]);
    // spec.forwarding.defaultPolicy of the MailDomain, since the MailUser names none (the AS's own default is manual).
    expect(await asUser('alice@example.com')).toMatchObject({
      displayName: 'Alice',
      forwardingPolicy: 'none',
      disabled: false,
    });
    const status = mailUser('alice')!.status as JsonObject;
    const firstVersion = status.passwordSecretVersion;
    expect(status.address).toBe('alice@example.com');
    expect(firstVersion).toBe(
      (cluster.api.get('v1', 'Secret', NS, 'alice-password')!.metadata as JsonObject).resourceVersion,
    );
    // What the operator wrote is what the CRD accepts (status.passwordSecretVersion, not another name).
    expect(manifestIssues(mailUser('alice'))).toEqual([]);
    // Once provisioned, a reconcile with nothing new sends nothing but the read.
    const calls = await settled();
    cluster.api.mergePatch(MD_API, 'MailUser', NS, 'alice', { metadata: { labels: { touched: 'yes' } } });
    await eventually(() => expect(routed.length).toBeGreaterThan(calls));
    await settled();
    expect(routed.slice(calls)).toEqual(['GET http://example-auth.mail.svc/admin/v1/users/alice%40example.com']);

    // The domain's default changes: the user follows, as long as the MailUser names no policy of its own.
    cluster.api.mergePatch(MD_API, 'MailDomain', NS, 'example', { spec: { forwarding: { defaultPolicy: 'manual' } } });
    await eventually(async () =>
      expect(await asUser('alice@example.com')).toMatchObject({ forwardingPolicy: 'manual' }),
    );
    cluster.api.mergePatch(MD_API, 'MailUser', NS, 'alice', {
      spec: { displayName: 'Alice A.', forwardingPolicy: 'any', disabled: true },
    });
    await eventually(async () =>
      expect(await asUser('alice@example.com')).toMatchObject({
        displayName: 'Alice A.',
        forwardingPolicy: 'any',
        disabled: true,
      }),
    );

    cluster.api.mergePatch('v1', 'Secret', NS, 'alice-password', {
      data: { password: Buffer.from('another long password').toString('base64') },
    });
    // A MailUser event (here a label) brings the reconcile that sees the new Secret version.
    cluster.api.mergePatch(MD_API, 'MailUser', NS, 'alice', { metadata: { labels: { rotated: 'yes' } } });
    await eventually(() =>
      expect((mailUser('alice')!.status as JsonObject).passwordSecretVersion).not.toBe(firstVersion),
    );
    expect(routed).toContain('PUT http://example-auth.mail.svc/admin/v1/users/alice%40example.com/password');

    cluster.api.delete(MD_API, 'MailUser', NS, 'alice');
    await eventually(() => expect(mailUser('alice')).toBeUndefined());
    expect(await asUser('alice@example.com')).toBe(404);
    expect(routed.at(-1)).toBe('DELETE http://example-auth.mail.svc/admin/v1/users/alice%40example.com');
    expect(cluster.api.list('events.k8s.io/v1', 'Event', NS).map((e) => e.reason)).toEqual(
      expect.arrayContaining(['UserCreated', 'PasswordSet', 'UserDeleted']),
    );
    // Everything the operator asked of the API server, the chart's RBAC allows.
    expect(await rbacViolations(cluster.api.requests)).toEqual([]);
  });

  it('deleted while the operator is down, is deleted from the AS when it comes back (the finalizer)', async () => {
    await serveDomain();
    password('dave-password', 'correct horse battery staple');
    cluster.api.create(user('dave', { address: 'dave@example.com', passwordSecretRef: { name: 'dave-password' } }));
    await eventually(() => expect(condition(mailUser('dave'), 'Ready')?.status).toBe('True'));
    await cluster.operator!.close();
    cluster.operator = undefined;

    cluster.api.delete(MD_API, 'MailUser', NS, 'dave');
    // The finalizer holds the object, and the user is still in the AS.
    expect((mailUser('dave')!.metadata as JsonObject).deletionTimestamp).toEqual(expect.any(String));
    expect(await asUser('dave@example.com')).toMatchObject({ address: 'dave@example.com' });

    cluster.operator = await start();
    await eventually(() => expect(mailUser('dave')).toBeUndefined());
    expect(await asUser('dave@example.com')).toBe(404);
  });

  it('lets go of a deleted MailUser whose MailDomain is gone, without calling an AS that no longer exists', async () => {
    await serveDomain();
    password('dave-password', 'correct horse battery staple');
    cluster.api.create(user('dave', { address: 'dave@example.com', passwordSecretRef: { name: 'dave-password' } }));
    await eventually(() => expect(finalizers('dave')).toEqual([USER_FINALIZER]));
    cluster.api.delete(MD_API, 'MailDomain', NS, 'example');
    await eventually(() => expect(cluster.api.get(MD_API, 'MailDomain', NS, 'example')).toBeUndefined());
    const calls = await settled();
    cluster.api.delete(MD_API, 'MailUser', NS, 'dave');
    await eventually(() => expect(mailUser('dave')).toBeUndefined());
    expect(routed.slice(calls)).toEqual([]);
  });

  it("reports the AS's refusal in its status, without retrying (weak_password)", async () => {
    await serveDomain();
    password('bob-password', 'short');
    cluster.api.create(user('bob', { address: 'bob@example.com', passwordSecretRef: { name: 'bob-password' } }));
    await eventually(() =>
      expect(condition(mailUser('bob'), 'Ready')).toMatchObject({
        status: 'False',
        reason: 'Rejected',
        message: expect.stringContaining('weak_password'),
      }),
    );
    expect(await asUser('bob@example.com')).toBe(404);
    // Deleting it needs no AS call to succeed: the AS answers 404 and the finalizer goes.
    cluster.api.delete(MD_API, 'MailUser', NS, 'bob');
    await eventually(() => expect(mailUser('bob')).toBeUndefined());
  });

  it('says so when no MailDomain serves its address, or its password Secret is missing', async () => {
    cluster.api.create(user('carol', { address: 'carol@elsewhere.example', passwordSecretRef: { name: 'x' } }));
    await eventually(() =>
      expect(condition(mailUser('carol'), 'Ready')).toMatchObject({
        status: 'False',
        reason: 'DomainNotFound',
        message: 'no MailDomain in mail serves elsewhere.example',
      }),
    );
    await serveDomain();
    cluster.api.create(
      user('erin', { address: 'erin@example.com', passwordSecretRef: { name: 'erin-pw', key: 'pw' } }),
    );
    await eventually(() =>
      expect(condition(mailUser('erin'), 'Ready')).toMatchObject({
        status: 'False',
        reason: 'PasswordSecretMissing',
        message: 'Secret erin-pw with key pw not found',
      }),
    );
    expect(finalizers('erin')).toBeUndefined();
  });
});

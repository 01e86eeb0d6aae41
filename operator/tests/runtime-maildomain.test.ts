/**
 * The two halves joined: the runtime with the REAL desired-state builder (`buildMailDomain`, as `federizer
 * operator run` passes it), on the fake API server, a MailDomain in rfc2136 DNS mode against a real BIND 9.
 * It reaches Ready once the Deployments are available; its SRV records are in BIND; its generated Secrets are
 * created once; status.urls is set; every manifest the runtime sent validates as the builder tests validate
 * theirs; every request is one the chart's RBAC allows; and deletion removes the records before the finalizer.
 */
import { DnsClient } from '@federizer/common';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildMailDomain } from '../src/builders/index.js';
import { manifestIssues } from '../src/builders/testing/validate.js';
import { DNS_FINALIZER } from '../src/runtime/index.js';
import {
  BUILTIN_RESOURCES,
  DNSENDPOINT_RESOURCE,
  FEDERIZER_RESOURCES,
  SERVICEMONITOR_RESOURCE,
  type JsonObject,
} from './fake-apiserver.js';
import { findNamed, startBind, type RunningBind } from './helpers/bind.js';
import { RELEASE_NAMESPACE, rbacViolations } from './helpers/rbac.js';
import {
  condition,
  eventually,
  mailDomain,
  makeDeploymentsAvailable,
  MD_API,
  startOperator,
} from './helpers/runtime-harness.js';
import { useFakeApiServer } from './helpers/operator-fixture.js';

const named = findNamed();
const NS = 'mail';
const IMAGE = 'registry.test/federizer:9.9.9';

const b64 = (s: string) => Buffer.from(s).toString('base64');

// Skipped only when `named` is absent, with the reason in the suite's name.
describe.skipIf(!named.path)(
  `a MailDomain built by the real builder, with RFC 2136 DNS on a real BIND 9${named.reason ? ` (skipped: ${named.reason})` : ''}`,
  () => {
    let bind: RunningBind;
    beforeEach(async () => {
      bind = await startBind({ zone: 'example.test', namedPath: named.path! });
    });
    afterEach(async () => {
      await bind.stop();
    });
    // After the hooks above: BIND starts before the API server and stops after it.
    // A cluster with the Prometheus Operator: the ServiceMonitor is built and applied too.
    const cluster = useFakeApiServer({
      resources: [...BUILTIN_RESOURCES, ...FEDERIZER_RESOURCES, DNSENDPOINT_RESOURCE, SERVICEMONITOR_RESOURCE],
    });

    it('is served, published in DNS, described in its status, and unpublished before it goes', async () => {
      const dns = new DnsClient({ servers: [{ host: bind.host, port: bind.port }] });
      const lookup = (name: string) =>
        dns.resolveSrv(name).then(
          (a) => a.records.map((r) => `${r.priority} ${r.weight} ${r.port} ${r.name}`),
          (e: NodeJS.ErrnoException) => e.code,
        );
      // The key name comes from the Secret, as `tsig-keygen` users would store it.
      cluster.api.create({
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: 'dns-tsig', namespace: NS },
        data: { secret: b64(bind.secret), keyName: b64(bind.keyName) },
      });
      cluster.operator = await startOperator(cluster.api, {
        build: (md, ctx) => buildMailDomain(md, { ...ctx, image: IMAGE }),
        identity: 'op-0',
        leaderElection: {
          namespace: RELEASE_NAMESPACE,
          leaseDurationMs: 3000,
          renewDeadlineMs: 2000,
          retryPeriodMs: 500,
        },
      });
      cluster.api.create(
        mailDomain('example', NS, {
          domain: 'example.test',
          ingress: { className: 'nginx', tls: { certManager: { issuer: 'letsencrypt' } } },
          dns: {
            mode: 'rfc2136',
            ttl: 600,
            rfc2136: { server: `${bind.host}:${bind.port}`, tsigSecretRef: { name: 'dns-tsig' } },
          },
        }),
      );
      const get = () => cluster.api.get(MD_API, 'MailDomain', NS, 'example');

      // Built and applied; DNS published; not Ready while no pod runs.
      await eventually(() => {
        const md = get();
        expect((md?.metadata as JsonObject).finalizers).toEqual([DNS_FINALIZER]);
        expect(condition(md, 'DNSRecordsReady')).toMatchObject({ status: 'True', reason: 'RecordsUpdated' });
        expect(condition(md, 'Ready')).toMatchObject({
          status: 'False',
          message: 'waiting for AuthServer, Mailbox, Webmail',
        });
      });
      expect(await lookup('_federizer._as._tcp.example.test')).toEqual(['0 0 443 as.example.test']);
      expect(await lookup('_federizer._rs._tcp.example.test')).toEqual(['0 0 443 mail.example.test']);
      expect((await dns.resolveSrv('_federizer._as._tcp.example.test')).ttl).toBe(600);

      makeDeploymentsAvailable(cluster.api, NS);
      const ready = await eventually(() => {
        const md = get();
        expect(condition(md, 'Ready')).toMatchObject({ status: 'True', reason: 'Ready' });
        return md!;
      });
      const status = ready.status as JsonObject;
      expect(status.urls).toEqual({
        issuer: 'https://as.example.test',
        mailbox: 'https://mail.example.test',
        webmail: 'https://webmail.example.test',
      });
      expect(status.dnsRecords).toEqual([
        {
          name: '_federizer._as._tcp.example.test',
          port: 443,
          priority: 0,
          target: 'as.example.test',
          ttl: 600,
          type: 'SRV',
          weight: 0,
        },
        {
          name: '_federizer._rs._tcp.example.test',
          port: 443,
          priority: 0,
          target: 'mail.example.test',
          ttl: 600,
          type: 'SRV',
          weight: 0,
        },
      ]);
      // The whole object, status included, as the CRD's schema (unknown fields refused) and CEL rules accept it.
      expect(manifestIssues(ready)).toEqual([]);
      for (const c of ['AuthServerReady', 'MailboxReady', 'WebmailReady'])
        expect(condition(ready, c), c).toMatchObject({ status: 'True', message: '1/1 replicas available' });

      // The objects the real builder makes, with the operator's image and owned by the MailDomain.
      const uid = (ready.metadata as JsonObject).uid;
      const auth = cluster.api.get('apps/v1', 'Deployment', NS, 'example-auth')!;
      const container = (((auth.spec as JsonObject).template as JsonObject).spec as JsonObject)
        .containers as JsonObject[];
      expect(container[0]).toMatchObject({ image: IMAGE, args: ['auth'] });
      expect(((auth.metadata as JsonObject).ownerReferences as JsonObject[])[0]).toMatchObject({ uid });

      // The generated Secrets: created once each, and never again, whatever reconciles follow.
      const generated = ['example-admin-token', 'example-auth-cookie-keys', 'example-mta-key'];
      const secretPosts = () =>
        cluster.api.requests.filter((r) => r.method === 'POST' && r.path === `/api/v1/namespaces/${NS}/secrets`);
      expect(secretPosts().map((r) => ((r.body as JsonObject).metadata as JsonObject).name)).toEqual(generated);
      const values = generated.map((n) => cluster.api.get('v1', 'Secret', NS, n)!.data);
      const configHash = () =>
        (
          (
            (
              (cluster.api.get('apps/v1', 'Deployment', NS, 'example-mailbox')!.spec as JsonObject)
                .template as JsonObject
            ).metadata as JsonObject
          ).annotations as JsonObject
        )['federizer.io/config-hash'];
      const hashBefore = configHash();
      cluster.api.mergePatch(MD_API, 'MailDomain', NS, 'example', { spec: { logLevel: 'debug' } });
      await eventually(() => {
        expect((get()!.status as JsonObject).observedGeneration).toBe(2);
        expect(configHash()).not.toBe(hashBefore);
      });
      expect(secretPosts()).toHaveLength(3);
      expect(generated.map((n) => cluster.api.get('v1', 'Secret', NS, n)!.data)).toEqual(values);
      // Unchanged records are not sent again (a real server returns the status' keys sorted: still the same).
      expect(bind.log().match(/adding an RR at '_federizer\._as\._tcp\.example\.test' SRV/g)).toHaveLength(1);

      // Every manifest the runtime sent, applied or created, is one an API server accepts.
      const sent = cluster.api.requests
        .filter(
          (r) =>
            (r.contentType === 'application/apply-patch+yaml' || r.method === 'POST') &&
            !/\/(events|leases)$/.test(r.path),
        )
        .map((r) => r.body as JsonObject);
      const kinds = new Set(sent.map((o) => `${o.kind}/${(o.metadata as JsonObject).name}`));
      expect([...kinds].sort()).toEqual([
        'ConfigMap/example-auth',
        'ConfigMap/example-mailbox',
        'ConfigMap/example-webmail',
        'Deployment/example-auth',
        'Deployment/example-mailbox',
        'Deployment/example-webmail',
        'Ingress/example',
        'PersistentVolumeClaim/example-auth-data',
        'PersistentVolumeClaim/example-mailbox-data',
        'Secret/example-admin-token',
        'Secret/example-auth-cookie-keys',
        'Secret/example-mta-key',
        'Service/example-auth',
        'Service/example-mailbox',
        'Service/example-webmail',
        'ServiceMonitor/example',
      ]);
      for (const o of sent) expect(manifestIssues(o), `${o.kind}/${(o.metadata as JsonObject).name}`).toEqual([]);
      // And every request at all, the Lease's included, is one the chart's RBAC grants.
      // A renewal comes every retryPeriodMs (500 ms): a fast run gets here before the first one.
      await eventually(() =>
        expect(
          cluster.api.requests.some((r) => r.path.endsWith('/leases/federizer-operator') && r.method === 'PUT'),
        ).toBe(true),
      );
      expect(await rbacViolations(cluster.api.requests)).toEqual([]);

      // Deletion: removing the finalizer fails until the fault is cleared, so the moment between is observable
      // however slowly this test runs (one failure only was retried, on a loaded machine, before the check).
      cluster.api.inject({
        match: /^PATCH \/apis\/federizer\.io\/v1alpha1\/namespaces\/mail\/maildomains\/example\?/,
        status: 500,
        message: 'injected: etcd is slow',
        times: Number.POSITIVE_INFINITY,
      });
      cluster.api.delete(MD_API, 'MailDomain', NS, 'example');
      await eventually(() => expect(cluster.api.requests.some((r) => r.status === 500)).toBe(true));
      // The records are gone from BIND while the finalizer still holds the MailDomain.
      expect((get()!.metadata as JsonObject).finalizers).toEqual([DNS_FINALIZER]);
      expect(await lookup('_federizer._as._tcp.example.test')).toBe('ENOTFOUND');
      expect(await lookup('_federizer._rs._tcp.example.test')).toBe('ENOTFOUND');
      cluster.api.clearFaults();
      // Then the finalizer goes, and the garbage collector takes what the MailDomain owned, but not the mail.
      await eventually(() => expect(get()).toBeUndefined());
      expect(cluster.api.list('apps/v1', 'Deployment', NS)).toEqual([]);
      expect(cluster.api.list('v1', 'PersistentVolumeClaim', NS).map((c) => (c.metadata as JsonObject).name)).toEqual([
        'example-auth-data',
        'example-mailbox-data',
      ]);
    });
  },
);

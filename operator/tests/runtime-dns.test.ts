/**
 * A MailDomain in rfc2136 mode: the operator adds its finalizer, publishes the SRV records with TSIG-signed
 * updates, and on deletion removes them before it lets the finalizer go. Against a real BIND 9 when
 * `named` is installed; the ordering is also checked with a recording DnsUpdater, which needs no server.
 */
import { DnsClient } from '@federizer/common';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DNS_FINALIZER, type DnsUpdater } from '../src/runtime/index.js';
import type { JsonObject } from './fake-apiserver.js';
import { findNamed, startBind, type RunningBind } from './helpers/bind.js';
import { condition, eventually, mailDomain, MD_API, startOperator, testBuilder } from './helpers/runtime-harness.js';
import { useFakeApiServer } from './helpers/operator-fixture.js';

const named = findNamed();

const NS = 'mail';
const cluster = useFakeApiServer();

const get = () => cluster.api.get(MD_API, 'MailDomain', NS, 'example');
const b64 = (s: string) => Buffer.from(s).toString('base64');
const rfc2136Spec = (server: string) => ({
  domain: 'example.test',
  dns: {
    mode: 'rfc2136',
    rfc2136: { server, zone: 'example.test', tsigKeyName: 'federizer-operator', tsigSecretRef: { name: 'dns-tsig' } },
  },
});

// Skipped only when `named` is absent, with the reason in the suite's name.
describe.skipIf(!named.path)(`with a real BIND 9${named.reason ? ` (skipped: ${named.reason})` : ''}`, () => {
  let bind: RunningBind;
  beforeEach(async () => {
    bind = await startBind({ zone: 'example.test', namedPath: named.path! });
  });
  afterEach(async () => {
    await bind.stop();
  });

  it('publishes the records, and deletes them from BIND before the finalizer is removed', async () => {
    const dns = new DnsClient({ servers: [{ host: bind.host, port: bind.port }] });
    const lookup = (name: string) =>
      dns.resolveSrv(name).then(
        (a) => a.records.map((r) => `${r.port} ${r.name}`),
        (e: NodeJS.ErrnoException) => e.code,
      );
    cluster.api.create({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'dns-tsig', namespace: NS },
      data: { secret: b64(bind.secret) },
    });
    cluster.operator = await startOperator(cluster.api, { build: testBuilder() });
    cluster.api.create(mailDomain('example', NS, rfc2136Spec(`${bind.host}:${bind.port}`)));
    await eventually(() => {
      const md = get();
      expect((md?.metadata as JsonObject).finalizers).toEqual([DNS_FINALIZER]);
      expect(condition(md, 'DNSRecordsReady')).toMatchObject({ status: 'True', reason: 'RecordsUpdated' });
    });
    expect(await lookup('_federizer._as._tcp.example.test')).toEqual(['443 as.example.test']);
    expect(await lookup('_federizer._rs._tcp.example.test')).toEqual(['443 mail.example.test']);

    // A wrong key: BIND refuses the deletion, so the MailDomain must stay, finalizer and records too.
    cluster.api.mergePatch('v1', 'Secret', NS, 'dns-tsig', {
      data: { secret: Buffer.alloc(32, 1).toString('base64') },
    });
    cluster.api.delete(MD_API, 'MailDomain', NS, 'example');
    await eventually(() =>
      expect(cluster.api.list('events.k8s.io/v1', 'Event', NS).map((e) => e.reason)).toContain(
        'DNSRecordsDeleteFailed',
      ),
    );
    expect((get()?.metadata as JsonObject).deletionTimestamp).toEqual(expect.any(String));
    expect(await lookup('_federizer._as._tcp.example.test')).toEqual(['443 as.example.test']);

    // The right key again: the records go, then the finalizer, then the object.
    cluster.api.mergePatch('v1', 'Secret', NS, 'dns-tsig', { data: { secret: b64(bind.secret) } });
    await eventually(() => expect(get()).toBeUndefined());
    expect(await lookup('_federizer._as._tcp.example.test')).toBe('ENOTFOUND');
    expect(await lookup('_federizer._rs._tcp.example.test')).toBe('ENOTFOUND');
    expect(bind.log()).toMatch(/deleting rrset at '_federizer\._rs\._tcp\.example\.test' SRV/);
  });
});

describe('with a recording DNS updater', () => {
  it('sends the deletion while the finalizer still holds the object, and only then removes it', async () => {
    const calls: string[] = [];
    const updater: DnsUpdater = {
      async replaceSrvRecords(records, alsoDelete) {
        calls.push(`replace ${records.map((r) => r.name).join(',')} delete [${alsoDelete.join(',')}]`);
      },
      async deleteSrvRecords(names) {
        const md = get();
        calls.push(`delete ${names.join(',')} finalizers=${JSON.stringify((md?.metadata as JsonObject).finalizers)}`);
      },
    };
    cluster.operator = await startOperator(cluster.api, { build: testBuilder(), dnsUpdater: async () => updater });
    cluster.api.create(mailDomain('example', NS, rfc2136Spec('192.0.2.53')));
    await eventually(() => expect(condition(get(), 'DNSRecordsReady')?.status).toBe('True'));
    // A resync-like reconcile with unchanged records sends nothing more.
    cluster.api.mergePatch(MD_API, 'MailDomain', NS, 'example', { metadata: { labels: { touched: 'yes' } } });
    await new Promise((r) => setTimeout(r, 300));
    cluster.api.delete(MD_API, 'MailDomain', NS, 'example');
    await eventually(() => expect(get()).toBeUndefined());
    expect(calls).toEqual([
      'replace _federizer._as._tcp.example.test,_federizer._rs._tcp.example.test delete []',
      `delete _federizer._as._tcp.example.test,_federizer._rs._tcp.example.test finalizers=["${DNS_FINALIZER}"]`,
    ]);
  });

  it('says which setting is wrong in the status when the TSIG Secret is missing', async () => {
    cluster.operator = await startOperator(cluster.api, { build: testBuilder() });
    cluster.api.create(mailDomain('example', NS, rfc2136Spec('192.0.2.53:53')));
    await eventually(() =>
      expect(condition(get(), 'DNSRecordsReady')).toMatchObject({
        status: 'False',
        reason: 'InvalidDNSSettings',
        message: 'the TSIG Secret mail/dns-tsig does not exist',
      }),
    );
  });
});

/**
 * RFC 2136 updates signed with TSIG against a real BIND 9 `named` on loopback (Debian package bind9, which
 * .ci/run installs); the results are read back with DnsClient from @federizer/common.
 */
import { DnsClient } from '@federizer/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Rfc2136Client, Rfc2136Error, tsigKey, TsigError, type SrvRecordSpec } from '../src/dns/index.js';
import { findNamed, startBind, type RunningBind } from './helpers/bind.js';

const named = findNamed();

// Skipped only when `named` is absent, with the reason in the suite's name.
describe.skipIf(!named.path)(`RFC 2136 against BIND 9${named.reason ? ` (skipped: ${named.reason})` : ''}`, () => {
  let bind: RunningBind;
  let client: Rfc2136Client;
  let dns: DnsClient;

  beforeAll(async () => {
    bind = await startBind({ zone: 'example.test', namedPath: named.path! });
    client = new Rfc2136Client({
      host: bind.host,
      port: bind.port,
      zone: bind.zone,
      key: tsigKey(bind.keyName, 'hmac-sha256', bind.secret),
    });
    dns = new DnsClient({ servers: [{ host: bind.host, port: bind.port }] });
  });
  afterAll(async () => {
    await bind?.stop();
  });

  const srv = (name: string, target: string, port = 443, priority = 10, weight = 5): SrvRecordSpec => ({
    name,
    target,
    port,
    priority,
    weight,
    ttl: 120,
  });
  const lookup = async (name: string) => {
    try {
      const answer = await dns.resolveSrv(name);
      return answer.records.map((r) => `${r.priority} ${r.weight} ${r.port} ${r.name}`).sort();
    } catch (e) {
      return (e as NodeJS.ErrnoException).code;
    }
  };

  it('adds SRV records, then replaces the whole RRset, atomically per message', async () => {
    await client.replaceSrvRecords([
      srv('_federizer._as._tcp.example.test', 'as.example.test'),
      srv('_federizer._rs._tcp.example.test', 'mail-a.example.test', 8443),
      srv('_federizer._rs._tcp.example.test', 'mail-b.example.test', 8443, 20),
    ]);
    expect(await lookup('_federizer._as._tcp.example.test')).toEqual(['10 5 443 as.example.test']);
    expect(await lookup('_federizer._rs._tcp.example.test')).toEqual([
      '10 5 8443 mail-a.example.test',
      '20 5 8443 mail-b.example.test',
    ]);
    const answer = await dns.resolveSrv('_federizer._as._tcp.example.test');
    expect(answer.ttl).toBe(120);
    await client.replaceSrvRecords([srv('_federizer._rs._tcp.example.test', 'mail-c.example.test', 443)]);
    expect(await lookup('_federizer._rs._tcp.example.test')).toEqual(['10 5 443 mail-c.example.test']);
    expect(await lookup('_federizer._as._tcp.example.test')).toEqual(['10 5 443 as.example.test']);
  });

  it('deletes RRsets, and deleting what is absent is no error', async () => {
    await client.replaceSrvRecords([srv('_federizer._as._tcp.gone.example.test', 'as.example.test')]);
    await client.deleteSrvRecords(['_federizer._as._tcp.gone.example.test']);
    expect(await lookup('_federizer._as._tcp.gone.example.test')).toBe('ENOTFOUND');
    await client.deleteSrvRecords(['_federizer._as._tcp.gone.example.test']);
  });

  it('refuses a wrong secret (BIND answers BADSIG) and an unknown key (BADKEY), changing nothing', async () => {
    await client.replaceSrvRecords([srv('_federizer._as._tcp.keep.example.test', 'as.example.test')]);
    const wrong = new Rfc2136Client({
      ...client.server,
      key: tsigKey(bind.keyName, 'hmac-sha256', Buffer.alloc(32, 9).toString('base64')),
    });
    const badsig = await wrong.deleteSrvRecords(['_federizer._as._tcp.keep.example.test']).catch((e: unknown) => e);
    expect(badsig).toBeInstanceOf(TsigError);
    expect((badsig as TsigError).code).toBe('BADSIG');
    const unknown = new Rfc2136Client({
      ...client.server,
      key: tsigKey('nobody', 'hmac-sha256', Buffer.alloc(32, 9).toString('base64')),
    });
    const badkey = await unknown.deleteSrvRecords(['_federizer._as._tcp.keep.example.test']).catch((e: unknown) => e);
    expect((badkey as TsigError).code).toBe('BADKEY');
    expect(await lookup('_federizer._as._tcp.keep.example.test')).toEqual(['10 5 443 as.example.test']);
  });

  it('reports the RCODE of a refused update: a zone the server does not serve (NOTAUTH)', async () => {
    const elsewhere = new Rfc2136Client({ ...client.server, zone: 'not-served.test' });
    const error = await elsewhere
      .replaceSrvRecords([srv('_federizer._as._tcp.not-served.test', 'as.not-served.test')])
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Rfc2136Error);
    expect((error as Rfc2136Error).rcode).toBe('NOTAUTH');
  });

  it('refuses, before sending, a record outside the zone or with a port out of range', async () => {
    await expect(client.replaceSrvRecords([srv('_federizer._as._tcp.example.org', 'as.example.org')])).rejects.toThrow(
      'SRV record _federizer._as._tcp.example.org is outside zone example.test',
    );
    await expect(
      client.replaceSrvRecords([srv('_federizer._as._tcp.example.test', 'as.example.test', 70000)]),
    ).rejects.toThrow('port 70000 is not an integer from 0 to 65535');
  });
});

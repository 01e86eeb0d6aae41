import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsClient, createHttpClient } from '@federizer/common';
import { Discovery, type HttpGet } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { startFederation, type Federation } from './harness.js';

describe('the test federation', () => {
  let fed: Federation;
  beforeAll(async () => {
    fed = await startFederation(['example.com', 'example.net'], { database: testDatabases()[0]!.create });
  });
  afterAll(() => fed.close());

  it('PROTOCOL §8: DNS SRV leads to each AS, whose RFC 8414 issuer is authoritative, and to the MTA client id', async () => {
    const http = createHttpClient({ dev: true });
    const discovery = new Discovery({
      resolveSrv: new DnsClient({ servers: [fed.dns.address] }).resolveSrv,
      httpGet: ((url, init) => http.fetch(url, init)) as HttpGet,
      allowHttp: true,
    });
    for (const d of Object.values(fed.domains)) {
      expect(await discovery.issuerFor(d.domain)).toBe(d.issuer);
      expect(await discovery.mtaClientIdFor(d.domain)).toBe(`mta.${d.domain}`);
    }
    await http.close();
  });
});

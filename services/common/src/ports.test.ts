import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort, freePorts, isFetchBadPort } from './ports.js';

const listen = (port: number) =>
  new Promise<() => Promise<void>>((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ port, host: '127.0.0.1', exclusive: true }, () =>
      resolve(() => new Promise((done) => server.close(() => done()))),
    );
  });

describe('freePorts', () => {
  it('chooses distinct ports below the ephemeral range, each of which can then be listened on', async () => {
    // Linux tells its ephemeral range; client sockets take their local ports from there, never below.
    const ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    const ports = await freePorts(12);
    expect(new Set(ports).size).toBe(12);
    for (const port of ports) {
      expect(port).toBeGreaterThanOrEqual(10_000);
      expect(port).toBeLessThan(ephemeralLow);
    }
    const closers = await Promise.all(ports.map(listen));
    await Promise.all(closers.map((c) => c()));
  });

  it("never chooses a port browsers and fetch refuse to connect to (the Fetch standard's bad ports)", async () => {
    expect(isFetchBadPort(10080)).toBe(true);
    expect(isFetchBadPort(6000)).toBe(true);
    expect(isFetchBadPort(10081)).toBe(false);
    await expect(freePorts(1, { range: [10080, 10080] })).rejects.toThrow('no 1 free ports between 10080 and 10080');
  });

  it('leaves out a port that is taken, and says so when too few are left', async () => {
    const taken = await freePort();
    const close = await listen(taken);
    try {
      // Each call starts at a random place in the range, so 50 calls start on the taken port many times.
      for (let i = 0; i < 50; i++) expect(await freePorts(1, { range: [taken, taken + 3] })).not.toContain(taken);
      await expect(freePorts(1, { range: [taken, taken] })).rejects.toThrow(
        `no 1 free ports between ${taken} and ${taken} on 127.0.0.1`,
      );
    } finally {
      await close();
    }
  });

  it('with udp, gives a port free for UDP too (a DNS server listens on both)', async () => {
    const port = await freePort({ udp: true });
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, '127.0.0.1', () => resolve());
    });
    await new Promise<void>((resolve) => socket.close(() => resolve()));
  });
});

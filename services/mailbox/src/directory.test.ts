/**
 * The user directory against a real HTTP server standing in for the AS admin API, with a frozen clock:
 * which answers it keeps (an existing user, briefly), which it never keeps (an unknown or disabled one),
 * and that an error answer is neither kept nor left holding its connection.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createHttpClient, type HttpClient } from '@federizer/common';
import { UserDirectory } from './directory.js';

const TOKEN = 'admin-token';

describe('UserDirectory', () => {
  let server: Server;
  let adminUrl: string;
  let http: HttpClient;
  /** address → the user's `disabled`; absent: 404. */
  const users = new Map<string, boolean>();
  /** Requests per address, and the Authorization header of the last one. */
  const asked = new Map<string, number>();
  let authorization: string | undefined;
  /** Addresses answered 500 with a long body, and how many such answers the client hung up on. */
  const failing = new Set<string>();
  let cutOff = 0;
  /** Holds answers back until released, to catch concurrent questions in flight. */
  let gate: Promise<void> | undefined;
  let clock = 1_000_000;

  beforeAll(async () => {
    server = createServer((req, res) => {
      const address = decodeURIComponent((req.url ?? '').replace('/admin/v1/users/', ''));
      asked.set(address, (asked.get(address) ?? 0) + 1);
      authorization = req.headers.authorization;
      const answer = () => {
        if (failing.has(address)) {
          // Longer than the client reads of an answer it drops: the connection must be closed, not left busy.
          let left = 1024; // 64 MiB in 64 KiB pieces, more than socket buffers hold
          res.on('close', () => {
            if (left > 0) cutOff++;
          });
          res.writeHead(500, { 'content-type': 'text/plain' });
          const more = () => {
            while (left > 0) {
              left--;
              if (!res.write(Buffer.alloc(64 * 1024, 0x78))) return void res.once('drain', more);
            }
            res.end();
          };
          more();
        } else if (!users.has(address)) {
          res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not_found"}');
        } else {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ address, displayName: 'Someone', disabled: users.get(address) }));
        }
      };
      if (gate) void gate.then(answer);
      else answer();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    adminUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));
  beforeEach(() => {
    http = createHttpClient({ dev: true });
    users.clear();
    asked.clear();
    failing.clear();
    cutOff = 0;
    gate = undefined;
  });
  afterEach(() => http.close());

  const directory = (options: { ttlMs?: number; maxEntries?: number } = {}) =>
    new UserDirectory(adminUrl, TOKEN, http, () => clock, options.ttlMs, options.maxEntries);

  it('PROTOCOL §5.9: an existing user exists; an unknown or a disabled one does not', async () => {
    users.set('bob@example.net', false);
    users.set('eve@example.net', true);
    const dir = directory();
    expect(await dir.exists('bob@example.net')).toBe(true);
    expect(await dir.exists('eve@example.net')).toBe(false);
    expect(await dir.exists('nobody@example.net')).toBe(false);
    expect(authorization).toBe(`Bearer ${TOKEN}`);
  });

  it('keeps "exists" for ttlMs, then asks again (a user disabled meanwhile stops receiving)', async () => {
    users.set('bob@example.net', false);
    const dir = directory({ ttlMs: 5_000 });
    expect(await dir.exists('bob@example.net')).toBe(true);
    users.set('bob@example.net', true);
    clock += 4_999;
    expect(await dir.exists('bob@example.net')).toBe(true);
    expect(asked.get('bob@example.net')).toBe(1);
    clock += 1;
    expect(await dir.exists('bob@example.net')).toBe(false);
    expect(asked.get('bob@example.net')).toBe(2);
  });

  it('never keeps "does not exist": a user created after a refusal receives the next mail', async () => {
    const dir = directory();
    expect(await dir.exists('new@example.net')).toBe(false);
    users.set('new@example.net', false);
    expect(await dir.exists('new@example.net')).toBe(true);
    users.set('eve@example.net', true);
    expect(await dir.exists('eve@example.net')).toBe(false);
    users.set('eve@example.net', false); // re-enabled
    expect(await dir.exists('eve@example.net')).toBe(true);
  });

  it('asks once for concurrent questions about one address', async () => {
    users.set('bob@example.net', false);
    let release!: () => void;
    gate = new Promise((resolve) => (release = resolve));
    const dir = directory();
    const answers = Array.from({ length: 8 }, () => dir.exists('bob@example.net'));
    await expect.poll(() => asked.get('bob@example.net')).toBe(1);
    release();
    expect(await Promise.all(answers)).toEqual(Array(8).fill(true));
    expect(asked.get('bob@example.net')).toBe(1);
  });

  it('fails on an error answer, keeps nothing, and the client serves the next question', async () => {
    users.set('bob@example.net', false);
    failing.add('bob@example.net');
    const dir = directory();
    await expect(dir.exists('bob@example.net')).rejects.toThrow('the AS admin API answered 500 for bob@example.net');
    // The 64 MiB answer was not read to its end: its connection was closed, which frees the server too.
    await expect.poll(() => cutOff).toBe(1);
    failing.clear();
    expect(await dir.exists('bob@example.net')).toBe(true);
    expect(asked.get('bob@example.net')).toBe(2);
  });

  it('holds at most maxEntries answers, dropping the oldest', async () => {
    for (const name of ['a', 'b', 'c']) users.set(`${name}@example.net`, false);
    const dir = directory({ maxEntries: 2 });
    for (const name of ['a', 'b', 'c']) await dir.exists(`${name}@example.net`);
    for (const name of ['b', 'c', 'a']) await dir.exists(`${name}@example.net`);
    expect(Object.fromEntries(asked)).toEqual({ 'a@example.net': 2, 'b@example.net': 1, 'c@example.net': 1 });
  });
});

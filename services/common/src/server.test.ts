/**
 * `listen`, the HTTP server every service runs, under clients that misbehave. The rule: bad input or a
 * misbehaving client gets a clear, specific error and loses nothing; nothing grows without bound. A client
 * that falls silent must not hold a connection (its descriptor, what its request holds) forever; a client
 * that is merely slow, but keeps sending, must never be cut.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { IDLE_TIMEOUT_MS, listen, type RunningServer } from './server.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A raw connection, and everything the server sends on it until it closes. */
function rawClient(port: number): { socket: Socket; connected: Promise<void>; answer: Promise<string> } {
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  let data = '';
  socket.on('data', (chunk: Buffer) => (data += chunk.toString('latin1')));
  return {
    socket,
    connected: new Promise((resolve) => socket.once('connect', () => resolve())),
    answer: new Promise((resolve) => socket.once('close', () => resolve(data))),
  };
}

/** Counts a request body's bytes and answers how many arrived, or records that it was cut. */
function countingHandler(seen: { aborted: number; received: number[] }) {
  return (req: IncomingMessage, res: ServerResponse) => {
    let n = 0;
    req.on('data', (chunk: Buffer) => (n += chunk.length));
    req.on('end', () => {
      seen.received.push(n);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ received: n }));
    });
    req.on('close', () => {
      if (!req.complete) seen.aborted++;
    });
  };
}

describe('listen: timeouts and keep-alive (the rule: a misbehaving client gets a clear error and holds nothing forever)', () => {
  let running: RunningServer | undefined;
  afterEach(async () => {
    await running?.close(100);
    running = undefined;
  });

  it('closes a connection silent for about 120 s by default; bounds no request’s whole duration; keeps the other timeouts', async () => {
    running = await listen((_req, res) => void res.end());
    expect(IDLE_TIMEOUT_MS).toBe(120_000);
    expect(running.server.timeout).toBe(120_000);
    // Above the longest long poll (50 s), so a waiting poll is never taken for a silent client.
    expect(running.server.timeout).toBeGreaterThan(50_000);
    expect(running.server.requestTimeout).toBe(0);
    expect(running.server.headersTimeout).toBe(60_000);
    expect(running.server.keepAliveTimeout).toBe(5_000);
    await expect(listen((_req, res) => void res.end(), { idleTimeoutMs: 0 })).rejects.toThrow(/idleTimeoutMs/);
  });

  it.runIf(process.platform === 'linux')(
    'enables TCP keep-alive on every accepted socket (its timer shows in /proc/net/tcp)',
    async () => {
      running = await listen((_req, res) => void res.end());
      const { socket, connected } = rawClient(running.port);
      await connected;
      await sleep(50);
      const hex = (n: number) => n.toString(16).toUpperCase().padStart(4, '0');
      // The server's end of this connection: local port the server's, remote port the client's.
      const row = readFileSync('/proc/net/tcp', 'utf8')
        .split('\n')
        .map((line) => line.trim().split(/\s+/))
        .find((f) => f[1]?.endsWith(`:${hex(running!.port)}`) && f[2]?.endsWith(`:${hex(socket.localPort!)}`));
      socket.destroy();
      expect(row, 'the server side of the connection in /proc/net/tcp').toBeDefined();
      // "tr:when": timer 2 is the keep-alive timer of an idle established socket (1 would be a retransmit).
      expect(row![5]!.split(':')[0]).toBe('02');
    },
  );

  it('a client silent halfway through its body gets 408 request_timeout and the connection is closed; the handler sees it cut', async () => {
    const seen = { aborted: 0, received: [] as number[] };
    running = await listen(countingHandler(seen), { idleTimeoutMs: 500 });
    const { socket, connected, answer } = rawClient(running.port);
    await connected;
    const started = Date.now();
    socket.write(
      'POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n',
    );
    socket.write(Buffer.alloc(400, 1));
    // The client now says nothing more; the server closes the connection, the client does not.
    const text = await answer;
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(450);
    expect(elapsed).toBeLessThan(5_000);
    expect(text).toMatch(/^HTTP\/1\.1 408 /);
    expect(text.toLowerCase()).toContain('connection: close');
    const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) as { error: string; error_description: string };
    expect(body.error).toBe('request_timeout');
    expect(body.error_description).toMatch(/^nothing arrived for 500 ms in the middle of the request/);
    await sleep(50);
    expect(seen).toEqual({ aborted: 1, received: [] });
  });

  it('an upload that keeps moving is never cut, however long it takes: 4 s at a chunk every 200 ms with a 500 ms idle timeout', async () => {
    const seen = { aborted: 0, received: [] as number[] };
    running = await listen(countingHandler(seen), { idleTimeoutMs: 500 });
    const { socket, connected, answer } = rawClient(running.port);
    await connected;
    const chunks = 20;
    const size = 1000;
    socket.write(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${chunks * size}\r\nConnection: close\r\n\r\n`);
    for (let i = 0; i < chunks; i++) {
      await sleep(200);
      socket.write(Buffer.alloc(size, i));
    }
    const text = await answer;
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(text).toContain(`{"received":${chunks * size}}`);
    expect(seen).toEqual({ aborted: 0, received: [chunks * size] });
  });

  it('a request received whole is answered even when the service takes longer than the idle timeout (that silence is the server’s)', async () => {
    running = await listen(
      (req, res) => {
        req.resume();
        req.on('end', () => setTimeout(() => res.end('late but whole'), 1_200));
      },
      { idleTimeoutMs: 400 },
    );
    const res = await fetch(`${running.url}/slow`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('late but whole');
  });

  it('a client that stops reading an answer already begun is disconnected once nothing moves', async () => {
    let closedWhileWriting = false;
    running = await listen(
      (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        const chunk = Buffer.alloc(256 * 1024);
        const pump = () => {
          while (!res.destroyed && res.write(chunk));
        };
        res.on('drain', pump);
        res.on('close', () => (closedWhileWriting = !res.writableFinished));
        pump();
      },
      { idleTimeoutMs: 400 },
    );
    const { socket, connected } = rawClient(running.port);
    await connected;
    socket.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n');
    await sleep(100);
    socket.pause(); // the client stops reading; the server's writes back up, then nothing moves
    await vi.waitFor(() => expect(closedWhileWriting).toBe(true), { timeout: 5_000, interval: 50 });
    socket.destroy();
  });

  it('an idle kept-alive connection still closes after keepAliveTimeout (5 s), not the idle timeout', async () => {
    running = await listen((_req, res) => void res.end('ok'));
    const { socket, connected, answer } = rawClient(running.port);
    await connected;
    socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    const started = Date.now();
    const text = await answer;
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(Date.now() - started).toBeGreaterThan(4_000);
    expect(Date.now() - started).toBeLessThan(8_000);
  }, 15_000);
});

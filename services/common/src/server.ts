/** Listening and graceful shutdown, shared by the services. */
import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * How long a connection may stay silent, no byte arriving or leaving, before it is closed: a client that
 * stops halfway through an upload, or stops reading an answer, gives back its connection, its file
 * descriptor and what its request holds (an upload's temporary file). It bounds silence, not duration: an
 * upload or a download that keeps moving is never cut, however long it takes. Long polls wait at most 50 s.
 */
export const IDLE_TIMEOUT_MS = 120_000;
/** TCP keep-alive probes begin after this much silence: a peer that vanished without a FIN or RST is found. */
export const TCP_KEEPALIVE_DELAY_MS = 60_000;

export interface ListenOptions {
  host?: string;
  port?: number;
  /** Silence (ms) after which a connection is closed; `IDLE_TIMEOUT_MS` by default. Tests shorten it. */
  idleTimeoutMs?: number;
}

export interface RunningServer {
  readonly server: Server;
  /** `http://host:port` as bound (a port of 0 becomes the real one). */
  readonly url: string;
  readonly port: number;
  /** Stops accepting, lets requests in flight finish for up to `graceMs`, then closes what is left. */
  close(graceMs?: number): Promise<void>;
}

export async function listen(handler: RequestListener, options: ListenOptions = {}): Promise<RunningServer> {
  const idleTimeoutMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
  if (!Number.isSafeInteger(idleTimeoutMs) || idleTimeoutMs < 1)
    throw new TypeError('idleTimeoutMs must be a whole number of ms >= 1');
  const server = createServer(
    // SO_KEEPALIVE on every accepted socket, before any byte is read.
    { keepAlive: true, keepAliveInitialDelay: TCP_KEEPALIVE_DELAY_MS },
    handler,
  );
  // Long polls and large streams are legitimate: no bound on a request's whole duration, only on silence.
  server.requestTimeout = 0;
  server.headersTimeout = 60_000;
  server.keepAliveTimeout = 5_000;
  server.timeout = idleTimeoutMs;
  const silence = idleTimeoutMs % 1000 === 0 ? `${idleTimeoutMs / 1000} s` : `${idleTimeoutMs} ms`;
  const sockets = new Set<Socket>();
  /** The exchange each connection is in, if any: what its silence means depends on it. */
  const current = new WeakMap<Socket, { req: IncomingMessage; res: ServerResponse }>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const exchange = { req, res };
    current.set(req.socket, exchange);
    res.once('close', () => {
      if (current.get(req.socket) === exchange) current.delete(req.socket);
    });
  });
  // With a listener here Node leaves the decision to it (its default is to destroy the socket).
  server.on('timeout', (socket: Socket) => {
    const exchange = current.get(socket);
    if (exchange === undefined) return void socket.destroy(); // between requests, or headers that never came
    const { req, res } = exchange;
    if (!req.complete && !res.headersSent) {
      // The client stopped in the middle of its request: say so, then close.
      const body = JSON.stringify({
        error: 'request_timeout',
        error_description: `nothing arrived for ${silence} in the middle of the request, which was abandoned`,
      });
      // Once the answer is out (or after a second, for a client that reads nothing either), the request is
      // destroyed: its handler sees it 'aborted' and ends whatever it was writing, and the socket closes.
      const abandon = () => {
        clearTimeout(cut);
        req.destroy();
        socket.destroy();
      };
      const cut = setTimeout(abandon, 1000);
      cut.unref();
      res.writeHead(408, {
        'Content-Type': 'application/json; charset=utf-8',
        'Content-Length': Buffer.byteLength(body),
        'Cache-Control': 'no-store',
        Connection: 'close',
      });
      res.end(body, abandon);
      return;
    }
    // An answer begun that the client stopped reading: nothing more can be said on this connection.
    if (res.headersSent) {
      req.destroy();
      return void socket.destroy();
    }
    // The request arrived whole and the service is still working on the answer: that silence is ours, not
    // the client's, and the service bounds its own work.
  });
  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const urlHost = host.includes(':') ? `[${host}]` : host;
  return {
    server,
    port,
    url: `http://${urlHost}:${port}`,
    async close(graceMs = 10_000) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const timer = setTimeout(() => {
        for (const socket of sockets) socket.destroy();
      }, graceMs);
      timer.unref();
      await closed;
      clearTimeout(timer);
    },
  };
}

/**
 * Ports to listen on a moment later, chosen where nothing else takes them in the meantime.
 *
 * Listening on port 0 and closing again hands out a port of the ephemeral range, the range the kernel
 * also gives every outgoing connection its local port from. Between that check and the real listen, any
 * client socket on the machine may take the port, and the listen fails with EADDRINUSE (it did in CI, with
 * a dozen test processes connecting at once). The kernel never hands out a port below the ephemeral range
 * by itself, so one chosen there and checked free stays free unless another program picks the very same
 * one at the very same moment; starting at a random place in a range of some 20,000 ports makes that
 * vanishingly rare.
 */
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';

const LOWEST = 10_000;

/**
 * The Fetch standard's "bad ports" (https://fetch.spec.whatwg.org/#port-blocking): browsers and undici's
 * fetch refuse to connect to them ("bad port"), so no service a browser or a fetch must reach may listen on
 * one. 10080 lies in the range ports are chosen from; a test once drew it.
 */
const FETCH_BAD_PORTS: ReadonlySet<number> = new Set([
  1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102, 103, 104, 109, 110,
  111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532,
  540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061,
  6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
]);

/** Whether browsers and fetch refuse `port` (see FETCH_BAD_PORTS). */
export function isFetchBadPort(port: number): boolean {
  return FETCH_BAD_PORTS.has(port);
}

/** Below the default ephemeral ranges of Linux (32768) and of macOS and Windows (49152). */
const DEFAULT_EPHEMERAL_START = 32_768;

/** The first port of the kernel's ephemeral range (Linux tells; elsewhere the common default). */
function ephemeralStart(): number {
  try {
    const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/);
    const port = Number(low);
    return Number.isSafeInteger(port) && port > 0 ? port : DEFAULT_EPHEMERAL_START;
  } catch {
    return DEFAULT_EPHEMERAL_START;
  }
}

function listenTcp(port: number, host: string): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) =>
      err.code === 'EADDRINUSE' || err.code === 'EACCES' ? resolve(undefined) : reject(err),
    );
    server.listen({ port, host, exclusive: true }, () => resolve(server));
  });
}

function udpFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket('udp4');
    socket.once('error', () => {
      socket.close();
      resolve(false);
    });
    socket.bind(port, host, () => socket.close(() => resolve(true)));
  });
}

const close = (server: Server) => new Promise<void>((resolve) => server.close(() => resolve()));

export interface FreePortOptions {
  /** The address the ports will be listened on (default 127.0.0.1). */
  readonly host?: string;
  /** Also free for UDP (a DNS server listens on both). */
  readonly udp?: boolean;
  /** The lowest and highest port to choose from (default: from 10000 to below the ephemeral range). */
  readonly range?: readonly [number, number];
}

/**
 * `count` distinct ports free on `host` now, outside the ephemeral range where it lies high enough to
 * leave room (else from the kernel, as port 0 would).
 */
export async function freePorts(count: number, options: FreePortOptions = {}): Promise<number[]> {
  const host = options.host ?? '127.0.0.1';
  const [low, high] = options.range ?? [LOWEST, Math.min(ephemeralStart(), 49_152) - 1];
  const held: Server[] = [];
  try {
    if (!options.range && high - low < 1_000) {
      // A machine whose ephemeral range starts low: the kernel's choice is the best there is.
      for (let i = 0; i < count; i++) held.push((await listenTcp(0, host))!);
      return held.map((s) => (s.address() as { port: number }).port);
    }
    const span = high - low + 1;
    const ports: number[] = [];
    let candidate = low + Math.floor(Math.random() * span);
    for (let tried = 0; ports.length < count; tried++) {
      if (tried >= span) throw new Error(`no ${count} free ports between ${low} and ${high} on ${host}`);
      candidate = candidate >= high ? low : candidate + 1;
      if (isFetchBadPort(candidate)) continue;
      const server = await listenTcp(candidate, host);
      if (!server) continue;
      if (options.udp && !(await udpFree(candidate, host))) {
        await close(server);
        continue;
      }
      held.push(server);
      ports.push(candidate);
    }
    return ports;
  } finally {
    await Promise.all(held.map(close));
  }
}

/** One port free on `host` now (see `freePorts`). */
export async function freePort(options: FreePortOptions = {}): Promise<number> {
  return (await freePorts(1, options))[0]!;
}

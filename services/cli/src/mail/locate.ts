/**
 * Where the mail CLI asks for the `_federizer` SRV records: the DNS server given with `--dns`; else the one of
 * the local federation that `federizer up` runs, as its `federation.json` says (an error if that federation
 * is not running); else, when no data directory was named and `./.federizer` holds no federation, the
 * system's resolvers, as any mail client on the Internet would.
 */
import { getServers } from 'node:dns';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { federationHolder } from '../federation/state.js';
import { UsageError } from '../io.js';

export interface DnsLocation {
  /** The servers asked, in order (several only for the system's resolvers). */
  readonly servers: readonly { readonly host: string; readonly port: number }[];
  /** Where the address came from, for error messages. */
  readonly source: string;
  /** Whether it is the local federation's (development mode then: http and loopback are allowed). */
  readonly local: boolean;
}

export interface LocateOptions {
  readonly dns?: string;
  readonly dataDir?: string;
}

/** `HOST:PORT` or `[V6]:PORT` with an IP address, since the DNS client asks that server directly. */
export function parseDnsOption(value: string, option = '--dns'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value.trim());
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (host === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new UsageError(`${option} ${JSON.stringify(value)}: expected HOST:PORT, e.g. 127.0.0.1:5353 or [::1]:53`);
  }
  if (isIP(host) === 0) throw new UsageError(`${option} ${JSON.stringify(value)}: the host must be an IP address`);
  return { host, port };
}

/** The directory `federizer up` writes to: `--data-dir`, `FEDERIZER_DATA_DIR`, or `./.federizer`. */
export function dataDirOf(options: LocateOptions, env: NodeJS.ProcessEnv, cwd: string): string {
  return resolve(cwd, options.dataDir ?? env.FEDERIZER_DATA_DIR ?? '.federizer');
}

export async function locateDns(options: LocateOptions, env: NodeJS.ProcessEnv, cwd: string): Promise<DnsLocation> {
  if (options.dns !== undefined) return { servers: [parseDnsOption(options.dns)], source: '--dns', local: false };
  const named = options.dataDir !== undefined || env.FEDERIZER_DATA_DIR !== undefined;
  const file = join(dataDirOf(options, env, cwd), 'federation.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read ${file}: ${(e as Error).message}`);
    if (!named) return systemResolvers();
    throw new UsageError(
      `where is the DNS server that knows the mail domains? give --dns HOST:PORT, or run \`federizer up\` ` +
        `(no ${file}; --data-dir or FEDERIZER_DATA_DIR name another directory)`,
    );
  }
  let dns: unknown;
  try {
    dns = (JSON.parse(text) as { dns?: unknown } | null)?.dns;
  } catch (e) {
    throw new Error(`${file} is not JSON: ${(e as Error).message}`);
  }
  const { host, port } = (dns ?? {}) as { host?: unknown; port?: unknown };
  if (typeof host !== 'string' || isIP(host) === 0 || typeof port !== 'number' || !Number.isInteger(port)) {
    throw new Error(`${file} has no usable "dns": {"host": IP address, "port": number}`);
  }
  // The file stays when `federizer up` stops (it describes the last start); its lock says whether it runs,
  // which spares a wait for a DNS server that is not there.
  if ((await federationHolder(dirname(file))) === undefined) {
    throw new Error(
      `the local federation of ${dirname(file)} is not running (${file} describes its last start): ` +
        'start it with `federizer up` (npm start), or give --dns HOST:PORT',
    );
  }
  return { servers: [{ host, port }], source: file, local: true };
}

function systemResolvers(): DnsLocation {
  const servers = getServers().map((s) => {
    const m = /^\[(.+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s);
    return m ? { host: m[1]!, port: Number(m[2]) } : { host: s, port: 53 };
  });
  if (servers.length === 0) {
    throw new UsageError('this machine has no DNS resolver configured: give --dns HOST:PORT, or run `federizer up`');
  }
  return { servers, source: 'the system resolver', local: false };
}

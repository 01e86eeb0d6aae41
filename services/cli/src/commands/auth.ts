import cluster from 'node:cluster';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { AuthService, readAuthEnv } from '@federizer/auth';
import type { CommandIo } from '../io.js';
import { optionMistake, UsageError } from '../io.js';
import { untilSignal } from '../signals.js';

const HELP = `federizer auth [--workers N|auto]

Runs a mail domain's Authorization Server, configured by the environment:
  FEDERIZER_AUTH_ISSUER        issuer URL (required)
  FEDERIZER_DOMAIN             the mail domain (required)
  FEDERIZER_MAILBOX_RESOURCE   the mailbox client API's resource indicator (required)
  FEDERIZER_AUTH_ADMIN_TOKEN   bearer secret of the admin API, 16 characters or more (required)
  FEDERIZER_AUTH_COOKIE_KEYS   comma-separated cookie keys, newest first (required)
  FEDERIZER_MTA_JWKS           the MTA's public JWKS (private_key_jwt), JSON
  FEDERIZER_MTA_CLIENT_SECRET  the MTA's secret instead (development mode only)
  FEDERIZER_MTA_CLIENT_ID      the MTA's client id (default mta.<domain>); must match the mailbox's
  FEDERIZER_WEBMAIL_CLIENT_ID  the webmail's client id (default webmail); must match the webmail's
  FEDERIZER_AUTH_DATABASE      sqlite:<file> (default sqlite:auth.db) or postgres://...
  FEDERIZER_AUTH_HOST, FEDERIZER_AUTH_PORT, FEDERIZER_AUTH_SIGNING_ALG (ES256, EdDSA, RS256),
  FEDERIZER_AUTH_KEY_ROTATION (e.g. 30d), FEDERIZER_SHARE_WINDOW (e.g. 7d), FEDERIZER_DNS (host:port),
  FEDERIZER_WEBMAIL_REDIRECT_URIS, FEDERIZER_WEBMAIL_POST_LOGOUT_URIS, FEDERIZER_AUTH_CORS_ORIGINS,
  FEDERIZER_DEV=1 (http, loopback peers, client secrets), FEDERIZER_TRUST_PROXY=1 (behind a TLS proxy),
  FEDERIZER_LOG_LEVEL.

--workers N runs N processes sharing the port (node:cluster), to use N cores; "auto" uses one per core.
Every state they share is in the database (sessions, replay records, keys, quotas), so they behave as
one server. A fixed FEDERIZER_AUTH_PORT is needed with more than one worker.
Stops gracefully on SIGINT or SIGTERM.`;

export async function authCommand(args: readonly string[], io: CommandIo): Promise<number> {
  let values: { workers?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: { workers: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }));
  } catch (e) {
    throw optionMistake(e, 'auth');
  }
  if (values.help) {
    io.stdout.write(`${HELP}\n`);
    return 0;
  }
  const workers =
    values.workers === undefined ? 1 : values.workers === 'auto' ? availableParallelism() : Number(values.workers);
  if (!Number.isSafeInteger(workers) || workers < 1 || workers > 64)
    throw new UsageError('--workers is a number from 1 to 64, or auto');
  let settings: ReturnType<typeof readAuthEnv>;
  try {
    settings = readAuthEnv();
  } catch (e) {
    throw new UsageError(`configuration: ${(e as Error).message}\n\n${HELP}`);
  }
  if (workers > 1 && cluster.isPrimary) {
    if (settings.config.port === 0) throw new UsageError('--workers needs a fixed FEDERIZER_AUTH_PORT');
    return runPrimary(workers, io);
  }
  const service = await AuthService.start(settings.config, settings.secrets);
  if (cluster.isWorker) process.send?.({ federizer: 'ready' });
  await untilSignal();
  await service.close();
  // A worker's IPC channel would keep it alive after the service stopped.
  if (cluster.isWorker) process.disconnect();
  return 0;
}

/**
 * The primary starts one worker first, so that it alone migrates the database and makes the first signing
 * key, then the others; it forwards SIGINT/SIGTERM to them and exits when they have all stopped.
 */
async function runPrimary(count: number, io: CommandIo): Promise<number> {
  const fork = () =>
    new Promise<void>((resolve, reject) => {
      const worker = cluster.fork();
      worker.on('message', (m: { federizer?: string }) => m?.federizer === 'ready' && resolve());
      worker.once('exit', (code) => reject(new Error(`a worker exited with ${code} while starting`)));
    });
  await fork();
  await Promise.all(Array.from({ length: count - 1 }, fork));
  io.stderr.write(`federizer auth: ${count} workers serving\n`);
  const signal = await untilSignal();
  const exits = Object.values(cluster.workers ?? {}).map((w) => new Promise((r) => w!.once('exit', r)));
  for (const w of Object.values(cluster.workers ?? {})) w!.process.kill(signal);
  await Promise.all(exits);
  return 0;
}

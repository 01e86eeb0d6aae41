import { MailboxService, readMailboxEnv } from '@federizer/mailbox';
import type { CommandIo } from '../io.js';
import { UsageError } from '../io.js';
import { untilSignal } from '../signals.js';

const HELP = `federizer mailbox

Runs a mail domain's mailbox and mail agent, configured by the environment:
  FEDERIZER_DOMAIN               the mail domain (required)
  FEDERIZER_MAILBOX_PUBLIC_URL   where the mailbox is reached from outside (required)
  FEDERIZER_AUTH_ISSUER          the domain's Authorization Server (required)
  FEDERIZER_MAILBOX_BLOB_DIR     directory of the resources (required)
  FEDERIZER_AUTH_ADMIN_TOKEN     the AS admin token (to learn which users exist; required)
  FEDERIZER_MTA_PRIVATE_JWK      the MTA's private key (private_key_jwt), JSON
  FEDERIZER_MTA_CLIENT_SECRET    the MTA's secret instead (development mode only)
  FEDERIZER_MAILBOX_DATABASE     sqlite:<file> (default sqlite:mailbox.db) or postgres://...
  FEDERIZER_MAILBOX_HOST, FEDERIZER_MAILBOX_PORT, FEDERIZER_MTA_CLIENT_ID, FEDERIZER_MAX_RESOURCE_SIZE (5GiB),
  FEDERIZER_MAILBOX_QUOTA (50GiB), FEDERIZER_MAILBOX_CORS_ORIGINS, FEDERIZER_WEBMAIL_URL, FEDERIZER_DNS
  (host:port), FEDERIZER_AUTH_ADMIN_URL, FEDERIZER_DEV=1, FEDERIZER_LOG_LEVEL.
Queues and limits (durations like 90, 90s, 30m, 6h, 1d):
  FEDERIZER_MAILBOX_RETRY_BASE     wait after a failed transfer or fetch, doubling up to 1h (default 60s)
  FEDERIZER_MAILBOX_TRANSFER_RATE  transfers accepted per minute from one sending domain (default 600)
  FEDERIZER_MAILBOX_OUTBOX_CONCURRENCY  transfers run at once by this replica (default 16, half to one domain)
  FEDERIZER_MAILBOX_FETCH_CONCURRENCY   fetches run at once by this replica (default 8, half from one origin)
  FEDERIZER_MAILBOX_GC_INTERVAL    time between runs of the blob collector (default 1h)
  FEDERIZER_MAILBOX_GC_GRACE       a blob file touched more recently is never deleted (default 1h)
  FEDERIZER_MAILBOX_LONG_POLL_CHECK how often waiting long polls look for changes no notification announced (default 1s)
  FEDERIZER_SHARE_WINDOW           how long sent resources stay fetchable; give the AS the same (default 7d)
Stops gracefully on SIGINT or SIGTERM: requests in flight finish, claimed work is handed back.`;

export async function mailboxCommand(args: readonly string[], io: CommandIo): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    io.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (args.length > 0) throw new UsageError(HELP);
  let settings: ReturnType<typeof readMailboxEnv>;
  try {
    settings = readMailboxEnv();
  } catch (e) {
    throw new UsageError(`configuration: ${(e as Error).message}\n\n${HELP}`);
  }
  const service = await MailboxService.start(settings.config, settings.secrets);
  await untilSignal();
  await service.close();
  return 0;
}

import { AuthService, readAuthEnv } from '@federizer/auth';
import type { CommandIo } from '../io.js';
import { UsageError } from '../io.js';
import { untilSignal } from '../signals.js';

const HELP = `federizer auth

Runs a mail domain's Authorization Server, configured by the environment:
  FEDERIZER_AUTH_ISSUER        issuer URL (required)
  FEDERIZER_DOMAIN             the mail domain (required)
  FEDERIZER_MAILBOX_RESOURCE   the mailbox client API's resource indicator (required)
  FEDERIZER_AUTH_ADMIN_TOKEN   bearer secret of the admin API, 16 characters or more (required)
  FEDERIZER_AUTH_COOKIE_KEYS   comma-separated cookie keys, newest first (required)
  FEDERIZER_MTA_JWKS           the MTA's public JWKS (private_key_jwt), JSON
  FEDERIZER_MTA_CLIENT_SECRET  the MTA's secret instead (development mode only)
  FEDERIZER_AUTH_DATABASE      sqlite:<file> (default sqlite:auth.db) or postgres://...
  FEDERIZER_AUTH_HOST, FEDERIZER_AUTH_PORT, FEDERIZER_AUTH_SIGNING_ALG (ES256, EdDSA, RS256),
  FEDERIZER_AUTH_KEY_ROTATION (e.g. 30d), FEDERIZER_SHARE_WINDOW (e.g. 7d), FEDERIZER_DNS (host:port),
  FEDERIZER_WEBMAIL_REDIRECT_URIS, FEDERIZER_WEBMAIL_POST_LOGOUT_URIS, FEDERIZER_AUTH_CORS_ORIGINS,
  FEDERIZER_DEV=1 (http, loopback peers, client secrets), FEDERIZER_TRUST_PROXY=1 (behind a TLS proxy),
  FEDERIZER_LOG_LEVEL.
Stops gracefully on SIGINT or SIGTERM.`;

export async function authCommand(args: readonly string[], io: CommandIo): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    io.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (args.length > 0) throw new UsageError(HELP);
  let settings: ReturnType<typeof readAuthEnv>;
  try {
    settings = readAuthEnv();
  } catch (e) {
    throw new UsageError(`configuration: ${(e as Error).message}\n\n${HELP}`);
  }
  const service = await AuthService.start(settings.config, settings.secrets);
  await untilSignal();
  await service.close();
  return 0;
}

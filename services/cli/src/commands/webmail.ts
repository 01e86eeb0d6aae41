import { DEFAULT_WEBMAIL_METRICS_PORT, readWebmailEnv, WebmailServer } from '../federation/webmail-server.js';
import type { CommandIo } from '../io.js';
import { UsageError } from '../io.js';
import { untilSignal } from '../signals.js';

const HELP = `federizer webmail

Serves a domain's webmail (the built app in webmail/dist) and its /config.json, configured by the environment:
  FEDERIZER_DOMAIN              the mail domain (required)
  FEDERIZER_AUTH_ISSUER         the domain's Authorization Server (required)
  FEDERIZER_MAILBOX_PUBLIC_URL  the origin of the domain's mailbox; its API is at + /api/v1 (required)
  FEDERIZER_WEBMAIL_URL         the origin browsers reach the webmail at (required unless the port is fixed:
                                then http://HOST:PORT); the AS must list <it>/callback as a redirect URI
  FEDERIZER_WEBMAIL_HOST (127.0.0.1), FEDERIZER_WEBMAIL_PORT, FEDERIZER_WEBMAIL_CLIENT_ID (webmail),
  FEDERIZER_WEBMAIL_DIST (the repository's webmail/dist), FEDERIZER_DEV=1 (http URLs), FEDERIZER_LOG_LEVEL.
  FEDERIZER_WEBMAIL_METRICS_PORT (${DEFAULT_WEBMAIL_METRICS_PORT}), FEDERIZER_WEBMAIL_METRICS_HOST (the webmail's host):
                                /metrics and /healthz, for Prometheus and probes. They are served there only,
                                never on the public port, which answers 404 for them.
Stops gracefully on SIGINT or SIGTERM.`;

export async function webmailCommand(args: readonly string[], io: CommandIo): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    io.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (args.length > 0) throw new UsageError(HELP);
  let config: ReturnType<typeof readWebmailEnv>;
  try {
    config = readWebmailEnv();
  } catch (e) {
    throw new UsageError(`configuration: ${(e as Error).message}\n\n${HELP}`);
  }
  const server = await WebmailServer.start(config);
  await untilSignal();
  await server.close();
  return 0;
}

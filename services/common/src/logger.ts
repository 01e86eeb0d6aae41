/** pino, JSON, with credentials redacted wherever they may appear in a logged request or error. */
import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

const REDACT = [
  'req.headers.authorization',
  'req.headers.dpop',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  '*.password',
  '*.access_token',
  '*.refresh_token',
  '*.id_token',
  '*.subject_token',
  '*.client_secret',
  '*.client_assertion',
  '*.code_verifier',
  '*.adminToken',
  '*.token',
];

export function createLogger(
  options: { name: string; level?: string; destination?: pino.DestinationStream } & LoggerOptions,
): Logger {
  const { destination, ...rest } = options;
  const config: LoggerOptions = {
    level: process.env.FEDERIZER_LOG_LEVEL ?? 'info',
    redact: { paths: REDACT, censor: '[redacted]' },
    ...rest,
  };
  return destination ? pino(config, destination) : pino(config);
}

/** A logger that writes nothing, for tests and tools that do not want logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

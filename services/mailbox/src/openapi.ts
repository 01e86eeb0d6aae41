/**
 * The OpenAPI 3.1 description of the mailbox's HTTP APIs (the client API, the federation endpoints,
 * discovery and operations), served at /openapi.json. The document is read once from
 * openapi/mailbox.openapi.json; each answer names this mailbox's public URL as its server.
 */
import { readFileSync } from 'node:fs';
import type { MailboxConfig } from './config.js';

const DOCUMENT_URL = new URL('../../../openapi/mailbox.openapi.json', import.meta.url);
let cached: Record<string, unknown> | undefined;

export function mailboxOpenApi(config: Pick<MailboxConfig, 'publicUrl'>): Record<string, unknown> {
  cached ??= JSON.parse(readFileSync(DOCUMENT_URL, 'utf8')) as Record<string, unknown>;
  return { ...cached, servers: [{ url: config.publicUrl, description: 'this mailbox' }] };
}

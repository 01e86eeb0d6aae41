/** The OpenAPI 3.1 description of what the AS adds to standard OAuth (served at /openapi.json). */
import { readFileSync } from 'node:fs';
import type { AuthConfig } from './config.js';

const DOCUMENT_URL = new URL('../../../openapi/auth.openapi.json', import.meta.url);
let cached: Record<string, unknown> | undefined;

export function authOpenApi(config: Pick<AuthConfig, 'issuer'>): Record<string, unknown> {
  cached ??= JSON.parse(readFileSync(DOCUMENT_URL, 'utf8')) as Record<string, unknown>;
  return { ...cached, servers: [{ url: config.issuer, description: 'this Authorization Server' }] };
}

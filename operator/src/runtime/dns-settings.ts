/**
 * How a MailDomain's SRV records reach DNS, read from `spec.dns`:
 *
 *   dns:
 *     mode: none | externaldns | rfc2136            (default none)
 *     rfc2136:
 *       server: 192.0.2.53:53                       (host, host:port or [v6]:port; `nameserver` also read)
 *       zone: example.com                           (default spec.domain)
 *       tsigSecretRef: { name: dns-tsig }           (a Secret in the MailDomain's namespace)
 *       tsigKeyName: federizer                      (else the Secret's `keyName`)
 *       tsigAlgorithm: hmac-sha256                  (else the Secret's `algorithm`, else hmac-sha256)
 *
 * The TSIG Secret holds the base64 key under `secret` (or `tsigSecretRef.key`), as `tsig-keygen` prints it.
 */
import { parseServerAddress, tsigKey, type Rfc2136Server } from '../dns/index.js';
import type { KubeClient } from './kube-client.js';
import type { MailDomainObject, SecretObject } from './types.js';

export type DnsMode = 'none' | 'externaldns' | 'rfc2136';

export interface Rfc2136Settings {
  host: string;
  port: number;
  zone: string;
  secretName: string;
  secretKey: string;
  keyName?: string;
  algorithm?: string;
}

export type DnsSettings = { mode: 'none' } | { mode: 'externaldns' } | ({ mode: 'rfc2136' } & Rfc2136Settings);

/** The spec is wrong: not worth retrying until it changes. */
export class SpecError extends Error {
  override readonly name = 'SpecError';
}

function record(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

function text(value: unknown): string | undefined {
  return typeof value === 'string' && value.trim() !== '' ? value.trim() : undefined;
}

export function readDnsSettings(md: MailDomainObject): DnsSettings {
  const spec = record(md.spec);
  const dns = record(spec.dns);
  const mode = text(dns.mode) ?? 'none';
  if (mode === 'none' || mode === 'externaldns') return { mode };
  if (mode !== 'rfc2136') throw new SpecError(`spec.dns.mode "${mode}" is not none, externaldns or rfc2136`);
  const r = record(dns.rfc2136);
  const server = text(r.server) ?? text(r.nameserver);
  if (!server) throw new SpecError('spec.dns.rfc2136.server is required with mode rfc2136');
  let address: { host: string; port: number };
  try {
    address = parseServerAddress(server);
  } catch (e) {
    throw new SpecError(`spec.dns.rfc2136.server: ${(e as Error).message}`);
  }
  const zone = text(r.zone) ?? text(spec.domain);
  if (!zone) throw new SpecError('spec.dns.rfc2136.zone is required (or spec.domain)');
  const ref = record(r.tsigSecretRef ?? r.tsigSecret);
  const secretName = text(ref.name);
  if (!secretName) throw new SpecError('spec.dns.rfc2136.tsigSecretRef.name is required with mode rfc2136');
  const keyName = text(r.tsigKeyName);
  const algorithm = text(r.tsigAlgorithm);
  return {
    mode,
    ...address,
    zone: zone.replace(/\.$/, ''),
    secretName,
    secretKey: text(ref.key) ?? 'secret',
    ...(keyName ? { keyName } : {}),
    ...(algorithm ? { algorithm } : {}),
  };
}

function secretValue(secret: SecretObject, key: string): string | undefined {
  const data = secret.data?.[key];
  if (data !== undefined) return Buffer.from(data, 'base64').toString('utf8').trim();
  return secret.stringData?.[key]?.trim();
}

/** The server and key of an RFC 2136 setting, reading the TSIG Secret. */
export async function rfc2136Server(
  client: KubeClient,
  namespace: string,
  settings: Rfc2136Settings,
): Promise<Rfc2136Server> {
  const secret = await client.get<SecretObject>({
    apiVersion: 'v1',
    kind: 'Secret',
    namespace,
    name: settings.secretName,
  });
  if (!secret) throw new SpecError(`the TSIG Secret ${namespace}/${settings.secretName} does not exist`);
  const value = secretValue(secret, settings.secretKey);
  if (!value) throw new SpecError(`the TSIG Secret ${settings.secretName} has no key "${settings.secretKey}"`);
  const keyName = settings.keyName ?? secretValue(secret, 'keyName');
  if (!keyName)
    throw new SpecError(`no TSIG key name: set spec.dns.rfc2136.tsigKeyName or keyName in ${settings.secretName}`);
  const algorithm = settings.algorithm ?? secretValue(secret, 'algorithm') ?? 'hmac-sha256';
  try {
    return { host: settings.host, port: settings.port, zone: settings.zone, key: tsigKey(keyName, algorithm, value) };
  } catch (e) {
    throw new SpecError(`the TSIG Secret ${settings.secretName}: ${(e as Error).message}`);
  }
}

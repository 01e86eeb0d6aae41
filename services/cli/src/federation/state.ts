/**
 * What a local federation keeps in its data directory, created once and reused by every start:
 *
 *   <data-dir>/federizer.lock          the pid of the `federizer up` using the directory
 *   <data-dir>/federation.json         the running federation, for people and tools (0600: it has passwords)
 *   <data-dir>/<domain>/secrets.json   AS admin token, cookie keys, the MTA's private key (0600)
 *   <data-dir>/<domain>/demo-user.json the demo user and the password it was created with (0600)
 *   <data-dir>/<domain>/endpoints.json the URLs of the last start (to keep random ports, and to warn on change)
 *   <data-dir>/<domain>/auth.db, mailbox.db, blobs/   the services' own state (the AS keys its signing keys here)
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { processAlive } from '@federizer/common';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from 'jose';

export interface DomainSecrets {
  readonly adminToken: string;
  readonly cookieKeys: readonly string[];
  /** Private JWK with `kid` and `alg`: the mailbox signs private_key_jwt with it, the AS has its public half. */
  readonly mtaPrivateJwk: JWK;
}

export interface DemoUser {
  readonly address: string;
  readonly displayName: string;
  readonly password: string;
}

export interface DomainEndpoints {
  readonly issuer: string;
  readonly mailboxUrl: string;
  readonly webmailUrl: string;
}

export const domainDir = (dataDir: string, domain: string) => join(dataDir, domain);

/** A SQLite URL that `databaseConfigFromUrl` reads back as exactly this path (`%`, `?` and `#` included). */
export function sqliteUrl(path: string): string {
  return `sqlite:${path.split('/').map(encodeURIComponent).join('/')}`;
}

const secret = (bytes: number) => randomBytes(bytes).toString('base64url');

/** Readable enough to type from the banner; 16 characters from 64 is 96 bits. */
export const generatePassword = () => secret(12);

async function readJson<T>(path: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new Error(`${path} is not valid JSON; remove it to have it generated again`);
  }
}

/** Written to a temporary file and renamed, so a crash never leaves half a file behind. */
export async function writeJsonFile(path: string, value: unknown, mode = 0o600): Promise<void> {
  const temp = `${path}.${process.pid}.tmp`;
  await writeFile(temp, `${JSON.stringify(value, null, 2)}\n`, { mode });
  await chmod(temp, mode);
  await rename(temp, path);
}

async function privateFile<T>(path: string, create: () => Promise<T>, check: (value: T) => boolean): Promise<T> {
  const existing = await readJson<T>(path);
  if (existing !== undefined) {
    if (!check(existing)) throw new Error(`${path} is incomplete; remove it to have it generated again`);
    // Secrets copied around with a lax umask are tightened rather than refused: this is a development tool.
    if (((await stat(path)).mode & 0o077) !== 0) await chmod(path, 0o600);
    return existing;
  }
  const value = await create();
  await writeJsonFile(path, value);
  return value;
}

export async function ensureDomainDir(dataDir: string, domain: string): Promise<string> {
  const dir = domainDir(dataDir, domain);
  await mkdir(join(dir, 'blobs'), { recursive: true, mode: 0o700 });
  return dir;
}

export function loadOrCreateSecrets(dir: string, domain: string): Promise<DomainSecrets> {
  return privateFile<DomainSecrets>(
    join(dir, 'secrets.json'),
    async () => {
      const { privateKey } = await generateKeyPair('ES256', { extractable: true });
      const jwk = await exportJWK(privateKey);
      const kid = `mta-${domain}-${(await calculateJwkThumbprint(jwk)).slice(0, 8)}`;
      return {
        adminToken: secret(24),
        cookieKeys: [secret(32)],
        mtaPrivateJwk: { ...jwk, kid, alg: 'ES256', use: 'sig' },
      };
    },
    (s) => typeof s.adminToken === 'string' && Array.isArray(s.cookieKeys) && typeof s.mtaPrivateJwk?.d === 'string',
  );
}

/** The public half of the MTA key, for the AS's `private_key_jwt` registration. */
export function publicJwkOf(jwk: JWK): JWK {
  const { kty, crv, x, y, n, e, kid, alg, use } = jwk;
  return Object.fromEntries(Object.entries({ kty, crv, x, y, n, e, kid, alg, use }).filter(([, v]) => v !== undefined));
}

export function loadOrCreateDemoUser(dir: string, user: { address: string; displayName: string }): Promise<DemoUser> {
  return privateFile<DemoUser>(
    join(dir, 'demo-user.json'),
    async () => ({ ...user, password: generatePassword() }),
    (u) => typeof u.address === 'string' && typeof u.password === 'string',
  );
}

export function readEndpoints(dir: string): Promise<DomainEndpoints | undefined> {
  return readJson<DomainEndpoints>(join(dir, 'endpoints.json'));
}

export function writeEndpoints(dir: string, endpoints: DomainEndpoints): Promise<void> {
  return writeJsonFile(join(dir, 'endpoints.json'), endpoints, 0o644);
}

/** The pid of the `federizer up` that holds `dataDir`, if that process still runs. */
export async function federationHolder(dataDir: string): Promise<number | undefined> {
  const holder = Number((await readFile(join(dataDir, 'federizer.lock'), 'utf8').catch(() => '')).trim());
  return Number.isSafeInteger(holder) && holder > 0 && processAlive(holder) ? holder : undefined;
}

/**
 * One federation per data directory: two would share SQLite files and blob directories. A lock left by a
 * process that no longer runs (killed, or the machine restarted) is taken over.
 */
export async function lockDataDir(dataDir: string): Promise<{ release(): Promise<void> }> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, 'federizer.lock');
  for (let attempt = 0; ; attempt++) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx', mode: 0o644 });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw e;
      const holder = await federationHolder(dataDir);
      if (holder !== undefined) {
        throw new Error(
          `${dataDir} is in use by another local federation (pid ${holder}); stop it, or use another --data-dir`,
        );
      }
      await rm(path, { force: true });
    }
  }
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      await rm(path, { force: true });
    },
  };
}

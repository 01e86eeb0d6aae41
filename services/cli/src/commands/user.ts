/** `federizer user ...`: manage a domain's users through its Authorization Server's admin API. */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { CommandIo } from '../io.js';
import { optionMistake, UsageError } from '../io.js';

const HELP = `federizer user add ADDRESS --password-stdin [--display-name NAME] [--forwarding any|manual|none] [--quota N]
federizer user list
federizer user show ADDRESS
federizer user set ADDRESS [--display-name NAME] [--forwarding any|manual|none] [--quota N] [--disable|--enable]
federizer user password ADDRESS --password-stdin
federizer user delete ADDRESS

Options for every subcommand:
  --admin-url URL          the AS admin API base, e.g. https://as.example.com (env FEDERIZER_AUTH_ADMIN_URL)
  --admin-token-file FILE  a file holding the admin token (or env FEDERIZER_AUTH_ADMIN_TOKEN)

Passwords are read from standard input (one line), never from the command line.`;

const OPTIONS = {
  'password-stdin': { type: 'boolean' },
  'display-name': { type: 'string' },
  forwarding: { type: 'string' },
  quota: { type: 'string' },
  disable: { type: 'boolean' },
  enable: { type: 'boolean' },
  'admin-url': { type: 'string' },
  'admin-token-file': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

interface Admin {
  call(method: string, path: string, body?: unknown): Promise<unknown>;
}

async function adminClient(
  values: { 'admin-url'?: string; 'admin-token-file'?: string },
  env: NodeJS.ProcessEnv,
): Promise<Admin> {
  const base = values['admin-url'] ?? env.FEDERIZER_AUTH_ADMIN_URL;
  if (!base) throw new UsageError('where is the AS? give --admin-url or set FEDERIZER_AUTH_ADMIN_URL');
  const token = values['admin-token-file']
    ? (await readFile(values['admin-token-file'], 'utf8')).trim()
    : env.FEDERIZER_AUTH_ADMIN_TOKEN;
  if (!token) throw new UsageError('no admin token: give --admin-token-file or set FEDERIZER_AUTH_ADMIN_TOKEN');
  return {
    async call(method, path, body) {
      const res = await fetch(`${base.replace(/\/$/, '')}/admin/v1${path}`, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (res.status === 204) return undefined;
      const text = await res.text();
      const json = text === '' ? undefined : (JSON.parse(text) as Record<string, unknown>);
      if (!res.ok) throw new Error(`${String(json?.error ?? res.status)}: ${String(json?.error_description ?? text)}`);
      return json;
    },
  };
}

async function readPassword(io: CommandIo): Promise<string> {
  const password = (await io.readStdin()).toString('utf8').replace(/\r?\n$/, '');
  if (password === '') throw new UsageError('no password on standard input');
  return password;
}

function changes(values: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (values['display-name'] !== undefined) out.displayName = values['display-name'];
  if (values.forwarding !== undefined) out.forwardingPolicy = values.forwarding;
  if (values.quota !== undefined) {
    const quota = Number(values.quota);
    if (!Number.isSafeInteger(quota) || quota < 0) throw new UsageError('--quota is a non-negative integer');
    out.sendQuotaPerDay = quota;
  }
  if (values.disable) out.disabled = true;
  if (values.enable) out.disabled = false;
  return out;
}

export async function userCommand(
  args: readonly string[],
  io: CommandIo,
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: [...args], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    throw optionMistake(e, 'user');
  }
  const { values, positionals } = parsed;
  const [sub, address, ...extra] = positionals;
  if (values.help || sub === undefined) {
    (values.help ? io.stdout : io.stderr).write(`${HELP}\n`);
    return values.help ? 0 : 2;
  }
  if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`);
  const needsAddress = sub !== 'list';
  if (needsAddress && address === undefined) throw new UsageError(`federizer user ${sub} needs an ADDRESS\n\n${HELP}`);
  const admin = await adminClient(values, env);
  const at = `/users/${encodeURIComponent(address ?? '')}`;
  let result: unknown;
  switch (sub) {
    case 'add':
      if (!values['password-stdin'])
        throw new UsageError('federizer user add reads the password from standard input: pass --password-stdin');
      result = await admin.call('POST', '/users', { address, password: await readPassword(io), ...changes(values) });
      break;
    case 'list': {
      const users: unknown[] = [];
      let after: string | null = null;
      do {
        const page = (await admin.call(
          'GET',
          `/users?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ''}`,
        )) as { users: unknown[]; next: string | null };
        users.push(...page.users);
        after = page.next;
      } while (after !== null);
      result = users;
      break;
    }
    case 'show':
      result = await admin.call('GET', at);
      break;
    case 'set':
      result = await admin.call('PATCH', at, changes(values));
      break;
    case 'password':
      if (!values['password-stdin'])
        throw new UsageError('federizer user password reads the password from standard input: pass --password-stdin');
      await admin.call('PUT', `${at}/password`, { password: await readPassword(io) });
      result = { address, passwordChanged: true };
      break;
    case 'delete':
      await admin.call('DELETE', at);
      result = { address, deleted: true };
      break;
    default:
      throw new UsageError(`unknown command "user ${sub}"\n\n${HELP}`);
  }
  io.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  return 0;
}

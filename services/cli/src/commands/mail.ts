/**
 * `federizer mail send|list|get|forward`: a user's own mail client for scripts and people. The user's domain
 * leads to its mailbox and Authorization Server through the `_federizer` SRV records (PROTOCOL.md §8); the
 * user signs in as the AS's registered public client with the authorization code grant, PKCE and a DPoP key
 * held in memory; then the mailbox client API does the rest (openapi/mailbox.openapi.json).
 *
 * Everything the command line says is checked before anything goes over the network (exit 2); what the
 * network answers afterwards is a failure (exit 1).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { open, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { DnsClient, createDiscovery, createHttpClient, type HttpClient } from '@federizer/common';
import {
  ProtocolError,
  domainOf,
  isB64uSha256,
  isMsgId,
  normalizeAddress,
  parseSingleMailbox,
  validateMessage,
  type AuthorizationServerInfo,
  type MailboxMetadata,
} from '@federizer/protocol';
import { type CommandIo, optionMistake, UsageError } from '../io.js';
import {
  TEXT_MEDIA_TYPE,
  addressListOption,
  buildDraft,
  checkAttachments,
  checkSubject,
  type Attachment,
} from '../mail/compose.js';
import { locateDns, type DnsLocation } from '../mail/locate.js';
import { MailboxClient, type Delivery, type FullMessage, type UploadedResource } from '../mail/mailbox-client.js';
import { progressBar } from '../mail/progress.js';
import { signIn, type UserSession } from '../mail/sign-in.js';
import { messageTable } from '../mail/table.js';

const HELP = `federizer mail send    --user ADDRESS --password-stdin --to ADDRESSES [--cc ADDRESSES] [--bcc ADDRESSES]
                       --subject TEXT [--text TEXT | --text-file FILE] [--attach FILE]...
federizer mail list    --user ADDRESS --password-stdin [--mailbox inbox|sent|drafts|archive|trash] [--limit N] [--json]
federizer mail get     --user ADDRESS --password-stdin --content-id CID --out FILE
federizer mail forward --user ADDRESS --password-stdin --message-id '<ID>' --to ADDRESSES

send     uploads the text and the attachments (streamed from disk) and sends the message; prints
         {"messageId": ...}. --to, --cc and --bcc take address lists and may be repeated.
list     prints the messages of a mailbox (default inbox), newest first: a table, or with --json an array of
         whole messages (envelope, body, mailbox and the fetch status of each resource).
get      writes the resource with that Content-ID to FILE, once its bytes are checked against it; an
         existing FILE is replaced only then, and stays as it was if the download fails.
forward  forwards the received message with that Message-ID (the one send printed) to ADDRESSES.
send and forward exit with 1 when a recipient is refused at once (no such user of a domain); the message
still goes to the others, and what it did is printed all the same.

Finding the user's mailbox and Authorization Server (_federizer._rs._tcp and _federizer._as._tcp SRV records):
  --dns HOST:PORT   the DNS server to ask (an IP address)
  --dev             development mode: http and loopback addresses allowed (implied by federation.json)
  --data-dir DIR    without --dns, the DNS server of the local federation is read from DIR/federation.json,
                    written by \`federizer up\`, which must be running (env FEDERIZER_DATA_DIR, default
                    ./.federizer); when no directory is named and ./.federizer has no federation, the
                    system's resolvers are asked

Signing in:
  --password-stdin  read the password from standard input (one line) and sign in without a browser;
                    without it, open the address the command prints in a browser on this machine

Exit codes: 0 success, 1 failure, 2 invalid input or usage.`;

const OPTIONS = {
  user: { type: 'string' },
  'password-stdin': { type: 'boolean' },
  dns: { type: 'string' },
  dev: { type: 'boolean' },
  'data-dir': { type: 'string' },
  to: { type: 'string', multiple: true },
  cc: { type: 'string', multiple: true },
  bcc: { type: 'string', multiple: true },
  subject: { type: 'string' },
  text: { type: 'string' },
  'text-file': { type: 'string' },
  attach: { type: 'string', multiple: true },
  mailbox: { type: 'string' },
  limit: { type: 'string' },
  json: { type: 'boolean' },
  'content-id': { type: 'string' },
  out: { type: 'string' },
  'message-id': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Option = keyof typeof OPTIONS;
type Values = { [K in Option]?: (typeof OPTIONS)[K] extends { multiple: true } ? string[] : string | boolean };

const COMMON: readonly Option[] = ['user', 'password-stdin', 'dns', 'dev', 'data-dir', 'help'];
const ALLOWED: Readonly<Record<string, readonly Option[]>> = {
  send: ['to', 'cc', 'bcc', 'subject', 'text', 'text-file', 'attach'],
  list: ['mailbox', 'limit', 'json'],
  get: ['content-id', 'out'],
  forward: ['message-id', 'to'],
};
const MAILBOXES = ['inbox', 'sent', 'drafts', 'archive', 'trash'] as const;
/** Where a received message may be, in the order forward looks for it. */
const RECEIVED_IN = ['inbox', 'archive', 'trash'] as const;

interface Context {
  readonly io: CommandIo;
  readonly address: string;
  readonly domain: string;
  readonly dns: DnsLocation;
  readonly dev: boolean;
  readonly password: string | undefined;
}

interface Connection {
  readonly client: MailboxClient;
  readonly mailbox: MailboxMetadata;
}

function str(values: Values, name: Option): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

function required(values: Values, name: Option, sub: string): string {
  const v = str(values, name);
  if (v === undefined || v.trim() === '') throw new UsageError(`federizer mail ${sub} needs --${name}\n\n${HELP}`);
  return v;
}

function userAddress(values: Values, sub: string): { address: string; domain: string } {
  const given = required(values, 'user', sub);
  let address: string;
  try {
    address = normalizeAddress(parseSingleMailbox(given).address);
  } catch (e) {
    if (e instanceof ProtocolError) throw new UsageError(`--user ${JSON.stringify(given)}: ${e.message}`);
    throw e;
  }
  return { address, domain: domainOf(address) };
}

async function readPassword(io: CommandIo, address: string): Promise<string> {
  const line = io.readStdinLine
    ? await io.readStdinLine(`Password for ${address}: `)
    : ((await io.readStdin()).toString('utf8').split(/\r?\n/)[0] ?? '');
  if (line === '') throw new UsageError('no password on standard input (--password-stdin reads one line)');
  return line;
}

/** A discovery failure in words a user can act on; a mailbox that cannot be found is a failure, not a usage error. */
function notFound(what: string, domain: string, e: unknown, ctx: Context): Error {
  if (!(e instanceof ProtocolError)) return e as Error;
  const hints: string[] = [];
  if (e.code === 'discovery_failed' && ctx.dns.local) hints.push('is `federizer up` running?');
  if (e.code === 'discovery_failed' && !ctx.dev) hints.push('--dev allows http and loopback addresses');
  const hint = hints.length > 0 ? ` (${hints.join('; ')})` : '';
  const where = ctx.dns.servers.map((s) => `${s.host}:${s.port}`).join(', ');
  return new Error(`cannot find the ${what} of ${domain} through ${where}: ${e.message}${hint}`, { cause: e });
}

async function connect(ctx: Context, http: HttpClient): Promise<Connection> {
  const discovery = createDiscovery({
    http,
    resolveSrv: new DnsClient({ servers: [...ctx.dns.servers] }).resolveSrv,
    dev: ctx.dev,
    now: Date.now,
  });
  let mailbox: MailboxMetadata;
  let server: AuthorizationServerInfo;
  try {
    mailbox = await discovery.mailbox(ctx.domain);
  } catch (e) {
    throw notFound('mailbox', ctx.domain, e, ctx);
  }
  try {
    server = await discovery.authorizationServer(ctx.domain);
  } catch (e) {
    throw notFound('Authorization Server', ctx.domain, e, ctx);
  }
  if (mailbox.authorization_server !== server.issuer) {
    throw new Error(
      `the mailbox of ${ctx.domain} trusts ${mailbox.authorization_server}, but its _federizer._as._tcp ` +
        `record leads to ${server.issuer}: refusing to sign in to either`,
    );
  }
  const sessionOf = (): Promise<UserSession> =>
    signIn({
      http,
      dev: ctx.dev,
      server,
      resource: mailbox.resource,
      address: ctx.address,
      password: ctx.password,
      showUrl: (url) =>
        ctx.io.stderr.write(
          `To sign in as ${ctx.address}, open this address in a browser on this machine:\n\n  ${url}\n\n`,
        ),
    });
  const session = await sessionOf();
  // Only with the password at hand can a token that runs out during a long upload be renewed unattended.
  const client = new MailboxClient(http, mailbox.api, session, ctx.password === undefined ? undefined : sessionOf);
  return { client, mailbox };
}

function printJson(io: CommandIo, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

// ---------------------------------------------------------------------------------------------------
// The subcommands: `prepare` checks the command line, `act` runs once signed in.

interface Subcommand {
  /** The exit code, 0 unless said otherwise. */
  act(ctx: Context, connection: Connection): Promise<number | void>;
}

/**
 * A recipient the mailbox refused at once (no such user of its own domain) did not get the message, though
 * the others did: each is named on stderr and the command fails (exit 1), the answer still on stdout.
 */
function reportRefused(io: CommandIo, deliveries: readonly Delivery[]): number {
  const refused = deliveries.filter((d) => d.status === 'failed');
  for (const d of refused) {
    const detail = typeof d.detail === 'string' && d.detail !== '' ? `: ${d.detail}` : '';
    io.stderr.write(`federizer: not delivered to ${String(d.recipient)}${detail}\n`);
  }
  return refused.length > 0 ? 1 : 0;
}

async function prepareSend(values: Values): Promise<Subcommand> {
  const to = addressListOption(values.to as string[] | undefined, '--to');
  if (to === undefined) throw new UsageError(`federizer mail send needs --to\n\n${HELP}`);
  const cc = addressListOption(values.cc as string[] | undefined, '--cc');
  const bcc = addressListOption(values.bcc as string[] | undefined, '--bcc');
  const subject = checkSubject(required(values, 'subject', 'send'));
  const text = str(values, 'text');
  const textFile = str(values, 'text-file');
  if (text !== undefined && textFile !== undefined) throw new UsageError('give --text or --text-file, not both');
  const attachments = await checkAttachments((values.attach as string[] | undefined) ?? []);
  const [textSource] = textFile === undefined ? [] : await checkAttachments([textFile], '--text-file');
  if (text === undefined && textSource === undefined && attachments.length === 0) {
    throw new UsageError('nothing to send: give --text, --text-file or --attach');
  }
  return {
    async act(ctx, { client, mailbox }) {
      for (const a of [...(textSource ? [textSource] : []), ...attachments]) {
        if (a.size > mailbox.max_resource_size) {
          throw new UsageError(
            `${a.path}: ${a.size} bytes, more than the ${mailbox.max_resource_size} a resource of ${ctx.domain} may have`,
          );
        }
      }
      const upload = (a: Attachment) => client.uploadFile(a, progressBar(ctx.io.stderr, a.name, a.size));
      let textResource: UploadedResource | undefined;
      if (text !== undefined) textResource = await client.uploadBytes(Buffer.from(text, 'utf8'), TEXT_MEDIA_TYPE);
      if (textSource !== undefined) textResource = await upload({ ...textSource, mediaType: TEXT_MEDIA_TYPE });
      const uploaded = [];
      for (const attachment of attachments) uploaded.push({ attachment, resource: await upload(attachment) });
      const draft = validateMessage(
        buildDraft({
          from: ctx.address,
          to,
          cc,
          bcc,
          subject,
          messageId: `<${randomUUID()}@${ctx.domain}>`,
          text: textResource,
          attachments: uploaded,
        }),
      );
      const sent = await client.send(draft);
      printJson(ctx.io, { messageId: sent.messageId, id: sent.id, deliveries: sent.deliveries });
      return reportRefused(ctx.io, sent.deliveries);
    },
  };
}

function prepareList(values: Values): Subcommand {
  const mailbox = str(values, 'mailbox') ?? 'inbox';
  if (!(MAILBOXES as readonly string[]).includes(mailbox)) {
    throw new UsageError(`--mailbox ${JSON.stringify(mailbox)}: one of ${MAILBOXES.join(', ')}`);
  }
  const limitText = str(values, 'limit');
  const limit = limitText === undefined ? Infinity : Number(limitText);
  if (limitText !== undefined && (!/^[0-9]+$/.test(limitText) || limit < 1)) {
    throw new UsageError(`--limit ${JSON.stringify(limitText)}: a positive whole number`);
  }
  return {
    async act(ctx, { client }) {
      const summaries = await client.summaries(mailbox, limit);
      const messages: FullMessage[] = await client.messages(summaries.map((s) => s.id));
      if (values.json) printJson(ctx.io, messages);
      else ctx.io.stdout.write(messageTable(messages));
    },
  };
}

/**
 * The download is written to a temporary file beside `out` and renamed to it: a directory where no file can
 * be made is found here, before signing in, by making (and removing) such a file.
 */
async function checkWritableDir(out: string): Promise<void> {
  const probe = join(dirname(out), `.${basename(out)}.${randomBytes(6).toString('hex')}.probe`);
  try {
    await (await open(probe, 'wx', 0o600)).close();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'EACCES' || code === 'EPERM'
        ? 'permission denied'
        : code === 'EROFS'
          ? 'read-only file system'
          : (code ?? (e as Error).message);
    throw new UsageError(`--out ${out}: cannot write in ${dirname(out)} (${why})`);
  }
  await unlink(probe).catch(() => undefined);
}

async function prepareGet(values: Values): Promise<Subcommand> {
  const given = required(values, 'content-id', 'get').trim();
  const digest = given.replace(/^<(.*)>$/, '$1');
  if (!isB64uSha256(digest)) {
    throw new UsageError(`--content-id ${JSON.stringify(given)}: a Content-ID is <43 base64url characters>`);
  }
  const out = required(values, 'out', 'get');
  const dir = await stat(dirname(out)).catch(() => undefined);
  if (dir === undefined || !dir.isDirectory()) throw new UsageError(`--out ${out}: no directory ${dirname(out)}`);
  if ((await stat(out).catch(() => undefined))?.isDirectory()) throw new UsageError(`--out ${out} is a directory`);
  await checkWritableDir(out);
  return {
    async act(ctx, { client }) {
      const got = await client.download(`<${digest}>`, out, (total) => progressBar(ctx.io.stderr, out, total));
      printJson(ctx.io, { ...got, out });
    },
  };
}

function prepareForward(values: Values): Subcommand {
  const messageId = required(values, 'message-id', 'forward').trim();
  if (!isMsgId(messageId)) {
    throw new UsageError(`--message-id ${JSON.stringify(messageId)}: a Message-ID looks like <id@domain>`);
  }
  const to = addressListOption(values.to as string[] | undefined, '--to');
  if (to === undefined) throw new UsageError(`federizer mail forward needs --to\n\n${HELP}`);
  return {
    async act(ctx, { client }) {
      const found = await client.findByMessageId(messageId, RECEIVED_IN);
      const received = found.find((m) => m.mailbox !== 'sent' && m.mailbox !== 'drafts');
      if (received === undefined) {
        throw new Error(
          found.length > 0
            ? `${messageId} is a message ${ctx.address} sent, not one received: only received mail is forwarded`
            : `no message ${messageId} in the mailbox of ${ctx.address}`,
        );
      }
      const forwarded = await client.forward(received.id, to);
      printJson(ctx.io, forwarded);
      return reportRefused(ctx.io, forwarded.deliveries);
    },
  };
}

export async function mailCommand(
  args: readonly string[],
  io: CommandIo,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: [...args], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    throw optionMistake(e, 'mail');
  }
  const values = parsed.values as Values;
  const [sub, ...extra] = parsed.positionals;
  if (values.help || sub === undefined) {
    (values.help ? io.stdout : io.stderr).write(`${HELP}\n`);
    return values.help ? 0 : 2;
  }
  const allowed = ALLOWED[sub];
  if (allowed === undefined) throw new UsageError(`unknown command "mail ${sub}"\n\n${HELP}`);
  if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`);
  for (const name of Object.keys(values) as Option[]) {
    if (!COMMON.includes(name) && !allowed.includes(name)) {
      throw new UsageError(`--${name} is not an option of federizer mail ${sub}`);
    }
  }
  const { address, domain } = userAddress(values, sub);
  const subcommand =
    sub === 'send'
      ? await prepareSend(values)
      : sub === 'list'
        ? prepareList(values)
        : sub === 'get'
          ? await prepareGet(values)
          : prepareForward(values);
  const dns = await locateDns({ dns: str(values, 'dns'), dataDir: str(values, 'data-dir') }, env, cwd);
  const password = values['password-stdin'] ? await readPassword(io, address) : undefined;
  const ctx: Context = { io, address, domain, dns, dev: values.dev === true || dns.local, password };
  const http = createHttpClient({ dev: ctx.dev });
  try {
    return (await subcommand.act(ctx, await connect(ctx, http))) ?? 0;
  } finally {
    await http.close();
  }
}

/**
 * `federizer mail` against two real mail domains (their ASes, mailboxes and the embedded DNS server), run
 * in-process through `run(argv, io)` as `main.ts` runs it, and once as the real binary: SRV discovery, the
 * sign-in as the AS's public CLI client (code + PKCE + DPoP, through the login form or a browser), and the
 * mailbox client API for send, list, get and forward.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsClient, createDiscovery, createHttpClient } from '@federizer/common';
import { headerValue, isAssertionBlock, isHeadersBlock, type Block, type Part } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { startMailFederation, type MailFederation } from '../../mailbox/tests/mail-federation.js';
import type { CommandIo } from '../src/io.js';
import { FormBrowser, signInThroughForm } from '../src/mail/login-form.js';
import { MailboxClient } from '../src/mail/mailbox-client.js';
import { signIn, type UserSession } from '../src/mail/sign-in.js';
import { run } from '../src/run.js';

const BIN = new URL('../../../node_modules/.bin/federizer', import.meta.url).pathname;
const sqlite = testDatabases().find((d) => d.name === 'sqlite')!;

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

interface Listed {
  id: string;
  mailbox: string;
  messageId: string;
  subject: string;
  from: string;
  envelope: Block[];
  body: { parts: Part[] };
  resources: { contentId: string; size: number; status: string }[];
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('federizer mail', () => {
  let fed: MailFederation;
  let dns: string;
  let dir: string;
  const PASSWORDS: Record<string, string> = {
    'alice@example.com': 'alice password',
    'bob@example.net': 'bob password',
    'carol@example.com': 'carol password',
    'dave@example.net': 'dave password',
  };

  /** The CLI in-process, with its own streams; `stdin` is what standard input holds. */
  async function cli(
    argv: readonly string[],
    options: { stdin?: string; tty?: boolean; readStdin?: () => Promise<Buffer>; onStderr?: (s: string) => void } = {},
  ): Promise<Outcome> {
    let stdout = '';
    let stderr = '';
    const io: CommandIo = {
      stdout: { write: (chunk: string) => (stdout += chunk) },
      stderr: {
        write: (chunk: string) => {
          stderr += chunk;
          options.onStderr?.(stderr);
        },
        isTTY: options.tty ?? false,
        columns: 100,
      },
      readStdin: options.readStdin ?? (async () => Buffer.from(options.stdin ?? '')),
    };
    const code = await run(['mail', ...argv], io);
    return { code, stdout, stderr };
  }

  /** `federizer mail <sub> --user <user> --password-stdin --dns <fed> --dev ...` with the user's password. */
  function as(user: string, sub: string, ...rest: string[]): Promise<Outcome> {
    return cli([sub, '--user', user, '--password-stdin', '--dns', dns, '--dev', ...rest], {
      stdin: `${PASSWORDS[user]}\n`,
    });
  }

  async function list(user: string, mailbox = 'inbox'): Promise<Listed[]> {
    const out = await as(user, 'list', '--mailbox', mailbox, '--json');
    expect(out.code, out.stderr).toBe(0);
    return JSON.parse(out.stdout) as Listed[];
  }

  /** The message once it is in the user's mailbox with every resource fetched. */
  function arrived(user: string, messageId: string): Promise<Listed> {
    return until(`${messageId} fetched for ${user}`, async () => {
      const m = (await list(user)).find((x) => x.messageId === messageId);
      return m !== undefined && m.resources.length > 0 && m.resources.every((r) => r.status === 'held') ? m : undefined;
    });
  }

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net'], { database: sqlite.create });
    for (const [address, password] of Object.entries(PASSWORDS)) {
      await fed.auth.domains[address.slice(address.indexOf('@') + 1)]!.createUser(address, password);
    }
    dns = `${fed.auth.dns.address.host}:${fed.auth.dns.address.port}`;
    dir = await mkdtemp(join(tmpdir(), 'federizer-mail-cli-'));
  });
  afterAll(async () => {
    await fed?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('send with an attachment, list on the recipient side, get the exact bytes, forward to a third user', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    const file = join(dir, 'report "final".bin');
    await writeFile(file, bytes);
    const text = 'Hello Bob,\n\nthe report is attached.\n\nAlice\n';

    // PROTOCOL §4: alice's mailbox signs the copy and queues the transfer to example.net.
    const sent = await cli(
      [
        'send',
        '--user',
        'alice@example.com',
        '--password-stdin',
        '--dns',
        dns,
        '--dev',
        '--to',
        'Bob <bob@example.net>',
        '--subject',
        'The report',
        '--text',
        text,
        '--attach',
        file,
      ],
      { stdin: 'alice password\n', tty: true },
    );
    expect(sent.code, sent.stderr).toBe(0);
    const { messageId } = JSON.parse(sent.stdout) as { messageId: string };
    expect(messageId).toMatch(/^<[0-9a-f-]{36}@example\.com>$/);
    // The progress bar of a 3 MiB file on a terminal, and nothing secret anywhere.
    expect(sent.stderr).toContain('100%');
    expect(sent.stderr).toContain('report "final".bin');
    expect(sent.stdout + sent.stderr).not.toContain('alice password');

    // PROTOCOL §5–6: bob's mailbox received it and fetched both resources from example.com.
    const got = await arrived('bob@example.net', messageId);
    expect(got.mailbox).toBe('inbox');
    expect(got.subject).toBe('The report');
    const [receive, assertion, origin] = got.envelope;
    expect(isHeadersBlock(receive!) && headerValue(receive.headers, 'Received')).toMatch(
      /^from example\.com by example\.net; /,
    );
    expect(isAssertionBlock(assertion!)).toBe(true);
    const h0 = isHeadersBlock(origin!) ? origin.headers : [];
    expect(headerValue(h0, 'From')).toBe('alice@example.com');
    expect(headerValue(h0, 'To')).toBe('Bob <bob@example.net>');
    expect(headerValue(h0, 'Message-ID')).toBe(messageId);
    expect(headerValue(h0, 'Body-Digest')).toMatch(/^<[A-Za-z0-9_-]{43}>$/);
    const [textPart, attachmentPart] = got.body.parts;
    expect(headerValue(textPart!.headers, 'Content-Disposition')).toBe('inline');
    expect(headerValue(attachmentPart!.headers, 'Content-Disposition')).toBe(
      'attachment; filename="report \\"final\\".bin"',
    );
    const textCid = headerValue(textPart!.headers, 'Content-ID')!;
    const fileCid = headerValue(attachmentPart!.headers, 'Content-ID')!;
    expect(got.resources).toEqual(
      expect.arrayContaining([
        { contentId: textCid, size: Buffer.byteLength(text), status: 'held' },
        { contentId: fileCid, size: bytes.length, status: 'held' },
      ]),
    );

    // The table for people says the same in one line.
    const table = await as('bob@example.net', 'list');
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/alice@example\.com\s+The report\s+2\/2 held\s+<.*@example\.com>/);

    // PROTOCOL §9: the resources come back byte for byte, checked against their Content-IDs.
    const out = join(dir, 'downloaded.bin');
    const fetched = await as('bob@example.net', 'get', '--content-id', fileCid, '--out', out);
    expect(fetched.code, fetched.stderr).toBe(0);
    expect(JSON.parse(fetched.stdout)).toMatchObject({ contentId: fileCid, size: bytes.length, out });
    expect((await readFile(out)).equals(bytes)).toBe(true);
    const textOut = join(dir, 'text.txt');
    const fetchedText = await as('bob@example.net', 'get', '--content-id', textCid.slice(1, -1), '--out', textOut);
    expect(fetchedText.code, fetchedText.stderr).toBe(0);
    expect(await readFile(textOut, 'utf8')).toBe(text);
    expect((await readdir(dir)).filter((f) => f.endsWith('.part'))).toEqual([]);

    // PROTOCOL §7: bob forwards it by its Message-ID; carol gets the chain and the resources.
    const forwarded = await as('bob@example.net', 'forward', '--message-id', messageId, '--to', 'carol@example.com');
    expect(forwarded.code, forwarded.stderr).toBe(0);
    expect(JSON.parse(forwarded.stdout)).toMatchObject({ messageId, recipients: ['carol@example.com'] });
    const atCarol = await arrived('carol@example.com', messageId);
    const forwardBlock = atCarol.envelope.filter(isHeadersBlock).find((b) => headerValue(b.headers, 'Forwarded-From'));
    expect(headerValue(forwardBlock!.headers, 'Forwarded-From')).toMatch(/(^|<)bob@example\.net>?$/);
    expect(headerValue(forwardBlock!.headers, 'Forwarded-To')).toBe('carol@example.com');
    const carolOut = join(dir, 'carol.bin');
    const carolGet = await as('carol@example.com', 'get', '--content-id', fileCid, '--out', carolOut);
    expect(carolGet.code, carolGet.stderr).toBe(0);
    expect((await readFile(carolOut)).equals(bytes)).toBe(true);
  }, 180_000);

  it('sends to several recipients with Cc and Bcc, and --text-file; the Bcc stays off the others’ copies', async () => {
    const textFile = join(dir, 'note.txt');
    await writeFile(textFile, 'A note for you all.\n');
    const sent = await as(
      'alice@example.com',
      'send',
      '--to',
      'bob@example.net',
      '--cc',
      'Carol <carol@example.com>',
      '--bcc',
      'dave@example.net',
      '--subject',
      'Note',
      '--text-file',
      textFile,
    );
    expect(sent.code, sent.stderr).toBe(0);
    const { messageId } = JSON.parse(sent.stdout) as { messageId: string };
    // PROTOCOL §4.3: one copy for To and Cc without Bcc, one for the Bcc recipient naming only them.
    const atCarol = await arrived('carol@example.com', messageId);
    const carolOrigin = atCarol.envelope.filter(isHeadersBlock).at(-1)!.headers;
    expect(headerValue(carolOrigin, 'To')).toBe('bob@example.net');
    expect(headerValue(carolOrigin, 'Cc')).toBe('Carol <carol@example.com>');
    expect(headerValue(carolOrigin, 'Bcc')).toBeUndefined();
    expect(atCarol.body.parts).toHaveLength(1);
    expect(headerValue(atCarol.body.parts[0]!.headers, 'Content-Disposition')).toBe('inline');
    const atDave = await arrived('dave@example.net', messageId);
    expect(headerValue(atDave.envelope.filter(isHeadersBlock).at(-1)!.headers, 'Bcc')).toBe('dave@example.net');
    const atBob = await arrived('bob@example.net', messageId);
    expect(headerValue(atBob.envelope.filter(isHeadersBlock).at(-1)!.headers, 'Bcc')).toBeUndefined();
  }, 120_000);

  it('a wrong password is a failure (exit 1) in the AS’s words, and the password is never printed', async () => {
    const out = await cli(['list', '--user', 'alice@example.com', '--password-stdin', '--dns', dns, '--dev'], {
      stdin: 'not her password\n',
    });
    expect(out.code).toBe(1);
    expect(out.stderr).toBe(
      'federizer: sign-in refused for alice@example.com: The email address or password is not right.\n',
    );
    expect(out.stdout).toBe('');
  });

  it('a user of a domain without _federizer SRV records: a clear failure naming the record (exit 1)', async () => {
    const out = await cli(['list', '--user', 'zed@nomail.example.com', '--password-stdin', '--dns', dns, '--dev'], {
      stdin: 'whatever\n',
    });
    expect(out.code).toBe(1);
    expect(out.stderr).toMatch(
      /^federizer: cannot find the mailbox of nomail\.example\.com through 127\.0\.0\.1:\d+: _federizer\._rs\._tcp\.nomail\.example\.com: no SRV records/,
    );
  });

  it('usage errors exit 2 before anything is read or sent', async () => {
    const untouched = {
      readStdin: () => Promise.reject(new Error('standard input must not be read')),
    };
    // Nothing listens on port 9 of loopback: reaching the network would fail differently, with exit 1.
    const base = ['--user', 'alice@example.com', '--password-stdin', '--dns', '127.0.0.1:9', '--dev'];
    // Root may write in any directory of mode 0555; nobody can make a file in /proc.
    const unwritable = process.getuid?.() === 0 ? '/proc' : join(dir, 'read-only');
    if (unwritable !== '/proc') await mkdir(unwritable, { mode: 0o555 });
    const cases: [string[], string][] = [
      // --to is required by send.
      [['send', ...base, '--subject', 's', '--text', 't'], 'federizer mail send needs --to'],
      // An attachment that does not exist is refused before sign-in and upload.
      [
        ['send', ...base, '--to', 'bob@example.net', '--subject', 's', '--attach', join(dir, 'missing.pdf')],
        `--attach ${join(dir, 'missing.pdf')}: no such file`,
      ],
      [
        ['send', ...base, '--to', 'bob@example.net', '--subject', 's', '--text-file', join(dir, 'missing.txt')],
        `--text-file ${join(dir, 'missing.txt')}: no such file`,
      ],
      // A directory is not a file to attach.
      [['send', ...base, '--to', 'bob@example.net', '--subject', 's', '--attach', dir], 'not a regular file'],
      // An address list that RFC 5322 does not parse.
      [['send', ...base, '--to', 'bob@', '--subject', 's', '--text', 't'], '--to "bob@"'],
      // A header is one line.
      [['send', ...base, '--to', 'bob@example.net', '--subject', 'a\nb', '--text', 't'], '--subject is one line'],
      // Nothing to send at all.
      [['send', ...base, '--to', 'bob@example.net', '--subject', 's'], 'nothing to send'],
      // Options belong to their subcommand.
      [['list', ...base, '--attach', 'x'], '--attach is not an option of federizer mail list'],
      [['list', ...base, '--mailbox', 'spam'], '--mailbox "spam": one of inbox, sent, drafts, archive, trash'],
      // A Content-ID is a SHA-256 digest (PROTOCOL §2), never a path.
      [['get', ...base, '--content-id', '../etc/passwd', '--out', join(dir, 'x')], 'a Content-ID is <43'],
      [['get', ...base, '--content-id', `<${'A'.repeat(43)}>`, '--out', join(dir, 'no', 'x')], 'no directory'],
      // A directory where the download cannot be written is found before signing in, not after the transfer.
      [['get', ...base, '--content-id', `<${'A'.repeat(43)}>`, '--out', join(unwritable, 'x')], 'cannot write in'],
      [['forward', ...base, '--message-id', 'not-an-id', '--to', 'bob@example.net'], 'a Message-ID looks like'],
      [['forward', ...base, '--message-id', '<a@example.com>'], 'federizer mail forward needs --to'],
      [['list', '--password-stdin', '--dns', dns], 'federizer mail list needs --user'],
      [['list', ...base.slice(0, 3), '--dns', 'localhost:53'], 'the host must be an IP address'],
      [['send', ...base, '--to', 'bob@example.net'], 'federizer mail send needs --subject'],
      [['frobnicate', ...base], 'unknown command "mail frobnicate"'],
    ];
    for (const [argv, message] of cases) {
      const out = await cli(argv, untouched);
      expect(out.code, `${argv.join(' ')}\n${out.stderr}`).toBe(2);
      expect(out.stderr, argv.join(' ')).toContain(message);
    }
  });

  it('a recipient refused at once (no such user of a domain) is named on stderr and exits 1; the others get it', async () => {
    const sent = await as(
      'alice@example.com',
      'send',
      '--to',
      'nobody@example.com, bob@example.net',
      '--subject',
      'Partly refused',
      '--text',
      'Hi',
    );
    expect(sent.code).toBe(1);
    expect(sent.stderr).toBe('federizer: not delivered to nobody@example.com: no such recipient\n');
    // What was done is still printed, for a script to read: the message is sent to bob.
    const { messageId, deliveries } = JSON.parse(sent.stdout) as {
      messageId: string;
      deliveries: { recipient: string; status: string }[];
    };
    expect(deliveries).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ recipient: 'nobody@example.com', status: 'failed' }),
        expect.objectContaining({ recipient: 'bob@example.net', status: 'queued' }),
      ]),
    );
    await arrived('bob@example.net', messageId);

    const forwarded = await as('bob@example.net', 'forward', '--message-id', messageId, '--to', 'nobody@example.net');
    expect(forwarded.code).toBe(1);
    expect(forwarded.stderr).toBe('federizer: not delivered to nobody@example.net: no such recipient\n');
    expect(JSON.parse(forwarded.stdout)).toMatchObject({ messageId, recipients: ['nobody@example.net'] });
  }, 60_000);

  it('without --dns it needs the local federation’s federation.json, and then uses its DNS server', async () => {
    const empty = join(dir, 'no-federation');
    await mkdir(empty, { recursive: true });
    const missing = await cli(['list', '--user', 'alice@example.com', '--password-stdin', '--data-dir', empty], {
      stdin: 'alice password\n',
    });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('give --dns HOST:PORT, or run `federizer up`');

    const data = join(dir, 'federation');
    await mkdir(data, { recursive: true });
    await writeFile(
      join(data, 'federation.json'),
      JSON.stringify({ dns: fed.auth.dns.address, domains: {}, users: [] }),
    );
    // The lock of a running `federizer up`, held here by the test process.
    await writeFile(join(data, 'federizer.lock'), `${process.pid}\n`);
    // No --dev: the local federation is development mode by nature (http, loopback).
    const listed = await cli(
      ['list', '--user', 'alice@example.com', '--password-stdin', '--data-dir', data, '--json'],
      {
        stdin: 'alice password\n',
      },
    );
    expect(listed.code, listed.stderr).toBe(0);
    expect(Array.isArray(JSON.parse(listed.stdout))).toBe(true);
  });

  it('outside development mode only HTTPS to public addresses: the loopback federation is refused', async () => {
    const out = await cli(['list', '--user', 'alice@example.com', '--password-stdin', '--dns', dns], {
      stdin: 'alice password\n',
    });
    expect(out.code).toBe(1);
    expect(out.stderr).toContain('cannot find the mailbox of example.com');
    expect(out.stderr).toContain('--dev allows http and loopback addresses');
  });

  it('failures of the API are exit 1 in its words: an unknown resource, a message not in the mailbox', async () => {
    const missing = await as(
      'bob@example.net',
      'get',
      '--content-id',
      `<${'A'.repeat(42)}E>`,
      '--out',
      join(dir, 'nothing.bin'),
    );
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('not_found: no such resource in this mailbox (HTTP 404)');
    await expect(readFile(join(dir, 'nothing.bin'))).rejects.toThrow(/ENOENT/);
    // An existing file is replaced only by complete, checked bytes: a failed get leaves it as it was.
    await writeFile(join(dir, 'kept.bin'), 'keep me');
    const failed = await as(
      'bob@example.net',
      'get',
      '--content-id',
      `<${'A'.repeat(42)}E>`,
      '--out',
      join(dir, 'kept.bin'),
    );
    expect(failed.code).toBe(1);
    expect(await readFile(join(dir, 'kept.bin'), 'utf8')).toBe('keep me');

    const absent = await as(
      'bob@example.net',
      'forward',
      '--message-id',
      '<nope@example.com>',
      '--to',
      'carol@example.com',
    );
    expect(absent.code).toBe(1);
    expect(absent.stderr).toContain('no message <nope@example.com> in the mailbox of bob@example.net');
  });

  it('without --password-stdin the user signs in with a browser, redirected to a loopback listener', async () => {
    const http = createHttpClient({ dev: true });
    let redirected: Promise<number> | undefined;
    try {
      const out = await cli(['list', '--user', 'alice@example.com', '--dns', dns, '--dev', '--json'], {
        // The "browser": the printed address, the login form, then the redirect to 127.0.0.1 requested for real.
        onStderr: (text) => {
          const url = /\n {2}(http\S+)\n/.exec(text)?.[1];
          if (url === undefined || redirected !== undefined) return;
          redirected = (async () => {
            const callback = await signInThroughForm(
              new FormBrowser(http),
              new URL(url),
              (location) => location.hostname === '127.0.0.1',
              { address: 'alice@example.com', password: 'alice password' },
            );
            const res = await http.fetch(callback);
            await res.text();
            return res.status;
          })();
        },
        readStdin: () => Promise.reject(new Error('standard input must not be read')),
      });
      expect(out.code, out.stderr).toBe(0);
      expect(await redirected).toBe(200);
      expect(out.stderr).toMatch(/open this address in a browser on this machine/);
      expect(out.stderr).toMatch(/redirect_uri=http%3A%2F%2F127\.0\.0\.1%3A\d+%2Fcallback/);
      expect(Array.isArray(JSON.parse(out.stdout))).toBe(true);
    } finally {
      await redirected?.catch(() => undefined);
      await http.close();
    }
  });

  it('a token about to run out (say after a long upload) is renewed with the password before the next request', async () => {
    const http = createHttpClient({ dev: true });
    try {
      const discovery = createDiscovery({
        http,
        resolveSrv: new DnsClient({ servers: [fed.auth.dns.address] }).resolveSrv,
        dev: true,
        now: Date.now,
      });
      const mailbox = await discovery.mailbox('example.com');
      const server = await discovery.authorizationServer('example.com');
      const sessionOf = () =>
        signIn({
          http,
          dev: true,
          server,
          resource: mailbox.resource,
          address: 'alice@example.com',
          password: 'alice password',
        });
      const first = await sessionOf();
      const renewals: UserSession[] = [];
      const client = new MailboxClient(http, mailbox.api, { ...first, expiresAt: Date.now() + 5_000 }, async () => {
        renewals.push(await sessionOf());
        return renewals.at(-1)!;
      });
      await client.summaries('inbox', 1);
      await client.summaries('inbox', 1);
      expect(renewals).toHaveLength(1);
      expect(renewals[0]!.accessToken).not.toBe(first.accessToken);
      expect(renewals[0]!.key.jkt).not.toBe(first.key.jkt);
    } finally {
      await http.close();
    }
  });

  it('the real binary reads one line of standard input and does not wait for its end', async () => {
    const child = spawn(BIN, [
      'mail',
      'send',
      '--user',
      'bob@example.net',
      '--password-stdin',
      '--dns',
      dns,
      '--dev',
      '--to',
      'carol@example.com',
      '--subject',
      'From the binary',
      '--text',
      'Hi Carol',
    ]);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    // The line is written and standard input left open: the command must not wait for more.
    child.stdin.write('bob password\nthis second line is never read\n');
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    child.stdin.destroy();
    expect(code, stderr).toBe(0);
    expect(stderr).toBe('');
    expect(JSON.parse(stdout)).toMatchObject({ messageId: expect.stringMatching(/@example\.net>$/) });
  }, 60_000);
});

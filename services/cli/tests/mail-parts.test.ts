/**
 * The pieces of `federizer mail` that need no network: where the DNS server is, how the draft's headers are
 * written, the progress bar, the login page's error region and the table of `mail list`.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMessage, validateMessage } from '@federizer/protocol';
import { UsageError } from '../src/io.js';
import { addressListOption, attachmentDisposition, buildDraft, mediaTypeOf } from '../src/mail/compose.js';
import { locateDns, parseDnsOption } from '../src/mail/locate.js';
import { pageError } from '../src/mail/login-form.js';
import type { FullMessage } from '../src/mail/mailbox-client.js';
import { PROGRESS_THRESHOLD, progressBar, progressLine } from '../src/mail/progress.js';
import { messageTable } from '../src/mail/table.js';

const CID_A = `<${'A'.repeat(43)}>`;
const CID_B = `<${'B'.repeat(42)}E>`;

/** A message as `mail list --json` has it, dated 2025-01-02 03:04 UTC, with what a test changes. */
function fullMessage(over: Partial<FullMessage>): FullMessage {
  return {
    id: '1',
    mailbox: 'inbox',
    messageId: '<m@example.com>',
    threadId: '<m@example.com>',
    subject: 'Hi',
    from: 'alice@example.com',
    date: Date.UTC(2025, 0, 2, 3, 4),
    receivedAt: 0,
    seen: false,
    flagged: false,
    size: 1,
    envelope: [],
    body: { parts: [] },
    resources: [],
    ...over,
  };
}

describe('where the DNS server is', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-locate-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('--dns takes an IP address and a port, IPv6 in brackets', () => {
    expect(parseDnsOption('127.0.0.1:5353')).toEqual({ host: '127.0.0.1', port: 5353 });
    expect(parseDnsOption('[::1]:53')).toEqual({ host: '::1', port: 53 });
    // The DNS client asks the server itself: a name would need a resolver first.
    expect(() => parseDnsOption('ns.example.com:53')).toThrow(/the host must be an IP address/);
    expect(() => parseDnsOption('127.0.0.1')).toThrow(/expected HOST:PORT/);
    expect(() => parseDnsOption('127.0.0.1:70000')).toThrow(/expected HOST:PORT/);
  });

  it('without --dns, federation.json of the data directory (--data-dir, then FEDERIZER_DATA_DIR, then ./.federizer)', async () => {
    await writeFile(join(dir, 'federation.json'), JSON.stringify({ dns: { host: '127.0.0.1', port: 5300 } }));
    // `federizer up` holds the lock while it runs: this test process stands in for it.
    await writeFile(join(dir, 'federizer.lock'), `${process.pid}\n`);
    expect(await locateDns({ dataDir: dir }, {}, '/')).toMatchObject({
      servers: [{ host: '127.0.0.1', port: 5300 }],
      local: true,
    });
    expect(await locateDns({}, { FEDERIZER_DATA_DIR: dir }, '/')).toMatchObject({ servers: [{ port: 5300 }] });
    await mkdir(join(dir, 'cwd', '.federizer'), { recursive: true });
    await writeFile(
      join(dir, 'cwd', '.federizer', 'federation.json'),
      JSON.stringify({ dns: { host: '::1', port: 5301 }, domains: {}, users: [] }),
    );
    await writeFile(join(dir, 'cwd', '.federizer', 'federizer.lock'), `${process.pid}\n`);
    expect(await locateDns({}, {}, join(dir, 'cwd'))).toMatchObject({
      servers: [{ host: '::1', port: 5301 }],
      local: true,
    });
    // --dns wins over the file, and is not development mode by itself.
    expect(await locateDns({ dns: '10.0.0.1:53', dataDir: dir }, {}, '/')).toMatchObject({
      servers: [{ port: 53 }],
      local: false,
    });
  });

  it('with no data directory named and no ./.federizer, the system resolvers, as for any Internet domain', async () => {
    await mkdir(join(dir, 'elsewhere'), { recursive: true });
    const located = await locateDns({}, {}, join(dir, 'elsewhere'));
    expect(located.source).toBe('the system resolver');
    expect(located.local).toBe(false);
    expect(located.servers.length).toBeGreaterThan(0);
    for (const s of located.servers) expect(Number.isInteger(s.port)).toBe(true);
  });

  it('a named data directory without a federation file is a usage error naming both ways out; a broken one is a failure', async () => {
    const missing = locateDns({ dataDir: join(dir, 'none') }, {}, '/');
    await expect(missing).rejects.toBeInstanceOf(UsageError);
    await expect(missing).rejects.toThrow(/give --dns HOST:PORT, or run `federizer up`/);
    await writeFile(join(dir, 'federation.json'), '{"dns": {"host": "localhost", "port": 53}}');
    await expect(locateDns({ dataDir: dir }, {}, '/')).rejects.toThrow(/has no usable "dns"/);
    await writeFile(join(dir, 'federation.json'), '{"dns":');
    await expect(locateDns({ dataDir: dir }, {}, '/')).rejects.toThrow(/is not JSON/);
  });

  it('a federation.json whose `federizer up` has stopped is refused at once, saying how to start it', async () => {
    const stopped = join(dir, 'stopped');
    await mkdir(stopped, { recursive: true });
    await writeFile(join(stopped, 'federation.json'), JSON.stringify({ dns: { host: '127.0.0.1', port: 5300 } }));
    const expected = `the local federation of ${stopped} is not running (${join(stopped, 'federation.json')} describes its last start): start it with \`federizer up\` (npm start), or give --dns HOST:PORT`;
    // A clean stop removes the lock.
    await expect(locateDns({ dataDir: stopped }, {}, '/')).rejects.toThrow(expected);
    // A `federizer up` killed with -9 leaves its lock behind, naming a process that is gone.
    const gone = spawnSync(process.execPath, ['-e', '']).pid!;
    await writeFile(join(stopped, 'federizer.lock'), `${gone}\n`);
    const failure = locateDns({ dataDir: stopped }, {}, '/');
    await expect(failure).rejects.toThrow(expected);
    // Exit 1, not 2: nothing is wrong with the command line.
    await expect(failure).rejects.not.toBeInstanceOf(UsageError);
  });
});

describe('the draft', () => {
  it('docs/protocol.md §2.4: the text inline, then the attachments, multipart/mixed when there are several', () => {
    const draft = buildDraft({
      from: 'alice@example.com',
      to: 'Bob <bob@example.net>',
      cc: 'carol@example.com',
      subject: 'Hello',
      messageId: '<1@example.com>',
      text: { contentId: CID_A, size: 5, mediaType: 'text/plain; charset=UTF-8' },
      attachments: [
        {
          attachment: { path: '/tmp/x.pdf', name: 'x.pdf', size: 7, mediaType: 'application/pdf' },
          resource: { contentId: CID_B, size: 7, mediaType: 'application/pdf' },
        },
      ],
    });
    // The protocol library accepts it as a draft, and it survives a JSON round trip unchanged.
    expect(validateMessage(draft)).toEqual(draft);
    expect(parseMessage(JSON.stringify(draft))).toEqual(draft);
    expect(draft.envelope[0]).toEqual({
      headers: [
        { From: 'alice@example.com' },
        { To: 'Bob <bob@example.net>' },
        { Cc: 'carol@example.com' },
        { Subject: 'Hello' },
        { 'Message-ID': '<1@example.com>' },
        { 'Content-Type': 'multipart/mixed' },
      ],
    });
    expect(draft.body.parts[1]!.headers).toEqual([
      { 'Content-Disposition': 'attachment; filename="x.pdf"' },
      { 'Content-ID': CID_B },
      {
        'Content-Type': [
          'message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"; size="7"',
          'application/pdf',
        ],
      },
    ]);
    const single = buildDraft({
      from: 'a@example.com',
      to: 'b@example.com',
      subject: '',
      messageId: '<2@example.com>',
      text: { contentId: CID_A, size: 5, mediaType: 'text/plain' },
      attachments: [],
    });
    // One part needs no container type.
    expect(single.envelope[0]).toEqual({
      headers: [
        { From: 'a@example.com' },
        { To: 'b@example.com' },
        { Subject: '' },
        { 'Message-ID': '<2@example.com>' },
      ],
    });
    expect(single.body.parts).toHaveLength(1);
  });

  it('RFC 2045 quoted-string filenames: quotes and backslashes escaped, control characters replaced', () => {
    expect(attachmentDisposition('a "b" c\\d.txt')).toBe('attachment; filename="a \\"b\\" c\\\\d.txt"');
    expect(attachmentDisposition('x\r\ny.txt')).toBe('attachment; filename="x__y.txt"');
    expect(attachmentDisposition('Ä Öberg.pdf')).toBe('attachment; filename="Ä Öberg.pdf"');
  });

  it('media types by extension, application/octet-stream otherwise', () => {
    expect(mediaTypeOf('/x/Report.PDF')).toBe('application/pdf');
    expect(mediaTypeOf('photo.jpeg')).toBe('image/jpeg');
    expect(mediaTypeOf('data.bin')).toBe('application/octet-stream');
    expect(mediaTypeOf('README')).toBe('application/octet-stream');
  });

  it('repeated address options become one RFC 5322 list; each is checked', () => {
    expect(addressListOption(['bob@example.net', 'Carol <carol@example.com>'], '--to')).toBe(
      'bob@example.net, Carol <carol@example.com>',
    );
    expect(addressListOption(undefined, '--cc')).toBeUndefined();
    expect(() => addressListOption(['bob'], '--to')).toThrow(UsageError);
    expect(() => addressListOption(['a@example.com\r\nBcc: x@example.com'], '--to')).toThrow(/one line/);
  });
});

describe('the progress bar', () => {
  it('is drawn only on a terminal, only for large transfers, and ends its line', () => {
    let written = '';
    const terminal = { write: (s: string) => (written += s), isTTY: true, columns: 80 };
    let clock = 0;
    const bar = progressBar(terminal, 'big.bin', 4 * PROGRESS_THRESHOLD, () => clock);
    bar.advance(PROGRESS_THRESHOLD);
    clock = 1000;
    bar.advance(PROGRESS_THRESHOLD);
    // Within 100 ms of the last drawing: counted, not drawn.
    bar.advance(2 * PROGRESS_THRESHOLD);
    bar.done();
    const drawings = written.split('\r').slice(1);
    expect(drawings).toHaveLength(3);
    expect(drawings[1]).toContain(' 50%  2.0 MiB / 4.0 MiB  2.0 MiB/s');
    expect(drawings[2]).toBe(`big.bin [${'#'.repeat(34)}] 100%  4.0 MiB / 4.0 MiB  4.0 MiB/s\u001b[K\n`);

    let piped = '';
    progressBar({ write: (s: string) => (piped += s) }, 'big.bin', 4 * PROGRESS_THRESHOLD).done();
    let small = '';
    progressBar({ write: (s: string) => (small += s), isTTY: true }, 'small.txt', 10).done();
    expect(piped + small).toBe('');
  });

  it('fits its line to the terminal width', () => {
    const line = progressLine(`${'x'.repeat(200)}.bin`, 1, 2, 1000, 60);
    expect(line.length).toBeLessThanOrEqual(60);
    expect(line).toMatch(/^….*\.bin \[#+-+\]\s+50%/);
  });
});

describe('the login page and the table', () => {
  it('the error region of the AS’s pages, as text', () => {
    expect(
      pageError('<main><div class="error" role="alert" id="login-error">The email address &amp; password</div></main>'),
    ).toBe('The email address & password');
    expect(pageError('<div class="error" role="alert"><strong>invalid_request</strong>: expired</div>')).toBe(
      'invalid_request: expired',
    );
    expect(pageError('<form></form>')).toBeUndefined();
  });

  it('one line per message with its resources’ state', () => {
    const message = fullMessage({
      subject: 'Hi',
      from: 'Alice <alice@example.com>',
      resources: [
        { contentId: CID_A, size: 1, status: 'held' },
        { contentId: CID_B, size: 1, status: 'failed' },
      ],
    });
    expect(messageTable([message])).toBe(
      'DATE (UTC)        FROM                       SUBJECT  RESOURCES           MESSAGE-ID\n' +
        '2025-01-02 03:04  Alice <alice@example.com>  Hi       1/2 held, 1 failed  <m@example.com>\n',
    );
    expect(messageTable([])).toBe('No messages.\n');
  });

  it('lines its columns up on a terminal when a subject has wide characters, and shows no control characters', () => {
    const base = fullMessage({ from: 'alice@example.com' });
    const table = messageTable([
      { ...base, subject: '日本語 🎉 é' },
      { ...base, subject: 'plain' },
      { ...base, subject: 'bell\u0007 csi\u009b2J' },
      { ...base, subject: '漢'.repeat(30) },
    ]);
    // 日本語 and 🎉 take two columns each: the RESOURCES column starts at the same column on every line.
    const columns = table
      .trimEnd()
      .split('\n')
      .map((line) => {
        const at = line.search(/RESOURCES|- {2}/);
        return [...line.slice(0, at)].reduce(
          (w, ch) => w + (/[\u3000-\u9fff]|\p{Emoji_Presentation}/u.test(ch) ? 2 : 1),
          0,
        );
      });
    expect(new Set(columns).size, table).toBe(1);
    expect(table).not.toMatch(/\p{Cc}(?<!\n)/u);
    expect(table).toContain('bell\ufffd csi\ufffd2J');
    // Clipped to 40 columns: 19 wide characters and the ellipsis.
    expect(table).toContain(`${'漢'.repeat(19)}…`);
  });
});

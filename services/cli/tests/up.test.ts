/**
 * The local federation of `npm start`, run by the same code in this process (processes: false) on random
 * ports in a temporary directory: DNS records, the published documents, sign-in of the demo users, mail
 * from alice@example.com to bob@example.net, a domain stopped and started again, and a restart of the whole
 * federation that keeps secrets, users and mail. What lands on disk is checked as a user would see it.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsClient } from '@federizer/common';
import { externalContentType, type Message } from '@federizer/protocol';
import { startLocalFederation, type FederationFile, type LocalFederation } from '../src/federation/local-federation.js';
import { federationClient, type FederationClient, type FederationUserClient } from '../src/federation/testing.js';

const DOMAINS = ['example.com', 'example.net'];

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Alice's text message to Bob through her mailbox API; resolves with its Message-ID. */
async function sendText(alice: FederationUserClient, to: string, text: string): Promise<string> {
  const upload = await alice.api('/resources', {
    method: 'POST',
    raw: text,
    headers: { 'content-type': 'text/plain; charset=utf-8' },
  });
  expect(upload.status).toBe(201);
  const resource = (await upload.json()) as { contentId: string; size: number };
  const messageId = `<${randomUUID()}@example.com>`;
  const message: Message = {
    envelope: [
      {
        headers: [
          { From: `Alice <${alice.address}>` },
          { To: to },
          { Subject: 'Hello from the local federation' },
          { 'Message-ID': messageId },
        ],
      },
    ],
    body: {
      parts: [
        {
          headers: [
            { 'Content-Disposition': 'inline' },
            { 'Content-ID': resource.contentId },
            { 'Content-Type': externalContentType(resource.size, 'text/plain; charset=utf-8') },
          ],
        },
      ],
    },
  };
  const sent = await alice.api('/messages/send', { method: 'POST', json: { message } });
  expect(sent.status, await sent.clone().text()).toBe(202);
  return messageId;
}

interface InboxEntry {
  id: string;
  messageId: string;
}

/** Waits until the message is in the inbox with every resource fetched; answers its text. */
async function received(bob: FederationUserClient, messageId: string): Promise<string> {
  const entry = await until(`${messageId} in ${bob.address}'s inbox`, async () => {
    const list = (await (await bob.api('/messages?mailbox=inbox')).json()) as { messages: InboxEntry[] };
    return list.messages.find((m) => m.messageId === messageId);
  });
  const full = await until('its resources fetched', async () => {
    const m = (await (await bob.api(`/messages/${entry.id}`)).json()) as {
      resources: { contentId: string; status: string }[];
    };
    return m.resources.every((r) => r.status === 'held') ? m : undefined;
  });
  const cid = full.resources[0]!.contentId.replace(/^<|>$/g, '');
  return (await bob.api(`/resources/${cid}`)).text();
}

async function refused(url: string): Promise<boolean> {
  try {
    await fetch(url);
    return false;
  } catch (e) {
    return ((e as Error).cause as NodeJS.ErrnoException | undefined)?.code === 'ECONNREFUSED';
  }
}

describe('the local federation, in process', () => {
  let dir: string;
  let dist: string;
  let fed: LocalFederation;
  let client: FederationClient;
  const events: unknown[] = [];
  let firstMessage: string;
  const firstText = 'Hi Bob,\n\nthis went through two Authorization Servers and two mailboxes.\n';

  const start = () =>
    startLocalFederation({
      domains: DOMAINS,
      dataDir: dir,
      portBase: 0,
      processes: false,
      webmailDist: dist,
      onEvent: (e) => events.push(e),
    });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-up-'));
    dist = join(dir, 'webmail-dist');
    await mkdir(dist);
    await writeFile(join(dist, 'index.html'), '<!doctype html><title>webmail</title>');
    fed = await start();
    client = federationClient(fed);
  });

  afterAll(async () => {
    await client?.close();
    await fed?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('describes itself in federation.json (mode 0600: it holds passwords and admin tokens)', async () => {
    const file = JSON.parse(await readFile(join(dir, 'federation.json'), 'utf8')) as FederationFile;
    expect(fed.file).toBe(join(dir, 'federation.json'));
    expect((await stat(fed.file)).mode & 0o777).toBe(0o600);
    expect(file.pid).toBe(process.pid);
    expect(file.dataDir).toBe(dir);
    expect(file.dns).toEqual({ host: '127.0.0.1', port: fed.dns.port });
    expect(Object.keys(file.domains)).toEqual(DOMAINS);
    const com = fed.domains['example.com']!;
    expect(file.domains['example.com']).toEqual({
      issuer: `http://as.example-com.localhost:${com.ports.as}`,
      mailboxUrl: `http://mail.example-com.localhost:${com.ports.mailbox}`,
      webmailUrl: `http://webmail.example-com.localhost:${com.ports.webmail}`,
      adminToken: com.adminToken,
      webmailClientId: 'webmail',
      cliClientId: 'federizer-cli',
    });
    expect(file.users.map((u) => [u.domain, u.address])).toEqual([
      ['example.com', 'alice@example.com'],
      ['example.net', 'bob@example.net'],
    ]);
    expect(file.users).toEqual(fed.users);
    for (const user of file.users) expect(user.password).toMatch(/^[\w-]{16}$/);
    // Every port is distinct: three per domain plus the DNS server's.
    const ports = Object.values(fed.domains).flatMap((d) => Object.values(d.ports));
    expect(new Set([...ports, fed.dns.port]).size).toBe(ports.length + 1);
  });

  it('answers the _federizer SRV records and the A records of the *.localhost hosts', async () => {
    const dns = new DnsClient({ servers: [fed.dns] });
    for (const name of DOMAINS) {
      const d = fed.domains[name]!;
      const host = name.replace('.', '-');
      expect((await dns.resolveSrv(`_federizer._as._tcp.${name}`)).records).toEqual([
        { name: `as.${host}.localhost`, port: d.ports.as, priority: 10, weight: 5 },
      ]);
      expect((await dns.resolveSrv(`_federizer._rs._tcp.${name}`)).records).toEqual([
        { name: `mail.${host}.localhost`, port: d.ports.mailbox, priority: 10, weight: 5 },
      ]);
      for (const kind of ['as', 'mail', 'webmail'])
        expect((await dns.resolve4(`${kind}.${host}.localhost`)).map((r) => r.address)).toEqual(['127.0.0.1']);
    }
    // A domain outside the federation is not this server's to answer (REFUSED).
    await expect(dns.resolveSrv('_federizer._as._tcp.example.edu')).rejects.toThrow();
  });

  it('publishes the AS metadata, the mailbox document and the webmail configuration, all naming each other', async () => {
    for (const name of DOMAINS) {
      const d = fed.domains[name]!;
      const as = (await (
        await client.http.fetch(`${d.issuer}/.well-known/oauth-authorization-server`)
      ).json()) as Record<string, unknown>;
      expect(as.issuer).toBe(d.issuer);
      expect(as.token_endpoint).toBe(`${d.issuer}/token`);
      const mailbox = (await (await client.http.fetch(`${d.mailboxUrl}/.well-known/federizer`)).json()) as Record<
        string,
        unknown
      >;
      expect(mailbox).toMatchObject({
        domain: name,
        authorization_server: d.issuer,
        mta_client_id: `mta.${name}`,
        resource: `${d.mailboxUrl}/api/v1`,
        webmail: `${d.webmailUrl}/`,
      });
      const webmail = await client.http.fetch(`${d.webmailUrl}/config.json`);
      expect(await webmail.json()).toEqual({
        domain: name,
        issuer: d.issuer,
        clientId: 'webmail',
        mailboxUrl: d.mailboxUrl,
        redirectUri: `${d.webmailUrl}/callback`,
        postLogoutRedirectUri: `${d.webmailUrl}/`,
      });
      expect(await (await client.http.fetch(`${d.webmailUrl}/inbox`)).text()).toContain('<title>webmail</title>');
    }
  });

  it('lets the webmail origin call the token endpoint and the mailbox API from a browser (CORS)', async () => {
    const com = fed.domains['example.com']!;
    const preflight = (url: string) =>
      client.http.fetch(url, {
        method: 'OPTIONS',
        headers: {
          origin: com.webmailUrl,
          'access-control-request-method': 'POST',
          'access-control-request-headers': 'dpop,content-type',
        },
      });
    const token = await preflight(`${com.issuer}/token`);
    expect(token.headers.get('access-control-allow-origin')).toBe(com.webmailUrl);
    const api = await preflight(`${com.mailboxUrl}/api/v1/messages/send`);
    expect(api.headers.get('access-control-allow-origin')).toBe(com.webmailUrl);
    // Another domain's webmail is not this domain's client.
    const other = await client.http.fetch(`${com.mailboxUrl}/api/v1/session`, {
      method: 'OPTIONS',
      headers: { origin: fed.domains['example.net']!.webmailUrl, 'access-control-request-method': 'GET' },
    });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('signs the demo users in with their printed passwords, and carries mail from alice to bob', async () => {
    const alice = await client.user('alice@example.com');
    const bob = await client.user('bob@example.net');
    // A wrong password is refused by the AS's login form (the sign-in never comes back to the webmail).
    await expect(client.user('alice@example.com', 'not the password')).rejects.toThrow(/did not come back/);
    firstMessage = await sendText(alice, 'Bob <bob@example.net>', firstText);
    expect(await received(bob, firstMessage)).toBe(firstText);
  });

  it('stops a domain (its services refuse connections) and starts it again with its mail', async () => {
    const net = fed.domains['example.net']!;
    await fed.stopDomain('example.net');
    expect(net.running).toBe(false);
    expect(await refused(`http://127.0.0.1:${net.ports.as}/healthz`)).toBe(true);
    expect(await refused(`http://127.0.0.1:${net.ports.mailbox}/healthz`)).toBe(true);
    expect(await refused(`http://127.0.0.1:${net.ports.webmail}/healthz`)).toBe(true);
    // The other domain keeps running, and DNS still points at the stopped one, as in real life.
    expect((await fetch(`http://127.0.0.1:${fed.domains['example.com']!.ports.as}/healthz`)).ok).toBe(true);
    await expect(fed.startDomain('example.org')).rejects.toThrow(/not a domain of this federation/);
    await fed.startDomain('example.net');
    await expect(fed.startDomain('example.net')).rejects.toThrow(/already running/);
    expect(net.running).toBe(true);
    const bob = await client.user('bob@example.net');
    expect(await received(bob, firstMessage)).toBe(firstText);
    const alice = await client.user('alice@example.com');
    const again = await sendText(alice, 'bob@example.net', 'and once more, after a restart of example.net\n');
    expect(await received(bob, again)).toBe('and once more, after a restart of example.net\n');
  });

  it('refuses what it cannot do: kill -9 without processes, a second federation on the same data directory', async () => {
    await expect(fed.stopDomain('example.com', { kill: true })).rejects.toThrow(/processes: true/);
    expect(fed.domains['example.com']!.running).toBe(true);
    await expect(start()).rejects.toThrow(new RegExp(`in use by another local federation \\(pid ${process.pid}\\)`));
  });

  it('a restart keeps the ports, secrets, users and mail of the data directory', async () => {
    const secretsBefore = await readFile(join(dir, 'example.com', 'secrets.json'), 'utf8');
    const before = structuredClone({ domains: fed.domains, users: fed.users });
    await client.close();
    await fed.close();
    expect(await refused(`http://127.0.0.1:${before.domains['example.com']!.ports.as}/healthz`)).toBe(true);
    await expect(stat(join(dir, 'federizer.lock'))).rejects.toThrow(/ENOENT/);

    fed = await start();
    client = federationClient(fed);
    expect(events).toEqual([]);
    for (const name of DOMAINS) {
      expect(fed.domains[name]!.issuer).toBe(before.domains[name]!.issuer);
      expect(fed.domains[name]!.ports).toEqual(before.domains[name]!.ports);
      expect(fed.domains[name]!.adminToken).toBe(before.domains[name]!.adminToken);
    }
    expect(fed.users).toEqual(before.users);
    expect(await readFile(join(dir, 'example.com', 'secrets.json'), 'utf8')).toBe(secretsBefore);
    expect((await stat(join(dir, 'example.com', 'secrets.json'))).mode & 0o777).toBe(0o600);
    // Signing in with the password printed at the first start proves the user was kept, not made again.
    const bob = await client.user('bob@example.net', before.users[1]!.password);
    expect(await received(bob, firstMessage)).toBe(firstText);
  });
});

describe('the local federation on fixed ports', () => {
  let dir: string;
  let blocker: Server | undefined;
  afterAll(async () => {
    if (blocker) await new Promise((r) => blocker!.close(r));
    await rm(dir, { recursive: true, force: true });
  });

  it('says which port is taken, for what, before starting anything', async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-up-ports-'));
    // A base whose DNS port is free, with the first domain's mailbox port (base + 11) taken. It is drawn
    // below Linux's ephemeral range (32768 and up): a port there can be taken at any moment by another
    // test's client connection, and a taken AS port (base + 10) would be reported first (seen in CI).
    let base = 0;
    for (let attempt = 0; attempt < 20 && blocker === undefined; attempt++) {
      base = 20_000 + Math.floor(Math.random() * 12_000);
      const candidate = createServer();
      blocker = await new Promise<Server | undefined>((resolve) => {
        candidate.once('error', () => resolve(undefined));
        candidate.listen(base + 11, '127.0.0.1', () => resolve(candidate));
      });
    }
    expect(blocker).toBeDefined();
    await expect(
      startLocalFederation({ domains: ['example.com'], dataDir: dir, portBase: base, processes: false }),
    ).rejects.toThrow(`port ${base + 11} (the mailbox of example.com) is already in use`);
    // Nothing was left behind: the data directory is free for the next attempt.
    await expect(stat(join(dir, 'federizer.lock'))).rejects.toThrow(/ENOENT/);
  });

  it('rejects bad options with the rule they break', async () => {
    const options = { dataDir: join(tmpdir(), 'federizer-never-created'), processes: false };
    await expect(startLocalFederation({ ...options, domains: ['example_com'] })).rejects.toThrow(
      '"example_com" is not a domain name',
    );
    await expect(startLocalFederation({ ...options, domains: ['a.example', 'A.example'] })).rejects.toThrow(
      'a.example is listed twice',
    );
    await expect(startLocalFederation({ ...options, domains: ['as.example-com.localhost'] })).rejects.toThrow(
      /\*\.localhost names are the services' hosts/,
    );
    await expect(startLocalFederation({ ...options, portBase: 80 })).rejects.toThrow(
      /0 \(random ports\) or a port from 1024/,
    );
    await expect(startLocalFederation({ ...options, portBase: 65530 })).rejects.toThrow(/leaves no room for 3 domains/);
    // The Fetch standard's port blocking: undici and every browser refuse port 10080.
    await expect(startLocalFederation({ ...options, portBase: 10070 })).rejects.toThrow(
      '--port-base 10070 puts the Authorization Server of example.com on port 10080, which browsers and fetch refuse to connect to (a "bad port" of the Fetch standard); choose another',
    );
    await expect(stat(options.dataDir)).rejects.toThrow(/ENOENT/);
  });
});

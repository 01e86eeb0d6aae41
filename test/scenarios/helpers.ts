/**
 * What the scenario tests share: a local federation (the very code of `npm start`) on random ports in a
 * temporary directory, its demo users and users made through the AS admin API, and a client's view of
 * the mailbox API: uploads (streamed for large files), drafts, sends, inbox reads, the Placeholder rebuilt
 * into what a reader sees, and the Prometheus series the services publish. Everything goes over HTTP, as
 * a webmail, a script or an operator would; the only other thing read is the blob store's `partial/`
 * directory, to know when a fetch is under way (scenario 6), never to change it.
 */
import { createCipheriv, createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { deflateSync, inflateSync } from 'node:zlib';

import { createDiscovery } from '@federizer/common';
import {
  bodyDigest,
  contentId as contentIdOf,
  createDpopProof,
  externalContentType,
  headerValue,
  isHeadersBlock,
  transmittedEnvelope,
  validateChain,
  type Block,
  type Body,
  type Header,
  type Message,
  type Part,
  type ValidatedChain,
  dpopKeyOf,
} from '@federizer/protocol';
import { signIn } from '../../services/auth/tests/exchange-client.js';
import type { TestDomain } from '../../services/auth/tests/harness.js';
import {
  WEBMAIL_CLIENT_ID,
  startLocalFederation,
  type FederationEvent,
  type LocalFederation,
  type MailboxSettings,
} from '../../services/cli/src/federation/index.js';
import {
  federationClient,
  type FederationClient,
  type FederationUserClient,
} from '../../services/cli/src/federation/testing.js';

/** Thrown by a probe of `until` when waiting longer cannot help (a fetch that failed for good). */
export class GiveUp extends Error {}

export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (e) {
      if (e instanceof GiveUp) throw e;
      // A domain being restarted refuses connections for a moment: keep asking until the deadline.
      last = e;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs / 1000} s waiting for ${what}${last ? ` (last error: ${last})` : ''}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------
// The federation

export interface Scenario {
  readonly fed: LocalFederation;
  readonly client: FederationClient;
  readonly dir: string;
  readonly logs: { domain: string; line: string }[];
  readonly events: FederationEvent[];
  /** Signs a user in (the demo user's password unless given). */
  user(address: string, password?: string): Promise<FederationUserClient>;
  /** A new user through the AS admin API, with a fresh password. */
  createUser(address: string, fields?: Record<string, unknown>): Promise<{ address: string; password: string }>;
  /** `PATCH /admin/v1/users/{address}`: the forwarding policy, the send quota, ... */
  updateUser(address: string, fields: Record<string, unknown>): Promise<void>;
  /** The domain's mailbox `/metrics`, parsed. */
  metrics(domain: string): Promise<Metrics>;
  close(): Promise<void>;
}

export async function startScenario(options: {
  processes: boolean;
  /** Default: example.com, example.net, example.org. */
  domains?: readonly string[];
  logLevel?: string;
  /** Mailbox settings of every domain instead of the defaults (a short retry base). */
  mailbox?: MailboxSettings;
  /** Default 0 (free ports). */
  portBase?: number;
  /** The DNS server the federation's DNS server relays other domains' queries to (`federizer up --dns-forward`). */
  dnsForward?: { host: string; port: number };
}): Promise<Scenario> {
  const dir = await mkdtemp(join(tmpdir(), 'federizer-scenario-'));
  // A stand-in for the built webmail: the scenarios are about mail between domains, not the web client.
  const webmailDist = join(dir, 'webmail-dist');
  await mkdir(webmailDist);
  await writeFile(join(webmailDist, 'index.html'), '<!doctype html><title>webmail</title>');
  const logs: { domain: string; line: string }[] = [];
  const events: FederationEvent[] = [];
  let fed: LocalFederation;
  try {
    fed = await startLocalFederation({
      dataDir: join(dir, 'data'),
      ...(options.domains === undefined ? {} : { domains: options.domains }),
      portBase: options.portBase ?? 0,
      processes: options.processes,
      ...(options.dnsForward === undefined ? {} : { dnsForward: options.dnsForward }),
      logLevel: options.logLevel ?? 'info',
      webmailDist,
      log: (domain, line) => logs.push({ domain, line }),
      onEvent: (e) => events.push(e),
      ...(options.mailbox === undefined ? {} : { mailbox: options.mailbox }),
    });
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
  const client = federationClient(fed);
  const admin = async (domain: string, method: string, path: string, body?: unknown) => {
    const d = fed.domains[domain];
    if (d === undefined) throw new TypeError(`${domain} is not a domain of the federation`);
    return client.http.fetch(`${d.issuer}/admin/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${d.adminToken}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  };
  const passwords = new Map<string, string>();
  return {
    fed,
    client,
    dir,
    logs,
    events,
    user: (address, password) => client.user(address, password ?? passwords.get(address)),
    async createUser(address, fields = {}) {
      const password = `pw-${randomUUID()}`;
      const res = await admin(domainOf(address), 'POST', '/users', { address, password, ...fields });
      if (res.status !== 201) throw new Error(`creating ${address}: ${res.status} ${await res.text()}`);
      passwords.set(address, password);
      return { address, password };
    },
    async updateUser(address, fields) {
      const res = await admin(domainOf(address), 'PATCH', `/users/${encodeURIComponent(address)}`, fields);
      if (res.status !== 200) throw new Error(`updating ${address}: ${res.status} ${await res.text()}`);
      await res.body?.cancel();
    },
    async metrics(domain) {
      const res = await client.http.fetch(`${fed.domains[domain]!.mailboxUrl}/metrics`);
      if (res.status !== 200) throw new Error(`${domain}/metrics answered ${res.status}`);
      return parseMetrics(await res.text());
    },
    async close() {
      await client.close().catch(() => undefined);
      await fed.close().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

/** The directory of a domain's state in the federation's data directory. */
export function domainDir(s: Scenario, domain: string): string {
  return join(s.fed.dataDir, domain);
}

// ---------------------------------------------------------------------------------------------------
// Prometheus series

export interface Metrics {
  readonly text: string;
  /** The sum of the samples of `name` whose labels include `labels` (0 when there is none). */
  value(name: string, labels?: Record<string, string>): number;
}

export function parseMetrics(text: string): Metrics {
  const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return {
    text,
    value: (name, labels = {}) =>
      samples
        .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
        .reduce((sum, s) => sum + s.value, 0),
  };
}

/** Requests a mailbox answered on a route (from its HTTP duration histogram), by status code when given. */
export function requests(m: Metrics, method: string, route: string, code?: number): number {
  return m.value('federizer_mailbox_http_request_duration_seconds_count', {
    method,
    route,
    ...(code === undefined ? {} : { code: String(code) }),
  });
}

export const FETCH_ROUTE = '/federation/v1/fetch/';
export const TRANSFER_ROUTE = '/federation/v1/transfer/';

// ---------------------------------------------------------------------------------------------------
// Resources and messages, as a client makes them

export interface Uploaded {
  readonly contentId: string;
  readonly size: number;
  readonly mediaType: string;
}

export async function upload(user: FederationUserClient, bytes: Uint8Array | string, mediaType: string) {
  const res = await user.api('/resources', { method: 'POST', raw: bytes, headers: { 'content-type': mediaType } });
  if (res.status !== 201) throw new Error(`upload by ${user.address}: ${res.status} ${await res.text()}`);
  const answer = (await res.json()) as { contentId: string; size: number };
  return { contentId: answer.contentId, size: answer.size, mediaType } satisfies Uploaded;
}

/**
 * A large upload streamed from a file: the federation's test client sends bodies it holds whole, so this
 * signs the user in once more as the webmail does and streams the file with its own DPoP proof.
 */
export async function uploadFile(
  s: Scenario,
  address: string,
  password: string | undefined,
  path: string,
  mediaType: string,
): Promise<Uploaded> {
  const domain = s.fed.domains[domainOf(address)]!;
  const secret = password ?? s.fed.users.find((u) => u.address === address)?.password;
  if (secret === undefined) throw new TypeError(`the password of ${address} is needed`);
  const session = await signIn(
    {
      domain: domain.domain,
      issuer: domain.issuer,
      mailboxResource: `${domain.mailboxUrl}/api/v1`,
      webmailRedirectUri: `${domain.webmailUrl}/callback`,
      config: { webmail: { clientId: WEBMAIL_CLIENT_ID }, signingAlg: 'ES256' },
    } as unknown as TestDomain,
    s.client.http,
    address,
    secret,
  );
  const key = await dpopKeyOf(session.dpopKey);
  const url = `${domain.mailboxUrl}/api/v1/resources`;
  const size = (await stat(path)).size;
  const res = await s.client.http.fetch(url, {
    method: 'POST',
    duplex: 'half',
    body: createReadStream(path, { highWaterMark: 1024 * 1024 }) as Readable,
    headers: {
      authorization: `DPoP ${session.accessToken}`,
      dpop: await createDpopProof(key, { htm: 'POST', htu: url, accessToken: session.accessToken }),
      'content-type': mediaType,
      'content-length': String(size),
    },
  });
  if (res.status !== 201) throw new Error(`upload of ${path}: ${res.status} ${await res.text()}`);
  const answer = (await res.json()) as { contentId: string; size: number };
  return { contentId: answer.contentId, size: answer.size, mediaType };
}

/**
 * A file of `size` pseudo-random bytes made a MiB at a time (never held whole), and its Content-ID.
 * Deterministic per `seed`, so two files of different seeds never share a Content-ID.
 */
export async function bigFile(path: string, size: number, seed: string): Promise<string> {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const hash = createHash('sha256');
  const out = createWriteStream(path);
  const zeros = Buffer.alloc(1024 * 1024);
  for (let written = 0; written < size;) {
    const n = Math.min(zeros.length, size - written);
    const chunk = cipher.update(zeros.subarray(0, n));
    hash.update(chunk);
    if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
    written += n;
  }
  await new Promise<void>((ok, fail) => out.end((e?: Error | null) => (e ? fail(e) : ok())));
  return `<${hash.digest('base64url')}>`;
}

export interface PartSpec {
  readonly resource: Uploaded;
  /** Default inline; an attachment names its file. */
  readonly filename?: string;
}

export interface DraftSpec {
  readonly from: string;
  readonly to?: string;
  readonly cc?: string;
  readonly bcc?: string;
  readonly subject: string;
  readonly parts: readonly PartSpec[];
}

/** A draft as a webmail posts it (PROTOCOL.md §2, §4.1), with a new Message-ID of the sender's domain. */
export function draft(spec: DraftSpec): Message {
  const headers: Header[] = [{ From: spec.from }];
  if (spec.to !== undefined) headers.push({ To: spec.to });
  if (spec.cc !== undefined) headers.push({ Cc: spec.cc });
  if (spec.bcc !== undefined) headers.push({ Bcc: spec.bcc });
  const address = /<([^>]+)>/.exec(spec.from)?.[1] ?? spec.from;
  headers.push({ Subject: spec.subject }, { 'Message-ID': `<${randomUUID()}@${domainOf(address)}>` });
  if (spec.parts.length > 1) headers.push({ 'Content-Type': 'multipart/mixed' });
  return {
    envelope: [{ headers }],
    body: {
      parts: spec.parts.map((p): Part => ({
        headers: [
          { 'Content-Disposition': p.filename === undefined ? 'inline' : `attachment; filename="${p.filename}"` },
          { 'Content-ID': p.resource.contentId },
          { 'Content-Type': externalContentType(p.resource.size, p.resource.mediaType) },
        ],
      })),
    },
  };
}

export function messageIdOf(message: Message): string {
  return headerValue((message.envelope[0] as { headers: Header[] }).headers, 'Message-ID')!;
}

export interface Delivery {
  readonly recipient: string;
  readonly domain: string;
  readonly status: 'queued' | 'transferred' | 'fetched' | 'failed' | 'withdrawn';
  readonly fetchedBy?: string | null;
  readonly detail?: string;
}

export interface SendAnswer {
  readonly id: string;
  readonly messageId: string;
  readonly copies: number;
  readonly deliveries: Delivery[];
}

export async function send(user: FederationUserClient, message: Message): Promise<SendAnswer> {
  const res = await user.api('/messages/send', { method: 'POST', json: { message } });
  if (res.status !== 202) throw new Error(`send by ${user.address}: ${res.status} ${await res.text()}`);
  return (await res.json()) as SendAnswer;
}

export async function deliveries(user: FederationUserClient, id: string): Promise<Delivery[]> {
  const res = await user.api(`/messages/${id}/deliveries`);
  if (res.status !== 200) throw new Error(`deliveries of ${id}: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { deliveries: Delivery[] }).deliveries;
}

export interface Summary {
  readonly id: string;
  readonly mailbox: string;
  readonly messageId: string;
  readonly subject: string;
  readonly from: string;
}

export interface Stored extends Summary {
  readonly envelope: Block[];
  readonly body: Body;
  readonly resources: { contentId: string; size: number; status: 'pending' | 'held' | 'failed' }[];
}

export async function list(user: FederationUserClient, mailbox = 'inbox'): Promise<Summary[]> {
  const res = await user.api(`/messages?mailbox=${mailbox}&limit=200`);
  if (res.status !== 200) throw new Error(`${user.address}'s ${mailbox}: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { messages: Summary[] }).messages;
}

export async function read(user: FederationUserClient, id: string): Promise<Stored> {
  const res = await user.api(`/messages/${id}`);
  if (res.status !== 200) throw new Error(`message ${id} of ${user.address}: ${res.status} ${await res.text()}`);
  return (await res.json()) as Stored;
}

/** The copies of a message in a user's mailbox (every mailbox: inbox, trash, ...). */
export async function copiesOf(user: FederationUserClient, messageId: string): Promise<Summary[]> {
  const out: Summary[] = [];
  for (const mailbox of ['inbox', 'sent', 'drafts', 'archive', 'trash'])
    out.push(...(await list(user, mailbox)).filter((m) => m.messageId === messageId));
  return out;
}

/** Waits until the message is in the user's inbox; with `held`, until every resource is fetched too. */
export async function arrived(
  user: FederationUserClient,
  messageId: string,
  options: { held?: boolean; timeoutMs?: number } = {},
): Promise<Stored> {
  const entry = await until(
    `${messageId} in ${user.address}'s inbox`,
    async () => (await list(user)).find((m) => m.messageId === messageId),
    options.timeoutMs,
  );
  if (!options.held) return read(user, entry.id);
  return until(
    `the resources of ${messageId} fetched for ${user.address}`,
    async () => {
      const m = await read(user, entry.id);
      const failed = m.resources.find((r) => r.status === 'failed');
      if (failed) throw new GiveUp(`${failed.contentId} failed to be fetched for ${user.address}`);
      return m.resources.every((r) => r.status === 'held') ? m : undefined;
    },
    options.timeoutMs,
  );
}

/** Downloads a resource by its Content-ID; answers the response and its bytes. */
export async function download(user: FederationUserClient, contentId: string) {
  const res = await user.api(`/resources/${contentId.replace(/^<|>$/g, '')}`);
  return { res, bytes: Buffer.from(await res.arrayBuffer()) };
}

/** Downloads a resource as a stream, hashing it: its Content-ID and size, never holding it whole. */
export async function downloadDigest(user: FederationUserClient, contentId: string) {
  const res = await user.api(`/resources/${contentId.replace(/^<|>$/g, '')}`);
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    hash.update(chunk);
    size += chunk.byteLength;
  }
  return { status: res.status, contentId: `<${hash.digest('base64url')}>`, size };
}

// ---------------------------------------------------------------------------------------------------
// The reader's view: the Placeholder rebuilt into a message

export interface RenderedPart {
  readonly disposition: string;
  readonly filename?: string;
  /** The media type the part declares: what a client shows the part as. */
  readonly mediaType: string;
  /** The Content-Type of the download. */
  readonly servedAs: string;
  readonly size: number;
  readonly contentId: string;
  readonly bytes: Buffer;
}

export interface Rendered {
  readonly from: string;
  readonly to?: string;
  readonly cc?: string;
  readonly bcc?: string;
  readonly subject: string;
  readonly text: string;
  readonly attachments: RenderedPart[];
  readonly parts: RenderedPart[];
}

function leavesOf(parts: readonly Part[]): Part[] {
  return parts.flatMap((p) => (p.parts ? leavesOf(p.parts) : [p]));
}

/**
 * Rebuilds a received message as a mail client shows it, from the Placeholder alone: the headers of the
 * origin block, then every leaf part downloaded by its Content-ID and checked against it (digest, size, the
 * answer's ETag and Repr-Digest). The inline text parts make the text; the part's declared media type says what a part is.
 */
export async function render(
  user: FederationUserClient,
  stored: Stored,
  options: { signed?: boolean } = {},
): Promise<Rendered> {
  const origin = stored.envelope.at(-1)!;
  if (!isHeadersBlock(origin)) throw new Error('the envelope does not end with the origin headers block');
  const h = origin.headers;
  // The body is the one the origin signed: its digest is in the block the assertion covers. (A notice of
  // the user's own mailbox, `signed: false`, never left the domain and is not signed.)
  if ((options.signed ?? true) && headerValue(h, 'Body-Digest') !== bodyDigest(stored.body))
    throw new Error(`Body-Digest ${headerValue(h, 'Body-Digest')} is not the digest of the body`);
  const parts: RenderedPart[] = [];
  for (const leaf of leavesOf(stored.body.parts)) {
    const cid = headerValue(leaf.headers, 'Content-ID')!;
    const type = leaf.headers.find((x) => Object.hasOwn(x, 'Content-Type'))!['Content-Type'] as readonly string[];
    const size = Number(/size="(\d+)"/.exec(type[0]!)![1]);
    const disposition = headerValue(leaf.headers, 'Content-Disposition') ?? 'inline';
    const { res, bytes } = await download(user, cid);
    if (res.status !== 200) throw new Error(`${cid}: ${res.status} ${bytes.toString()}`);
    if (contentIdOf(bytes) !== cid) throw new Error(`${cid}: the bytes downloaded hash to ${contentIdOf(bytes)}`);
    if (bytes.length !== size) throw new Error(`${cid}: ${bytes.length} bytes, the part declares ${size}`);
    // The resource API's validators name the same digest (PROTOCOL §9: the ETag is the Content-ID; RFC 9530).
    if (res.headers.get('etag') !== `"${cid}"`) throw new Error(`${cid}: ETag ${res.headers.get('etag')}`);
    const repr = `sha-256=:${Buffer.from(cid.slice(1, -1), 'base64url').toString('base64')}:`;
    if (res.headers.get('repr-digest') !== repr)
      throw new Error(`${cid}: Repr-Digest ${res.headers.get('repr-digest')}`);
    const filename = /filename="([^"]*)"/.exec(disposition)?.[1];
    parts.push({
      disposition: disposition.split(';')[0]!,
      ...(filename === undefined ? {} : { filename }),
      mediaType: type[1]!,
      servedAs: res.headers.get('content-type') ?? '',
      size,
      contentId: cid,
      bytes,
    });
  }
  const opt = (name: string) => {
    const v = headerValue(h, name);
    return v === undefined ? {} : { [name.toLowerCase()]: v };
  };
  return {
    from: headerValue(h, 'From')!,
    ...opt('To'),
    ...opt('Cc'),
    ...opt('Bcc'),
    subject: headerValue(h, 'Subject') ?? '',
    text: parts
      .filter((p) => p.disposition === 'inline' && p.mediaType.startsWith('text/'))
      .map((p) => p.bytes.toString('utf8'))
      .join(''),
    attachments: parts.filter((p) => p.disposition === 'attachment'),
    parts,
  };
}

/**
 * Verifies the chain of a received message as any party can, from DNS alone: each assertion against the
 * JWKS of the AS its sender's domain publishes, each block's digests, each forward's link (PROTOCOL §7).
 */
export async function verifyChain(s: Scenario, stored: Stored): Promise<ValidatedChain> {
  const discovery = createDiscovery({
    http: s.client.http,
    dnsServer: `${s.fed.dns.host}:${s.fed.dns.port}`,
    dev: true,
    now: Date.now,
  });
  const envelope = transmittedEnvelope({ envelope: stored.envelope, body: stored.body });
  return validateChain(envelope, {
    trust: discovery,
    now: Math.floor(Date.now() / 1000),
    mode: 'fetch',
    body: stored.body,
  });
}

// ---------------------------------------------------------------------------------------------------
// A real PNG, made and checked by hand (RFC 2083): the photo of the design's scenario

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Buffer): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'ascii');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** An RGB PNG of a sunset-like gradient, `width` × `height`. */
export function makePng(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8 bits per sample, truecolour, deflate, no filter method, no interlace
  const raw = Buffer.alloc(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    const row = y * (1 + width * 3);
    raw[row] = 0; // filter type None
    for (let x = 0; x < width; x++) {
      raw.set([255 - (y * 200) / height, 80 + (x * 120) / width, (y * 255) / height], row + 1 + x * 3);
    }
  }
  return Buffer.concat([
    PNG_SIGNATURE,
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(raw)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Decodes what a viewer needs of a PNG: its size, every chunk's CRC checked, the image data inflated. */
export function readPng(bytes: Buffer): { width: number; height: number; pixels: Buffer } {
  if (!bytes.subarray(0, 8).equals(PNG_SIGNATURE)) throw new Error('not a PNG: bad signature');
  let at = 8;
  let width = 0;
  let height = 0;
  const idat: Buffer[] = [];
  for (;;) {
    const length = bytes.readUInt32BE(at);
    const type = bytes.toString('ascii', at + 4, at + 8);
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (crc32(bytes.subarray(at + 4, at + 8 + length)) !== bytes.readUInt32BE(at + 8 + length))
      throw new Error(`PNG chunk ${type}: bad CRC`);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    at += 12 + length;
  }
  const pixels = inflateSync(Buffer.concat(idat));
  if (pixels.length !== height * (1 + width * 3)) throw new Error('PNG image data of the wrong size');
  return { width, height, pixels };
}

// ---------------------------------------------------------------------------------------------------
// The blob store's partial files (a fetch in progress), read only

/** Bytes of the partial file of a Content-ID in a domain's blob store; undefined when there is none. */
export async function partialSize(s: Scenario, domain: string, contentId: string): Promise<number | undefined> {
  try {
    return (await stat(join(domainDir(s, domain), 'blobs', 'partial', contentId.replace(/^<|>$/g, '')))).size;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------
// Holding back a mailbox's fetches without touching it

/** The domains whose processes `occupyFetchWorker` freezes: a federation for it has these two as well. */
export const HOG_DOMAINS = ['example.org', 'example.edu'] as const;
/**
 * The mailbox settings a federation for `occupyFetchWorker` runs with: four fetches at once, two per origin
 * (the production default is larger), so that two frozen senders of two attachments each fill the worker.
 */
export const HOG_MAILBOX = { fetchConcurrency: 4 } as const;
const HOG_SIZE = 64 * 1024 * 1024;

/**
 * Fills the fetch worker of bob@example.net's mailbox so that a fetch queued next waits: with `HOG_MAILBOX`
 * it runs at most four fetches at once and two per origin domain, so the demo users of example.org and example.edu each send
 * Bob two large attachments, and once their fetches are under way those two domains' processes are frozen
 * (SIGSTOP) mid-answer. Resolves with the frozen transfers' Content-IDs and `thaw`, which lets them go on
 * (SIGCONT; also to be called in `afterAll`, as a frozen process cannot stop).
 */
export async function occupyFetchWorker(s: Scenario): Promise<{ hogs: string[]; thaw: () => void }> {
  const frozen: number[] = [];
  const thaw = () => {
    for (const pid of frozen.splice(0)) process.kill(pid, 'SIGCONT');
  };
  const hogs: string[] = [];
  try {
    for (const domain of HOG_DOMAINS) {
      const sender = s.fed.users.find((u) => u.domain === domain)!;
      const files = [];
      for (const n of [1, 2]) {
        const path = join(s.dir, `${domain}-${n}.bin`);
        await bigFile(path, HOG_SIZE, `${domain} ${n} ${randomUUID()}`);
        files.push(await uploadFile(s, sender.address, sender.password, path, 'application/octet-stream'));
      }
      await send(
        await s.user(sender.address),
        draft({
          from: sender.address,
          to: 'bob@example.net',
          subject: `Two big files from ${domain}`,
          parts: files.map((f, i) => ({ resource: f, filename: `${i}.bin` })),
        }),
      );
      for (const f of files)
        await until(
          `the fetch of a file from ${domain} under way`,
          async () => (((await partialSize(s, 'example.net', f.contentId)) ?? 0) > 0 ? true : undefined),
          60_000,
        );
      const pid = s.fed.domains[domain]!.pid!;
      process.kill(pid, 'SIGSTOP');
      frozen.push(pid);
      hogs.push(...files.map((f) => f.contentId));
    }
    // Frozen mid-fetch: none of the four is complete.
    for (const cid of hogs) {
      const size = await partialSize(s, 'example.net', cid);
      if (size === undefined || size >= HOG_SIZE) throw new Error(`the fetch of ${cid} ended before its origin froze`);
    }
  } catch (e) {
    thaw();
    throw e;
  }
  return { hogs, thaw };
}

/**
 * Helpers of the fetch tests (PROTOCOL.md §6): sending a message with External Resources through the API,
 * reading the envelope the receiving mailbox stored, turning openid-client's DPoP key pair into the
 * protocol's `DpopKey`, reading the origin's request counters, re-signing a token with its AS's real key
 * to break one claim, and a bounded wait.
 */
import { KeyObject, createHash, randomUUID, sign } from 'node:crypto';
import type { CryptoKey, JWTPayload } from 'jose';
import type { HttpClient } from '@federizer/common';
import { decodeJwt, externalContentType, type Block, type JwsAlg, type Message, type Part } from '@federizer/protocol';
import type { UserClient } from './mail-federation.js';

/** Polls `probe` until it answers something, for at most `timeoutMs`. */
export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface Uploaded {
  readonly contentId: string;
  readonly size: number;
  readonly mediaType: string;
  readonly bytes: Buffer;
}

/** Uploads bytes to the user's mailbox (`POST /resources`). */
export async function upload(user: UserClient, bytes: Buffer, mediaType: string): Promise<Uploaded> {
  const res = await user.api('/resources', { method: 'POST', raw: bytes, headers: { 'content-type': mediaType } });
  if (res.status !== 201 && res.status !== 200) throw new Error(`upload: ${res.status} ${await res.text()}`);
  const { contentId, size } = (await res.json()) as { contentId: string; size: number };
  return { contentId, size, mediaType, bytes };
}

export interface Sent {
  readonly sentId: string;
  readonly messageId: string;
}

/** Sends a message whose body is one attachment per resource, through the send API. */
export async function sendMessage(
  from: UserClient,
  draft: { to: readonly string[]; subject: string; resources: readonly Uploaded[] },
): Promise<Sent> {
  const messageId = `<${randomUUID()}@${from.address.slice(from.address.indexOf('@') + 1)}>`;
  const message: Message = {
    envelope: [
      {
        headers: [
          { From: from.address },
          { To: draft.to.join(', ') },
          { Subject: draft.subject },
          { 'Message-ID': messageId },
          { 'Content-Type': 'multipart/mixed' },
        ],
      },
    ],
    body: {
      parts: draft.resources.map((r, i): Part => ({
        headers: [
          { 'Content-Disposition': `attachment; filename="part-${i}"` },
          { 'Content-ID': r.contentId },
          { 'Content-Type': externalContentType(r.size, r.mediaType) },
        ],
      })),
    },
  };
  const res = await from.api('/messages/send', { method: 'POST', json: { message } });
  if (res.status !== 202) throw new Error(`send: ${res.status} ${await res.text()}`);
  const { id } = (await res.json()) as { id: string };
  return { sentId: id, messageId };
}

export interface Received {
  /** The id of the message in the recipient's mailbox. */
  readonly id: string;
  /** The envelope as transferred: what the mailbox stored, without its own receive block on top. */
  readonly envelope: Block[];
  readonly resources: { contentId: string; status: string }[];
}

interface MessageJson {
  envelope: Block[];
  resources: { contentId: string; status: string }[];
}

/** Waits for `messageId` in the user's inbox and answers the stored copy. */
export async function received(user: UserClient, messageId: string): Promise<Received> {
  const entry = await until(`${messageId} in the inbox of ${user.address}`, async () => {
    const list = (await (await user.api('/messages?mailbox=inbox')).json()) as {
      messages: { id: string; messageId: string }[];
    };
    return list.messages.find((m) => m.messageId === messageId);
  });
  const m = await readMessage(user, entry.id);
  return { id: entry.id, envelope: m.envelope.slice(1), resources: m.resources };
}

export async function readMessage(user: UserClient, id: string): Promise<MessageJson> {
  const res = await user.api(`/messages/${id}`);
  if (res.status !== 200) throw new Error(`GET /messages/${id}: ${res.status} ${await res.text()}`);
  return (await res.json()) as MessageJson;
}

/** Waits until every resource of the user's message `id` is `held`. */
export function allHeld(user: UserClient, id: string): Promise<MessageJson> {
  return until(`the resources of ${id} held for ${user.address}`, async () => {
    const m = await readMessage(user, id);
    return m.resources.length > 0 && m.resources.every((r) => r.status === 'held') ? m : undefined;
  });
}

/** RFC 9530 `Repr-Digest` of bytes: `sha-256=:<standard base64>:`. */
export function reprDigest(bytes: Uint8Array): string {
  return `sha-256=:${createHash('sha256').update(bytes).digest('base64')}:`;
}

/**
 * How many requests a mailbox answered on its fetch endpoint, from its `/metrics` (the request-duration
 * histogram's `_count` samples, every status).
 */
export async function fetchRequestsServed(http: HttpClient, mailboxUrl: string): Promise<number> {
  const res = await http.fetch(`${mailboxUrl}/metrics`);
  const text = await res.text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith('federizer_mailbox_http_request_duration_seconds_count{')) continue;
    if (!line.includes('route="/federation/v1/fetch')) continue;
    total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

/**
 * A JWT with its header or claims changed and signed again with the issuing AS's real key (found by `kid`),
 * so that one claim can be wrong while the signature, issuer and everything else stay valid.
 */
export function resign(
  token: string,
  keys: readonly { kid: string; alg: JwsAlg; privateKey: CryptoKey }[],
  change: { header?: Record<string, unknown>; claims?: JWTPayload },
): string {
  const { header, payload } = decodeJwt(token);
  const signing = keys.find((k) => k.kid === header.kid);
  if (signing === undefined) throw new Error(`no signing key ${String(header.kid)}`);
  const input = `${b64({ ...header, ...change.header })}.${b64({ ...payload, ...change.claims })}`;
  const data = Buffer.from(input, 'ascii');
  const key = KeyObject.from(signing.privateKey);
  const signature =
    signing.alg === 'ES256'
      ? sign('sha256', data, { key, dsaEncoding: 'ieee-p1363' })
      : sign(signing.alg === 'EdDSA' ? null : 'sha256', data, key);
  return `${input}.${signature.toString('base64url')}`;
}

function b64(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/**
 * The mailbox client API (openapi/mailbox.openapi.json) as the CLI uses it, with a DPoP proof per request
 * (RFC 9449 §7) for the signed-in user's token. Resources travel as streams: an upload is read from disk
 * while it is hashed, a download is written to a temporary file while it is hashed and renamed into place
 * only when its bytes are the Content-ID's. Errors of the API become `ApiError`s in its own words.
 */
import { createReadStream } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { HttpClient } from '@federizer/common';
import { ContentIdHasher, createDpopProof, type Block, type Body, type Message } from '@federizer/protocol';
import type { Progress } from './progress.js';
import type { UserSession } from './sign-in.js';

/** A refusal of the mailbox API: its HTTP status and `{error, error_description}`. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly status: number,
    readonly error: string,
    description: string,
  ) {
    super(`${error}: ${description} (HTTP ${status})`);
  }
}

export interface MessageSummary {
  readonly id: string;
  readonly mailbox: string;
  readonly messageId: string;
  readonly threadId: string;
  readonly subject: string;
  readonly from: string;
  readonly date: number;
  readonly receivedAt: number;
  readonly seen: boolean;
  readonly flagged: boolean;
  readonly size: number;
}

/** A whole message as `POST /messages/get` answers it: the Placeholder Message and each resource's status. */
export interface FullMessage extends MessageSummary {
  readonly envelope: readonly Block[];
  readonly body: Body;
  readonly resources: readonly {
    contentId: string;
    size: number;
    status: 'held' | 'pending' | 'failed';
    /** With `failed`: why (the origin's answer to the last fetch, or the quota). */
    failure?: string;
  }[];
}

export interface UploadedResource {
  readonly contentId: string;
  readonly size: number;
  readonly mediaType: string;
}

/** Per recipient, where the copy stands; printed as the mailbox wrote it. */
export type Delivery = Readonly<Record<string, unknown>>;

export interface SendAnswer {
  readonly id: string;
  readonly messageId: string;
  readonly copies: number;
  readonly deliveries: readonly Delivery[];
}

export interface ForwardAnswer {
  readonly id: string;
  readonly messageId: string;
  readonly recipients: readonly string[];
  readonly deliveries: readonly Delivery[];
}

/** What the API answers at most per page and per batch read. */
const PAGE = 200;
/** A token this close to its expiry is renewed before a request rather than refused during it. */
const RENEW_MARGIN_MS = 60_000;

/**
 * The mailbox answers an upload once its last byte is stored and synced; undici restarts the headers timer as
 * the body is written, so this bounds a stalled upload and that last wait, not the length of the upload.
 */
const UPLOAD_ANSWER_TIMEOUT_MS = 10 * 60_000;

export class MailboxClient {
  #session: UserSession;

  /**
   * `api` is the `api` of the mailbox's /.well-known/federizer; `renew` signs in again when the token is about
   * to expire (a long upload may outlast it), when the password is at hand.
   */
  constructor(
    private readonly http: HttpClient,
    private readonly api: string,
    session: UserSession,
    private readonly renew?: () => Promise<UserSession>,
    private readonly now: () => number = Date.now,
  ) {
    this.#session = session;
  }

  /** The URL of an API path, and the Authorization and DPoP headers of one request to it. */
  async #authorize(method: string, path: string): Promise<{ url: string; headers: Record<string, string> }> {
    if (this.renew !== undefined && this.#session.expiresAt - this.now() < RENEW_MARGIN_MS) {
      this.#session = await this.renew();
    }
    const { accessToken, key } = this.#session;
    const url = `${this.api.replace(/\/$/, '')}${path}`;
    const dpop = await createDpopProof(key, { htm: method, htu: url, accessToken });
    return { url, headers: { authorization: `DPoP ${accessToken}`, dpop } };
  }

  async request(
    method: string,
    path: string,
    init: { body?: string | Uint8Array; headers?: Record<string, string> } = {},
  ): Promise<Response> {
    const { url, headers } = await this.#authorize(method, path);
    try {
      return (await this.http.fetch(url, {
        method,
        headers: { ...init.headers, ...headers },
        body: init.body,
      })) as unknown as Response;
    } catch (e) {
      throw networkError(method, url, e);
    }
  }

  /** A JSON call; a refusal becomes an ApiError. */
  async call<T>(method: string, path: string, json?: unknown): Promise<T> {
    const res = await this.request(method, path, {
      ...(json === undefined ? {} : { body: JSON.stringify(json), headers: { 'content-type': 'application/json' } }),
    });
    if (!res.ok) throw await apiError(res);
    return (await res.json()) as T;
  }

  /**
   * Streams a file to `POST /resources`, hashing it on the way: the Content-ID the mailbox answers must be the
   * one of the bytes read, and the size the one the file had when the command started.
   */
  async uploadFile(
    file: { path: string; size: number; mediaType: string },
    progress: Progress,
  ): Promise<UploadedResource> {
    const hasher = new ContentIdHasher();
    async function* read(): AsyncGenerator<Uint8Array> {
      for await (const chunk of createReadStream(file.path)) {
        hasher.update(chunk as Buffer);
        progress.advance((chunk as Buffer).byteLength);
        yield chunk as Buffer;
      }
    }
    let uploaded: UploadedResource;
    try {
      const { url, headers } = await this.#authorize('POST', '/resources');
      let answer: { status: number; text: string };
      try {
        const res = await this.http.stream(url, {
          method: 'POST',
          headers: { ...headers, 'content-type': file.mediaType, 'content-length': String(file.size) },
          body: read(),
          headersTimeoutMs: UPLOAD_ANSWER_TIMEOUT_MS,
        });
        answer = { status: res.status, text: await res.text() };
      } catch (e) {
        throw networkError('POST', url, e);
      }
      if (answer.status !== 201) throw errorOf(answer.status, answer.text);
      uploaded = JSON.parse(answer.text) as UploadedResource;
    } catch (e) {
      progress.abandon();
      if (hasher.size !== file.size) {
        throw new Error(`${file.path} changed while it was read (${hasher.size} bytes, not ${file.size})`, {
          cause: e,
        });
      }
      throw e;
    }
    progress.done();
    return this.#checkUpload(file.path, uploaded, hasher.contentId(), hasher.size);
  }

  async uploadBytes(bytes: Uint8Array, mediaType: string): Promise<UploadedResource> {
    const hasher = new ContentIdHasher();
    hasher.update(bytes);
    const res = await this.request('POST', '/resources', { body: bytes, headers: { 'content-type': mediaType } });
    if (!res.ok) throw await apiError(res);
    return this.#checkUpload('the text', (await res.json()) as UploadedResource, hasher.contentId(), bytes.byteLength);
  }

  #checkUpload(what: string, uploaded: UploadedResource, contentId: string, size: number): UploadedResource {
    if (uploaded.contentId !== contentId || uploaded.size !== size) {
      throw new Error(
        `the mailbox stored ${what} as ${uploaded.contentId} (${uploaded.size} bytes), ` +
          `but the bytes sent are ${contentId} (${size} bytes)`,
      );
    }
    return uploaded;
  }

  send(message: Message): Promise<SendAnswer> {
    return this.call<SendAnswer>('POST', '/messages/send', { message });
  }

  forward(id: string, to: string): Promise<ForwardAnswer> {
    return this.call<ForwardAnswer>('POST', `/messages/${encodeURIComponent(id)}/forward`, { to });
  }

  /** The summaries of a mailbox, newest first, page after page; at most `limit`. */
  async summaries(mailbox: string, limit = Infinity): Promise<MessageSummary[]> {
    const out: MessageSummary[] = [];
    let cursor: string | null = null;
    do {
      const query = new URLSearchParams({ mailbox, limit: String(Math.min(PAGE, limit - out.length)) });
      if (cursor !== null) query.set('cursor', cursor);
      const page: { messages: MessageSummary[]; next: string | null } = await this.call('GET', `/messages?${query}`);
      out.push(...page.messages);
      cursor = page.next;
    } while (cursor !== null && out.length < limit);
    return out.slice(0, limit);
  }

  /** Whole messages by id, in the order asked; ids gone in the meantime are left out. */
  async messages(ids: readonly string[]): Promise<FullMessage[]> {
    const byId = new Map<string, FullMessage>();
    for (let i = 0; i < ids.length; i += PAGE) {
      const batch = await this.call<{ messages: FullMessage[] }>('POST', '/messages/get', {
        ids: ids.slice(i, i + PAGE),
      });
      for (const m of batch.messages) byId.set(m.id, m);
    }
    return ids.flatMap((id) => (byId.has(id) ? [byId.get(id)!] : []));
  }

  /**
   * The messages whose Message-ID is `messageId`, in any mailbox. A thread is named by its first message's
   * Message-ID when it has no X-Thread-ID, so the thread of that name is asked first; otherwise every
   * mailbox is read through.
   */
  async findByMessageId(messageId: string, mailboxes: readonly string[]): Promise<MessageSummary[]> {
    const thread = await this.request('GET', `/threads/${encodeURIComponent(messageId)}`);
    if (thread.ok) {
      const found = ((await thread.json()) as { messages: MessageSummary[] }).messages.filter(
        (m) => m.messageId === messageId,
      );
      if (found.length > 0) return found;
    } else if (thread.status !== 404) {
      throw await apiError(thread);
    } else {
      await thread.body?.cancel();
    }
    const found: MessageSummary[] = [];
    for (const mailbox of mailboxes) {
      found.push(...(await this.summaries(mailbox)).filter((m) => m.messageId === messageId));
    }
    return found;
  }

  /**
   * Streams a resource into a temporary file beside `out`, checks that its SHA-256 is the Content-ID, and
   * only then renames it to `out`: a failed or tampered download leaves nothing behind under that name.
   */
  async download(contentId: string, out: string, progress: (total: number) => Progress): Promise<UploadedResource> {
    const digest = contentId.slice(1, -1);
    const res = await this.request('GET', `/resources/${digest}`);
    if (!res.ok) throw await apiError(res);
    const size = Number(res.headers.get('content-length') ?? NaN);
    const mediaType = res.headers.get('content-type') ?? 'application/octet-stream';
    const bar = progress(Number.isFinite(size) ? size : 0);
    const temp = join(dirname(out), `.${basename(out)}.${randomBytes(6).toString('hex')}.part`);
    const hasher = new ContentIdHasher();
    const file = await open(temp, 'wx', 0o600);
    let renamed = false;
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        hasher.update(chunk);
        bar.advance(chunk.byteLength);
        let offset = 0;
        while (offset < chunk.byteLength) {
          offset += (await file.write(chunk, offset, chunk.byteLength - offset)).bytesWritten;
        }
      }
      await file.sync();
      await file.close();
      const got = hasher.contentId();
      if (got !== contentId) throw new Error(`the bytes received are ${got}, not ${contentId}: nothing was written`);
      if (Number.isFinite(size) && hasher.size !== size)
        throw new Error(`received ${hasher.size} bytes of ${size}: nothing was written`);
      await rename(temp, out);
      renamed = true;
      bar.done();
      return { contentId, size: hasher.size, mediaType };
    } finally {
      if (!renamed) {
        bar.abandon();
        await file.close().catch(() => undefined);
        await unlink(temp).catch(() => undefined);
      }
    }
  }
}

function errorOf(status: number, text: string): ApiError {
  try {
    const json = JSON.parse(text) as { error?: unknown; error_description?: unknown };
    if (typeof json.error === 'string') return new ApiError(status, json.error, String(json.error_description ?? ''));
  } catch {
    // not JSON: a proxy's page, say
  }
  return new ApiError(status, `HTTP ${status}`, text.slice(0, 200));
}

async function apiError(res: Response): Promise<ApiError> {
  return errorOf(res.status, await res.text().catch(() => ''));
}

/** undici says "fetch failed" and keeps the reason in `cause`: the user needs the reason. */
function networkError(method: string, url: string, e: unknown): Error {
  const cause = (e as { cause?: { message?: string } }).cause?.message;
  return new Error(`${method} ${url}: ${(e as Error).message}${cause ? ` (${cause})` : ''}`, { cause: e });
}

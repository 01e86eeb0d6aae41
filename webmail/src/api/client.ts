/**
 * The one client of the mailbox API (openapi/mailbox.openapi.json): every request carries
 * `Authorization: DPoP <token>` and a fresh proof, every failure becomes a typed error (errors.ts), and
 * a refused token is refreshed once and the request made again.
 */
import { createDpopProof } from '../auth/dpop.js';
import type { AccessToken } from '../auth/session.js';
import {
  AbortedError,
  ApiError,
  NetworkError,
  RedirectError,
  UnauthorizedError,
  errorFromResponse,
  isRedirectRefusal,
} from './errors.js';
import type {
  Changes,
  Delivery,
  Draft,
  ForwardResult,
  ForwardingRule,
  MailboxName,
  Message,
  MessagePage,
  MessagePatch,
  MessageSummary,
  SavedDraft,
  SendResult,
  Session,
  UnsendResult,
  UploadedResource,
} from './types.js';

/** Where tokens come from: the AuthSession, which refreshes them under a lock shared by every tab. */
export interface TokenSource {
  token(): Promise<AccessToken>;
  tokenRejected(accessToken: string): Promise<AccessToken>;
}

export interface UploadProgress {
  readonly loaded: number;
  readonly total: number;
}

export interface MailboxClientOptions {
  /** `mailboxUrl + "/api/v1"`. */
  readonly apiBase: string;
  readonly tokens: TokenSource;
  readonly fetch?: typeof fetch;
  /**
   * Makes the XMLHttpRequest of an upload (its upload events give progress). By default the browser's,
   * unless `fetch` is given: a caller that routes requests itself (Node, tests) uploads through it too.
   */
  readonly xhr?: () => XMLHttpRequest;
}

interface RequestInitLite {
  readonly json?: unknown;
  /** A raw body (an upload); `json` is the usual one. */
  readonly body?: Blob;
  readonly headers?: Record<string, string>;
  readonly signal?: AbortSignal;
}

/** A Content-ID `<digest>` as the path segment of /resources (the digest alone). */
export function digestOf(contentId: string): string {
  return contentId.replace(/^<|>$/g, '');
}

/** The error a failed `Response` stands for, its JSON body read when there is one. */
async function failure(res: Response): Promise<ApiError> {
  const body: unknown = await res.json().catch(() => undefined);
  return errorFromResponse(res.status, body, res.headers);
}

function isAuthRetry(e: ApiError): boolean {
  return e instanceof UnauthorizedError && (e.code === 'invalid_token' || e.code === 'invalid_dpop_proof');
}

export class MailboxClient {
  readonly apiBase: string;
  readonly #tokens: TokenSource;
  readonly #fetch: typeof fetch;
  readonly #xhr: (() => XMLHttpRequest) | undefined;

  constructor(options: MailboxClientOptions) {
    this.apiBase = options.apiBase.replace(/\/+$/, '');
    this.#tokens = options.tokens;
    const f = options.fetch ?? fetch;
    // Called as a plain function: the global fetch refuses any other `this` (Illegal invocation).
    this.#fetch = (input, init) => f(input, init);
    this.#xhr =
      options.xhr ?? (typeof XMLHttpRequest === 'function' && !options.fetch ? () => new XMLHttpRequest() : undefined);
  }

  /** An authorized request; a refused token or proof is retried once with a new one. */
  async request(method: string, path: string, init: RequestInitLite = {}): Promise<Response> {
    const url = `${this.apiBase}${path}`;
    let access = await this.#access(() => this.#tokens.token());
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = {
        authorization: `DPoP ${access.accessToken}`,
        dpop: await createDpopProof(access.keyPair, { method, url, accessToken: access.accessToken }),
        ...init.headers,
      };
      let body: string | Blob | undefined = init.body;
      if (init.json !== undefined) {
        body = JSON.stringify(init.json);
        headers['content-type'] = 'application/json';
      }
      let res: Response;
      try {
        // Never followed: the token and its proof would go wherever the 3xx points (RedirectError).
        res = await this.#fetch(url, { method, headers, body, signal: init.signal, redirect: 'error' });
      } catch (e) {
        if (init.signal?.aborted) throw new AbortedError();
        if (isRedirectRefusal(e))
          throw new RedirectError(
            `${method} ${path}: the mailbox answered with a redirect, which is not followed`,
            undefined,
            0,
            {
              cause: e,
            },
          );
        throw new NetworkError(`${method} ${path}: the mailbox could not be reached (${(e as Error).message})`, {
          cause: e,
        });
      }
      // A fetch that ignores `redirect: 'error'` (a caller's own) still must not hand a 3xx back as an answer.
      if (res.type === 'opaqueredirect' || (res.status >= 300 && res.status < 400 && res.status !== 304))
        throw new RedirectError(
          `${method} ${path}: the mailbox answered with a redirect (HTTP ${res.status}), which is not followed`,
          res.headers.get('location') ?? undefined,
          res.status,
        );
      if (res.ok || res.status === 304) return res;
      const error = await failure(res);
      if (attempt === 0 && isAuthRetry(error)) {
        const stale = access.accessToken;
        access = await this.#access(() =>
          error.code === 'invalid_token' ? this.#tokens.tokenRejected(stale) : this.#tokens.token(),
        );
        continue;
      }
      throw error;
    }
  }

  /** A token; a refresh that could not reach the AS is the network's failure, like any other request's. */
  async #access(get: () => Promise<AccessToken>): Promise<AccessToken> {
    try {
      return await get();
    } catch (e) {
      // fetch rejects with a TypeError when nothing answers; the AS's refusals are other errors.
      if (e instanceof TypeError)
        throw new NetworkError(`the session could not be refreshed (${e.message})`, { cause: e });
      throw e;
    }
  }

  async #json<T>(method: string, path: string, init?: RequestInitLite): Promise<T> {
    const res = await this.request(method, path, init);
    return (await res.json()) as T;
  }

  session(): Promise<Session> {
    return this.#json('GET', '/session');
  }

  async state(options: { signal?: AbortSignal } = {}): Promise<string> {
    return (await this.#json<{ state: string }>('GET', '/state', { signal: options.signal })).state;
  }

  /** The long poll of PROTOCOL.md §9: held open up to `wait` seconds when nothing changed. */
  changes(since: string, options: { wait?: number; maxChanges?: number; signal?: AbortSignal } = {}): Promise<Changes> {
    const q = new URLSearchParams({ since });
    if (options.wait !== undefined) q.set('wait', String(options.wait));
    if (options.maxChanges !== undefined) q.set('maxChanges', String(options.maxChanges));
    return this.#json('GET', `/changes?${q}`, { signal: options.signal });
  }

  listMessages(
    mailbox: MailboxName,
    options: { cursor?: string; limit?: number; signal?: AbortSignal } = {},
  ): Promise<MessagePage> {
    const q = new URLSearchParams({ mailbox });
    if (options.cursor) q.set('cursor', options.cursor);
    if (options.limit) q.set('limit', String(options.limit));
    return this.#json('GET', `/messages?${q}`, { signal: options.signal });
  }

  getMessages(
    ids: readonly string[],
    options: { signal?: AbortSignal } = {},
  ): Promise<{ messages: Message[]; notFound: string[] }> {
    return this.#json('POST', '/messages/get', { json: { ids }, signal: options.signal });
  }

  getMessage(id: string): Promise<Message> {
    return this.#json('GET', `/messages/${encodeURIComponent(id)}`);
  }

  updateMessage(id: string, patch: MessagePatch): Promise<MessageSummary> {
    return this.#json('PATCH', `/messages/${encodeURIComponent(id)}`, { json: patch });
  }

  async deleteMessage(id: string): Promise<void> {
    await this.request('DELETE', `/messages/${encodeURIComponent(id)}`);
  }

  async deliveries(id: string): Promise<Delivery[]> {
    return (await this.#json<{ deliveries: Delivery[] }>('GET', `/messages/${encodeURIComponent(id)}/deliveries`))
      .deliveries;
  }

  unsend(id: string, recipients?: readonly string[]): Promise<UnsendResult> {
    return this.#json('POST', `/messages/${encodeURIComponent(id)}/unsend`, {
      json: recipients === undefined ? {} : { recipients },
    });
  }

  /** PROTOCOL.md §7: the mailbox forwards through the chain; nothing is uploaded again. */
  forward(id: string, to: string): Promise<ForwardResult> {
    return this.#json('POST', `/messages/${encodeURIComponent(id)}/forward`, { json: { to } });
  }

  send(message: Draft): Promise<SendResult> {
    return this.#json('POST', '/messages/send', { json: { message } });
  }

  createDraft(message: Draft): Promise<SavedDraft> {
    return this.#json('POST', '/drafts', { json: { message } });
  }

  /** Replaces a draft; the new version has a new id. */
  updateDraft(id: string, message: Draft): Promise<SavedDraft & { replaced: string }> {
    return this.#json('PUT', `/drafts/${encodeURIComponent(id)}`, { json: { message } });
  }

  async deleteDraft(id: string): Promise<void> {
    await this.request('DELETE', `/drafts/${encodeURIComponent(id)}`);
  }

  sendDraft(id: string): Promise<SendResult & { draft: string }> {
    return this.#json('POST', `/drafts/${encodeURIComponent(id)}/send`);
  }

  getForwarding(): Promise<ForwardingRule> {
    return this.#json('GET', '/forwarding');
  }

  setForwarding(rule: { targets: readonly string[]; keepCopy: boolean; enabled: boolean }): Promise<ForwardingRule> {
    return this.#json('PUT', '/forwarding', { json: rule });
  }

  /** The bytes of a resource (`Range` honoured by the mailbox). */
  resource(contentId: string, init: { range?: string; signal?: AbortSignal } = {}): Promise<Response> {
    return this.request('GET', `/resources/${digestOf(contentId)}`, {
      headers: init.range ? { range: init.range } : {},
      signal: init.signal,
    });
  }

  /**
   * Streams `blob` into the content-addressed store. With XMLHttpRequest, `onProgress` follows the bytes
   * sent (fetch cannot report upload progress over HTTP/1.1); `signal` cancels it.
   */
  async upload(
    blob: Blob,
    options: { mediaType?: string; onProgress?: (p: UploadProgress) => void; signal?: AbortSignal } = {},
  ): Promise<UploadedResource> {
    const mediaType = options.mediaType || blob.type || 'application/octet-stream';
    if (!this.#xhr) {
      const res = await this.request('POST', '/resources', {
        headers: { 'content-type': mediaType },
        signal: options.signal,
        body: blob,
      });
      options.onProgress?.({ loaded: blob.size, total: blob.size });
      return (await res.json()) as UploadedResource;
    }
    let access = await this.#access(() => this.#tokens.token());
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#xhrUpload(blob, mediaType, access, options);
      } catch (e) {
        if (attempt > 0 || !(e instanceof ApiError) || !isAuthRetry(e)) throw e;
        const stale = access.accessToken;
        access = await this.#access(() =>
          e.code === 'invalid_token' ? this.#tokens.tokenRejected(stale) : this.#tokens.token(),
        );
      }
    }
  }

  async #xhrUpload(
    blob: Blob,
    mediaType: string,
    access: AccessToken,
    options: { onProgress?: (p: UploadProgress) => void; signal?: AbortSignal },
  ): Promise<UploadedResource> {
    const url = `${this.apiBase}/resources`;
    const proof = await createDpopProof(access.keyPair, { method: 'POST', url, accessToken: access.accessToken });
    if (options.signal?.aborted) throw new AbortedError();
    const xhr = this.#xhr!();
    return new Promise<UploadedResource>((resolve, reject) => {
      const onAbort = () => xhr.abort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      const settle = () => options.signal?.removeEventListener('abort', onAbort);
      xhr.open('POST', url);
      xhr.setRequestHeader('authorization', `DPoP ${access.accessToken}`);
      xhr.setRequestHeader('dpop', proof);
      xhr.setRequestHeader('content-type', mediaType);
      xhr.responseType = 'text';
      xhr.upload.onprogress = (e) =>
        options.onProgress?.({ loaded: e.loaded, total: e.lengthComputable ? e.total : blob.size });
      xhr.onload = () => {
        settle();
        // XMLHttpRequest follows redirects by itself and cannot be told not to: a response from anywhere
        // else is refused, whatever it says.
        if (xhr.responseURL && xhr.responseURL !== url) {
          reject(new RedirectError('the upload was redirected, which is not followed', xhr.responseURL));
          return;
        }
        let body: unknown;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          body = undefined;
        }
        if (xhr.status === 201) {
          options.onProgress?.({ loaded: blob.size, total: blob.size });
          resolve(body as UploadedResource);
        } else {
          reject(errorFromResponse(xhr.status, body, { get: (name) => xhr.getResponseHeader(name) }));
        }
      };
      xhr.onerror = () => {
        settle();
        reject(new NetworkError('the upload failed: the mailbox could not be reached'));
      };
      xhr.onabort = () => {
        settle();
        reject(new AbortedError('upload cancelled'));
      };
      xhr.send(blob);
    });
  }
}

/** The API client against a real mailbox: DPoP on every request, typed errors, one retry with a new token. */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuthRecord } from '../auth/session.js';
import { localFetch, startWebmailFederation, type SignedIn, type WebmailFederation } from '../testing/federation.js';
import { MailboxClient } from './client.js';
import { BadRequestError, NotFoundError, QuotaError, RedirectError, ServerError, errorFromResponse } from './errors.js';

let fed: WebmailFederation;
let alice: SignedIn;

beforeAll(async () => {
  fed = await startWebmailFederation(['example.com']);
  alice = await fed.signIn('alice@example.com');
});
afterAll(() => fed?.close());

describe('MailboxClient', () => {
  it('maps the mailbox’s refusals to typed errors with its own words', async () => {
    const missing = alice.api.getMessage('01jfv4k3q8d2x7m5n9p0r6s1tb');
    await expect(missing).rejects.toBeInstanceOf(NotFoundError);
    await expect(missing).rejects.toMatchObject({ status: 404, code: 'not_found' });

    const badLimit = alice.api.listMessages('inbox', { limit: 500 });
    await expect(badLimit).rejects.toBeInstanceOf(BadRequestError);
    await expect(badLimit).rejects.toThrow(/limit must be an integer from 1 to 200/);

    // A state this server never issued: the sync starts over from GET /state (PROTOCOL.md §9).
    const stale = alice.api.changes('not-a-state');
    await expect(stale).rejects.toBeInstanceOf(BadRequestError);
    await expect(stale).rejects.toMatchObject({ status: 400, code: 'invalid_state' });
  });

  it('refreshes a token the mailbox refuses, and makes the request again', async () => {
    const record = (await alice.db.kv<AuthRecord>('auth'))!;
    // A well-formed JWT the mailbox cannot verify, as after the AS rotated its keys.
    const forged = `${record.tokens.accessToken.split('.').slice(0, 2).join('.')}.AAAA`;
    await alice.db.setKv('auth', { ...record, tokens: { ...record.tokens, accessToken: forged } });
    await expect(alice.api.session()).resolves.toMatchObject({ address: 'alice@example.com' });
    const after = (await alice.db.kv<AuthRecord>('auth'))!;
    expect(after.tokens.accessToken).not.toBe(forged);
  });

  it('uploads a resource and reads it back whole and by Range', async () => {
    const bytes = new TextEncoder().encode('0123456789abcdef');
    const seen: number[] = [];
    const uploaded = await alice.api.upload(new Blob([bytes]), {
      mediaType: 'application/octet-stream',
      onProgress: (p) => seen.push(p.loaded),
    });
    expect(uploaded).toMatchObject({ size: 16, mediaType: 'application/octet-stream' });
    expect(seen.at(-1)).toBe(16);
    const whole = await alice.api.resource(uploaded.contentId);
    // PROTOCOL.md §9: the entity tag is the Content-ID itself, angle brackets included.
    expect(whole.headers.get('etag')).toBe(`"${uploaded.contentId}"`);
    expect(await whole.text()).toBe('0123456789abcdef');
    const part = await alice.api.resource(uploaded.contentId, { range: 'bytes=4-7' });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe('bytes 4-7/16');
    expect(await part.text()).toBe('4567');
  });
});

/** A server on loopback that answers every request with `handle`, and remembers what it was sent. */
async function serve(handle: (req: IncomingMessage, res: ServerResponse) => void) {
  const seen: IncomingMessage[] = [];
  const server: Server = createServer((req, res) => {
    seen.push(req);
    handle(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, seen, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

describe('MailboxClient and redirects', () => {
  it.each([301, 302, 307, 308])(
    'refuses a %i: a typed RedirectError, and the token never reaches where it points',
    async (status) => {
      const elsewhere = await serve((_req, res) => res.end('{}'));
      const mailbox = await serve((req, res) => {
        res.writeHead(status, { location: `${elsewhere.url}${req.url}` });
        res.end();
      });
      try {
        const api = new MailboxClient({ apiBase: `${mailbox.url}/api/v1`, tokens: alice.auth, fetch: localFetch });
        const session = api.session();
        await expect(session).rejects.toBeInstanceOf(RedirectError);
        await expect(session).rejects.toMatchObject({ code: 'redirect_refused' });
        await expect(session).rejects.toThrow(
          'GET /session: the mailbox answered with a redirect, which is not followed',
        );
        expect(mailbox.seen.map((r) => r.url)).toEqual(['/api/v1/session']);
        expect(elsewhere.seen).toEqual([]);
      } finally {
        await mailbox.close();
        await elsewhere.close();
      }
    },
  );

  it('refuses a 3xx that a fetch of its own hands back as an answer', async () => {
    const mailbox = await serve((_req, res) => {
      res.writeHead(302, { location: 'https://attacker.example/' });
      res.end();
    });
    try {
      // A fetch that ignores `redirect: 'error'` and returns the 3xx (as `redirect: 'manual'` does in Node).
      const manual: typeof fetch = (input, init) => localFetch(input, { ...init, redirect: 'manual' });
      const api = new MailboxClient({ apiBase: `${mailbox.url}/api/v1`, tokens: alice.auth, fetch: manual });
      await expect(api.state()).rejects.toMatchObject({
        name: 'RedirectError',
        status: 302,
        location: 'https://attacker.example/',
      });
    } finally {
      await mailbox.close();
    }
  });
});

describe('errorFromResponse', () => {
  const headers = (h: Record<string, string>) => new Headers(h);

  it('keeps Retry-After of quota and server errors, in seconds', () => {
    const quota = errorFromResponse(
      429,
      { error: 'quota_exceeded', error_description: 'used up' },
      headers({ 'retry-after': '120' }),
    );
    expect(quota).toBeInstanceOf(QuotaError);
    expect((quota as QuotaError).retryAfterSeconds).toBe(120);
    const down = errorFromResponse(
      503,
      { error: 'temporarily_unavailable', error_description: 'AS down' },
      headers({}),
    );
    expect(down).toBeInstanceOf(ServerError);
    expect(down.message).toBe('AS down');
  });

  it('says what status came when the body is not the mailbox’s error object', () => {
    const e = errorFromResponse(418, '<html>', headers({}));
    expect(e).toMatchObject({ code: 'http_418', message: 'the mailbox answered HTTP 418' });
  });
});

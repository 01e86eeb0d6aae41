/**
 * Just enough of a browser to sign in through the AS's own login page (services/auth, no JavaScript): it keeps
 * cookies per host, follows redirects one by one through the guarded HTTP client, reads the form's action and
 * CSRF token, and posts the address and password. It stops at the first redirect the caller recognises as
 * the end (the OAuth redirect_uri), which it never requests.
 */
import type { HttpClient } from '@federizer/common';

/** The AS refused the sign-in, in its own words (wrong password, too many attempts, an expired form). */
export class SignInRefused extends Error {
  override readonly name = 'SignInRefused';
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

class CookieJar {
  readonly #cookies = new Map<string, { value: string; path: string }>();

  store(url: URL, headers: Headers): void {
    for (const line of headers.getSetCookie()) {
      const [pair = '', ...attributes] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      const attr = new Map(
        attributes.map((a) => {
          const i = a.indexOf('=');
          return i < 0 ? [a.toLowerCase(), ''] : [a.slice(0, i).toLowerCase(), a.slice(i + 1)];
        }),
      );
      const key = `${url.host} ${name}`;
      const expires = attr.get('expires');
      const expired =
        attr.get('max-age') === '0' || (expires !== undefined && Date.parse(expires) <= Date.now()) || value === '';
      if (expired) this.#cookies.delete(key);
      else this.#cookies.set(key, { value, path: attr.get('path') ?? '/' });
    }
  }

  header(url: URL): string {
    return [...this.#cookies.entries()]
      .filter(([key, c]) => key.startsWith(`${url.host} `) && url.pathname.startsWith(c.path))
      .map(([key, c]) => `${key.slice(url.host.length + 1)}=${c.value}`)
      .join('; ');
  }
}

export type Visit = { readonly end: URL } | { readonly page: string; readonly url: URL; readonly status: number };

const MAX_HOPS = 20;

export class FormBrowser {
  readonly #jar = new CookieJar();
  constructor(private readonly http: HttpClient) {}

  /** Follows redirects from `url`; answers the final page, or the first location `isEnd` accepts. */
  async follow(url: URL, isEnd: (location: URL) => boolean, form?: URLSearchParams): Promise<Visit> {
    let current = url;
    let body = form;
    for (let hops = 0; hops < MAX_HOPS; hops++) {
      const cookie = this.#jar.header(current);
      const response = await this.http.fetch(current, {
        method: body === undefined ? 'GET' : 'POST',
        headers: {
          accept: 'text/html',
          ...(cookie === '' ? {} : { cookie }),
          ...(body === undefined ? {} : { 'content-type': 'application/x-www-form-urlencoded' }),
        },
        body: body?.toString(),
        redirect: 'manual',
      });
      this.#jar.store(current, response.headers as unknown as Headers);
      const location = response.headers.get('location');
      if (response.status >= 300 && response.status < 400 && location !== null) {
        await response.body?.cancel();
        const next = new URL(location, current);
        if (isEnd(next)) return { end: next };
        current = next;
        body = undefined;
        continue;
      }
      return { page: await response.text(), url: current, status: response.status };
    }
    throw new Error(`the sign-in at ${url.origin} redirected more than ${MAX_HOPS} times`);
  }
}

function decodeEntities(text: string): string {
  return text
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&#x([0-9a-f]+);/gi, (_, hex: string) => String.fromCodePoint(parseInt(hex, 16)))
    .replace(/&#([0-9]+);/g, (_, dec: string) => String.fromCodePoint(Number(dec)))
    .replace(/&amp;/g, '&');
}

/** The text of the page's alert region (the AS's pages put every error there), if any. */
export function pageError(html: string): string | undefined {
  const m = /<div[^>]*role="alert"[^>]*>([\s\S]*?)<\/div>/i.exec(html);
  if (!m) return undefined;
  const text = decodeEntities(m[1]!.replace(/<[^>]*>/g, ''))
    .replace(/\s+/g, ' ')
    .trim();
  return text === '' ? undefined : text;
}

function attribute(html: string, pattern: RegExp): string | undefined {
  const m = pattern.exec(html);
  return m === null ? undefined : decodeEntities(m[1]!);
}

/**
 * From the authorization request to the redirect back: the login page, then the form posted with the
 * address and password. Answers the redirect_uri location with the code (or an OAuth error) in its query.
 */
export async function signInThroughForm(
  browser: FormBrowser,
  authorizationUrl: URL,
  isCallback: (location: URL) => boolean,
  credentials: { address: string; password: string },
): Promise<URL> {
  const login = await browser.follow(authorizationUrl, isCallback);
  if ('end' in login) return login.end;
  const action = attribute(login.page, /<form method="post" action="([^"]+)"/);
  const csrf = attribute(login.page, /name="csrf" value="([^"]+)"/);
  if (action === undefined || csrf === undefined) {
    const why = pageError(login.page) ?? `HTTP ${login.status}, and no login form on the page`;
    throw new SignInRefused(`the Authorization Server at ${login.url.origin} did not offer a sign-in: ${why}`, 0);
  }
  const done = await browser.follow(
    new URL(action, login.url),
    isCallback,
    new URLSearchParams({ csrf, address: credentials.address, password: credentials.password }),
  );
  if ('end' in done) return done.end;
  const why = pageError(done.page) ?? `HTTP ${done.status}`;
  throw new SignInRefused(`sign-in refused for ${credentials.address}: ${why}`, done.status);
}

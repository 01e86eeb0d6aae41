/**
 * A small user agent for the AS tests: it keeps cookies per host, follows redirects by hand (so a test can
 * stop at the client's redirect_uri, which no server answers), and signs in through the real login form
 * (its action and CSRF token parsed from the HTML), the way a browser without JavaScript would. It speaks
 * through the project's outbound HTTP client, which resolves `*.localhost` names to loopback.
 *
 * Also here: the openid-client configuration the tests drive the AS with, over that same client.
 */
import * as client from 'openid-client';
import { createHttpClient, type HttpClient } from '@federizer/common';

/** One HTTP client per test process: resolves `*.localhost`, allows http and loopback (development mode). */
let shared: HttpClient | undefined;
export function localHttp(): HttpClient {
  shared ??= createHttpClient({ dev: true });
  return shared;
}

/** Closes the shared client's connections (an afterAll of each suite may call it; it reopens on demand). */
export async function closeLocalHttp(): Promise<void> {
  const client = shared;
  shared = undefined;
  await client?.close();
}

/** A fetch for openid-client's `customFetch` and for plain calls, reaching `http://*.localhost:<port>`. */
export const localFetch = ((url: string | URL, init?: RequestInit) =>
  localHttp().fetch(url, init as never)) as unknown as typeof fetch;

/** Discovers the issuer with openid-client, as a public client (`token_endpoint_auth_method: none`). */
export async function publicClient(issuer: string, clientId: string): Promise<client.Configuration> {
  return client.discovery(new URL(issuer), clientId, { id_token_signed_response_alg: 'ES256' }, client.None(), {
    execute: [client.allowInsecureRequests],
    [client.customFetch]: localFetch as client.CustomFetch,
  });
}

export interface Page {
  readonly url: URL;
  readonly status: number;
  readonly headers: Headers;
  readonly body: string;
  /** Set when the walk stopped at a redirect to a URL the caller asked to stop at (e.g. the redirect_uri). */
  readonly redirect?: URL;
}

export interface RequestOptions {
  readonly method?: 'GET' | 'POST';
  /** Sent as `application/x-www-form-urlencoded`. */
  readonly form?: Record<string, string>;
  readonly headers?: Record<string, string>;
  /** Do not fetch a redirect target for which this answers true: return it as `Page.redirect`. */
  readonly stopAt?: (url: URL) => boolean;
  /** Follow redirects at all (default true). */
  readonly follow?: boolean;
}

interface Cookie {
  readonly name: string;
  readonly value: string;
  readonly path: string;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_HOPS = 20;

const decodeEntities = (s: string) =>
  s
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');

/** `<form ... action="X">...</form>` blocks of a page, with their hidden inputs. */
export function forms(html: string): { action: string; id?: string; hidden: Record<string, string> }[] {
  const out: { action: string; id?: string; hidden: Record<string, string> }[] = [];
  for (const m of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const attrs = m[1]!;
    const action = /\baction="([^"]*)"/i.exec(attrs)?.[1];
    if (action === undefined) continue;
    const hidden: Record<string, string> = {};
    for (const input of m[2]!.matchAll(/<input\b([^>]*)>/gi)) {
      if (!/\btype="hidden"/i.test(input[1]!)) continue;
      const name = /\bname="([^"]*)"/i.exec(input[1]!)?.[1];
      const value = /\bvalue="([^"]*)"/i.exec(input[1]!)?.[1] ?? '';
      if (name !== undefined) hidden[decodeEntities(name)] = decodeEntities(value);
    }
    const id = /\bid="([^"]*)"/i.exec(attrs)?.[1];
    out.push({ action: decodeEntities(action), ...(id === undefined ? {} : { id: decodeEntities(id) }), hidden });
  }
  return out;
}

/** The sign-in form of a login page: where it posts, and its CSRF token. */
export function loginForm(page: Page): { action: URL; csrf: string } {
  const form = forms(page.body).find((f) => /\/login$/.test(f.action));
  if (form === undefined)
    throw new Error(`no sign-in form at ${page.url} (${page.status}): ${page.body.slice(0, 300)}`);
  return { action: new URL(form.action, page.url), csrf: form.hidden.csrf ?? '' };
}

export const isLoginPage = (page: Page) =>
  page.redirect === undefined && forms(page.body).some((f) => /\/login$/.test(f.action));

/** Stops at `redirectUri` (same origin and path, any query): the client's callback. */
export const atRedirectUri = (redirectUri: string) => {
  const target = new URL(redirectUri);
  return (url: URL) => url.origin === target.origin && url.pathname === target.pathname;
};

export class BrowserAgent {
  /** host name → cookies (cookies are not kept apart by port, as in browsers). */
  readonly #jar = new Map<string, Map<string, Cookie>>();
  readonly #headers: Record<string, string>;

  /** `headers` go with every request, e.g. `X-Forwarded-For` to appear to come from another address. */
  constructor(options: { headers?: Record<string, string> } = {}) {
    this.#headers = { ...options.headers };
  }

  /** Every cookie value held, for tests that check none of them leaks. */
  cookieValues(): string[] {
    return [...this.#jar.values()].flatMap((m) => [...m.values()].map((c) => c.value));
  }

  #cookieHeader(url: URL): string | undefined {
    const cookies = this.#jar.get(url.hostname);
    if (cookies === undefined) return undefined;
    const matching = [...cookies.values()]
      .filter((c) => url.pathname === c.path || url.pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
      .sort((a, b) => b.path.length - a.path.length);
    return matching.length === 0 ? undefined : matching.map((c) => `${c.name}=${c.value}`).join('; ');
  }

  #store(url: URL, headers: Headers): void {
    for (const line of headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair!.indexOf('=');
      const name = pair!.slice(0, eq);
      const value = pair!.slice(eq + 1);
      let path = '/';
      let expired = value === '';
      for (const attr of attrs) {
        const [k, v = ''] = attr.split('=');
        const key = k!.toLowerCase();
        if (key === 'path') path = v;
        if (key === 'max-age' && Number(v) <= 0) expired = true;
        if (key === 'expires' && Date.parse(v) <= Date.now()) expired = true;
      }
      const cookies = this.#jar.get(url.hostname) ?? new Map<string, Cookie>();
      this.#jar.set(url.hostname, cookies);
      const key = `${name}\u0000${path}`;
      if (expired) cookies.delete(key);
      else cookies.set(key, { name, value, path });
    }
  }

  /** One request, then its redirects (303 and POST-301/302 turn into GET, as browsers do). */
  async request(url: string | URL, options: RequestOptions = {}): Promise<Page> {
    let target = new URL(url);
    let method = options.method ?? (options.form ? 'POST' : 'GET');
    let body: string | undefined = options.form ? new URLSearchParams(options.form).toString() : undefined;
    for (let hop = 0; hop <= MAX_HOPS; hop++) {
      const headers: Record<string, string> = { accept: 'text/html', ...this.#headers, ...options.headers };
      const cookie = this.#cookieHeader(target);
      if (cookie !== undefined) headers.cookie = cookie;
      if (body !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
      const res = await localHttp().fetch(target, { method, headers, body, redirect: 'manual' });
      this.#store(target, res.headers as unknown as Headers);
      const location = res.headers.get('location');
      if (!REDIRECTS.has(res.status) || location === null || options.follow === false) {
        return { url: target, status: res.status, headers: res.headers as unknown as Headers, body: await res.text() };
      }
      await res.body?.cancel();
      const next = new URL(location, target);
      if (options.stopAt?.(next)) {
        return {
          url: target,
          status: res.status,
          headers: res.headers as unknown as Headers,
          body: '',
          redirect: next,
        };
      }
      if (res.status === 303 || ((res.status === 301 || res.status === 302) && method === 'POST')) {
        method = 'GET';
        body = undefined;
      }
      target = next;
    }
    throw new Error(`more than ${MAX_HOPS} redirects from ${url}`);
  }

  /** Posts the sign-in form of `page` (its CSRF token unless `csrf` is given). */
  async submitLogin(
    page: Page,
    address: string,
    password: string,
    options: { csrf?: string | null; stopAt?: (url: URL) => boolean } = {},
  ): Promise<Page> {
    const form = loginForm(page);
    const fields: Record<string, string> = { address, password };
    const csrf = options.csrf === undefined ? form.csrf : options.csrf;
    if (csrf !== null) fields.csrf = csrf;
    return this.request(form.action, { form: fields, stopAt: options.stopAt });
  }

  /**
   * The whole sign-in: opens the authorization URL, signs in on the form if the AS shows it, and follows
   * the redirects until the client's redirect_uri. Returns that callback URL (code, state, iss).
   */
  async signIn(authorizationUrl: URL, redirectUri: string, address: string, password: string): Promise<URL> {
    const stopAt = atRedirectUri(redirectUri);
    let page = await this.request(authorizationUrl, { stopAt });
    if (page.redirect === undefined) page = await this.submitLogin(page, address, password, { stopAt });
    if (page.redirect === undefined) {
      throw new Error(
        `sign-in did not reach ${redirectUri}: ${page.status} at ${page.url}: ${page.body.slice(0, 500)}`,
      );
    }
    return page.redirect;
  }
}

/** What the webmail and the CLI ask for. OpenID Connect Core §11: offline_access needs prompt=consent. */
export const USER_SCOPE = 'openid offline_access mailbox';

/**
 * An authorization request with PKCE S256 and a state, as openid-client builds it. A parameter given as
 * undefined is left out (to build requests that lack one).
 */
export async function authorizationRequest(
  config: client.Configuration,
  redirectUri: string,
  params: Record<string, string | undefined> = {},
): Promise<{ url: URL; verifier: string; state: string }> {
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const all: Record<string, string | undefined> = {
    redirect_uri: redirectUri,
    scope: USER_SCOPE,
    prompt: 'consent',
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    ...params,
  };
  const defined = Object.fromEntries(Object.entries(all).filter((e): e is [string, string] => e[1] !== undefined));
  return { url: client.buildAuthorizationUrl(config, defined), verifier, state };
}

/** Signs in through the form and redeems the code with a fresh DPoP key (RFC 9449), as a public client. */
export async function signInWithCode(
  config: client.Configuration,
  redirectUri: string,
  user: { readonly address: string; readonly password: string },
  browser: BrowserAgent = new BrowserAgent(),
) {
  const dpopKeys = await client.randomDPoPKeyPair('ES256');
  const DPoP = client.getDPoPHandle(config, dpopKeys);
  const { url, verifier, state } = await authorizationRequest(config, redirectUri);
  const callback = await browser.signIn(url, redirectUri, user.address, user.password);
  const tokens = await client.authorizationCodeGrant(
    config,
    callback,
    { pkceCodeVerifier: verifier, expectedState: state, idTokenExpected: true },
    undefined,
    { DPoP },
  );
  return { tokens, DPoP, dpopKeys, callback, verifier, state, browser };
}

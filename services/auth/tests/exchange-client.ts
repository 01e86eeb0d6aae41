/**
 * A real OAuth client for the token exchange tests: openid-client 6 against the harness's Authorization
 * Servers, over HTTP to `*.localhost` (the common HTTP client resolves those names to loopback; node's own
 * resolver here does not).
 *
 * - `signIn` signs a user in as the webmail would: authorization code + PKCE + DPoP through the AS's own
 *   login form, with a cookie-keeping fetch, then the code exchanged by openid-client.
 * - `MtaClient` is a domain's MTA: RFC 8414 discovery, `private_key_jwt` client authentication, and RFC 8693
 *   exchanges with a fresh DPoP key each (PROTOCOL.md §4.4, §6.1, §7). Every exchange gets its own
 *   `Configuration` whose fetch records the request and the raw answer, and may tamper with the request,
 *   so a test can replay a proof or drop a header while everything else stays what the real client sends.
 */
import { get } from 'node:http';
import * as oidc from 'openid-client';
import { calculateJwkThumbprint, exportJWK, type JWK } from 'jose';
import { DnsClient, createHttpClient, silentLogger, type HttpClient } from '@federizer/common';
import { Discovery, type HttpGet } from '@federizer/protocol';
import { AuthService } from '../src/index.js';
import { ADMIN_TOKEN, type Federation, type TestDomain } from './harness.js';

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const TOKEN_TYPE = {
  accessToken: 'urn:ietf:params:oauth:token-type:access_token',
  jwt: 'urn:ietf:params:oauth:token-type:jwt',
} as const;

/** The HTTP client of the tests: development mode (http and loopback allowed), `*.localhost` resolved. */
export function testHttp(): HttpClient {
  return createHttpClient({ dev: true });
}

/** openid-client's `customFetch` over the common HTTP client. */
export function customFetchOf(http: HttpClient): oidc.CustomFetch {
  return async (url, options) =>
    (await http.fetch(url, {
      method: options.method,
      headers: options.headers,
      body: options.body as string | undefined,
      redirect: 'manual',
      signal: options.signal,
    })) as unknown as Response;
}

/** PROTOCOL.md §8 discovery through the harness DNS server and real HTTP, as a receiving mailbox does it. */
export function federationDiscovery(fed: Federation, http: HttpClient): Discovery {
  return new Discovery({
    resolveSrv: new DnsClient({ servers: [fed.dns.address] }).resolveSrv,
    httpGet: ((url, init) => http.fetch(url, init)) as HttpGet,
    allowHttp: true,
  });
}

/** RFC 7638 thumbprint of a key pair's public key: the `cnf.jkt` of the tokens bound to it. */
export async function thumbprint(keyPair: oidc.CryptoKeyPair): Promise<string> {
  return calculateJwkThumbprint(await exportJWK(keyPair.publicKey), 'sha256');
}

export async function publicJwkOf(keyPair: oidc.CryptoKeyPair): Promise<JWK> {
  return exportJWK(keyPair.publicKey);
}

// ---------------------------------------------------------------------------------------------------
// The MTA and its exchanges

/** What one exchange request carried and what came back, before openid-client interpreted it. */
export interface ExchangeTrace {
  /** The DPoP header sent, if any. */
  dpop?: string;
  /** The form parameters sent. */
  form?: URLSearchParams;
  status?: number;
  headers?: Headers;
  /** The answer's JSON body, as the server wrote it (openid-client lower-cases `token_type`). */
  body?: Record<string, unknown>;
}

export interface ExchangeOptions {
  /** The DPoP key pair; a fresh ES256 key by default (§4.4: a fresh key per exchange). */
  readonly dpopKey?: oidc.CryptoKeyPair;
  /** No DPoP header at all. */
  readonly withoutDpop?: boolean;
  /** Changes the proof's header or claims right before openid-client signs it. */
  readonly modifyProof?: (header: Record<string, unknown>, payload: Record<string, unknown>) => void;
  /** Changes the request right before it is sent (after openid-client built and signed it). */
  readonly tamper?: (request: { headers: Record<string, string>; form: URLSearchParams }) => void;
}

export interface Exchanged {
  readonly token: string;
  readonly result: oidc.TokenEndpointResponse;
  readonly trace: ExchangeTrace;
  readonly dpopKey: oidc.CryptoKeyPair;
  readonly jkt: string;
}

/** An error answer of the token endpoint. */
export interface Refusal {
  readonly status: number;
  readonly error: string;
  readonly error_description: string | undefined;
  readonly headers: Headers;
  readonly trace: ExchangeTrace;
}

export class ExchangeRefused extends Error {
  constructor(readonly refusal: Refusal) {
    super(`${refusal.status} ${refusal.error}: ${refusal.error_description ?? ''}`);
  }
}

/**
 * A domain's MTA: a confidential client authenticated with `private_key_jwt` (RFC 7523 §2.2). `clientId` and
 * `clientAuth` let a test play another client; `server` overrides discovered metadata (an endpoint URL).
 */
export class MtaClient {
  private constructor(
    readonly domain: TestDomain,
    readonly clientId: string,
    readonly server: oidc.ServerMetadata,
    private readonly http: HttpClient,
    private readonly clientAuth: () => oidc.ClientAuth,
  ) {}

  /** RFC 8414 discovery of the domain's AS (its issuer checked by openid-client). */
  static async connect(
    domain: TestDomain,
    http: HttpClient,
    options: { clientId?: string; clientAuth?: () => oidc.ClientAuth; server?: Partial<oidc.ServerMetadata> } = {},
  ): Promise<MtaClient> {
    const clientId = options.clientId ?? domain.config.mta.clientId;
    const clientAuth = options.clientAuth ?? (() => oidc.PrivateKeyJwt(domain.mtaKey.privateKey));
    const config = await oidc.discovery(new URL(domain.issuer), clientId, undefined, clientAuth(), {
      algorithm: 'oauth2',
      execute: [oidc.allowInsecureRequests],
      [oidc.customFetch]: customFetchOf(http),
    });
    return new MtaClient(domain, clientId, { ...config.serverMetadata(), ...options.server }, http, clientAuth);
  }

  /** A client configuration for one request whose fetch records (and may tamper with) what it sends. */
  configuration(trace: ExchangeTrace, options: Pick<ExchangeOptions, 'tamper'> = {}): oidc.Configuration {
    const config = new oidc.Configuration(this.server, this.clientId, undefined, this.clientAuth());
    oidc.allowInsecureRequests(config);
    const base = customFetchOf(this.http);
    config[oidc.customFetch] = async (url, init) => {
      const headers = { ...init.headers };
      const form = new URLSearchParams(typeof init.body === 'string' ? init.body : String(init.body ?? ''));
      options.tamper?.({ headers, form });
      trace.dpop = Object.entries(headers).find(([name]) => name.toLowerCase() === 'dpop')?.[1];
      trace.form = form;
      const response = await base(url, { ...init, headers, body: form.toString() });
      trace.status = response.status;
      trace.headers = response.headers;
      const text = await response.clone().text();
      try {
        trace.body = JSON.parse(text) as Record<string, unknown>;
      } catch {
        trace.body = { text };
      }
      return response;
    };
    return config;
  }

  /** An RFC 8693 exchange; resolves with the issued token, rejects with `ExchangeRefused`. */
  async exchange(params: Record<string, string>, options: ExchangeOptions = {}): Promise<Exchanged> {
    const trace: ExchangeTrace = {};
    const config = this.configuration(trace, options);
    const dpopKey = options.dpopKey ?? (await oidc.randomDPoPKeyPair('ES256'));
    const DPoP = options.withoutDpop
      ? undefined
      : oidc.getDPoPHandle(
          config,
          dpopKey,
          options.modifyProof === undefined
            ? undefined
            : {
                [oidc.modifyAssertion]: (header, payload) =>
                  options.modifyProof!(header as Record<string, unknown>, payload as Record<string, unknown>),
              },
        );
    let result: oidc.TokenEndpointResponse;
    try {
      result = await oidc.genericGrantRequest(config, TOKEN_EXCHANGE, params, { DPoP });
    } catch (e) {
      if (e instanceof oidc.ResponseBodyError) {
        throw new ExchangeRefused({
          status: e.status,
          error: e.error,
          error_description: e.error_description,
          headers: e.response.headers,
          trace,
        });
      }
      // openid-client reads an OAuth error body only from 4xx answers; a 503 temporarily_unavailable comes
      // back as the raw response, whose body the trace has already kept.
      if ((trace.status ?? 0) >= 500 && trace.headers && typeof trace.body?.error === 'string') {
        throw new ExchangeRefused({
          status: trace.status!,
          error: trace.body.error,
          error_description: trace.body.error_description as string | undefined,
          headers: trace.headers,
          trace,
        });
      }
      throw e;
    }
    return { token: result.access_token, result, trace, dpopKey, jkt: await thumbprint(dpopKey) };
  }

  /** An exchange that must be refused: its error answer. */
  async refused(params: Record<string, string>, options: ExchangeOptions = {}): Promise<Refusal> {
    try {
      const issued = await this.exchange(params, options);
      throw new Error(
        `expected a refusal, but the AS answered ${issued.trace.status} and issued ${String(issued.trace.body?.issued_token_type)}`,
      );
    } catch (e) {
      if (e instanceof ExchangeRefused) return e.refusal;
      throw e;
    }
  }

  /** §4.4: the send exchange of a copy, with the user's access token as the subject. */
  send(userToken: string, headers: readonly object[], options: ExchangeOptions = {}): Promise<Exchanged> {
    return this.exchange(sendParams(userToken, headers), options);
  }
}

export function sendParams(userToken: string, headers: readonly object[]): Record<string, string> {
  return {
    subject_token: userToken,
    subject_token_type: TOKEN_TYPE.accessToken,
    requested_token_type: TOKEN_TYPE.jwt,
    scope: 'internet_mail',
    headers: JSON.stringify(headers),
  };
}

export function forwardParams(assertion: string, headers: readonly object[], senderDomain: string) {
  return {
    subject_token: assertion,
    subject_token_type: TOKEN_TYPE.jwt,
    requested_token_type: TOKEN_TYPE.jwt,
    scope: 'internet_mail',
    sender_domain: senderDomain,
    headers: JSON.stringify(headers),
  };
}

export function fetchParams(assertion: string, audience: string, messageId: string, senderDomain: string) {
  return {
    subject_token: assertion,
    subject_token_type: TOKEN_TYPE.jwt,
    requested_token_type: TOKEN_TYPE.accessToken,
    audience,
    scope: 'internet_mail',
    message_id: messageId,
    sender_domain: senderDomain,
  };
}

// ---------------------------------------------------------------------------------------------------
// A user signing in through the login form (authorization code + PKCE + DPoP)

/** A minimal cookie jar: name → value per host, honouring Path and deletion. */
class CookieJar {
  readonly #cookies = new Map<string, { value: string; path: string }>();

  store(url: URL, response: { headers: Headers }): void {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(';').map((s) => s.trim());
      const eq = pair!.indexOf('=');
      const name = pair!.slice(0, eq);
      const value = pair!.slice(eq + 1);
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

/** A browser-like fetch: keeps cookies and follows redirects until `stop` says the location is the end. */
class Browser {
  readonly jar = new CookieJar();
  constructor(private readonly http: HttpClient) {}

  async request(url: URL, init: { method?: string; body?: URLSearchParams } = {}) {
    const cookie = this.jar.header(url);
    const response = await this.http.fetch(url, {
      method: init.method ?? 'GET',
      headers: {
        accept: 'text/html',
        ...(cookie === '' ? {} : { cookie }),
        ...(init.body === undefined ? {} : { 'content-type': 'application/x-www-form-urlencoded' }),
      },
      body: init.body?.toString(),
      redirect: 'manual',
    });
    this.jar.store(url, response);
    return response;
  }

  /** Follows redirects from `url`; returns the final page, or the first location `isEnd` accepts. */
  async follow(
    url: URL,
    isEnd: (location: URL) => boolean,
    init: { method?: string; body?: URLSearchParams } = {},
  ): Promise<{ end: URL } | { page: string; url: URL; status: number }> {
    let current = url;
    let request = init;
    for (let hops = 0; hops < 20; hops++) {
      const response = await this.request(current, request);
      const location = response.headers.get('location');
      if (response.status >= 300 && response.status < 400 && location !== null) {
        const next = new URL(location, current);
        await response.body?.cancel();
        if (isEnd(next)) return { end: next };
        current = next;
        request = {};
        continue;
      }
      return { page: await response.text(), url: current, status: response.status };
    }
    throw new Error(`too many redirects from ${url.href}`);
  }
}

function attribute(html: string, pattern: RegExp, what: string): string {
  const m = pattern.exec(html);
  if (!m) throw new Error(`the login page has no ${what}:\n${html.slice(0, 2000)}`);
  return m[1]!
    .replace(/&amp;/g, '&')
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'");
}

export interface UserSession {
  readonly accessToken: string;
  readonly refreshToken: string | undefined;
  readonly result: oidc.TokenEndpointResponse;
  readonly dpopKey: oidc.CryptoKeyPair;
  /** The webmail's client configuration, for revocation and refresh. */
  readonly config: oidc.Configuration;
}

/**
 * Signs `address` in at its domain's AS as the webmail client does: a PKCE authorization request, the
 * login form (its `action` and hidden `csrf` read from the page), the redirects back to the redirect_uri,
 * and the code exchanged with a DPoP key. Asks for `offline_access` (with `prompt=consent`, which
 * oidc-provider requires for it) so that the session has a refresh token to revoke.
 */
export async function signIn(
  domain: TestDomain,
  http: HttpClient,
  address: string,
  password: string,
): Promise<UserSession> {
  const config = await oidc.discovery(
    new URL(domain.issuer),
    domain.config.webmail.clientId,
    { id_token_signed_response_alg: domain.config.signingAlg },
    oidc.None(),
    { algorithm: 'oauth2', execute: [oidc.allowInsecureRequests], [oidc.customFetch]: customFetchOf(http) },
  );
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const redirectUri = domain.webmailRedirectUri;
  const authorizationUrl = oidc.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid offline_access email mailbox',
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    prompt: 'consent',
    resource: domain.mailboxResource,
  });
  const browser = new Browser(http);
  const isCallback = (location: URL) => location.href.startsWith(redirectUri);
  const login = await browser.follow(authorizationUrl, isCallback);
  if ('end' in login) throw new Error(`signed in without a login form: ${login.end.href}`);
  const action = attribute(login.page, /<form method="post" action="([^"]+)"/, 'form action');
  const csrf = attribute(login.page, /name="csrf" value="([^"]+)"/, 'csrf field');
  const done = await browser.follow(new URL(action, login.url), isCallback, {
    method: 'POST',
    body: new URLSearchParams({ csrf, address, password }),
  });
  if (!('end' in done)) throw new Error(`the sign-in did not come back to ${redirectUri}: ${done.status} ${done.page}`);
  const dpopKey = await oidc.randomDPoPKeyPair('ES256');
  const result = await oidc.authorizationCodeGrant(
    config,
    done.end,
    { pkceCodeVerifier: verifier, expectedState: state },
    { resource: domain.mailboxResource },
    { DPoP: oidc.getDPoPHandle(config, dpopKey) },
  );
  return { accessToken: result.access_token, refreshToken: result.refresh_token, result, dpopKey, config };
}

// ---------------------------------------------------------------------------------------------------
// Restarts and metrics

/**
 * Stops a domain's AS and starts a new one on the same issuer, port and database, as a redeployment
 * does. The caller closes the returned service (the federation still closes the database afterwards).
 */
export async function restartAuthServer(domain: TestDomain, now?: () => number): Promise<AuthService> {
  await domain.as.close();
  return AuthService.start(
    domain.config,
    { adminToken: ADMIN_TOKEN, cookieKeys: ['test-cookie-key-0123456789abcdef'] },
    { knex: domain.as.knex, logger: silentLogger(), now },
  );
}

/** The value of one Prometheus sample of the AS's `/metrics`, 0 when absent. */
export async function metricValue(domain: TestDomain, name: string, labels: Record<string, string>): Promise<number> {
  // A connection of its own each time (no keep-alive pool): the AS may have been restarted on this port.
  const text = await new Promise<string>((resolve, reject) => {
    get(`${domain.as.url}/metrics`, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve(body));
      res.on('error', reject);
    }).on('error', reject);
  });
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labelText = line.slice(name.length).replace(/\s.*$/, '');
    if (wanted.every((w) => labelText.includes(w))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

/**
 * Signing a user in as the AS's registered public client `federizer-cli` (services/auth config `cli`):
 * the authorization code grant with PKCE (RFC 7636), a loopback redirect_uri (RFC 8252 §7.3), the code
 * bound to a fresh ES256 DPoP key (`dpop_jkt`, RFC 9449 §10) and exchanged with openid-client for a
 * DPoP-bound access token to the mailbox's client API. The key lives in memory only, for one command.
 *
 * With a password (read from standard input) the login form is filled in directly and the redirect is never
 * followed; without one, a loopback listener receives the redirect from a browser the user opens.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as oidc from 'openid-client';
import type { HttpClient } from '@federizer/common';
import { normalizeAddress, type DpopKey, dpopKeyOf } from '@federizer/protocol';
import { FormBrowser, SignInRefused, signInThroughForm } from './login-form.js';

/** The client the AS registers for this command (services/auth/src/config.ts `cli`). */
export const CLI_CLIENT_ID = 'federizer-cli';
/** Its registered redirect URI; the AS accepts any port on it, as RFC 8252 §7.3 asks. */
export const CLI_REDIRECT_URI = 'http://127.0.0.1/callback';
/** Only the client API: no OpenID Connect, so no ID token whose signing algorithm the CLI would need to know. */
const SCOPE = 'mailbox';
const BROWSER_WAIT_MS = 5 * 60_000;

export interface UserSession {
  readonly accessToken: string;
  readonly key: DpopKey;
  /** Milliseconds since the epoch. */
  readonly expiresAt: number;
}

export interface SignInOptions {
  readonly http: HttpClient;
  /** Development mode: an http issuer is allowed. */
  readonly dev: boolean;
  /** The RFC 8414 metadata of the user's AS, found through `_federizer._as._tcp` and checked by discovery. */
  readonly server: { readonly issuer: string; readonly metadata: Record<string, unknown> };
  /** The mailbox's resource indicator (RFC 8707): the audience of the access token. */
  readonly resource: string;
  readonly address: string;
  /** Without it, the user signs in with a browser at the URL given to `showUrl`. */
  readonly password?: string;
  readonly showUrl?: (url: string) => void;
  readonly browserWaitMs?: number;
  readonly now?: () => number;
}

/** openid-client's fetch over the guarded HTTP client (http only in development mode, no private addresses). */
function customFetchOf(http: HttpClient): oidc.CustomFetch {
  return async (url, options) =>
    (await http.fetch(url, {
      method: options.method,
      headers: options.headers,
      body: options.body as string | undefined,
      redirect: 'manual',
      signal: options.signal,
    })) as unknown as Response;
}

/** The `sub` of the JWT access token, read without verifying it: only to tell a user who signed in as whom. */
function subjectOf(accessToken: string): string | undefined {
  try {
    const payload = JSON.parse(Buffer.from(accessToken.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
      sub?: unknown;
    };
    return typeof payload.sub === 'string' ? payload.sub : undefined;
  } catch {
    return undefined;
  }
}

function describe(error: unknown): string {
  if (error instanceof oidc.AuthorizationResponseError || error instanceof oidc.ResponseBodyError) {
    return `${error.error}${error.error_description ? `: ${error.error_description}` : ''}`;
  }
  const cause = (error as { cause?: { message?: string } }).cause?.message;
  return `${(error as Error).message}${cause ? ` (${cause})` : ''}`;
}

export async function signIn(options: SignInOptions): Promise<UserSession> {
  const now = options.now ?? Date.now;
  const config = new oidc.Configuration(
    options.server.metadata as unknown as oidc.ServerMetadata,
    CLI_CLIENT_ID,
    undefined,
    oidc.None(),
  );
  if (options.dev) oidc.allowInsecureRequests(config);
  config[oidc.customFetch] = customFetchOf(options.http);
  const pair = await oidc.randomDPoPKeyPair('ES256');
  const key = await dpopKeyOf(pair);
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const parameters = {
    scope: SCOPE,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    resource: options.resource,
    dpop_jkt: key.jkt,
    login_hint: options.address,
  };

  let callback: URL;
  try {
    if (options.password !== undefined) {
      const authorizationUrl = oidc.buildAuthorizationUrl(config, { ...parameters, redirect_uri: CLI_REDIRECT_URI });
      const isCallback = (location: URL) =>
        `${location.origin}${location.pathname}` === CLI_REDIRECT_URI && location.searchParams.get('state') === state;
      callback = await signInThroughForm(new FormBrowser(options.http), authorizationUrl, isCallback, {
        address: options.address,
        password: options.password,
      });
    } else {
      callback = await viaBrowser(config, parameters, state, options);
    }
  } catch (e) {
    if (e instanceof SignInRefused) throw e;
    throw new Error(`signing in at ${options.server.issuer} failed: ${describe(e)}`, { cause: e });
  }

  let result: oidc.TokenEndpointResponse;
  try {
    result = await oidc.authorizationCodeGrant(
      config,
      callback,
      { pkceCodeVerifier: verifier, expectedState: state },
      { resource: options.resource },
      { DPoP: oidc.getDPoPHandle(config, pair) },
    );
  } catch (e) {
    throw new Error(`signing in at ${options.server.issuer} failed: ${describe(e)}`, { cause: e });
  }
  if (result.token_type?.toLowerCase() !== 'dpop') {
    throw new Error(`${options.server.issuer} issued a ${String(result.token_type)} token, not a DPoP-bound one`);
  }
  const subject = subjectOf(result.access_token);
  if (subject !== undefined && normalizeAddress(subject) !== normalizeAddress(options.address)) {
    throw new SignInRefused(`signed in as ${subject}, not as ${options.address}`, 0);
  }
  return { accessToken: result.access_token, key, expiresAt: now() + (result.expires_in ?? 300) * 1000 };
}

/**
 * RFC 8252 §7.3: a listener on a loopback port of our choosing receives the redirect. Only a request that
 * carries our `state` ends the wait; anything else hitting the port is answered 404 or 400 and ignored.
 */
async function viaBrowser(
  config: oidc.Configuration,
  parameters: Record<string, string>,
  state: string,
  options: SignInOptions,
): Promise<URL> {
  let settle: { resolve: (url: URL) => void; reject: (e: Error) => void } | undefined;
  const received = new Promise<URL>((resolve, reject) => (settle = { resolve, reject }));
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    const page = (status: number, text: string) =>
      res
        .writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' })
        .end(`${text}\n`);
    if (req.method !== 'GET' || url.pathname !== '/callback') return page(404, 'Not found.');
    if (url.searchParams.get('state') !== state) return page(400, 'This sign-in is not the one federizer waits for.');
    const error = url.searchParams.get('error');
    page(200, error === null ? 'Signed in: you can close this tab.' : `Sign-in failed: ${error}.`);
    settle!.resolve(url);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const port = (server.address() as AddressInfo).port;
  const redirectUri = CLI_REDIRECT_URI.replace('127.0.0.1', `127.0.0.1:${port}`);
  const waitMs = options.browserWaitMs ?? BROWSER_WAIT_MS;
  const timer = setTimeout(
    () => settle!.reject(new Error(`nobody signed in within ${Math.round(waitMs / 1000)} seconds`)),
    waitMs,
  );
  try {
    options.showUrl?.(oidc.buildAuthorizationUrl(config, { ...parameters, redirect_uri: redirectUri }).href);
    return await received;
  } finally {
    clearTimeout(timer);
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

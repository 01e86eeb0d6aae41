/**
 * Sign-in (authorization code + PKCE, RFC 7636), DPoP-bound tokens (RFC 9449), silent refresh and
 * sign-out, with oauth4webapi. The session lives in IndexedDB: tokens and the DPoP key pair, whose
 * private key is a non-extractable WebCrypto key, so that a stolen copy of the database is useless
 * without this browser. Pages and the service worker share this code and this record.
 *
 * Refresh tokens rotate, and the AS revokes the whole grant when a rotated one is presented again: two
 * tabs (or a tab and the service worker) refreshing at once would sign the user out. Every refresh
 * therefore runs under one Web Lock, and re-reads the record inside it: whoever waited finds the
 * tokens the first one got, and uses them.
 */
import * as oauth from 'oauth4webapi';
import { apiBase, type WebmailConfig } from '../app/config.js';
import type { LocalDb } from '../stores/local-db.js';
import { RESOURCE_CACHE } from '../sw/resource-route.js';
import { generateDpopKeyPair } from './dpop.js';

export interface AuthTokens {
  readonly accessToken: string;
  readonly refreshToken?: string;
  readonly idToken?: string;
  /** Epoch milliseconds. */
  readonly expiresAt: number;
}

export interface AuthRecord {
  readonly tokens: AuthTokens;
  readonly keyPair: CryptoKeyPair;
  /** Where the tokens are good: the service worker reads it with the tokens. */
  readonly mailboxUrl: string;
}

interface PendingSignIn {
  readonly state: string;
  readonly codeVerifier: string;
  readonly keyPair: CryptoKeyPair;
  readonly createdAt: number;
}

export interface AccessToken {
  readonly accessToken: string;
  readonly keyPair: CryptoKeyPair;
}

/** The part of the Web Locks API used here (`navigator.locks`). */
export interface Locks {
  request<T>(name: string, callback: () => Promise<T>): Promise<T>;
}

/** The grant is gone (revoked, expired, or never made): the user must sign in again. */
export class SignedOutError extends Error {
  override readonly name = 'SignedOutError';
}

/** The sign-in came back with an error, or could not be completed. */
export class SignInError extends Error {
  override readonly name = 'SignInError';
}

export const TOKEN_LOCK = 'federizer-webmail-token';
/** Refresh this long before the access token expires, so a request never leaves with a token about to lapse. */
const EXPIRY_MARGIN_MS = 60_000;
/** An abandoned sign-in (the user closed the AS page) is forgotten after this. */
const PENDING_MAX_AGE_MS = 30 * 60_000;
/** What the webmail asks for: the mailbox API, a refresh token, and an ID token for the logout hint. */
const SCOPE = 'openid offline_access email mailbox';

/** Without Web Locks (old browsers, Node), refreshes are serialized within this one context only. */
function localLocks(): Locks {
  let tail: Promise<unknown> = Promise.resolve();
  return {
    request<T>(_name: string, callback: () => Promise<T>): Promise<T> {
      const run = tail.then(callback, callback);
      tail = run.catch(() => undefined);
      return run;
    },
  };
}

export function defaultLocks(): Locks {
  const nav = (globalThis as { navigator?: { locks?: Locks } }).navigator;
  const locks = nav?.locks;
  return locks ? { request: (name, callback) => locks.request(name, callback) } : localLocks();
}

export interface AuthSessionOptions {
  readonly config: Pick<WebmailConfig, 'issuer' | 'clientId' | 'redirectUri' | 'postLogoutRedirectUri' | 'mailboxUrl'>;
  readonly db: LocalDb;
  readonly fetch?: typeof fetch;
  readonly locks?: Locks;
  readonly now?: () => number;
}

export class AuthSession {
  readonly #config: AuthSessionOptions['config'];
  readonly #db: LocalDb;
  readonly #locks: Locks;
  readonly #now: () => number;
  readonly #client: oauth.Client;
  readonly #http: {
    [oauth.customFetch]: (url: string, options: oauth.CustomFetchOptions<string, unknown>) => Promise<Response>;
    [oauth.allowInsecureRequests]?: boolean;
  };
  #server: Promise<oauth.AuthorizationServer> | undefined;
  readonly #signedOut = new Set<() => void>();

  constructor(options: AuthSessionOptions) {
    this.#config = options.config;
    this.#db = options.db;
    this.#locks = options.locks ?? defaultLocks();
    this.#now = options.now ?? Date.now;
    this.#client = { client_id: options.config.clientId };
    const fetchFn = options.fetch ?? ((input, init) => fetch(input, init));
    this.#http = {
      [oauth.customFetch]: (url, init) => fetchFn(url, init as RequestInit),
      // The local federation runs on http://*.localhost; anywhere else the AS is https.
      ...(new URL(options.config.issuer).protocol === 'http:' ? { [oauth.allowInsecureRequests]: true } : {}),
    };
  }

  get resource(): string {
    return apiBase(this.#config);
  }

  /** Called when the grant ends under the user's feet (a refresh refused), not on a sign-out they asked for. */
  onSignedOut(listener: () => void): () => void {
    this.#signedOut.add(listener);
    return () => this.#signedOut.delete(listener);
  }

  async isSignedIn(): Promise<boolean> {
    return (await this.#db.kv<AuthRecord>('auth')) !== undefined;
  }

  /** RFC 8414 metadata, remembered so that a page opened offline, or the service worker, can still refresh later. */
  server(): Promise<oauth.AuthorizationServer> {
    this.#server ??= (async () => {
      const issuer = new URL(this.#config.issuer);
      try {
        const res = await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...this.#http });
        const as = await oauth.processDiscoveryResponse(issuer, res);
        await this.#db.setKv('as-metadata', as);
        return as;
      } catch (e) {
        const cached = await this.#db.kv<oauth.AuthorizationServer>('as-metadata');
        if (cached?.issuer === this.#config.issuer) return cached;
        throw e;
      }
    })();
    this.#server.catch(() => (this.#server = undefined));
    return this.#server;
  }

  #dpop(keyPair: CryptoKeyPair): oauth.DPoPHandle {
    return oauth.DPoP(this.#client, keyPair);
  }

  /** Prepares a sign-in and returns the authorization URL to navigate to. */
  async beginSignIn(): Promise<string> {
    const as = await this.server();
    if (!as.authorization_endpoint) throw new SignInError(`${as.issuer} publishes no authorization_endpoint`);
    const codeVerifier = oauth.generateRandomCodeVerifier();
    const state = oauth.generateRandomState();
    const keyPair = await generateDpopKeyPair();
    const pending: PendingSignIn = { state, codeVerifier, keyPair, createdAt: this.#now() };
    await this.#db.setKv('pending-sign-in', pending);
    const url = new URL(as.authorization_endpoint);
    url.search = new URLSearchParams({
      client_id: this.#client.client_id,
      redirect_uri: this.#config.redirectUri,
      response_type: 'code',
      scope: SCOPE,
      // oidc-provider issues a refresh token for offline_access only with consent asked for; first-party
      // clients are granted it without a consent page.
      prompt: 'consent',
      resource: this.resource,
      state,
      code_challenge: await oauth.calculatePKCECodeChallenge(codeVerifier),
      code_challenge_method: 'S256',
      // RFC 9449 §10: the code can only be redeemed with this key.
      dpop_jkt: await this.#dpop(keyPair).calculateThumbprint(),
    }).toString();
    return url.href;
  }

  /** Redeems the code of the redirect back to `redirectUri`. */
  async completeSignIn(callback: URL): Promise<void> {
    const pending = await this.#db.kv<PendingSignIn>('pending-sign-in');
    if (!pending || this.#now() - pending.createdAt > PENDING_MAX_AGE_MS)
      throw new SignInError('this sign-in was not started here, or started too long ago: sign in again');
    const as = await this.server();
    let params: URLSearchParams;
    try {
      params = oauth.validateAuthResponse(as, this.#client, callback, pending.state);
    } catch (e) {
      await this.#db.deleteKv('pending-sign-in');
      if (e instanceof oauth.AuthorizationResponseError)
        throw new SignInError(e.error_description ?? e.error, { cause: e });
      throw new SignInError(`the sign-in answer is not valid: ${(e as Error).message}`, { cause: e });
    }
    const dpop = this.#dpop(pending.keyPair);
    const grant = () =>
      oauth.authorizationCodeGrantRequest(
        as,
        this.#client,
        oauth.None(),
        params,
        this.#config.redirectUri,
        pending.codeVerifier,
        { DPoP: dpop, additionalParameters: { resource: this.resource }, ...this.#http },
      );
    let response: oauth.TokenEndpointResponse;
    try {
      response = await oauth.processAuthorizationCodeResponse(as, this.#client, await grant());
    } catch (e) {
      throw new SignInError(`the Authorization Server refused the sign-in: ${describe(e)}`, { cause: e });
    } finally {
      await this.#db.deleteKv('pending-sign-in');
    }
    await this.#save(response, pending.keyPair);
  }

  async #save(
    response: oauth.TokenEndpointResponse,
    keyPair: CryptoKeyPair,
    previous?: AuthTokens,
  ): Promise<AuthRecord> {
    if (response.token_type !== 'dpop')
      throw new SignInError(`the Authorization Server issued a ${response.token_type} token, not a DPoP-bound one`);
    const record: AuthRecord = {
      tokens: {
        accessToken: response.access_token,
        // A refresh answer may keep the old refresh token (no rotation) or the old ID token.
        refreshToken: response.refresh_token ?? previous?.refreshToken,
        idToken: response.id_token ?? previous?.idToken,
        expiresAt: this.#now() + (response.expires_in ?? 300) * 1000,
      },
      keyPair,
      mailboxUrl: this.#config.mailboxUrl,
    };
    await this.#db.setKv('auth', record);
    return record;
  }

  /** A valid access token and its key, refreshed first when it is about to expire. */
  async token(): Promise<AccessToken> {
    const record = await this.#db.kv<AuthRecord>('auth');
    if (!record) throw new SignedOutError('not signed in');
    if (record.tokens.expiresAt - EXPIRY_MARGIN_MS > this.#now()) return toAccess(record);
    return this.#refresh((current) => current.tokens.expiresAt - EXPIRY_MARGIN_MS > this.#now());
  }

  /**
   * The mailbox refused this token (`invalid_token`): refresh, unless another context already replaced it,
   * in which case its replacement is the answer.
   */
  tokenRejected(accessToken: string): Promise<AccessToken> {
    return this.#refresh((current) => current.tokens.accessToken !== accessToken);
  }

  #refresh(stillGood: (current: AuthRecord) => boolean): Promise<AccessToken> {
    return this.#locks.request(TOKEN_LOCK, async () => {
      // Read again under the lock: the tab that held it before us may have refreshed already.
      const current = await this.#db.kv<AuthRecord>('auth');
      if (!current) throw new SignedOutError('not signed in');
      if (stillGood(current)) return toAccess(current);
      const refreshToken = current.tokens.refreshToken;
      if (refreshToken === undefined) return this.#end('the session has no refresh token');
      const as = await this.server();
      const dpop = this.#dpop(current.keyPair);
      let response: oauth.TokenEndpointResponse;
      try {
        response = await oauth.processRefreshTokenResponse(
          as,
          this.#client,
          await oauth.refreshTokenGrantRequest(as, this.#client, oauth.None(), refreshToken, {
            DPoP: dpop,
            additionalParameters: { resource: this.resource },
            ...this.#http,
          }),
        );
      } catch (e) {
        if (e instanceof oauth.ResponseBodyError && e.error === 'invalid_grant') return this.#end(describe(e));
        throw e;
      }
      return toAccess(await this.#save(response, current.keyPair, current.tokens));
    });
  }

  /**
   * Forgets the user: the session, the mail synced into IndexedDB, and the resources the service worker
   * kept, whichever way the session ends (asked for, or refused by the AS), so the next user of this
   * browser finds none of it.
   */
  async forget(): Promise<void> {
    await this.#db.clear();
    const storage = (globalThis as { caches?: CacheStorage }).caches;
    await storage?.delete(RESOURCE_CACHE).catch(() => false);
  }

  async #end(reason: string): Promise<never> {
    // Listeners first: they stop the sync, whose writes must not land after the clear.
    for (const listener of this.#signedOut) listener();
    await this.forget();
    throw new SignedOutError(`signed out: ${reason}`);
  }

  /**
   * Revokes the refresh token (RFC 7009), forgets everything stored locally, and returns the AS's
   * end-session URL (RP-initiated logout) so that the next sign-in asks for the password again.
   */
  signOut(): Promise<string | undefined> {
    // Under the refresh lock: a refresh running elsewhere would otherwise store its new tokens after the
    // record is cleared, signing the user back in with a refresh token nobody revoked.
    return this.#locks.request(TOKEN_LOCK, () => this.#signOut());
  }

  async #signOut(): Promise<string | undefined> {
    const record = await this.#db.kv<AuthRecord>('auth');
    let as: oauth.AuthorizationServer | undefined;
    try {
      as = await this.server();
      if (record?.tokens.refreshToken && as.revocation_endpoint) {
        const res = await oauth.revocationRequest(as, this.#client, oauth.None(), record.tokens.refreshToken, {
          additionalParameters: { token_type_hint: 'refresh_token' },
          ...this.#http,
        });
        await oauth.processRevocationResponse(res);
      }
    } catch {
      // Offline, or the AS is down: the local copy is still forgotten; the grant expires on its own.
    }
    await this.forget();
    if (!as?.end_session_endpoint) return undefined;
    const url = new URL(as.end_session_endpoint);
    url.searchParams.set('client_id', this.#client.client_id);
    url.searchParams.set('post_logout_redirect_uri', this.#config.postLogoutRedirectUri);
    if (record?.tokens.idToken) url.searchParams.set('id_token_hint', record.tokens.idToken);
    return url.href;
  }
}

function toAccess(record: AuthRecord): AccessToken {
  return { accessToken: record.tokens.accessToken, keyPair: record.keyPair };
}

function describe(e: unknown): string {
  if (e instanceof oauth.ResponseBodyError)
    return e.cause.error_description ? String(e.cause.error_description) : e.error;
  return e instanceof Error ? e.message : String(e);
}

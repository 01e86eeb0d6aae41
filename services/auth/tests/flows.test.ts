/**
 * The user-facing OAuth flows of the AS, driven by openid-client 6 as a real client over HTTP and by a
 * cookie-keeping user agent that signs in through the real login form: authorization code + PKCE S256 +
 * DPoP for the webmail and the CLI, refresh-token rotation, the negative matrix (each case failing for one
 * reason), the login form's throttling, CSRF and accessibility, logout, and the metadata documents.
 *
 * Every test that fails a sign-in appears to come from its own client address (X-Forwarded-For, which the
 * AS honours when configured behind a proxy, `trustProxy`), so the per-address throttle of one test never
 * leaks into another. Without `trustProxy` (the default) a forged X-Forwarded-For must change nothing.
 */
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as client from 'openid-client';
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  decodeProtectedHeader,
  exportJWK,
  jwtVerify,
  type JSONWebKeySet,
} from 'jose';
import { testDatabases } from '../../common/src/testing/databases.js';
import { startFederation, type Federation, type TestDomain } from './harness.js';
import {
  BrowserAgent,
  atRedirectUri,
  authorizationRequest,
  closeLocalHttp,
  forms,
  isLoginPage,
  localFetch,
  publicClient,
  signInWithCode,
  type Page,
} from './browser-agent.js';

const WRONG = 'The email address or password is not right.';

/**
 * Every style element of the page is one the CSP allows by hash (CSP3 §8.3: the hash of the element's whole
 * text, white space included), as a browser checks it; a page without one fails too.
 */
function expectStyleAllowed(body: string, csp: string): void {
  const styles = [...body.matchAll(/<style>([\s\S]*?)<\/style>/g)].map((m) => m[1]!);
  expect(styles.length).toBeGreaterThan(0);
  const styleSrc = csp.split(';').find((d) => d.trim().startsWith('style-src')) ?? '';
  for (const text of styles) {
    expect(styleSrc).toContain(`'sha256-${createHash('sha256').update(text).digest('base64')}'`);
  }
}

/** The AS's clock, stopped at the time the suite starts. */
const frozen = () => {
  const t = Date.now();
  return () => t;
};

describe.each(testDatabases())('sign-in flows on $name', (database) => {
  let fed: Federation;
  let d: TestDomain;
  let webmail: client.Configuration;
  let cli: client.Configuration;
  let users = 0;
  let addresses = 0;

  beforeAll(async () => {
    // Behind a proxy (trustProxy), so each test's user agent can come from its own address (X-Forwarded-For).
    // A frozen clock for what the AS times itself (the login backoff): a 2 s backoff cannot run out mid-test.
    fed = await startFederation(['example.com'], {
      database: database.create,
      config: { trustProxy: true },
      now: frozen(),
    });
    d = fed.domains['example.com']!;
    webmail = await publicClient(d.issuer, 'webmail');
    cli = await publicClient(d.issuer, 'federizer-cli');
  });
  afterAll(async () => {
    await fed?.close();
    await closeLocalHttp();
  });

  async function newUser(extra: Record<string, unknown> = {}) {
    const address = `user${++users}-${randomBytes(3).toString('hex')}@example.com`;
    const password = `pw-${randomBytes(9).toString('base64url')}`;
    await d.createUser(address, password, extra);
    return { address, password };
  }

  /** A client address no other test uses. */
  const nextAddress = () => `203.0.113.${++addresses}`;
  /** A user agent (a fresh cookie jar) that appears to come from `ip`. */
  const agent = (ip = nextAddress()) => new BrowserAgent({ headers: { 'x-forwarded-for': ip } });

  const authorization = authorizationRequest;

  const signInAndRedeem = (
    user: { address: string; password: string },
    options: { config?: client.Configuration; redirectUri?: string; browser?: BrowserAgent } = {},
  ) =>
    signInWithCode(
      options.config ?? webmail,
      options.redirectUri ?? d.webmailRedirectUri,
      user,
      options.browser ?? agent(),
    );

  async function jwks(): Promise<JSONWebKeySet> {
    const res = await localFetch(webmail.serverMetadata().jwks_uri!);
    expect(res.status).toBe(200);
    return (await res.json()) as JSONWebKeySet;
  }

  /** Opens a fresh authorization request in `browser` and returns the login page it shows. */
  async function loginPage(browser: BrowserAgent): Promise<Page> {
    const { url } = await authorization(webmail, d.webmailRedirectUri);
    const page = await browser.request(url, { stopAt: atRedirectUri(d.webmailRedirectUri) });
    expect(isLoginPage(page), `${page.status} ${page.body.slice(0, 200)}`).toBe(true);
    return page;
  }

  const errorOf = (redirect: URL | undefined) => ({
    error: redirect?.searchParams.get('error'),
    description: redirect?.searchParams.get('error_description'),
    state: redirect?.searchParams.get('state'),
  });

  describe('authorization code + PKCE S256 + DPoP (webmail)', () => {
    it('RFC 9449 + RFC 9068: DPoP-bound JWT access token for the mailbox, ES256 ID token, rotating refresh', async () => {
      const user = await newUser();
      const { tokens, DPoP, dpopKeys } = await signInAndRedeem(user);
      const keySet = createLocalJWKSet(await jwks());
      const jkt = await calculateJwkThumbprint(await exportJWK(dpopKeys.publicKey));
      const currentKid = d.as.keys.current.kid;

      // RFC 9449 §5: a DPoP-bound token says so in token_type.
      expect(tokens.token_type.toLowerCase()).toBe('dpop');

      // RFC 9068: typ at+jwt, signed by the AS, for the mailbox resource, bound to the DPoP key.
      const atHeader = decodeProtectedHeader(tokens.access_token);
      expect(atHeader).toMatchObject({ typ: 'at+jwt', alg: 'ES256', kid: currentKid });
      const { payload: at } = await jwtVerify(tokens.access_token, keySet, {
        issuer: d.issuer,
        audience: d.mailboxResource,
        typ: 'at+jwt',
        algorithms: ['ES256'],
      });
      expect(at.aud).toBe(d.mailboxResource);
      expect(at.scope).toBe('mailbox');
      expect(at.sub).toBe(user.address);
      expect(at.client_id).toBe('webmail');
      expect(at.cnf).toEqual({ jkt });
      expect(typeof at.jti).toBe('string');
      expect(at.exp! - at.iat!).toBe(d.config.userAccessTokenSeconds);

      // The ID token is signed with the AS's current ES256 key, published in its JWKS.
      expect(decodeProtectedHeader(tokens.id_token!)).toMatchObject({ alg: 'ES256', kid: currentKid });
      const { payload: idToken } = await jwtVerify(tokens.id_token!, keySet, {
        issuer: d.issuer,
        audience: 'webmail',
        algorithms: ['ES256'],
      });
      expect(idToken.sub).toBe(user.address);
      const published = (await jwks()).keys.find((k) => k.kid === currentKid);
      expect(published).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
      expect(published).not.toHaveProperty('d');

      // Refresh works, keeps the DPoP binding, and rotates the refresh token.
      expect(tokens.refresh_token).toEqual(expect.any(String));
      const refreshed = await client.refreshTokenGrant(webmail, tokens.refresh_token!, undefined, { DPoP });
      expect(refreshed.token_type.toLowerCase()).toBe('dpop');
      expect(refreshed.refresh_token).toEqual(expect.any(String));
      expect(refreshed.refresh_token).not.toBe(tokens.refresh_token);
      const { payload: at2 } = await jwtVerify(refreshed.access_token, keySet, {
        issuer: d.issuer,
        audience: d.mailboxResource,
        typ: 'at+jwt',
      });
      expect(at2).toMatchObject({ sub: user.address, scope: 'mailbox', cnf: { jkt } });
      expect(at2.jti).not.toBe(at.jti);
    });

    it('RFC 9449 §5: a refresh token bound to one DPoP key cannot be used with another', async () => {
      const { tokens } = await signInAndRedeem(await newUser());
      const other = client.getDPoPHandle(webmail, await client.randomDPoPKeyPair('ES256'));
      await expect(
        client.refreshTokenGrant(webmail, tokens.refresh_token!, undefined, { DPoP: other }),
      ).rejects.toMatchObject({ error: 'invalid_grant' });
    });

    it('RFC 7009: a revoked refresh token no longer refreshes', async () => {
      const { tokens, DPoP } = await signInAndRedeem(await newUser());
      await client.tokenRevocation(webmail, tokens.refresh_token!, { token_type_hint: 'refresh_token' });
      await expect(client.refreshTokenGrant(webmail, tokens.refresh_token!, undefined, { DPoP })).rejects.toMatchObject(
        { error: 'invalid_grant' },
      );
    });
  });

  describe('the negative matrix: each request fails for exactly one reason', () => {
    it('OAuth 2.1 §4.1.1: without PKCE the authorization endpoint redirects back with invalid_request', async () => {
      const { url, state } = await authorization(webmail, d.webmailRedirectUri, {
        code_challenge: undefined,
        code_challenge_method: undefined,
      });
      const page = await agent().request(url, { stopAt: atRedirectUri(d.webmailRedirectUri) });
      expect(page.redirect, page.body.slice(0, 300)).toBeDefined();
      const e = errorOf(page.redirect);
      expect(e.error).toBe('invalid_request');
      expect(e.description).toMatch(/PKCE/);
      expect(e.state).toBe(state);
      expect(page.redirect!.searchParams.get('code')).toBeNull();
    });

    it('RFC 7636 §4.2 / OAuth 2.1: the plain code_challenge_method is refused with invalid_request', async () => {
      const verifier = client.randomPKCECodeVerifier();
      const { url, state } = await authorization(webmail, d.webmailRedirectUri, {
        code_challenge: verifier,
        code_challenge_method: 'plain',
      });
      const page = await agent().request(url, { stopAt: atRedirectUri(d.webmailRedirectUri) });
      const e = errorOf(page.redirect);
      expect(e.error).toBe('invalid_request');
      expect(e.description).toMatch(/code_challenge_method/);
      expect(e.state).toBe(state);
    });

    it('RFC 6749 §4.1.2.1: an unregistered redirect_uri gets an error page, never a redirect', async () => {
      const evil = 'http://evil.example/callback';
      const { url } = await authorization(webmail, evil);
      const page = await agent().request(url, { follow: false });
      expect(page.status).toBe(400);
      expect(page.headers.get('location')).toBeNull();
      expect(page.headers.get('content-type')).toMatch(/^text\/html/);
      expect(page.body).toContain('invalid_redirect_uri');
      expect(page.body).not.toContain('evil.example');
    });

    it('RFC 6749 §4.1.2: a reused authorization code is invalid_grant, and revokes what it issued', async () => {
      const { tokens, callback, verifier, state, DPoP } = await signInAndRedeem(await newUser());
      await expect(
        client.authorizationCodeGrant(
          webmail,
          callback,
          { pkceCodeVerifier: verifier, expectedState: state },
          undefined,
          {
            DPoP,
          },
        ),
      ).rejects.toMatchObject({ error: 'invalid_grant' });
      // RFC 6749 §10.5 / the security BCP: the tokens issued from the code should be revoked.
      await expect(client.refreshTokenGrant(webmail, tokens.refresh_token!, undefined, { DPoP })).rejects.toMatchObject(
        { error: 'invalid_grant' },
      );
    });

    it('OAuth 2.1 §4.3.1: a reused refresh token is invalid_grant and revokes the grant (the newer token too)', async () => {
      const { tokens, DPoP } = await signInAndRedeem(await newUser());
      const first = tokens.refresh_token!;
      const rotated = (await client.refreshTokenGrant(webmail, first, undefined, { DPoP })).refresh_token!;
      expect(rotated).not.toBe(first);
      await expect(client.refreshTokenGrant(webmail, first, undefined, { DPoP })).rejects.toMatchObject({
        error: 'invalid_grant',
      });
      await expect(client.refreshTokenGrant(webmail, rotated, undefined, { DPoP })).rejects.toMatchObject({
        error: 'invalid_grant',
      });
    });
  });

  describe('the login form', () => {
    it('a wrong password answers 401 on the form, which stays usable', async () => {
      const user = await newUser();
      const browser = agent();
      const page = await loginPage(browser);
      const wrong = await browser.submitLogin(page, user.address, `${user.password}-not`);
      expect(wrong.status).toBe(401);
      expect(wrong.redirect).toBeUndefined();
      expect(isLoginPage(wrong)).toBe(true);
      expect(wrong.body).toContain(WRONG);
      expect(wrong.body).toContain('role="alert"');
      expect(wrong.body).toContain(`value="${user.address}"`);
      expect(wrong.body).not.toContain(user.password);
      // Same interaction, right password: signed in.
      const right = await browser.submitLogin(wrong, user.address, user.password, {
        stopAt: atRedirectUri(d.webmailRedirectUri),
      });
      expect(right.redirect?.searchParams.get('code')).toEqual(expect.any(String));
    });

    it('an unknown user gets the same answer as a wrong password', async () => {
      const user = await newUser();
      const browser = agent();
      const page = await loginPage(browser);
      const wrong = await browser.submitLogin(page, user.address, 'not-the-password');
      const unknown = 'nobody-here@example.com';
      const missing = await browser.submitLogin(wrong, unknown, 'not-the-password');
      expect(missing.status).toBe(wrong.status);
      expect(missing.status).toBe(401);
      expect(missing.headers.get('retry-after')).toBe(wrong.headers.get('retry-after'));
      // Same interaction, so the same action and CSRF token: the pages differ only by the echoed address.
      expect(missing.body.replace(unknown, 'ADDRESS')).toBe(wrong.body.replace(user.address, 'ADDRESS'));
    });

    it('a disabled user cannot sign in (the same 401 as a wrong password)', async () => {
      const user = await newUser();
      const res = await d.admin(`/users/${encodeURIComponent(user.address)}`, {
        method: 'PATCH',
        body: JSON.stringify({ disabled: true }),
      });
      expect(res.status).toBe(200);
      const browser = agent();
      const answer = await browser.submitLogin(await loginPage(browser), user.address, user.password);
      expect(answer.status).toBe(401);
      expect(answer.body).toContain(WRONG);
      expect(answer.redirect).toBeUndefined();
    });

    it('an empty or over-long address (the form is novalidate) gets the same 401 as a wrong password, not a server error', async () => {
      for (const address of ['', `${'a'.repeat(300)}@example.com`]) {
        const browser = agent();
        const answer = await browser.submitLogin(await loginPage(browser), address, 'some-password');
        expect.soft(answer.status, `address of ${address.length} characters`).toBe(401);
        expect.soft(answer.body, `address of ${address.length} characters`).toContain(WRONG);
      }
    });

    it('the Cancel button returns to the client with access_denied (RFC 6749 §4.1.2.1)', async () => {
      const browser = agent();
      const { url, state } = await authorization(webmail, d.webmailRedirectUri);
      const stopAt = atRedirectUri(d.webmailRedirectUri);
      const page = await browser.request(url, { stopAt });
      const cancel = forms(page.body).find((f) => f.action.endsWith('/abort'));
      expect(cancel?.hidden.csrf).toEqual(expect.any(String));
      const back = await browser.request(new URL(cancel!.action, page.url), { form: cancel!.hidden, stopAt });
      expect(errorOf(back.redirect)).toMatchObject({ error: 'access_denied', state });
      expect(back.redirect!.searchParams.get('code')).toBeNull();
    });

    it('throttling per account: three failures are free, the fourth starts a backoff, and an attempt within it gets 429 with Retry-After, even with the right password from another address', async () => {
      const user = await newUser();
      const attacker = agent();
      let page = await loginPage(attacker);
      for (let i = 1; i <= 4; i++) {
        page = await attacker.submitLogin(page, user.address, `guess-${i}-wrong`);
        expect(page.status, `failure ${i}`).toBe(401);
      }
      // The account key, not the address key: the owner, from elsewhere, is held back too.
      const owner = agent();
      const held = await owner.submitLogin(await loginPage(owner), user.address, user.password);
      expect(held.status).toBe(429);
      const retryAfter = Number(held.headers.get('retry-after'));
      expect(Number.isInteger(retryAfter)).toBe(true);
      expect(retryAfter).toBeGreaterThanOrEqual(1);
      expect(retryAfter).toBeLessThanOrEqual(2);
      expect(isLoginPage(held)).toBe(true);
      expect(held.body).toMatch(/Too many attempts/);
      // Other accounts, from that other address, are not affected.
      const other = await newUser();
      const fine = await owner.submitLogin(await loginPage(owner), other.address, other.password, {
        stopAt: atRedirectUri(d.webmailRedirectUri),
      });
      expect(fine.redirect?.searchParams.get('code')).toEqual(expect.any(String));
    });

    it('throttling per client address: failures at many accounts from one address hold that address back', async () => {
      const user = await newUser();
      const sprayer = agent();
      let page = await loginPage(sprayer);
      for (let i = 1; i <= 4; i++) {
        page = await sprayer.submitLogin(page, `victim${i}-${randomBytes(3).toString('hex')}@example.com`, 'password1');
        expect(page.status, `failure ${i}`).toBe(401);
      }
      const held = await sprayer.submitLogin(page, user.address, user.password);
      expect(held.status).toBe(429);
      expect(Number(held.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      // The same account from another address is fine: the account itself has no failures.
      const elsewhere = agent();
      const fine = await elsewhere.submitLogin(await loginPage(elsewhere), user.address, user.password, {
        stopAt: atRedirectUri(d.webmailRedirectUri),
      });
      expect(fine.redirect?.searchParams.get('code')).toEqual(expect.any(String));
    });

    it('throttling: a successful sign-in clears only its account counter, never the client address counter', async () => {
      // LoginThrottle.recordSuccess: "Pass the account key only: clearing the IP key on a success would let
      // an attacker holding one valid account reset the IP's counter between guesses at others."
      const own = await newUser();
      const ip = nextAddress();
      const attacker = agent(ip);
      let page = await loginPage(attacker);
      for (let i = 1; i <= 3; i++) {
        page = await attacker.submitLogin(
          page,
          `target${i}-${randomBytes(3).toString('hex')}@example.com`,
          'password1',
        );
        expect(page.status, `failure ${i}`).toBe(401);
      }
      const success = await attacker.submitLogin(page, own.address, own.password, {
        stopAt: atRedirectUri(d.webmailRedirectUri),
      });
      expect(success.redirect?.searchParams.get('code')).toEqual(expect.any(String));
      // The fourth failure from this address (a new browser there, without the session) starts the backoff...
      const again = agent(ip);
      page = await again.submitLogin(
        await loginPage(again),
        `target4-${randomBytes(3).toString('hex')}@example.com`,
        'password1',
      );
      expect(page.status).toBe(401);
      // ...so the next guess from it must wait.
      const next = await again.submitLogin(page, `target5-${randomBytes(3).toString('hex')}@example.com`, 'password1');
      expect(next.status).toBe(429);
    });

    it('CSRF: a login POST without the csrf field, or with a wrong one, gets 403', async () => {
      const user = await newUser();
      const browser = agent();
      const page = await loginPage(browser);
      const without = await browser.submitLogin(page, user.address, user.password, { csrf: null });
      expect(without.status).toBe(403);
      expect(without.redirect).toBeUndefined();
      const wrong = await browser.submitLogin(page, user.address, user.password, {
        csrf: randomBytes(32).toString('base64url'),
      });
      expect(wrong.status).toBe(403);
      // The refusals came before the password check: the real form still signs in.
      const right = await browser.submitLogin(page, user.address, user.password, {
        stopAt: atRedirectUri(d.webmailRedirectUri),
      });
      expect(right.redirect?.searchParams.get('code')).toEqual(expect.any(String));
    });

    it('the login page works without JavaScript: labels, autocomplete, lang, and a CSP without unsafe-inline', async () => {
      const page = await loginPage(agent());
      expect(page.status).toBe(200);
      expect(page.headers.get('content-type')).toMatch(/^text\/html/);
      expect(page.body).toMatch(/<html lang="en">/);
      expect(page.body).not.toMatch(/<script/i);
      for (const [id, type, autocomplete] of [
        ['address', 'email', 'username'],
        ['password', 'password', 'current-password'],
      ] as const) {
        expect(page.body).toMatch(new RegExp(`<label for="${id}">[^<]+</label>`));
        const input = new RegExp(`<input\\s[^>]*\\bid="${id}"[^>]*>`).exec(page.body)?.[0];
        expect(input, id).toBeDefined();
        expect(input).toContain(`name="${id}"`);
        expect(input).toContain(`type="${type}"`);
        expect(input).toContain(`autocomplete="${autocomplete}"`);
      }
      expect(page.body).toMatch(/<form method="post" action="[^"]+\/login"/);
      const csp = page.headers.get('content-security-policy');
      expect(csp).toBeTruthy();
      expect(csp).not.toContain('unsafe-inline');
      expect(csp).toContain("default-src 'none'");
      expect(csp).toContain("frame-ancestors 'none'");
      expect(page.headers.get('cache-control')).toBe('no-store');
      // CSP3 §8.3: a style element is allowed when the hash of its whole text is listed.
      expectStyleAllowed(page.body, csp!);
    });

    it('devInteractions are off: no oidc-provider development views, and their POST does not sign anyone in', async () => {
      const user = await newUser();
      const browser = agent();
      const page = await loginPage(browser);
      for (const marker of ['login-card', 'login-submit', 'Enter any login', 'name="prompt"', 'grant-debug'])
        expect(page.body).not.toContain(marker);
      // The development login form posts `prompt=login&login=<anyone>` to /interaction/:uid itself.
      const devPost = await browser.request(page.url, {
        form: { prompt: 'login', login: user.address, password: 'anything' },
        stopAt: atRedirectUri(d.webmailRedirectUri),
      });
      expect(devPost.redirect).toBeUndefined();
      expect(devPost.status).toBe(404);
    });
  });

  describe('logout', () => {
    it('OIDC RP-Initiated Logout: end_session shows the sign-out page; submitting it ends the session', async () => {
      const user = await newUser();
      const browser = agent();
      const { tokens } = await signInAndRedeem(user, { browser });
      const stopAt = atRedirectUri(d.webmailRedirectUri);

      // With the session, a new authorization needs no form (single sign-on).
      const again = await browser.request((await authorization(webmail, d.webmailRedirectUri)).url, { stopAt });
      expect(again.redirect?.searchParams.get('code')).toEqual(expect.any(String));

      const signOut = await browser.request(client.buildEndSessionUrl(webmail, { id_token_hint: tokens.id_token! }));
      expect(signOut.status).toBe(200);
      expect(signOut.body).toContain('<h1>Sign out</h1>');
      expect(signOut.headers.get('content-security-policy')).not.toContain('unsafe-inline');
      expectStyleAllowed(signOut.body, signOut.headers.get('content-security-policy')!);
      const form = forms(signOut.body).find((f) => f.id === 'op.logoutForm');
      expect(form?.hidden.xsrf).toEqual(expect.any(String));
      const done = await browser.request(new URL(form!.action, signOut.url), {
        form: { ...form!.hidden, logout: 'yes' },
      });
      expect(done.status).toBe(200);
      expect(done.body).toContain('<h1>Signed out</h1>');

      // The session is gone: a new authorization request shows the login form again.
      const afterwards = await browser.request((await authorization(webmail, d.webmailRedirectUri)).url, { stopAt });
      expect(afterwards.redirect).toBeUndefined();
      expect(isLoginPage(afterwards)).toBe(true);
    });

    it('OIDC RP-Initiated Logout: a registered post_logout_redirect_uri is followed after signing out', async () => {
      const browser = agent();
      const { tokens } = await signInAndRedeem(await newUser(), { browser });
      const back = d.config.webmail.postLogoutRedirectUris[0]!;
      const signOut = await browser.request(
        client.buildEndSessionUrl(webmail, {
          id_token_hint: tokens.id_token!,
          post_logout_redirect_uri: back,
          state: 'st',
        }),
      );
      const form = forms(signOut.body).find((f) => f.id === 'op.logoutForm')!;
      const done = await browser.request(new URL(form.action, signOut.url), {
        form: { ...form.hidden, logout: 'yes' },
        stopAt: (u) => u.origin === new URL(back).origin,
      });
      expect(done.redirect?.href).toBe(`${back}?state=st`);
    });
  });

  describe('metadata and the CLI client', () => {
    it('RFC 8414 and OpenID Discovery: both metadata documents answer with the same issuer', async () => {
      const docs = await Promise.all(
        ['/.well-known/oauth-authorization-server', '/.well-known/openid-configuration'].map(async (path) => {
          const res = await localFetch(`${d.issuer}${path}`);
          expect(res.status, path).toBe(200);
          expect(res.headers.get('content-type')).toMatch(/^application\/json/);
          return (await res.json()) as Record<string, unknown>;
        }),
      );
      expect(docs[0]!.issuer).toBe(d.issuer);
      expect(docs[1]!.issuer).toBe(d.issuer);
      expect(docs[0]).toEqual(docs[1]);
      expect(docs[0]!.code_challenge_methods_supported).toEqual(['S256']);
      expect(docs[0]!.dpop_signing_alg_values_supported).toContain('ES256');
      expect(docs[0]!.jwks_uri).toBe(`${d.issuer}/jwks`);
    });

    it('RFC 8252 §7.3: the federizer-cli native client may use its loopback redirect on any port', async () => {
      const user = await newUser();
      const browser = agent();
      for (const port of [49152 + Math.floor(Math.random() * 8000), 61000 + Math.floor(Math.random() * 4000)]) {
        const redirectUri = `http://127.0.0.1:${port}/callback`;
        const { tokens, dpopKeys } = await signInAndRedeem(user, { config: cli, redirectUri, browser });
        expect(tokens.token_type.toLowerCase()).toBe('dpop');
        const { payload } = await jwtVerify(tokens.access_token, createLocalJWKSet(await jwks()), {
          issuer: d.issuer,
          audience: d.mailboxResource,
          typ: 'at+jwt',
        });
        expect(payload).toMatchObject({
          sub: user.address,
          client_id: 'federizer-cli',
          scope: 'mailbox',
          cnf: { jkt: await calculateJwkThumbprint(await exportJWK(dpopKeys.publicKey)) },
        });
      }
    });

    it('RFC 8252 §7.3: only the port of the loopback redirect may vary, not its path or host', async () => {
      for (const redirectUri of ['http://127.0.0.1:50000/elsewhere', 'http://localhost:50000/callback']) {
        const { url } = await authorization(cli, redirectUri);
        const page = await agent().request(url, { follow: false });
        expect(page.status, redirectUri).toBe(400);
        expect(page.headers.get('location')).toBeNull();
        expect(page.body).toContain('invalid_redirect_uri');
      }
    });
  });

  describe('without trustProxy (the default)', () => {
    let direct: Federation;
    let n: TestDomain;
    let netWebmail: client.Configuration;
    beforeAll(async () => {
      direct = await startFederation(['example.net'], { database: database.create, now: frozen() });
      n = direct.domains['example.net']!;
      netWebmail = await publicClient(n.issuer, 'webmail');
    });
    afterAll(() => direct?.close());

    it('throttling per client address: a forged X-Forwarded-For does not pick its own bucket', async () => {
      const stopAt = atRedirectUri(n.webmailRedirectUri);
      const attempt = async (forged: string) => {
        const browser = new BrowserAgent({ headers: { 'x-forwarded-for': forged } });
        const page = await browser.request((await authorizationRequest(netWebmail, n.webmailRedirectUri)).url, {
          stopAt,
        });
        expect(isLoginPage(page)).toBe(true);
        return browser.submitLogin(page, `someone${randomBytes(3).toString('hex')}@example.net`, 'password1');
      };
      for (let i = 1; i <= 4; i++) expect((await attempt(`192.0.2.${i}`)).status, `failure ${i}`).toBe(401);
      // All four came from the one real address, whatever they claimed: the fifth must wait.
      const fifth = await attempt('192.0.2.99');
      expect(fifth.status).toBe(429);
      expect(Number(fifth.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    });
  });
});

/**
 * What must hold however requests are timed or addressed, through real HTTP on both databases:
 *
 * - requests sent at the same moment: password guesses are each counted before any password is checked,
 *   and a refresh token or an authorization code is redeemed once;
 * - requests that name another host (`Host`, `X-Forwarded-Host`): the AS builds every URL it publishes or
 *   compares from its issuer, never from what the caller sent;
 * - client assertions (RFC 7523 §3) that name this AS alone and live minutes, not years.
 *
 * The AS runs behind a proxy (`trustProxy`), so each test's user agent can come from an address of its own
 * (X-Forwarded-For), and with a frozen clock for what it times itself (the login backoff).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as client from 'openid-client';
import { SignJWT } from 'jose';
import { createDpopProof, dpopKeyOf } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { startFederation, type Federation, type TestDomain } from './harness.js';
import {
  BrowserAgent,
  atRedirectUri,
  authorizationRequest,
  closeLocalHttp,
  isLoginPage,
  publicClient,
  signInWithCode,
  type Page,
} from './browser-agent.js';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const EVIL = 'evil.example';

/** The AS's clock, stopped at the time the suite starts. */
const frozen = () => {
  const t = Date.now();
  return () => t;
};

interface RawAnswer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/** One request to the AS's listening address with exactly these headers (a `Host` of the caller's choosing). */
function raw(
  domain: TestDomain,
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<RawAnswer> {
  const url = new URL(path, domain.as.url);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: options.method ?? 'GET',
        headers: options.headers,
        agent: false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

const json = (answer: RawAnswer) => JSON.parse(answer.body) as Record<string, unknown>;

describe.each(testDatabases())('races and request hosts on $name', (database) => {
  let fed: Federation;
  let d: TestDomain;
  let webmail: client.Configuration;
  let users = 0;
  let addresses = 0;

  beforeAll(async () => {
    fed = await startFederation(['example.com'], {
      database: database.create,
      config: { trustProxy: true },
      now: frozen(),
    });
    d = fed.domains['example.com']!;
    webmail = await publicClient(d.issuer, 'webmail');
  });
  afterAll(async () => {
    await fed?.close();
    await closeLocalHttp();
  });

  async function newUser() {
    const address = `race${++users}-${randomBytes(3).toString('hex')}@example.com`;
    const password = `pw-${randomBytes(9).toString('base64url')}`;
    await d.createUser(address, password);
    return { address, password };
  }

  /** A user agent (a fresh cookie jar) that appears to come from `ip`. */
  const agent = (ip = `198.51.100.${++addresses}`) => new BrowserAgent({ headers: { 'x-forwarded-for': ip } });

  async function loginPage(browser: BrowserAgent): Promise<Page> {
    const { url } = await authorizationRequest(webmail, d.webmailRedirectUri);
    const page = await browser.request(url, { stopAt: atRedirectUri(d.webmailRedirectUri) });
    expect(isLoginPage(page), `${page.status} ${page.body.slice(0, 200)}`).toBe(true);
    return page;
  }

  const statuses = (pages: readonly { status: number }[]) => {
    const counts: Record<number, number> = {};
    for (const { status } of pages) counts[status] = (counts[status] ?? 0) + 1;
    return counts;
  };

  describe('login throttling', () => {
    it('RFC 6819 §4.4.3.6 (online password guessing): 40 guesses sent at once get the 4 attempts one after another would (3 free, the 4th starts the backoff); the other 36 wait (429), and so does the right password after them', async () => {
      const user = await newUser();
      const attacker = agent();
      const page = await loginPage(attacker);
      const answers = await Promise.all(
        Array.from({ length: 40 }, (_, i) => attacker.submitLogin(page, user.address, `guess-${i}-wrong`)),
      );
      expect(statuses(answers)).toEqual({ 401: 4, 429: 36 });
      for (const held of answers.filter((a) => a.status === 429)) {
        expect(Number(held.headers.get('retry-after'))).toBe(2);
      }
      // The account is held back from anywhere, the right password included.
      const owner = agent();
      const right = await owner.submitLogin(await loginPage(owner), user.address, user.password);
      expect(right.status).toBe(429);
    });

    it('RFC 6819 §4.4.3.6: an IPv6 client address is counted by its /64, so fresh addresses of one /64 do not get fresh attempts', async () => {
      const prefix = `2001:db8:${(++addresses).toString(16)}:1`;
      for (let i = 1; i <= 4; i++) {
        const browser = agent(`${prefix}::${i}`);
        const answer = await browser.submitLogin(
          await loginPage(browser),
          `victim${i}-${randomBytes(3).toString('hex')}@example.com`,
          'password1',
        );
        expect(answer.status, `failure ${i}`).toBe(401);
      }
      const sameSlash64 = agent(`${prefix}:ffff:ffff:ffff:ffff`);
      const held = await sameSlash64.submitLogin(await loginPage(sameSlash64), `other@example.com`, 'password1');
      expect(held.status).toBe(429);
      // The next /64 is another client.
      const neighbour = agent(`2001:db8:${addresses.toString(16)}:2::1`);
      const fine = await neighbour.submitLogin(await loginPage(neighbour), `other@example.com`, 'password1');
      expect(fine.status).toBe(401);
    });
  });

  describe('one-time credentials redeemed at the same moment', () => {
    it('RFC 9700 §4.14.2: a refresh token sent 10 times at once is redeemed exactly once; the others are invalid_grant, and the race revokes the grant as any reuse does', async () => {
      const { tokens, DPoP } = await signInWithCode(webmail, d.webmailRedirectUri, await newUser(), agent());
      const outcomes = await Promise.allSettled(
        Array.from({ length: 10 }, () => client.refreshTokenGrant(webmail, tokens.refresh_token!, undefined, { DPoP })),
      );
      const won = outcomes.filter((o) => o.status === 'fulfilled');
      expect(won).toHaveLength(1);
      for (const lost of outcomes.filter((o) => o.status === 'rejected')) {
        expect((lost as PromiseRejectedResult).reason).toMatchObject({ error: 'invalid_grant' });
      }
      const child = (won[0] as PromiseFulfilledResult<client.TokenEndpointResponse>).value.refresh_token!;
      await expect(client.refreshTokenGrant(webmail, child, undefined, { DPoP })).rejects.toMatchObject({
        error: 'invalid_grant',
      });
    });

    it('RFC 6749 §4.1.2: an authorization code redeemed 10 times at once issues tokens exactly once', async () => {
      const user = await newUser();
      const dpopKeys = await client.randomDPoPKeyPair('ES256');
      const DPoP = client.getDPoPHandle(webmail, dpopKeys);
      const { url, verifier, state } = await authorizationRequest(webmail, d.webmailRedirectUri);
      const callback = await agent().signIn(url, d.webmailRedirectUri, user.address, user.password);
      const outcomes = await Promise.allSettled(
        Array.from({ length: 10 }, () =>
          client.authorizationCodeGrant(
            webmail,
            callback,
            { pkceCodeVerifier: verifier, expectedState: state, idTokenExpected: true },
            undefined,
            { DPoP },
          ),
        ),
      );
      expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
      for (const lost of outcomes.filter((o) => o.status === 'rejected')) {
        expect((lost as PromiseRejectedResult).reason).toMatchObject({ error: 'invalid_grant' });
      }
    });
  });

  describe("the issuer's host, whatever the request names", () => {
    const evilHeaders = { host: EVIL, 'x-forwarded-host': EVIL, 'x-forwarded-proto': 'https' };

    it('RFC 8414 §2 / docs/protocol.md §10.2: asked with Host and X-Forwarded-Host evil.example, the metadata still names the issuer’s endpoints', async () => {
      for (const path of ['/.well-known/oauth-authorization-server', '/.well-known/openid-configuration']) {
        const metadata = json(await raw(d, path, { headers: evilHeaders }));
        expect(metadata.issuer).toBe(d.issuer);
        expect(metadata.token_endpoint, path).toBe(`${d.issuer}/token`);
        expect(metadata.jwks_uri, path).toBe(`${d.issuer}/jwks`);
        const urls = Object.values(metadata).filter((v): v is string => typeof v === 'string' && /^https?:/.test(v));
        expect(urls.length).toBeGreaterThan(4);
        for (const value of urls) expect(value.startsWith(`${d.issuer}/`) || value === d.issuer, value).toBe(true);
      }
    });

    it('RFC 9449 §4.3 / docs/protocol.md §10.2: a refresh sent with Host evil.example needs a DPoP proof whose htu is the issuer’s token endpoint', async () => {
      const { tokens, dpopKeys } = await signInWithCode(webmail, d.webmailRedirectUri, await newUser(), agent());
      const key = await dpopKeyOf(dpopKeys);
      const refresh = async (htu: string) =>
        raw(d, '/token', {
          method: 'POST',
          headers: {
            ...evilHeaders,
            'content-type': 'application/x-www-form-urlencoded',
            dpop: await createDpopProof(key, { htm: 'POST', htu }),
          },
          body: new URLSearchParams({
            grant_type: 'refresh_token',
            refresh_token: tokens.refresh_token!,
            client_id: 'webmail',
          }).toString(),
        });
      const forged = await refresh(`https://${EVIL}/token`);
      expect(json(forged)).toMatchObject({ error: 'invalid_dpop_proof' });
      const right = await refresh(`${d.issuer}/token`);
      expect(right.status, right.body).toBe(200);
      expect(json(right).token_type).toBe('DPoP');
    });
  });

  describe('client assertions (private_key_jwt)', () => {
    /** A client assertion of the domain's MTA with these claims (an absent one left out). */
    async function assertion(claims: Record<string, unknown> = {}): Promise<string> {
      const now = Math.floor(Date.now() / 1000);
      const all: Record<string, unknown> = {
        iss: d.config.mta.clientId,
        sub: d.config.mta.clientId,
        aud: d.issuer,
        jti: randomUUID(),
        iat: now,
        exp: now + 60,
        ...claims,
      };
      for (const [name, value] of Object.entries(all)) if (value === undefined) delete all[name];
      return new SignJWT(all).setProtectedHeader({ alg: 'ES256', kid: d.mtaKey.jwk.kid }).sign(d.mtaKey.privateKey);
    }

    /**
     * A token exchange without subject_token: a client that authenticates gets to the exchange, which refuses
     * the request (400 invalid_request); a client that does not gets 401 invalid_client.
     */
    const exchange = async (clientAssertion: string, headers: Record<string, string> = {}) =>
      raw(d, '/token', {
        method: 'POST',
        headers: { host: new URL(d.issuer).host, 'content-type': 'application/x-www-form-urlencoded', ...headers },
        body: new URLSearchParams({
          grant_type: TOKEN_EXCHANGE,
          client_id: d.config.mta.clientId,
          client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
          client_assertion: clientAssertion,
        }).toString(),
      });

    const authenticated = (answer: RawAnswer) => {
      expect(answer.status, answer.body).toBe(400);
      expect(json(answer)).toMatchObject({ error: 'invalid_request', error_description: 'subject_token is required' });
    };
    const refused = (answer: RawAnswer, description: RegExp) => {
      expect(answer.status, answer.body).toBe(401);
      expect(json(answer)).toEqual({ error: 'invalid_client', error_description: expect.stringMatching(description) });
    };

    it('RFC 7523 §3 item 3: aud is the issuer or the token endpoint, as a string or an array of that one value', async () => {
      authenticated(await exchange(await assertion()));
      authenticated(await exchange(await assertion({ aud: `${d.issuer}/token` })));
      authenticated(await exchange(await assertion({ aud: [d.issuer] })));
      refused(
        await exchange(await assertion({ aud: ['https://other.example', d.issuer] })),
        /^client assertion: aud must be/,
      );
      refused(
        await exchange(await assertion({ aud: [d.issuer, `${d.issuer}/token`] })),
        /^client assertion: aud must be/,
      );
    });

    it('RFC 7523 §3 item 3: an aud naming the token endpoint at the host the caller sent (Host evil.example) is refused', async () => {
      refused(
        await exchange(await assertion({ aud: `http://${EVIL}/token` }), { host: EVIL, 'x-forwarded-host': EVIL }),
        /client authentication failed|aud must be/,
      );
      // The same request with the issuer's token endpoint as aud authenticates: the aud was the one reason.
      authenticated(
        await exchange(await assertion({ aud: `${d.issuer}/token` }), { host: EVIL, 'x-forwarded-host': EVIL }),
      );
    });

    it('RFC 7523 §3 items 4 and 6: iat is required, and exp lies at most 300 s after iat and after now (invalid_client)', async () => {
      const now = Math.floor(Date.now() / 1000);
      refused(
        await exchange(await assertion({ exp: now + 365 * 86400 })),
        /^client assertion: exp \d+ is more than 300 s after/,
      );
      refused(await exchange(await assertion({ iat: undefined })), /^client assertion: iat .* is required$/);
      refused(await exchange(await assertion({ iat: now, exp: now + 301 })), /more than 300 s after/);
      refused(await exchange(await assertion({ iat: now - 400, exp: now + 200 })), /more than 300 s after iat/);
      refused(
        await exchange(await assertion({ iat: now + 120, exp: now + 180 })),
        /^client assertion: iat \d+ is in the future/,
      );
      authenticated(await exchange(await assertion({ iat: now, exp: now + 300 })));
    });
  });
});

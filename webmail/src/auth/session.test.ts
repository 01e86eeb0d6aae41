/**
 * The webmail's sign-in, refresh and sign-out against a real Authorization Server (oidc-provider with
 * PKCE required, DPoP, rotating refresh tokens), signing in through its real login form.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalDb } from '../stores/local-db.js';
import { startWebmailFederation, localFetch, type WebmailFederation } from '../testing/federation.js';
import { AuthSession, SignInError, SignedOutError, defaultLocks, type AuthRecord } from './session.js';

let fed: WebmailFederation;

beforeAll(async () => {
  fed = await startWebmailFederation(['example.com']);
});
afterAll(() => fed?.close());

/** Makes the stored access token look expired, as it will be after 15 minutes. */
async function expire(db: LocalDb): Promise<AuthRecord> {
  const record = (await db.kv<AuthRecord>('auth'))!;
  await db.setKv('auth', { ...record, tokens: { ...record.tokens, expiresAt: 0 } });
  return record;
}

describe('AuthSession', () => {
  it('signs in with PKCE and a DPoP key whose private half cannot be exported, and the mailbox accepts the token', async () => {
    const u = await fed.signIn('alice@example.com');
    const record = (await u.db.kv<AuthRecord>('auth'))!;
    expect(record.keyPair.privateKey.extractable).toBe(false);
    expect(record.keyPair.privateKey.type).toBe('private');
    expect(record.tokens.refreshToken).toBeTypeOf('string');
    expect(record.tokens.expiresAt).toBeGreaterThan(Date.now());
    expect(await u.db.kv('pending-sign-in')).toBeUndefined();
    expect((await u.api.session()).address).toBe('alice@example.com');
  });

  it('refuses a callback it did not start (state mismatch), naming the reason', async () => {
    const u = await fed.signIn('carol@example.com');
    await u.auth.beginSignIn();
    const forged = new URL(
      `${u.config.redirectUri}?code=abc&state=not-the-one&iss=${encodeURIComponent(u.config.issuer)}`,
    );
    await expect(u.auth.completeSignIn(forged)).rejects.toThrow(SignInError);
    // A second try has nothing pending any more: a replayed callback is refused too.
    await expect(u.auth.completeSignIn(forged)).rejects.toThrow(/not started here/);
  });

  it('refreshes an expiring token with the rotating refresh token, keeping the same DPoP key', async () => {
    const u = await fed.signIn('dave@example.com');
    const before = await expire(u.db);
    const fresh = await u.auth.token();
    expect(fresh.accessToken).not.toBe(before.tokens.accessToken);
    const after = (await u.db.kv<AuthRecord>('auth'))!;
    expect(after.tokens.refreshToken).not.toBe(before.tokens.refreshToken);
    expect(after.keyPair.publicKey).toStrictEqual(before.keyPair.publicKey);
    expect((await u.api.session()).address).toBe('dave@example.com');
  });

  it('two tabs refreshing at once under the Web Lock refresh once, and the grant survives', async () => {
    const u = await fed.signIn('erin@example.com');
    const locks = defaultLocks(); // Node has no navigator.locks: the in-context lock both "tabs" share here
    const tab1 = new AuthSession({ config: u.config, db: u.db, fetch: localFetch, locks });
    const tab2 = new AuthSession({ config: u.config, db: await LocalDb.open(u.indexedDB), fetch: localFetch, locks });
    await expire(u.db);
    const [a, b] = await Promise.all([tab1.token(), tab2.token()]);
    expect(a.accessToken).toBe(b.accessToken);
    // The grant is alive: one more refresh works.
    await expire(u.db);
    await expect(tab2.token()).resolves.toMatchObject({ accessToken: expect.any(String) });
  });

  it('a rotated refresh token presented again revokes the whole grant (the race the lock prevents)', async () => {
    const u = await fed.signIn('frank@example.com');
    const stale = await expire(u.db);
    await u.auth.token(); // tab 1 refreshes: the refresh token rotates
    const rotated = (await u.db.kv<AuthRecord>('auth'))!;
    // Tab 2 read the record before tab 1 wrote it, and refreshes with the old refresh token.
    await u.db.setKv('auth', { ...stale, tokens: { ...stale.tokens, expiresAt: 0 } });
    await expect(u.auth.token()).rejects.toThrow(SignedOutError);
    // Tab 1's new refresh token went with the grant.
    await u.db.setKv('auth', { ...rotated, tokens: { ...rotated.tokens, expiresAt: 0 } });
    await expect(u.auth.token()).rejects.toThrow(SignedOutError);
  });

  it('refreshes when the mailbox refuses a token, unless another tab replaced it already', async () => {
    const u = await fed.signIn('grace@example.com');
    const record = (await u.db.kv<AuthRecord>('auth'))!;
    const replaced = await u.auth.tokenRejected('a token this session never had');
    expect(replaced.accessToken).toBe(record.tokens.accessToken);
    const refreshed = await u.auth.tokenRejected(record.tokens.accessToken);
    expect(refreshed.accessToken).not.toBe(record.tokens.accessToken);
  });

  it('signs out: revokes the refresh token, forgets the session, and returns the end-session URL', async () => {
    const u = await fed.signIn('heidi@example.com');
    const record = (await u.db.kv<AuthRecord>('auth'))!;
    let ended = false;
    u.auth.onSignedOut(() => (ended = true));
    const url = new URL((await u.auth.signOut())!);
    expect(url.searchParams.get('post_logout_redirect_uri')).toBe(u.config.postLogoutRedirectUri);
    expect(url.searchParams.get('id_token_hint')).toBe(record.tokens.idToken);
    expect(await u.db.kv('auth')).toBeUndefined();
    await expect(u.auth.token()).rejects.toThrow(SignedOutError);
    expect(ended).toBe(false); // asked for, not a surprise

    // The revoked refresh token is refused by the AS: put it back and try.
    await u.db.setKv('auth', { ...record, tokens: { ...record.tokens, expiresAt: 0 } });
    await expect(u.auth.token()).rejects.toThrow(SignedOutError);
    expect(ended).toBe(true);
  });
});

/**
 * The webmail's sign-in, refresh and sign-out against a real Authorization Server (oidc-provider with
 * PKCE required, DPoP, rotating refresh tokens), signing in through its real login form.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalDb } from '../stores/local-db.js';
import { startWebmailFederation, localFetch, type WebmailFederation } from '../testing/federation.js';
import { RESOURCE_CACHE } from '../sw/resource-route.js';
import { buildDraft, newMessageId } from '../api/draft.js';
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

  it('signs out under the refresh lock: a refresh in flight in another tab cannot sign the user back in', async () => {
    const locks = defaultLocks();
    const u = await fed.signIn('ivan@example.com', { locks });
    let refreshSent!: () => void;
    const sent = new Promise<void>((resolve) => (refreshSent = resolve));
    // Tab 1's refresh is slow to come back: the sign-out in tab 2 starts while it is on its way.
    const slowFetch: typeof fetch = async (input, init) => {
      const isRefresh = String(init?.body ?? '').includes('grant_type=refresh_token');
      if (isRefresh) refreshSent();
      const res = await localFetch(input, init);
      if (isRefresh) await new Promise((r) => setTimeout(r, 300));
      return res;
    };
    const tab1 = new AuthSession({ config: u.config, db: u.db, fetch: slowFetch, locks });
    const tab2 = new AuthSession({ config: u.config, db: await LocalDb.open(u.indexedDB), fetch: localFetch, locks });
    await expire(u.db);
    const refreshing = tab1.token();
    await sent;
    await tab2.signOut();
    // The refresh finished first (the sign-out waited for it), and what it stored was then forgotten.
    await expect(refreshing).resolves.toMatchObject({ accessToken: expect.any(String) });
    expect(await u.db.kv('auth')).toBeUndefined();
    await expect(tab1.token()).rejects.toThrow(SignedOutError);
  });

  it('a new password set by the admin signs the webmail out at its next send: 401 invalid_token, the refresh refused', async () => {
    const u = await fed.signIn('olivia@example.com');
    const text = await u.api.upload(new Blob(['before the reset']), { mediaType: 'text/plain; charset=UTF-8' });
    const draft = () =>
      buildDraft({
        from: u.address,
        to: 'alice@example.com',
        cc: '',
        bcc: '',
        subject: 'Hello',
        messageId: newMessageId('example.com'),
        text,
        attachments: [],
      });
    await u.api.send(draft());
    const reset = await fed.fed.auth.domains['example.com']!.admin(
      `/users/${encodeURIComponent('olivia@example.com')}/password`,
      { method: 'PUT', body: JSON.stringify({ password: 'the password after a leak' }) },
    );
    expect(reset.status).toBe(204);
    // The mailbox answers the send 401 invalid_token; the client refreshes once, the AS refuses the refresh
    // (the grant is gone): the session ends, and what was kept of it is forgotten.
    await expect(u.api.send(draft())).rejects.toThrow(SignedOutError);
    expect(await u.db.kv('auth')).toBeUndefined();
  });

  it('a session the AS ends also empties the service worker’s kept resources, not only a sign-out', async () => {
    const deleted: string[] = [];
    const g = globalThis as { caches?: unknown };
    // Node has no Cache Storage; the one member used at sign-out, recording what it is asked.
    g.caches = { delete: async (name: string) => (deleted.push(name), true) };
    try {
      const u = await fed.signIn('judy@example.com');
      await u.auth.signOut();
      expect(deleted).toEqual([RESOURCE_CACHE]);
      const v = await fed.signIn('mallory@example.com');
      const record = (await v.db.kv<AuthRecord>('auth'))!;
      // A refresh token the AS does not know: invalid_grant ends the session.
      await v.db.setKv('auth', { ...record, tokens: { ...record.tokens, refreshToken: 'forged', expiresAt: 0 } });
      await expect(v.auth.token()).rejects.toThrow(SignedOutError);
      expect(deleted).toEqual([RESOURCE_CACHE, RESOURCE_CACHE]);
      expect(await v.db.kv('auth')).toBeUndefined();
    } finally {
      delete g.caches;
    }
  });
});

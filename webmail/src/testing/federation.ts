/**
 * Real mail domains for the webmail's tests (each with its AS and mailbox, from the mailbox tests'
 * harness), and users signed in the way the webmail signs in: AuthSession's authorization URL, the AS's
 * real login form posted by a cookie-keeping agent, and the redirect back given to `completeSignIn`.
 * Test support only (Node).
 */
import { IDBFactory } from 'fake-indexeddb';
import { testDatabases } from '../../../services/common/src/testing/databases.js';
import { BrowserAgent, atRedirectUri, localFetch } from '../../../services/auth/tests/browser-agent.js';
import { startMailFederation, type MailFederation } from '../../../services/mailbox/tests/mail-federation.js';
import { MailboxClient } from '../api/client.js';
import { apiBase, type WebmailConfig } from '../app/config.js';
import { AuthSession, type Locks } from '../auth/session.js';
import { LocalDb } from '../stores/local-db.js';

export { localFetch };

export interface SignedIn {
  readonly address: string;
  readonly config: WebmailConfig;
  readonly db: LocalDb;
  readonly auth: AuthSession;
  readonly api: MailboxClient;
  /** The IndexedDB of this user's "browser": another AuthSession on it is another tab. */
  readonly indexedDB: IDBFactory;
}

export interface WebmailFederation {
  readonly fed: MailFederation;
  config(domain: string): WebmailConfig;
  /** Creates the user (when `create`), signs them in, and returns their session in a fresh IndexedDB. */
  signIn(address: string, options?: { create?: boolean; locks?: Locks }): Promise<SignedIn>;
  close(): Promise<void>;
}

export const PASSWORD = 'a long enough password';

export async function startWebmailFederation(names: readonly string[]): Promise<WebmailFederation> {
  const sqlite = testDatabases().find((d) => d.name === 'sqlite')!;
  const fed = await startMailFederation(names, { database: () => sqlite.create() });
  const dbs: LocalDb[] = [];
  const config = (domain: string): WebmailConfig => {
    const d = fed.auth.domains[domain]!;
    return {
      domain,
      issuer: d.issuer,
      clientId: d.config.webmail.clientId,
      mailboxUrl: fed.domains[domain]!.publicUrl,
      redirectUri: d.webmailRedirectUri,
      postLogoutRedirectUri: d.config.webmail.postLogoutRedirectUris[0]!,
    };
  };
  return {
    fed,
    config,
    async signIn(address, options = {}) {
      const domain = address.slice(address.indexOf('@') + 1);
      if (options.create !== false) await fed.auth.domains[domain]!.createUser(address, PASSWORD);
      const cfg = config(domain);
      const indexedDB = new IDBFactory();
      const db = await LocalDb.open(indexedDB);
      dbs.push(db);
      const auth = new AuthSession({ config: cfg, db, fetch: localFetch, locks: options.locks });
      const agent = new BrowserAgent();
      const stopAt = atRedirectUri(cfg.redirectUri);
      const login = await agent.request(await auth.beginSignIn(), { stopAt });
      const done = await agent.submitLogin(login, address, PASSWORD, { stopAt });
      if (!done.redirect) throw new Error(`the sign-in of ${address} did not come back: ${done.status} ${done.body}`);
      await auth.completeSignIn(done.redirect);
      const api = new MailboxClient({ apiBase: apiBase(cfg), tokens: auth, fetch: localFetch });
      return { address, config: cfg, db, auth, api, indexedDB };
    },
    async close() {
      for (const db of dbs) db.close();
      await fed.close();
    },
  };
}

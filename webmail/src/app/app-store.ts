/**
 * The composition root of the page: reads the runtime configuration, opens IndexedDB, completes or
 * starts a sign-in, and builds every store once the user is known. Scenes get the stores from context.
 */
import { MailboxClient } from '../api/client.js';
import { NetworkError } from '../api/errors.js';
import type { Session } from '../api/types.js';
import { AuthSession, SignInError } from '../auth/session.js';
import { LocalDb } from '../stores/local-db.js';
import { MailActions } from '../stores/mail-actions.js';
import { MailStore } from '../stores/mail-store.js';
import { MessageCache } from '../stores/message-cache.js';
import { Notifier } from '../stores/notifier.js';
import { ReaderStore } from '../stores/reader-store.js';
import { ResourceUrls } from '../stores/resource-urls.js';
import { Store } from '../stores/store.js';
import { SyncEngine } from '../stores/sync-engine.js';
import { apiBase, loadConfig, type WebmailConfig } from './config.js';
import { RouterStore } from './router.js';

export type Phase =
  | { readonly name: 'starting' }
  | { readonly name: 'signed-out'; readonly error?: string }
  | { readonly name: 'redirecting' }
  | { readonly name: 'ready' }
  | { readonly name: 'failed'; readonly error: string };

export interface Services {
  readonly config: WebmailConfig;
  readonly account: Session;
  readonly api: MailboxClient;
  readonly mail: MailStore;
  readonly sync: SyncEngine;
  readonly cache: MessageCache;
  readonly actions: MailActions;
  readonly reader: ReaderStore;
  readonly notifier: Notifier;
  readonly urls: ResourceUrls;
  readonly router: RouterStore;
  readonly signOut: () => Promise<void>;
}

export interface AppState {
  readonly phase: Phase;
  /** The mail domain, once config.json is read. */
  readonly domain: string | undefined;
  readonly services: Services | undefined;
}

/** What the page gives the app: the browser, or a test's stand-ins for parts of it. */
export interface AppEnvironment {
  readonly location: Pick<Location, 'href' | 'pathname' | 'assign' | 'replace'>;
  readonly history: Pick<History, 'replaceState'>;
  readonly fetch?: typeof fetch;
  readonly indexedDB?: IDBFactory;
  /** Whether a service worker controls the page (media then stream through it). */
  readonly serviceWorkerControls?: () => boolean;
  /** The active service worker's registration (notifications are shown through it). */
  readonly serviceWorkerRegistration?: () => Promise<ServiceWorkerRegistration | undefined>;
  readonly router?: RouterStore;
  /**
   * The BroadcastChannel the tabs of this origin tell each other of a sign-out on (a test gives each
   * "browser" its own name); false for none.
   */
  readonly sessionChannel?: string | false;
}

export const SESSION_CHANNEL = 'federizer-webmail-session';

/** What a tab tells the others: the session ended, so the mail it shows must go. */
interface SessionMessage {
  readonly type: 'signed-out';
}

export class AppStore extends Store<AppState> {
  #db: LocalDb | undefined;
  #auth: AuthSession | undefined;
  #config: WebmailConfig | undefined;
  /** The signed-in session's lifetime: every write of its stores is refused once it aborts. */
  #session: AbortController | undefined;
  readonly #channel: BroadcastChannel | undefined;

  constructor(private readonly env: AppEnvironment) {
    super({ phase: { name: 'starting' }, domain: undefined, services: undefined });
    const name = env.sessionChannel ?? SESSION_CHANNEL;
    this.#channel = name !== false && typeof BroadcastChannel === 'function' ? new BroadcastChannel(name) : undefined;
    this.#channel?.addEventListener('message', (e: MessageEvent<Partial<SessionMessage>>) => {
      if (e.data?.type === 'signed-out') void this.#signedOutElsewhere();
    });
  }

  /** Stops listening to the other tabs (tests; a page just goes away). */
  close(): void {
    this.#teardown();
    this.#channel?.close();
  }

  async start(): Promise<void> {
    try {
      this.#config = await loadConfig(this.env.fetch);
      this.setState({ domain: this.#config.domain });
      this.#db = await LocalDb.open(this.env.indexedDB);
      this.#auth = new AuthSession({ config: this.#config, db: this.#db, fetch: this.env.fetch });
      this.#auth.onSignedOut(() => {
        this.#signedOut('Your session ended: sign in again.');
        this.#broadcast();
      });
      if (this.env.location.pathname === '/callback') {
        const callback = new URL(this.env.location.href);
        // The code is single-use: leave the callback URL before anything can reload it.
        this.env.history.replaceState(null, '', '/');
        try {
          await this.#auth.completeSignIn(callback);
        } catch (e) {
          if (e instanceof SignInError) return this.setState({ phase: { name: 'signed-out', error: e.message } });
          throw e;
        }
      }
      if (!(await this.#auth.isSignedIn())) return this.setState({ phase: { name: 'signed-out' } });
      await this.#ready();
    } catch (e) {
      this.setState({ phase: { name: 'failed', error: (e as Error).message } });
    }
  }

  async #ready(): Promise<void> {
    const config = this.#config!;
    const auth = this.#auth!;
    const session = new AbortController();
    this.#session = session;
    // Everything the signed-in stores write goes through this handle: nothing lands after a sign-out.
    const db = this.#db!.scoped(session.signal);
    const api = new MailboxClient({ apiBase: apiBase(config), tokens: auth, fetch: this.env.fetch });
    let account: Session;
    try {
      account = await api.session();
      await db.setKv('account', account);
    } catch (e) {
      // Offline: the account of the last visit, so the mail already synced can be read.
      const kept = await db.kv<Session>('account');
      if (!(e instanceof NetworkError) || !kept) throw e;
      account = kept;
    }
    const router = this.env.router ?? new RouterStore();
    const mail = new MailStore();
    const cache = new MessageCache(api, db);
    const actions = new MailActions(api, db, mail);
    const notifier = new Notifier({
      mail,
      title: `Federizer — ${account.address}`,
      open: (m) => router.go({ name: 'mailbox', mailbox: m.mailbox, threadId: m.threadId }),
      registration: this.env.serviceWorkerRegistration,
    });
    const sync = new SyncEngine({
      api,
      db,
      mail,
      cache,
      signal: session.signal,
      onNewMail: (m) => notifier.newMail(m),
      // The session is gone (another tab signed out where no BroadcastChannel told us, or the grant ended).
      onSignedOut: () => void this.#signedOutElsewhere('Your session ended: sign in again.'),
    });
    const services: Services = {
      config,
      account,
      api,
      mail,
      sync,
      cache,
      actions,
      reader: new ReaderStore({ mail, cache, api, actions }),
      notifier,
      urls: new ResourceUrls(api, this.env.serviceWorkerControls ?? (() => false)),
      router,
      signOut: () => this.signOut(),
    };
    notifier.start();
    await sync.start();
    if (session.signal.aborted) return;
    this.setState({ phase: { name: 'ready' }, services });
  }

  async signIn(): Promise<void> {
    this.setState({ phase: { name: 'redirecting' } });
    try {
      this.env.location.assign(await this.#auth!.beginSignIn());
    } catch (e) {
      this.setState({ phase: { name: 'signed-out', error: `Cannot reach the sign-in page: ${(e as Error).message}` } });
    }
  }

  async signOut(): Promise<void> {
    this.#teardown();
    const url = await this.#auth!.signOut();
    this.#broadcast();
    if (url) this.env.location.assign(url);
    else this.setState({ phase: { name: 'signed-out' }, services: undefined });
  }

  #teardown(): void {
    this.#session?.abort();
    this.#session = undefined;
    const s = this.state.services;
    s?.sync.stop();
    s?.notifier.stop();
    s?.reader.close();
    void s?.urls.clear();
  }

  #signedOut(error: string): void {
    this.#teardown();
    this.setState({ phase: { name: 'signed-out', error }, services: undefined });
  }

  #broadcast(): void {
    const message: SessionMessage = { type: 'signed-out' };
    this.#channel?.postMessage(message);
  }

  /**
   * Another tab signed out (or the session is found gone): stop, forget again what this tab's stores may
   * have written while the other one cleared, and show the sign-in.
   */
  async #signedOutElsewhere(error = 'You signed out in another tab.'): Promise<void> {
    if (this.state.phase.name === 'signed-out' || this.state.phase.name === 'redirecting') return;
    this.#teardown();
    this.setState({ phase: { name: 'signed-out', error }, services: undefined });
    await this.#auth?.forget().catch(() => undefined);
  }
}

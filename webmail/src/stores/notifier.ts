/**
 * Tells the user about new mail: the unread count of the inbox in the document title, a sentence for
 * screen readers (a live region reads `announcement`), and a system notification when the page is in
 * the background and the user allowed notifications.
 *
 * The notification goes through the service worker's registration when one is active: Chrome on
 * Android has no `new Notification()` (it throws "Illegal constructor"), and a notification the worker
 * shows can still be clicked after the page is gone (sw.ts opens the message then).
 */
import { displayName } from '../api/message-view.js';
import type { MessageSummary } from '../api/types.js';
import { routeHref } from '../app/router.js';
import type { MailStore } from './mail-store.js';
import { Store } from './store.js';

export type Permission = NotificationPermission | 'unsupported';

export interface NotifierState {
  readonly permission: Permission;
  readonly announcement: string;
}

export interface NotifierOptions {
  readonly mail: MailStore;
  /** Shown after the count: the app's name and the domain. */
  readonly title: string;
  readonly document?: Pick<Document, 'title' | 'visibilityState'>;
  readonly notifications?: typeof Notification;
  /** A notification was clicked: show that message. */
  readonly open?: (message: MessageSummary) => void;
  /** The active service worker's registration, when there is one (`navigator.serviceWorker`). */
  readonly registration?: () => Promise<Pick<ServiceWorkerRegistration, 'showNotification'> | undefined>;
}

/** What sw.ts needs to open the message when its notification is clicked. */
export interface NotificationData {
  readonly url: string;
}

export class Notifier extends Store<NotifierState> {
  readonly #o: NotifierOptions;
  #unsubscribe: (() => void) | undefined;

  constructor(options: NotifierOptions) {
    const api = options.notifications ?? (typeof Notification === 'function' ? Notification : undefined);
    super({ permission: api ? api.permission : 'unsupported', announcement: '' });
    this.#o = { ...options, notifications: api };
  }

  start(): void {
    this.#unsubscribe ??= this.#o.mail.subscribe(() => this.#title());
    this.#title();
  }

  stop(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
  }

  #title(): void {
    const doc = this.#o.document ?? document;
    const unread = this.#o.mail.unreadCounts().inbox;
    const title = unread > 0 ? `(${unread}) ${this.#o.title}` : this.#o.title;
    if (doc.title !== title) doc.title = title;
  }

  /** Called by the sync with messages that just arrived in the inbox, unread. */
  newMail(messages: readonly MessageSummary[]): void {
    const first = messages[0];
    if (!first) return;
    const who = displayName(first.from);
    this.setState({
      announcement:
        messages.length === 1
          ? `New message from ${who}: ${first.subject || '(no subject)'}`
          : `${messages.length} new messages, the latest from ${who}`,
    });
    const doc = this.#o.document ?? document;
    const api = this.#o.notifications;
    if (!api || api.permission !== 'granted' || doc.visibilityState !== 'hidden') return;
    // Called by the sync after it stored the changes: a notification that fails must not fail the sync.
    void this.#show(api, messages.slice(0, 3)).catch(() => undefined);
  }

  async #show(api: typeof Notification, messages: readonly MessageSummary[]): Promise<void> {
    const registration = await this.#o.registration?.().catch(() => undefined);
    for (const m of messages) {
      const title = displayName(m.from);
      const options = { body: m.subject || '(no subject)', tag: m.id };
      if (registration) {
        const data: NotificationData = {
          url: `/${routeHref({ name: 'mailbox', mailbox: m.mailbox, threadId: m.threadId })}`,
        };
        await registration.showNotification(title, { ...options, data });
        continue;
      }
      const n = new api(title, options);
      n.onclick = () => {
        globalThis.focus?.();
        this.#o.open?.(m);
        n.close();
      };
    }
  }

  async requestPermission(): Promise<void> {
    const api = this.#o.notifications;
    if (!api) return;
    this.setState({ permission: await api.requestPermission() });
  }
}

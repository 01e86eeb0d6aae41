/**
 * Tells the user about new mail: the unread count of the inbox in the document title, a sentence for
 * screen readers (a live region reads `announcement`), and a system notification when the page is in
 * the background and the user allowed notifications.
 */
import { displayName } from '../api/message-view.js';
import type { MessageSummary } from '../api/types.js';
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
    for (const m of messages.slice(0, 3)) {
      const n = new api(displayName(m.from), { body: m.subject || '(no subject)', tag: m.id });
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

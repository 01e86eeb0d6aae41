import { describe, expect, it, vi } from 'vitest';
import type { MessageSummary } from '../api/types.js';
import { MailStore } from './mail-store.js';
import { Notifier } from './notifier.js';

const message = (id: string, seen = false): MessageSummary => ({
  id,
  mailbox: 'inbox',
  messageId: `<${id}@example.com>`,
  threadId: `<${id}@example.com>`,
  subject: `Subject ${id}`,
  from: 'Alice <alice@example.com>',
  date: 0,
  receivedAt: 0,
  seen,
  flagged: false,
  size: 1,
});

/** The browser's Notification, recording what the app shows (Node has none). */
function notifications(permission: NotificationPermission) {
  const shown: {
    title: string;
    options: NotificationOptions | undefined;
    instance: { onclick: (() => void) | null; closed: boolean };
  }[] = [];
  class FakeNotification {
    static permission = permission;
    static requestPermission = async () => 'granted' as const;
    onclick: (() => void) | null = null;
    closed = false;
    constructor(title: string, options?: NotificationOptions) {
      shown.push({ title, options, instance: this });
    }
    close() {
      this.closed = true;
    }
  }
  return { api: FakeNotification as unknown as typeof Notification, shown };
}

describe('Notifier', () => {
  it('puts the unread count of the inbox in the title, and follows it', () => {
    const mail = new MailStore();
    const doc = { title: '', visibilityState: 'visible' as DocumentVisibilityState };
    const n = new Notifier({
      mail,
      title: 'Federizer — bob@example.net',
      document: doc,
      notifications: notifications('default').api,
    });
    n.start();
    expect(doc.title).toBe('Federizer — bob@example.net');
    mail.replaceAll([message('a'), message('b'), message('c', true)]);
    expect(doc.title).toBe('(2) Federizer — bob@example.net');
    mail.upsert([message('a', true)]);
    expect(doc.title).toBe('(1) Federizer — bob@example.net');
    n.stop();
  });

  it('notifies only in the background and only when allowed, and a click opens the message', async () => {
    const mail = new MailStore();
    const doc = { title: '', visibilityState: 'visible' as DocumentVisibilityState };
    const granted = notifications('granted');
    const opened: string[] = [];
    const n = new Notifier({
      mail,
      title: 't',
      document: doc,
      notifications: granted.api,
      open: (m) => opened.push(m.id),
    });
    n.newMail([message('a')]);
    expect(granted.shown).toEqual([]);
    expect(n.state.announcement).toBe('New message from Alice: Subject a');

    doc.visibilityState = 'hidden';
    n.newMail([message('b'), message('c')]);
    await vi.waitFor(() => expect(granted.shown).toHaveLength(2));
    expect(granted.shown.map((s) => [s.title, s.options?.body, s.options?.tag])).toEqual([
      ['Alice', 'Subject b', 'b'],
      ['Alice', 'Subject c', 'c'],
    ]);
    expect(n.state.announcement).toBe('2 new messages, the latest from Alice');
    granted.shown[1]!.instance.onclick!();
    expect(opened).toEqual(['c']);
    expect(granted.shown[1]!.instance.closed).toBe(true);

    const denied = notifications('denied');
    new Notifier({ mail, title: 't', document: doc, notifications: denied.api }).newMail([message('d')]);
    await new Promise((r) => setTimeout(r, 10));
    expect(denied.shown).toEqual([]);
  });

  it('shows the notification through the service worker when one is active, with the URL of its conversation', async () => {
    const granted = notifications('granted');
    const shown: [string, NotificationOptions | undefined][] = [];
    const registration = async () => ({
      showNotification: async (title: string, options?: NotificationOptions) => void shown.push([title, options]),
    });
    const n = new Notifier({
      mail: new MailStore(),
      title: 't',
      document: { title: '', visibilityState: 'hidden' },
      notifications: granted.api,
      registration,
    });
    n.newMail([{ ...message('e'), threadId: '<t/1@example.com>' }]);
    await vi.waitFor(() => expect(shown).toHaveLength(1));
    expect(shown[0]).toEqual([
      'Alice',
      { body: 'Subject e', tag: 'e', data: { url: '/#/inbox/thread/%3Ct%2F1%40example.com%3E' } },
    ]);
    // The page's constructor is not used: Chrome on Android has none.
    expect(granted.shown).toEqual([]);
  });

  it('a browser without the Notification constructor (Chrome on Android) does not fail the sync that reported the mail', async () => {
    class Illegal {
      static permission = 'granted';
      constructor() {
        throw new TypeError("Failed to construct 'Notification': Illegal constructor.");
      }
    }
    const n = new Notifier({
      mail: new MailStore(),
      title: 't',
      document: { title: '', visibilityState: 'hidden' },
      notifications: Illegal as unknown as typeof Notification,
    });
    const rejections: unknown[] = [];
    const onRejection = (e: unknown) => rejections.push(e);
    process.on('unhandledRejection', onRejection);
    try {
      expect(() => n.newMail([message('f')])).not.toThrow();
      await new Promise((r) => setTimeout(r, 10));
      expect(rejections).toEqual([]);
      expect(n.state.announcement).toBe('New message from Alice: Subject f');
    } finally {
      process.off('unhandledRejection', onRejection);
    }
  });
});

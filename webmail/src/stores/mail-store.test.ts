import { describe, expect, it } from 'vitest';
import type { MailboxName, MessageSummary } from '../api/types.js';
import { MailStore } from './mail-store.js';

let n = 0;
function summary(over: Partial<MessageSummary> & { threadId: string }): MessageSummary {
  n++;
  return {
    id: `01jfv4k3q8d2x7m5n9p0r6s${String(n).padStart(3, '0')}`,
    mailbox: 'inbox',
    messageId: `<m${n}@example.com>`,
    subject: `subject ${n}`,
    from: 'Alice <alice@example.com>',
    date: n * 1000,
    receivedAt: n * 1000,
    seen: false,
    flagged: false,
    size: 10,
    ...over,
  };
}

describe('MailStore', () => {
  it('groups a mailbox by X-Thread-ID, newest conversation first, with unread counts and senders', () => {
    const mail = new MailStore();
    const a1 = summary({ threadId: '<a>', date: 1000, subject: 'Lunch?' });
    const b1 = summary({ threadId: '<b>', date: 2000, from: 'bob@example.net' });
    const a2 = summary({ threadId: '<a>', date: 3000, seen: true, from: 'Bob <bob@example.net>' });
    const archived = summary({ threadId: '<a>', date: 4000, mailbox: 'archive' });
    mail.replaceAll([a1, b1, a2, archived]);
    const inbox = mail.conversations('inbox');
    expect(inbox.map((c) => c.threadId)).toEqual(['<a>', '<b>']);
    expect(inbox[0]).toMatchObject({ subject: 'Lunch?', unread: 1, senders: ['Alice', 'Bob'], latest: a2 });
    expect(mail.unreadCounts()).toEqual({ inbox: 2, sent: 0, drafts: 0, archive: 1, trash: 0 });
  });

  it('shows a conversation across mailboxes but keeps the Trash and the drafts apart', () => {
    const mail = new MailStore();
    const received = summary({ threadId: '<t>' });
    const reply = summary({ threadId: '<t>', mailbox: 'sent' });
    const trashed = summary({ threadId: '<t>', mailbox: 'trash' });
    const draft = summary({ threadId: '<t>', mailbox: 'drafts' });
    mail.replaceAll([received, reply, trashed, draft]);
    const ids = (from: MailboxName) => mail.thread('<t>', from).map((s) => s.id);
    expect(ids('inbox')).toEqual([received.id, reply.id]);
    expect(ids('trash')).toEqual([trashed.id]);
    expect(ids('drafts')).toEqual([draft.id]);
  });

  it('derives once per change, and tells its listeners which ids changed', () => {
    const mail = new MailStore();
    const s = summary({ threadId: '<x>' });
    mail.replaceAll([s]);
    const first = mail.conversations('inbox');
    expect(mail.conversations('inbox')).toBe(first);
    const changed: string[][] = [];
    mail.onChanged((ids) => changed.push([...ids]));
    mail.upsert([{ ...s, seen: true }]);
    expect(mail.conversations('inbox')).not.toBe(first);
    expect(mail.unreadCounts().inbox).toBe(0);
    mail.remove([s.id, 'unknown']);
    expect(changed).toEqual([[s.id], [s.id]]);
    expect(mail.conversations('inbox')).toEqual([]);
  });
});

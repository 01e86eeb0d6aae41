import { describe, expect, it } from 'vitest';
import type { MailboxClient } from '../api/client.js';
import type { MessagePatch, MessageSummary } from '../api/types.js';
import { StoppedError, type LocalDb } from './local-db.js';
import { MailActions } from './mail-actions.js';
import { MailStore } from './mail-store.js';

const message: MessageSummary = {
  id: '01jfv4k3q8d2x7m5n9p0r6s001',
  mailbox: 'inbox',
  threadId: '<tea@example.com>',
  messageId: '<tea@example.com>',
  subject: 'Tea',
  from: 'Alice <alice@example.com>',
  date: 1000,
  receivedAt: 1000,
  seen: false,
  flagged: false,
  size: 10,
};

/** A mailbox whose answers to PATCH the test gives, one request at a time, as a slow network would. */
function slowMailbox(write: () => Promise<void> = () => Promise.resolve()) {
  const calls: { patch: MessagePatch; answer(s: MessageSummary): void; fail(e: Error): void }[] = [];
  const api = {
    updateMessage: (_id: string, patch: MessagePatch) =>
      new Promise<MessageSummary>((answer, fail) => calls.push({ patch, answer, fail })),
  } as unknown as MailboxClient;
  const db = { write } as unknown as LocalDb;
  const mail = new MailStore();
  mail.replaceAll([message]);
  return { calls, mail, actions: new MailActions(api, db, mail) };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

describe('MailActions', () => {
  it('sends the changes of one message in the order they were made; an older answer never undoes a newer change', async () => {
    const { calls, mail, actions } = slowMailbox();
    // Opening the conversation marks it read; the user marks it unread before the mailbox has answered.
    const read = actions.update(message.id, { seen: true });
    expect(mail.get(message.id)?.seen).toBe(true);
    const unread = actions.update(message.id, { seen: false });
    expect(mail.get(message.id)?.seen).toBe(false);
    await tick();
    expect(calls.map((c) => c.patch)).toEqual([{ seen: true }]); // the second waits for the first's answer

    calls[0]!.answer({ ...message, seen: true });
    await read;
    await tick();
    expect(mail.get(message.id)?.seen).toBe(false); // still the newer change
    expect(calls.map((c) => c.patch)).toEqual([{ seen: true }, { seen: false }]);

    calls[1]!.answer({ ...message, seen: false });
    await unread;
    expect(mail.get(message.id)?.seen).toBe(false);
  });

  it('a refused change is undone to the mailbox’s last answer, unless a later change is still on its way', async () => {
    const { calls, mail, actions } = slowMailbox();
    const flag = actions.update(message.id, { flagged: true });
    const read = actions.update(message.id, { seen: true });
    expect(mail.get(message.id)).toMatchObject({ flagged: true, seen: true });
    await tick();
    calls[0]!.fail(new Error('refused'));
    await expect(flag).rejects.toThrow('refused');
    expect(mail.get(message.id)).toMatchObject({ flagged: true, seen: true }); // the read is on its way
    await tick();
    calls[1]!.answer({ ...message, seen: true });
    await read;
    expect(mail.get(message.id)).toMatchObject({ flagged: false, seen: true }); // the mailbox's word

    const again = actions.update(message.id, { flagged: true });
    await tick();
    calls[2]!.fail(new Error('refused again'));
    await expect(again).rejects.toThrow('refused again');
    expect(mail.get(message.id)).toMatchObject({ flagged: false, seen: true });
  });

  it('a synchronization that read the message between two changes does not show over them', async () => {
    const { calls, mail, actions } = slowMailbox();
    const read = actions.update(message.id, { seen: true });
    const unread = actions.update(message.id, { seen: false });
    await tick();
    // The sync engine brings the message as the first change left it, and moved to the archive elsewhere.
    mail.upsert([{ ...message, seen: true, mailbox: 'archive' }]);
    expect(mail.get(message.id)).toMatchObject({ seen: false, mailbox: 'archive' });
    calls[0]!.answer({ ...message, seen: true, mailbox: 'archive' });
    await read;
    await tick();
    calls[1]!.fail(new Error('refused'));
    await expect(unread).rejects.toThrow('refused');
    // Refused: what the mailbox said last, the synchronization's summary, not the state before the changes.
    expect(mail.get(message.id)).toMatchObject({ seen: true, mailbox: 'archive' });
  });

  it('a change answered after the local copy closed (signed out) is done, not a failure; other write errors are', async () => {
    const stopped = slowMailbox(() => Promise.reject(new StoppedError('stopped: not writing summaries')));
    const unread = stopped.actions.update(message.id, { seen: false });
    await tick();
    stopped.calls[0]!.answer({ ...message, seen: false });
    await expect(unread).resolves.toBeUndefined();

    const broken = slowMailbox(() => Promise.reject(new Error('QuotaExceededError')));
    const flag = broken.actions.update(message.id, { flagged: true });
    await tick();
    broken.calls[0]!.answer({ ...message, flagged: true });
    await expect(flag).rejects.toThrow('QuotaExceededError');
  });

  it('says when the mailbox refuses an archive, a trash or a mark-unread, after undoing it, until dismissed', async () => {
    const { calls, mail, actions } = slowMailbox();
    const trash = actions.file([message.id], 'trash');
    expect(mail.get(message.id)?.mailbox).toBe('trash');
    await tick();
    calls[0]!.fail(new Error('not_found: no such message (HTTP 404)'));
    await expect(trash).resolves.toBeUndefined(); // reported, not thrown at a button that cannot catch it
    expect(mail.get(message.id)?.mailbox).toBe('inbox');
    expect(actions.state.problem).toBe(
      'The message could not be moved to Trash: not_found: no such message (HTTP 404)',
    );
    actions.dismissProblem();
    expect(actions.state.problem).toBeUndefined();

    const unread = actions.markUnread([message.id]);
    await tick();
    calls[1]!.fail(new Error('the mailbox did not answer'));
    await unread;
    expect(actions.state.problem).toBe('The message could not be marked unread: the mailbox did not answer');
    // The next change that succeeds takes the report away.
    const archive = actions.file([message.id], 'archive');
    await tick();
    calls[2]!.answer({ ...message, mailbox: 'archive' });
    await archive;
    expect(actions.state.problem).toBeUndefined();
  });

  it('a message deleted while a change was on its way is not brought back by the answer', async () => {
    const { calls, mail, actions } = slowMailbox();
    const flag = actions.update(message.id, { flagged: true });
    mail.remove([message.id]);
    await tick();
    calls[0]!.answer({ ...message, flagged: true });
    await flag;
    expect(mail.get(message.id)).toBeUndefined();
  });
});

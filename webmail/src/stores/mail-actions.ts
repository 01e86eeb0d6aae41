/**
 * What the user does to messages: read, flag, file, delete. Each change shows at once (optimistic) and
 * is undone if the mailbox refuses it; the mailbox's answer, and later the sync, settle the truth.
 */
import type { MailboxClient } from '../api/client.js';
import type { MailboxName, MessagePatch, MessageSummary } from '../api/types.js';
import type { LocalDb } from './local-db.js';
import type { MailStore } from './mail-store.js';

export class MailActions {
  constructor(
    private readonly api: MailboxClient,
    private readonly db: LocalDb,
    private readonly mail: MailStore,
  ) {}

  async update(id: string, patch: MessagePatch): Promise<void> {
    const before = this.mail.get(id);
    if (before) this.mail.upsert([{ ...before, ...patch }]);
    let after: MessageSummary;
    try {
      after = await this.api.updateMessage(id, patch);
    } catch (e) {
      if (before) this.mail.upsert([before]);
      throw e;
    }
    this.mail.upsert([after]);
    await this.db.write(['summaries'], (t) => t.objectStore('summaries').put(after));
  }

  /** Marks unread messages of a conversation read (when it is opened). */
  async markSeen(ids: readonly string[]): Promise<void> {
    const unseen = ids.filter((id) => this.mail.get(id)?.seen === false);
    await Promise.all(unseen.map((id) => this.update(id, { seen: true })));
  }

  async move(ids: readonly string[], mailbox: MailboxName): Promise<void> {
    await Promise.all(ids.map((id) => this.update(id, { mailbox })));
  }

  async setSeen(ids: readonly string[], seen: boolean): Promise<void> {
    await Promise.all(ids.map((id) => this.update(id, { seen })));
  }

  /** For good (from the Trash). */
  async destroy(ids: readonly string[]): Promise<void> {
    for (const id of ids) {
      await this.api.deleteMessage(id);
      this.mail.remove([id]);
      await this.db.write(['summaries', 'messages'], (t) => {
        t.objectStore('summaries').delete(id);
        t.objectStore('messages').delete(id);
      });
    }
  }
}

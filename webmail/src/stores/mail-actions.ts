/**
 * What the user does to messages: read, flag, file, delete. Each change shows at once (optimistic) and
 * is undone if the mailbox refuses it; the mailbox's answer, and later the sync, settle the truth.
 */
import type { MailboxClient } from '../api/client.js';
import type { MailboxName, MessagePatch, MessageSummary } from '../api/types.js';
import type { LocalDb } from './local-db.js';
import type { MailStore } from './mail-store.js';

/** The changes of one message still on their way to the mailbox. */
interface InFlight {
  /** Settles when the last change queued for the message has its answer. */
  tail: Promise<unknown>;
  /** How many changes are queued or on their way. */
  count: number;
}

export class MailActions {
  /**
   * Changes of one message go to the mailbox one after another, in the order the user made them: sent at
   * once, two changes (opening a conversation marks it read, and Mark as unread follows) could be applied
   * in either order. Until the last one is answered, the screen shows the user's changes (MailStore.pend),
   * not an earlier answer nor a synchronization that read the message in between.
   */
  readonly #inFlight = new Map<string, InFlight>();

  constructor(
    private readonly api: MailboxClient,
    private readonly db: LocalDb,
    private readonly mail: MailStore,
  ) {}

  async update(id: string, patch: MessagePatch): Promise<void> {
    this.mail.pend(id, patch);
    const flight = this.#inFlight.get(id) ?? { tail: Promise.resolve(), count: 0 };
    this.#inFlight.set(id, flight);
    flight.count++;
    const answer = flight.tail.then(() => this.api.updateMessage(id, patch));
    flight.tail = answer.catch(() => undefined);
    let after: MessageSummary;
    try {
      after = await answer;
    } catch (e) {
      // Undone to the mailbox's word, unless a later change is on its way: its answer settles what is shown.
      if (this.#last(id, flight)) this.mail.settle(id);
      throw e;
    }
    if (this.#last(id, flight)) this.mail.settle(id, after);
    await this.db.write(['summaries'], (t) => t.objectStore('summaries').put(after));
  }

  /** One change of the message has its answer: true when it was the last one on its way. */
  #last(id: string, flight: InFlight): boolean {
    flight.count--;
    if (flight.count > 0) return false;
    this.#inFlight.delete(id);
    return true;
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

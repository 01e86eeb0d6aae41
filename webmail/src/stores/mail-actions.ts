/**
 * What the user does to messages: read, flag, file, delete. Each change shows at once (optimistic) and
 * is undone if the mailbox refuses it; the mailbox's answer, and later the sync, settle the truth.
 */
import type { MailboxClient } from '../api/client.js';
import type { MailboxName, MessagePatch, MessageSummary } from '../api/types.js';
import { StoppedError, type LocalDb } from './local-db.js';
import type { MailStore } from './mail-store.js';
import { Store } from './store.js';

/** The changes of one message still on their way to the mailbox. */
interface InFlight {
  /** Settles when the last change queued for the message has its answer. */
  tail: Promise<unknown>;
  /** How many changes are queued or on their way. */
  count: number;
}

export interface ActionsState {
  /** What the user asked that the mailbox refused or never answered, until dismissed or another succeeds. */
  readonly problem: string | undefined;
}

export class MailActions extends Store<ActionsState> {
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
  ) {
    super({ problem: undefined });
  }

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
    try {
      await this.db.write(['summaries'], (t) => t.objectStore('summaries').put(after));
    } catch (e) {
      // The mailbox made the change. A local copy closed meanwhile (signed out, the app stopped) is not
      // one to keep it in; the next sign-in reads the mailbox again.
      if (!(e instanceof StoppedError)) throw e;
    }
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

  /**
   * What a button or a key asks (Archive, Trash, Mark as unread): it shows at once, and if the mailbox
   * refuses it, it is undone and `problem` says so, since the user has moved on and sees only the undoing.
   */
  async file(ids: readonly string[], mailbox: MailboxName): Promise<void> {
    const what = ids.length === 1 ? 'the message' : `${ids.length} messages`;
    await this.#reported(this.move(ids, mailbox), `${what} could not be moved to ${capitalized(mailbox)}`);
  }

  async markUnread(ids: readonly string[]): Promise<void> {
    await this.#reported(this.setSeen(ids, false), 'the message could not be marked unread');
  }

  dismissProblem(): void {
    this.setState({ problem: undefined });
  }

  async #reported(action: Promise<void>, failed: string): Promise<void> {
    try {
      await action;
      this.setState({ problem: undefined });
    } catch (e) {
      const problem = `${capitalized(failed)}: ${(e as Error).message}`;
      this.setState({ problem });
    }
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

function capitalized(name: string): string {
  return `${name.charAt(0).toUpperCase()}${name.slice(1)}`;
}

/**
 * The summaries of every message of the account, in memory (10,000 are a few megabytes), with what the
 * views derive from them: conversations grouped by `X-Thread-ID` (the summary's `threadId`), unread
 * counts, and the messages of one thread. Derivations are memoized per version, so a list of 10,000
 * rows is grouped once per change, not once per render.
 */
import { displayName } from '../api/message-view.js';
import { MAILBOXES, type MailboxName, type MessagePatch, type MessageSummary } from '../api/types.js';
import { Store } from './store.js';

export interface Conversation {
  readonly threadId: string;
  /** Its messages in this mailbox, oldest first. */
  readonly messages: readonly MessageSummary[];
  readonly latest: MessageSummary;
  readonly unread: number;
  readonly subject: string;
  /** Display names of the senders, in order of first appearance. */
  readonly senders: readonly string[];
}

export interface MailState {
  /** Bumped on every change of the summaries. */
  readonly version: number;
  /** False until the summaries were read from IndexedDB or the mailbox. */
  readonly loaded: boolean;
}

export class MailStore extends Store<MailState> {
  readonly #summaries = new Map<string, MessageSummary>();
  readonly #memo = new Map<string, unknown>();
  #memoVersion = -1;
  readonly #changed = new Set<(ids: ReadonlySet<string>) => void>();
  /** Per message: the user's changes not answered yet, and the mailbox's latest summary beneath them. */
  readonly #pending = new Map<string, { patch: MessagePatch; base: MessageSummary }>();

  constructor() {
    super({ version: 0, loaded: false });
  }

  /** Listeners told which ids changed (the reader reloads a message whose resources arrived). */
  onChanged(listener: (ids: ReadonlySet<string>) => void): () => void {
    this.#changed.add(listener);
    return () => this.#changed.delete(listener);
  }

  /** Replaces everything (a full synchronization, or the copy kept in IndexedDB). */
  replaceAll(summaries: Iterable<MessageSummary>): void {
    const ids = new Set(this.#summaries.keys());
    this.#summaries.clear();
    for (const s of summaries) {
      this.#set(s);
      ids.add(s.id);
    }
    this.#bump(ids, true);
  }

  upsert(summaries: readonly MessageSummary[]): void {
    if (summaries.length === 0) return;
    for (const s of summaries) this.#set(s);
    this.#bump(new Set(summaries.map((s) => s.id)));
  }

  remove(ids: readonly string[]): void {
    const gone = ids.filter((id) => this.#summaries.delete(id));
    if (gone.length > 0) this.#bump(new Set(gone));
  }

  /**
   * Shows a change the user made over the message until `settle`: what the mailbox says of the message
   * meanwhile (a synchronization that read it between two changes) is kept beneath it, not shown.
   */
  pend(id: string, patch: MessagePatch): void {
    const shown = this.#summaries.get(id);
    if (!shown) return;
    const pending = this.#pending.get(id);
    this.#pending.set(id, { patch: { ...pending?.patch, ...patch }, base: pending?.base ?? shown });
    this.#summaries.set(id, { ...shown, ...patch });
    this.#bump(new Set([id]));
  }

  /** The changes of the message are answered: shows `answer`, or (refused) the mailbox's latest word. */
  settle(id: string, answer?: MessageSummary): void {
    const pending = this.#pending.get(id);
    this.#pending.delete(id);
    const truth = answer ?? pending?.base;
    // Not brought back when the message went (deleted elsewhere) while the change was on its way.
    if (truth && (this.#summaries.has(id) || pending === undefined)) this.upsert([truth]);
  }

  #set(s: MessageSummary): void {
    const pending = this.#pending.get(s.id);
    if (pending) pending.base = s;
    this.#summaries.set(s.id, pending ? { ...s, ...pending.patch } : s);
  }

  has(id: string): boolean {
    return this.#summaries.has(id);
  }

  get(id: string): MessageSummary | undefined {
    return this.#summaries.get(id);
  }

  #bump(ids: ReadonlySet<string>, loaded = this.state.loaded): void {
    this.setState((s) => ({ version: s.version + 1, loaded }));
    for (const listener of this.#changed) listener(ids);
  }

  #memoized<T>(key: string, compute: () => T): T {
    if (this.#memoVersion !== this.state.version) {
      this.#memo.clear();
      this.#memoVersion = this.state.version;
    }
    if (!this.#memo.has(key)) this.#memo.set(key, compute());
    return this.#memo.get(key) as T;
  }

  /** Newest conversation first; a conversation is the messages of one thread in this mailbox. */
  conversations(mailbox: MailboxName): readonly Conversation[] {
    return this.#memoized(`conversations:${mailbox}`, () => {
      const byThread = new Map<string, MessageSummary[]>();
      for (const s of this.#summaries.values()) {
        if (s.mailbox !== mailbox) continue;
        const list = byThread.get(s.threadId);
        if (list) list.push(s);
        else byThread.set(s.threadId, [s]);
      }
      const out: Conversation[] = [];
      for (const [threadId, messages] of byThread) {
        messages.sort(byDate);
        const latest = messages[messages.length - 1]!;
        const senders: string[] = [];
        for (const m of messages) {
          const name = displayName(m.from);
          if (!senders.includes(name)) senders.push(name);
        }
        out.push({
          threadId,
          messages,
          latest,
          unread: messages.filter((m) => !m.seen).length,
          subject: messages[0]!.subject,
          senders,
        });
      }
      return out.sort((a, b) => byDate(b.latest, a.latest));
    });
  }

  /** Unread messages per mailbox. */
  unreadCounts(): Readonly<Record<MailboxName, number>> {
    return this.#memoized('unread', () => {
      const counts = Object.fromEntries(MAILBOXES.map((m) => [m, 0])) as Record<MailboxName, number>;
      for (const s of this.#summaries.values()) if (!s.seen) counts[s.mailbox]++;
      return counts;
    });
  }

  /**
   * The messages of a thread, oldest first, wherever they are filed (a reply in Sent belongs to the
   * conversation), except the Trash unless the conversation is read from there, and except drafts.
   */
  thread(threadId: string, from: MailboxName): readonly MessageSummary[] {
    return this.#memoized(`thread:${from}:${threadId}`, () =>
      [...this.#summaries.values()]
        .filter(
          (s) =>
            s.threadId === threadId &&
            (s.mailbox === from ||
              (from !== 'trash' && from !== 'drafts' && s.mailbox !== 'trash' && s.mailbox !== 'drafts')),
        )
        .sort(byDate),
    );
  }
}

function byDate(a: MessageSummary, b: MessageSummary): number {
  return a.date - b.date || a.receivedAt - b.receivedAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

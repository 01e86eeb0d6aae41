/**
 * The conversation being read: each message rebuilt from its Placeholder, the text of its parts, and,
 * for a message the user sent, where each copy stands (queued, transferred, fetched, failed, withdrawn)
 * with unsend. It follows the sync: a resource that finishes fetching, or a reply that arrives, shows
 * up in the open conversation.
 */
import type { MailboxClient } from '../api/client.js';
import { rebuildMessage, type MessageView, type ResourceRef } from '../api/message-view.js';
import type { Delivery, MailboxName, MessageSummary, UnsendResult } from '../api/types.js';
import type { MailActions } from './mail-actions.js';
import type { MailStore } from './mail-store.js';
import type { MessageCache } from './message-cache.js';
import { Store } from './store.js';

export type BodyState =
  | { readonly status: 'loading' }
  | { readonly status: 'ready'; readonly text: string }
  | { readonly status: 'error'; readonly message: string };

export interface SentState {
  readonly deliveries: readonly Delivery[] | undefined;
  readonly error: string | undefined;
  readonly unsending: boolean;
  readonly unsent: UnsendResult | undefined;
}

export interface ReaderEntry {
  readonly summary: MessageSummary;
  readonly view: MessageView | undefined;
  readonly error: string | undefined;
  /** For messages the user sent. */
  readonly sent: SentState | undefined;
}

export interface ReaderState {
  readonly threadId: string | undefined;
  readonly mailbox: MailboxName | undefined;
  readonly entries: readonly ReaderEntry[];
  /** Text of the parts, by Content-ID (immutable, so shared by every message that references it). */
  readonly bodies: Readonly<Record<string, BodyState>>;
}

/** While a copy is on its way, its status is asked for again this often. */
const DELIVERY_POLL_MS = 3000;
const SETTLED = new Set(['fetched', 'failed', 'withdrawn']);

export class ReaderStore extends Store<ReaderState> {
  #unsubscribe: (() => void) | undefined;
  #poll: ReturnType<typeof setInterval> | undefined;

  constructor(
    private readonly deps: {
      readonly mail: MailStore;
      readonly cache: MessageCache;
      readonly api: MailboxClient;
      readonly actions: MailActions;
    },
  ) {
    super({ threadId: undefined, mailbox: undefined, entries: [], bodies: {} });
  }

  open(threadId: string, mailbox: MailboxName): void {
    if (this.state.threadId === threadId && this.state.mailbox === mailbox) return;
    this.close();
    this.setState({ threadId, mailbox, entries: [], bodies: {} });
    this.#unsubscribe = this.deps.mail.onChanged((ids) => this.#follow(ids));
    this.#follow(undefined);
    const unseen = this.deps.mail
      .thread(threadId, mailbox)
      .filter((s) => !s.seen)
      .map((s) => s.id);
    void this.deps.actions.markSeen(unseen).catch(() => undefined);
  }

  close(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    if (this.#poll) clearInterval(this.#poll);
    this.#poll = undefined;
    this.setState({ threadId: undefined, mailbox: undefined, entries: [], bodies: {} });
  }

  /** Rebuilds the entries of the thread; `changed` undefined means all of them. */
  #follow(changed: ReadonlySet<string> | undefined): void {
    const { threadId, mailbox } = this.state;
    if (threadId === undefined || mailbox === undefined) return;
    const summaries = this.deps.mail.thread(threadId, mailbox);
    const previous = new Map(this.state.entries.map((e) => [e.summary.id, e]));
    const reload: string[] = [];
    const entries = summaries.map((summary) => {
      const before = previous.get(summary.id);
      if (!before || changed === undefined || changed.has(summary.id)) reload.push(summary.id);
      return {
        summary,
        view: before?.view,
        error: before?.error,
        sent: before?.sent ?? (summary.mailbox === 'sent' ? emptySent() : undefined),
      };
    });
    this.setState({ entries });
    for (const id of reload) void this.#load(id);
    this.#schedulePoll();
  }

  async #load(id: string): Promise<void> {
    let view: MessageView | undefined;
    try {
      view = rebuildMessage(await this.deps.cache.message(id));
      this.#patch(id, { view, error: undefined });
    } catch (e) {
      this.#patch(id, { error: (e as Error).message });
      return;
    }
    for (const block of view.content) {
      for (const ref of block.kind === 'html' ? [block.part, block.plain] : [block.part]) if (ref) void this.#text(ref);
    }
    if (this.#entry(id)?.sent) void this.refreshDeliveries(id);
  }

  async #text(ref: ResourceRef): Promise<void> {
    const current = this.state.bodies[ref.contentId];
    if (current?.status === 'ready' || current?.status === 'loading' || ref.status !== 'held') return;
    this.setState((s) => ({ ...s, bodies: { ...s.bodies, [ref.contentId]: { status: 'loading' } } }));
    let next: BodyState;
    try {
      next = { status: 'ready', text: await this.deps.cache.text(ref) };
    } catch (e) {
      next = { status: 'error', message: (e as Error).message };
    }
    this.setState((s) => ({ ...s, bodies: { ...s.bodies, [ref.contentId]: next } }));
  }

  #entry(id: string): ReaderEntry | undefined {
    return this.state.entries.find((e) => e.summary.id === id);
  }

  #patch(id: string, patch: Partial<ReaderEntry>): void {
    this.setState((s) => ({
      ...s,
      entries: s.entries.map((e) => (e.summary.id === id ? { ...e, ...patch } : e)),
    }));
  }

  #patchSent(id: string, patch: Partial<SentState>): void {
    const sent = this.#entry(id)?.sent;
    if (sent) this.#patch(id, { sent: { ...sent, ...patch } });
  }

  async refreshDeliveries(id: string): Promise<void> {
    try {
      this.#patchSent(id, { deliveries: await this.deps.api.deliveries(id), error: undefined });
    } catch (e) {
      this.#patchSent(id, { error: (e as Error).message });
    }
    this.#schedulePoll();
  }

  /** Polls deliveries while a copy of an open sent message is still on its way. */
  #schedulePoll(): void {
    const moving = this.state.entries.some((e) => e.sent?.deliveries?.some((d) => !SETTLED.has(d.status)) === true);
    if (moving && !this.#poll) {
      this.#poll = setInterval(() => {
        for (const e of this.state.entries) if (e.sent) void this.refreshDeliveries(e.summary.id);
      }, DELIVERY_POLL_MS);
    } else if (!moving && this.#poll) {
      clearInterval(this.#poll);
      this.#poll = undefined;
    }
  }

  /** Withdraws the copies not fetched yet (all recipients, or those given). */
  async unsend(id: string, recipients?: readonly string[]): Promise<void> {
    this.#patchSent(id, { unsending: true, error: undefined });
    try {
      const unsent = await this.deps.api.unsend(id, recipients);
      this.#patchSent(id, { unsent, unsending: false });
    } catch (e) {
      this.#patchSent(id, { unsending: false, error: (e as Error).message });
    }
    await this.refreshDeliveries(id);
  }
}

function emptySent(): SentState {
  return { deliveries: undefined, error: undefined, unsending: false, unsent: undefined };
}

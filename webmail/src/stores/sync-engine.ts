/**
 * Keeps the local replica (MailStore in memory, IndexedDB on disk) in step with the mailbox, the way
 * PROTOCOL.md §9 describes (after JMAP, RFC 8620 §5.2): from scratch, `GET /state` then every mailbox
 * listed page by page; then `GET /changes?since=<state>&wait=30`, a long poll the mailbox holds open
 * until something changes, and the changed messages read in batches by id. A `410` (the state is older
 * than the mailbox's change log) starts again from scratch. New mail therefore shows without a reload,
 * usually within a second of its arrival.
 */
import type { MailboxClient } from '../api/client.js';
import { BadRequestError, NetworkError, StateExpiredError } from '../api/errors.js';
import { MAILBOXES, summaryOf, type Changes, type Message, type MessageSummary } from '../api/types.js';
import { SignedOutError } from '../auth/session.js';
import type { LocalDb } from './local-db.js';
import type { MailStore } from './mail-store.js';
import type { MessageCache } from './message-cache.js';
import { Store } from './store.js';

export type SyncStatus = 'idle' | 'syncing' | 'live' | 'offline' | 'error' | 'stopped';

export interface SyncState {
  readonly status: SyncStatus;
  /** What went wrong, in words, while not live. */
  readonly error: string | undefined;
}

export interface SyncEngineOptions {
  readonly api: MailboxClient;
  readonly db: LocalDb;
  readonly mail: MailStore;
  readonly cache: MessageCache;
  /** Seconds the mailbox may hold a long poll (it holds at most 50). */
  readonly waitSeconds?: number;
  /** Messages that arrived in the inbox unread since the last poll (for notifications). */
  readonly onNewMail?: (messages: readonly MessageSummary[]) => void;
  /** How many of the newest messages of each mailbox a full synchronization reads whole, for offline reading. */
  readonly readAhead?: number;
  /** The session's lifetime: once it aborts (sign-out), nothing more is written, whatever is under way. */
  readonly signal?: AbortSignal;
  /** The session is gone (no tokens any more): the app shows the sign-in. */
  readonly onSignedOut?: () => void;
}

/** One run of the engine: its stop signal, and the database as seen by it (writes refused once stopped). */
interface Run {
  readonly signal: AbortSignal | undefined;
  readonly db: LocalDb;
}

const PAGE = 200;
const BATCH = 200;
const MAX_BACKOFF_MS = 30_000;

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

export class SyncEngine extends Store<SyncState> {
  readonly #o: SyncEngineOptions;
  #run: AbortController | undefined;
  #wake: AbortController = new AbortController();

  constructor(options: SyncEngineOptions) {
    super({ status: 'idle', error: undefined });
    this.#o = options;
  }

  /** Shows what IndexedDB holds at once, then synchronizes in the background until `stop()`. */
  async start(): Promise<void> {
    if (this.#run) return;
    const run = new AbortController();
    this.#run = run;
    await this.loadLocal(run.signal);
    void this.#loop(run.signal);
  }

  stop(): void {
    this.#run?.abort();
    this.#run = undefined;
    this.setState({ status: 'stopped' });
  }

  /** Ends a back-off wait at once (the browser came back online, or the tab became visible). */
  wake(): void {
    this.#wake.abort();
    this.#wake = new AbortController();
  }

  #runOf(signal: AbortSignal | undefined): Run {
    return { signal, db: this.#o.db.scoped(signal, this.#o.signal) };
  }

  async loadLocal(signal?: AbortSignal): Promise<void> {
    const [summaries, sync] = await Promise.all([
      this.#o.db.getAll<MessageSummary>('summaries'),
      this.#o.db.kv<{ state: string }>('sync'),
    ]);
    // Read before a sign-out that has cleared the database since: not shown.
    if (sync && !this.#runOf(signal).db.stopped) this.#o.mail.replaceAll(summaries);
  }

  /** One round: from scratch if there is no state, then one read of the changes (a long poll when `wait` > 0). */
  async syncOnce(wait = 0, signal?: AbortSignal): Promise<void> {
    const run = this.#runOf(signal);
    let state = (await run.db.kv<{ state: string }>('sync'))?.state;
    if (state === undefined) state = await this.#fullSync(run);
    run.db.assertLive();
    if (this.state.status !== 'live') this.setState({ status: 'live', error: undefined });
    for (;;) {
      const changes = await this.#o.api.changes(state, { wait, signal });
      await this.#apply(changes, run);
      if (!changes.hasMore) return;
      state = changes.state;
    }
  }

  async #loop(signal: AbortSignal): Promise<void> {
    let backoff = 1000;
    while (!signal.aborted) {
      try {
        await this.syncOnce(this.#o.waitSeconds ?? 30, signal);
        backoff = 1000;
      } catch (e) {
        if (signal.aborted || this.#o.signal?.aborted) return;
        if (e instanceof StateExpiredError || (e instanceof BadRequestError && e.code === 'invalid_state')) {
          await this.#runOf(signal).db.deleteKv('sync');
          continue;
        }
        if (e instanceof SignedOutError) {
          this.setState({ status: 'stopped', error: e.message });
          this.#o.onSignedOut?.();
          return;
        }
        this.setState({ status: e instanceof NetworkError ? 'offline' : 'error', error: (e as Error).message });
        await sleep(backoff, this.#wake.signal);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
    }
  }

  async #fullSync(run: Run): Promise<string> {
    this.setState({ status: 'syncing', error: undefined });
    // The state first: whatever changes while the mailboxes are listed is replayed by the next poll.
    const state = await this.#o.api.state({ signal: run.signal });
    const all: MessageSummary[] = [];
    for (const mailbox of MAILBOXES) {
      let cursor: string | undefined;
      do {
        const page = await this.#o.api.listMessages(mailbox, { cursor, limit: PAGE, signal: run.signal });
        all.push(...page.messages.map(summaryOf));
        cursor = page.next ?? undefined;
      } while (cursor);
    }
    await run.db.write(['summaries', 'messages', 'kv'], (t) => {
      const summaries = t.objectStore('summaries');
      summaries.clear();
      t.objectStore('messages').clear();
      for (const s of all) summaries.put(s);
      t.objectStore('kv').put({ state }, 'sync');
    });
    run.db.assertLive();
    this.#o.mail.replaceAll(all);
    void this.#readAhead(all, run).catch(() => undefined);
    return state;
  }

  /** Reads the newest messages whole, and their text, so that they open offline. */
  async #readAhead(all: readonly MessageSummary[], run: Run): Promise<void> {
    const n = this.#o.readAhead ?? 50;
    const ids = MAILBOXES.flatMap((m) =>
      all
        .filter((s) => s.mailbox === m)
        .sort((a, b) => b.date - a.date)
        .slice(0, n)
        .map((s) => s.id),
    );
    for (const batch of chunks(ids, BATCH)) {
      const { messages } = await this.#o.api.getMessages(batch, { signal: run.signal });
      await run.db.write(['messages'], (t) => messages.forEach((m) => t.objectStore('messages').put(m)));
      await this.#o.cache.prefetchText(messages, run.db);
    }
  }

  async #apply(changes: Changes, run: Run): Promise<void> {
    const ids = [...new Set([...changes.created, ...changes.updated])];
    const fetched: Message[] = [];
    const destroyed = new Set(changes.destroyed);
    for (const batch of chunks(ids, BATCH)) {
      const result = await this.#o.api.getMessages(batch, { signal: run.signal });
      fetched.push(...result.messages);
      // Gone again between the change and the read.
      for (const id of result.notFound) destroyed.add(id);
    }
    const known = new Set(fetched.filter((m) => this.#o.mail.has(m.id)).map((m) => m.id));
    const summaries = fetched.map(summaryOf);
    await run.db.write(['summaries', 'messages', 'kv'], (t) => {
      for (const m of fetched) t.objectStore('messages').put(m);
      for (const s of summaries) t.objectStore('summaries').put(s);
      for (const id of destroyed) {
        t.objectStore('messages').delete(id);
        t.objectStore('summaries').delete(id);
      }
      t.objectStore('kv').put({ state: changes.state }, 'sync');
    });
    run.db.assertLive();
    this.#o.mail.upsert(summaries);
    this.#o.mail.remove([...destroyed]);
    const fresh = summaries.filter((s) => !known.has(s.id) && s.mailbox === 'inbox' && !s.seen);
    if (fresh.length > 0) this.#o.onNewMail?.(fresh);
    void this.#o.cache.prefetchText(fetched, run.db).catch(() => undefined);
  }
}

function sleep(ms: number, wake: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      wake.removeEventListener('abort', done);
      resolve();
    }
    wake.addEventListener('abort', done, { once: true });
  });
}

/**
 * Whole messages and the bytes of their text parts, kept in IndexedDB as they are read or synced, so
 * that mail already seen stays readable offline. Both are safe to keep forever under their keys: a
 * message changes only through sync, which rewrites it, and a resource is immutable (its key is its
 * digest).
 */
import type { MailboxClient } from '../api/client.js';
import { decodeText, rebuildMessage, type ResourceRef } from '../api/message-view.js';
import type { Message } from '../api/types.js';
import type { LocalDb } from './local-db.js';

/** Text parts larger than this are read from the mailbox each time, not kept. */
const MAX_KEPT_TEXT = 2 * 1024 * 1024;

export class MessageCache {
  constructor(
    private readonly api: MailboxClient,
    private readonly db: LocalDb,
  ) {}

  /** The kept copy, else the mailbox's (then kept). */
  async message(id: string): Promise<Message> {
    const kept = await this.db.get<Message>('messages', id);
    if (kept) return kept;
    const message = await this.api.getMessage(id);
    await this.db.write(['messages'], (t) => t.objectStore('messages').put(message));
    return message;
  }

  /** `db` is the handle to keep it through (a sync run's, whose writes stop with it); by default the cache's own. */
  async text(ref: Pick<ResourceRef, 'contentId' | 'mediaType' | 'size'>, db: LocalDb = this.db): Promise<string> {
    const kept = await db.get<ArrayBuffer>('bodies', ref.contentId);
    if (kept) return decodeText(kept, ref.mediaType);
    const res = await this.api.resource(ref.contentId);
    const bytes = await res.arrayBuffer();
    if (bytes.byteLength <= MAX_KEPT_TEXT && !db.stopped)
      await db.write(['bodies'], (t) => t.objectStore('bodies').put(bytes, ref.contentId));
    return decodeText(bytes, ref.mediaType);
  }

  /** Reads ahead the text of synced messages, so they open offline; failures wait for the next read. */
  async prefetchText(messages: readonly Message[], db: LocalDb = this.db): Promise<void> {
    for (const message of messages) {
      if (db.stopped) return;
      for (const block of rebuildMessage(message).content) {
        for (const ref of block.kind === 'html' ? [block.part, block.plain] : [block.part]) {
          if (!ref || ref.status !== 'held' || ref.size > MAX_KEPT_TEXT) continue;
          await this.text(ref, db).catch(() => undefined);
        }
      }
    }
  }
}

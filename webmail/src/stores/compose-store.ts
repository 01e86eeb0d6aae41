/**
 * A message being written: recipient validation with the mailbox's own address parser, attachments
 * uploaded as they are added (with progress and cancel), the draft saved on its own a moment after
 * each change, and sending (the saved draft is sent, so it leaves the Drafts at the same time).
 */
import type { MailboxClient, UploadProgress } from '../api/client.js';
import { buildDraft, newMessageId, recipientError, recipientsOf, type DraftAttachment } from '../api/draft.js';
import type { ContentBlock } from '../api/message-view.js';
import { AbortedError, NotFoundError } from '../api/errors.js';
import type { Draft, SendResult, UploadedResource } from '../api/types.js';
import { Store } from './store.js';

export type ComposeField = 'to' | 'cc' | 'bcc' | 'subject' | 'text';

/**
 * The id of the draft in Drafts with this Message-ID, if one is left. Each save gives a draft a new id and
 * keeps its Message-ID, so this finds the latest version of a draft whose id was replaced meanwhile (by a
 * save of this page before a reload, or of another tab).
 */
export async function currentDraftId(api: MailboxClient, messageId: string): Promise<string | undefined> {
  let cursor: string | undefined;
  do {
    const page = await api.listMessages('drafts', { cursor, limit: 200 });
    const found = page.messages.find((m) => m.messageId === messageId);
    if (found) return found.id;
    cursor = page.next ?? undefined;
  } while (cursor);
  return undefined;
}

export interface ComposeAttachment {
  readonly key: string;
  readonly name: string;
  readonly size: number;
  readonly type: string;
  readonly loaded: number;
  readonly status: 'uploading' | 'done' | 'failed';
  readonly error: string | undefined;
  readonly resource: UploadedResource | undefined;
  readonly inline: boolean;
}

export type SaveStatus = 'idle' | 'saving' | 'saved' | 'failed';

export interface ComposeState {
  readonly to: string;
  readonly cc: string;
  readonly bcc: string;
  readonly subject: string;
  readonly text: string;
  /** Per field, why it is not valid; `form` for what stops sending as a whole. */
  readonly errors: Readonly<Partial<Record<'to' | 'cc' | 'bcc' | 'form', string>>>;
  readonly attachments: readonly ComposeAttachment[];
  /**
   * What the user must know of what the compose started from: a reopened draft's HTML before the text is
   * changed (see draftSeed), what a forward could not include (see forwardSeed).
   */
  readonly textNotice: string | undefined;
  readonly draftId: string | undefined;
  readonly save: SaveStatus;
  readonly saveError: string | undefined;
  readonly sending: boolean;
  readonly sent: SendResult | undefined;
}

/** Where a compose starts from: nothing, a reply, or a saved draft. */
export interface ComposeSeed {
  readonly to?: string;
  readonly cc?: string;
  readonly bcc?: string;
  readonly subject?: string;
  readonly text?: string;
  readonly threadId?: string;
  readonly inReplyTo?: string;
  readonly references?: string;
  readonly messageId?: string;
  readonly draftId?: string;
  readonly attachments?: readonly DraftAttachment[];
  /** A reopened draft's text parts: saved as they are while the text is still `text` (see draftSeed). */
  readonly textParts?: readonly ContentBlock[];
  /** What is said while those parts are kept, and once the text changed and they no longer are. */
  readonly textNotice?: { readonly kept: string; readonly dropped: string };
  /** What the user must know of what the compose starts from (what a forward could not include). */
  readonly notice?: string;
}

export interface ComposeOptions {
  readonly api: MailboxClient;
  /** The signed-in user (the draft's From). */
  readonly from: string;
  readonly domain: string;
  readonly maxResourceSize: number;
  /** Milliseconds after the last change before the draft is saved. */
  readonly autosaveMs?: number;
  readonly seed?: ComposeSeed;
}

const TEXT_TYPE = 'text/plain; charset=UTF-8';
let keys = 0;

export class ComposeStore extends Store<ComposeState> {
  readonly #o: ComposeOptions;
  readonly #messageId: string;
  readonly #uploads = new Map<string, AbortController>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** Bumped on every change; the draft is saved when it differs from the saved one. */
  #version = 0;
  #savedVersion = 0;
  #saving: Promise<void> | undefined;
  #text: { value: string; resource: UploadedResource } | undefined;
  #closed = false;

  constructor(options: ComposeOptions) {
    const seed = options.seed ?? {};
    super({
      to: seed.to ?? '',
      cc: seed.cc ?? '',
      bcc: seed.bcc ?? '',
      subject: seed.subject ?? '',
      text: seed.text ?? '',
      errors: {},
      attachments: (seed.attachments ?? []).map((a) => ({
        key: `a${++keys}`,
        name: a.filename,
        size: a.resource.size,
        type: a.resource.mediaType,
        loaded: a.resource.size,
        status: 'done' as const,
        error: undefined,
        resource: a.resource,
        inline: a.inline ?? false,
      })),
      textNotice: seed.textNotice?.kept ?? seed.notice,
      draftId: seed.draftId,
      save: seed.draftId ? 'saved' : 'idle',
      saveError: undefined,
      sending: false,
      sent: undefined,
    });
    this.#o = options;
    this.#messageId = seed.messageId ?? newMessageId(options.domain);
  }

  get messageId(): string {
    return this.#messageId;
  }

  set(field: ComposeField, value: string): void {
    this.setState({ [field]: value } as Partial<ComposeState>);
    const notice = this.#o.seed?.textNotice;
    if (field === 'text' && notice) this.setState({ textNotice: this.#keepsText() ? notice.kept : notice.dropped });
    // A field already marked wrong is checked again as it is corrected.
    if ((field === 'to' || field === 'cc' || field === 'bcc') && this.state.errors[field]) this.validate(field);
    this.#changed();
  }

  /** Checks a recipient field (on blur, and before sending). */
  validate(field: 'to' | 'cc' | 'bcc'): boolean {
    const error = recipientError(this.state[field]);
    this.setState((s) => ({ ...s, errors: { ...s.errors, [field]: error, form: undefined } }));
    return error === undefined;
  }

  #changed(): void {
    this.#version++;
    if (this.#closed) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.saveNow().catch(() => undefined), this.#o.autosaveMs ?? 2000);
  }

  #patchAttachment(key: string, patch: Partial<ComposeAttachment>): void {
    this.setState((s) => ({ ...s, attachments: s.attachments.map((a) => (a.key === key ? { ...a, ...patch } : a)) }));
  }

  /** Starts uploading each file; progress and errors show on its row. */
  addFiles(files: readonly File[]): void {
    for (const file of files) {
      const key = `a${++keys}`;
      const tooLarge = file.size > this.#o.maxResourceSize;
      this.setState((s) => ({
        ...s,
        attachments: [
          ...s.attachments,
          {
            key,
            name: file.name,
            size: file.size,
            type: file.type || 'application/octet-stream',
            loaded: 0,
            status: tooLarge ? 'failed' : 'uploading',
            error: tooLarge ? `larger than the ${formatBytes(this.#o.maxResourceSize)} a file may be` : undefined,
            resource: undefined,
            inline: false,
          },
        ],
      }));
      if (!tooLarge) void this.#upload(key, file);
    }
  }

  async #upload(key: string, file: File): Promise<void> {
    const abort = new AbortController();
    this.#uploads.set(key, abort);
    try {
      const resource = await this.#o.api.upload(file, {
        mediaType: file.type || 'application/octet-stream',
        signal: abort.signal,
        onProgress: (p: UploadProgress) => this.#patchAttachment(key, { loaded: p.loaded }),
      });
      this.#patchAttachment(key, { status: 'done', loaded: file.size, resource });
      this.#changed();
    } catch (e) {
      // A cancelled upload has already left the list.
      if (!(e instanceof AbortedError)) this.#patchAttachment(key, { status: 'failed', error: (e as Error).message });
    } finally {
      this.#uploads.delete(key);
    }
  }

  /** Cancels an upload in progress, or drops an attachment. */
  removeAttachment(key: string): void {
    this.#uploads.get(key)?.abort();
    const had = this.state.attachments.find((a) => a.key === key);
    this.setState((s) => ({ ...s, attachments: s.attachments.filter((a) => a.key !== key) }));
    if (had?.status === 'done') this.#changed();
  }

  #isEmpty(): boolean {
    const s = this.state;
    return [s.to, s.cc, s.bcc, s.subject, s.text].every((v) => v.trim() === '') && s.attachments.length === 0;
  }

  /** Whether the reopened draft's own text parts are still what the text field shows. */
  #keepsText(): boolean {
    const seed = this.#o.seed;
    return seed?.textParts !== undefined && this.state.text === (seed.text ?? '');
  }

  async #build(): Promise<Draft> {
    const s = this.state;
    const keptText = this.#keepsText() ? this.#o.seed?.textParts : undefined;
    let text: UploadedResource | undefined;
    if (s.text !== '' && !keptText) {
      if (this.#text?.value !== s.text) {
        const resource = await this.#o.api.upload(new Blob([s.text], { type: TEXT_TYPE }), { mediaType: TEXT_TYPE });
        this.#text = { value: s.text, resource };
      }
      text = this.#text.resource;
    }
    const seed = this.#o.seed ?? {};
    return buildDraft({
      from: this.#o.from,
      to: s.to,
      cc: s.cc,
      bcc: s.bcc,
      subject: s.subject,
      messageId: this.#messageId,
      threadId: seed.threadId,
      inReplyTo: seed.inReplyTo,
      references: seed.references,
      text,
      ...(keptText ? { keptText } : {}),
      attachments: s.attachments
        .filter((a) => a.status === 'done' && a.resource)
        .map((a) => ({ resource: a.resource!, filename: a.name, inline: a.inline })),
    });
  }

  /** Saves the draft now if it changed (one save at a time; changes made meanwhile are saved after). */
  async saveNow(): Promise<void> {
    while (this.#saving) await this.#saving;
    if (this.#closed || this.#version === this.#savedVersion || this.#isEmpty()) return;
    const version = this.#version;
    this.#saving = (async () => {
      this.setState({ save: 'saving', saveError: undefined });
      try {
        const draft = await this.#build();
        const id = this.state.draftId;
        const saved = id ? await this.#update(id, draft) : await this.#o.api.createDraft(draft);
        this.#savedVersion = version;
        this.setState({ draftId: saved.id, save: 'saved' });
      } catch (e) {
        this.setState({ save: 'failed', saveError: (e as Error).message });
        throw e;
      } finally {
        this.#saving = undefined;
      }
    })();
    await this.#saving;
  }

  /**
   * Saves over the draft `id`. When that id is gone because another save of this draft replaced it (this
   * page's own save still under way when it was reloaded, or another tab), the save goes over the latest
   * version instead: the last save wins, as it would have without the race. A draft sent or discarded
   * meanwhile stays gone (NotFoundError).
   */
  async #update(id: string, draft: Draft) {
    try {
      return await this.#o.api.updateDraft(id, draft);
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
      const current = await currentDraftId(this.#o.api, this.#messageId);
      if (current === undefined || current === id) throw e;
      return this.#o.api.updateDraft(current, draft);
    }
  }

  /** Checks everything, then sends; true when the mailbox accepted it. */
  async send(): Promise<boolean> {
    const valid = (['to', 'cc', 'bcc'] as const).map((f) => this.validate(f)).every(Boolean);
    if (!valid) return false;
    const s = this.state;
    const fail = (form: string) => {
      this.setState((st) => ({ ...st, errors: { ...st.errors, form } }));
      return false;
    };
    if ([s.to, s.cc, s.bcc].flatMap(recipientsOf).length === 0) return fail('Add at least one recipient.');
    if (s.attachments.some((a) => a.status === 'uploading'))
      return fail('Some attachments are still uploading: wait for them, or remove them.');
    if (s.attachments.some((a) => a.status === 'failed'))
      return fail('Some attachments failed to upload: remove them, then send.');
    if (this.#timer) clearTimeout(this.#timer);
    this.#closed = true;
    this.setState({ sending: true });
    try {
      while (this.#saving) await this.#saving.catch(() => undefined);
      const draft = await this.#build();
      const id = this.state.draftId;
      const sent = id ? await this.#o.api.sendDraft((await this.#update(id, draft)).id) : await this.#o.api.send(draft);
      this.setState({ sending: false, sent, draftId: undefined });
      return true;
    } catch (e) {
      this.#closed = false;
      this.setState({ sending: false });
      return fail((e as Error).message);
    }
  }

  /** Drops the draft, saved or not. */
  async discard(): Promise<void> {
    this.dispose();
    while (this.#saving) await this.#saving.catch(() => undefined);
    const id = this.state.draftId;
    if (id) await this.#o.api.deleteDraft(id);
    this.setState({ draftId: undefined });
  }

  /** Leaving the compose: uploads stop; what was typed is saved first by the caller (`saveNow`). */
  dispose(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    for (const abort of this.#uploads.values()) abort.abort();
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value >= 10 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

/**
 * Where a reply, a reply to all, or a saved draft starts: pure functions of the message being answered,
 * and `loadComposeSeed`, which reads that message and its text (the words of an HTML-only one) first.
 */
import type { DraftAttachment } from '../api/draft.js';
import { rebuildMessage, type MessageView, type ResourceRef } from '../api/message-view.js';
import { parseAddressList, type Mailbox } from '../api/protocol.js';
import type { Message } from '../api/types.js';
import type { ComposeIntent } from '../app/router.js';
import type { ComposeSeed } from './compose-store.js';
import { htmlToText, type ParseHtml } from './html-text.js';

/** An RFC 5322 mailbox again: the display name quoted when it holds specials. */
function formatMailbox(m: Mailbox): string {
  if (!m.name) return m.address;
  const name = /^[\p{L}\p{N} !#$%&'*+\-/=?^_`{|}~]*$/u.test(m.name)
    ? m.name
    : `"${m.name.replace(/(["\\])/g, '\\$1')}"`;
  return `${name} <${m.address}>`;
}

function mailboxes(list: string | undefined): Mailbox[] {
  if (!list) return [];
  try {
    return parseAddressList(list);
  } catch {
    return [];
  }
}

function without(list: readonly Mailbox[], exclude: Set<string>): Mailbox[] {
  const out: Mailbox[] = [];
  for (const m of list) {
    const key = m.address.toLowerCase();
    if (exclude.has(key)) continue;
    exclude.add(key);
    out.push(m);
  }
  return out;
}

function quote(view: MessageView, text: string | undefined): string {
  if (!text) return '';
  const when = new Date(view.date).toLocaleString();
  return `\n\nOn ${when}, ${view.from} wrote:\n${text.replace(/\r\n/g, '\n').replace(/^/gm, '> ')}`;
}

export function replySeed(view: MessageView, text: string | undefined, me: string, all: boolean): ComposeSeed {
  const self = me.toLowerCase();
  const from = mailboxes(view.from);
  const mine = from.some((m) => m.address.toLowerCase() === self);
  // Answering one's own sent message goes to its recipients, not back to oneself.
  const primary = mine ? mailboxes(view.to) : from;
  const seen = new Set([self]);
  const to = without(all ? [...primary, ...(mine ? [] : mailboxes(view.to))] : primary, seen);
  const cc = all ? without(mailboxes(view.cc), seen) : [];
  const subject = /^re:/i.test(view.subject.trim()) ? view.subject : `Re: ${view.subject}`;
  return {
    to: to.map(formatMailbox).join(', '),
    cc: cc.map(formatMailbox).join(', '),
    subject,
    text: quote(view, text),
    threadId: view.threadId,
    inReplyTo: view.messageId,
    references: [view.references, view.messageId].filter(Boolean).join(' '),
  };
}

/** A saved draft opened again: its fields, its text, and the attachments it already references. */
export function draftSeed(view: MessageView, text: string | undefined, draftId: string): ComposeSeed {
  const attachments: DraftAttachment[] = [...view.media, ...view.attachments].map((r) => ({
    resource: { contentId: r.contentId, size: r.size, mediaType: r.mediaType },
    filename: r.filename ?? 'attachment',
    inline: r.disposition === 'inline',
  }));
  return {
    to: view.to ?? '',
    cc: view.cc ?? '',
    bcc: view.bcc ?? '',
    subject: view.subject,
    text: text ?? '',
    // A new conversation has its own Message-ID as thread id: it needs no X-Thread-ID of its own.
    threadId: view.threadId === view.messageId ? undefined : view.threadId,
    references: view.references,
    inReplyTo: view.inReplyTo,
    messageId: view.messageId,
    draftId,
    attachments,
  };
}

export interface SeedSources {
  /** The message, kept or fetched (MessageCache). */
  message(id: string): Promise<Message>;
  /** The text of a part, kept or fetched (MessageCache). */
  text(ref: ResourceRef): Promise<string>;
}

/**
 * The text a compose starts from: the message's first text, its plain alternative when it has one, else
 * the words of its HTML (a reply quotes text, and a draft is edited as text). Undefined while the part
 * is still being fetched from the sender.
 */
export async function composeText(view: MessageView, sources: Pick<SeedSources, 'text'>, parse?: ParseHtml) {
  const first = view.content[0];
  const ref = first?.kind === 'html' ? (first.plain ?? first.part) : first?.part;
  if (!ref || ref.status !== 'held') return undefined;
  const text = await sources.text(ref);
  return ref.baseType === 'text/html' ? htmlToText(text, parse) : text;
}

/** What a compose of `intent` starts from; undefined for a new message. */
export async function loadComposeSeed(
  intent: ComposeIntent,
  options: { readonly sources: SeedSources; readonly me: string; readonly parseHtml?: ParseHtml },
): Promise<ComposeSeed | undefined> {
  if (intent.kind === 'new') return undefined;
  const view = rebuildMessage(await options.sources.message(intent.id));
  const text = await composeText(view, options.sources, options.parseHtml);
  return intent.kind === 'draft'
    ? draftSeed(view, text, intent.id)
    : replySeed(view, text, options.me, intent.kind === 'reply-all');
}

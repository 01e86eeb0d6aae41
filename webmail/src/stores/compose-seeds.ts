/**
 * Where a reply, a reply to all, a forward as a new message, or a saved draft starts: pure functions of the
 * message being answered, and `loadComposeSeed`, which reads that message and its text (the words of an
 * HTML-only one) first.
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

/**
 * "Forward as a new message": a message of the user's own, to recipients still to be chosen, quoting the
 * original's headers and text, with the original's media and attachments attached again. They are
 * referenced, not uploaded again: once fetched, a received resource is held by the user's mailbox, as an
 * upload would be (PROTOCOL.md §4.1 asks no more). What has not arrived from the sender yet cannot be
 * attached; the user is told what is left out. Unlike Forward (the chain of §7, where the recipient fetches
 * from the origin), the recipients see the user as the sender, and the user's words above the original.
 */
export function forwardSeed(view: MessageView, body: ComposeText): ComposeSeed {
  const resources = [...view.media, ...view.attachments];
  const held = resources.filter((r) => r.status === 'held');
  const header = [
    '---------- Forwarded message ----------',
    `From: ${view.from}`,
    `Date: ${new Date(view.date).toLocaleString()}`,
    `Subject: ${view.subject}`,
    ...(view.to ? [`To: ${view.to}`] : []),
    ...(view.cc ? [`Cc: ${view.cc}`] : []),
  ].join('\n');
  const left: string[] = [];
  if (body.missing > 0) left.push('its text, still being fetched from the sender');
  const pending = resources.length - held.length;
  if (pending > 0)
    left.push(`${pending} ${pending === 1 ? 'attachment' : 'attachments'} still being fetched from the sender`);
  const notice =
    left.length > 0
      ? `Not included: ${left.join(', and ')}. Forward it again once everything has arrived to include it.`
      : undefined;
  return {
    subject: /^(fwd?|fw):/i.test(view.subject.trim()) ? view.subject : `Fwd: ${view.subject}`,
    text: `\n\n${header}\n\n${body.text}`,
    // The editor is plain text: nothing in it shows an inline image, so each is attached.
    attachments: held.map((r) => ({
      resource: { contentId: r.contentId, size: r.size, mediaType: r.mediaType },
      filename: r.filename ?? 'attachment',
      inline: false,
    })),
    ...(notice ? { notice } : {}),
  };
}

/** Shown while a reopened draft's HTML is kept (its text unchanged), and once it no longer is. */
export const HTML_KEPT_NOTICE =
  'This draft also has a formatted (HTML) version, which this editor cannot show. It is kept as long as the ' +
  'message text is not changed; once it is, the draft is saved as plain text, without that formatting.';
export const HTML_DROPPED_NOTICE =
  'The text was changed: this draft is now saved as plain text, without the formatting of its HTML version. ' +
  'Undo the change to keep that version.';

/**
 * A saved draft opened again: its fields, its text, and the attachments it already references.
 *
 * The editor is one plain text field, so the text is every text part of the draft in order (see
 * `composeText`), and the parts themselves are kept as `textParts`: while the text is unchanged, saving or
 * sending the draft writes them back as they were. What the field cannot represent is lost only once the
 * text is changed, when the draft is saved with one plain part holding the edited text instead:
 * - the HTML of a part (its formatting, links, images it shows): only its plain alternative, or else its
 *   words, were edited. The user is told so (HTML_KEPT_NOTICE, then HTML_DROPPED_NOTICE) before and after
 *   the change, never silently;
 * - the boundaries between several plain parts (their words are all kept, in one part), and their charsets
 *   (the new part is UTF-8). Nothing a reader sees is lost, so nothing is said.
 * Other alternatives (a calendar beside the text, say) were attachments already, and stay attachments.
 */
export function draftSeed(view: MessageView, body: ComposeText, draftId: string): ComposeSeed {
  const attachments: DraftAttachment[] = [...view.media, ...view.attachments].map((r) => ({
    resource: { contentId: r.contentId, size: r.size, mediaType: r.mediaType },
    filename: r.filename ?? 'attachment',
    inline: r.disposition === 'inline',
  }));
  // Every text part is a draft's own upload, so none should be missing; if one is, editing would lose it.
  if (body.missing > 0) throw new Error(`${body.missing} of its text parts cannot be read from the mailbox yet`);
  return {
    to: view.to ?? '',
    cc: view.cc ?? '',
    bcc: view.bcc ?? '',
    subject: view.subject,
    text: body.text,
    ...(view.content.length > 0 ? { textParts: view.content } : {}),
    ...(body.html ? { textNotice: { kept: HTML_KEPT_NOTICE, dropped: HTML_DROPPED_NOTICE } } : {}),
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

/** The text of a message as the compose shows it, and what of it a plain text field cannot. */
export interface ComposeText {
  /**
   * Every text block, in order, separated by a blank line: a plain part as it is, an HTML part by its plain
   * alternative when it has one, else by its words.
   */
  readonly text: string;
  /** Text blocks left out because their part is still being fetched from the sender. */
  readonly missing: number;
  /** Whether some block is HTML, whose formatting the text does not carry. */
  readonly html: boolean;
}

/** The text a compose starts from (a reply quotes it, a draft is edited as it); see ComposeText. */
export async function composeText(
  view: MessageView,
  sources: Pick<SeedSources, 'text'>,
  parse?: ParseHtml,
): Promise<ComposeText> {
  const texts: string[] = [];
  let missing = 0;
  for (const block of view.content) {
    const ref = block.kind === 'html' ? (block.plain ?? block.part) : block.part;
    if (ref.status !== 'held') {
      missing++;
      continue;
    }
    const text = await sources.text(ref);
    texts.push(ref.baseType === 'text/html' ? htmlToText(text, parse) : text);
  }
  return { text: texts.join('\n\n'), missing, html: view.content.some((b) => b.kind === 'html') };
}

/** What a compose of `intent` starts from; undefined for a new message. */
export async function loadComposeSeed(
  intent: ComposeIntent,
  options: { readonly sources: SeedSources; readonly me: string; readonly parseHtml?: ParseHtml },
): Promise<ComposeSeed | undefined> {
  if (intent.kind === 'new') return undefined;
  const view = rebuildMessage(await options.sources.message(intent.id));
  const text = await composeText(view, options.sources, options.parseHtml);
  if (intent.kind === 'draft') return draftSeed(view, text, intent.id);
  if (intent.kind === 'forward') return forwardSeed(view, text);
  // A reply quotes what has arrived of the text; none of it yet, no quote.
  return replySeed(view, text.text || undefined, options.me, intent.kind === 'reply-all');
}

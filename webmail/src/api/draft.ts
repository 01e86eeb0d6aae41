/**
 * The other direction of message-view.ts: a draft Placeholder (PROTOCOL.md §2, one headers block) built
 * from what the user wrote. The text is an uploaded resource like any attachment; the mailbox stamps
 * Date and the digests when it sends (§4.2).
 */
import type { ContentBlock } from './message-view.js';
import { externalContentType, parseAddressList, ProtocolError, type Header, type Part } from './protocol.js';
import type { Draft, UploadedResource } from './types.js';

export interface DraftAttachment {
  readonly resource: UploadedResource;
  readonly filename: string;
  /** Shown in the text (an image pasted in place) rather than offered as a file. */
  readonly inline?: boolean;
}

export interface DraftInput {
  readonly from: string;
  readonly to: string;
  readonly cc: string;
  readonly bcc: string;
  readonly subject: string;
  readonly messageId?: string;
  /** The conversation: the `X-Thread-ID` of the message replied to, or absent for a new one. */
  readonly threadId?: string;
  readonly inReplyTo?: string;
  readonly references?: string;
  readonly text: UploadedResource | undefined;
  /**
   * The text as parts already stored, in place of `text`: a reopened draft's own, written back as they were
   * (an HTML part with its plain alternative stays a multipart/alternative of the two).
   */
  readonly keptText?: readonly ContentBlock[];
  readonly attachments: readonly DraftAttachment[];
}

export type RecipientField = 'to' | 'cc' | 'bcc';

/** A new Message-ID of the user's domain (PROTOCOL.md §4.1: it must end in `@<domain>`). */
export function newMessageId(domain: string): string {
  return `<${crypto.randomUUID()}@${domain}>`;
}

/** RFC 2045 quoted-string for a filename parameter; a line break would end the header, so none survives. */
function quoted(value: string): string {
  return `"${value.replace(/[\r\n]+/g, ' ').replace(/(["\\])/g, '\\$1')}"`;
}

function leaf(resource: Pick<UploadedResource, 'contentId' | 'size' | 'mediaType'>, disposition: string): Part {
  return {
    headers: [
      { 'Content-Disposition': disposition },
      { 'Content-ID': resource.contentId },
      { 'Content-Type': externalContentType(resource.size, resource.mediaType) },
    ],
  };
}

export function buildDraft(input: DraftInput): Draft {
  const headers: Header[] = [{ From: input.from }];
  for (const [name, value] of [
    ['To', input.to],
    ['Cc', input.cc],
    ['Bcc', input.bcc],
  ] as const) {
    if (value.trim() !== '') headers.push({ [name]: value.trim() });
  }
  if (input.subject.trim() !== '') headers.push({ Subject: input.subject.replace(/[\r\n]+/g, ' ').trim() });
  if (input.messageId) headers.push({ 'Message-ID': input.messageId });
  if (input.threadId) headers.push({ 'X-Thread-ID': input.threadId });
  if (input.inReplyTo) headers.push({ 'In-Reply-To': input.inReplyTo });
  if (input.references) headers.push({ References: input.references });
  headers.push({ 'Content-Type': 'multipart/mixed' });
  const parts: Part[] = [];
  if (input.keptText && input.keptText.length > 0) {
    for (const block of input.keptText) {
      if (block.kind === 'html' && block.plain)
        parts.push({
          headers: [{ 'Content-Type': 'multipart/alternative' }],
          // RFC 2046 §5.1.4: the alternatives from the plainest to the richest.
          parts: [leaf(block.plain, 'inline'), leaf(block.part, 'inline')],
        });
      else parts.push(leaf(block.part, 'inline'));
    }
  } else if (input.text) parts.push(leaf(input.text, 'inline'));
  for (const a of input.attachments)
    parts.push(leaf(a.resource, a.inline ? 'inline' : `attachment; filename=${quoted(a.filename)}`));
  return { envelope: [{ headers }], body: { parts } };
}

/**
 * Checks one recipient field with the parser the mailbox uses (RFC 5322 address list), and that each
 * domain has a dot, as every mail domain found through DNS does (a bare `bob@example` is a typo that
 * would only fail at delivery). Undefined when valid, else the reason in words a person acts on, naming
 * the entry at fault, e.g. `“bob” is not an address: it needs an @ and a domain, like bob@example.com`.
 */
export function recipientError(value: string): string | undefined {
  if (value.trim() === '') return undefined;
  if (value.length > 998) return 'This field is too long: a header line is at most 998 characters (RFC 5322 §2.1.1)';
  try {
    const boxes = parseAddressList(value);
    const bad = boxes.find((b) => !b.domain.includes('.') && !b.domain.startsWith('['));
    if (bad) return `${bad.address}: the domain needs a dot, like example.com`;
    return undefined;
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    return entryError(value) ?? `This is not a list of addresses: ${e.message}`;
  }
}

/**
 * The list failed to parse: finds the first comma-separated entry that fails on its own and says what is
 * wrong with it. Undefined when no single entry is to blame (a group's `name: a, b;` syntax spans commas).
 */
function entryError(value: string): string | undefined {
  // A group (`name: a, b;`) spans commas: no single entry can be judged on its own.
  if (value.replace(/"(?:[^"\\]|\\.)*"/g, '').includes(':')) return undefined;
  for (const entry of splitAddressEntries(value)) {
    const text = entry.trim();
    if (text === '') continue;
    try {
      parseAddressList(text);
      continue;
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
    }
    const shown = `“${text.length > 40 ? `${text.slice(0, 39)}…` : text}”`;
    const ats = text.split('@').length - 1;
    if (ats === 0) return `${shown} is not an address: it needs an @ and a domain, like bob@example.com`;
    const plain = !/[<>"()]/.test(text);
    if (plain && text.includes(';')) return `${shown}: separate addresses with commas, not semicolons`;
    // Two addresses side by side: `a@x.net b@y.net`, or `Bob <b@y.net> c@z.net` (text after the `>`).
    if ((plain && ats > 1 && /\s/.test(text)) || (ats > 1 && />\s*[^\s(]/.test(text)))
      return `${shown}: put a comma between addresses`;
    if (plain && /\s/.test(text.split('@')[0]!))
      return `${shown}: an address has no spaces; to add a name, write Name <bob@example.com>`;
    return `${shown} is not a valid address`;
  }
  return undefined;
}

/** An address list split at its commas, outside quoted strings, angle brackets and comments; untrimmed. */
export function splitAddressEntries(value: string): string[] {
  const entries: string[] = [];
  let start = 0;
  let quoted = false;
  let depth = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\') i++;
    else if (quoted) quoted = c !== '"';
    else if (c === '"') quoted = true;
    else if (c === '(' || c === '<') depth++;
    else if ((c === ')' || c === '>') && depth > 0) depth--;
    else if (c === ',' && depth === 0) {
      entries.push(value.slice(start, i));
      start = i + 1;
    }
  }
  entries.push(value.slice(start));
  return entries;
}

/** The addr-specs of a field, lower-cased (for "nobody to send to" and reply-all's de-duplication). */
export function recipientsOf(value: string): string[] {
  if (recipientError(value) !== undefined || value.trim() === '') return [];
  return parseAddressList(value).map((m) => m.address.toLowerCase());
}

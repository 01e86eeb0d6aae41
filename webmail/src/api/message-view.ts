/**
 * A message as the reader shows it, rebuilt from its Placeholder (PROTOCOL.md §2): the headers of the
 * origin block, the forward blocks of its chain, and the body's tree of parts, whose leaves reference
 * External Resources by Content-ID. `multipart/alternative` offers HTML and plain text of the same
 * content; inline text parts are the body; inline media are shown in place; the rest are attachments.
 */
import {
  headerValue,
  isHeadersBlock,
  parseAddressList,
  parseParameterized,
  type Header,
  type Part,
} from './protocol.js';
import type { Message, ResourceStatus } from './types.js';

export interface ResourceRef {
  readonly contentId: string;
  /** The resource's media type as declared, parameters included (`text/plain; charset=UTF-8`). */
  readonly mediaType: string;
  /** Lower-cased `type/subtype`. */
  readonly baseType: string;
  readonly size: number;
  readonly disposition: 'inline' | 'attachment';
  readonly filename: string | undefined;
  /** `held` can be downloaded; `pending` is still being fetched from the sender's mailbox; `failed` never will. */
  readonly status: ResourceStatus;
  /** With `failed`, when the mailbox knows: why, in its words (`failureSummary` makes it short). */
  readonly failure?: string;
}

export type ContentBlock =
  | { readonly kind: 'text'; readonly part: ResourceRef }
  | { readonly kind: 'html'; readonly part: ResourceRef; readonly plain: ResourceRef | undefined };

export interface ForwardHop {
  readonly from: string;
  readonly to: string;
}

export interface MessageView {
  readonly id: string;
  readonly messageId: string;
  readonly threadId: string;
  readonly subject: string;
  readonly from: string;
  readonly to: string | undefined;
  readonly cc: string | undefined;
  readonly bcc: string | undefined;
  readonly date: number;
  readonly references: string | undefined;
  readonly inReplyTo: string | undefined;
  /** Oldest first: who forwarded it on the way here (PROTOCOL.md §7). */
  readonly forwards: readonly ForwardHop[];
  readonly content: readonly ContentBlock[];
  /** Inline images, audio and video, shown after the text. */
  readonly media: readonly ResourceRef[];
  readonly attachments: readonly ResourceRef[];
}

function partHeader(headers: readonly Header[], name: string): Header[string] | undefined {
  const lower = name.toLowerCase();
  for (const h of headers) for (const key in h) if (key.toLowerCase() === lower) return h[key];
  return undefined;
}

function leafOf(
  part: Part,
  statuses: ReadonlyMap<string, { size: number; status: ResourceStatus; failure?: string }>,
): ResourceRef | undefined {
  const contentId = partHeader(part.headers, 'Content-ID');
  const contentType = partHeader(part.headers, 'Content-Type');
  if (typeof contentId !== 'string' || !Array.isArray(contentType)) return undefined;
  const [external, mediaType] = contentType as readonly [string, string];
  let size = 0;
  let baseType = 'application/octet-stream';
  try {
    size = Number(parseParameterized(external, true).params.get('size') ?? 0);
    baseType = parseParameterized(mediaType, true).value;
  } catch {
    // The mailbox validated the message; a part it let through with odd values is shown as a plain file.
  }
  let disposition: 'inline' | 'attachment' = 'attachment';
  let filename: string | undefined;
  const cd = partHeader(part.headers, 'Content-Disposition');
  if (typeof cd === 'string') {
    try {
      const parsed = parseParameterized(cd, false);
      disposition = parsed.value === 'inline' ? 'inline' : 'attachment';
      filename = parsed.params.get('filename');
    } catch {
      // An unparsable disposition is an attachment (RFC 2183 §2.8).
    }
  }
  const known = statuses.get(contentId);
  return {
    contentId,
    mediaType,
    baseType,
    size: known?.size ?? size,
    disposition,
    filename,
    status: known?.status ?? 'pending',
    failure: known?.status === 'failed' ? known.failure : undefined,
  };
}

/**
 * A failure as a reader wants it: the `error_description` the origin answered (`the sender withdrew this
 * message`) rather than the whole record of the attempt, which stays available in full beside it.
 */
export function failureSummary(failure: string | undefined): string {
  if (failure === undefined || failure === '') return 'the reason was not recorded';
  const described = /"error_description"\s*:\s*"((?:[^"\\]|\\.)*)"/.exec(failure);
  if (described) {
    try {
      return JSON.parse(`"${described[1]}"`) as string;
    } catch {
      return described[1]!;
    }
  }
  return failure;
}

const isText = (r: ResourceRef) => r.baseType === 'text/plain';
const isHtml = (r: ResourceRef) => r.baseType === 'text/html';
const isMedia = (r: ResourceRef) => /^(image|audio|video)\//.test(r.baseType);

export function rebuildMessage(message: Message): MessageView {
  const headerBlocks = message.envelope.filter(isHeadersBlock);
  // Blocks are newest first; the origin block is the oldest one with From (receive blocks have none).
  const origin = [...headerBlocks].reverse().find((b) => headerValue(b.headers, 'From') !== undefined);
  const h = origin?.headers ?? [];
  const forwards = headerBlocks
    .filter((b) => headerValue(b.headers, 'Forwarded-From') !== undefined)
    .map((b) => ({ from: headerValue(b.headers, 'Forwarded-From')!, to: headerValue(b.headers, 'Forwarded-To') ?? '' }))
    .reverse();

  const statuses = new Map(message.resources.map((r) => [r.contentId, r]));
  const content: ContentBlock[] = [];
  const media: ResourceRef[] = [];
  const attachments: ResourceRef[] = [];

  const walk = (parts: readonly Part[]) => {
    for (const part of parts) {
      if (part.parts) {
        const type = partHeader(part.headers, 'Content-Type');
        const subtype = typeof type === 'string' ? type.trim().toLowerCase() : '';
        if (subtype.startsWith('multipart/alternative')) {
          const leaves = part.parts.map((p) => (p.parts ? undefined : leafOf(p, statuses)));
          const html = leaves.find((l) => l !== undefined && isHtml(l));
          const plain = leaves.find((l) => l !== undefined && isText(l));
          if (html) content.push({ kind: 'html', part: html, plain });
          else if (plain) content.push({ kind: 'text', part: plain });
          else walk(part.parts);
          // Alternatives that are neither (a calendar, say) are still offered as files.
          for (const l of leaves) if (l && l !== html && l !== plain) attachments.push(l);
        } else {
          walk(part.parts);
        }
        continue;
      }
      const leaf = leafOf(part, statuses);
      if (!leaf) continue;
      if (leaf.disposition === 'inline' && isText(leaf)) content.push({ kind: 'text', part: leaf });
      else if (leaf.disposition === 'inline' && isHtml(leaf))
        content.push({ kind: 'html', part: leaf, plain: undefined });
      else if (leaf.disposition === 'inline' && isMedia(leaf)) media.push(leaf);
      else attachments.push(leaf);
    }
  };
  walk(message.body.parts);

  return {
    id: message.id,
    messageId: message.messageId,
    threadId: message.threadId,
    subject: message.subject,
    from: message.from,
    to: headerValue(h, 'To'),
    cc: headerValue(h, 'Cc'),
    bcc: headerValue(h, 'Bcc'),
    date: message.date,
    references: headerValue(h, 'References'),
    inReplyTo: headerValue(h, 'In-Reply-To'),
    forwards,
    content,
    media,
    attachments,
  };
}

/** `Alice <alice@example.com>` → `Alice`; an unparsable value is shown as written. */
export function displayName(mailbox: string): string {
  try {
    const [first] = parseAddressList(mailbox);
    return first ? (first.name ?? first.address) : mailbox;
  } catch {
    return mailbox;
  }
}

/** The addr-specs of an address list, lower-cased; an unparsable list gives none. */
export function addressesIn(list: string | undefined): string[] {
  if (!list) return [];
  try {
    return parseAddressList(list).map((m) => m.address.toLowerCase());
  } catch {
    return [];
  }
}

/** Decodes a text resource with the charset its media type declares (UTF-8 when none or unknown). */
export function decodeText(bytes: ArrayBuffer, mediaType: string): string {
  let charset = 'utf-8';
  try {
    charset = parseParameterized(mediaType, true).params.get('charset') ?? 'utf-8';
  } catch {
    // keep UTF-8
  }
  try {
    return new TextDecoder(charset).decode(bytes);
  } catch {
    return new TextDecoder('utf-8').decode(bytes);
  }
}

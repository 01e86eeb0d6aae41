/**
 * What `federizer mail send` posts: a draft Placeholder Message (PROTOCOL.md §2, docs/protocol.md §2.4) whose
 * text and attachments are External Resources referenced by Content-ID. Everything the user typed is checked
 * here, before anything is uploaded or signed in, so that a mistake costs nothing.
 */
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { basename, extname } from 'node:path';
import {
  ProtocolError,
  externalContentType,
  parseAddressList,
  type Header,
  type Message,
  type Part,
} from '@federizer/protocol';
import { UsageError } from '../io.js';
import type { UploadedResource } from './mailbox-client.js';

export interface Attachment {
  readonly path: string;
  readonly name: string;
  readonly size: number;
  readonly mediaType: string;
}

/** RFC 5322 §2.1.1: a header line is at most 998 characters. */
const MAX_HEADER = 998;

export const TEXT_MEDIA_TYPE = 'text/plain; charset=UTF-8';

/** Common types by extension; anything else is application/octet-stream, which every reader can save. */
const MEDIA_TYPES: Readonly<Record<string, string>> = {
  '.txt': 'text/plain; charset=UTF-8',
  '.md': 'text/markdown; charset=UTF-8',
  '.csv': 'text/csv; charset=UTF-8',
  '.html': 'text/html; charset=UTF-8',
  '.htm': 'text/html; charset=UTF-8',
  '.json': 'application/json',
  '.xml': 'application/xml',
  '.yaml': 'application/yaml',
  '.yml': 'application/yaml',
  '.pdf': 'application/pdf',
  '.zip': 'application/zip',
  '.gz': 'application/gzip',
  '.tar': 'application/x-tar',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.svg': 'image/svg+xml',
  '.mp3': 'audio/mpeg',
  '.ogg': 'audio/ogg',
  '.wav': 'audio/wav',
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
  '.ics': 'text/calendar; charset=UTF-8',
  '.docx': 'application/vnd.openxmlformats-officedocument.wordprocessingml.document',
  '.xlsx': 'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet',
  '.pptx': 'application/vnd.openxmlformats-officedocument.presentationml.presentation',
  '.odt': 'application/vnd.oasis.opendocument.text',
};

export function mediaTypeOf(name: string): string {
  return MEDIA_TYPES[extname(name).toLowerCase()] ?? 'application/octet-stream';
}

/**
 * `attachment; filename="..."` (RFC 2183) with the name as an RFC 2045 quoted-string; UTF-8 stays as it is
 * (RFC 6532), control characters, which no header may hold, become `_`.
 */
export function attachmentDisposition(name: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = name.replace(/[\u0000-\u001f\u007f]/g, '_').replace(/["\\]/g, '\\$&');
  return `attachment; filename="${clean}"`;
}

/** Each `--attach FILE` is a regular file; its size is taken once, here (an upload must send exactly that). */
export async function checkAttachments(paths: readonly string[], option = '--attach'): Promise<Attachment[]> {
  const out: Attachment[] = [];
  for (const path of paths) {
    let info;
    try {
      info = await stat(path);
      await access(path, constants.R_OK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new UsageError(`${option} ${path}: no such file`);
      if (code === 'EACCES') throw new UsageError(`${option} ${path}: permission denied`);
      throw new UsageError(`${option} ${path}: ${(e as Error).message}`);
    }
    if (!info.isFile()) throw new UsageError(`${option} ${path}: not a regular file`);
    out.push({ path, name: basename(path), size: info.size, mediaType: mediaTypeOf(path) });
  }
  return out;
}

/** The values of a repeated address option as one RFC 5322 address list, each checked; undefined if none. */
export function addressListOption(values: readonly string[] | undefined, option: string): string | undefined {
  if (values === undefined || values.length === 0) return undefined;
  const lists = values.map((v) => v.trim());
  for (const list of lists) {
    if (/[\r\n]/.test(list)) throw new UsageError(`${option}: an address list is one line`);
    let mailboxes;
    try {
      mailboxes = parseAddressList(list);
    } catch (e) {
      if (e instanceof ProtocolError) throw new UsageError(`${option} ${JSON.stringify(list)}: ${e.message}`);
      throw e;
    }
    if (mailboxes.length === 0) throw new UsageError(`${option} ${JSON.stringify(list)} names no address`);
  }
  const joined = lists.join(', ');
  if (joined.length > MAX_HEADER) throw new UsageError(`${option}: at most ${MAX_HEADER} characters in all`);
  return joined;
}

export function checkSubject(subject: string): string {
  if (/[\r\n]/.test(subject)) throw new UsageError('--subject is one line');
  if (subject.length > MAX_HEADER) throw new UsageError(`--subject is at most ${MAX_HEADER} characters`);
  return subject;
}

function leaf(disposition: string, resource: UploadedResource, mediaType: string): Part {
  return {
    headers: [
      { 'Content-Disposition': disposition },
      { 'Content-ID': resource.contentId },
      { 'Content-Type': externalContentType(resource.size, mediaType) },
    ],
  };
}

export interface DraftInput {
  readonly from: string;
  readonly to: string;
  readonly cc?: string;
  readonly bcc?: string;
  readonly subject: string;
  readonly messageId: string;
  readonly text?: UploadedResource;
  readonly attachments: readonly { readonly attachment: Attachment; readonly resource: UploadedResource }[];
}

/**
 * The draft as the webmail writes one (docs/protocol.md §2.4): the text inline first, then the attachments;
 * `multipart/mixed` on the headers block when there is more than one part.
 */
export function buildDraft(input: DraftInput): Message {
  const parts: Part[] = [];
  if (input.text !== undefined) parts.push(leaf('inline', input.text, TEXT_MEDIA_TYPE));
  for (const { attachment, resource } of input.attachments) {
    parts.push(leaf(attachmentDisposition(attachment.name), resource, attachment.mediaType));
  }
  const headers: Header[] = [
    { From: input.from },
    { To: input.to },
    ...(input.cc === undefined ? [] : [{ Cc: input.cc }]),
    ...(input.bcc === undefined ? [] : [{ Bcc: input.bcc }]),
    { Subject: input.subject },
    { 'Message-ID': input.messageId },
    ...(parts.length > 1 ? [{ 'Content-Type': 'multipart/mixed' }] : []),
  ];
  return { envelope: [{ headers }], body: { parts } };
}

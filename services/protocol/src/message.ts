/**
 * The Placeholder Message (PROTOCOL.md §2), media type `application/federizer+json`.
 * The types describe a message that `parseMessage` has accepted; nothing else should be trusted to fit them.
 */

export const MEDIA_TYPE = 'application/federizer+json';

/** The value of a leaf part's `Content-Type`: the external-body wrapper, then the resource's media type. */
export type ExternalContentType = readonly [string, string];

/** `{ "<Name>": "<value>" }`, exactly one key. Only a leaf part's Content-Type has an array value. */
export type Header = Readonly<Record<string, string | ExternalContentType>>;

export interface HeadersBlock {
  readonly headers: readonly Header[];
}

export interface AssertionBlock {
  readonly 'jwt-assertion': string;
}

export type Block = HeadersBlock | AssertionBlock;

export interface Part {
  readonly headers: readonly Header[];
  readonly parts?: readonly Part[];
}

export interface Body {
  readonly parts: readonly Part[];
}

export interface Message {
  /** Newest block first. A draft has exactly one headers block. */
  readonly envelope: readonly Block[];
  readonly body: Body;
}

export const ORIGIN_EHL = ['Message-ID', 'From', 'Recipients-Digest', 'Body-Digest'] as const;
export const FORWARD_EHL = ['Message-ID', 'Forwarded-From', 'Recipients-Digest', 'JWT-Assertion-Digest'] as const;

/** Headers a block may hold at most once (PROTOCOL.md §3). */
export const SINGLETON_HEADERS = ['From', 'To', 'Cc', 'Bcc', 'Forwarded-From', 'Forwarded-To', 'Message-ID'] as const;

export function isHeadersBlock(block: Block): block is HeadersBlock {
  return 'headers' in block;
}

export function isAssertionBlock(block: Block): block is AssertionBlock {
  return 'jwt-assertion' in block;
}

/** The name of a header object (its only key). */
export function headerName(header: Header): string {
  for (const name in header) return name;
  throw new TypeError('a header object has exactly one key');
}

/** The first header of that name in a list (the newest, since blocks grow at the top), or undefined. */
export function findHeader(headers: readonly Header[], name: string): Header | undefined {
  return headers.find((h) => Object.hasOwn(h, name));
}

/** The string value of the first header of that name, or undefined. Array values are not strings. */
export function headerValue(headers: readonly Header[], name: string): string | undefined {
  const value = findHeader(headers, name)?.[name];
  return typeof value === 'string' ? value : undefined;
}

export function hasHeader(headers: readonly Header[], name: string): boolean {
  return findHeader(headers, name) !== undefined;
}

/**
 * The webmail-origin URLs of External Resources: `/r/<digest>?type=&name=&download=1`. The service
 * worker answers them from the mailbox with the DPoP headers a media element cannot send (see
 * resource-proxy.ts); the page only builds them.
 */

export const RESOURCE_PREFIX = '/r/';
/** Cache Storage of the whole resources the worker keeps (emptied at sign-out). */
export const RESOURCE_CACHE = 'federizer-resources-v1';

export interface ResourceRequest {
  readonly digest: string;
  /** The media type to answer with (the mailbox sends it too; this covers a cached copy). */
  readonly type: string | undefined;
  /** The filename of a download. */
  readonly name: string | undefined;
  readonly download: boolean;
}

const DIGEST = /^[A-Za-z0-9_-]{43}$/;

export function resourcePath(
  digest: string,
  options: { type?: string; name?: string; download?: boolean } = {},
): string {
  const q = new URLSearchParams();
  if (options.type) q.set('type', options.type);
  if (options.name) q.set('name', options.name);
  if (options.download) q.set('download', '1');
  const query = q.toString();
  return `${RESOURCE_PREFIX}${digest}${query ? `?${query}` : ''}`;
}

/** The resource a same-origin URL names, or undefined when it is not one. */
export function parseResourceUrl(url: URL): ResourceRequest | undefined {
  if (!url.pathname.startsWith(RESOURCE_PREFIX)) return undefined;
  const digest = url.pathname.slice(RESOURCE_PREFIX.length);
  if (!DIGEST.test(digest)) return undefined;
  return {
    digest,
    type: url.searchParams.get('type') ?? undefined,
    name: url.searchParams.get('name') ?? undefined,
    download: url.searchParams.get('download') === '1',
  };
}

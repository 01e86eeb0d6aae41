/**
 * URLs the browser can load for External Resources (img, audio and video `src`, download links).
 * Through the service worker they stream: it adds the DPoP headers to each request, Range requests
 * included, so video seeks without downloading the whole file. Without a controlling service worker
 * (first visit before it activates, private modes that disable it), the bytes are read through the
 * API client into a blob URL: it works, but only once the whole file has arrived.
 */
import { digestOf, type MailboxClient } from '../api/client.js';
import { resourcePath } from '../sw/resource-route.js';

export interface ResourceTarget {
  readonly contentId: string;
  readonly mediaType: string;
  readonly filename?: string | undefined;
}

export class ResourceUrls {
  readonly #blobs = new Map<string, Promise<string>>();

  constructor(
    private readonly api: MailboxClient,
    /** Whether a service worker controls the page now. */
    private readonly viaWorker: () => boolean,
  ) {}

  get streams(): boolean {
    return this.viaWorker();
  }

  url(target: ResourceTarget, options: { download?: boolean } = {}): Promise<string> {
    if (this.viaWorker()) {
      return Promise.resolve(
        resourcePath(digestOf(target.contentId), {
          type: target.mediaType,
          name: target.filename,
          download: options.download,
        }),
      );
    }
    let url = this.#blobs.get(target.contentId);
    if (!url) {
      url = this.api
        .resource(target.contentId)
        .then((res) => res.blob())
        .then((blob) => URL.createObjectURL(blob));
      url.catch(() => this.#blobs.delete(target.contentId));
      this.#blobs.set(target.contentId, url);
    }
    return url;
  }

  /** Releases the blob URLs (at sign-out). */
  async clear(): Promise<void> {
    const urls = [...this.#blobs.values()];
    this.#blobs.clear();
    for (const url of urls) URL.revokeObjectURL(await url.catch(() => ''));
  }
}

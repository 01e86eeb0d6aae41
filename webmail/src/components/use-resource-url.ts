import { useEffect, useState } from 'react';
import { useServices } from '../app/use-store.js';
import type { ResourceTarget } from '../stores/resource-urls.js';

/** A loadable URL for a resource (streamed through the service worker, or a blob URL), once known. */
export function useResourceUrl(target: ResourceTarget | undefined, download = false): string | undefined {
  const { urls } = useServices();
  const [url, setUrl] = useState<string>();
  const key = target ? `${target.contentId} ${target.mediaType} ${target.filename ?? ''} ${download}` : '';
  useEffect(() => {
    if (!target) return;
    let live = true;
    urls.url(target, { download }).then(
      (u) => live && setUrl(u),
      () => live && setUrl(undefined),
    );
    return () => {
      live = false;
    };
    // `key` stands for the target's fields: a new object with the same fields is the same resource.
  }, [urls, key]);
  return url;
}

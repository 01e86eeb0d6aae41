/**
 * The whole app as a page in jsdom: an AppStore whose network is the real services (config.json from the
 * webmail's origin), rendered. The RouterStore is the page's own (window.location's hash). Test support only.
 */
import { render } from '@testing-library/react';
import type { IDBFactory } from 'fake-indexeddb';
import { AppStore } from '../app/app-store.js';
import { App } from '../app/App.js';
import type { WebmailConfig } from '../app/config.js';
import { localFetch } from './federation.js';

/** The page's network: config.json from the webmail's origin, everything else to the real services. */
export function pageFetch(config: WebmailConfig): typeof fetch {
  return (async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = String(input instanceof Request ? input.url : input);
    if (url === '/config.json')
      return new Response(JSON.stringify(config), { headers: { 'content-type': 'application/json' } });
    return localFetch(url, init);
  }) as typeof fetch;
}

/** Opens the page: `indexedDB` is the browser's (the same one is the same signed-in browser, as after a reload). */
export function startApp(
  config: WebmailConfig,
  indexedDB: IDBFactory,
  options: { sessionChannel?: string; render?: boolean } = {},
): { store: AppStore; assigned: string[] } {
  const assigned: string[] = [];
  const store = new AppStore({
    sessionChannel: options.sessionChannel ?? false,
    location: {
      href: 'http://webmail.test/',
      pathname: '/',
      assign: (u: string | URL) => assigned.push(String(u)),
      replace: () => undefined,
    },
    history: { replaceState: () => undefined },
    fetch: pageFetch(config),
    indexedDB,
  });
  void store.start();
  if (options.render !== false) render(<App store={store} />);
  return { store, assigned };
}

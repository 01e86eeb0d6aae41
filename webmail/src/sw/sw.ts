/**
 * The service worker: the app shell (index.html and the hashed assets) from Cache Storage so the app
 * opens offline, and `/r/<digest>` answered from the mailbox with DPoP (resource-proxy.ts), so media
 * stream with Range. It shares the page's IndexedDB session and its token refresh, whose Web Lock
 * keeps the two from refreshing the same rotating token at once.
 */
import { apiBase, loadConfig } from '../app/config.js';
import { AuthSession } from '../auth/session.js';
import { LocalDb } from '../stores/local-db.js';
import type { NotificationData } from '../stores/notifier.js';
import { proxyResource } from './resource-proxy.js';
import { RESOURCE_CACHE, parseResourceUrl, type ResourceRequest } from './resource-route.js';

/** Filled in at build time: the files of the app shell, and a name that changes with them. */
declare const __SHELL_FILES__: readonly string[];
declare const __BUILD_ID__: string;

// The WebWorker library's types clash with the DOM's; these are the few members used here.
interface ExtendableEvent extends Event {
  waitUntil(work: Promise<unknown>): void;
}
interface FetchEvent extends ExtendableEvent {
  readonly request: Request;
  respondWith(response: Promise<Response> | Response): void;
}
interface NotificationEvent extends ExtendableEvent {
  readonly notification: Notification;
}
interface WindowClientLite {
  readonly url: string;
  focus(): Promise<unknown>;
  navigate(url: string): Promise<unknown>;
}
interface ServiceWorkerScope {
  readonly location: Location;
  skipWaiting(): Promise<void>;
  readonly clients: {
    claim(): Promise<void>;
    matchAll(options: { type: 'window'; includeUncontrolled: boolean }): Promise<readonly WindowClientLite[]>;
    openWindow(url: string): Promise<unknown>;
  };
  addEventListener(type: 'install' | 'activate', listener: (event: ExtendableEvent) => void): void;
  addEventListener(type: 'fetch', listener: (event: FetchEvent) => void): void;
  addEventListener(type: 'notificationclick', listener: (event: NotificationEvent) => void): void;
}

const scope = globalThis as unknown as ServiceWorkerScope;
const SHELL_CACHE = `federizer-shell-${__BUILD_ID__}`;
const CONFIG_CACHE = 'federizer-config-v1';

scope.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(SHELL_CACHE);
      await cache.addAll(__SHELL_FILES__.map((f) => new Request(f, { cache: 'reload' })));
      await scope.skipWaiting();
    })(),
  );
});

scope.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys())
        if (name.startsWith('federizer-shell-') && name !== SHELL_CACHE) await caches.delete(name);
      // Control the open pages now, so the media of the first visit stream already.
      await scope.clients.claim();
    })(),
  );
});

let session: Promise<{ auth: AuthSession; apiBase: string }> | undefined;

/** The page's session, read from the shared IndexedDB; made once per worker lifetime. */
function sessionOf(): Promise<{ auth: AuthSession; apiBase: string }> {
  session ??= (async () => {
    const config = await loadConfig((input, init) => networkFirst(new Request(input, init), CONFIG_CACHE));
    const db = await LocalDb.open();
    return { auth: new AuthSession({ config, db }), apiBase: apiBase(config) };
  })();
  session.catch(() => (session = undefined));
  return session;
}

async function resource(event: FetchEvent, target: ResourceRequest): Promise<Response> {
  let s: { auth: AuthSession; apiBase: string };
  try {
    s = await sessionOf();
  } catch (e) {
    return new Response(`no session: ${(e as Error).message}`, { status: 503 });
  }
  return proxyResource(event.request, target, {
    apiBase: s.apiBase,
    tokens: s.auth,
    signedIn: () => s.auth.isSignedIn(),
    cache: await caches.open(RESOURCE_CACHE),
    waitUntil: (work) => event.waitUntil(work),
  });
}

async function networkFirst(request: Request, cacheName: string, fallback?: string): Promise<Response> {
  const cache = await caches.open(cacheName);
  try {
    const res = await fetch(request);
    if (res.ok && request.method === 'GET') await cache.put(fallback ?? request, res.clone());
    return res;
  } catch (e) {
    const cached = await cache.match(fallback ?? request);
    if (cached) return cached;
    throw e;
  }
}

async function cacheFirst(request: Request): Promise<Response> {
  const cached = await caches.match(request);
  if (cached) return cached;
  const res = await fetch(request);
  if (res.ok) await (await caches.open(SHELL_CACHE)).put(request, res.clone());
  return res;
}

scope.addEventListener('fetch', (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (url.origin !== scope.location.origin || request.method !== 'GET') return;
  const target = parseResourceUrl(url);
  if (target) return event.respondWith(resource(event, target));
  if (url.pathname === '/callback') return; // the sign-in's answer is for the network and the page only
  if (request.mode === 'navigate') return event.respondWith(networkFirst(request, SHELL_CACHE, '/'));
  if (url.pathname.startsWith('/assets/')) return event.respondWith(cacheFirst(request));
  if (url.pathname === '/config.json') return event.respondWith(networkFirst(request, CONFIG_CACHE));
  if (__SHELL_FILES__.includes(url.pathname)) return event.respondWith(networkFirst(request, SHELL_CACHE));
});

// A new-mail notification (notifier.ts) opens its conversation: in an open tab of the app when there is
// one, else in a new one. Only this origin's paths: the data is the app's, but a URL is checked anyway.
scope.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const data = event.notification.data as Partial<NotificationData> | null;
  const target = new URL(typeof data?.url === 'string' ? data.url : '/', scope.location.origin);
  if (target.origin !== scope.location.origin) return;
  event.waitUntil(
    (async () => {
      const [client] = await scope.clients.matchAll({ type: 'window', includeUncontrolled: true });
      if (!client) return scope.clients.openWindow(target.href);
      await client.focus();
      if (client.url !== target.href) await client.navigate(target.href);
    })(),
  );
});

/**
 * The app's places, in the URL's fragment (`#/inbox`, `#/inbox/thread/<id>`, `#/compose?reply=<id>`,
 * `#/settings`): the server only has to serve index.html at `/` and `/callback`, and the service worker
 * serves it offline.
 */
import { MAILBOXES, type MailboxName } from '../api/types.js';
import { Store } from '../stores/store.js';

export type ComposeIntent =
  { readonly kind: 'new' } | { readonly kind: 'reply' | 'reply-all' | 'draft'; readonly id: string };

export type Route =
  | { readonly name: 'mailbox'; readonly mailbox: MailboxName; readonly threadId: string | undefined }
  | { readonly name: 'compose'; readonly intent: ComposeIntent }
  | { readonly name: 'settings' };

export const INBOX: Route = { name: 'mailbox', mailbox: 'inbox', threadId: undefined };

export function parseRoute(hash: string): Route {
  const [path = '', query = ''] = hash.replace(/^#/, '').split('?', 2);
  const segments = path.split('/').filter(Boolean);
  const params = new URLSearchParams(query);
  const [first, second, third] = segments;
  if (first === 'settings') return { name: 'settings' };
  if (first === 'compose') {
    for (const kind of ['reply', 'reply-all', 'draft'] as const) {
      const id = params.get(kind);
      if (id) return { name: 'compose', intent: { kind, id } };
    }
    return { name: 'compose', intent: { kind: 'new' } };
  }
  if (first && (MAILBOXES as readonly string[]).includes(first)) {
    const threadId = second === 'thread' && third ? decodeURIComponent(third) : undefined;
    return { name: 'mailbox', mailbox: first as MailboxName, threadId };
  }
  return INBOX;
}

export function routeHref(route: Route): string {
  switch (route.name) {
    case 'settings':
      return '#/settings';
    case 'compose':
      return route.intent.kind === 'new'
        ? '#/compose'
        : `#/compose?${route.intent.kind}=${encodeURIComponent(route.intent.id)}`;
    case 'mailbox':
      return route.threadId === undefined
        ? `#/${route.mailbox}`
        : `#/${route.mailbox}/thread/${encodeURIComponent(route.threadId)}`;
  }
}

/** The current route, following `hashchange`. */
export class RouterStore extends Store<Route> {
  #location: Pick<Location, 'hash'>;

  constructor(target: Pick<Window, 'addEventListener'> & { location: Pick<Location, 'hash'> } = window) {
    super(parseRoute(target.location.hash));
    this.#location = target.location;
    target.addEventListener('hashchange', () => {
      const next = parseRoute(this.#location.hash);
      if (routeHref(next) !== routeHref(this.state)) this.setState(() => next);
    });
  }

  go(route: Route): void {
    const href = routeHref(route);
    if (this.#location.hash !== href) this.#location.hash = href;
    // Set at once too: the hashchange event comes later, and the view should not wait for it.
    this.setState(() => parseRoute(href));
  }
}

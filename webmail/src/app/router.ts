/**
 * The app's places, in the URL's fragment (`#/inbox`, `#/inbox/thread/<id>`, `#/compose?reply=<id>`,
 * `#/compose?draft=<id>&mid=<Message-ID>`, `#/settings`): the server only has to serve index.html at `/` and
 * `/callback`, and the service worker serves it offline.
 */
import { MAILBOXES, type MailboxName } from '../api/types.js';
import { Store } from '../stores/store.js';

export type ComposeIntent =
  | { readonly kind: 'new' }
  | { readonly kind: 'reply' | 'reply-all' | 'forward'; readonly id: string }
  /**
   * `messageId`, when known: the draft's Message-ID, which stays while each save gives the draft a new id,
   * so that the draft is found again when `id` was replaced meanwhile (a reload during a save).
   */
  | { readonly kind: 'draft'; readonly id: string; readonly messageId?: string };

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
    for (const kind of ['reply', 'reply-all', 'forward', 'draft'] as const) {
      const id = params.get(kind);
      if (!id) continue;
      const messageId = kind === 'draft' ? params.get('mid') : null;
      return { name: 'compose', intent: messageId ? { kind, id, messageId } : { kind, id } };
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
    case 'compose': {
      const intent = route.intent;
      if (intent.kind === 'new') return '#/compose';
      const href = `#/compose?${intent.kind}=${encodeURIComponent(intent.id)}`;
      return intent.kind === 'draft' && intent.messageId ? `${href}&mid=${encodeURIComponent(intent.messageId)}` : href;
    }
    case 'mailbox':
      return route.threadId === undefined
        ? `#/${route.mailbox}`
        : `#/${route.mailbox}/thread/${encodeURIComponent(route.threadId)}`;
  }
}

/** The current route, following `hashchange`. */
export class RouterStore extends Store<Route> {
  #location: Pick<Location, 'hash'>;
  #history: Pick<History, 'replaceState' | 'state'>;
  #visit = 0;

  constructor(
    target: Pick<Window, 'addEventListener'> & {
      location: Pick<Location, 'hash'>;
      history: Pick<History, 'replaceState' | 'state'>;
    } = window,
  ) {
    super(parseRoute(target.location.hash));
    this.#location = target.location;
    this.#history = target.history;
    target.addEventListener('hashchange', () => {
      const next = parseRoute(this.#location.hash);
      if (routeHref(next) !== routeHref(this.state)) this.#enter(next);
    });
  }

  /**
   * Counts the visits: going to a route (a link, `go`, the back button) is a new one; `replace` is not. A
   * scene keyed by it starts afresh on each visit and keeps its state when its own URL is replaced.
   */
  get visit(): number {
    return this.#visit;
  }

  #enter(route: Route): void {
    this.#visit++;
    this.setState(() => route);
  }

  go(route: Route): void {
    const href = routeHref(route);
    if (this.#location.hash !== href) this.#location.hash = href;
    // Set at once too: the hashchange event comes later, and the view should not wait for it.
    const next = parseRoute(href);
    if (routeHref(next) !== routeHref(this.state)) this.#enter(next);
  }

  /**
   * Says where the current scene now is, in place: no new history entry, no new visit. E.g. a compose
   * whose draft was saved (a new id each time), so that a reload or the back button reopens that draft.
   * Nothing is done once the URL is no longer the router's (a link was followed, its hashchange not yet
   * handled): the place it leads to wins.
   */
  replace(route: Route): void {
    if (routeHref(parseRoute(this.#location.hash)) !== routeHref(this.state)) return;
    const href = routeHref(route);
    if (href === routeHref(this.state)) return;
    this.#history.replaceState(this.#history.state, '', href);
    this.setState(() => parseRoute(href));
  }
}

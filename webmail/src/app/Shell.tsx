/**
 * The signed-in frame: the header, the mailboxes (a drawer below 760 px), the scene of the route, the
 * sync status, and a live region that reads new mail to screen readers.
 */
import { lazy, Suspense, useEffect, useRef, useState } from 'react';
import styled from 'styled-components';
import { Button, IconButton } from '../components/Button.js';
import { Icon } from '../components/Icon.js';
import { useShortcuts } from '../components/keyboard.js';
import { MailboxNav } from '../components/MailboxNav.js';
import { MailScene } from '../scenes/MailScene.js';
import { routeHref } from './router.js';
import { useServices, useStore } from './use-store.js';

// Writing and settings are not needed to show the inbox: they load when first opened.
const ComposeScene = lazy(() => import('../scenes/ComposeScene.js').then((m) => ({ default: m.ComposeScene })));
const SettingsScene = lazy(() => import('../scenes/SettingsScene.js').then((m) => ({ default: m.SettingsScene })));

const Frame = styled.div`
  display: grid;
  grid-template-columns: 220px minmax(0, 1fr);
  grid-template-rows: auto auto minmax(0, 1fr);
  height: 100%;
  @media (max-width: ${(p) => p.theme.narrow}) {
    grid-template-columns: minmax(0, 1fr);
  }
`;

const Header = styled.header`
  grid-column: 1 / -1;
  display: flex;
  align-items: center;
  gap: 0.5rem;
  padding: 0.4rem 0.75rem;
  background: ${(p) => p.theme.color.surface};
  border-bottom: 1px solid ${(p) => p.theme.color.border};
  h1 {
    flex: 1;
    margin: 0;
    font-size: 1.05rem;
    white-space: nowrap;
    overflow: hidden;
    text-overflow: ellipsis;
  }
`;

const MenuButton = styled(IconButton)`
  display: none;
  @media (max-width: ${(p) => p.theme.narrow}) {
    display: inline-flex;
  }
`;

const Side = styled.aside<{ $open: boolean }>`
  grid-row: 3;
  background: ${(p) => p.theme.color.surface};
  border-right: 1px solid ${(p) => p.theme.color.border};
  overflow-y: auto;
  @media (max-width: ${(p) => p.theme.narrow}) {
    position: fixed;
    z-index: 10;
    top: 0;
    bottom: 0;
    left: 0;
    width: min(80vw, 260px);
    transform: translateX(${(p) => (p.$open ? '0' : '-100%')});
    visibility: ${(p) => (p.$open ? 'visible' : 'hidden')};
    transition:
      transform 0.2s ease,
      visibility 0.2s;
    box-shadow: ${(p) => (p.$open ? '0 0 24px rgb(0 0 0 / 0.3)' : 'none')};
  }
`;

/** Behind the open drawer on a narrow screen: a tap outside the drawer closes it. */
const Scrim = styled.div`
  display: none;
  @media (max-width: ${(p) => p.theme.narrow}) {
    display: block;
    position: fixed;
    inset: 0;
    z-index: 9;
    background: rgb(0 0 0 / 0.3);
  }
`;

const Main = styled.main`
  grid-row: 3;
  min-height: 0;
  overflow: hidden;
`;

const Banner = styled.div<{ $tone: 'muted' | 'danger' }>`
  grid-column: 1 / -1;
  padding: 0.35rem 0.75rem;
  font-size: 0.85rem;
  color: ${(p) => (p.$tone === 'danger' ? p.theme.color.danger : p.theme.color.textMuted)};
  background: ${(p) => p.theme.color.surfaceRaised};
  border-bottom: 1px solid ${(p) => p.theme.color.border};
`;

/** The row under the header: the sync's state and an action the mailbox refused, one above the other. */
const Banners = styled.div`
  grid-column: 1 / -1;
  grid-row: 2;
`;

const Dismiss = styled.button`
  margin-left: 0.75rem;
  font: inherit;
  color: inherit;
  text-decoration: underline;
  background: none;
  border: 0;
  padding: 0;
  cursor: pointer;
`;

const Hidden = styled.div.attrs({ className: 'visually-hidden' })``;

/** A button's words, kept for screen readers but not shown where the header has no room for them. */
const Label = styled.span`
  @media (max-width: ${(p) => p.theme.narrow}) {
    position: absolute;
    width: 1px;
    height: 1px;
    overflow: hidden;
    clip: rect(0 0 0 0);
    white-space: nowrap;
  }
`;

function SyncBanner() {
  const { sync } = useServices();
  const state = useStore(sync);
  if (state.status === 'offline')
    return (
      <Banner $tone="muted" role="status">
        Offline: showing the mail already synced. Reconnecting…
      </Banner>
    );
  if (state.status === 'error')
    return (
      <Banner $tone="danger" role="status">
        Sync paused: {state.error}
      </Banner>
    );
  if (state.status === 'syncing')
    return (
      <Banner $tone="muted" role="status">
        Synchronizing…
      </Banner>
    );
  return null;
}

/** An archive, trash or mark-unread the mailbox refused: the change was undone, and this says why. */
function ActionProblem() {
  const { actions } = useServices();
  const { problem } = useStore(actions);
  if (problem === undefined) return null;
  return (
    <Banner $tone="danger" role="alert">
      {problem}
      <Dismiss type="button" onClick={() => actions.dismissProblem()}>
        Dismiss
      </Dismiss>
    </Banner>
  );
}

export function Shell() {
  const services = useServices();
  const { router, mail, notifier, sync, account } = services;
  const route = useStore(router);
  useStore(mail);
  const { announcement } = useStore(notifier);
  const [menu, setMenu] = useState(false);
  const menuButton = useRef<HTMLButtonElement>(null);
  const [signingOut, setSigningOut] = useState(false);

  // The drawer covers its own button: Escape closes it too, and gives the focus back to that button.
  useEffect(() => {
    if (!menu) return;
    const onKeyDown = (e: KeyboardEvent) => {
      if (e.key !== 'Escape') return;
      setMenu(false);
      menuButton.current?.focus();
    };
    document.addEventListener('keydown', onKeyDown);
    return () => document.removeEventListener('keydown', onKeyDown);
  }, [menu]);

  useEffect(() => {
    const wake = () => sync.wake();
    window.addEventListener('online', wake);
    document.addEventListener('visibilitychange', wake);
    return () => {
      window.removeEventListener('online', wake);
      document.removeEventListener('visibilitychange', wake);
    };
  }, [sync]);

  useShortcuts({
    c: () => router.go({ name: 'compose', intent: { kind: 'new' } }),
  });

  const current = route.name === 'mailbox' ? route.mailbox : undefined;
  return (
    <Frame>
      <Header>
        <MenuButton
          ref={menuButton}
          type="button"
          aria-label="Mailboxes"
          aria-expanded={menu}
          aria-controls="mailboxes"
          onClick={() => setMenu(!menu)}
        >
          <Icon name="menu" />
        </MenuButton>
        <h1 title={account.address}>{account.address}</h1>
        <Button as="a" href={routeHref({ name: 'compose', intent: { kind: 'new' } })} $variant="primary">
          <Icon name="compose" size={18} /> <Label>Compose</Label>
        </Button>
        <IconButton as="a" href={routeHref({ name: 'settings' })} aria-label="Settings">
          <Icon name="settings" />
        </IconButton>
        <IconButton
          type="button"
          aria-label="Sign out"
          disabled={signingOut}
          onClick={() => {
            setSigningOut(true);
            void services.signOut();
          }}
        >
          <Icon name="signOut" />
        </IconButton>
      </Header>
      <Banners>
        <SyncBanner />
        <ActionProblem />
      </Banners>
      {menu && <Scrim data-testid="drawer-scrim" aria-hidden="true" onClick={() => setMenu(false)} />}
      <Side $open={menu} id="mailboxes">
        <MailboxNav current={current} unread={mail.unreadCounts()} onNavigate={() => setMenu(false)} />
      </Side>
      <Main>
        <Suspense fallback={<p style={{ padding: '1rem' }}>Loading…</p>}>
          {route.name === 'mailbox' && <MailScene mailbox={route.mailbox} threadId={route.threadId} />}
          {/* A new compose on each visit; the same one while it follows its draft's new ids (router.replace). */}
          {route.name === 'compose' && <ComposeScene key={router.visit} intent={route.intent} />}
          {route.name === 'settings' && <SettingsScene />}
        </Suspense>
      </Main>
      <Hidden aria-live="polite" role="status" data-testid="announcement">
        {announcement}
      </Hidden>
    </Frame>
  );
}

/**
 * A mailbox: its conversations beside the one being read. Below 760 px one pane shows at a time.
 * Keys (outside text fields): j/k next/previous, o or Enter open, u or Escape back to the list,
 * r reply, a reply to all, f forward, e archive, # trash, c compose.
 */
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';
import styled, { useTheme } from 'styled-components';
import type { MailboxName } from '../api/types.js';
import { useServices, useStore } from '../app/use-store.js';
import { ConversationList } from '../components/ConversationList.js';
import type { Conversation } from '../stores/mail-store.js';
import { useShortcuts } from '../components/keyboard.js';
import { MAILBOX_LABEL } from '../components/MailboxNav.js';
import { ConversationScene } from './ConversationScene.js';

const Panes = styled.div<{ $reading: boolean }>`
  display: grid;
  grid-template-columns: minmax(280px, 380px) minmax(0, 1fr);
  height: 100%;
  @media (max-width: ${(p) => p.theme.narrow}) {
    grid-template-columns: minmax(0, 1fr);
    & > section:first-child {
      display: ${(p) => (p.$reading ? 'none' : 'flex')};
    }
    & > section:last-child {
      display: ${(p) => (p.$reading ? 'block' : 'none')};
    }
  }
`;

const ListPane = styled.section`
  display: flex;
  flex-direction: column;
  min-height: 0;
  border-right: 1px solid ${(p) => p.theme.color.border};
  background: ${(p) => p.theme.color.surface};
  h2 {
    margin: 0;
    padding: 0.75rem 1rem;
    font-size: 1rem;
    border-bottom: 1px solid ${(p) => p.theme.color.border};
  }
  & > div:last-child {
    flex: 1;
    min-height: 0;
  }
`;

const ReadPane = styled.section`
  min-height: 0;
  overflow-y: auto;
`;

const Placeholder = styled.p`
  padding: 2rem;
  text-align: center;
  color: ${(p) => p.theme.color.textMuted};
`;

export function MailScene({ mailbox, threadId }: { mailbox: MailboxName; threadId: string | undefined }) {
  const { mail, router, actions } = useServices();
  const theme = useTheme();
  const { loaded } = useStore(mail);
  const conversations = mail.conversations(mailbox);
  const openIndex = useMemo(
    () => (threadId === undefined ? -1 : conversations.findIndex((c) => c.threadId === threadId)),
    [conversations, threadId],
  );
  const [active, setActive] = useState(0);
  useEffect(() => {
    if (openIndex >= 0) setActive(openIndex);
  }, [openIndex]);

  const listPane = useRef<HTMLElement>(null);
  const reading = useRef(threadId !== undefined);
  // Back from a conversation (its button, Escape, filing it, the browser's back): what had the focus went
  // with it, leaving it on the page's body. The list takes it, its active row being the conversation left
  // (aria-activedescendant), as a keyboard user expects; the mailbox's heading when no row is left. Focus
  // elsewhere (a mailbox link followed while reading) stays where it is.
  useLayoutEffect(() => {
    const was = reading.current;
    reading.current = threadId !== undefined;
    if (!was || threadId !== undefined) return;
    if (document.activeElement && document.activeElement !== document.body) return;
    const pane = listPane.current;
    (pane?.querySelector<HTMLElement>('[role="listbox"]') ?? pane?.querySelector<HTMLElement>('h2'))?.focus();
  }, [threadId]);

  /** A draft is opened to be written on (its newest version in the thread); anything else to be read. */
  const openConversation = (c: Conversation) =>
    router.go(
      mailbox === 'drafts'
        ? { name: 'compose', intent: { kind: 'draft', id: c.latest.id } }
        : { name: 'mailbox', mailbox, threadId: c.threadId },
    );
  const open = (index: number) => {
    const c = conversations[index];
    if (c) openConversation(c);
  };
  const back = () => router.go({ name: 'mailbox', mailbox, threadId: undefined });
  const step = (delta: number) => {
    const next = Math.max(0, Math.min(conversations.length - 1, active + delta));
    setActive(next);
    if (threadId !== undefined) open(next);
  };
  const file = (target: MailboxName) => {
    const c = openIndex >= 0 ? conversations[openIndex] : conversations[active];
    if (!c) return;
    void actions.file(
      c.messages.map((m) => m.id),
      target,
    );
    if (threadId !== undefined) back();
  };

  useShortcuts({
    j: () => step(1),
    k: () => step(-1),
    o: () => open(active),
    Enter: () => open(active),
    u: back,
    Escape: back,
    e: () => mailbox !== 'archive' && file('archive'),
    '#': () => mailbox !== 'trash' && file('trash'),
  });

  return (
    <Panes $reading={threadId !== undefined}>
      <ListPane ref={listPane} aria-labelledby="mailbox-title">
        <h2 id="mailbox-title" tabIndex={-1}>
          {MAILBOX_LABEL[mailbox]}
        </h2>
        <div>
          {loaded ? (
            <ConversationList
              conversations={conversations}
              label={`Conversations in ${MAILBOX_LABEL[mailbox]}`}
              activeIndex={Math.min(active, conversations.length - 1)}
              selectedThreadId={threadId}
              rowHeight={theme.rowHeight}
              onActiveChange={setActive}
              onOpen={openConversation}
            />
          ) : (
            <Placeholder role="status">Synchronizing your mail…</Placeholder>
          )}
        </div>
      </ListPane>
      <ReadPane aria-label="Conversation">
        {threadId === undefined ? (
          <Placeholder>Select a conversation to read it.</Placeholder>
        ) : (
          <ConversationScene mailbox={mailbox} threadId={threadId} onBack={back} onFile={file} />
        )}
      </ReadPane>
    </Panes>
  );
}

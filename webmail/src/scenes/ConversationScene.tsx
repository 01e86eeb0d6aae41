/** The open conversation: its messages oldest first, with reply, reply to all, forward and filing. */
import { useEffect, useRef, useState } from 'react';
import styled from 'styled-components';
import type { MessageView } from '../api/message-view.js';
import type { MailboxName } from '../api/types.js';
import { useServices, useStore } from '../app/use-store.js';
import { IconButton } from '../components/Button.js';
import { ForwardDialog } from '../components/ForwardDialog.js';
import { Icon } from '../components/Icon.js';
import { useShortcuts } from '../components/keyboard.js';
import { MessageCard } from '../components/MessageCard.js';

const Wrap = styled.div`
  padding: 0.75rem 1rem 2rem;
  max-width: 900px;
`;

const Bar = styled.div`
  display: flex;
  align-items: center;
  gap: 0.25rem;
  margin-bottom: 0.5rem;
  h2 {
    flex: 1;
    margin: 0 0.5rem 0 0;
    font-size: 1.2rem;
    overflow-wrap: anywhere;
  }
`;

const RECEIVED: ReadonlySet<MailboxName> = new Set(['inbox', 'archive', 'trash']);

export function ConversationScene({
  mailbox,
  threadId,
  onBack,
  onFile,
}: {
  mailbox: MailboxName;
  threadId: string;
  onBack: () => void;
  onFile: (target: MailboxName) => void;
}) {
  const { reader, router, actions, urls } = useServices();
  const state = useStore(reader);
  const [forwarding, setForwarding] = useState<MessageView>();
  const heading = useRef<HTMLHeadingElement>(null);

  useEffect(() => {
    reader.open(threadId, mailbox);
  }, [reader, threadId, mailbox]);
  useEffect(() => () => reader.close(), [reader]);

  const entries = state.threadId === threadId ? state.entries : [];
  const shown = entries.length > 0;
  /** The conversation whose heading took the focus: once each, not again at each change of its entries. */
  const focused = useRef<string | undefined>(undefined);
  // Screen-reader and keyboard users land on the conversation they opened, so that Tab goes on into it. Its
  // heading is there once its entries are (the first render only says "Loading…"), not when threadId changes.
  useEffect(() => {
    if (!shown || focused.current === threadId) return;
    focused.current = threadId;
    heading.current?.focus();
  }, [shown, threadId]);
  const latest = entries[entries.length - 1];
  const reply = (view: MessageView, all: boolean) =>
    router.go({ name: 'compose', intent: { kind: all ? 'reply-all' : 'reply', id: view.id } });
  const canForward = (id: string) => {
    const m = entries.find((e) => e.summary.id === id);
    return m !== undefined && RECEIVED.has(m.summary.mailbox);
  };

  useShortcuts({
    r: () => latest?.view && reply(latest.view, false),
    a: () => latest?.view && reply(latest.view, true),
    f: () => {
      const target = [...entries].reverse().find((e) => e.view && RECEIVED.has(e.summary.mailbox));
      if (target?.view) setForwarding(target.view);
    },
  });

  if (entries.length === 0) return <Wrap>Loading…</Wrap>;
  const subject = entries[0]!.summary.subject || '(no subject)';
  return (
    <Wrap>
      <Bar>
        <IconButton type="button" aria-label="Back to the list" onClick={onBack}>
          <Icon name="back" />
        </IconButton>
        <h2 ref={heading} tabIndex={-1}>
          {subject}
        </h2>
        {mailbox !== 'archive' && (
          <IconButton type="button" aria-label="Archive" onClick={() => onFile('archive')}>
            <Icon name="archive" />
          </IconButton>
        )}
        {mailbox !== 'trash' && (
          <IconButton type="button" aria-label="Move to Trash" onClick={() => onFile('trash')}>
            <Icon name="trash" />
          </IconButton>
        )}
        {mailbox === 'trash' && (
          <IconButton type="button" aria-label="Move to Inbox" onClick={() => onFile('inbox')}>
            <Icon name="inbox" />
          </IconButton>
        )}
        <IconButton
          type="button"
          aria-label="Mark as unread"
          onClick={() => {
            // The latest message filed here: the user's own reply (in Sent) would leave this one read.
            const here = entries.filter((e) => e.summary.mailbox === mailbox);
            const target = here[here.length - 1] ?? entries[entries.length - 1]!;
            void actions.markUnread([target.summary.id]);
            onBack();
          }}
        >
          <Icon name="unread" />
        </IconButton>
      </Bar>
      {entries.map((entry) => (
        <MessageCard
          key={entry.summary.id}
          entry={entry}
          bodies={state.bodies}
          streams={urls.streams}
          received={canForward(entry.summary.id)}
          onReply={reply}
          onForward={setForwarding}
          onForwardAsNew={(view) => router.go({ name: 'compose', intent: { kind: 'forward', id: view.id } })}
          onUnsend={() => void reader.unsend(entry.summary.id)}
          onEdit={(view) => router.go({ name: 'compose', intent: { kind: 'draft', id: view.id } })}
        />
      ))}
      {forwarding && (
        <ForwardDialog
          messageId={forwarding.id}
          subject={forwarding.subject}
          onClose={() => setForwarding(undefined)}
        />
      )}
    </Wrap>
  );
}

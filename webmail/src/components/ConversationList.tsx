/**
 * The conversations of a mailbox as a virtualized listbox: only the rows in view (and a few around
 * them) are in the DOM, so 10,000 conversations scroll like 10. Keyboard: ↑/↓ or j/k move, Home/End
 * jump, Enter or o opens; screen readers hear the row's position out of the total (aria-setsize).
 */
import { useVirtualizer } from '@tanstack/react-virtual';
import { useEffect, useRef, type KeyboardEvent } from 'react';
import styled from 'styled-components';
import type { Conversation } from '../stores/mail-store.js';

const Scroller = styled.div`
  height: 100%;
  overflow-y: auto;
  outline-offset: -2px;
  contain: strict;
`;

const Row = styled.div<{ $selected: boolean; $active: boolean; $unread: boolean }>`
  position: absolute;
  left: 0;
  right: 0;
  display: grid;
  grid-template-columns: 1fr auto;
  grid-template-rows: auto auto;
  column-gap: 0.75rem;
  align-content: center;
  padding: 0 1rem 0 1.25rem;
  border-bottom: 1px solid ${(p) => p.theme.color.border};
  cursor: pointer;
  background: ${(p) => (p.$selected ? p.theme.color.selection : p.$active ? p.theme.color.hover : 'transparent')};
  box-shadow: ${(p) => (p.$active ? `inset 3px 0 0 ${p.theme.color.accent}` : 'none')};
  font-weight: ${(p) => (p.$unread ? 650 : 400)};
  &:hover {
    background: ${(p) => (p.$selected ? p.theme.color.selection : p.theme.color.hover)};
  }
  & > * {
    min-width: 0;
    overflow: hidden;
    text-overflow: ellipsis;
    white-space: nowrap;
  }
`;

const Muted = styled.span`
  color: ${(p) => p.theme.color.textMuted};
  font-weight: 400;
  font-size: 0.85rem;
`;

const Dot = styled.span`
  position: absolute;
  left: 0.5rem;
  top: 50%;
  width: 7px;
  height: 7px;
  margin-top: -3px;
  border-radius: 50%;
  background: ${(p) => p.theme.color.accent};
`;

const Empty = styled.p`
  padding: 2rem 1rem;
  text-align: center;
  color: ${(p) => p.theme.color.textMuted};
`;

export function formatWhen(epochMs: number, now = Date.now()): string {
  const d = new Date(epochMs);
  const today = new Date(now);
  if (d.toDateString() === today.toDateString())
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (d.getFullYear() === today.getFullYear()) return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
  return d.toLocaleDateString();
}

export interface ConversationListProps {
  readonly conversations: readonly Conversation[];
  readonly label: string;
  readonly activeIndex: number;
  readonly selectedThreadId: string | undefined;
  readonly rowHeight: number;
  readonly onActiveChange: (index: number) => void;
  readonly onOpen: (conversation: Conversation) => void;
}

export function ConversationList(props: ConversationListProps) {
  const { conversations, activeIndex, onActiveChange, onOpen } = props;
  const scroller = useRef<HTMLDivElement>(null);
  const virtualizer = useVirtualizer({
    count: conversations.length,
    getScrollElement: () => scroller.current,
    estimateSize: () => props.rowHeight,
    overscan: 8,
    // Its flushSync re-render runs inside React's own layout effects when the list mounts or scrolls to the
    // active row, where React refuses it (with a warning) and renders in its batch anyway; asking for the
    // batch spares the refusal.
    useFlushSync: false,
  });

  useEffect(() => {
    if (activeIndex >= 0 && activeIndex < conversations.length)
      virtualizer.scrollToIndex(activeIndex, { align: 'auto' });
  }, [activeIndex, conversations.length, virtualizer]);

  if (conversations.length === 0) return <Empty>No conversations here.</Empty>;

  const move = (index: number) => onActiveChange(Math.max(0, Math.min(conversations.length - 1, index)));
  const onKeyDown = (e: KeyboardEvent<HTMLDivElement>) => {
    const page = Math.max(1, Math.floor((scroller.current?.clientHeight ?? props.rowHeight * 8) / props.rowHeight));
    const keys: Record<string, () => void> = {
      ArrowDown: () => move(activeIndex + 1),
      j: () => move(activeIndex + 1),
      ArrowUp: () => move(activeIndex - 1),
      k: () => move(activeIndex - 1),
      PageDown: () => move(activeIndex + page),
      PageUp: () => move(activeIndex - page),
      Home: () => move(0),
      End: () => move(conversations.length - 1),
      Enter: () => conversations[activeIndex] && onOpen(conversations[activeIndex]),
      o: () => conversations[activeIndex] && onOpen(conversations[activeIndex]),
    };
    const action = keys[e.key];
    if (!action || e.altKey || e.ctrlKey || e.metaKey) return;
    e.preventDefault();
    e.stopPropagation();
    action();
  };

  const active = conversations[activeIndex];
  return (
    <Scroller
      ref={scroller}
      role="listbox"
      aria-label={props.label}
      tabIndex={0}
      aria-activedescendant={active ? rowId(activeIndex) : undefined}
      onKeyDown={onKeyDown}
      data-testid="conversation-list"
    >
      <div style={{ height: virtualizer.getTotalSize(), position: 'relative' }}>
        {virtualizer.getVirtualItems().map((item) => {
          const c = conversations[item.index]!;
          const unread = c.unread > 0;
          return (
            <Row
              key={c.threadId}
              id={rowId(item.index)}
              role="option"
              aria-selected={c.threadId === props.selectedThreadId}
              aria-setsize={conversations.length}
              aria-posinset={item.index + 1}
              aria-label={`${unread ? 'Unread. ' : ''}${c.senders.join(', ')}: ${c.subject || '(no subject)'}, ${formatWhen(c.latest.date)}${c.messages.length > 1 ? `, ${c.messages.length} messages` : ''}`}
              $selected={c.threadId === props.selectedThreadId}
              $active={item.index === activeIndex}
              $unread={unread}
              style={{ top: item.start, height: item.size }}
              onClick={() => {
                onActiveChange(item.index);
                onOpen(c);
              }}
            >
              {unread && <Dot aria-hidden="true" />}
              <span>
                {c.senders.join(', ')}
                {c.messages.length > 1 && <Muted> {c.messages.length}</Muted>}
              </span>
              <Muted>{formatWhen(c.latest.date)}</Muted>
              <span style={{ gridColumn: '1 / span 2' }}>{c.subject || '(no subject)'}</span>
            </Row>
          );
        })}
      </div>
    </Scroller>
  );
}

const rowId = (index: number) => `conversation-${index}`;

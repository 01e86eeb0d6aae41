import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { useState } from 'react';
import { ThemeProvider } from 'styled-components';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MessageSummary } from '../api/types.js';
import type { Conversation } from '../stores/mail-store.js';
import { installListboxLayout, uninstallListboxLayout } from '../testing/layout.js';
import { lightTheme } from '../theme/theme.js';
import { ConversationList } from './ConversationList.js';

function conversations(count: number): Conversation[] {
  return Array.from({ length: count }, (_, i) => {
    const latest: MessageSummary = {
      id: `m${i}`,
      mailbox: 'inbox',
      messageId: `<m${i}@example.com>`,
      threadId: `<t${i}@example.com>`,
      subject: `Subject ${i}`,
      from: `Sender ${i} <s${i}@example.com>`,
      date: Date.UTC(2024, 0, 1) - i * 60_000,
      receivedAt: 0,
      seen: i % 3 !== 0,
      flagged: false,
      size: 1,
    };
    return {
      threadId: latest.threadId,
      messages: [latest],
      latest,
      unread: latest.seen ? 0 : 1,
      subject: latest.subject,
      senders: [`Sender ${i}`],
    };
  });
}

function Harness({ items, opened }: { items: Conversation[]; opened: string[] }) {
  const [active, setActive] = useState(0);
  return (
    <ThemeProvider theme={lightTheme}>
      <div style={{ height: 600 }}>
        <ConversationList
          conversations={items}
          label="Conversations in Inbox"
          activeIndex={active}
          selectedThreadId={undefined}
          rowHeight={72}
          onActiveChange={setActive}
          onOpen={(c) => opened.push(c.threadId)}
        />
      </div>
    </ThemeProvider>
  );
}

beforeAll(() => installListboxLayout());
afterAll(() => uninstallListboxLayout());

const activeRow = (list: HTMLElement) => document.getElementById(list.getAttribute('aria-activedescendant') ?? '');

describe('ConversationList', () => {
  it('renders a window of 10,000 conversations, each row telling its position out of the total', () => {
    render(<Harness items={conversations(10_000)} opened={[]} />);
    const list = screen.getByRole('listbox', { name: 'Conversations in Inbox' });
    const rows = screen.getAllByRole('option');
    expect(rows.length).toBeGreaterThan(0);
    expect(rows.length).toBeLessThan(50);
    expect(rows[0]).toHaveProperty('ariaSetSize', '10000');
    expect(rows[0]!.getAttribute('aria-posinset')).toBe('1');
    expect(rows[0]!.getAttribute('aria-label')).toMatch(/^Unread\. Sender 0: Subject 0/);
    expect(list.getAttribute('aria-activedescendant')).toBe(rows[0]!.id);
  });

  it('moves with the keyboard, jumps to the end of 10,000, and opens with Enter', async () => {
    const user = userEvent.setup();
    const opened: string[] = [];
    render(<Harness items={conversations(10_000)} opened={opened} />);
    const list = screen.getByRole('listbox');
    list.focus();
    await user.keyboard('{ArrowDown}j');
    expect(activeRow(list)?.getAttribute('aria-posinset')).toBe('3');
    await user.keyboard('k{Enter}');
    expect(opened).toEqual(['<t1@example.com>']);
    await user.keyboard('{End}');
    // The list scrolled to the end: the last row is rendered, and the rows of the start are gone.
    await waitFor(() => expect(activeRow(list)?.getAttribute('aria-posinset')).toBe('10000'));
    expect(screen.queryByRole('option', { name: /Subject 0,/ })).toBeNull();
    expect(screen.getAllByRole('option').length).toBeLessThan(50);
    await user.keyboard('o');
    expect(opened.at(-1)).toBe('<t9999@example.com>');
  });

  it('opens a conversation on click', async () => {
    const opened: string[] = [];
    render(<Harness items={conversations(3)} opened={opened} />);
    await userEvent.click(screen.getByRole('option', { name: /Subject 2/ }));
    expect(opened).toEqual(['<t2@example.com>']);
  });

  it('says so when there is nothing', () => {
    render(<Harness items={[]} opened={[]} />);
    expect(screen.getByText('No conversations here.')).toBeTruthy();
  });
});

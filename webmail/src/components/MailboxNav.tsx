/** The mailboxes with their unread counts; the current one is marked for screen readers too. */
import styled from 'styled-components';
import { routeHref } from '../app/router.js';
import { MAILBOXES, type MailboxName } from '../api/types.js';
import { Icon, type IconName } from './Icon.js';

export const MAILBOX_LABEL: Record<MailboxName, string> = {
  inbox: 'Inbox',
  sent: 'Sent',
  drafts: 'Drafts',
  archive: 'Archive',
  trash: 'Trash',
};

const ICON: Record<MailboxName, IconName> = {
  inbox: 'inbox',
  sent: 'sent',
  drafts: 'drafts',
  archive: 'archive',
  trash: 'trash',
};

const List = styled.ul`
  list-style: none;
  margin: 0;
  padding: 0.5rem;
`;

const Link = styled.a<{ $current: boolean }>`
  display: flex;
  align-items: center;
  gap: 0.6rem;
  padding: 0.55rem 0.75rem;
  border-radius: ${(p) => p.theme.radius};
  text-decoration: none;
  color: ${(p) => p.theme.color.text};
  font-weight: ${(p) => (p.$current ? 650 : 400)};
  background: ${(p) => (p.$current ? p.theme.color.selection : 'transparent')};
  &:hover {
    background: ${(p) => (p.$current ? p.theme.color.selection : p.theme.color.hover)};
  }
  span:nth-child(2) {
    flex: 1;
  }
`;

const Count = styled.span`
  font-size: 0.8rem;
  font-weight: 650;
  color: ${(p) => p.theme.color.accent};
`;

export function MailboxNav({
  current,
  unread,
  onNavigate,
}: {
  current: MailboxName | undefined;
  unread: Readonly<Record<MailboxName, number>>;
  onNavigate?: () => void;
}) {
  return (
    <nav aria-label="Mailboxes">
      <List>
        {MAILBOXES.map((m) => (
          <li key={m}>
            <Link
              href={routeHref({ name: 'mailbox', mailbox: m, threadId: undefined })}
              $current={m === current}
              aria-current={m === current ? 'page' : undefined}
              aria-label={unread[m] > 0 ? `${MAILBOX_LABEL[m]}, ${unread[m]} unread` : MAILBOX_LABEL[m]}
              onClick={onNavigate}
            >
              <Icon name={ICON[m]} />
              <span>{MAILBOX_LABEL[m]}</span>
              {unread[m] > 0 && <Count aria-hidden="true">{unread[m]}</Count>}
            </Link>
          </li>
        ))}
      </List>
    </nav>
  );
}

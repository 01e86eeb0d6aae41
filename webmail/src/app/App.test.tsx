/**
 * The whole app in jsdom against two real domains (AS and mailbox each): signed out it offers the
 * sign-in; signed in as Bob it shows Alice's message arrive without a reload, with the unread count in
 * the title and a sentence for screen readers; it opens, reads, and answers it from the keyboard and
 * the mouse, with the compose form's validation tied to its fields.
 */
import { act, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { IDBFactory } from 'fake-indexeddb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDraft, newMessageId } from '../api/draft.js';
import { rebuildMessage } from '../api/message-view.js';
import { installListboxLayout, uninstallListboxLayout } from '../testing/layout.js';
import { startApp } from '../testing/app-page.js';
import { startWebmailFederation, type SignedIn, type WebmailFederation } from '../testing/federation.js';
import { LocalDb } from '../stores/local-db.js';

let fed: WebmailFederation;
let alice: SignedIn;
let bob: SignedIn;

beforeAll(async () => {
  installListboxLayout();
  fed = await startWebmailFederation(['example.com', 'example.net']);
  alice = await fed.signIn('alice@example.com');
  bob = await fed.signIn('bob@example.net');
});
afterAll(async () => {
  uninstallListboxLayout();
  await fed?.close();
});

describe('the webmail', () => {
  it('offers the sign-in and goes to the AS with PKCE and a DPoP key thumbprint', async () => {
    const { assigned } = startApp(fed.config('example.net'), new IDBFactory());
    const button = await screen.findByRole('button', { name: 'Sign in' });
    expect(screen.getByText('example.net')).toBeTruthy();
    await userEvent.click(button);
    await waitFor(() => expect(assigned).toHaveLength(1));
    const url = new URL(assigned[0]!);
    expect(url.origin).toBe(new URL(fed.config('example.net').issuer).origin);
    expect(url.searchParams.get('code_challenge_method')).toBe('S256');
    expect(url.searchParams.get('dpop_jkt')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(url.searchParams.get('scope')).toBe('openid offline_access email mailbox');
  });

  it('shows new mail without a reload, reads it, and answers it', async () => {
    window.location.hash = '';
    const { store } = startApp(bob.config, bob.indexedDB);
    const user = userEvent.setup();
    await screen.findByRole('heading', { name: 'Inbox' });
    await screen.findByText('No conversations here.');
    expect(document.title).toBe('Federizer — bob@example.net');

    const text = await alice.api.upload(new Blob(['See you at noon?']), { mediaType: 'text/plain; charset=UTF-8' });
    await alice.api.send(
      buildDraft({
        from: 'Alice <alice@example.com>',
        to: 'bob@example.net',
        cc: '',
        bcc: '',
        subject: 'Lunch',
        messageId: newMessageId('example.com'),
        text,
        attachments: [],
      }),
    );
    const row = await screen.findByRole('option', { name: /^Unread\. Alice: Lunch/ }, { timeout: 20_000 });
    expect(document.title).toBe('(1) Federizer — bob@example.net');
    expect(screen.getByTestId('announcement').textContent).toBe('New message from Alice: Lunch');
    expect(screen.getByRole('link', { name: 'Inbox, 1 unread' }).getAttribute('aria-current')).toBe('page');

    await user.click(row);
    const article = await screen.findByRole('article', { name: /Message from Alice/ });
    await waitFor(() => expect(within(article).getByTestId('text-body').textContent).toBe('See you at noon?'), {
      timeout: 20_000,
    });
    await waitFor(() => expect(document.title).toBe('Federizer — bob@example.net'));

    // r answers the open conversation.
    await act(async () => {
      await user.keyboard('r');
    });
    const to = (await screen.findByLabelText('To')) as HTMLInputElement;
    expect(to.value).toBe('Alice <alice@example.com>');
    expect((screen.getByLabelText('Subject') as HTMLInputElement).value).toBe('Re: Lunch');
    const cc = screen.getByLabelText('Cc');
    await user.type(cc, 'carol@example');
    await user.tab();
    expect(cc.getAttribute('aria-invalid')).toBe('true');
    const error = document.getElementById(cc.getAttribute('aria-describedby')!)!;
    expect(error.textContent).toBe('carol@example: the domain needs a dot, like example.com');
    await user.clear(cc);
    expect(cc.getAttribute('aria-invalid')).toBeNull();
    await user.click(screen.getByLabelText('Message'));
    await user.keyboard('{Control>}{Home}{/Control}Noon is fine.');
    await user.click(screen.getByRole('button', { name: /^Send/ }));

    await screen.findByRole('heading', { name: 'Sent' }, { timeout: 20_000 });
    let replyId = '';
    await waitFor(
      async () => {
        const inbox = await alice.api.listMessages('inbox');
        replyId = inbox.messages.find((m) => m.subject === 'Re: Lunch')?.id ?? '';
        expect(replyId).not.toBe('');
      },
      { timeout: 20_000 },
    );
    const reply = rebuildMessage(await alice.api.getMessage(replyId));
    await waitFor(async () => {
      const body = await (await alice.api.resource(reply.content[0]!.part.contentId)).text();
      expect(body).toMatch(/^Noon is fine\.\n\nOn .*, Alice <alice@example\.com> wrote:\n> See you at noon\?$/);
    });
    store.state.services?.sync.stop();
  });

  it('opens a draft from Drafts in the compose, and signs out every tab when one signs out', async () => {
    const carol = await fed.signIn('carol@example.com');
    const attachment = await carol.api.upload(new Blob(['x'.repeat(600)]), { mediaType: 'text/plain' });
    const text = await carol.api.upload(new Blob(['Unfinished thoughts']), { mediaType: 'text/plain; charset=UTF-8' });
    await carol.api.createDraft(
      buildDraft({
        ...{ from: 'carol@example.com', to: 'Bob <bob@example.net>', cc: '', bcc: 'alice@example.com' },
        subject: 'Not yet sent',
        messageId: newMessageId('example.com'),
        text,
        attachments: [{ resource: attachment, filename: 'list.txt' }],
      }),
    );
    window.location.hash = '#/drafts';
    // Two tabs of one browser: the same IndexedDB, and a BroadcastChannel between them.
    const channel = `session-${Math.random()}`;
    const other = startApp(carol.config, carol.indexedDB, { sessionChannel: channel, render: false });
    const { store } = startApp(carol.config, carol.indexedDB, { sessionChannel: channel });
    const user = userEvent.setup();
    await screen.findByRole('heading', { name: 'Drafts' });
    await user.click(await screen.findByRole('option', { name: /Not yet sent/ }, { timeout: 20_000 }));
    await screen.findByRole('heading', { name: 'Edit draft' });
    expect(((await screen.findByLabelText('To')) as HTMLInputElement).value).toBe('Bob <bob@example.net>');
    expect((screen.getByLabelText('Bcc') as HTMLInputElement).value).toBe('alice@example.com');
    expect((screen.getByLabelText('Subject') as HTMLInputElement).value).toBe('Not yet sent');
    expect((screen.getByLabelText('Message') as HTMLTextAreaElement).value).toBe('Unfinished thoughts');
    expect(screen.getAllByTestId('compose-attachment').map((li) => li.textContent)).toEqual([
      expect.stringContaining('list.txt'),
    ]);

    await waitFor(() => expect(other.store.state.phase.name).toBe('ready'));
    await act(() => other.store.signOut());
    expect(other.assigned).toHaveLength(1);
    // This tab heard it: the mail is gone from the screen and from IndexedDB, and it offers the sign-in.
    await screen.findByRole('button', { name: 'Sign in' });
    expect(screen.getByText('You signed out in another tab.')).toBeTruthy();
    expect(screen.queryByRole('heading', { name: 'Edit draft' })).toBeNull();
    expect(store.state.services).toBeUndefined();
    const db = await LocalDb.open(carol.indexedDB);
    await waitFor(async () => expect(await db.getAll('summaries')).toEqual([]));
    expect(await db.kv('auth')).toBeUndefined();
    db.close();
    store.close();
    other.store.close();
  });

  it('marks the conversation unread, not the reply the user sent in it', async () => {
    const dan = await fed.signIn('dan@example.net');
    const send = async (from: SignedIn, draft: Omit<Parameters<typeof buildDraft>[0], 'text' | 'messageId'>) => {
      const text = await from.api.upload(new Blob([`${draft.subject}.`]), { mediaType: 'text/plain; charset=UTF-8' });
      const domain = draft.from.slice(draft.from.lastIndexOf('@') + 1).replace(/>$/, '');
      await from.api.send(buildDraft({ ...draft, text, messageId: newMessageId(domain) }));
    };
    await send(alice, {
      from: 'Alice <alice@example.com>',
      to: 'dan@example.net',
      cc: '',
      bcc: '',
      subject: 'Tea',
      attachments: [],
    });
    let original: Awaited<ReturnType<typeof dan.api.listMessages>>['messages'][number] | undefined;
    await waitFor(
      async () => {
        original = (await dan.api.listMessages('inbox')).messages.find((m) => m.subject === 'Tea');
        expect(original).toBeDefined();
      },
      { timeout: 20_000 },
    );
    // Dan's answer, in his Sent, is the latest message of the conversation.
    await send(dan, {
      ...{ from: 'dan@example.net', to: 'alice@example.com', cc: '', bcc: '', subject: 'Re: Tea', attachments: [] },
      threadId: original!.threadId,
      inReplyTo: original!.messageId,
    });
    window.location.hash = '#/inbox';
    const { store } = startApp(dan.config, dan.indexedDB);
    const user = userEvent.setup();
    await user.click(await screen.findByRole('option', { name: /Tea/ }, { timeout: 20_000 }));
    await waitFor(() => expect(screen.getAllByRole('article')).toHaveLength(2), { timeout: 20_000 });
    await screen.findByRole('link', { name: 'Inbox' });
    await user.click(screen.getByRole('button', { name: 'Mark as unread' }));
    await screen.findByRole('option', { name: /^Unread\. Alice: Tea/ });
    expect(screen.getByRole('link', { name: 'Inbox, 1 unread' })).toBeTruthy();
    expect(screen.getByRole('link', { name: 'Sent' })).toBeTruthy();
    store.close();
  });

  it('moves the focus into the conversation opened, back to its row, and into the reply or the new message', async () => {
    const fern = await fed.signIn('fern@example.net');
    for (const subject of ['Kites', 'Boats']) {
      const text = await alice.api.upload(new Blob([`About ${subject}.`]), { mediaType: 'text/plain; charset=UTF-8' });
      await alice.api.send(
        buildDraft({
          ...{ from: 'Alice <alice@example.com>', to: 'fern@example.net', cc: '', bcc: '', subject, text },
          messageId: newMessageId('example.com'),
          attachments: [],
        }),
      );
    }
    window.location.hash = '#/inbox';
    const { store } = startApp(fern.config, fern.indexedDB);
    const user = userEvent.setup();
    await screen.findByRole('option', { name: /Boats/ }, { timeout: 20_000 });
    const list = screen.getByRole('listbox', { name: 'Conversations in Inbox' });
    const activeRow = () => document.getElementById(list.getAttribute('aria-activedescendant') ?? '');
    const heading = (name: string) => screen.findByRole('heading', { name, level: 2 });

    // Opened with the mouse: the focus goes to the conversation's heading, once it is shown.
    await user.click(await screen.findByRole('option', { name: /Kites/ }, { timeout: 20_000 }));
    await waitFor(async () => expect(document.activeElement).toBe(await heading('Kites')));
    // Back: to the list, on the row of that conversation, not to the page's body.
    await user.click(screen.getByRole('button', { name: 'Back to the list' }));
    expect(document.activeElement).toBe(list);
    expect(activeRow()?.getAttribute('aria-label')).toMatch(/Kites/);

    // The same from the keyboard: Enter opens the active row, Escape goes back to it.
    await user.keyboard('{Enter}');
    await waitFor(async () => expect(document.activeElement).toBe(await heading('Kites')));
    await user.keyboard('{Escape}');
    await waitFor(() => expect(document.activeElement).toBe(list));
    expect(activeRow()?.getAttribute('aria-label')).toMatch(/Kites/);

    // A reply has its recipients: writing starts in the text.
    await user.keyboard('{Enter}');
    const article = await screen.findByRole('article', { name: /Message from Alice/ });
    await user.click(await within(article).findByRole('button', { name: 'Reply' }));
    await screen.findByRole('heading', { name: 'Reply' });
    await waitFor(() => expect(document.activeElement).toBe(screen.getByLabelText('Message')));
    // A new message has none: writing starts in To.
    await user.click(screen.getByRole('link', { name: 'Compose' }));
    await screen.findByRole('heading', { name: 'New message' });
    await waitFor(() => expect(document.activeElement).toBe(screen.getByLabelText('To')));
    store.close();
  });

  it('closes the mailboxes drawer with Escape or a tap beside it, not only by choosing a mailbox', async () => {
    window.location.hash = '#/inbox';
    const { store } = startApp(bob.config, bob.indexedDB);
    const user = userEvent.setup();
    await screen.findByRole('heading', { name: 'Inbox' }, { timeout: 20_000 });
    // Shown below 760 px only: jsdom matches no media query, so it is hidden here and found by its target.
    const button = document.querySelector<HTMLButtonElement>('button[aria-controls="mailboxes"]')!;
    await user.click(button);
    expect(button.getAttribute('aria-expanded')).toBe('true');
    await user.keyboard('{Escape}');
    expect(button.getAttribute('aria-expanded')).toBe('false');
    expect(document.activeElement).toBe(button);
    await user.click(button);
    expect(button.getAttribute('aria-expanded')).toBe('true');
    await user.click(screen.getByTestId('drawer-scrim'));
    expect(button.getAttribute('aria-expanded')).toBe('false');
    expect(screen.queryByTestId('drawer-scrim')).toBeNull();
    store.close();
  });
  it('says so when the mailbox cannot be reached to archive a conversation, and puts it back in the Inbox', async () => {
    const gil = await fed.signIn('gil@example.net');
    const text = await alice.api.upload(new Blob(['About cake.']), { mediaType: 'text/plain; charset=UTF-8' });
    await alice.api.send(
      buildDraft({
        ...{ from: 'Alice <alice@example.com>', to: 'gil@example.net', cc: '', bcc: '', subject: 'Cake', text },
        messageId: newMessageId('example.com'),
        attachments: [],
      }),
    );
    window.location.hash = '#/inbox';
    const { store } = startApp(gil.config, gil.indexedDB);
    const user = userEvent.setup();
    await user.click(await screen.findByRole('option', { name: /Cake/ }, { timeout: 20_000 }));
    await screen.findByRole('article', { name: /Message from Alice/ }, { timeout: 20_000 });
    // example.net's mailbox goes away: the archive shows at once, then is undone with the reason.
    await fed.fed.stop('example.net');
    try {
      await user.click(screen.getByRole('button', { name: 'Archive' }));
      const alert = await screen.findByRole('alert', {}, { timeout: 20_000 });
      expect(alert.textContent).toMatch(/^The message could not be moved to Archive: .*could not be reached/);
      await screen.findByRole('option', { name: /Cake/ });
      await user.click(within(alert).getByRole('button', { name: 'Dismiss' }));
      expect(screen.queryByRole('alert')).toBeNull();
    } finally {
      await fed.fed.restart('example.net');
      store.close();
    }
  });
});

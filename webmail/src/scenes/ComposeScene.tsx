/**
 * Writing: a new message, a reply, a reply to all, or a saved draft. The draft saves itself; leaving
 * the page saves it too. Ctrl+Enter (⌘+Enter) sends; Enter in a one-line field moves to the next one.
 */
import { useEffect, useLayoutEffect, useRef, useState, type KeyboardEvent } from 'react';
import styled from 'styled-components';
import { NotFoundError } from '../api/errors.js';
import { routeHref, type ComposeIntent } from '../app/router.js';
import { useServices, useStore } from '../app/use-store.js';
import { Button, IconButton } from '../components/Button.js';
import { Field } from '../components/Field.js';
import { Icon } from '../components/Icon.js';
import { ProgressBar } from '../components/ProgressBar.js';
import { loadComposeSeed } from '../stores/compose-seeds.js';
import { ComposeStore, currentDraftId, formatBytes } from '../stores/compose-store.js';

const Form = styled.form`
  height: 100%;
  overflow-y: auto;
  padding: 1rem;
  max-width: 900px;
  h2 {
    margin: 0 0 0.75rem;
    font-size: 1.2rem;
  }
`;

const Attachments = styled.ul`
  list-style: none;
  margin: 0 0 0.75rem;
  padding: 0;
  li {
    display: grid;
    grid-template-columns: minmax(0, 1fr) auto auto;
    align-items: center;
    gap: 0.25rem 0.75rem;
    padding: 0.4rem 0;
    border-bottom: 1px solid ${(p) => p.theme.color.border};
  }
  li > div:last-child {
    grid-column: 1 / -1;
  }
`;

const Name = styled.span`
  overflow: hidden;
  text-overflow: ellipsis;
  white-space: nowrap;
`;

const Muted = styled.span`
  color: ${(p) => p.theme.color.textMuted};
  font-size: 0.85rem;
`;

const Bar = styled.div`
  display: flex;
  flex-wrap: wrap;
  align-items: center;
  gap: 0.5rem;
`;

const Alert = styled.p`
  color: ${(p) => p.theme.color.danger};
`;

const Notice = styled.p`
  margin: 0 0 0.6rem;
  padding: 0.5rem 0.6rem;
  border-left: 3px solid ${(p) => p.theme.color.border};
  color: ${(p) => p.theme.color.textMuted};
  font-size: 0.9rem;
`;

const FileLabel = styled.label`
  display: inline-flex;
  align-items: center;
  gap: 0.4rem;
  min-height: 36px;
  padding: 0.4rem 0.9rem;
  border: 1px solid ${(p) => p.theme.color.border};
  border-radius: ${(p) => p.theme.radius};
  cursor: pointer;
  &:focus-within {
    outline: 2px solid ${(p) => p.theme.color.focus};
  }
  input {
    position: absolute;
    opacity: 0;
    width: 1px;
    height: 1px;
  }
`;

function ComposeForm({ store, title }: { store: ComposeStore; title: string }) {
  const { router } = useServices();
  const s = useStore(store);
  const form = useRef<HTMLFormElement>(null);
  const list = useRef<HTMLUListElement>(null);
  const fileInput = useRef<HTMLInputElement>(null);
  /** The row whose button was pressed to remove it: focus goes to its neighbour, not to the page's body. */
  const removedAt = useRef<number | undefined>(undefined);

  useLayoutEffect(() => {
    const index = removedAt.current;
    if (index === undefined) return;
    removedAt.current = undefined;
    const buttons = list.current?.querySelectorAll<HTMLButtonElement>('li > button') ?? [];
    (buttons[Math.min(index, buttons.length - 1)] ?? fileInput.current)?.focus();
  }, [s.attachments]);

  useEffect(() => {
    if (!s.sent) return;
    router.go({ name: 'mailbox', mailbox: 'sent', threadId: undefined });
  }, [s.sent, router]);

  // The address follows the saved draft, which gets a new id at every save (the mailbox replaces it): a
  // reload, or coming back to this page, opens the draft as it was last saved, not a new message or a draft
  // id that no longer exists. Its Message-ID, which no save changes, finds it again when the page is reloaded
  // while a save is under way (the id in the address is then replaced by one it does not know yet).
  useEffect(() => {
    if (s.draftId !== undefined && !s.sent)
      router.replace({ name: 'compose', intent: { kind: 'draft', id: s.draftId, messageId: store.messageId } });
  }, [s.draftId, s.sent, router, store]);

  const send = () => void store.send();
  const onKeyDown = (e: KeyboardEvent) => {
    if (e.key !== 'Enter' || e.nativeEvent.isComposing) return;
    if (e.ctrlKey || e.metaKey) {
      e.preventDefault();
      send();
      return;
    }
    // Enter in a one-line field (To, Cc, Bcc, Subject) would submit the form, sending a message half
    // written: it goes to the next field instead, as in other mail clients. Only Ctrl+Enter or the button sends.
    const field = e.target as HTMLElement;
    if (field instanceof HTMLInputElement && field.type === 'text') {
      e.preventDefault();
      const fields = [...(form.current?.querySelectorAll<HTMLElement>('input[type=text], textarea') ?? [])];
      fields[fields.indexOf(field) + 1]?.focus();
    }
  };
  const saveLabel =
    s.save === 'saving'
      ? 'Saving draft…'
      : s.save === 'saved'
        ? 'Draft saved'
        : s.save === 'failed'
          ? `Draft not saved: ${s.saveError ?? ''}`
          : '';

  return (
    <Form
      ref={form}
      aria-labelledby="compose-title"
      onKeyDown={onKeyDown}
      onSubmit={(e) => {
        e.preventDefault();
        send();
      }}
      noValidate
    >
      <h2 id="compose-title">{title}</h2>
      {(['to', 'cc', 'bcc'] as const).map((f) => (
        <Field
          key={f}
          label={f === 'to' ? 'To' : f === 'cc' ? 'Cc' : 'Bcc'}
          name={f}
          value={s[f]}
          error={s.errors[f]}
          onChange={(v) => store.set(f, v)}
          onBlur={() => store.validate(f)}
          autoFocus={f === 'to' && s.to === ''}
          placeholder={f === 'to' ? 'Name <name@example.org>, …' : undefined}
        />
      ))}
      <Field label="Subject" name="subject" value={s.subject} onChange={(v) => store.set('subject', v)} />
      {s.textNotice && <Notice role="note">{s.textNotice}</Notice>}
      {/* Writing starts in To when it is empty (a new message), else in the text (a reply has its recipients). */}
      <Field
        label="Message"
        name="text"
        value={s.text}
        onChange={(v) => store.set('text', v)}
        multiline
        rows={12}
        autoFocus={s.to !== ''}
      />
      {s.attachments.length > 0 && (
        <Attachments aria-label="Attachments" ref={list}>
          {s.attachments.map((a, index) => (
            <li key={a.key} data-testid="compose-attachment" data-status={a.status}>
              <Name title={a.name}>{a.name}</Name>
              <Muted>
                {a.status === 'uploading' ? `${formatBytes(a.loaded)} of ${formatBytes(a.size)}` : formatBytes(a.size)}
              </Muted>
              <IconButton
                type="button"
                aria-label={a.status === 'uploading' ? `Cancel the upload of ${a.name}` : `Remove ${a.name}`}
                onClick={() => {
                  removedAt.current = index;
                  store.removeAttachment(a.key);
                }}
              >
                <Icon name="close" size={18} />
              </IconButton>
              <div>
                {a.status === 'uploading' && (
                  <ProgressBar
                    value={a.loaded}
                    max={a.size}
                    label={`Uploading ${a.name}`}
                    valueText={`${formatBytes(a.loaded)} of ${formatBytes(a.size)}`}
                  />
                )}
                {a.status === 'failed' && <Alert role="alert">{a.error}</Alert>}
              </div>
            </li>
          ))}
        </Attachments>
      )}
      {s.errors.form && <Alert role="alert">{s.errors.form}</Alert>}
      <Bar>
        <Button type="submit" $variant="primary" disabled={s.sending}>
          <Icon name="sent" size={18} /> {s.sending ? 'Sending…' : 'Send'}
        </Button>
        <FileLabel>
          <Icon name="attach" size={18} /> Attach files
          <input
            ref={fileInput}
            type="file"
            multiple
            onChange={(e) => {
              store.addFiles([...(e.target.files ?? [])]);
              e.target.value = '';
            }}
          />
        </FileLabel>
        <Button
          type="button"
          $variant="ghost"
          onClick={() => {
            void store.discard().finally(() => router.go({ name: 'mailbox', mailbox: 'inbox', threadId: undefined }));
          }}
        >
          Discard
        </Button>
        <Muted role="status" aria-live="polite">
          {saveLabel}
        </Muted>
      </Bar>
    </Form>
  );
}

const TITLES: Record<ComposeIntent['kind'], string> = {
  new: 'New message',
  reply: 'Reply',
  'reply-all': 'Reply to all',
  forward: 'Forward as a new message',
  draft: 'Edit draft',
};

/**
 * Reads what the compose starts from (the message replied to, or the draft) and makes its store. The intent
 * is the one it was opened with: the URL then follows the draft as it is saved (router.replace), which
 * starts nothing new.
 */
export function ComposeScene({ intent: opened }: { intent: ComposeIntent }) {
  const { api, account, cache, router } = useServices();
  const [intent] = useState(opened);
  const [store, setStore] = useState<ComposeStore>();
  const [error, setError] = useState<{ message: string; gone: boolean }>();

  const kind = intent.kind;
  const id = intent.kind === 'new' ? undefined : intent.id;
  const messageId = intent.kind === 'draft' ? intent.messageId : undefined;
  useEffect(() => {
    let made: ComposeStore | undefined;
    let live = true;
    /**
     * What the compose starts from. A draft is opened as last saved: each save gives it a new id, and the
     * address may name one replaced meanwhile (the page was reloaded while a save was under way). Its
     * Message-ID, which no save changes, finds the latest version in Drafts, and the address follows it, in
     * place. Asked before the id is opened, because a replaced version may still be in the local cache and
     * would open without an error; with nothing of that Message-ID in Drafts, the draft is gone (sent or
     * discarded). Drafts unreadable (offline): the id in the address, from the cache.
     */
    const load = async (from: ComposeIntent) => {
      if (from.kind === 'draft' && from.messageId !== undefined) {
        const current = await currentDraftId(api, from.messageId).catch(() => null);
        if (current === undefined) throw new NotFoundError(404, 'not_found', 'no draft with this Message-ID');
        if (current !== null && current !== from.id) {
          from = { ...from, id: current };
          if (live) router.replace({ name: 'compose', intent: from });
        }
      }
      return loadComposeSeed(from, { sources: cache, me: account.address });
    };
    (async () => {
      const from: ComposeIntent =
        id === undefined || kind === 'new'
          ? { kind: 'new' }
          : kind === 'draft'
            ? { kind, id, messageId }
            : { kind, id };
      const seed = await load(from);
      if (!live) return;
      made = new ComposeStore({
        api,
        from: account.address,
        domain: account.domain,
        maxResourceSize: account.limits.maxResourceSize,
        seed,
      });
      setStore(made);
    })().catch((e: unknown) => live && setError({ message: (e as Error).message, gone: e instanceof NotFoundError }));
    return () => {
      live = false;
      // Leaving keeps what was written: the draft is saved, then the store stops.
      if (made) void made.saveNow().finally(() => made?.dispose());
    };
  }, [api, account, cache, router, kind, id, messageId]);

  if (error && kind === 'draft' && error.gone)
    // Sent, discarded, or saved again elsewhere (a new id) since this address was made.
    return (
      <Alert role="alert">
        This draft is no longer here: it was sent, discarded or saved again since. Its latest version, if any, is in{' '}
        <a href={routeHref({ name: 'mailbox', mailbox: 'drafts', threadId: undefined })}>Drafts</a>.
      </Alert>
    );
  if (error)
    return (
      <Alert role="alert">
        {kind === 'draft' ? 'This draft cannot be opened' : 'This message cannot be answered'}: {error.message}
      </Alert>
    );
  if (!store) return <p style={{ padding: '1rem' }}>Loading…</p>;
  return <ComposeForm store={store} title={TITLES[intent.kind]} />;
}

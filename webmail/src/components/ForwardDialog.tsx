/**
 * The forward form, in a modal dialog (showModal: the page behind it is inert, so focus stays inside); it
 * closes with Escape, and gives the focus back to what opened it.
 */
import { useEffect, useRef, useState, type FormEvent } from 'react';
import styled from 'styled-components';
import { useServices, useStore } from '../app/use-store.js';
import { ForwardStore } from '../stores/forward-store.js';
import { Button } from './Button.js';
import { Field } from './Field.js';

const Dialog = styled.dialog`
  width: min(30rem, calc(100vw - 2rem));
  border: 1px solid ${(p) => p.theme.color.border};
  border-radius: ${(p) => p.theme.radius};
  background: ${(p) => p.theme.color.surfaceRaised};
  color: ${(p) => p.theme.color.text};
  padding: 1.25rem;
  &::backdrop {
    background: rgb(0 0 0 / 0.4);
  }
  h2 {
    margin: 0 0 0.25rem;
    font-size: 1.1rem;
  }
  p {
    margin: 0 0 1rem;
    color: ${(p) => p.theme.color.textMuted};
    font-size: 0.9rem;
  }
`;

const Actions = styled.div`
  display: flex;
  justify-content: flex-end;
  gap: 0.5rem;
  margin-top: 1rem;
`;

export function ForwardDialog({
  messageId,
  subject,
  onClose,
}: {
  messageId: string;
  subject: string;
  onClose: () => void;
}) {
  const { api, account } = useServices();
  const [store] = useState(() => new ForwardStore(api, account.address));
  const state = useStore(store);
  const dialog = useRef<HTMLDialogElement>(null);
  const closeButton = useRef<HTMLButtonElement>(null);

  useEffect(() => {
    const el = dialog.current;
    // What had the focus when the dialog opened: its Forward button, or whatever the f key was pressed on.
    const opener = document.activeElement;
    if (el && !el.open) el.showModal?.();
    // Focus starts in the address field. Not by autoFocus: React applies it before showModal, when nothing
    // in a closed dialog can take the focus.
    el?.querySelector<HTMLInputElement>('input[name="forward-to"]')?.focus();
    return () => {
      el?.close?.();
      // The dialog is removed from the page (Escape, Cancel, Close), and the browser would leave the focus on
      // the page's body: it goes back to what opened the dialog.
      if (opener instanceof HTMLElement && opener !== document.body && opener.isConnected) opener.focus();
    };
  }, []);

  // Forwarded: the field and the Forward button are gone, and the focus with them; Close takes it, in the dialog.
  useEffect(() => {
    if (state.result) closeButton.current?.focus();
  }, [state.result]);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    await store.forward(messageId);
  };

  return (
    <Dialog ref={dialog} aria-labelledby="forward-title" onCancel={onClose} onClose={onClose}>
      <form onSubmit={(e) => void submit(e)}>
        <h2 id="forward-title">Forward “{subject || '(no subject)'}”</h2>
        <p>It is forwarded as it is, attachments included: the recipients fetch them from the sender.</p>
        {state.result ? (
          <div role="status">Forwarded to {state.result.recipients.join(', ')}.</div>
        ) : (
          <Field
            label="Forward to"
            name="forward-to"
            value={state.to}
            error={state.error}
            onChange={(v) => store.setTo(v)}
            placeholder="name@example.org"
          />
        )}
        <Actions>
          <Button ref={closeButton} type="button" onClick={onClose}>
            {state.result ? 'Close' : 'Cancel'}
          </Button>
          {!state.result && (
            <Button type="submit" $variant="primary" disabled={state.sending}>
              {state.sending ? 'Forwarding…' : 'Forward'}
            </Button>
          )}
        </Actions>
      </form>
    </Dialog>
  );
}

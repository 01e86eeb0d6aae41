/**
 * The forward dialog's focus, as the WAI-ARIA dialog pattern has it: it starts in the address field, moves
 * to Close once forwarded, and goes back to the button that opened the dialog however it closes.
 */
import { fireEvent, render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { useState } from 'react';
import { ThemeProvider } from 'styled-components';
import { describe, expect, it } from 'vitest';
import type { ForwardResult } from '../api/types.js';
import type { Services } from '../app/app-store.js';
import { ServicesContext } from '../app/use-store.js';
import { lightTheme } from '../theme/theme.js';
import { ForwardDialog } from './ForwardDialog.js';

const services = {
  account: { address: 'bob@example.net' },
  api: {
    forward: async (id: string, to: string): Promise<ForwardResult> => ({
      id: `${id}-forwarded`,
      messageId: '<forwarded@example.net>',
      recipients: [to],
      deliveries: [],
    }),
  },
} as unknown as Services;

/** A message's Forward button, and the dialog it opens. */
function Harness() {
  const [open, setOpen] = useState(false);
  return (
    <ThemeProvider theme={lightTheme}>
      <ServicesContext.Provider value={services}>
        <button type="button" onClick={() => setOpen(true)}>
          Forward
        </button>
        {open && <ForwardDialog messageId="m1" subject="Lunch" onClose={() => setOpen(false)} />}
      </ServicesContext.Provider>
    </ThemeProvider>
  );
}

const dialog = () => document.querySelector('dialog')!;

describe('ForwardDialog', () => {
  it('starts in the address field and gives the focus back to its button on Cancel, Escape and Close', async () => {
    const user = userEvent.setup();
    render(<Harness />);
    const opener = screen.getByRole('button', { name: 'Forward' });

    await user.click(opener);
    expect(document.activeElement).toBe(screen.getByLabelText('Forward to'));
    await user.click(screen.getByRole('button', { name: 'Cancel', hidden: true }));
    expect(dialog()).toBeNull();
    expect(document.activeElement).toBe(opener);

    // Escape: the browser fires `cancel` on a modal dialog (jsdom has no showModal, so it is fired here).
    await user.click(opener);
    expect(document.activeElement).toBe(screen.getByLabelText('Forward to'));
    fireEvent(dialog(), new Event('cancel', { cancelable: true }));
    expect(dialog()).toBeNull();
    expect(document.activeElement).toBe(opener);

    // Forwarded: the field and its button are gone; Close, in the dialog, takes the focus, then gives it back.
    await user.click(opener);
    await user.type(screen.getByLabelText('Forward to'), 'bobby@example.org{Enter}');
    const close = await screen.findByRole('button', { name: 'Close', hidden: true });
    await waitFor(() => expect(document.activeElement).toBe(close));
    await user.click(close);
    expect(dialog()).toBeNull();
    expect(document.activeElement).toBe(opener);
  });
});

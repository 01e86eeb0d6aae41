/** Settings: the forwarding rule, notifications, and the account. */
import { useEffect, useState, type FormEvent } from 'react';
import styled from 'styled-components';
import { useServices, useStore } from '../app/use-store.js';
import { Button } from '../components/Button.js';
import { Field } from '../components/Field.js';
import { SettingsStore } from '../stores/settings-store.js';
import { formatBytes } from '../stores/compose-store.js';

const Page = styled.div`
  height: 100%;
  overflow-y: auto;
  padding: 1rem;
  max-width: 720px;
  h2 {
    margin: 0 0 1rem;
    font-size: 1.2rem;
  }
  section {
    margin-bottom: 2rem;
  }
  h3 {
    margin: 0 0 0.5rem;
    font-size: 1rem;
  }
  p {
    color: ${(p) => p.theme.color.textMuted};
    margin: 0 0 0.75rem;
  }
`;

const Check = styled.label`
  display: flex;
  align-items: center;
  gap: 0.5rem;
  margin-bottom: 0.5rem;
`;

const Alert = styled.p`
  color: ${(p) => p.theme.color.danger} !important;
`;

function Forwarding() {
  const { api, account } = useServices();
  const [store] = useState(() => new SettingsStore(api, account.address));
  const s = useStore(store);
  useEffect(() => void store.load(), [store]);

  const submit = (e: FormEvent) => {
    e.preventDefault();
    void store.save();
  };
  return (
    <section aria-labelledby="forwarding-title">
      <h3 id="forwarding-title">Forwarding</h3>
      <p>
        Mail that arrives is forwarded through the chain: the new recipients fetch the attachments from the original
        sender.
      </p>
      <form onSubmit={submit} noValidate>
        <Check>
          <input type="checkbox" checked={s.enabled} onChange={(e) => store.edit({ enabled: e.target.checked })} />
          Forward the mail I receive
        </Check>
        <Field
          label="Forward to (one address per line)"
          name="forward-targets"
          value={s.targets}
          onChange={(targets) => store.edit({ targets })}
          multiline
          rows={3}
        />
        <Check>
          <input type="checkbox" checked={s.keepCopy} onChange={(e) => store.edit({ keepCopy: e.target.checked })} />
          Keep a copy in my Inbox
        </Check>
        {s.error && <Alert role="alert">{s.error}</Alert>}
        {s.saved && <p role="status">Saved.</p>}
        <Button type="submit" $variant="primary" disabled={s.saving || s.loading}>
          {s.saving ? 'Saving…' : 'Save forwarding'}
        </Button>
      </form>
    </section>
  );
}

function Notifications() {
  const { notifier } = useServices();
  const { permission } = useStore(notifier);
  return (
    <section aria-labelledby="notifications-title">
      <h3 id="notifications-title">Notifications</h3>
      {permission === 'unsupported' && <p>This browser does not show notifications.</p>}
      {permission === 'granted' && <p>New mail is announced when this page is in the background.</p>}
      {permission === 'denied' && <p>Notifications are blocked for this site in the browser’s settings.</p>}
      {permission === 'default' && (
        <Button type="button" onClick={() => void notifier.requestPermission()}>
          Notify me of new mail
        </Button>
      )}
    </section>
  );
}

export function SettingsScene() {
  const { account, signOut } = useServices();
  return (
    <Page>
      <h2>Settings</h2>
      <Forwarding />
      <Notifications />
      <section aria-labelledby="account-title">
        <h3 id="account-title">Account</h3>
        <p>
          {account.address}: {formatBytes(account.storageUsed)} of {formatBytes(account.limits.quotaBytes)} used.
        </p>
        <Button type="button" onClick={() => void signOut()}>
          Sign out
        </Button>
      </section>
    </Page>
  );
}

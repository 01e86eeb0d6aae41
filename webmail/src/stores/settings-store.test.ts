import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWebmailFederation, type SignedIn, type WebmailFederation } from '../testing/federation.js';
import { SettingsStore, splitTargets } from './settings-store.js';

let fed: WebmailFederation;
let bob: SignedIn;

beforeAll(async () => {
  fed = await startWebmailFederation(['example.net']);
  bob = await fed.signIn('bob@example.net');
});
afterAll(() => fed?.close());

describe('SettingsStore', () => {
  it('splits targets on commas and lines, but not inside quotes or angle brackets', () => {
    expect(splitTargets('"Doe, Jane" <jane@example.org>, bobby@example.org\n\n carol@example.com ')).toEqual([
      '"Doe, Jane" <jane@example.org>',
      'bobby@example.org',
      'carol@example.com',
    ]);
  });

  it('checks the rule before saving: addresses, oneself, an enabled rule without targets', () => {
    const s = new SettingsStore(bob.api, 'bob@example.net');
    s.edit({ enabled: true, targets: '' });
    expect(s.problem()).toBe('add at least one address to forward to');
    s.edit({ targets: 'Bob <BOB@example.net>' });
    expect(s.problem()).toBe('an account cannot forward to itself');
    s.edit({ targets: 'bobby@example' });
    expect(s.problem()).toBe('bobby@example: the domain needs a dot, like example.com');
    s.edit({ targets: 'bobby at example.org' });
    expect(s.problem()).toBe(
      '“bobby at example.org” is not an address: it needs an @ and a domain, like bob@example.com',
    );
    s.edit({ targets: Array.from({ length: 11 }, (_, i) => `t${i}@example.org`).join('\n') });
    expect(s.problem()).toBe('at most 10 addresses');
  });

  it('saves the rule at the mailbox and shows it as stored', async () => {
    const s = new SettingsStore(bob.api, 'bob@example.net');
    await s.load();
    expect(s.state.rule).toMatchObject({ enabled: false, targets: [], updatedAt: null });
    s.edit({ enabled: true, keepCopy: false, targets: 'Bobby <BOBBY@example.org>' });
    expect(await s.save()).toBe(true);
    expect(s.state).toMatchObject({ saved: true, targets: 'bobby@example.org', keepCopy: false, enabled: true });
    const again = new SettingsStore(bob.api, 'bob@example.net');
    await again.load();
    expect(again.state.rule).toMatchObject({ targets: ['bobby@example.org'], keepCopy: false, enabled: true });
  });
});

/** Writing against real domains: validation, uploads, drafts saved on their own, sending, replying, forwarding. */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { rebuildMessage } from '../api/message-view.js';
import type { MessageSummary } from '../api/types.js';
import { startWebmailFederation, type SignedIn, type WebmailFederation } from '../testing/federation.js';
import { loadComposeSeed, replySeed } from './compose-seeds.js';
import { ComposeStore, type ComposeSeed } from './compose-store.js';
import { ForwardStore } from './forward-store.js';
import { MessageCache } from './message-cache.js';

let fed: WebmailFederation;
let alice: SignedIn;
let bob: SignedIn;

beforeAll(async () => {
  fed = await startWebmailFederation(['example.com', 'example.net', 'example.org']);
  alice = await fed.signIn('alice@example.com');
  bob = await fed.signIn('bob@example.net');
  await fed.fed.auth.domains['example.org']!.createUser('bobby@example.org', 'a long enough password');
});
afterAll(() => fed?.close());

function compose(user: SignedIn, seed?: ComposeSeed, maxResourceSize = 5 * 1024 ** 3) {
  return new ComposeStore({
    api: user.api,
    from: user.address,
    domain: user.config.domain,
    maxResourceSize,
    autosaveMs: 20,
    seed,
  });
}

async function mailbox(user: SignedIn, name: 'inbox' | 'sent' | 'drafts'): Promise<MessageSummary[]> {
  return [...(await user.api.listMessages(name)).messages];
}

describe('ComposeStore', () => {
  it('validates each recipient field with the mailbox’s address rules, and needs one recipient to send', async () => {
    const c = compose(alice);
    c.set('to', 'Bob <bob@example.net> carol@example.net');
    expect(c.validate('to')).toBe(false);
    expect(c.state.errors.to).toMatch(/put a comma between addresses$/);
    c.set('to', 'Bob <bob@example.net>'); // corrected: checked again as it is typed
    expect(c.state.errors.to).toBeUndefined();
    c.set('to', '');
    c.set('bcc', 'dave@example');
    expect(await c.send()).toBe(false);
    expect(c.state.errors.bcc).toBe('dave@example: the domain needs a dot, like example.com');
    c.set('bcc', '');
    expect(await c.send()).toBe(false);
    expect(c.state.errors.form).toBe('Add at least one recipient.');
    c.dispose();
  });

  it('refuses a file larger than the mailbox takes before uploading it', () => {
    const c = compose(alice, undefined, 10);
    c.addFiles([new File([new Uint8Array(11)], 'big.bin')]);
    expect(c.state.attachments[0]).toMatchObject({ status: 'failed', error: 'larger than the 10 B a file may be' });
    c.dispose();
  });

  it('saves the draft on its own, replaces it as it changes, and sends it: the recipient has it, Drafts is empty', async () => {
    const c = compose(alice);
    c.set('to', 'Bob <bob@example.net>');
    c.set('subject', 'Draft then send');
    c.set('text', 'first version');
    await vi.waitFor(() => expect(c.state.save).toBe('saved'), { timeout: 10_000 });
    const first = c.state.draftId!;
    expect((await mailbox(alice, 'drafts')).map((m) => m.id)).toEqual([first]);

    c.set('text', 'second version');
    await vi.waitFor(() => expect(c.state.draftId).not.toBe(first), { timeout: 10_000 });
    const drafts = await mailbox(alice, 'drafts');
    expect(drafts.map((m) => m.id)).toEqual([c.state.draftId]);
    const saved = rebuildMessage(await alice.api.getMessage(c.state.draftId!));
    expect(saved.to).toBe('Bob <bob@example.net>');

    c.addFiles([new File([new Uint8Array(3000).fill(1)], 'notes.bin', { type: 'application/octet-stream' })]);
    await vi.waitFor(() => expect(c.state.attachments[0]?.status).toBe('done'), { timeout: 10_000 });
    expect(c.state.attachments[0]!.loaded).toBe(3000);

    expect(await c.send()).toBe(true);
    expect(c.state.sent?.deliveries).toEqual([
      expect.objectContaining({ recipient: 'bob@example.net', domain: 'example.net', status: 'queued' }),
    ]);
    expect(await mailbox(alice, 'drafts')).toEqual([]);
    expect((await mailbox(alice, 'sent')).map((m) => m.messageId)).toContain(c.messageId);
    await vi.waitFor(async () => expect((await mailbox(bob, 'inbox')).map((m) => m.messageId)).toContain(c.messageId), {
      timeout: 20_000,
    });
    const received = (await mailbox(bob, 'inbox')).find((m) => m.messageId === c.messageId)!;
    const view = rebuildMessage(await bob.api.getMessage(received.id));
    expect(view.attachments.map((a) => [a.filename, a.size])).toEqual([['notes.bin', 3000]]);
  });

  it('reopens a saved draft with its recipients, subject, text and attachments, saves its changes, and sends it', async () => {
    const c = compose(alice);
    c.set('to', 'Bob <bob@example.net>');
    c.set('cc', 'bobby@example.org');
    c.set('subject', 'Half written');
    c.set('text', 'The first lines.');
    c.addFiles([new File([new Uint8Array(1500).fill(3)], 'plan.pdf', { type: 'application/pdf' })]);
    await vi.waitFor(() => expect(c.state.attachments[0]?.status).toBe('done'), { timeout: 10_000 });
    await c.saveNow();
    c.dispose();
    const saved = c.state.draftId!;

    // Opened again from Drafts, as the compose scene does it: through the cache, by the draft's id.
    const seed = await loadComposeSeed(
      { kind: 'draft', id: saved },
      { sources: new MessageCache(alice.api, alice.db), me: alice.address },
    );
    const again = compose(alice, seed);
    expect(again.state).toMatchObject({
      to: 'Bob <bob@example.net>',
      cc: 'bobby@example.org',
      subject: 'Half written',
      text: 'The first lines.',
      draftId: saved,
      save: 'saved',
    });
    expect(again.state.attachments.map((a) => [a.name, a.size, a.type, a.status])).toEqual([
      ['plan.pdf', 1500, 'application/pdf', 'done'],
    ]);
    // The same message: its Message-ID is kept, so the draft is one message however often it is saved.
    expect(again.messageId).toBe(c.messageId);

    again.set('text', 'The first lines. And the rest.');
    await vi.waitFor(() => expect(again.state.draftId).not.toBe(saved), { timeout: 10_000 });
    expect((await mailbox(alice, 'drafts')).map((m) => m.id)).toEqual([again.state.draftId]);
    const replaced = rebuildMessage(await alice.api.getMessage(again.state.draftId!));
    expect(replaced.attachments.map((a) => a.filename)).toEqual(['plan.pdf']);
    expect(await new MessageCache(alice.api, alice.db).text(replaced.content[0]!.part)).toBe(
      'The first lines. And the rest.',
    );

    expect(await again.send()).toBe(true);
    expect(await mailbox(alice, 'drafts')).toEqual([]);
    await vi.waitFor(async () => expect((await mailbox(bob, 'inbox')).map((m) => m.messageId)).toContain(c.messageId), {
      timeout: 20_000,
    });
  });

  it('saves over the latest version when another save of the same draft replaced the id it opened', async () => {
    const carol = await fed.signIn('carol@example.com');
    const first = compose(carol);
    first.set('to', 'bob@example.net');
    first.set('subject', 'Plans');
    first.set('text', 'Version one.');
    await first.saveNow();
    first.dispose();
    const opened = first.state.draftId!;
    const seed = async () =>
      loadComposeSeed(
        { kind: 'draft', id: opened },
        { sources: new MessageCache(carol.api, carol.db), me: carol.address },
      );
    // The page before a reload, its save under way, and the page after it: both opened the same version.
    const before = compose(carol, await seed());
    const after = compose(carol, await seed());
    before.set('text', 'Version two, saved while the page reloads.');
    await before.saveNow();
    before.dispose();
    expect(before.state.draftId).not.toBe(opened);

    // The reloaded page's save finds the id it knows replaced, and goes over the latest version.
    after.set('text', 'Version three, written after the reload.');
    await after.saveNow();
    expect(after.state.save).toBe('saved');
    const drafts = await mailbox(carol, 'drafts');
    expect(drafts.map((m) => m.id)).toEqual([after.state.draftId]);
    expect(drafts[0]!.messageId).toBe(first.messageId);
    const text = rebuildMessage(await carol.api.getMessage(after.state.draftId!)).content[0]!.part;
    expect(await new MessageCache(carol.api, carol.db).text(text)).toBe('Version three, written after the reload.');

    // A draft discarded meanwhile stays discarded: the save fails and creates nothing.
    const stale = compose(carol, await seed());
    await carol.api.deleteDraft(after.state.draftId!);
    after.dispose();
    stale.set('text', 'Too late.');
    await expect(stale.saveNow()).rejects.toThrow();
    expect(stale.state.save).toBe('failed');
    expect(await mailbox(carol, 'drafts')).toEqual([]);
    stale.dispose();
  });

  it('cancels an upload: the row goes, nothing fails, and the draft does not reference it', async () => {
    const c = compose(alice);
    c.set('to', 'bob@example.net');
    c.addFiles([new File([new Uint8Array(8 * 1024 * 1024)], 'large.bin')]);
    const key = c.state.attachments[0]!.key;
    expect(c.state.attachments[0]!.status).toBe('uploading');
    c.removeAttachment(key);
    expect(c.state.attachments).toEqual([]);
    await c.saveNow();
    const draft = rebuildMessage(await alice.api.getMessage(c.state.draftId!));
    expect(draft.attachments).toEqual([]);
    await c.discard();
    expect(await mailbox(alice, 'drafts')).toEqual([]);
  });

  it('replies in the same conversation, to everyone but oneself for reply-all, quoting the text', async () => {
    const c = compose(alice);
    c.set('to', 'Bob <bob@example.net>');
    c.set('cc', 'Bobby <bobby@example.org>, alice@example.com');
    c.set('subject', 'Plans');
    c.set('text', 'Shall we?\nSaturday.');
    expect(await c.send()).toBe(true);
    const messageId = c.messageId;
    await vi.waitFor(async () => expect((await mailbox(bob, 'inbox')).map((m) => m.messageId)).toContain(messageId), {
      timeout: 20_000,
    });
    const original = (await mailbox(bob, 'inbox')).find((m) => m.messageId === messageId)!;
    const view = rebuildMessage(await bob.api.getMessage(original.id));

    const seed = replySeed(view, 'Shall we?\nSaturday.', 'bob@example.net', true);
    expect(seed).toMatchObject({
      to: 'alice@example.com',
      cc: 'Bobby <bobby@example.org>',
      subject: 'Re: Plans',
      threadId: original.threadId,
      inReplyTo: messageId,
    });
    expect(seed.text).toMatch(/wrote:\n> Shall we\?\n> Saturday\.$/);
    expect(replySeed(view, undefined, 'bob@example.net', false).cc).toBe('');

    const reply = compose(bob, seed);
    expect(await reply.send()).toBe(true);
    await vi.waitFor(
      async () => {
        const inbox = await mailbox(alice, 'inbox');
        expect(inbox.find((m) => m.subject === 'Re: Plans')?.threadId).toBe(original.threadId);
      },
      { timeout: 20_000 },
    );
  });

  it('forwards a received message through the chain, refusing oneself first', async () => {
    const c = compose(alice);
    c.set('to', 'bob@example.net');
    c.set('subject', 'Pass it on');
    c.set('text', 'for Bobby too');
    expect(await c.send()).toBe(true);
    await vi.waitFor(async () => expect((await mailbox(bob, 'inbox')).map((m) => m.messageId)).toContain(c.messageId), {
      timeout: 20_000,
    });
    const received = (await mailbox(bob, 'inbox')).find((m) => m.messageId === c.messageId)!;
    const f = new ForwardStore(bob.api, bob.address);
    f.setTo('Bob <BOB@example.net>');
    expect(await f.forward(received.id)).toBe(false);
    expect(f.state.error).toBe('a message cannot be forwarded to yourself');
    f.setTo('Bobby <bobby@example.org>');
    expect(await f.forward(received.id)).toBe(true);
    expect(f.state.result).toMatchObject({ recipients: ['bobby@example.org'] });
    const bobby = await fed.signIn('bobby@example.org', { create: false });
    await vi.waitFor(
      async () => expect((await mailbox(bobby, 'inbox')).map((m) => m.messageId)).toContain(c.messageId),
      {
        timeout: 20_000,
      },
    );
  });
});

/**
 * The compose scene in the whole app (jsdom, real AS and mailbox): its address follows the draft as it is
 * saved (the mailbox gives each saved version a new id), so that a reload reopens the draft as last saved,
 * never a new message or an id that no longer exists; the address also names the draft's Message-ID, the
 * same across saves, which finds the latest version when the id was replaced (a reload during a save); a
 * draft that is gone says where its latest version is; and a draft with an HTML version tells the user what
 * the plain text editor keeps of it.
 */
import { cleanup, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDraft, newMessageId } from '../api/draft.js';
import { externalContentType, type Part } from '../api/protocol.js';
import type { UploadedResource } from '../api/types.js';
import { parseRoute, routeHref, type Route } from '../app/router.js';
import { HTML_DROPPED_NOTICE, HTML_KEPT_NOTICE } from '../stores/compose-seeds.js';
import { startApp } from '../testing/app-page.js';
import { startWebmailFederation, type SignedIn, type WebmailFederation } from '../testing/federation.js';

let fed: WebmailFederation;

beforeAll(async () => {
  fed = await startWebmailFederation(['example.com']);
});
afterAll(() => fed?.close());

const drafts = async (user: SignedIn) => (await user.api.listMessages('drafts')).messages.map((m) => m.id);
/** The address of a compose that follows the saved draft `id` whose Message-ID is `messageId`. */
const draftHash = (id: string, messageId: string) =>
  `#/compose?draft=${encodeURIComponent(id)}&mid=${encodeURIComponent(messageId)}`;
/** The address of the user's latest saved draft, as the compose writes it. */
async function latestDraftHash(user: SignedIn) {
  const [latest] = (await user.api.listMessages('drafts')).messages;
  return latest && draftHash(latest.id, latest.messageId);
}
const field = (label: string) => screen.getByLabelText(label, { exact: true }) as HTMLInputElement;

/** Opens the page at `hash` in the user's browser (its IndexedDB keeps the session, as across a reload). */
async function openPage(user: SignedIn, hash: string) {
  window.location.hash = hash;
  const page = startApp(user.config, user.indexedDB);
  await screen.findByRole('heading', { name: /^(New message|Edit draft)$/ });
  return page;
}

/** What a reload does to this test's page: the app goes, its URL stays, and the app starts again from it. */
async function reload(page: ReturnType<typeof startApp>, user: SignedIn) {
  cleanup();
  page.store.close();
  return openPage(user, window.location.hash);
}

describe('the compose scene', () => {
  it('follows its draft in the address as it is saved, so that a reload reopens it, again and again', async () => {
    const dave = await fed.signIn('dave@example.com');
    const user = userEvent.setup();
    let page = await openPage(dave, '#/compose');
    const historyLength = window.history.length;
    await user.type(field('To'), 'carol@example.com');
    await user.type(field('Subject'), 'Reload me');
    await user.type(field('Message'), 'First words.');
    const textarea = field('Message');

    // Saved on its own: the address now names the draft, in place (no new history entry).
    await screen.findByText('Draft saved');
    const [first] = await drafts(dave);
    const firstHash = await latestDraftHash(dave);
    expect(firstHash).toMatch(new RegExp(`^#/compose\\?draft=${first}&mid=%3C[^&]+%40example\\.com%3E$`));
    await waitFor(() => expect(window.location.hash).toBe(firstHash));
    expect(window.history.length).toBe(historyLength);
    // The same compose goes on (not started again from the draft): same form, same title.
    expect(field('Message')).toBe(textarea);
    expect(screen.getByRole('heading', { name: 'New message' })).toBeTruthy();

    // Saved again: a new id, which the address follows.
    await user.type(field('Message'), ' More.');
    await waitFor(async () => expect(await drafts(dave)).not.toEqual([first]));
    const [second] = await drafts(dave);
    await waitFor(async () => expect(window.location.hash).toBe(await latestDraftHash(dave)));
    expect(window.location.hash).toContain(`draft=${second}&`);
    expect(field('Message')).toBe(textarea);

    page = await reload(page, dave);
    expect(screen.getByRole('heading', { name: 'Edit draft' })).toBeTruthy();
    expect(screen.queryByRole('alert')).toBeNull();
    expect(field('To').value).toBe('carol@example.com');
    expect(field('Subject').value).toBe('Reload me');
    expect(field('Message').value).toBe('First words. More.');

    // The reported case: a draft reopened, changed, saved on its own (the id in the address is replaced),
    // then the page reloaded.
    await user.type(field('Message'), ' Last.');
    await waitFor(async () => expect(await drafts(dave)).not.toEqual([second]));
    const [third] = await drafts(dave);
    await waitFor(async () => expect(window.location.hash).toBe(await latestDraftHash(dave)));
    expect(window.location.hash).toContain(`draft=${third}&`);
    page = await reload(page, dave);
    expect(screen.queryByRole('alert')).toBeNull();
    expect(field('Message').value).toBe('First words. More. Last.');
    expect(await drafts(dave)).toEqual([third]);
    cleanup();
    page.store.close();
  });

  it('moves to the next field on Enter in To, Cc, Bcc or Subject, and never sends a message half written', async () => {
    const kim = await fed.signIn('kim@example.com');
    const user = userEvent.setup();
    const page = await openPage(kim, '#/compose');
    await user.type(field('To'), 'carol@example.com{Enter}');
    expect(document.activeElement).toBe(field('Cc'));
    await user.keyboard('{Enter}');
    expect(document.activeElement).toBe(field('Bcc'));
    await user.keyboard('{Enter}');
    expect(document.activeElement).toBe(field('Subject'));
    await user.keyboard('Half written{Enter}');
    expect(document.activeElement).toBe(field('Message'));
    // In the message, Enter is a new line.
    await user.keyboard('Line one{Enter}Line two');
    expect(field('Message').value).toBe('Line one\nLine two');
    expect(screen.getByRole('heading', { name: 'New message' })).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Send' })).toBeTruthy();
    expect((await kim.api.listMessages('sent')).messages).toEqual([]);
    cleanup();
    page.store.close();
  });

  it('says where the latest version is when the draft in the address is gone (sent, discarded, saved elsewhere)', async () => {
    const erin = await fed.signIn('erin@example.com');
    const text = await erin.api.upload(new Blob(['soon gone']), { mediaType: 'text/plain; charset=UTF-8' });
    const input = {
      from: erin.address,
      to: 'dave@example.com',
      cc: '',
      bcc: '',
      subject: 'Gone',
      text,
      attachments: [],
    };
    const saved = await erin.api.createDraft(buildDraft({ ...input, messageId: newMessageId('example.com') }));
    // Saved again in another tab: the id this address names is replaced.
    await erin.api.updateDraft(saved.id, buildDraft({ ...input, subject: 'Gone, saved again' }));
    window.location.hash = `#/compose?draft=${saved.id}`;
    const page = startApp(erin.config, erin.indexedDB);
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toMatch(/^This draft is no longer here: it was sent, discarded or saved again since\./);
    expect(within(alert).getByRole('link', { name: 'Drafts' }).getAttribute('href')).toBe('#/drafts');
    cleanup();
    page.store.close();
  });

  it('reopens the latest version of a draft saved again while the page was reloaded, found by its Message-ID', async () => {
    const gail = await fed.signIn('gail@example.com');
    const text = await gail.api.upload(new Blob(['Still here.']), { mediaType: 'text/plain; charset=UTF-8' });
    const input = { from: gail.address, to: 'dave@example.com', cc: '', bcc: '', text, attachments: [] };
    const messageId = newMessageId('example.com');
    const saved = await gail.api.createDraft(buildDraft({ ...input, subject: 'Saving', messageId }));
    // The address the page had when it was reloaded, then the save it was making ends: its id is replaced.
    window.location.hash = draftHash(saved.id, messageId);
    const historyLength = window.history.length;
    const latest = await gail.api.updateDraft(saved.id, buildDraft({ ...input, subject: 'Saved', messageId }));
    expect(latest.replaced).toBe(saved.id);
    expect(latest.id).not.toBe(saved.id);

    const page = startApp(gail.config, gail.indexedDB);
    await screen.findByRole('heading', { name: 'Edit draft' });
    expect(screen.queryByRole('alert')).toBeNull();
    expect(field('Subject').value).toBe('Saved');
    expect(field('Message').value).toBe('Still here.');
    // The address names the draft found, in place (a reload or the back button opens it, not the old id).
    expect(window.location.hash).toBe(draftHash(latest.id, messageId));
    expect(window.history.length).toBe(historyLength);

    // And it goes on following the draft as it is saved, under the same Message-ID.
    await userEvent.setup().type(field('Message'), ' Edited.');
    await waitFor(async () => expect(await drafts(gail)).not.toEqual([latest.id]));
    const [edited] = await drafts(gail);
    await waitFor(() => expect(window.location.hash).toBe(draftHash(edited!, messageId)));
    expect((await gail.api.getMessage(edited!)).messageId).toBe(messageId);
    cleanup();
    page.store.close();
  });

  it('reopens the latest version, not the one this browser still has in its cache', async () => {
    const ivy = await fed.signIn('ivy@example.com');
    const input = { from: ivy.address, to: 'dave@example.com', cc: '', bcc: '', text: undefined, attachments: [] };
    const messageId = newMessageId('example.com');
    const saved = await ivy.api.createDraft(buildDraft({ ...input, subject: 'Cached', messageId }));
    // Opened once: this browser's cache now holds that version.
    let page = await openPage(ivy, draftHash(saved.id, messageId));
    expect(field('Subject').value).toBe('Cached');
    // The save under way when the page is reloaded lands: a new version, a new id.
    const latest = await ivy.api.updateDraft(saved.id, buildDraft({ ...input, subject: 'Latest', messageId }));
    page = await reload(page, ivy);
    expect(screen.queryByRole('alert')).toBeNull();
    expect(field('Subject').value).toBe('Latest');
    expect(window.location.hash).toBe(draftHash(latest.id, messageId));
    cleanup();
    page.store.close();
  });

  it('says the draft is gone when nothing in Drafts has the Message-ID of the address any more', async () => {
    const hal = await fed.signIn('hal@example.com');
    const input = { from: hal.address, to: 'dave@example.com', cc: '', bcc: '', text: undefined, attachments: [] };
    const messageId = newMessageId('example.com');
    const saved = await hal.api.createDraft(buildDraft({ ...input, subject: 'Discarded', messageId }));
    // Another draft stays in Drafts: only the Message-ID of the address counts.
    await hal.api.createDraft(buildDraft({ ...input, subject: 'Other', messageId: newMessageId('example.com') }));
    await hal.api.deleteDraft(saved.id);
    window.location.hash = draftHash(saved.id, messageId);
    const page = startApp(hal.config, hal.indexedDB);
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toMatch(/^This draft is no longer here: it was sent, discarded or saved again since\./);
    expect(within(alert).getByRole('link', { name: 'Drafts' }).getAttribute('href')).toBe('#/drafts');
    expect(window.location.hash).toBe(draftHash(saved.id, messageId));
    cleanup();
    page.store.close();
  });

  it('opens a draft with an HTML version and a second text part whole, and says what editing the text drops', async () => {
    const fay = await fed.signIn('fay@example.com');
    const upload = (text: string, mediaType: string) => fay.api.upload(new Blob([text]), { mediaType });
    const inline = (r: UploadedResource): Part => ({
      headers: [
        { 'Content-Disposition': 'inline' },
        { 'Content-ID': r.contentId },
        { 'Content-Type': externalContentType(r.size, r.mediaType) },
      ],
    });
    const plain = await upload('Dear Dave,\nthe plan.', 'text/plain; charset=UTF-8');
    const html = await upload('<p>Dear Dave,</p><p>the <b>plan</b>.</p>', 'text/html; charset=UTF-8');
    const ps = await upload('P.S. Bring the map.', 'text/plain; charset=UTF-8');
    // What another client may save: the protocol's own draft example has this multipart/alternative.
    const draft = buildDraft({
      ...{ from: fay.address, to: 'dave@example.com', cc: '', bcc: '', subject: 'Formatted' },
      messageId: newMessageId('example.com'),
      text: undefined,
      attachments: [],
    });
    const saved = await fay.api.createDraft({
      ...draft,
      body: {
        parts: [
          { headers: [{ 'Content-Type': 'multipart/alternative' }], parts: [inline(plain), inline(html)] },
          inline(ps),
        ],
      },
    });

    const user = userEvent.setup();
    const page = await openPage(fay, `#/compose?draft=${saved.id}`);
    // Both text parts, the HTML one by its plain alternative.
    expect(field('Message').value).toBe('Dear Dave,\nthe plan.\n\nP.S. Bring the map.');
    expect(screen.getByRole('note').textContent).toBe(HTML_KEPT_NOTICE);
    await user.type(field('Message'), ' Thanks.');
    expect(screen.getByRole('note').textContent).toBe(HTML_DROPPED_NOTICE);
    // Saved as the notice says: the edited text as one plain part.
    await waitFor(() => expect(parseRoute(window.location.hash)).not.toMatchObject({ intent: { id: saved.id } }));
    const [edited] = await drafts(fay);
    const body = (await fay.api.getMessage(edited!)).body;
    expect(body.parts).toHaveLength(1);
    expect(body.parts[0]!.headers).toContainEqual({
      'Content-Type': [expect.any(String), 'text/plain; charset=UTF-8'],
    });
    cleanup();
    page.store.close();
  });
});

describe('the compose route', () => {
  const mid = '<4f1c2a9e-8d3b-4c7a-9e21-5b6d7f8a9c0d@example.com>';

  it("carries a draft's Message-ID, URL-encoded, and reads it back", () => {
    const route: Route = { name: 'compose', intent: { kind: 'draft', id: '01hz4k0example', messageId: mid } };
    const href = routeHref(route);
    expect(href).toBe('#/compose?draft=01hz4k0example&mid=%3C4f1c2a9e-8d3b-4c7a-9e21-5b6d7f8a9c0d%40example.com%3E');
    expect(parseRoute(href)).toEqual(route);
    expect(routeHref(parseRoute(href))).toBe(href);
  });

  it('still reads an address without a Message-ID, and writes it as it was', () => {
    expect(parseRoute('#/compose?draft=01hz4k0example')).toEqual({
      name: 'compose',
      intent: { kind: 'draft', id: '01hz4k0example' },
    });
    expect(routeHref(parseRoute('#/compose?draft=01hz4k0example'))).toBe('#/compose?draft=01hz4k0example');
    // An empty one is none; a reply has none.
    expect(parseRoute('#/compose?draft=01hz4k0example&mid=')).toEqual(parseRoute('#/compose?draft=01hz4k0example'));
    expect(parseRoute(`#/compose?reply=01hz4k0example&mid=${encodeURIComponent(mid)}`)).toEqual({
      name: 'compose',
      intent: { kind: 'reply', id: '01hz4k0example' },
    });
  });

  it('carries a forward as a new message, and reads it back', () => {
    const route: Route = { name: 'compose', intent: { kind: 'forward', id: '01hz4k0example' } };
    expect(routeHref(route)).toBe('#/compose?forward=01hz4k0example');
    expect(parseRoute(routeHref(route))).toEqual(route);
  });
});

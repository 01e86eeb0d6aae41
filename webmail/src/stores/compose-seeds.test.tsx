/**
 * Turning an HTML-only message into the text a reply quotes (in jsdom, whose DOMParser the function
 * uses as a browser's), then the whole path against real domains: Alice sends HTML only, Bob's reply
 * quotes its words, not its markup. And a draft reopened whole: every text part, its HTML version kept
 * while the text is unchanged and dropped, as the user is told, once it is changed.
 */
import { describe, expect, it, vi } from 'vitest';
import openapi from '../../../openapi/mailbox.openapi.json' with { type: 'json' };
import { buildDraft, newMessageId } from '../api/draft.js';
import { rebuildMessage, type MessageView } from '../api/message-view.js';
import { externalContentType, type Part } from '../api/protocol.js';
import type { Message, UploadedResource } from '../api/types.js';
import { useAliceAndBob } from '../testing/alice-and-bob.js';
import { draftSeed, forwardSeed, HTML_DROPPED_NOTICE, HTML_KEPT_NOTICE, loadComposeSeed } from './compose-seeds.js';
import { ComposeStore } from './compose-store.js';
import { htmlToText } from './html-text.js';
import { MessageCache } from './message-cache.js';

describe('htmlToText', () => {
  it('keeps paragraphs and line breaks, and collapses the source’s white space as HTML does', () => {
    const html = `<html><head><title>Not text</title><style>p { color: red }</style></head><body>
      <p>Dear   Bob,</p>
      <p>the plan:<br>first   this,<br/>then
         that.</p>
      <ul><li>one</li><li>two</li></ul>
      <div>Alice</div><script>steal()</script>
    </body></html>`;
    expect(htmlToText(html)).toBe('Dear Bob,\n\nthe plan:\nfirst this,\nthen that.\n\none\ntwo\n\nAlice');
  });

  it('keeps the white space of <pre>, decodes entities, and leaves out what is not shown', () => {
    expect(htmlToText('<pre>a  b\n  c</pre><p>&lt;tag&gt; &amp; &eacute;</p><template>x</template>')).toBe(
      'a  b\n  c\n\n<tag> & é',
    );
    expect(htmlToText('<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>')).toBe('a b\nc');
    expect(htmlToText('')).toBe('');
  });
});

describe('loadComposeSeed', () => {
  const world = useAliceAndBob();

  it('quotes an HTML-only message by its words in a reply', async () => {
    const html = '<p>Lunch <b>on Friday</b>?</p><p>Say yes.<br>A.</p>';
    const part = await world.alice.api.upload(new Blob([html]), { mediaType: 'text/html; charset=UTF-8' });
    const messageId = newMessageId('example.com');
    const draft = buildDraft({
      ...{ from: world.alice.address, to: 'bob@example.net', cc: '', bcc: '', subject: 'Lunch', messageId },
      text: part,
      attachments: [],
    });
    await world.alice.api.send(draft);
    let id: string | undefined;
    await vi.waitFor(
      async () => {
        const m = (await world.bob.api.listMessages('inbox')).messages.find((x) => x.messageId === messageId);
        expect(m).toBeDefined();
        // Quoted once the text is fetched from Alice's mailbox.
        expect((await world.bob.api.getMessage(m!.id)).resources.map((r) => r.status)).toEqual(['held']);
        id = m!.id;
      },
      { timeout: 20_000 },
    );
    const seed = await loadComposeSeed(
      { kind: 'reply', id: id! },
      { sources: new MessageCache(world.bob.api, world.bob.db), me: world.bob.address },
    );
    expect(seed).toMatchObject({ to: 'alice@example.com', subject: 'Re: Lunch', inReplyTo: messageId });
    expect(seed!.text).toMatch(/wrote:\n> Lunch on Friday\?\n> \n> Say yes\.\n> A\.$/);
    expect(seed!.text).not.toContain('<');
  });

  it('forwards as a new message: the original quoted, its attachments referenced, and Bob may send it', async () => {
    const { alice, bob } = world;
    const note = await alice.api.upload(new Blob(['The plan, attached.']), { mediaType: 'text/plain; charset=UTF-8' });
    const plan = await alice.api.upload(new Blob(['%PDF-1.7 the plan']), { mediaType: 'application/pdf' });
    const messageId = newMessageId('example.com');
    await alice.api.send(
      buildDraft({
        ...{ from: alice.address, to: 'bob@example.net', cc: '', bcc: '', subject: 'The plan', messageId },
        text: note,
        attachments: [{ resource: plan, filename: 'plan.pdf' }],
      }),
    );
    let id: string | undefined;
    await vi.waitFor(
      async () => {
        const m = (await bob.api.listMessages('inbox')).messages.find((x) => x.messageId === messageId);
        expect(m).toBeDefined();
        expect((await bob.api.getMessage(m!.id)).resources.map((r) => r.status)).toEqual(['held', 'held']);
        id = m!.id;
      },
      { timeout: 20_000 },
    );
    const seed = await loadComposeSeed(
      { kind: 'forward', id: id! },
      { sources: new MessageCache(bob.api, bob.db), me: bob.address },
    );
    expect(seed).toMatchObject({ subject: 'Fwd: The plan', attachments: [{ filename: 'plan.pdf', inline: false }] });
    expect(seed!.to).toBeUndefined();
    expect(seed!.notice).toBeUndefined();
    expect(seed!.text).toMatch(
      /^\n\n---------- Forwarded message ----------\nFrom: alice@example\.com\nDate: .+\nSubject: The plan\nTo: bob@example\.net\n\nThe plan, attached\.$/,
    );

    // Bob's mailbox holds what it fetched: the attachment is referenced, not uploaded again, and accepted.
    const c = new ComposeStore({ api: bob.api, from: bob.address, domain: 'example.net', maxResourceSize: 1e9, seed });
    c.set('to', alice.address);
    c.set('text', `See below.${c.state.text}`);
    expect(await c.send()).toBe(true);
    c.dispose();
    await vi.waitFor(
      async () => {
        const m = (await alice.api.listMessages('inbox')).messages.find((x) => x.subject === 'Fwd: The plan');
        expect(m).toBeDefined();
        const view = rebuildMessage(await alice.api.getMessage(m!.id));
        expect(view.from).toBe(bob.address);
        expect(view.attachments.map((a) => [a.contentId, a.filename])).toEqual([[plan.contentId, 'plan.pdf']]);
      },
      { timeout: 20_000 },
    );
  });

  it('starts a new message from nothing', async () => {
    await expect(
      loadComposeSeed(
        { kind: 'new' },
        { sources: new MessageCache(world.bob.api, world.bob.db), me: world.bob.address },
      ),
    ).resolves.toBeUndefined();
  });
});

describe('forwardSeed', () => {
  it('leaves out, and says so, what has not arrived from the sender yet; attaches inline media too', () => {
    const received = (openapi.components.examples.ReceivedMessage as { value: unknown }).value as Message;
    const view = rebuildMessage(received);
    const pending = [...view.media, ...view.attachments].filter((r) => r.status !== 'held');
    expect(pending.length).toBe(1);
    const seed = forwardSeed(view, { text: 'Hi Bob', missing: 1, html: false });
    expect(seed.notice).toBe(
      'Not included: its text, still being fetched from the sender, and 1 attachment still being fetched from the ' +
        'sender. Forward it again once everything has arrived to include it.',
    );
    expect(seed.attachments!.map((a) => a.resource.contentId)).not.toContain(pending[0]!.contentId);
    expect(seed.attachments!.every((a) => a.inline === false)).toBe(true);
    expect(seed.text).toContain('\nCc: "Carol, the Photographer" <carol@example.net>\n');
    // Forwarded again, the subject is not prefixed twice.
    expect(
      forwardSeed({ ...view, subject: 'Fwd: Vacation photo' }, { text: '', missing: 0, html: false }).subject,
    ).toBe('Fwd: Vacation photo');
  });
});

describe('a draft reopened in the compose', () => {
  const world = useAliceAndBob();

  const inline = (r: UploadedResource): Part => ({
    headers: [
      { 'Content-Disposition': 'inline' },
      { 'Content-ID': r.contentId },
      { 'Content-Type': externalContentType(r.size, r.mediaType) },
    ],
  });
  /** How the draft's body is made of resources: the Content-IDs, nested as its parts are. */
  const shape = (parts: readonly Part[]): unknown[] =>
    parts.map((p) => (p.parts ? shape(p.parts) : p.headers.find((h) => 'Content-ID' in h)!['Content-ID']));

  it('has every text part, keeps its HTML version while the text is unchanged, and drops it, as it says, once it changes', async () => {
    const { alice } = world;
    const upload = (text: string, mediaType: string) => alice.api.upload(new Blob([text]), { mediaType });
    const plain = await upload('Dear Bob,\nthe plan.', 'text/plain; charset=UTF-8');
    const html = await upload('<p>Dear Bob,</p><p>the <b>plan</b>.</p>', 'text/html; charset=UTF-8');
    const ps = await upload('P.S. Bring the map.', 'text/plain; charset=UTF-8');
    const map = await upload('%PDF-1.7 a map', 'application/pdf');
    const headers = buildDraft({
      ...{ from: alice.address, to: 'bob@example.net', cc: '', bcc: '', subject: 'Formatted' },
      messageId: newMessageId('example.com'),
      text: undefined,
      attachments: [],
    }).envelope;
    const attachment: Part = {
      headers: [
        { 'Content-Disposition': 'attachment; filename="map.pdf"' },
        { 'Content-ID': map.contentId },
        { 'Content-Type': externalContentType(map.size, map.mediaType) },
      ],
    };
    // Another client's draft, shaped as the protocol's own draft example: multipart/alternative, then more.
    const body = {
      parts: [
        { headers: [{ 'Content-Type': 'multipart/alternative' }], parts: [inline(plain), inline(html)] },
        inline(ps),
        attachment,
      ],
    };
    const saved = await alice.api.createDraft({ envelope: headers, body });
    const sources = new MessageCache(alice.api, alice.db);
    const reopen = async (id: string) => {
      const seed = await loadComposeSeed({ kind: 'draft', id }, { sources, me: alice.address });
      return new ComposeStore({
        api: alice.api,
        from: alice.address,
        domain: 'example.com',
        maxResourceSize: 1024 ** 3,
        seed,
      });
    };

    const c = await reopen(saved.id);
    // Before: only 'Dear Bob,\nthe plan.' (the first text part), and the next save dropped the rest unsaid.
    expect(c.state.text).toBe('Dear Bob,\nthe plan.\n\nP.S. Bring the map.');
    expect(c.state.textNotice).toBe(HTML_KEPT_NOTICE);
    expect(c.state.attachments.map((a) => a.name)).toEqual(['map.pdf']);

    // Another field changed: the text parts are saved as they were, the HTML with its plain alternative.
    c.set('subject', 'Formatted, still');
    await c.saveNow();
    const kept = await alice.api.getMessage(c.state.draftId!);
    expect(shape(kept.body.parts)).toEqual([[plain.contentId, html.contentId], ps.contentId, map.contentId]);
    expect(rebuildMessage(kept).content.map((b) => b.kind)).toEqual(['html', 'text']);

    // The text changed, then changed back: still kept; changed for good: one plain part, as the notice says.
    c.set('text', `${c.state.text} Thanks.`);
    expect(c.state.textNotice).toBe(HTML_DROPPED_NOTICE);
    c.set('text', 'Dear Bob,\nthe plan.\n\nP.S. Bring the map.');
    expect(c.state.textNotice).toBe(HTML_KEPT_NOTICE);
    await c.saveNow();
    expect(shape((await alice.api.getMessage(c.state.draftId!)).body.parts)[0]).toEqual([
      plain.contentId,
      html.contentId,
    ]);
    c.set('text', 'Dear Bob,\nthe plan.\n\nP.S. Bring the map. Thanks.');
    expect(c.state.textNotice).toBe(HTML_DROPPED_NOTICE);
    await c.saveNow();
    const edited = rebuildMessage(await alice.api.getMessage(c.state.draftId!));
    expect(edited.content.map((b) => b.kind)).toEqual(['text']);
    expect(await sources.text(edited.content[0]!.part)).toBe('Dear Bob,\nthe plan.\n\nP.S. Bring the map. Thanks.');
    expect(edited.attachments.map((a) => a.filename)).toEqual(['map.pdf']);
    c.dispose();

    // Reopened now, it is plain text: nothing more to say.
    const again = await reopen(c.state.draftId!);
    expect(again.state.text).toBe('Dear Bob,\nthe plan.\n\nP.S. Bring the map. Thanks.');
    expect(again.state.textNotice).toBeUndefined();
    again.dispose();
  });

  it('edits an HTML-only draft as its words, keeping the HTML until they change', async () => {
    const { alice } = world;
    const html = await alice.api.upload(new Blob(['<p>Only <i>this</i>.</p>']), { mediaType: 'text/html' });
    const draft = buildDraft({
      ...{ from: alice.address, to: 'bob@example.net', cc: '', bcc: '', subject: 'HTML only' },
      messageId: newMessageId('example.com'),
      text: html,
      attachments: [],
    });
    const saved = await alice.api.createDraft(draft);
    const sources = new MessageCache(alice.api, alice.db);
    const seed = await loadComposeSeed({ kind: 'draft', id: saved.id }, { sources, me: alice.address });
    expect(seed).toMatchObject({ text: 'Only this.', textNotice: { kept: HTML_KEPT_NOTICE } });
    const c = new ComposeStore({
      api: alice.api,
      from: alice.address,
      domain: 'example.com',
      maxResourceSize: 1e9,
      seed,
    });
    c.set('to', 'Bob <bob@example.net>');
    await c.saveNow();
    const kept = rebuildMessage(await alice.api.getMessage(c.state.draftId!));
    expect(kept.content).toEqual([expect.objectContaining({ kind: 'html', plain: undefined })]);
    expect(kept.content[0]!.part.contentId).toBe(html.contentId);
    c.dispose();
  });

  it('refuses to open a draft whose text cannot all be read, rather than lose the rest at the next save', () => {
    const part = {
      ...{ contentId: '<x>', mediaType: 'text/plain', baseType: 'text/plain', size: 3 },
      ...{ disposition: 'inline' as const, filename: undefined, status: 'pending' as const },
    };
    const view = {
      ...{ id: 'd1', messageId: '<m@example.com>', threadId: '<m@example.com>', subject: 's', from: 'a@example.com' },
      ...{ to: undefined, cc: undefined, bcc: undefined, date: 0, references: undefined, inReplyTo: undefined },
      ...{ forwards: [], content: [{ kind: 'text' as const, part }], media: [], attachments: [] },
    } satisfies MessageView;
    expect(() => draftSeed(view, { text: '', missing: 1, html: false }, 'd1')).toThrow(
      '1 of its text parts cannot be read from the mailbox yet',
    );
  });
});

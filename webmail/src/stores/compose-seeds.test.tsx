/**
 * Turning an HTML-only message into the text a reply quotes (in jsdom, whose DOMParser the function
 * uses as a browser's), then the whole path against real domains: Alice sends HTML only, Bob's reply
 * quotes its words, not its markup.
 */
import { describe, expect, it, vi } from 'vitest';
import { buildDraft, newMessageId } from '../api/draft.js';
import { useAliceAndBob } from '../testing/alice-and-bob.js';
import { loadComposeSeed } from './compose-seeds.js';
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

  it('starts a new message from nothing', async () => {
    await expect(
      loadComposeSeed(
        { kind: 'new' },
        { sources: new MessageCache(world.bob.api, world.bob.db), me: world.bob.address },
      ),
    ).resolves.toBeUndefined();
  });
});

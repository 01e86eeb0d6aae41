/** Rebuilding the reader's view from Placeholder Messages, and drafts the protocol's own parser accepts. */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { validateMessage } from '../../../services/protocol/src/parse.js';
import document from '../../../openapi/mailbox.openapi.json' with { type: 'json' };
import { buildDraft, recipientError, recipientsOf } from './draft.js';
import { decodeText, displayName, rebuildMessage } from './message-view.js';
import type { Message } from './types.js';

/** A real Content-ID: the last base64url character of a SHA-256 digest is from a restricted set. */
const cid = (seed: string) => `<${createHash('sha256').update(seed).digest('base64url')}>`;

/** Bob's copy of docs/protocol.md §13.3 as the mailbox serves it: the photo still being fetched. */
const received = (document.components.examples.ReceivedMessage as { value: unknown }).value as Message;

describe('rebuildMessage', () => {
  it('takes the headers from the origin block, under the receive block the mailbox added', () => {
    const view = rebuildMessage(received);
    expect(view).toMatchObject({
      subject: 'Vacation photo',
      from: 'Alice <alice@example.com>',
      to: 'Bob <bob@example.net>',
      cc: '"Carol, the Photographer" <carol@example.net>',
      bcc: undefined,
      forwards: [],
    });
  });

  it('shows the HTML of a multipart/alternative with its plain text kept, and the PNG as a pending attachment', () => {
    const view = rebuildMessage(received);
    expect(view.content).toHaveLength(1);
    const [block] = view.content;
    expect(block).toMatchObject({
      kind: 'html',
      part: { contentId: '<m04u3aVXP8sdmtbCwYvz8n1IbAkKHnAOUpae5-hXmSU>', baseType: 'text/html', status: 'held' },
      plain: { contentId: '<AmI47C4jizAg5ppo3oLvP3oP81nqooQbGBmiEKeEgp4>', mediaType: 'text/plain; charset=UTF-8' },
    });
    expect(view.media).toEqual([]);
    expect(view.attachments).toEqual([
      expect.objectContaining({
        filename: 'Venice.png',
        baseType: 'image/png',
        size: 4096,
        disposition: 'attachment',
        status: 'pending',
      }),
    ]);
  });

  it('lists the forward blocks of a chain, oldest first (PROTOCOL.md §7)', () => {
    const forwarded: Message = {
      ...received,
      envelope: [
        { headers: [{ 'Message-ID': received.messageId }, { Received: 'from example.net by example.org; …' }] },
        {
          headers: [
            { 'Forwarded-To': 'bobby@example.org' },
            { 'Forwarded-From': 'bob@example.net' },
            { 'Message-ID': received.messageId },
          ],
        },
        ...received.envelope.slice(1),
      ],
    };
    const view = rebuildMessage(forwarded);
    expect(view.forwards).toEqual([{ from: 'bob@example.net', to: 'bobby@example.org' }]);
    expect(view.from).toBe('Alice <alice@example.com>');
  });

  it('puts inline images, audio and video beside the text, and anything else with the files', () => {
    const draft = buildDraft({
      from: 'alice@example.com',
      to: 'bob@example.net',
      cc: '',
      bcc: '',
      subject: 'media',
      text: { contentId: cid('a'), size: 5, mediaType: 'text/plain; charset=UTF-8' },
      attachments: [
        { resource: { contentId: cid('b'), size: 10, mediaType: 'image/png' }, filename: 'in.png', inline: true },
        { resource: { contentId: cid('c'), size: 20, mediaType: 'video/webm' }, filename: 'clip.webm' },
      ],
    });
    const view = rebuildMessage({
      id: '01jfv4k3q8d2x7m5n9p0r6s1tb',
      mailbox: 'sent',
      messageId: '<x@example.com>',
      threadId: '<x@example.com>',
      subject: 'media',
      from: 'alice@example.com',
      date: 0,
      receivedAt: 0,
      seen: true,
      flagged: false,
      size: 35,
      resources: [],
      ...draft,
    });
    expect(view.content.map((c) => c.kind)).toEqual(['text']);
    expect(view.media.map((m) => m.baseType)).toEqual(['image/png']);
    expect(view.attachments.map((m) => [m.filename, m.baseType])).toEqual([['clip.webm', 'video/webm']]);
  });
});

describe('buildDraft', () => {
  it('makes a draft the protocol’s parser accepts, with quoted filenames and the external-body Content-Type', () => {
    const draft = buildDraft({
      from: 'alice@example.com',
      to: 'Bob <bob@example.net>',
      cc: ' ',
      bcc: 'dave@example.org',
      subject: 'Line\r\nbreak',
      messageId: '<m1@example.com>',
      threadId: '<t1@example.com>',
      text: { contentId: cid('a'), size: 5, mediaType: 'text/plain; charset=UTF-8' },
      attachments: [{ resource: { contentId: cid('b'), size: 10, mediaType: 'image/png' }, filename: 'say "hi".png' }],
    });
    expect(() => validateMessage(draft)).not.toThrow();
    expect(draft.envelope[0]).toEqual({
      headers: [
        { From: 'alice@example.com' },
        { To: 'Bob <bob@example.net>' },
        { Bcc: 'dave@example.org' },
        { Subject: 'Line break' },
        { 'Message-ID': '<m1@example.com>' },
        { 'X-Thread-ID': '<t1@example.com>' },
        { 'Content-Type': 'multipart/mixed' },
      ],
    });
    expect(draft.body.parts[1]!.headers[0]).toEqual({
      'Content-Disposition': 'attachment; filename="say \\"hi\\".png"',
    });
    expect(draft.body.parts[1]!.headers[2]).toEqual({
      'Content-Type': [
        'message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"; size="10"',
        'image/png',
      ],
    });
  });
});

describe('recipientError', () => {
  it('accepts RFC 5322 address lists with display names, quoted names and groups', () => {
    expect(recipientError('Bob <bob@example.net>, "Carol, the Photographer" <carol@example.net>')).toBeUndefined();
    expect(recipientError('friends: dave@example.org, erin@example.org;')).toBeUndefined();
    expect(recipientError('')).toBeUndefined();
    expect(recipientsOf('Bob <BOB@example.net>, carol@example.net')).toEqual(['bob@example.net', 'carol@example.net']);
  });

  it('says which entry is wrong and how to write it, in words rather than parser offsets', () => {
    expect(recipientError('bob')).toBe('“bob” is not an address: it needs an @ and a domain, like bob@example.com');
    expect(recipientError('carol@example.net, bob')).toBe(
      '“bob” is not an address: it needs an @ and a domain, like bob@example.com',
    );
    expect(recipientError('bob@example.net carol@example.net')).toBe(
      '“bob@example.net carol@example.net”: put a comma between addresses',
    );
    expect(recipientError('bob@example.net; carol@example.net')).toBe(
      '“bob@example.net; carol@example.net”: separate addresses with commas, not semicolons',
    );
    expect(recipientError('Bob Smith@example.net')).toBe(
      '“Bob Smith@example.net”: an address has no spaces; to add a name, write Name <bob@example.com>',
    );
    // A comma inside a quoted display name does not split the entry that is blamed.
    expect(recipientError('"Smith, Bob" <bob@example.net, carol@')).toBe(
      '“"Smith, Bob" <bob@example.net, carol@” is not a valid address',
    );
    expect(recipientError('bob@example')).toBe('bob@example: the domain needs a dot, like example.com');
    expect(recipientError(`${'a'.repeat(990)}@example.net`)).toMatch(/998 characters/);
  });

  it('falls back to the parser’s rule when no single entry is to blame (a group spans commas)', () => {
    expect(recipientError('friends: dave@example.org, erin@example.org')).toMatch(
      /^This is not a list of addresses: .*(at the end|at offset)/,
    );
  });
});

describe('display helpers', () => {
  it('shows a display name when there is one, and decodes text in its declared charset', () => {
    expect(displayName('Alice <alice@example.com>')).toBe('Alice');
    expect(displayName('alice@example.com')).toBe('alice@example.com');
    expect(displayName('not an address <')).toBe('not an address <');
    const latin1 = new Uint8Array([0x63, 0x61, 0x66, 0xe9]).buffer;
    expect(decodeText(latin1, 'text/plain; charset=ISO-8859-1')).toBe('café');
    expect(decodeText(new TextEncoder().encode('café').buffer as ArrayBuffer, 'text/plain')).toBe('café');
  });
});

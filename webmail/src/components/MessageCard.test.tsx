/** A message as the reader shows it: sanitized HTML with remote content blocked, previews, downloads, deliveries. */
import { render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import type { ReactNode } from 'react';
import { ThemeProvider } from 'styled-components';
import { describe, expect, it } from 'vitest';
import document from '../../../openapi/mailbox.openapi.json' with { type: 'json' };
import type { MailboxClient } from '../api/client.js';
import { rebuildMessage, type MessageView } from '../api/message-view.js';
import type { Message } from '../api/types.js';
import type { Services } from '../app/app-store.js';
import { ServicesContext } from '../app/use-store.js';
import type { ReaderEntry, SentState } from '../stores/reader-store.js';
import { ResourceUrls } from '../stores/resource-urls.js';
import { lightTheme } from '../theme/theme.js';
import { AttachmentView } from './AttachmentView.js';
import { HtmlBody } from './HtmlBody.js';
import { MessageCard, type MessageCardProps } from './MessageCard.js';
import { sanitizeEmailHtml } from './sanitize-html.js';

const received = (document.components.examples.ReceivedMessage as { value: unknown }).value as Message;
const HTML_ID = '<m04u3aVXP8sdmtbCwYvz8n1IbAkKHnAOUpae5-hXmSU>';
const PLAIN_ID = '<AmI47C4jizAg5ppo3oLvP3oP81nqooQbGBmiEKeEgp4>';
const PHOTO_ID = '<1B1DjDeREMf3ssVhsfBPJsG0VJEQeR-OAi9Il0KAwT4>';

/** Resource URLs as with a service worker in control: paths only, nothing fetched. */
const services = { urls: new ResourceUrls({} as MailboxClient, () => true) } as unknown as Services;

function wrap(children: ReactNode) {
  return (
    <ThemeProvider theme={lightTheme}>
      <ServicesContext.Provider value={services}>{children}</ServicesContext.Provider>
    </ThemeProvider>
  );
}

function entryOf(message: Message, sent?: SentState): ReaderEntry {
  return { summary: message, view: rebuildMessage(message), error: undefined, sent };
}

describe('sanitizeEmailHtml', () => {
  it('removes scripts and every remote reference, counts what it blocked, and keeps the message’s own images', () => {
    const { html, blocked } = sanitizeEmailHtml(
      `<p onclick="steal()">Hi<script>alert(1)</script></p>
       <img src="https://tracker.example/p.gif" alt="t"><img src="cid:${PHOTO_ID.slice(1, -1)}" alt="photo">
       <img srcset="https://tracker.example/2x.png 2x">
       <div style="color:red;background:url(https://tracker.example/bg.png)">styled</div>
       <style>@import url(https://tracker.example/a.css); body { background: url('https://tracker.example/b.png') }</style>
       <a href="https://example.org/page">link</a><a href="javascript:alert(1)">bad</a>
       <link rel="stylesheet" href="https://tracker.example/c.css"><iframe src="https://tracker.example/f"></iframe>`,
      (cid) => (cid === PHOTO_ID ? '/r/photo' : undefined),
    );
    expect(html).not.toMatch(/tracker\.example|<script|onclick|javascript:|<link|<iframe/);
    expect(html).toContain('src="/r/photo"');
    expect(html).toContain('style="color:red;background:none"');
    expect(html).toContain('<a href="https://example.org/page" target="_blank" rel="noopener noreferrer">link</a>');
    // the img src, the srcset, the style attribute's url(), the @import and the url() in <style>
    expect(blocked).toBe(5);
  });

  it('blocks the remote fetches that hide outside src and url(): SVG href, image-set(), CSS escapes', () => {
    const { html, blocked } = sanitizeEmailHtml(
      `<svg><image href="https://tracker.example/svg.png"></image><filter><feImage href="https://tracker.example/fe.png"></feImage></filter></svg>
       <div style="background-image:image-set('https://tracker.example/set.png' 1x)">set</div>
       <div style="background:\\75 rl(https://tracker.example/esc.png)">escaped</div>
       <p style='content:"\\2022"'>kept</p>
       <map><area href="https://example.org/area" alt="area"></map>`,
      () => undefined,
    );
    expect(html).not.toContain('tracker.example');
    // Escapes that hide nothing are left as written.
    expect(html).toContain('content:&quot;\\2022&quot;');
    expect(html).toMatch(/<area href="https:\/\/example\.org\/area"[^>]* target="_blank" rel="noopener noreferrer"/);
    // the two SVG hrefs, the image-set() and the escaped url()
    expect(blocked).toBe(4);
  });

  it('shows a message whose cid: reference is malformed, with that reference blocked', () => {
    const { html, blocked } = sanitizeEmailHtml('<p>Hi</p><img src="cid:%E0%A4%A" alt="x">', () => '/r/never');
    expect(html).toContain('<p>Hi</p>');
    expect(html).not.toContain('/r/never');
    expect(blocked).toBe(1);
  });

  it('shows the sanitized document in a sandboxed frame whose own CSP allows only this origin’s resources', () => {
    render(wrap(<HtmlBody html={'<p>Hello</p><img src="http://tracker.example/x.gif">'} streams />));
    const frame = screen.getByTitle('Message content') as HTMLIFrameElement;
    expect(frame.getAttribute('sandbox')).toBe('allow-same-origin allow-popups allow-popups-to-escape-sandbox');
    const doc = frame.getAttribute('srcdoc')!;
    expect(doc).toContain(`img-src data: blob: ${location.origin}/r/`);
    expect(doc).toContain("default-src 'none'");
    expect(doc).toContain('<p>Hello</p>');
    expect(doc).not.toContain('tracker.example');
    expect(screen.getByRole('note').textContent).toMatch(/Remote content blocked \(1 reference\)/);
  });
});

describe('MessageCard', () => {
  const noop = () => undefined;
  /** A received message's card, with no bodies loaded and handlers that do nothing, unless `props` says. */
  const renderCard = (props: Partial<MessageCardProps> & Pick<MessageCardProps, 'entry'>) =>
    render(
      wrap(<MessageCard bodies={{}} streams received onReply={noop} onForward={noop} onUnsend={noop} {...props} />),
    );

  it('shows who wrote, the HTML part, and a pending attachment without a download link yet', () => {
    const html = '<p>A photo of <b>Venice</b></p>';
    renderCard({
      entry: entryOf(received),
      bodies: { [HTML_ID]: { status: 'ready', text: html }, [PLAIN_ID]: { status: 'ready', text: 'A photo' } },
    });
    const article = screen.getByRole('article', { name: /Message from Alice/ });
    // The display name, then the address alone (the From is `Alice <alice@example.com>`).
    expect(within(article).getByRole('heading').textContent).toBe('Alice');
    expect(within(article).getByText('alice@example.com')).toBeTruthy();
    expect(within(article).getByText('To: Bob <bob@example.net>')).toBeTruthy();
    expect(screen.getByTitle('Message content').getAttribute('srcdoc')).toContain('<b>Venice</b>');
    const photo = screen.getByTestId('attachment');
    expect(within(photo).getByText('Venice.png')).toBeTruthy();
    expect(within(photo).getByRole('status').textContent).toBe('fetching from the sender…');
    expect(within(photo).queryByRole('link')).toBeNull();
    expect(screen.getByRole('button', { name: 'Forward' })).toBeTruthy();
    // Without a handler (the scene gives one), no forward as a new message.
    expect(screen.queryByRole('button', { name: 'Forward as new message' })).toBeNull();
  });

  it('says why a text or an attachment could not be fetched, in short, with the whole record as its title', () => {
    const withdrawn =
      'https://mail.example.com/federation/v1/fetch answered 410 Gone: ' +
      '{"error":"withdrawn","error_description":"the sender withdrew this message"}';
    renderCard({
      entry: entryOf({
        ...received,
        resources: received.resources.map((r) =>
          r.contentId === PHOTO_ID
            ? { ...r, status: 'failed' as const, failure: 'it does not fit the mailbox: bob holds 9 bytes' }
            : { ...r, status: 'failed' as const, failure: withdrawn },
        ),
      }),
    });
    const alert = screen.getByRole('alert');
    expect(alert.textContent).toBe('The text could not be fetched from the sender: the sender withdrew this message');
    expect(alert.getAttribute('title')).toBe(withdrawn);
    const photo = within(screen.getByTestId('attachment')).getByRole('status');
    expect(photo.textContent).toBe('could not be fetched: it does not fit the mailbox: bob holds 9 bytes');
    expect(within(screen.getByTestId('attachment')).queryByRole('link')).toBeNull();
  });

  it('a failed resource whose reason the mailbox did not keep says so', () => {
    renderCard({
      entry: entryOf({ ...received, resources: received.resources.map((r) => ({ ...r, status: 'failed' as const })) }),
    });
    expect(screen.getByRole('alert').textContent).toBe(
      'The text could not be fetched from the sender: the reason was not recorded',
    );
  });

  it('shows a sender without a display name by the address, once', () => {
    renderCard({ entry: entryOf({ ...received, from: 'alice@example.com' }) });
    const article = screen.getByRole('article', { name: /Message from alice@example\.com/ });
    expect(within(article).getByRole('heading').textContent).toBe('alice@example.com');
    expect(within(article).getAllByText('alice@example.com')).toHaveLength(1);
  });

  it('previews held images, video and audio through /r/ URLs, with a download link each', async () => {
    const cid = (d: string) => `<${d}>`;
    const message: Message = {
      ...received,
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': PLAIN_ID },
              {
                'Content-Type': [
                  'message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"; size="51"',
                  'text/plain; charset=UTF-8',
                ],
              },
            ],
          },
          ...(
            [
              ['1B1DjDeREMf3ssVhsfBPJsG0VJEQeR-OAi9Il0KAwT4', 'image/png', 'Venice.png'],
              ['m04u3aVXP8sdmtbCwYvz8n1IbAkKHnAOUpae5-hXmSU', 'video/webm', 'clip.webm'],
              ['uPyNcNW6Qd5TDuPRIMMwlou4GOjNMOcllNMNT0BuYEg', 'audio/ogg', 'song.ogg'],
              ['jDf54WH1zE1l99eX7TKw6PrAi0TVAMuMPQBZ_-SOtKg', 'application/pdf', 'report.pdf'],
            ] as const
          ).map(([d, type, name]) => ({
            headers: [
              { 'Content-Disposition': `attachment; filename="${name}"` },
              { 'Content-ID': cid(d) },
              {
                'Content-Type': [
                  `message/external-body; access-type="x-content-addressed-uri"; hash-algorithm="sha256"; size="1000"`,
                  type,
                ] as [string, string],
              },
            ],
          })),
        ],
      },
      resources: [
        PLAIN_ID,
        PHOTO_ID,
        HTML_ID,
        '<uPyNcNW6Qd5TDuPRIMMwlou4GOjNMOcllNMNT0BuYEg>',
        '<jDf54WH1zE1l99eX7TKw6PrAi0TVAMuMPQBZ_-SOtKg>',
      ].map((contentId) => ({ contentId, size: 1000, status: 'held' as const })),
    };
    const forwardedAsNew: string[] = [];
    render(
      wrap(
        <MessageCard
          entry={entryOf(message)}
          bodies={{ [PLAIN_ID]: { status: 'ready', text: 'Plain words\nover two lines' } }}
          streams
          received={false}
          onReply={noop}
          onForward={noop}
          onForwardAsNew={(view) => forwardedAsNew.push(view.id)}
          onUnsend={noop}
        />,
      ),
    );
    expect(screen.getByTestId('text-body').textContent).toBe('Plain words\nover two lines');
    const image = (await screen.findByAltText('Venice.png')) as HTMLImageElement;
    expect(image.getAttribute('src')).toBe(
      '/r/1B1DjDeREMf3ssVhsfBPJsG0VJEQeR-OAi9Il0KAwT4?type=image%2Fpng&name=Venice.png',
    );
    const video = (await screen.findByLabelText('clip.webm')) as HTMLVideoElement;
    expect(video.tagName).toBe('VIDEO');
    expect(video.getAttribute('src')).toMatch(/^\/r\/m04u3aVXP8sdmtbCwYvz8n1IbAkKHnAOUpae5-hXmSU\?type=video%2Fwebm/);
    expect(((await screen.findByLabelText('song.ogg')) as HTMLElement).tagName).toBe('AUDIO');
    const pdf = await screen.findByRole('link', { name: 'Download report.pdf' });
    expect(pdf.getAttribute('href')).toMatch(/download=1/);
    // No download attribute on a /r/ URL: Chromium would not send it through the service worker, and the
    // server would answer with the app's page; the worker's Content-Disposition saves it under its name.
    expect(pdf.hasAttribute('download')).toBe(false);
    // A message not received (a sent one) cannot be forwarded through the chain, only as a new message.
    expect(screen.queryByRole('button', { name: 'Forward' })).toBeNull();
    await userEvent.click(screen.getByRole('button', { name: 'Forward as new message' }));
    expect(forwardedAsNew).toEqual([message.id]);
  });

  it('lists deliveries per recipient and offers unsend while a copy is on its way', async () => {
    const sent: SentState = {
      deliveries: [
        {
          recipient: 'bob@example.net',
          domain: 'example.net',
          status: 'fetched',
          updatedAt: 1,
          fetchedBy: 'example.net',
          fetchedAt: 1,
        },
        { recipient: 'carol@example.org', domain: 'example.org', status: 'queued', updatedAt: 1 },
        {
          recipient: 'dave@example.org',
          domain: 'example.org',
          status: 'failed',
          updatedAt: 1,
          detail: 'no such recipient',
        },
      ],
      error: undefined,
      unsending: false,
      unsent: { withdrawn: ['carol@example.org'], fetched: ['bob@example.net'], unknown: [] },
    };
    let unsent = 0;
    let replied: [MessageView, boolean] | undefined;
    render(
      wrap(
        <MessageCard
          entry={entryOf({ ...received, mailbox: 'sent' }, sent)}
          bodies={{}}
          streams
          received={false}
          onReply={(v, all) => (replied = [v, all])}
          onForward={noop}
          onUnsend={() => unsent++}
        />,
      ),
    );
    const list = screen.getByTestId('deliveries');
    expect([...list.querySelectorAll('li')].map((li) => li.textContent)).toEqual([
      'bob@example.netfetchedby example.net',
      'carol@example.orgqueued',
      'dave@example.orgfailedno such recipient',
    ]);
    expect(screen.getByText(/Withdrawn for carol@example.org\. Too late for bob@example.net/)).toBeTruthy();
    await userEvent.click(screen.getByRole('button', { name: 'Unsend' }));
    expect(unsent).toBe(1);
    await userEvent.click(screen.getByRole('button', { name: /Reply all/ }));
    expect(replied?.[1]).toBe(true);
    expect(replied?.[0].subject).toBe('Vacation photo');
  });

  it('names the download of a blob URL (no service worker) with the download attribute', async () => {
    const blobServices = {
      urls: { url: async () => 'blob:http://webmail.test/3f2c', streams: false },
    } as unknown as Services;
    render(
      <ThemeProvider theme={lightTheme}>
        <ServicesContext.Provider value={blobServices}>
          <AttachmentView
            item={{
              contentId: '<jDf54WH1zE1l99eX7TKw6PrAi0TVAMuMPQBZ_-SOtKg>',
              mediaType: 'application/pdf',
              baseType: 'application/pdf',
              size: 1000,
              disposition: 'attachment',
              filename: 'report.pdf',
              status: 'held',
            }}
          />
        </ServicesContext.Provider>
      </ThemeProvider>,
    );
    const link = await screen.findByRole('link', { name: 'Download report.pdf' });
    expect(link.getAttribute('href')).toBe('blob:http://webmail.test/3f2c');
    expect(link.getAttribute('download')).toBe('report.pdf');
  });
});

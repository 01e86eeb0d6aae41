/** One message of a conversation: who and when, the chain of forwards, the text, the media, the files. */
import styled from 'styled-components';
import type { ContentBlock, MessageView } from '../api/message-view.js';
import { addressesIn, displayName, failureSummary } from '../api/message-view.js';
import type { BodyState, ReaderEntry } from '../stores/reader-store.js';
import { AttachmentView } from './AttachmentView.js';
import { Button } from './Button.js';
import { DeliveryList } from './DeliveryList.js';
import { HtmlBody } from './HtmlBody.js';
import { Icon } from './Icon.js';

const Article = styled.article`
  background: ${(p) => p.theme.color.surface};
  border: 1px solid ${(p) => p.theme.color.border};
  border-radius: ${(p) => p.theme.radius};
  padding: 1rem;
  margin-bottom: 0.75rem;
`;

const Header = styled.header`
  display: flex;
  flex-wrap: wrap;
  justify-content: space-between;
  gap: 0.25rem 1rem;
  margin-bottom: 0.75rem;
  h3 {
    margin: 0;
    font-size: 1rem;
  }
`;

const Meta = styled.div`
  font-size: 0.85rem;
  color: ${(p) => p.theme.color.textMuted};
  overflow-wrap: anywhere;
`;

const Text = styled.div`
  white-space: pre-wrap;
  overflow-wrap: anywhere;
  margin: 0 0 0.75rem;
`;

const Grid = styled.div`
  display: grid;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, 260px), 1fr));
  gap: 0.75rem;
  margin-bottom: 0.75rem;
`;

const Toolbar = styled.div`
  display: flex;
  flex-wrap: wrap;
  gap: 0.5rem;
  margin-top: 0.5rem;
`;

function Body({
  block,
  bodies,
  streams,
}: {
  block: ContentBlock;
  bodies: Readonly<Record<string, BodyState>>;
  streams: boolean;
}) {
  const state = bodies[block.part.contentId];
  if (block.part.status === 'pending') return <Meta role="status">The text is being fetched from the sender…</Meta>;
  if (block.part.status === 'failed') {
    return (
      <Meta role="alert" title={block.part.failure}>
        The text could not be fetched from the sender: {failureSummary(block.part.failure)}
      </Meta>
    );
  }
  if (!state || state.status === 'loading') return <Meta>Loading…</Meta>;
  if (state.status === 'error') return <Meta role="alert">The text could not be read: {state.message}</Meta>;
  if (block.kind === 'html') return <HtmlBody html={state.text} streams={streams} />;
  return <Text data-testid="text-body">{state.text}</Text>;
}

export interface MessageCardProps {
  readonly entry: ReaderEntry;
  readonly bodies: Readonly<Record<string, BodyState>>;
  readonly streams: boolean;
  readonly received: boolean;
  readonly onReply: (view: MessageView, all: boolean) => void;
  /** Forward (PROTOCOL.md §7): the recipient fetches from the origin. Only for a message received. */
  readonly onForward: (view: MessageView) => void;
  /** Forward as a new message of the user's own (see forwardSeed); received or sent. */
  readonly onForwardAsNew?: (view: MessageView) => void;
  readonly onUnsend: () => void;
  /** Opens a draft in the compose (a draft is answered by finishing it, not by replying to it). */
  readonly onEdit?: (view: MessageView) => void;
}

export function MessageCard({
  entry,
  bodies,
  streams,
  received,
  onReply,
  onForward,
  onForwardAsNew,
  onUnsend,
  onEdit,
}: MessageCardProps) {
  const { summary, view } = entry;
  const when = new Date(summary.date).toLocaleString();
  const name = displayName(summary.from);
  // The address under the name, unless the name is the address already (no display name).
  const address = addressesIn(summary.from)[0];
  return (
    <Article aria-label={`Message from ${name}, ${when}`} data-testid="message">
      <Header>
        <div>
          <h3>{name}</h3>
          {address === undefined ? (
            <Meta>{summary.from}</Meta>
          ) : (
            address !== name.toLowerCase() && <Meta>{address}</Meta>
          )}
          {view?.to && <Meta>To: {view.to}</Meta>}
          {view?.cc && <Meta>Cc: {view.cc}</Meta>}
          {view?.bcc && <Meta>Bcc: {view.bcc}</Meta>}
          {view?.forwards.map((f, i) => (
            <Meta key={i}>
              Forwarded by {f.from} to {f.to}
            </Meta>
          ))}
        </div>
        <Meta>
          <time dateTime={new Date(summary.date).toISOString()}>{when}</time>
        </Meta>
      </Header>
      {entry.error && <Meta role="alert">This message could not be read: {entry.error}</Meta>}
      {!view && !entry.error && <Meta>Loading…</Meta>}
      {view && (
        <>
          {view.content.map((block) => (
            <Body key={block.part.contentId} block={block} bodies={bodies} streams={streams} />
          ))}
          {view.media.length + view.attachments.length > 0 && (
            <Grid aria-label="Attachments" role="group">
              {[...view.media, ...view.attachments].map((r, i) => (
                <AttachmentView key={`${r.contentId} ${i}`} item={r} />
              ))}
            </Grid>
          )}
          {summary.mailbox === 'drafts' && onEdit ? (
            <Toolbar>
              <Button type="button" onClick={() => onEdit(view)}>
                <Icon name="compose" /> Edit draft
              </Button>
            </Toolbar>
          ) : (
            <Toolbar>
              <Button type="button" onClick={() => onReply(view, false)}>
                <Icon name="reply" /> Reply
              </Button>
              <Button type="button" onClick={() => onReply(view, true)}>
                <Icon name="replyAll" /> Reply all
              </Button>
              {received && (
                <Button type="button" onClick={() => onForward(view)}>
                  <Icon name="forward" /> Forward
                </Button>
              )}
              {onForwardAsNew && (
                <Button type="button" onClick={() => onForwardAsNew(view)}>
                  <Icon name="forward" /> Forward as new message
                </Button>
              )}
            </Toolbar>
          )}
        </>
      )}
      {entry.sent && <DeliveryList sent={entry.sent} onUnsend={onUnsend} />}
    </Article>
  );
}

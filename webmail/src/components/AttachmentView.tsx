/** One resource of a message: a preview for images, audio and video (streamed), and a download link. */
import styled from 'styled-components';
import { failureSummary, type ResourceRef } from '../api/message-view.js';
import { formatBytes } from '../stores/compose-store.js';
import { Icon } from './Icon.js';
import { useResourceUrl } from './use-resource-url.js';

const Card = styled.figure`
  margin: 0;
  border: 1px solid ${(p) => p.theme.color.border};
  border-radius: ${(p) => p.theme.radius};
  overflow: hidden;
  background: ${(p) => p.theme.color.surfaceRaised};
  max-width: 100%;
`;

const Preview = styled.div`
  background: ${(p) => (p.theme.scheme === 'dark' ? '#000' : '#eef0f3')};
  display: flex;
  justify-content: center;
  img,
  video {
    display: block;
    max-width: 100%;
    max-height: 420px;
  }
  audio {
    width: 100%;
    margin: 0.75rem;
  }
`;

const Caption = styled.figcaption`
  display: flex;
  flex-wrap: wrap;
  align-items: center;
  gap: 0.5rem;
  padding: 0.5rem 0.75rem;
  font-size: 0.9rem;
  span:first-child {
    flex: 1;
    min-width: 0;
    overflow: hidden;
    text-overflow: ellipsis;
    white-space: nowrap;
  }
`;

const Muted = styled.span`
  color: ${(p) => p.theme.color.textMuted};
`;

const Download = styled.a`
  display: inline-flex;
  align-items: center;
  gap: 0.25rem;
  text-decoration: none;
`;

function kindOf(ref: ResourceRef): 'image' | 'video' | 'audio' | 'file' {
  const top = ref.baseType.split('/')[0];
  return top === 'image' || top === 'video' || top === 'audio' ? top : 'file';
}

export function AttachmentView({ item }: { item: ResourceRef }) {
  const held = item.status === 'held';
  const kind = kindOf(item);
  const name = item.filename ?? (kind === 'file' ? 'attachment' : `${kind} (${item.baseType})`);
  const src = useResourceUrl(held && kind !== 'file' ? item : undefined);
  const href = useResourceUrl(held ? { ...item, filename: item.filename ?? name } : undefined, true);
  return (
    <Card data-testid="attachment" data-kind={kind}>
      {held && src && kind !== 'file' && (
        <Preview>
          {kind === 'image' && <img src={src} alt={name} loading="lazy" />}
          {kind === 'video' && <video src={src} controls preload="metadata" aria-label={name} />}
          {kind === 'audio' && <audio src={src} controls preload="metadata" aria-label={name} />}
        </Preview>
      )}
      <Caption>
        <span title={name}>{name}</span>
        <Muted>{formatBytes(item.size)}</Muted>
        {item.status === 'pending' && <Muted role="status">fetching from the sender…</Muted>}
        {item.status === 'failed' && (
          <Muted role="status" title={item.failure}>
            could not be fetched: {failureSummary(item.failure)}
          </Muted>
        )}
        {held && href && (
          // A blob URL needs `download` to be saved under its name. A /r/ URL must not have it: Chromium
          // does not pass a download-attribute request through the service worker (crbug.com/40410035), so
          // the server would answer with the app's index.html. Followed as a link, the worker answers it,
          // and its Content-Disposition (download=1) saves it under its name without leaving the page.
          <Download href={href} download={href.startsWith('blob:') ? name : undefined} aria-label={`Download ${name}`}>
            <Icon name="download" size={18} />
          </Download>
        )}
      </Caption>
    </Card>
  );
}

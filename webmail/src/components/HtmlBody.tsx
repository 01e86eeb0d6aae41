/**
 * An HTML part, sanitized (sanitize-html.ts) and shown in a sandboxed frame: no script runs in it, its
 * styles cannot reach the app, and its CSP blocks what the sanitizer might have missed. The frame is
 * same-origin only so that its height can follow its content.
 */
import { useEffect, useMemo, useRef, useState } from 'react';
import styled, { useTheme } from 'styled-components';
import { digestOf } from '../api/client.js';
import { resourcePath } from '../sw/resource-route.js';
import { frameDocument, sanitizeEmailHtml } from './sanitize-html.js';

const Frame = styled.iframe`
  display: block;
  width: 100%;
  border: 0;
  min-height: 2rem;
`;

const Notice = styled.p`
  margin: 0 0 0.5rem;
  font-size: 0.85rem;
  color: ${(p) => p.theme.color.textMuted};
`;

export function HtmlBody({ html, streams }: { html: string; streams: boolean }) {
  const theme = useTheme();
  const frame = useRef<HTMLIFrameElement>(null);
  const [height, setHeight] = useState(0);
  const sanitized = useMemo(
    () => sanitizeEmailHtml(html, (cid) => (streams ? resourcePath(digestOf(cid)) : undefined)),
    [html, streams],
  );
  const doc = useMemo(
    () => frameDocument(sanitized.html, location.origin, theme.scheme === 'dark'),
    [sanitized.html, theme.scheme],
  );

  useEffect(() => {
    const el = frame.current;
    if (!el) return;
    let observer: ResizeObserver | undefined;
    const measure = () => setHeight(el.contentDocument?.documentElement.scrollHeight ?? 0);
    const onLoad = () => {
      measure();
      const body = el.contentDocument?.body;
      if (body && typeof ResizeObserver === 'function') {
        observer = new ResizeObserver(measure);
        observer.observe(body);
      }
    };
    el.addEventListener('load', onLoad);
    return () => {
      el.removeEventListener('load', onLoad);
      observer?.disconnect();
    };
  }, [doc]);

  return (
    <>
      {sanitized.blocked > 0 && (
        <Notice role="note">
          Remote content blocked ({sanitized.blocked} {sanitized.blocked === 1 ? 'reference' : 'references'}): the
          sender cannot tell that you read this.
        </Notice>
      )}
      <Frame
        ref={frame}
        title="Message content"
        sandbox="allow-same-origin allow-popups allow-popups-to-escape-sandbox"
        srcDoc={doc}
        style={{ height: height > 0 ? height + 4 : undefined }}
        data-testid="html-body"
      />
    </>
  );
}

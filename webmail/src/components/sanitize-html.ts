/**
 * HTML parts are sanitized with DOMPurify before they are shown, and remote content is blocked: an
 * image, a stylesheet or a font fetched from the sender's server tells them when and where the message
 * was read. Only `data:` URLs and `cid:` references to the message's own resources (RFC 2392) load;
 * everything else that would fetch is removed and counted, so the reader can say so.
 */
import createDOMPurify, { type DOMPurify } from 'dompurify';

export interface SanitizedHtml {
  readonly html: string;
  /** How many remote references were removed. */
  readonly blocked: number;
}

const URL_ATTRIBUTES = ['src', 'srcset', 'background', 'poster', 'data', 'action', 'formaction', 'xlink:href', 'ping'];
const REMOTE_IN_CSS =
  /url\(\s*(?!['"]?(?:data:|cid:))[^)]*\)|(?:-webkit-)?image-set\((?:[^()]|\([^()]*\))*\)|@import[^;]*;?/gi;
/** Elements whose `href` is a link the reader follows; on any other (SVG image, feImage, use) it is a fetch. */
const LINKS = new Set(['A', 'AREA']);

/** CSS escapes (`\75 rl(` is `url(`) spelled out, so that the patterns above see what the browser sees. */
function unescapeCss(css: string): string {
  return css.replace(
    /\\([0-9a-f]{1,6})\s?|\\([^\n0-9a-f])/gi,
    (_, hex: string | undefined, char: string | undefined) =>
      hex ? String.fromCodePoint(Math.min(parseInt(hex, 16), 0x10ffff) || 0xfffd) : char!,
  );
}

let purifier: DOMPurify | undefined;

/** `resolveCid` maps a `cid:` reference to a URL of the message's own resource, or undefined to block it. */
export function sanitizeEmailHtml(html: string, resolveCid: (contentId: string) => string | undefined): SanitizedHtml {
  purifier ??= createDOMPurify(window);
  const purify = purifier;
  let blocked = 0;
  const cleanCss = (css: string) => {
    // Escaped text is only rewritten when escapes hide a fetch: legitimate escapes (content: "\2022") stay.
    const plain = unescapeCss(css);
    const source = plain !== css && new RegExp(REMOTE_IN_CSS.source, 'i').test(plain) ? plain : css;
    return source.replace(REMOTE_IN_CSS, (match) => {
      blocked++;
      return match.startsWith('@') ? '' : 'none';
    });
  };
  const cidUrl = (value: string): string | undefined => {
    try {
      return resolveCid(`<${decodeURIComponent(value.slice(4))}>`);
    } catch {
      // A malformed %-escape names no resource; it must not stop the whole message from showing.
      return undefined;
    }
  };

  purify.addHook('uponSanitizeElement', (node, data) => {
    if (data.tagName === 'style' && node.textContent) node.textContent = cleanCss(node.textContent);
  });
  purify.addHook('afterSanitizeAttributes', (node) => {
    const el = node as Element;
    for (const name of URL_ATTRIBUTES) {
      const value = el.getAttribute(name);
      if (value === null) continue;
      const v = value.trim();
      if (name === 'src' && /^cid:/i.test(v)) {
        const url = cidUrl(v);
        if (url) {
          el.setAttribute('src', url);
          continue;
        }
      } else if ((name === 'src' || name === 'poster') && /^data:(image|audio|video)\//i.test(v)) {
        continue;
      }
      el.removeAttribute(name);
      blocked++;
    }
    if (el.hasAttribute('href') && !LINKS.has(el.tagName)) {
      el.removeAttribute('href');
      blocked++;
    }
    const style = el.getAttribute('style');
    if (style !== null && /url\(|image-set|@import|\\/i.test(style)) el.setAttribute('style', cleanCss(style));
    if (LINKS.has(el.tagName) && el.hasAttribute('href')) {
      el.setAttribute('target', '_blank');
      el.setAttribute('rel', 'noopener noreferrer');
    }
  });
  try {
    const clean = purify.sanitize(html, {
      FORBID_TAGS: [
        'link',
        'meta',
        'base',
        'form',
        'input',
        'button',
        'textarea',
        'select',
        'iframe',
        'object',
        'embed',
      ],
      ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|cid:|data:|#)/i,
      ADD_ATTR: ['target'],
    });
    return { html: clean, blocked };
  } finally {
    purify.removeAllHooks();
  }
}

/**
 * The document shown in the sandboxed frame: its own CSP blocks any fetch the sanitizer missed, except
 * this origin's `/r/` resources (inline images by `cid:`).
 */
export function frameDocument(body: string, origin: string, dark: boolean): string {
  const csp = [
    "default-src 'none'",
    `img-src data: blob: ${origin}/r/`,
    `media-src ${origin}/r/`,
    "style-src 'unsafe-inline'",
    'font-src data:',
  ].join('; ');
  const colors = dark ? 'color-scheme: dark; color: #e6e9ee;' : 'color-scheme: light; color: #1b1f24;';
  return `<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="${csp}"><base target="_blank"><style>html,body{margin:0;padding:0;background:transparent;${colors}font:15px/1.45 system-ui,sans-serif;overflow-wrap:anywhere}img{max-width:100%;height:auto}</style></head><body>${body}</body></html>`;
}

/**
 * The words of an HTML message, as plain text a reply can quote (`> ` per line) or a draft can be
 * edited as: paragraphs and line breaks kept, what is not text (scripts, styles, the head) left out.
 * Parsing with DOMParser runs nothing and loads nothing: the document is never rendered.
 */

/** Elements whose content is not text the reader saw. */
const SKIPPED = new Set(['SCRIPT', 'STYLE', 'TEMPLATE', 'NOSCRIPT', 'HEAD', 'TITLE', 'OBJECT', 'IFRAME', 'SVG']);
/** Blocks set apart by an empty line. */
const PARAGRAPHS = new Set(['P', 'H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'BLOCKQUOTE', 'PRE', 'TABLE', 'UL', 'OL', 'HR']);
/** Blocks that start a line of their own. */
const LINES = new Set([
  'ADDRESS',
  'ARTICLE',
  'ASIDE',
  'DD',
  'DIV',
  'DL',
  'DT',
  'FIELDSET',
  'FIGCAPTION',
  'FIGURE',
  'FOOTER',
  'FORM',
  'HEADER',
  'LI',
  'MAIN',
  'NAV',
  'SECTION',
  'TR',
]);

const ELEMENT = 1;
const TEXT = 3;

/** The part of the DOM the walk reads (so that tests may parse with jsdom where there is no DOMParser). */
export type ParseHtml = (html: string) => Pick<Document, 'body'>;

const domParser: ParseHtml = (html) => new DOMParser().parseFromString(html, 'text/html');

/** The text so far, with the rules of where white space and line breaks go. */
class Out {
  text = '';

  /** Text outside <pre>: HTML's white space is one space, and none at the start of a line. */
  words(raw: string): void {
    let t = raw.replace(/[\t\n\f\r ]+/g, ' ');
    if (this.text === '' || this.text.endsWith('\n') || this.text.endsWith(' ')) t = t.replace(/^ /, '');
    this.text += t;
  }

  verbatim(raw: string): void {
    this.text += raw;
  }

  /** Ends the line (`lines` 1), or the paragraph (2), unless it already is; nothing at the very start. */
  breakLine(lines: 1 | 2, force = false): void {
    this.text = this.text.replace(/ +$/, '');
    if (force) {
      this.text += '\n';
      return;
    }
    if (this.text === '') return;
    const have = /\n*$/.exec(this.text)![0].length;
    if (have < lines) this.text += '\n'.repeat(lines - have);
  }
}

function walk(node: Node, out: Out, pre: boolean): void {
  for (const child of Array.from(node.childNodes)) {
    if (child.nodeType === TEXT) {
      if (pre) out.verbatim(child.nodeValue ?? '');
      else out.words(child.nodeValue ?? '');
      continue;
    }
    if (child.nodeType !== ELEMENT) continue;
    const tag = (child as Element).tagName.toUpperCase();
    if (SKIPPED.has(tag)) continue;
    if (tag === 'BR') {
      out.breakLine(1, true);
      continue;
    }
    const lines = PARAGRAPHS.has(tag) ? 2 : LINES.has(tag) ? 1 : 0;
    // Cells of a row: a space between them (words() drops it at the start of a line).
    if (tag === 'TD' || tag === 'TH') out.words(' ');
    if (lines) out.breakLine(lines);
    walk(child, out, pre || tag === 'PRE');
    if (lines) out.breakLine(lines);
  }
}

export function htmlToText(html: string, parse: ParseHtml = domParser): string {
  const out = new Out();
  walk(parse(html).body, out, false);
  return out.text.replace(/\s+$/, '');
}

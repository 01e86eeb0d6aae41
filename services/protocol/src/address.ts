/**
 * RFC 5322 §3.4 address lists, with RFC 6532 UTF-8 in atoms and quoted strings. Federizer needs the
 * addr-specs (for access control and routing) and the domains; display names are kept for the UI.
 */
import { ProtocolError } from './errors.js';

export interface Mailbox {
  /** Decoded display name, or undefined when the mailbox is a bare addr-spec. */
  readonly name: string | undefined;
  /** `local@domain`, local part as written, domain lower-cased. */
  readonly address: string;
  readonly local: string;
  /** Lower-cased; a domain literal keeps its brackets. */
  readonly domain: string;
}

// atext plus every non-ASCII code point (RFC 6532 §3.2).
// A run of atext, matched from a position (sticky): one regex call per atom, not one per character.
const ATEXT = "[A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~\\u0080-\\u{10FFFF}]+";
const ATEXT_RUN = new RegExp(ATEXT, 'uy');
const WSP = /[ \t]/;

class Scanner {
  pos = 0;
  constructor(readonly text: string) {}

  get done(): boolean {
    return this.pos >= this.text.length;
  }

  peek(): string {
    return this.text[this.pos] ?? '';
  }

  fail(rule: string): never {
    const at = this.done
      ? 'at the end'
      : `at offset ${this.pos} (${JSON.stringify(this.text.slice(this.pos, this.pos + 12))})`;
    throw new ProtocolError('invalid_address', `${rule} ${at}`);
  }

  /** CFWS: folding white space and (nested) comments, skipped. */
  skipCfws(): void {
    for (;;) {
      const c = this.peek();
      if (WSP.test(c) || c === '\r' || c === '\n') this.pos++;
      else if (c === '(') this.skipComment();
      else return;
    }
  }

  private skipComment(): void {
    let depth = 0;
    do {
      const c = this.peek();
      if (c === '') this.fail('unterminated comment');
      if (c === '\\') this.pos++;
      else if (c === '(') depth++;
      else if (c === ')') depth--;
      this.pos++;
    } while (depth > 0);
  }

  atom(): string {
    ATEXT_RUN.lastIndex = this.pos;
    const m = ATEXT_RUN.exec(this.text);
    if (m === null) return '';
    this.pos += m[0].length;
    return m[0];
  }

  quotedString(): string {
    this.pos++; // opening quote
    let out = '';
    for (;;) {
      const c = this.peek();
      if (c === '') this.fail('unterminated quoted string');
      this.pos++;
      if (c === '"') return out;
      if (c === '\\') {
        const next = this.peek();
        if (next === '') this.fail('unterminated quoted string');
        out += next;
        this.pos++;
      } else if (c === '\r' || c === '\n') {
        // folding inside a quoted string is unfolded
      } else {
        out += c;
      }
    }
  }

  /** A word is an atom or a quoted string (RFC 5322 §3.2.5). */
  word(): { text: string; quoted: boolean } | undefined {
    this.skipCfws();
    if (this.peek() === '"') return { text: this.quotedString(), quoted: true };
    const text = this.atom();
    return text === '' ? undefined : { text, quoted: false };
  }
}

/** A quoted local part that needs no quotes: atext runs joined by single dots (RFC 5322 §3.2.3 dot-atom-text). */
const DOT_ATOM_TEXT = new RegExp(`^${ATEXT}(?:\\.${ATEXT})*$`, 'u');

function parseAddrSpecAt(s: Scanner): { local: string; domain: string } {
  // local-part: dot-atom or quoted-string (obsolete CFWS around dots tolerated)
  const words: { text: string; quoted: boolean }[] = [];
  for (;;) {
    const w = s.word();
    if (w === undefined) s.fail('expected a local part');
    words.push(w);
    s.skipCfws();
    if (s.peek() !== '.') break;
    s.pos++;
  }
  // RFC 5321 §4.1.2: a quoted local part that could be written as a dot-atom is the same mailbox written
  // without its quotes ("bob"@example.net is bob@example.net); it is kept in that one form, so that it
  // names the account. Quotes that are needed (a space, "@", a dot at either end) stay.
  const unquoted = words.map((w) => w.text).join('.');
  const local = DOT_ATOM_TEXT.test(unquoted)
    ? unquoted
    : words.map((w) => (w.quoted ? `"${w.text.replace(/(["\\])/g, '\\$1')}"` : w.text)).join('.');
  if (s.peek() !== '@') s.fail('expected "@"');
  s.pos++;
  s.skipCfws();
  let domain: string;
  if (s.peek() === '[') {
    const end = s.text.indexOf(']', s.pos);
    if (end < 0) s.fail('unterminated domain literal');
    domain = s.text.slice(s.pos, end + 1);
    if (/[[\\\s]/.test(domain.slice(1, -1))) s.fail('invalid domain literal');
    s.pos = end + 1;
  } else {
    const labels: string[] = [];
    for (;;) {
      s.skipCfws();
      const label = s.atom();
      if (label === '') s.fail('expected a domain label');
      labels.push(label);
      s.skipCfws();
      if (s.peek() !== '.') break;
      s.pos++;
    }
    domain = labels.join('.');
  }
  s.skipCfws();
  return { local, domain: domain.toLowerCase() };
}

function mailbox(name: string | undefined, spec: { local: string; domain: string }): Mailbox {
  return { name, address: `${spec.local}@${spec.domain}`, local: spec.local, domain: spec.domain };
}

/** mailbox = name-addr / addr-spec. Decides by looking for "<" before the next "@", "," or ";". */
function parseMailbox(s: Scanner): Mailbox {
  const start = s.pos;
  const words: string[] = [];
  for (;;) {
    s.skipCfws();
    if (s.peek() === '<') {
      s.pos++;
      s.skipCfws();
      const spec = parseAddrSpecAt(s);
      if (s.peek() !== '>') s.fail('expected ">"');
      s.pos++;
      s.skipCfws();
      const name = words.length > 0 ? words.join(' ') : undefined;
      return mailbox(name, spec);
    }
    const w = s.word();
    if (w === undefined) break;
    words.push(w.text);
    // a "." between words is obsolete phrase syntax (RFC 5322 §4.1), e.g. John Q. Public
    while (s.peek() === '.') {
      s.pos++;
      words[words.length - 1] += '.';
    }
    s.skipCfws();
    if (s.peek() === '@') break;
  }
  s.pos = start;
  return mailbox(undefined, parseAddrSpecAt(s));
}

/** address = mailbox / group; a group is `display-name ":" [mailbox-list] ";"`. */
function parseAddress(s: Scanner, out: Mailbox[]): void {
  const start = s.pos;
  const words: string[] = [];
  for (;;) {
    const w = s.word();
    if (w === undefined) break;
    words.push(w.text);
    // obs-phrase (RFC 5322 §4.1): a "." may follow a word, as in `Dept. A: ...;`
    s.skipCfws();
    while (s.peek() === '.') {
      s.pos++;
      words[words.length - 1] += '.';
      s.skipCfws();
    }
  }
  s.skipCfws();
  if (words.length > 0 && s.peek() === ':') {
    s.pos++;
    s.skipCfws();
    while (s.peek() !== ';') {
      if (s.peek() === ',') {
        s.pos++;
        s.skipCfws();
        continue;
      }
      out.push(parseMailbox(s));
      s.skipCfws();
      if (s.peek() !== ',' && s.peek() !== ';') s.fail('expected "," or ";" in a group');
    }
    s.pos++;
    s.skipCfws();
    return;
  }
  s.pos = start;
  out.push(parseMailbox(s));
}

/**
 * Parses an address-list (To, Cc, Bcc, Forwarded-To). Groups contribute their members; an empty list
 * (a blank Bcc, or `undisclosed-recipients:;`) gives no mailboxes. Throws ProtocolError('invalid_address').
 */
export function parseAddressList(value: string): Mailbox[] {
  const s = new Scanner(value);
  const out: Mailbox[] = [];
  s.skipCfws();
  while (!s.done) {
    if (s.peek() === ',') {
      s.pos++; // RFC 5322 §4.4 obsolete empty list elements
      s.skipCfws();
      continue;
    }
    parseAddress(s, out);
    if (!s.done && s.peek() !== ',') s.fail('expected "," between addresses');
  }
  return out;
}

/** Parses a header that must hold exactly one mailbox (From, Forwarded-From). */
export function parseSingleMailbox(value: string): Mailbox {
  const s = new Scanner(value);
  s.skipCfws();
  const box = parseMailbox(s);
  if (!s.done)
    s.fail(s.peek() === ',' ? 'exactly one mailbox expected, found a list' : 'unexpected text after the mailbox');
  return box;
}

/** The lower-cased addr-specs of an address-list, deduplicated, in order of appearance. */
export function addressesOf(value: string): string[] {
  return [...new Set(parseAddressList(value).map((m) => normalizeAddress(m.address)))];
}

/**
 * The comparison form of an address: domain lower-cased (DNS is case-insensitive) and the local part too,
 * because every Federizer mailbox treats local parts case-insensitively (as nearly all mail systems do).
 */
export function normalizeAddress(address: string): string {
  return address.toLowerCase();
}

/** The domain of an addr-spec (the part after the last "@"), lower-cased. */
export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

/**
 * The validating parser for Placeholder Messages (PROTOCOL.md §2–3), from JSON or YAML text or from an
 * already-decoded value. Every rejection is a ProtocolError naming the path and the rule. Size and depth
 * are checked before any expensive work; anything unexpected becomes a ProtocolError too, so callers
 * (and the fuzz tests) can rely on one error type.
 */
import { CST, Lexer, isScalar, parseDocument, visit, type Document } from 'yaml';
import { parseAddressList, parseSingleMailbox } from './address.js';
import { parseDate } from './date.js';
import { isB64uSha256 } from './encoding.js';
import { ProtocolError, type ProtocolErrorCode } from './errors.js';
import { SINGLETON_HEADERS, type Header, type Message } from './message.js';
import { parseExternalBody, parseParameterized } from './mime.js';

export interface ParseLimits {
  /** Encoded size of the whole message, in bytes (UTF-8). */
  readonly maxBytes: number;
  /** Nesting of parts inside parts. */
  readonly maxDepth: number;
  /** Parts in the whole body, multipart containers included. */
  readonly maxParts: number;
  /** Headers in one block or one part. */
  readonly maxHeaders: number;
  /** Blocks in the envelope. */
  readonly maxBlocks: number;
  /** Characters of one header, name and value together (an assertion counts as one header). */
  readonly maxHeaderLength: number;
}

export const DEFAULT_LIMITS: ParseLimits = {
  maxBytes: 1024 * 1024,
  maxDepth: 16,
  maxParts: 1000,
  maxHeaders: 256,
  // 8 hops of (assertion, headers) plus the receiving mailbox's block, with room to spare
  maxBlocks: 64,
  maxHeaderLength: 64 * 1024,
};

export type InputFormat = 'json' | 'yaml' | 'auto';

export interface ParseOptions {
  readonly format?: InputFormat;
  readonly limits?: Partial<ParseLimits>;
}

/** Parses and validates a Placeholder Message from JSON or YAML text (or its UTF-8 bytes). */
export function parseMessage(input: string | Uint8Array, options: ParseOptions = {}): Message {
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  try {
    const text = decodeInput(input, limits);
    const format = options.format ?? 'auto';
    const value =
      format === 'json' || (format === 'auto' && looksLikeJson(text)) ? readJson(text, limits) : readYaml(text, limits);
    return validateMessage(value, limits);
  } catch (e) {
    throw asProtocolError(e);
  }
}

/** Validates a value decoded elsewhere (an HTTP body already parsed as JSON). Returns it typed. */
export function validateMessage(value: unknown, limits: Partial<ParseLimits> = {}): Message {
  try {
    const v = new Validator({ ...DEFAULT_LIMITS, ...limits });
    v.message(value);
    return value as Message;
  } catch (e) {
    throw asProtocolError(e);
  }
}

function asProtocolError(e: unknown): ProtocolError {
  if (e instanceof ProtocolError) return e;
  if (e instanceof RangeError)
    return new ProtocolError('message_too_deep', 'the input is nested too deeply to read', { cause: e });
  return new ProtocolError('invalid_syntax', `the input could not be read: ${(e as Error)?.message ?? String(e)}`, {
    cause: e,
  });
}

function decodeInput(input: string | Uint8Array, limits: ParseLimits): string {
  if (typeof input === 'string') {
    // UTF-8 length without encoding: a cheap upper bound first, the exact figure only when near the limit
    if (input.length * 3 > limits.maxBytes && Buffer.byteLength(input, 'utf8') > limits.maxBytes)
      throw tooLarge(limits);
    if (!input.isWellFormed()) throw new ProtocolError('invalid_encoding', 'the text holds a lone UTF-16 surrogate');
    return input.replace(/^\uFEFF/, '');
  }
  if (input.byteLength > limits.maxBytes) throw tooLarge(limits);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(input);
  } catch (e) {
    throw new ProtocolError('invalid_encoding', 'the input is not valid UTF-8', { cause: e });
  }
}

function tooLarge(limits: ParseLimits): ProtocolError {
  return new ProtocolError('message_too_large', `a message is at most ${limits.maxBytes} bytes`);
}

function looksLikeJson(text: string): boolean {
  return /^\s*[{[]/.test(text);
}

// Objects and arrays a valid message needs around the parts: message, body, parts array, part, headers
// array, header object, Content-Type array; each nested part adds a part object and a parts array.
function maxJsonDepth(limits: ParseLimits): number {
  return 6 + 2 * (limits.maxDepth + 1);
}

/**
 * JSON.parse that refuses duplicate member names and nesting deeper than `maxDepth`, for every JSON the
 * protocol signs or compares (PROTOCOL.md §3 header arrays, token-exchange `headers`). Throws ProtocolError.
 */
export function parseJsonStrict(text: string, maxDepth = 32): unknown {
  scanJson(text, maxDepth);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ProtocolError('invalid_syntax', `not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** RFC 5322 §3.6.4 msg-id, as the parser checks Message-ID headers. */
export function isMsgId(value: string): boolean {
  return MSG_ID.test(value);
}

function readJson(text: string, limits: ParseLimits): unknown {
  scanJson(text, maxJsonDepth(limits));
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ProtocolError('invalid_syntax', `not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * One linear pass before JSON.parse: bounds the nesting (JSON.parse recurses) and rejects duplicate
 * member names, which JSON.parse would silently collapse — two readers of the same signed message must
 * never see different headers. Syntax errors are left for JSON.parse to describe.
 */
function scanJson(text: string, maxDepth: number): void {
  const keys: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      while (j < text.length) {
        const d = text.charCodeAt(j);
        if (d === 0x5c) {
          escaped = true;
          j += 2;
        } else if (d === 0x22) break;
        else j++;
      }
      const top = keys[keys.length - 1];
      if (expectKey && top) {
        const raw = text.slice(i, j + 1);
        let key: string;
        try {
          key = escaped ? (JSON.parse(raw) as string) : raw.slice(1, -1);
        } catch {
          return; // JSON.parse will report the bad string
        }
        if (top.has(key)) {
          throw new ProtocolError(
            'invalid_shape',
            `member ${JSON.stringify(key)} appears twice in one object (offset ${i})`,
          );
        }
        top.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (keys.length >= maxDepth) {
        throw new ProtocolError('message_too_deep', `JSON nesting deeper than ${maxDepth} levels`);
      }
      keys.push(c === 0x7b ? new Set() : null);
      expectKey = c === 0x7b;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      keys.pop();
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = keys[keys.length - 1] != null;
    }
  }
}

function readYaml(text: string, limits: ParseLimits): unknown {
  scanYamlNesting(text, maxJsonDepth(limits));
  // The failsafe schema reads every scalar as a string: header values are strings, and `Subject: 123`
  // or `Subject: null` must not turn into a number or a null.
  const doc = parseDocument(text, { schema: 'failsafe', uniqueKeys: true, strict: true, prettyErrors: false });
  const error = doc.errors[0];
  if (error) throw new ProtocolError('invalid_syntax', `not valid YAML: ${error.message}`);
  if (doc.warnings.length > 0) throw new ProtocolError('invalid_syntax', `not valid YAML: ${doc.warnings[0]!.message}`);
  rejectYamlIndirection(doc);
  const value: unknown = doc.toJS({ maxAliasCount: 100 });
  if (depthExceeds(value, maxJsonDepth(limits))) {
    throw new ProtocolError('message_too_deep', `nesting deeper than ${maxJsonDepth(limits)} levels`);
  }
  return value;
}

/**
 * The YAML composer recurses once per nesting level, and a stack overflow inside it can leave V8 unable
 * to compile regular expressions for the rest of the process. So nesting is bounded first, on the
 * library's lexer tokens (a generator: the scan stops at the first level too deep, and quoting and
 * comments are already resolved). Flow brackets are counted exactly; block nesting is bounded from above
 * by the indentation plus the `-`/`?`/`:` indicators on a line, since every block level needs one of them.
 * The exact depth is checked on the composed value afterwards.
 */
function scanYamlNesting(text: string, maxDepth: number): void {
  const tooDeep = () => new ProtocolError('message_too_deep', `YAML nesting deeper than ${maxDepth} levels`);
  const maxColumns = 8 * maxDepth;
  let flow = 0;
  // indentation and indicators count only while nothing else has been seen on the line
  let lineBound: number | undefined = 0;
  for (const token of new Lexer().lex(text)) {
    const type = CST.tokenType(token);
    if (type === 'flow-seq-start' || type === 'flow-map-start') {
      if (++flow > maxDepth) throw tooDeep();
    } else if (type === 'flow-seq-end' || type === 'flow-map-end') {
      flow = Math.max(0, flow - 1);
    }
    if (type === 'newline') lineBound = 0;
    else if (type === 'doc-mode' || type === 'byte-order-mark') continue;
    else if (lineBound === undefined || flow > 0) lineBound = undefined;
    else if (type === 'space') lineBound += token.length;
    else if (type === 'seq-item-ind' || type === 'explicit-key-ind' || type === 'map-value-ind') lineBound += 1;
    else lineBound = undefined;
    if (lineBound !== undefined && lineBound > maxColumns) throw tooDeep();
  }
}

/**
 * The library's duplicate-key check compares plain keys only: `&k From: a` then `*k : b` passes it and the
 * second value silently wins, and a collection used as a key is turned into a string that may equal
 * another key. A Placeholder Message needs neither, and `messageToYaml` never writes them, so anchors,
 * aliases and non-scalar keys are refused outright.
 */
function rejectYamlIndirection(doc: Document): void {
  const refuse = (what: string): never => {
    throw new ProtocolError('invalid_syntax', `not a Placeholder Message in YAML: ${what} are not allowed`);
  };
  visit(doc, {
    Alias: () => refuse('aliases'),
    Node: (_key, node) => {
      if (node.anchor !== undefined) refuse('anchors');
    },
    Pair: (_key, pair) => {
      if (!isScalar(pair.key)) refuse('keys that are not plain strings');
    },
  });
}

function depthExceeds(value: unknown, max: number): boolean {
  if (value === null || typeof value !== 'object') return false;
  if (max === 0) return true;
  for (const child of Object.values(value)) if (depthExceeds(child, max - 1)) return true;
  return false;
}

// RFC 5322 §3.6.8 field-name: printable US-ASCII except ":".
const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]+$/;
// Unfolded header text: no C0 controls but HTAB, no DEL (RFC 5322 §2.2, RFC 6532 for UTF-8).
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const FORBIDDEN_IN_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
// RFC 5322 §3.6.4 msg-id: "<" dot-atom-text "@" (dot-atom-text / no-fold-literal) ">", UTF-8 allowed (RFC 6532).
const ATOM = "[A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~\\u0080-\\u{10FFFF}]+";
const DOT_ATOM = `${ATOM}(?:\\.${ATOM})*`;
const MSG_ID = new RegExp(`^<${DOT_ATOM}@(?:${DOT_ATOM}|\\[[\\x21-\\x5a\\x5e-\\x7e]*\\])>$`, 'u');
/**
 * The headers the protocol defines, in their one spelling. RFC 5322 field names are case-insensitive,
 * so a `FROM` beside a `From` would be a second sender to one reader and an unknown header to another:
 * these names must be written exactly as here.
 */
const PROTOCOL_HEADERS: ReadonlyMap<string, string> = new Map(
  [
    ...SINGLETON_HEADERS,
    'Date',
    'Received',
    'Recipients-Digest',
    'Body-Digest',
    'JWT-Assertion-Digest',
    'Content-Type',
    'Content-ID',
    'Content-Disposition',
  ].map((name) => [name.toLowerCase(), name]),
);
const SINGLETONS: ReadonlySet<string> = new Set(SINGLETON_HEADERS);
const LEAF_REQUIRED = ['Content-Disposition', 'Content-ID', 'Content-Type'] as const;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

class Validator {
  private parts = 0;

  constructor(private readonly limits: ParseLimits) {}

  private fail(code: ProtocolErrorCode, path: string, rule: string): never {
    throw new ProtocolError(code, rule, { path });
  }

  private object(
    v: unknown,
    path: string,
    what: string,
    allowed: readonly string[],
    required: readonly string[],
  ): Record<string, unknown> {
    if (!isPlainObject(v)) this.fail('invalid_shape', path, `${what} must be a JSON object`);
    for (const key of Object.keys(v)) {
      if (!allowed.includes(key))
        this.fail('invalid_shape', path, `${what} has an unknown member ${JSON.stringify(key)}`);
    }
    for (const key of required) {
      if (!Object.hasOwn(v, key)) this.fail('invalid_shape', path, `${what} needs a member ${JSON.stringify(key)}`);
    }
    return v;
  }

  private array(v: unknown, path: string, what: string): unknown[] {
    if (!Array.isArray(v)) this.fail('invalid_shape', path, `${what} must be an array`);
    return v;
  }

  message(v: unknown): void {
    const m = this.object(v, '$', 'a message', ['envelope', 'body'], ['envelope', 'body']);
    this.envelope(m.envelope);
    this.body(m.body);
  }

  private envelope(v: unknown): void {
    const blocks = this.array(v, 'envelope', 'the envelope');
    if (blocks.length === 0) this.fail('invalid_shape', 'envelope', 'the envelope holds at least one block');
    if (blocks.length > this.limits.maxBlocks) {
      this.fail('too_many_blocks', 'envelope', `the envelope holds at most ${this.limits.maxBlocks} blocks`);
    }
    blocks.forEach((b, i) => this.block(b, `envelope[${i}]`));
  }

  private block(v: unknown, path: string): void {
    if (!isPlainObject(v) || Object.keys(v).length !== 1) {
      this.fail('invalid_shape', path, 'a block is an object with exactly one member, "headers" or "jwt-assertion"');
    }
    if (Object.hasOwn(v, 'jwt-assertion')) {
      const jws = v['jwt-assertion'];
      const at = `${path}.jwt-assertion`;
      if (typeof jws !== 'string') this.fail('invalid_shape', at, 'an assertion is a string');
      if (jws.length > this.limits.maxHeaderLength) {
        this.fail('header_too_long', at, `an assertion is at most ${this.limits.maxHeaderLength} characters`);
      }
      if (!COMPACT_JWS.test(jws))
        this.fail('invalid_shape', at, 'an assertion is a compact JWS: three base64url segments joined by "."');
      return;
    }
    if (!Object.hasOwn(v, 'headers')) {
      this.fail('invalid_shape', path, 'a block is an object with exactly one member, "headers" or "jwt-assertion"');
    }
    const headers = this.headers(v.headers, `${path}.headers`, 'envelope');
    if (headers.length === 0)
      this.fail('invalid_shape', `${path}.headers`, 'a headers block holds at least one header');
    this.envelopeHeaders(headers, `${path}.headers`);
  }

  private headers(v: unknown, path: string, where: 'envelope' | 'container' | 'leaf'): Header[] {
    const list = this.array(v, path, 'headers');
    if (list.length > this.limits.maxHeaders)
      this.fail('too_many_headers', path, `at most ${this.limits.maxHeaders} headers`);
    list.forEach((h, i) => this.header(h, `${path}[${i}]`, where));
    return list as Header[];
  }

  private header(v: unknown, path: string, where: 'envelope' | 'container' | 'leaf'): void {
    if (!isPlainObject(v)) this.fail('invalid_header', path, 'a header is a JSON object');
    const keys = Object.keys(v);
    if (keys.length !== 1) this.fail('invalid_header', path, 'a header object has exactly one key');
    const name = keys[0]!;
    if (!FIELD_NAME.test(name)) {
      this.fail(
        'invalid_header',
        path,
        `${JSON.stringify(name)} is not a header name (printable ASCII, no ":" or space)`,
      );
    }
    const canonical = PROTOCOL_HEADERS.get(name.toLowerCase());
    if (canonical !== undefined && canonical !== name) {
      this.fail('invalid_header', path, `the protocol header ${canonical} must be spelled exactly so, not ${name}`);
    }
    const value = v[name];
    if (Array.isArray(value)) {
      if (name !== 'Content-Type' || where !== 'leaf') {
        this.fail('invalid_header', path, `${name}: only the Content-Type of a leaf part has an array value`);
      }
      if (value.length !== 2)
        this.fail('invalid_content_type', path, 'Content-Type: the array has exactly two strings');
      value.forEach((item, i) => {
        if (typeof item !== 'string') this.fail('invalid_content_type', path, `Content-Type[${i}] must be a string`);
        this.text(name, item, path);
      });
      return;
    }
    if (typeof value !== 'string') this.fail('invalid_header', path, `${name}: a header value is a string`);
    this.text(name, value, path);
  }

  private text(name: string, value: string, path: string): void {
    if (name.length + value.length > this.limits.maxHeaderLength) {
      this.fail('header_too_long', path, `${name}: a header is at most ${this.limits.maxHeaderLength} characters`);
    }
    if (FORBIDDEN_IN_VALUE.test(value))
      this.fail('invalid_header', path, `${name}: control characters (CR, LF, NUL, ...) are not allowed`);
    if (!value.isWellFormed()) this.fail('invalid_encoding', path, `${name}: a lone UTF-16 surrogate is not text`);
  }

  /** The envelope rules of §3: singletons at most once, addresses and Message-ID well formed. */
  private envelopeHeaders(headers: Header[], path: string): void {
    const seen = new Set<string>();
    headers.forEach((h, i) => {
      const name = Object.keys(h)[0]!;
      const at = `${path}[${i}]`;
      if (SINGLETONS.has(name)) {
        if (seen.has(name)) this.fail('duplicate_header', at, `${name} appears more than once in a block`);
        seen.add(name);
      }
      const value = h[name] as string;
      try {
        if (name === 'From' || name === 'Forwarded-From') parseSingleMailbox(value);
        else if (name === 'To' || name === 'Cc' || name === 'Bcc' || name === 'Forwarded-To') parseAddressList(value);
      } catch (e) {
        this.fail('invalid_address', at, `${name}: ${(e as Error).message}`);
      }
      if (name === 'Message-ID' && !MSG_ID.test(value)) {
        this.fail('invalid_header', at, 'Message-ID must be an RFC 5322 msg-id such as <id@example.com>');
      }
      // §1: a date value is an RFC 5322 date-time: the whole `Date`, and what follows the last ";" of `Received`.
      if (name === 'Date' || name === 'Received') {
        const semicolon = value.lastIndexOf(';');
        if (name === 'Received' && semicolon < 0)
          this.fail('invalid_header', at, 'Received ends with "; " and the date it was received');
        try {
          parseDate(name === 'Date' ? value : value.slice(semicolon + 1).trim());
        } catch (e) {
          const why = (e as Error).message;
          this.fail('invalid_header', at, name === 'Date' ? why : why.replace(/^Date: /, 'Received: the date '));
        }
      }
    });
  }

  private body(v: unknown): void {
    const body = this.object(v, 'body', 'the body', ['parts'], ['parts']);
    const parts = this.array(body.parts, 'body.parts', 'the parts');
    parts.forEach((p, i) => this.part(p, `body.parts[${i}]`, 1));
  }

  private part(v: unknown, path: string, depth: number): void {
    if (depth > this.limits.maxDepth)
      this.fail('message_too_deep', path, `parts nest at most ${this.limits.maxDepth} levels`);
    if (++this.parts > this.limits.maxParts)
      this.fail('too_many_parts', path, `a body holds at most ${this.limits.maxParts} parts`);
    const part = this.object(v, path, 'a part', ['headers', 'parts'], ['headers']);
    const isLeaf = !Object.hasOwn(part, 'parts');
    const headers = this.headers(part.headers, `${path}.headers`, isLeaf ? 'leaf' : 'container');
    if (isLeaf) {
      this.leafHeaders(headers, `${path}.headers`);
      return;
    }
    const children = this.array(part.parts, `${path}.parts`, 'the parts');
    if (children.length === 0) this.fail('invalid_shape', `${path}.parts`, 'a multipart part holds at least one part');
    children.forEach((c, i) => this.part(c, `${path}.parts[${i}]`, depth + 1));
  }

  /** §2: a leaf references one External Resource through exactly these three headers. */
  private leafHeaders(headers: Header[], path: string): void {
    for (const name of LEAF_REQUIRED) {
      const at = headers.flatMap((h, i) => (Object.hasOwn(h, name) ? [i] : []));
      if (at.length === 0) this.fail('missing_header', path, `a leaf part needs a ${name} header`);
      if (at.length > 1) this.fail('duplicate_header', `${path}[${at[1]}]`, `${name} appears more than once in a part`);
      const i = at[0]!;
      const value = headers[i]![name]!;
      this.leafHeader(name, value, `${path}[${i}]`);
    }
  }

  private leafHeader(name: (typeof LEAF_REQUIRED)[number], value: string | readonly string[], path: string): void {
    if (name === 'Content-ID') {
      if (
        typeof value !== 'string' ||
        !(value.startsWith('<') && value.endsWith('>') && isB64uSha256(value.slice(1, -1)))
      ) {
        this.fail(
          'invalid_content_id',
          path,
          'Content-ID must be <B64U(SHA-256(resource))>: "<", 43 base64url characters, ">"',
        );
      }
    } else if (name === 'Content-Type') {
      if (typeof value === 'string') {
        this.fail(
          'invalid_content_type',
          path,
          'Content-Type of a leaf part is [external-body type, media type of the resource]',
        );
      }
      parseExternalBody(value[0]!, path);
      try {
        parseParameterized(value[1]!, true);
      } catch (e) {
        this.fail('invalid_content_type', path, `Content-Type[1]: ${(e as Error).message}`);
      }
    } else {
      let disposition: string;
      try {
        disposition = parseParameterized(value as string, false).value;
      } catch (e) {
        this.fail('invalid_content_disposition', path, `Content-Disposition: ${(e as Error).message}`);
      }
      if (disposition !== 'inline' && disposition !== 'attachment') {
        this.fail(
          'invalid_content_disposition',
          path,
          `Content-Disposition must be inline or attachment, not ${disposition}`,
        );
      }
    }
  }
}

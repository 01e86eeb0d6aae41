/** Just enough RFC 2045 / RFC 2183 to check the typed header values of a leaf part. */
import { ProtocolError } from './errors.js';

export interface ParsedMediaValue {
  /** Lower-cased `type/subtype`, or the disposition type. */
  readonly value: string;
  /** Parameter names lower-cased; values unquoted. */
  readonly params: ReadonlyMap<string, string>;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z{}]+/;

/**
 * Skips white space and RFC 822 comments (RFC 2045 §5.1: structured header fields may hold comments between
 * their tokens, `text/plain (Plain text); charset=utf-8`): parenthesized, nested, with backslash escapes.
 * A comment carries no meaning. Throws on one left open.
 */
function skipCfws(text: string): string {
  let rest = text.trimStart();
  while (rest[0] === '(') {
    let depth = 0;
    let i = 0;
    for (; i < rest.length; i++) {
      const c = rest[i];
      if (c === '\\') i++;
      else if (c === '(') depth++;
      else if (c === ')' && --depth === 0) break;
    }
    if (depth !== 0) throw new Error('a comment "(" is not closed');
    rest = rest.slice(i + 1).trimStart();
  }
  return rest;
}

/**
 * Parses `value *( ";" name "=" (token / quoted-string) )`, comments allowed between the tokens. With
 * `mediaType`, the value must be `type/subtype`. Throws a plain Error with the reason; callers wrap it with
 * their path and code.
 */
export function parseParameterized(text: string, mediaType: boolean): ParsedMediaValue {
  let rest = skipCfws(text);
  const head = rest.match(mediaType ? /^([!#$%&'*+\-.^_`|~0-9A-Za-z{}]+)\/([!#$%&'*+\-.^_`|~0-9A-Za-z{}]+)/ : TOKEN);
  if (!head) throw new Error(mediaType ? 'expected a media type "type/subtype"' : 'expected a disposition type');
  const value = head[0].toLowerCase();
  rest = rest.slice(head[0].length);
  const params = new Map<string, string>();
  for (;;) {
    rest = skipCfws(rest);
    if (rest === '') break;
    if (rest[0] !== ';') throw new Error(`expected ";" before ${JSON.stringify(rest.slice(0, 12))}`);
    rest = skipCfws(rest.slice(1));
    if (rest === '') break; // a trailing ";" is common and harmless
    const name = rest.match(TOKEN)?.[0];
    if (name === undefined) throw new Error('expected a parameter name');
    rest = skipCfws(rest.slice(name.length));
    if (rest[0] !== '=') throw new Error(`parameter ${name} has no "="`);
    rest = skipCfws(rest.slice(1));
    let paramValue: string;
    if (rest[0] === '"') {
      const m = rest.match(/^"((?:[^"\\]|\\[\s\S])*)"/);
      if (!m) throw new Error(`parameter ${name} has an unterminated quoted string`);
      paramValue = (m[1] ?? '').replace(/\\([\s\S])/g, '$1');
      rest = rest.slice(m[0].length);
    } else {
      const m = rest.match(TOKEN);
      if (!m) throw new Error(`parameter ${name} has no value`);
      paramValue = m[0];
      rest = rest.slice(m[0].length);
    }
    const key = name.toLowerCase();
    if (params.has(key)) throw new Error(`parameter ${name} appears twice`);
    params.set(key, paramValue);
  }
  return { value, params };
}

export const EXTERNAL_BODY = 'message/external-body';
export const ACCESS_TYPE = 'x-content-addressed-uri';

/** The declared size of an external-body Content-Type (first array element), validated. */
export function parseExternalBody(text: string, path: string): { size: number } {
  let parsed: ParsedMediaValue;
  try {
    parsed = parseParameterized(text, true);
  } catch (e) {
    throw new ProtocolError('invalid_content_type', `Content-Type[0]: ${(e as Error).message}`, { path });
  }
  const fail = (rule: string): never => {
    throw new ProtocolError('invalid_content_type', `Content-Type[0]: ${rule}`, { path });
  };
  if (parsed.value !== EXTERNAL_BODY) fail(`must be ${EXTERNAL_BODY}, not ${parsed.value}`);
  if (parsed.params.get('access-type')?.toLowerCase() !== ACCESS_TYPE) fail(`access-type must be "${ACCESS_TYPE}"`);
  if (parsed.params.get('hash-algorithm')?.toLowerCase() !== 'sha256') fail('hash-algorithm must be "sha256"');
  const size = parsed.params.get('size');
  if (size === undefined) fail('the size parameter is required');
  if (!/^(0|[1-9][0-9]{0,15})$/.test(size!) || !Number.isSafeInteger(Number(size))) {
    fail(`size must be a non-negative decimal integer, not ${JSON.stringify(size)}`);
  }
  return { size: Number(size) };
}

/** `["message/external-body; access-type=...; hash-algorithm=\"sha256\"; size=\"N\"", mediaType]`. */
export function externalContentType(size: number, mediaType: string): [string, string] {
  if (!Number.isSafeInteger(size) || size < 0) throw new TypeError(`size must be a non-negative integer: ${size}`);
  return [`${EXTERNAL_BODY}; access-type="${ACCESS_TYPE}"; hash-algorithm="sha256"; size="${size}"`, mediaType];
}

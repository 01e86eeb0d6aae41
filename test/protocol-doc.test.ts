/**
 * docs/protocol.md cannot drift from the code: every fenced block whose info string names a `federizer-<kind>`
 * is recomputed here with the reference library (and, for the vector messages, compared with the files of
 * test/vectors/), and every digest-shaped string anywhere in the document must stand in such a block.
 *
 * Kinds and what they hold (the info string is `<lang> federizer-<kind> name=<name> [attr=value ...]`):
 * - message     a Placeholder Message (json or yaml); `vector=F` equals test/vectors/F.message.json,
 *               `equals=N` equals the message block N; its digests, links and signatures must hold
 * - digests     `digestReport` of the message block of the same name
 * - eht         {"headers", "jcs"?, "eht"}; `message=N block=I`: the headers are the ehl headers of that block
 * - jcs         {"value", "jcs", "digest"}; `message=N block=I of=recipients` or `message=N of=body`
 * - assertion   {"header", "claims", "digest"} of `envelope[index]` of the message block `name`
 * - date        [{"unix", "offsetMinutes", "date"}]
 * - content-id  {"text", "size", "mediaType", "contentId", "reprDigest"}; `message=N`: a leaf of N references it
 * - jkt         {"jwk", "input", "jkt"} (RFC 7638); `key=K`: the public part of keys.json K
 * - jwks        {"keys"}; `key=K` as above; must verify at least one assertion of the document
 * - ath         {"access_token", "ath"} (RFC 9449)
 * - invalid     a message that parseMessage refuses with `code=C` (and at `path=P` when given)
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { JWK } from 'jose';
import { describe, expect, it } from 'vitest';
import {
  FORWARD_EHL,
  ORIGIN_EHL,
  accessTokenHash,
  assertionDigest,
  blockKind,
  bodyDigest,
  contentId,
  decodeJwt,
  digestHeaderValue,
  digestReport,
  eht,
  externalContentType,
  findHeader,
  formatDate,
  headerName,
  isAssertionBlock,
  isHeadersBlock,
  isProtocolError,
  jcs,
  jwkThumbprint,
  keyFromJwks,
  parseDate,
  parseMessage,
  recipientHeaders,
  transmittedEnvelope,
  validateChain,
  verifySignature,
  type Header,
  type JwsAlg,
  type Message,
  type Part,
} from '@federizer/protocol';
import { vectorTrust } from './vectors/build.js';

const DOC_URL = new URL('../docs/protocol.md', import.meta.url);
const VECTOR_DIR = new URL('./vectors/', import.meta.url);

const KINDS = [
  'message',
  'digests',
  'eht',
  'jcs',
  'assertion',
  'date',
  'content-id',
  'jkt',
  'jwks',
  'ath',
  'invalid',
] as const;
type Kind = (typeof KINDS)[number];

/** A 43-character base64url run not part of a longer one: what `B64U(H(x))` looks like. */
const DIGEST_LIKE = /(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])/g;

interface Fence {
  readonly info: string;
  readonly text: string;
  /** 1-based line of the opening fence. */
  readonly line: number;
}

interface DocBlock extends Fence {
  readonly kind: string;
  readonly lang: string;
  readonly attrs: Readonly<Record<string, string>>;
  /** What failures are reported under, e.g. `federizer-message name=draft (line 120)`. */
  readonly label: string;
}

/** CommonMark fenced code blocks (``` or ~~~, indented at most 3 spaces), with their info strings. */
function fences(markdown: string): Fence[] {
  const lines = markdown.split(/\r?\n/);
  const found: Fence[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^( {0,3})(`{3,}|~{3,})(.*)$/.exec(lines[i]!);
    if (!open) continue;
    const [, indent = '', fence = '', info = ''] = open;
    if (fence.startsWith('`') && info.includes('`')) continue;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const close = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(lines[j]!);
      if (close && close[1]![0] === fence[0] && close[1]!.length >= fence.length) break;
      body.push(lines[j]!.replace(new RegExp(`^ {0,${indent.length}}`), ''));
    }
    found.push({ info: info.trim(), text: body.join('\n'), line: i + 1 });
    i = j;
  }
  return found;
}

function checkedBlocks(markdown: string): DocBlock[] {
  return fences(markdown).flatMap((fence) => {
    const words = fence.info.split(/\s+/).filter((w) => w !== '');
    const kindWord = words.find((w) => w.startsWith('federizer-'));
    if (kindWord === undefined) return [];
    const attrs: Record<string, string> = {};
    for (const w of words) {
      const eq = w.indexOf('=');
      if (eq > 0) attrs[w.slice(0, eq)] = w.slice(eq + 1);
    }
    const kind = kindWord.slice('federizer-'.length);
    const label = `${kindWord}${attrs.name === undefined ? '' : ` name=${attrs.name}`}${
      attrs.index === undefined ? '' : ` index=${attrs.index}`
    } (line ${fence.line})`;
    return [{ ...fence, kind, lang: words[0] ?? '', attrs, label }];
  });
}

const docExists = existsSync(DOC_URL);
const markdown = docExists ? readFileSync(DOC_URL, 'utf8') : '';
const blocks = checkedBlocks(markdown);
const ofKind = (kind: Kind) => blocks.filter((b) => b.kind === kind);

// ---------------------------------------------------------------------------------------------------
// Helpers

function json<T>(block: DocBlock): T {
  try {
    return JSON.parse(block.text) as T;
  } catch (e) {
    throw new Error(`${block.label}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

function attr(block: DocBlock, name: string): string {
  const value = block.attrs[name];
  if (value === undefined) throw new Error(`${block.label}: the info string needs ${name}=...`);
  return value;
}

function formatOf(block: DocBlock): 'json' | 'yaml' {
  return block.lang === 'yaml' || block.lang === 'yml' ? 'yaml' : 'json';
}

const messageCache = new Map<string, Message>();

/** The message of the `federizer-message` block of that name, parsed by the library. */
function messageNamed(name: string, from: DocBlock): Message {
  const cached = messageCache.get(name);
  if (cached !== undefined) return cached;
  const found = ofKind('message').filter((b) => b.attrs.name === name);
  if (found.length !== 1) throw new Error(`${from.label}: ${found.length} federizer-message blocks named ${name}`);
  const block = found[0]!;
  let message: Message;
  try {
    message = parseMessage(block.text, { format: formatOf(block) });
  } catch (e) {
    throw new Error(`${block.label}: the library refuses it: ${(e as Error).message}`, { cause: e });
  }
  messageCache.set(name, message);
  return message;
}

function readVector(file: string): unknown {
  return JSON.parse(readFileSync(new URL(file, VECTOR_DIR), 'utf8')) as unknown;
}

interface ExpectedVector {
  digest: unknown;
  assertions: { index: number; digest: string; header: unknown; claims: unknown }[];
}

function expectedFor(name: string, from: DocBlock): ExpectedVector | undefined {
  const block = ofKind('message').find((b) => b.attrs.name === name);
  const vector = block?.attrs.vector;
  if (vector === undefined) return undefined;
  expect(existsSync(new URL(`${vector}.expected.json`, VECTOR_DIR)), `${from.label}: ${vector}.expected.json`).toBe(
    true,
  );
  return readVector(`${vector}.expected.json`) as ExpectedVector;
}

function headersAt(message: Message, index: number, block: DocBlock): readonly Header[] {
  const b = message.envelope[index];
  if (b === undefined || !isHeadersBlock(b))
    throw new Error(`${block.label}: envelope[${index}] is not a headers block`);
  return b.headers;
}

function assertionAt(message: Message, index: number, block: DocBlock): string {
  const b = message.envelope[index];
  if (b === undefined || !isAssertionBlock(b))
    throw new Error(`${block.label}: envelope[${index}] is not an assertion`);
  return b['jwt-assertion'];
}

function ehlFor(kind: 'origin' | 'forward'): readonly string[] {
  return kind === 'origin' ? ORIGIN_EHL : FORWARD_EHL;
}

function sha256(data: string): Buffer {
  return createHash('sha256').update(data).digest();
}

function publicKey(name: string, block: DocBlock): JWK {
  const keys = readVector('keys.json') as Record<string, JWK>;
  const key = keys[name];
  if (key === undefined) throw new Error(`${block.label}: keys.json has no key ${name}`);
  const { d: _d, ...pub } = key;
  return pub;
}

function leaves(parts: readonly Part[]): Part[] {
  return parts.flatMap((p) => (p.parts === undefined ? [p] : leaves(p.parts)));
}

/** Every assertion of every message block of the document, with the block it stands in. */
function documentAssertions(from: DocBlock): { token: string; message: string }[] {
  return ofKind('message').flatMap((b) => {
    const name = attr(b, 'name');
    return messageNamed(name, from).envelope.flatMap((block) =>
      isAssertionBlock(block) ? [{ token: block['jwt-assertion'], message: name }] : [],
    );
  });
}

// ---------------------------------------------------------------------------------------------------
// One check per kind

async function checkMessage(block: DocBlock): Promise<void> {
  const name = attr(block, 'name');
  const message = messageNamed(name, block);
  if (block.attrs.vector !== undefined) {
    expect(message, `${block.label}: differs from test/vectors/${block.attrs.vector}.message.json`).toEqual(
      readVector(`${block.attrs.vector}.message.json`),
    );
  }
  if (block.attrs.equals !== undefined) {
    expect(message, `${block.label}: differs from the message ${block.attrs.equals}`).toEqual(
      messageNamed(block.attrs.equals, block),
    );
  }
  // The digests a message holds are the ones its content gives.
  const report = digestReport(message);
  for (const b of report.blocks) {
    const headers = headersAt(message, b.index, block);
    const at = `${block.label}: envelope[${b.index}]`;
    const declared = findHeader(headers, 'Recipients-Digest')?.['Recipients-Digest'];
    if (declared !== undefined) expect(declared, `${at} Recipients-Digest`).toBe(b.recipientsDigest);
    const body = findHeader(headers, 'Body-Digest')?.['Body-Digest'];
    if (body !== undefined) expect(body, `${at} Body-Digest`).toBe(report.bodyDigest);
    const above = message.envelope[b.index - 1];
    if (above !== undefined && isAssertionBlock(above)) {
      const eh = (decodeJwt(above['jwt-assertion']).payload as { eh?: { eht?: string; ehl?: string[] } }).eh;
      expect(eh?.eht, `${at}: the eht of the assertion above`).toBe(b.eht);
      expect(eh?.ehl, `${at}: the ehl of the assertion above`).toEqual(b.ehl);
    }
  }
  message.envelope.forEach((b, i) => {
    if (!isHeadersBlock(b)) return;
    const link = findHeader(b.headers, 'JWT-Assertion-Digest')?.['JWT-Assertion-Digest'];
    if (link === undefined) return;
    expect(link, `${block.label}: envelope[${i}] JWT-Assertion-Digest names the assertion below it`).toBe(
      assertionDigest(assertionAt(message, i + 1, block)),
    );
  });
  // A signed message validates as a chain, at transfer and at fetch, against the vector keys.
  const tokens = message.envelope.filter(isAssertionBlock).map((b) => b['jwt-assertion']);
  if (tokens.length > 0) {
    const now = Math.max(...tokens.map((t) => Number(decodeJwt(t).payload.iat))) + 60;
    const envelope = transmittedEnvelope(message);
    for (const mode of ['transfer', 'fetch'] as const) {
      try {
        const chain = await validateChain(envelope, {
          trust: vectorTrust(),
          now,
          mode,
          ...(mode === 'transfer' ? { body: message.body } : {}),
        });
        expect(chain.hops.length, `${block.label}: hops`).toBe(tokens.length);
      } catch (e) {
        throw new Error(`${block.label}: the chain does not validate (${mode}): ${(e as Error).message}`, {
          cause: e,
        });
      }
    }
  }
}

function checkDigests(block: DocBlock): void {
  const name = attr(block, 'name');
  const report = digestReport(messageNamed(name, block));
  expect(json(block), `${block.label}: digestReport of the message ${name}`).toEqual(report);
  const expected = expectedFor(name, block);
  if (expected !== undefined) expect(report, `${block.label}: the vector's expected digest`).toEqual(expected.digest);
}

function checkEht(block: DocBlock): void {
  const value = json<{ headers: Header[]; jcs?: string; eht: string }>(block);
  const names = value.headers.map((h) => headerName(h));
  expect([ORIGIN_EHL, FORWARD_EHL], `${block.label}: the header names are an ehl`).toContainEqual(names);
  expect(eht(value.headers, names), `${block.label}: eht`).toBe(value.eht);
  expect(value.eht, `${block.label}: eht is B64U(H(JCS(headers)))`).toBe(
    sha256(jcs(value.headers).toString()).toString('base64url'),
  );
  if (value.jcs !== undefined) expect(jcs(value.headers).toString(), `${block.label}: jcs`).toBe(value.jcs);
  if (block.attrs.message !== undefined) {
    const message = messageNamed(block.attrs.message, block);
    const index = Number(attr(block, 'block'));
    const headers = headersAt(message, index, block);
    const kind = blockKind(headers);
    expect(kind, `${block.label}: envelope[${index}] is an origin or forward block`).toBeDefined();
    expect(names, `${block.label}: the ehl of the block's kind`).toEqual(ehlFor(kind!));
    const picked = names.map((n) => ({ [n]: findHeader(headers, n)?.[n] }));
    expect(value.headers, `${block.label}: the ehl headers of envelope[${index}]`).toEqual(picked);
    const reported = digestReport(message).blocks.find((b) => b.index === index);
    expect(reported?.eht, `${block.label}: the digest report's eht`).toBe(value.eht);
  }
}

function checkJcs(block: DocBlock): void {
  const value = json<{ value: unknown; jcs: string; digest: string }>(block);
  expect(jcs(value.value).toString(), `${block.label}: jcs`).toBe(value.jcs);
  expect(digestHeaderValue(jcs(value.value)), `${block.label}: digest`).toBe(value.digest);
  const of = block.attrs.of;
  if (of === 'recipients') {
    const message = messageNamed(attr(block, 'message'), block);
    const index = Number(attr(block, 'block'));
    const headers = headersAt(message, index, block);
    const kind = blockKind(headers);
    expect(kind, `${block.label}: envelope[${index}] is an origin or forward block`).toBeDefined();
    expect(value.value, `${block.label}: the recipient headers of envelope[${index}]`).toEqual(
      recipientHeaders(headers, kind!),
    );
    const declared = findHeader(headers, 'Recipients-Digest')?.['Recipients-Digest'];
    if (declared !== undefined) expect(value.digest, `${block.label}: the block's Recipients-Digest`).toBe(declared);
  } else if (of === 'body') {
    const message = messageNamed(attr(block, 'message'), block);
    expect(value.value, `${block.label}: the body of ${block.attrs.message}`).toEqual(message.body);
    expect(value.digest, `${block.label}: Body-Digest`).toBe(bodyDigest(message.body));
  } else if (of !== undefined) {
    throw new Error(`${block.label}: unknown of=${of}`);
  }
}

function checkAssertion(block: DocBlock): void {
  const name = attr(block, 'name');
  const index = Number(attr(block, 'index'));
  const token = assertionAt(messageNamed(name, block), index, block);
  const value = json<{ header: unknown; claims: unknown; digest: string }>(block);
  const decoded = decodeJwt(token);
  expect(value.header, `${block.label}: JOSE header`).toEqual(decoded.header);
  expect(value.claims, `${block.label}: claims`).toEqual(decoded.payload);
  expect(value.digest, `${block.label}: JWT-Assertion-Digest`).toBe(assertionDigest(token));
  const expected = expectedFor(name, block);
  if (expected !== undefined) {
    const facts = expected.assertions.find((a) => a.index === index);
    expect(facts, `${block.label}: the vector lists this assertion`).toBeDefined();
    expect(value, `${block.label}: the vector's expected assertion`).toEqual({
      header: facts!.header,
      claims: facts!.claims,
      digest: facts!.digest,
    });
  }
}

function checkDate(block: DocBlock): void {
  const value = json<{ unix: number; offsetMinutes: number; date: string }[]>(block);
  expect(value.length, `${block.label}: at least one date`).toBeGreaterThan(0);
  for (const d of value) {
    expect(formatDate(new Date(d.unix * 1000), d.offsetMinutes), `${block.label}: ${d.unix}`).toBe(d.date);
    expect(parseDate(d.date).getTime(), `${block.label}: ${d.date}`).toBe(d.unix * 1000);
  }
}

function checkContentId(block: DocBlock): void {
  const value = json<{ text: string; size: number; mediaType: string; contentId: string; reprDigest: string }>(block);
  expect(value.contentId, `${block.label}: Content-ID`).toBe(contentId(value.text));
  expect(value.size, `${block.label}: size`).toBe(Buffer.byteLength(value.text, 'utf8'));
  expect(value.reprDigest, `${block.label}: Repr-Digest`).toBe(`sha-256=:${sha256(value.text).toString('base64')}:`);
  if (block.attrs.message !== undefined) {
    const message = messageNamed(block.attrs.message, block);
    const leaf = leaves(message.body.parts).find(
      (p) => findHeader(p.headers, 'Content-ID')?.['Content-ID'] === value.contentId,
    );
    expect(leaf, `${block.label}: a leaf of ${block.attrs.message} references it`).toBeDefined();
    expect(findHeader(leaf!.headers, 'Content-Type')?.['Content-Type'], `${block.label}: Content-Type`).toEqual(
      externalContentType(value.size, value.mediaType),
    );
  }
}

const THUMBPRINT_MEMBERS: Record<string, readonly string[]> = {
  EC: ['crv', 'kty', 'x', 'y'],
  OKP: ['crv', 'kty', 'x'],
  RSA: ['e', 'kty', 'n'],
};

async function checkJkt(block: DocBlock): Promise<void> {
  const value = json<{ jwk: JWK; input: string; jkt: string }>(block);
  if (block.attrs.key !== undefined) {
    expect(value.jwk, `${block.label}: keys.json ${block.attrs.key}`).toEqual(publicKey(block.attrs.key, block));
  }
  const members = THUMBPRINT_MEMBERS[value.jwk.kty ?? ''] ?? [];
  const input = JSON.stringify(Object.fromEntries(members.map((m) => [m, (value.jwk as Record<string, unknown>)[m]])));
  expect(value.input, `${block.label}: RFC 7638 input`).toBe(input);
  expect(value.jkt, `${block.label}: B64U(H(input))`).toBe(sha256(input).toString('base64url'));
  expect(value.jkt, `${block.label}: jwkThumbprint`).toBe(await jwkThumbprint(value.jwk));
  const bound = documentAssertions(block).filter(
    (a) => (decodeJwt(a.token).payload as { cnf?: { jkt?: string } }).cnf?.jkt === value.jkt,
  );
  expect(bound.length, `${block.label}: an assertion of the document is bound to this key`).toBeGreaterThan(0);
}

async function checkJwks(block: DocBlock): Promise<void> {
  const value = json<{ keys: JWK[] }>(block);
  if (block.attrs.key !== undefined) {
    expect(value.keys, `${block.label}: keys.json ${block.attrs.key}`).toEqual([publicKey(block.attrs.key, block)]);
  }
  const kids = new Set(value.keys.map((k) => k.kid));
  let verified = 0;
  for (const { token, message } of documentAssertions(block)) {
    const { header } = decodeJwt(token);
    if (!kids.has(header.kid)) continue;
    try {
      await verifySignature(token, await keyFromJwks(value, header), header.alg as JwsAlg);
    } catch (e) {
      throw new Error(`${block.label}: does not verify an assertion of ${message}: ${(e as Error).message}`, {
        cause: e,
      });
    }
    verified++;
  }
  expect(verified, `${block.label}: verifies at least one assertion of the document`).toBeGreaterThan(0);
}

function checkAth(block: DocBlock): void {
  const value = json<{ access_token: string; ath: string }>(block);
  expect(value.ath, `${block.label}: ath`).toBe(accessTokenHash(value.access_token));
}

function checkInvalid(block: DocBlock): void {
  const code = attr(block, 'code');
  let error: unknown;
  try {
    parseMessage(block.text, { format: formatOf(block) });
  } catch (e) {
    error = e;
  }
  expect(isProtocolError(error), `${block.label}: the library must refuse it`).toBe(true);
  if (!isProtocolError(error)) return;
  expect(error.code, `${block.label}: code (${error.message})`).toBe(code);
  if (block.attrs.path !== undefined) expect(error.path, `${block.label}: path`).toBe(block.attrs.path);
}

const CHECKS: Record<Kind, (block: DocBlock) => void | Promise<void>> = {
  message: checkMessage,
  digests: checkDigests,
  eht: checkEht,
  jcs: checkJcs,
  assertion: checkAssertion,
  date: checkDate,
  'content-id': checkContentId,
  jkt: checkJkt,
  jwks: checkJwks,
  ath: checkAth,
  invalid: checkInvalid,
};

// ---------------------------------------------------------------------------------------------------

describe('docs/protocol.md', () => {
  it('exists', () => {
    expect(docExists, 'docs/protocol.md is missing').toBe(true);
  });

  it.each(KINDS)('has at least one checked federizer-%s block', (kind) => {
    expect(ofKind(kind).length, `no federizer-${kind} block in docs/protocol.md`).toBeGreaterThan(0);
  });

  it('names only known kinds, and every checked block has a unique name', () => {
    for (const b of blocks) {
      expect(KINDS as readonly string[], `${b.label}: unknown kind federizer-${b.kind}`).toContain(b.kind);
      expect(b.attrs.name, `${b.label}: needs name=...`).toBeDefined();
    }
    const seen = new Map<string, DocBlock>();
    for (const b of blocks) {
      const key = `${b.kind} ${b.attrs.name} ${b.attrs.index ?? ''}`;
      const other = seen.get(key);
      expect(other, `${b.label}: the same name as ${other?.label}`).toBeUndefined();
      seen.set(key, b);
    }
  });

  it.each(blocks.filter((b) => (KINDS as readonly string[]).includes(b.kind)).map((b) => [b.label, b] as const))(
    '%s',
    async (_label, block) => {
      await CHECKS[block.kind as Kind](block);
    },
  );

  it('holds no digest-shaped string outside the checked blocks', () => {
    const checked = new Set(blocks.filter((b) => b.kind !== 'invalid').flatMap((b) => b.text.match(DIGEST_LIKE) ?? []));
    const unchecked = markdown
      .split('\n')
      .flatMap((line, i) =>
        (line.match(DIGEST_LIKE) ?? []).filter((s) => !checked.has(s)).map((s) => `line ${i + 1}: ${s}`),
      );
    expect(unchecked, 'digest-shaped strings that no checked block holds or recomputes').toEqual([]);
  });
});

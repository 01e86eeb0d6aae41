/**
 * Test helper: checks HTTP answers (and request bodies) against an OpenAPI 3.1 document, so the tests of a
 * service prove that what it says on the wire is what its document promises. The operation is found by
 * matching the concrete path against the path templates (literal segments win over `{parameters}`), the
 * response by status (exact, then `4XX`-style ranges, then `default`), the media type by content type; the
 * body is validated with Ajv's JSON Schema 2020-12 (the dialect of OpenAPI 3.1) and ajv-formats. Every
 * `$ref` into `#/components/schemas` resolves; validators are compiled once per document and schema.
 * An undocumented path, method, status or content type is an error, like a body that breaks its schema.
 */
import { readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import formats from 'ajv-formats';

// ajv-formats is CommonJS: under `nodenext` its default import is the module object, whose `default` is the plugin.
const addFormats = formats.default;

/** The parts of an OpenAPI 3.1 document this helper reads; everything else is kept as is. */
export interface OpenApiDocument {
  readonly openapi: string;
  readonly info: { readonly title: string; readonly version: string; readonly [key: string]: unknown };
  readonly servers?: readonly { readonly url: string; readonly [key: string]: unknown }[];
  readonly paths?: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  readonly components?: {
    readonly schemas?: Readonly<Record<string, unknown>>;
    readonly [key: string]: unknown;
  };
  readonly [key: string]: unknown;
}

export type HeaderBag = Headers | Readonly<Record<string, string | readonly string[] | number | undefined>>;

export interface ResponseUnderTest {
  readonly method: string;
  /** The concrete path as sent, e.g. `/admin/v1/users/alice%40example.com` (a query string or full URL is fine). */
  readonly path: string;
  readonly status: number;
  /** The Content-Type of the answer (parameters such as `charset` are ignored); null or absent when there is none. */
  readonly contentType?: string | null;
  /** The parsed JSON body, or the text (JSON text is parsed for JSON media types); absent when there is none. */
  readonly body?: unknown;
  /** When given, the headers the document marks `required` must be present and match their schemas. */
  readonly headers?: HeaderBag;
}

export interface RequestUnderTest {
  readonly method: string;
  readonly path: string;
  readonly contentType?: string | null;
  /** JSON (parsed or text), or a form body as text, `URLSearchParams` or a plain object. */
  readonly body?: unknown;
  /** When given, the required header parameters of the operation must be present and match their schemas. */
  readonly headers?: HeaderBag;
}

/** Thrown for an answer or request the document does not describe; `violations` lists each problem. */
export class OpenApiValidationError extends Error {
  override readonly name = 'OpenApiValidationError';
  constructor(
    readonly operation: string,
    readonly violations: readonly string[],
  ) {
    super(`${operation}:\n${violations.map((v) => `  - ${v}`).join('\n')}`);
  }
}

export interface OperationMatch {
  /** The path template that matched, e.g. `/admin/v1/users/{address}`. */
  readonly template: string;
  readonly method: string;
  readonly operation: Readonly<Record<string, unknown>>;
  /** JSON pointer of the operation in the document. */
  readonly pointer: string;
  /** The decoded values of the template's parameters. */
  readonly params: Readonly<Record<string, string>>;
}

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;
/** OpenAPI 3.1 dialect keywords that JSON Schema does not know: annotations, nothing to validate. */
const OPENAPI_KEYWORDS = ['discriminator', 'xml', 'externalDocs', 'example'];
/** The `$id` under which a document's `components.schemas` are registered (as `$defs`) in its Ajv instance. */
const COMPONENTS_ID = 'https://openapi.invalid/components.json';

const loaded = new Map<string, { readonly mtimeMs: number; readonly doc: OpenApiDocument }>();

/**
 * Reads an OpenAPI 3.1 document. The same file (unchanged since) gives the same object, so the validators
 * compiled for it are shared by every test of a file that loads it.
 */
export function loadOpenApi(path: string | URL): OpenApiDocument {
  const file = path instanceof URL ? fileURLToPath(path) : resolve(path);
  const { mtimeMs } = statSync(file);
  const hit = loaded.get(file);
  if (hit !== undefined && hit.mtimeMs === mtimeMs) return hit.doc;
  const doc = JSON.parse(readFileSync(file, 'utf8')) as OpenApiDocument;
  if (typeof doc.openapi !== 'string' || !/^3\.1\.\d+/.test(doc.openapi)) {
    throw new Error(`${file} is not an OpenAPI 3.1 document (openapi: ${JSON.stringify(doc.openapi)})`);
  }
  loaded.set(file, { mtimeMs, doc });
  return doc;
}

// ---- JSON pointers and references --------------------------------------------------------------------------

const escapePointer = (token: string) => token.replace(/~/g, '~0').replace(/\//g, '~1');

function pointerOf(...tokens: string[]): string {
  return `#/${tokens.map(escapePointer).join('/')}`;
}

/** The value at a local JSON pointer (`#/components/schemas/User`), or undefined. */
export function resolvePointer(doc: OpenApiDocument, pointer: string): unknown {
  if (!pointer.startsWith('#')) return undefined;
  const fragment = decodeURIComponent(pointer.slice(1));
  if (fragment === '') return doc;
  if (!fragment.startsWith('/')) return undefined;
  let node: unknown = doc;
  for (const raw of fragment.slice(1).split('/')) {
    const token = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (node === null || typeof node !== 'object' || !Object.hasOwn(node, token)) return undefined;
    node = (node as Record<string, unknown>)[token];
  }
  return node;
}

/** Follows `$ref`s of Reference Objects (responses, headers, parameters, ...) to the object and its pointer. */
function deref(doc: OpenApiDocument, value: unknown, pointer: string): { value: unknown; pointer: string } {
  const seen = new Set<string>();
  let current = { value, pointer };
  while (isObject(current.value) && typeof current.value.$ref === 'string') {
    const target = current.value.$ref;
    if (seen.has(target)) throw new Error(`a $ref cycle through ${target}`);
    seen.add(target);
    const next = resolvePointer(doc, target);
    if (next === undefined) throw new Error(`${current.pointer}: $ref ${target} does not resolve`);
    current = { value: next, pointer: target };
  }
  return current;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

// ---- Ajv, one instance per document, validators cached by schema pointer ------------------------------------

interface Compiled {
  readonly ajv: Ajv2020;
  readonly validators: Map<string, ValidateFunction>;
}

const compiled = new WeakMap<OpenApiDocument, Compiled>();

/** Skipped when rewriting `$ref`s: their values are data, not schemas. */
const DATA_KEYWORDS = new Set(['const', 'enum', 'default', 'examples', 'example']);

/**
 * A copy of a schema for Ajv: `#/components/schemas/X` becomes a reference into the registered components,
 * and specification extensions (`x-...`), which JSON Schema does not know, are dropped.
 */
function forAjv(schema: unknown, where: string): unknown {
  if (Array.isArray(schema)) return schema.map((s) => forAjv(s, where));
  if (!isObject(schema)) return schema;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(schema)) {
    if (key.startsWith('x-')) continue;
    if (key === '$ref' && typeof value === 'string') {
      if (!value.startsWith('#/components/schemas/')) {
        throw new Error(`${where}: only $refs into #/components/schemas are supported in schemas, not ${value}`);
      }
      out[key] = `${COMPONENTS_ID}#/$defs/${value.slice('#/components/schemas/'.length)}`;
    } else if (DATA_KEYWORDS.has(key)) {
      out[key] = value;
    } else {
      out[key] = forAjv(value, where);
    }
  }
  return out;
}

function compiledFor(doc: OpenApiDocument): Compiled {
  let entry = compiled.get(doc);
  if (entry === undefined) {
    const ajv = new Ajv2020({ allErrors: true, strictTypes: false, strictTuples: false, strictRequired: false });
    addFormats(ajv);
    ajv.addVocabulary(OPENAPI_KEYWORDS);
    const defs: Record<string, unknown> = {};
    for (const [name, schema] of Object.entries(doc.components?.schemas ?? {})) {
      defs[name] = forAjv(schema, pointerOf('components', 'schemas', name));
    }
    ajv.addSchema({ $id: COMPONENTS_ID, $defs: defs });
    entry = { ajv, validators: new Map() };
    compiled.set(doc, entry);
  }
  return entry;
}

/**
 * The compiled validator of the schema at `pointer` (e.g. `#/components/schemas/User`, or the `schema` of a
 * media type), compiled on first use and cached with the document.
 */
export function schemaValidator(doc: OpenApiDocument, pointer: string): ValidateFunction {
  const entry = compiledFor(doc);
  let validate = entry.validators.get(pointer);
  if (validate === undefined) {
    const schema = resolvePointer(doc, pointer);
    if (schema === undefined) throw new Error(`no schema at ${pointer}`);
    if (pointer.startsWith('#/components/schemas/')) {
      validate = entry.ajv.getSchema(`${COMPONENTS_ID}#/$defs/${pointer.slice('#/components/schemas/'.length)}`);
      if (validate === undefined) throw new Error(`no schema at ${pointer}`);
    } else {
      validate = entry.ajv.compile(forAjv(schema, pointer) as object);
    }
    entry.validators.set(pointer, validate);
  }
  return validate;
}

function describeErrors(errors: readonly ErrorObject[] | null | undefined, what: string): string[] {
  return (errors ?? []).map((e) => {
    const at = `${what}${e.instancePath}`;
    const detail =
      e.keyword === 'additionalProperties'
        ? ` (${String((e.params as { additionalProperty: string }).additionalProperty)})`
        : e.keyword === 'enum'
          ? ` (${JSON.stringify((e.params as { allowedValues: unknown }).allowedValues)})`
          : e.keyword === 'const'
            ? ` (${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)})`
            : '';
    return `${at} ${e.message ?? e.keyword}${detail}`;
  });
}

// ---- finding operations, responses and media types ----------------------------------------------------------

function pathname(path: string): string {
  const withoutOrigin = /^[a-z][a-z0-9+.-]*:\/\//i.test(path) ? new URL(path).pathname : path;
  return withoutOrigin.replace(/[?#].*$/, '');
}

function matchTemplate(template: string, path: string): Record<string, string> | undefined {
  const want = template.split('/');
  const got = path.split('/');
  if (want.length !== got.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i++) {
    const w = want[i]!;
    const g = got[i]!;
    const m = /^\{([^}]+)\}$/.exec(w);
    if (m) {
      if (g === '') return undefined;
      params[m[1]!] = safeDecode(g);
    } else if (safeDecode(w) !== safeDecode(g)) {
      return undefined;
    }
  }
  return params;
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** The server paths the document is served under (`servers[].url`), longest first, so they can be stripped. */
function serverPrefixes(doc: OpenApiDocument): string[] {
  const prefixes = new Set<string>(['']);
  for (const server of doc.servers ?? []) {
    try {
      const p = new URL(server.url, 'http://relative.invalid').pathname.replace(/\/$/, '');
      prefixes.add(p);
    } catch {
      // A templated server URL: ignored.
    }
  }
  return [...prefixes].sort((a, b) => b.length - a.length);
}

/** The operation for a method and a concrete path; throws when the document has none. */
export function findOperation(doc: OpenApiDocument, method: string, path: string): OperationMatch {
  const verb = method.toLowerCase();
  const concrete = pathname(path);
  const label = `${method.toUpperCase()} ${concrete}`;
  const candidates: { template: string; params: Record<string, string>; literals: number }[] = [];
  for (const prefix of serverPrefixes(doc)) {
    if (prefix !== '' && !concrete.startsWith(`${prefix}/`)) continue;
    const rest = concrete.slice(prefix.length);
    for (const template of Object.keys(doc.paths ?? {})) {
      const params = matchTemplate(template, rest);
      if (params === undefined) continue;
      candidates.push({ template, params, literals: template.split('/').filter((s) => !s.startsWith('{')).length });
    }
    if (candidates.length > 0) break;
  }
  if (candidates.length === 0) throw new OpenApiValidationError(label, ['no path of the document matches']);
  // OpenAPI 3.1 §4.8.8: concrete (literal) paths are matched before templated ones.
  candidates.sort((a, b) => b.literals - a.literals);
  const tried: string[] = [];
  for (const { template, params } of candidates) {
    const item = deref(doc, doc.paths![template], pointerOf('paths', template)).value;
    if (isObject(item) && isObject(item[verb])) {
      return {
        template,
        method: verb,
        operation: item[verb],
        pointer: pointerOf('paths', template, verb),
        params,
      };
    }
    tried.push(template);
  }
  const allowed = candidates.flatMap(({ template }) => {
    const item = deref(doc, doc.paths![template], pointerOf('paths', template)).value;
    return isObject(item) ? METHODS.filter((m) => isObject(item[m])).map((m) => m.toUpperCase()) : [];
  });
  throw new OpenApiValidationError(label, [
    `${tried.join(', ')} documents no ${method.toUpperCase()} (documented: ${allowed.join(', ') || 'none'})`,
  ]);
}

function findResponse(
  doc: OpenApiDocument,
  op: OperationMatch,
  status: number,
): { response: Record<string, unknown>; pointer: string; key: string } | undefined {
  const responses = op.operation.responses;
  if (!isObject(responses)) return undefined;
  const code = String(status);
  const keys = Object.keys(responses);
  const key =
    keys.find((k) => k === code) ??
    keys.find((k) => /^[1-5]XX$/i.test(k) && k[0] === code[0]) ??
    keys.find((k) => k === 'default');
  if (key === undefined) return undefined;
  const { value, pointer } = deref(doc, responses[key], `${op.pointer}/responses/${escapePointer(key)}`);
  if (!isObject(value)) return undefined;
  return { response: value, pointer, key };
}

function mediaTypeOf(contentType: string): string {
  return contentType.split(';')[0]!.trim().toLowerCase();
}

/** The documented media type for a content type: exact, then `type/*`, then `*\/*`. */
function findMediaType(content: Record<string, unknown>, contentType: string): string | undefined {
  const wanted = mediaTypeOf(contentType);
  const keys = Object.keys(content);
  return (
    keys.find((k) => mediaTypeOf(k) === wanted) ??
    keys.find((k) => mediaTypeOf(k) === `${wanted.split('/')[0]}/*`) ??
    keys.find((k) => mediaTypeOf(k) === '*/*')
  );
}

const isJsonMediaType = (mediaType: string) => /^application\/(?:[\w.-]+\+)?json$/.test(mediaTypeOf(mediaType));
const isFormMediaType = (mediaType: string) => mediaTypeOf(mediaType) === 'application/x-www-form-urlencoded';

function isEmptyBody(body: unknown): boolean {
  return body === undefined || body === null || body === '';
}

/** The value to validate: JSON text parsed, form bodies turned into an object of strings. */
function decodeBody(mediaType: string, body: unknown, problems: string[]): unknown {
  if (isJsonMediaType(mediaType)) {
    if (typeof body !== 'string') return body;
    try {
      return JSON.parse(body);
    } catch {
      problems.push(`the body is not JSON: ${JSON.stringify(body.slice(0, 80))}`);
      return undefined;
    }
  }
  if (isFormMediaType(mediaType)) {
    const form = typeof body === 'string' || body instanceof URLSearchParams ? new URLSearchParams(body) : undefined;
    if (form === undefined) return body;
    const out: Record<string, string | string[]> = {};
    for (const [name, value] of form) {
      const prior = out[name];
      out[name] = prior === undefined ? value : Array.isArray(prior) ? [...prior, value] : [prior, value];
    }
    return out;
  }
  return body;
}

function headerValue(headers: HeaderBag, name: string): string | undefined {
  if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
  const lower = name.toLowerCase();
  for (const [key, value] of Object.entries(headers as Record<string, unknown>)) {
    if (key.toLowerCase() !== lower || value === undefined) continue;
    return Array.isArray(value) ? value.join(', ') : String(value);
  }
  return undefined;
}

/** Header values are text: integers, numbers and booleans are coerced before validation. */
function coerceHeader(schema: unknown, value: string): unknown {
  const type = isObject(schema) ? schema.type : undefined;
  if ((type === 'integer' || type === 'number') && /^-?\d+(\.\d+)?$/.test(value)) return Number(value);
  if (type === 'boolean' && (value === 'true' || value === 'false')) return value === 'true';
  return value;
}

function checkHeader(
  doc: OpenApiDocument,
  headers: HeaderBag,
  name: string,
  definition: unknown,
  pointer: string,
  problems: string[],
): void {
  const { value: header, pointer: at } = deref(doc, definition, pointer);
  if (!isObject(header)) return;
  const value = headerValue(headers, name);
  if (value === undefined) {
    if (header.required === true) problems.push(`the required header ${name} is missing`);
    return;
  }
  if (header.schema === undefined) return;
  const validate = schemaValidator(doc, `${at}/schema`);
  if (!validate(coerceHeader(deref(doc, header.schema, `${at}/schema`).value, value))) {
    problems.push(...describeErrors(validate.errors, `header ${name}`));
  }
}

function validateContent(
  doc: OpenApiDocument,
  owner: Record<string, unknown>,
  ownerPointer: string,
  contentType: string | null | undefined,
  body: unknown,
  problems: string[],
): void {
  const content = owner.content;
  if (!isObject(content) || Object.keys(content).length === 0) {
    if (!isEmptyBody(body)) problems.push('a body is not documented here');
    return;
  }
  let mediaType: string | undefined;
  if (contentType !== undefined && contentType !== null && contentType !== '') {
    mediaType = findMediaType(content, contentType);
    if (mediaType === undefined) {
      problems.push(
        `content type ${mediaTypeOf(contentType)} is not documented (documented: ${Object.keys(content).join(', ')})`,
      );
      return;
    }
  } else if (isEmptyBody(body)) {
    problems.push(`there is no body, but the document describes ${Object.keys(content).join(', ')}`);
    return;
  } else if (Object.keys(content).length === 1) {
    mediaType = Object.keys(content)[0]!;
  } else {
    problems.push(`no content type given, and the document describes ${Object.keys(content).join(', ')}`);
    return;
  }
  const media = content[mediaType];
  if (!isObject(media) || media.schema === undefined) return;
  const decodeProblems: string[] = [];
  const decoded = decodeBody(mediaType, body, decodeProblems);
  if (decodeProblems.length > 0) {
    problems.push(...decodeProblems);
    return;
  }
  const schemaPointer = `${ownerPointer}/content/${escapePointer(mediaType)}/schema`;
  const validate = schemaValidator(doc, schemaPointer);
  if (!validate(decoded)) {
    const schema = media.schema;
    const where = isObject(schema) && typeof schema.$ref === 'string' ? schema.$ref : schemaPointer;
    problems.push(...describeErrors(validate.errors, 'body').map((e) => `${e} (${mediaType}, schema ${where})`));
  }
}

/**
 * Checks an answer against the document: the path, method and status must be documented, the content type
 * among the response's media types, and the body valid against its schema. Throws OpenApiValidationError.
 */
function operationLabel(op: OperationMatch): string {
  const id = typeof op.operation.operationId === 'string' ? ` (${op.operation.operationId})` : '';
  return `${op.method.toUpperCase()} ${op.template}${id}`;
}

export function validateResponse(doc: OpenApiDocument, res: ResponseUnderTest): void {
  const op = findOperation(doc, res.method, res.path);
  const label = `${operationLabel(op)} → ${res.status}`;
  const found = findResponse(doc, op, res.status);
  if (found === undefined) {
    const documented = Object.keys(isObject(op.operation.responses) ? op.operation.responses : {});
    throw new OpenApiValidationError(label, [
      `status ${res.status} is not documented (documented: ${documented.join(', ') || 'none'})`,
    ]);
  }
  const problems: string[] = [];
  const contentType = res.contentType ?? undefined;
  validateContent(doc, found.response, found.pointer, contentType, res.body, problems);
  if (res.headers !== undefined && isObject(found.response.headers)) {
    for (const [name, definition] of Object.entries(found.response.headers)) {
      if (name.toLowerCase() === 'content-type') continue; // OpenAPI 3.1 §4.8.17.1: ignored
      checkHeader(doc, res.headers, name, definition, `${found.pointer}/headers/${escapePointer(name)}`, problems);
    }
  }
  if (problems.length > 0) {
    throw new OpenApiValidationError(found.key === String(res.status) ? label : `${label} (as ${found.key})`, problems);
  }
}

/**
 * Checks a request against the document: the operation must exist, the body must be documented (and present
 * when required) and valid against its schema; with `headers`, required header parameters must be present.
 */
export function validateRequestBody(doc: OpenApiDocument, req: RequestUnderTest): void {
  const op = findOperation(doc, req.method, req.path);
  const label = `${operationLabel(op)} request`;
  const problems: string[] = [];
  const { value: requestBody, pointer } = deref(doc, op.operation.requestBody, `${op.pointer}/requestBody`);
  if (!isObject(requestBody)) {
    if (!isEmptyBody(req.body)) problems.push('the operation documents no request body');
  } else if (isEmptyBody(req.body) && req.contentType == null) {
    if (requestBody.required === true) problems.push('the request body is required');
  } else {
    validateContent(doc, requestBody, pointer, req.contentType, req.body, problems);
  }
  if (req.headers !== undefined) {
    const { value: pathItem } = deref(doc, doc.paths?.[op.template], pointerOf('paths', op.template));
    const lists: [unknown, string][] = [
      [isObject(pathItem) ? pathItem.parameters : undefined, pointerOf('paths', op.template, 'parameters')],
      [op.operation.parameters, `${op.pointer}/parameters`],
    ];
    for (const [list, listPointer] of lists) {
      if (!Array.isArray(list)) continue;
      list.forEach((entry, i) => {
        const { value: parameter, pointer: at } = deref(doc, entry, `${listPointer}/${i}`);
        if (!isObject(parameter) || parameter.in !== 'header' || typeof parameter.name !== 'string') return;
        checkHeader(doc, req.headers!, parameter.name, parameter, at, problems);
      });
    }
  }
  if (problems.length > 0) throw new OpenApiValidationError(label, problems);
}

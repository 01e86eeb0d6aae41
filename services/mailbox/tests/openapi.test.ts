/**
 * openapi/mailbox.openapi.json against the source and the wire. The document is checked as an OpenAPI 3.1
 * document (its structure, every `$ref`, every schema compiled with Ajv 2020, every example against its
 * schema); every route mounted in services/mailbox/src (read from the source text, mount prefixes included)
 * and every error code the routers answer must be documented with its status; and two real domains
 * (example.com, example.net) deliver a message with resources while every answer of the client API, the
 * federation endpoints, discovery and operations is validated against the document.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import type { JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  METHODS,
  deref,
  escape,
  isObject,
  mediaTypes,
  operations,
  references,
} from '../../common/src/testing/openapi-walk.js';
import {
  contentId,
  createDpopProof,
  externalContentType,
  generateDpopKey,
  importDpopKey,
  type JwsAlg,
  type Message,
  type Part,
} from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import {
  OpenApiValidationError,
  loadOpenApi,
  resolvePointer,
  schemaValidator,
  validateRequestBody,
  validateResponse,
  type OpenApiDocument,
} from '../../common/src/testing/openapi.js';
import { testHttp } from '../../auth/tests/exchange-client.js';
import { mailboxOpenApi } from '../src/openapi.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';

const REPO = new URL('../../../', import.meta.url);
const DOCUMENT = new URL('openapi/mailbox.openapi.json', REPO);
const SRC = new URL('../src/', import.meta.url);

/**
 * Routes the document describes ahead of the code: /openapi.json is served once service.ts mounts
 * `mailboxOpenApi`. Once mounted it is checked like the rest.
 */
const PENDING = ['GET /openapi.json'];

// ---- the structure of an OpenAPI 3.1 document ----------------------------------------------------------------

/*
 * No npm package of the workspace ships the OpenAPI 3.1 meta-schema, and the copy in
 * services/common/src/testing/openapi.test.ts is not exported; these are the rules of the specification
 * (https://spec.openapis.org/oas/v3.1.0 §4.8) that a hand-written document can break, checked object by object.
 */
const ALLOWED: Record<string, readonly string[]> = {
  document: [
    'openapi',
    'info',
    'jsonSchemaDialect',
    'servers',
    'paths',
    'webhooks',
    'components',
    'security',
    'tags',
    'externalDocs',
  ],
  info: ['title', 'summary', 'description', 'termsOfService', 'contact', 'license', 'version'],
  license: ['name', 'identifier', 'url'],
  tag: ['name', 'description', 'externalDocs'],
  components: [
    'schemas',
    'responses',
    'parameters',
    'examples',
    'requestBodies',
    'headers',
    'securitySchemes',
    'links',
    'callbacks',
    'pathItems',
  ],
  pathItem: ['$ref', 'summary', 'description', 'servers', 'parameters', ...METHODS],
  operation: [
    'tags',
    'summary',
    'description',
    'externalDocs',
    'operationId',
    'parameters',
    'requestBody',
    'responses',
    'callbacks',
    'deprecated',
    'security',
    'servers',
  ],
  parameter: [
    'name',
    'in',
    'description',
    'required',
    'deprecated',
    'allowEmptyValue',
    'style',
    'explode',
    'allowReserved',
    'schema',
    'example',
    'examples',
    'content',
  ],
  requestBody: ['description', 'content', 'required'],
  response: ['description', 'headers', 'content', 'links'],
  header: ['description', 'required', 'deprecated', 'style', 'explode', 'schema', 'example', 'examples', 'content'],
  mediaType: ['schema', 'example', 'examples', 'encoding'],
  example: ['summary', 'description', 'value', 'externalValue'],
  securityScheme: ['type', 'description', 'name', 'in', 'scheme', 'bearerFormat', 'flows', 'openIdConnectUrl'],
  reference: ['$ref', 'summary', 'description'],
};

function structuralProblems(doc: OpenApiDocument): string[] {
  const problems: string[] = [];
  const keys = (value: unknown, kind: string, at: string): value is Record<string, unknown> => {
    if (!isObject(value)) {
      problems.push(`${at}: not an object`);
      return false;
    }
    if (typeof value.$ref === 'string') {
      for (const key of Object.keys(value))
        if (!ALLOWED.reference!.includes(key)) problems.push(`${at}: ${key} beside $ref`);
      return false;
    }
    for (const key of Object.keys(value)) {
      if (!key.startsWith('x-') && !ALLOWED[kind]!.includes(key)) problems.push(`${at}: unknown ${kind} member ${key}`);
    }
    return true;
  };
  const text = (value: unknown, at: string, required = false) => {
    if (value === undefined ? required : typeof value !== 'string') problems.push(`${at}: not a string`);
  };
  const component = (kind: string, value: unknown, at: string) =>
    keys(value, kind, at) ? value : isObject(value) ? deref(doc, value, at).value : undefined;

  const mediaMap = (content: unknown, at: string) => {
    if (!isObject(content)) return problems.push(`${at}: content is not an object`);
    for (const [type, media] of Object.entries(content)) {
      const where = `${at}/${escape(type)}`;
      if (!/^[\w.+*-]+\/[\w.+*-]+$/.test(type)) problems.push(`${where}: not a media type range`);
      if (keys(media, 'mediaType', where) && media.example !== undefined && media.examples !== undefined)
        problems.push(`${where}: example and examples are mutually exclusive`);
      if (isObject(media) && isObject(media.examples))
        for (const [name, e] of Object.entries(media.examples)) component('example', e, `${where}/examples/${name}`);
    }
  };
  const header = (value: unknown, at: string) => {
    const h = component('header', value, at);
    if (!isObject(h)) return;
    if ((h.schema === undefined) === (h.content === undefined)) problems.push(`${at}: needs schema or content`);
  };
  const parameter = (value: unknown, at: string) => {
    const p = component('parameter', value, at);
    if (!isObject(p)) return;
    text(p.name, `${at}/name`, true);
    if (!['query', 'header', 'path', 'cookie'].includes(p.in as string)) problems.push(`${at}: in is ${String(p.in)}`);
    if (p.in === 'path' && p.required !== true) problems.push(`${at}: a path parameter must be required`);
    if ((p.schema === undefined) === (p.content === undefined)) problems.push(`${at}: needs schema or content`);
    if (p.example !== undefined && p.examples !== undefined) problems.push(`${at}: example and examples`);
  };
  const response = (value: unknown, at: string) => {
    const r = component('response', value, at);
    if (!isObject(r)) return;
    text(r.description, `${at}/description`, true);
    if (r.content !== undefined) mediaMap(r.content, `${at}/content`);
    for (const [name, h] of Object.entries((r.headers as object) ?? {})) header(h, `${at}/headers/${escape(name)}`);
  };
  const schemes = new Set(Object.keys((doc.components?.securitySchemes as object) ?? {}));
  const security = (list: unknown, at: string) => {
    if (!Array.isArray(list)) return problems.push(`${at}: security is not an array`);
    list.forEach((requirement, i) => {
      if (!isObject(requirement)) return problems.push(`${at}/${i}: not an object`);
      for (const [name, scopes] of Object.entries(requirement)) {
        if (!schemes.has(name)) problems.push(`${at}/${i}: no security scheme ${name}`);
        if (!Array.isArray(scopes)) problems.push(`${at}/${i}/${name}: not an array`);
      }
    });
  };

  if (!keys(doc, 'document', '#')) return problems;
  if (doc.openapi !== '3.1.0') problems.push(`#/openapi is ${doc.openapi}`);
  if (keys(doc.info, 'info', '#/info')) {
    text(doc.info.title, '#/info/title', true);
    text(doc.info.version, '#/info/version', true);
    if (doc.info.license !== undefined && keys(doc.info.license, 'license', '#/info/license')) {
      text((doc.info.license as Record<string, unknown>).name, '#/info/license/name', true);
    }
  }
  const tagNames = new Set<string>();
  ((doc.tags as unknown[] | undefined) ?? []).forEach((tag, i) => {
    if (!keys(tag, 'tag', `#/tags/${i}`)) return;
    if (tagNames.has(tag.name as string)) problems.push(`#/tags/${i}: ${String(tag.name)} twice`);
    tagNames.add(tag.name as string);
  });
  if (doc.security !== undefined) security(doc.security, '#/security');
  if (keys(doc.components, 'components', '#/components')) {
    for (const [kind, entries] of Object.entries(doc.components)) {
      for (const name of Object.keys((entries as object) ?? {}))
        if (!/^[a-zA-Z0-9.\-_]+$/.test(name)) problems.push(`#/components/${kind}/${name}: not a component name`);
    }
    const c = doc.components as Record<string, Record<string, unknown> | undefined>;
    for (const [name, r] of Object.entries(c.responses ?? {})) response(r, `#/components/responses/${name}`);
    for (const [name, p] of Object.entries(c.parameters ?? {})) parameter(p, `#/components/parameters/${name}`);
    for (const [name, h] of Object.entries(c.headers ?? {})) header(h, `#/components/headers/${name}`);
    for (const [name, e] of Object.entries(c.examples ?? {})) component('example', e, `#/components/examples/${name}`);
    for (const [name, s] of Object.entries(c.securitySchemes ?? {})) {
      const at = `#/components/securitySchemes/${name}`;
      if (!keys(s, 'securityScheme', at)) continue;
      if (!['apiKey', 'http', 'mutualTLS', 'oauth2', 'openIdConnect'].includes(s.type as string))
        problems.push(`${at}: type ${String(s.type)}`);
      if (s.type === 'http' && typeof s.scheme !== 'string') problems.push(`${at}: an http scheme needs scheme`);
      if (s.bearerFormat !== undefined && !/^bearer$/i.test(String(s.scheme)))
        problems.push(`${at}: bearerFormat is for the bearer scheme only`);
      if (
        s.type === 'apiKey' &&
        (typeof s.name !== 'string' || !['query', 'header', 'cookie'].includes(s.in as string))
      )
        problems.push(`${at}: an apiKey scheme needs name and in`);
    }
  }
  const ids = new Set<string>();
  const templates = new Set<string>();
  for (const [template, item] of Object.entries(doc.paths ?? {})) {
    const at = `#/paths/${escape(template)}`;
    if (!template.startsWith('/') || (template.length > 1 && template.endsWith('/')))
      problems.push(`${at}: a path starts with / and does not end with one`);
    const shape = template.replace(/\{[^}]+\}/g, '{}');
    if (templates.has(shape)) problems.push(`${at}: the same path as another, but for the names of its parameters`);
    templates.add(shape);
    if (!keys(item, 'pathItem', at)) continue;
    for (const [i, p] of ((item.parameters as unknown[] | undefined) ?? []).entries())
      parameter(p, `${at}/parameters/${i}`);
    for (const method of METHODS) {
      const op = item[method];
      if (op === undefined) continue;
      const where = `${at}/${method}`;
      if (!keys(op, 'operation', where)) continue;
      if (typeof op.operationId === 'string') {
        if (ids.has(op.operationId)) problems.push(`${where}: operationId ${op.operationId} twice`);
        ids.add(op.operationId);
      }
      for (const tag of (op.tags as string[] | undefined) ?? [])
        if (!tagNames.has(tag)) problems.push(`${where}: tag ${tag} is not declared`);
      const params = [...((item.parameters as unknown[]) ?? []), ...((op.parameters as unknown[]) ?? [])].map(
        (p) => deref(doc, p, where).value as { name?: string; in?: string },
      );
      for (const [i, p] of ((op.parameters as unknown[] | undefined) ?? []).entries())
        parameter(p, `${where}/parameters/${i}`);
      const opKeys = ((op.parameters as unknown[]) ?? []).map((p) => {
        const v = deref(doc, p, where).value as { name?: string; in?: string };
        return `${v.in} ${v.name}`;
      });
      if (new Set(opKeys).size !== opKeys.length) problems.push(`${where}: a parameter is declared twice`);
      const declared = new Set(params.filter((p) => p.in === 'path').map((p) => p.name));
      const inTemplate = new Set([...template.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]));
      if ([...declared].sort().join() !== [...inTemplate].sort().join())
        problems.push(`${where}: path parameters ${[...declared].join()} for the template's ${[...inTemplate].join()}`);
      if (op.requestBody !== undefined) {
        const body = component('requestBody', op.requestBody, `${where}/requestBody`);
        if (isObject(body)) mediaMap(body.content, `${where}/requestBody/content`);
      }
      if (!isObject(op.responses) || Object.keys(op.responses).length === 0) {
        problems.push(`${where}: no responses`);
        continue;
      }
      for (const [status, r] of Object.entries(op.responses)) {
        if (!/^(?:[1-5](?:\d\d|XX)|default)$/.test(status)) problems.push(`${where}: response key ${status}`);
        response(r, `${where}/responses/${status}`);
      }
      if (op.security !== undefined) security(op.security, `${where}/security`);
    }
  }
  return problems;
}

// ---- the routes of the source ----------------------------------------------------------------------------------

interface Route {
  readonly method: string;
  /** The OpenAPI template, e.g. `/api/v1/messages/{id}`. */
  readonly template: string;
  /** The source file (relative to src/) whose router answers it. */
  readonly file: string;
}

/** The TypeScript sources of the service, tests left out, by path relative to src/. */
function sourceFiles(): Map<string, string> {
  const files = new Map<string, string>();
  for (const entry of readdirSync(SRC, { recursive: true }) as string[]) {
    const file = entry.split('\\').join('/');
    if (!file.endsWith('.ts') || file.endsWith('.test.ts')) continue;
    files.set(file, readFileSync(new URL(file, SRC), 'utf8'));
  }
  return files;
}

function joinPath(prefix: string, path: string): string {
  const joined = path === '/' ? prefix || '/' : `${prefix}${path}`;
  const template = joined.replace(/:(\w+)/g, '{$1}');
  return template.length > 1 ? template.replace(/\/+$/, '') : template;
}

/**
 * Every route the service mounts, read from the source text: the routers service.ts creates and where it
 * mounts them (`app.use('/api/v1', api)`), the router factories it mounts (`api.use('/resources',
 * resourcesRouter(...))`, `app.use(TRANSFER_PATH, transferRouter(...))`) and their routes
 * (`router.get('/messages/:id', ...)`), recursively, and the routes service.ts defines itself.
 */
function mountedRoutes(files: Map<string, string>): Route[] {
  const service = files.get('service.ts');
  if (service === undefined) throw new Error('services/mailbox/src/service.ts is missing');
  const constants = new Map<string, string>();
  const factories = new Map<string, { file: string; body: string }>();
  for (const [file, text] of files) {
    for (const m of text.matchAll(/export const ([A-Z_]+) = '([^']*)'/g)) constants.set(m[1]!, m[2]!);
    const starts = [...text.matchAll(/^export (?:async )?function (\w+)\(/gm)];
    starts.forEach((m, i) => factories.set(m[1]!, { file, body: text.slice(m.index, starts[i + 1]?.index) }));
  }
  const prefixOf = (literal: string | undefined, constant: string | undefined) => {
    if (literal !== undefined) return literal;
    if (constant === undefined) return '';
    const value = constants.get(constant);
    if (value === undefined) throw new Error(`the mount prefix ${constant} is not a string constant of src/`);
    return value;
  };
  const routes: Route[] = [];
  const routesOf = (receivers: ReadonlyMap<string, string>, text: string, file: string, depth: number) => {
    for (const m of text.matchAll(/\b(\w+)\.(get|post|put|patch|delete)\(\s*(['`])([^'`$]+)\3/g)) {
      const prefix = receivers.get(m[1]!);
      if (prefix !== undefined) routes.push({ method: m[2]!.toUpperCase(), template: joinPath(prefix, m[4]!), file });
    }
    const mounts = /\b(\w+)\.use\(\s*(?:(?:'([^']*)'|([A-Z_]+))\s*,\s*)?(\w+)\(/g;
    for (const m of text.matchAll(mounts)) {
      const prefix = receivers.get(m[1]!);
      const factory = factories.get(m[4]!);
      if (prefix === undefined || factory === undefined) continue;
      if (depth > 5) throw new Error(`routers nest too deep at ${m[4]}`);
      const inner = new Map([['router', `${prefix}${prefixOf(m[2], m[3])}`]]);
      routesOf(inner, factory.body, factory.file, depth + 1);
    }
  };
  // service.ts: `const app = express()`, `const api = express.Router()`, and `app.use('/api/v1', api)`.
  const routers = new Set(['app', ...[...service.matchAll(/const (\w+) = express\.Router\(\)/g)].map((m) => m[1]!)]);
  const parents = new Map<string, { parent: string; prefix: string }>();
  for (const m of service.matchAll(/\b(\w+)\.use\(\s*(?:'([^']*)'|([A-Z_]+))\s*,\s*(\w+)\s*\)/g)) {
    if (routers.has(m[1]!) && routers.has(m[4]!)) parents.set(m[4]!, { parent: m[1]!, prefix: prefixOf(m[2], m[3]) });
  }
  const receivers = new Map<string, string>();
  const resolve = (name: string, seen: readonly string[] = []): string | undefined => {
    if (name === 'app') return '';
    const mount = parents.get(name);
    if (mount === undefined || seen.includes(name)) return undefined; // a router never mounted serves nothing
    const above = resolve(mount.parent, [...seen, name]);
    return above === undefined ? undefined : `${above}${mount.prefix}`;
  };
  for (const name of routers) {
    const prefix = resolve(name);
    if (prefix !== undefined) receivers.set(name, prefix);
  }
  routesOf(receivers, service, 'service.ts', 0);
  return routes;
}

/** `(status, error)` pairs a source file answers: `new XError(404, 'not_found'`, `problem(res, 413, 'too_large'`, … */
function errorPairs(text: string): [number, string][] {
  const pairs: [number, string][] = [];
  const patterns = [
    /\b([45]\d\d),\s*'([a-z_]+)'/g,
    /\b([45]\d\d),\s*\{\s*error:\s*'([a-z_]+)'/g,
    /\.status\(([45]\d\d)\)(?:\s*\.set\([^)]*\))*\s*\.json\(\{\s*error:\s*'([a-z_]+)'/g,
    /status === ([45]\d\d) \? '([a-z_]+)'/g,
  ];
  for (const pattern of patterns) for (const m of text.matchAll(pattern)) pairs.push([Number(m[1]), m[2]!]);
  return pairs;
}

function accepts(doc: OpenApiDocument, method: string, template: string, status: number, body: unknown): boolean {
  try {
    validateResponse(doc, {
      method,
      path: template.replace(/\{[^}]+\}/g, 'x'),
      status,
      contentType: 'application/json',
      body,
    });
    return true;
  } catch (e) {
    if (e instanceof OpenApiValidationError) return false;
    throw e;
  }
}

describe('openapi/mailbox.openapi.json', () => {
  const doc = loadOpenApi(DOCUMENT);
  const files = sourceFiles();
  const routes = mountedRoutes(files);
  const documented = operations(doc).map(({ method, template }) => `${method.toUpperCase()} ${template}`);

  it('is an OpenAPI 3.1 document, by the rules of the specification', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(structuralProblems(doc)).toEqual([]);
    // The checks themselves find what they are meant to find.
    const broken = structuredClone(doc) as unknown as {
      paths: Record<string, Record<string, { responses?: unknown; operationid?: string; parameters?: unknown[] }>>;
    };
    const session = broken.paths['/api/v1/session']!.get!;
    session.operationid = 'typo';
    delete session.responses;
    broken.paths['/api/v1/messages/{id}']!.get!.parameters = [{ name: 'id', in: 'path', schema: {} }];
    expect(structuralProblems(broken as unknown as OpenApiDocument)).toEqual(
      expect.arrayContaining([
        '#/paths/~1api~1v1~1session/get: unknown operation member operationid',
        '#/paths/~1api~1v1~1session/get: no responses',
        '#/paths/~1api~1v1~1messages~1{id}/get/parameters/0: a path parameter must be required',
      ]),
    );
  });

  it('resolves every $ref, and refers to schemas only from schemas', () => {
    const refs = references(doc);
    expect(refs.length).toBeGreaterThan(200);
    const broken = refs.filter(({ ref }) => !ref.startsWith('#/') || resolvePointer(doc, ref) === undefined);
    expect(broken).toEqual([]);
    const schemaRefs = refs.filter(({ at }) => /\/schema(?:\/|$)|^#\/components\/schemas\//.test(at));
    expect(schemaRefs.filter(({ ref }) => !ref.startsWith('#/components/schemas/'))).toEqual([]);
  });

  it('gives every operation an id, tags, a summary, responses and its security', () => {
    for (const { template, operation, pointer } of operations(doc)) {
      expect(operation.operationId, pointer).toBeTypeOf('string');
      expect(operation.summary, pointer).toBeTypeOf('string');
      expect((operation.tags as string[] | undefined)?.length, pointer).toBeGreaterThan(0);
      const security = operation.security as Record<string, unknown>[] | undefined;
      if (template.startsWith('/api/v1/')) {
        expect(security, pointer).toEqual([{ userDpop: [] }]);
        for (const status of ['401', '403', '500']) expect(operation.responses, pointer).toHaveProperty(status);
      } else if (template.startsWith('/federation/')) {
        expect(security?.length, pointer).toBe(1);
      } else {
        expect(security, pointer).toEqual([]);
      }
    }
  });

  it('has schemas that all compile with Ajv 2020, and examples that match them', () => {
    for (const name of Object.keys(doc.components?.schemas ?? {})) {
      const pointer = `#/components/schemas/${name}`;
      const validate = schemaValidator(doc, pointer);
      for (const example of (resolvePointer(doc, pointer) as { examples?: unknown[] }).examples ?? []) {
        expect(validate(example) ? [] : validate.errors, `${pointer} example`).toEqual([]);
      }
    }
    let examples = 0;
    for (const { pointer, media } of mediaTypes(doc)) {
      if (media.schema === undefined) continue;
      const validate = schemaValidator(doc, `${pointer}/schema`);
      const values = [
        ...(media.example === undefined ? [] : [media.example]),
        ...Object.entries((media.examples as Record<string, unknown> | undefined) ?? {}).map(
          ([name, e]) => (deref(doc, e, `${pointer}/examples/${name}`).value as { value: unknown }).value,
        ),
      ];
      for (const value of values) {
        examples++;
        expect(
          validate(value) ? [] : validate.errors,
          `${pointer} example ${JSON.stringify(value).slice(0, 80)}`,
        ).toEqual([]);
      }
    }
    expect(examples).toBeGreaterThan(60);
    for (const kind of ['parameters', 'headers']) {
      for (const [name, value] of Object.entries((doc.components?.[kind] as Record<string, unknown>) ?? {})) {
        const pointer = `#/components/${kind}/${escape(name)}`;
        const validate = schemaValidator(doc, `${pointer}/schema`);
        const example = (value as { example?: unknown }).example;
        if (example !== undefined) expect(validate(example) ? [] : validate.errors, pointer).toEqual([]);
      }
    }
  });

  it('describes Placeholder Messages as the protocol does: its test vectors pass, malformed ones do not', () => {
    const message = schemaValidator(doc, '#/components/schemas/PlaceholderMessage');
    const draftSchema = schemaValidator(doc, '#/components/schemas/Draft');
    const vectors = readdirSync(new URL('test/vectors/', REPO)).filter((f) => f.endsWith('.message.json'));
    expect(vectors.length).toBeGreaterThanOrEqual(5);
    for (const file of vectors) {
      const value = JSON.parse(readFileSync(new URL(`test/vectors/${file}`, REPO), 'utf8')) as Message;
      expect(message(value) ? [] : message.errors, file).toEqual([]);
      expect(draftSchema(value), file).toBe(value.envelope.length === 1);
    }
    const leaf = {
      headers: [
        { 'Content-Disposition': 'inline' },
        { 'Content-ID': '<AmI47C4jizAg5ppo3oLvP3oP81nqooQbGBmiEKeEgp4>' },
        { 'Content-Type': externalContentType(51, 'text/plain; charset=UTF-8') },
      ],
    };
    const good = { envelope: [{ headers: [{ From: 'alice@example.com' }] }], body: { parts: [leaf] } };
    expect(message(good) ? [] : message.errors).toEqual([]);
    const bad: [string, unknown][] = [
      ['a header with two members', { ...good, envelope: [{ headers: [{ From: 'a@b.c', To: 'd@e.f' }] }] }],
      ['an array value in the envelope', { ...good, envelope: [{ headers: [{ 'Content-Type': ['a', 'b'] }] }] }],
      ['a line break in a value', { ...good, envelope: [{ headers: [{ Subject: 'a\r\nBcc: m@x.y' }] }] }],
      ['a colon in a name', { ...good, envelope: [{ headers: [{ 'X:Y': 'z' }] }] }],
      ['an empty envelope', { ...good, envelope: [] }],
      ['an empty headers block', { ...good, envelope: [{ headers: [] }] }],
      ['a block of two kinds', { ...good, envelope: [{ headers: [{ From: 'a@b.c' }], 'jwt-assertion': 'a.b.c' }] }],
      ['an assertion not in compact form', { ...good, envelope: [{ 'jwt-assertion': 'a.b' }] }],
      ['an unknown member', { ...good, extra: true }],
      ['a multipart part without children', { ...good, body: { parts: [{ headers: [], parts: [] }] } }],
      [
        'a Content-Type of three strings',
        {
          ...good,
          body: { parts: [{ headers: [{ 'Content-Type': ['message/external-body; size="1"', 'a/b', 'c'] }] }] },
        },
      ],
    ];
    for (const [what, value] of bad) expect(message(value), what).toBe(false);
  });

  it('documents every route mounted in services/mailbox/src, and no route the source lacks but those on the way', () => {
    expect(routes.length).toBeGreaterThanOrEqual(20);
    // The mount points the parsing must have found: a wrong prefix would hide every route under it.
    expect(routes).toEqual(
      expect.arrayContaining([
        { method: 'GET', template: '/healthz', file: 'service.ts' },
        { method: 'GET', template: '/api/v1/session', file: 'service.ts' },
        { method: 'POST', template: '/api/v1/resources', file: 'api/resources.ts' },
        { method: 'GET', template: '/api/v1/resources/{digest}', file: 'api/resources.ts' },
        { method: 'POST', template: '/api/v1/messages/send', file: 'api/send.ts' },
        { method: 'GET', template: '/api/v1/changes', file: 'api/sync.ts' },
        { method: 'PATCH', template: '/api/v1/messages/{id}', file: 'api/messages.ts' },
        { method: 'POST', template: '/federation/v1/transfer', file: 'federation/transfer.ts' },
        { method: 'POST', template: '/federation/v1/fetch', file: 'federation/fetch-endpoint.ts' },
      ]),
    );
    const mounted = routes.map(({ method, template }) => `${method} ${template}`);
    expect(mounted.filter((r) => !documented.includes(r))).toEqual([]);
    expect(documented.filter((r) => !r.startsWith('HEAD ') && !mounted.includes(r) && !PENDING.includes(r))).toEqual(
      [],
    );
  });

  it('documents every error code of the routers with the status they answer it with', () => {
    const byFile = new Map<string, Route[]>();
    for (const route of routes) byFile.set(route.file, [...(byFile.get(route.file) ?? []), route]);
    // Errors thrown beside a router, for it to answer: the transfer endpoint's, and the forwarder's.
    const answeredBy = { 'federation/errors.ts': 'federation/transfer.ts', 'mta/forwarding.ts': 'api/forward.ts' };
    for (const [file, router] of Object.entries(answeredBy)) {
      if (files.has(file) && byFile.has(router)) byFile.set(file, byFile.get(router)!);
    }
    let checked = 0;
    for (const [file, fileRoutes] of byFile) {
      if (file === 'service.ts') continue;
      for (const [status, code] of errorPairs(files.get(file)!)) {
        checked++;
        const accepting = fileRoutes.filter(({ method, template }) =>
          accepts(doc, method, template, status, { error: code, error_description: 'a description' }),
        );
        expect(accepting.length, `${file}: ${code} (${status})`).toBeGreaterThan(0);
      }
    }
    expect(checked).toBeGreaterThan(40);

    // Authentication (user-auth.ts) answers every operation of the client API, and so can the error handler.
    const auth = files.get('api/user-auth.ts')!;
    const authCodes = [...auth.matchAll(/new UnauthorizedError\(\s*'(\w+)'/g)].map((m) => m[1]!);
    expect(new Set(authCodes)).toEqual(new Set(['invalid_token', 'invalid_dpop_proof', 'insufficient_scope']));
    const declared = /readonly error: ([^,]+),/
      .exec(auth)![1]!
      .match(/'(\w+)'/g)!
      .map((c) => c.slice(1, -1));
    for (const { method, template } of operations(doc)) {
      if (template.startsWith('/api/v1/')) {
        for (const code of declared) {
          const status = code === 'insufficient_scope' ? 403 : code === 'invalid_request' ? 400 : 401;
          expect(accepts(doc, method, template, status, { error: code, error_description: 'x' }), code).toBe(true);
        }
      }
      if (template.startsWith('/api/') || template.startsWith('/federation/')) {
        const body = { error: 'server_error', error_description: 'an internal error; it has been logged' };
        expect(accepts(doc, method, template, 500, body), `${method} ${template} 500`).toBe(true);
      }
    }

    // send.ts passes the Authorization Server's refusals on: 429 quota, 503 outage, 403 anything else.
    for (const [status, code] of [
      [429, 'quota_exceeded'],
      [503, 'temporarily_unavailable'],
      [503, 'server_error'],
      [403, 'invalid_grant'],
      [403, 'invalid_request'],
    ] as const) {
      expect(accepts(doc, 'POST', '/api/v1/messages/send', status, { error: code, error_description: 'x' })).toBe(true);
    }
  });

  it('documents the transfer errors of §5.3 with their protocol codes, and the DPoP challenges', () => {
    const protocolErrors = readFileSync(new URL('services/protocol/src/errors.ts', REPO), 'utf8');
    const codes = [
      ...protocolErrors
        .split('export type ProtocolErrorCode =')[1]!
        .split(';')[0]!
        .matchAll(/'([a-z_]+)'/g),
    ].map((m) => m[1]!);
    expect(codes.length).toBeGreaterThan(40);
    expect(resolvePointer(doc, '#/components/schemas/ProtocolErrorCode/enum')).toEqual(codes);
    const names = /export type TransferErrorName =([^;]+);/
      .exec(files.get('federation/errors.ts')!)![1]!
      .match(/'(\w+)'/g)!
      .map((c) => c.slice(1, -1));
    expect(resolvePointer(doc, '#/components/schemas/TransferErrorName/enum')).toEqual(names);
    const transfer = (status: number, body: unknown, headers?: Record<string, string>) => () =>
      validateResponse(doc, {
        method: 'POST',
        path: '/federation/v1/transfer',
        status,
        contentType: 'application/json',
        body,
        headers,
      });
    const signature = {
      error: 'invalid_token',
      code: 'invalid_signature',
      path: 'envelope[0].jwt-assertion',
      error_description: 'the assertion: the signature does not verify',
    };
    expect(transfer(401, signature, { 'WWW-Authenticate': 'DPoP error="invalid_token"' })).not.toThrow();
    expect(transfer(401, signature, {})).toThrow(/WWW-Authenticate is missing/);
    expect(transfer(400, { ...signature, code: 'no_such_code' })).toThrow(/code must be equal to one of/);
    expect(transfer(429, { error: 'rate_limited', error_description: 'x' }, {})).toThrow(/Retry-After is missing/);
    // PROTOCOL §5: a 401 is invalid_token, whichever of the token and the proof failed (the challenge says).
    expect(transfer(401, { ...signature, error: 'invalid_message' })).toThrow(/error must be equal to constant/);
    expect(transfer(401, { ...signature, error: 'invalid_dpop_proof' })).toThrow(/error must be equal to constant/);
    for (const template of ['/api/v1/session', '/api/v1/messages', '/federation/v1/fetch']) {
      const method = template.endsWith('fetch') ? 'POST' : 'GET';
      const body = { error: 'invalid_token', error_description: 'x' };
      expect(() =>
        validateResponse(doc, {
          method,
          path: template,
          status: 401,
          contentType: 'application/json',
          body,
          headers: {},
        }),
      ).toThrow(/WWW-Authenticate is missing/);
    }
  });

  it('is served by mailboxOpenApi(config), with servers set to the public URL', () => {
    const served = mailboxOpenApi({ publicUrl: 'https://mail.example.com' });
    expect(served.servers).toEqual([{ url: 'https://mail.example.com', description: 'this mailbox' }]);
    expect(served.paths).toEqual(doc.paths);
    expect(served.components).toEqual(doc.components);
    // Loaded once: another mailbox shares the document, not its servers.
    const other = mailboxOpenApi({ publicUrl: 'https://mail.example.net' });
    expect(other.paths).toBe(served.paths);
    expect(served.servers).toEqual([{ url: 'https://mail.example.com', description: 'this mailbox' }]);
    validateResponse(doc, {
      method: 'GET',
      path: 'https://mail.example.com/openapi.json',
      status: 200,
      contentType: 'application/json',
      body: served,
    });
  });
});

// ---- a real delivery ----------------------------------------------------------------------------------------

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Answer<T> {
  readonly status: number;
  readonly headers: Headers;
  /** The parsed JSON, or undefined for any other body. */
  readonly body: T;
  readonly bytes: Buffer;
}

/** Reads an answer and validates it against the document (status, content type, body, documented headers). */
async function documented<T>(
  doc: OpenApiDocument,
  method: string,
  path: string,
  res: Response,
  expected: number,
): Promise<Answer<T>> {
  const bytes = Buffer.from(await res.arrayBuffer());
  const contentType = res.headers.get('content-type');
  const isJson = contentType !== null && /[/+]json\b/.test(contentType) && bytes.length > 0;
  const body = isJson ? (JSON.parse(bytes.toString('utf8')) as T) : (undefined as T);
  expect(res.status, `${method} ${path}: ${bytes.toString('utf8', 0, 300)}`).toBe(expected);
  validateResponse(doc, {
    method,
    path,
    status: res.status,
    contentType: bytes.length === 0 ? null : contentType,
    body: isJson ? body : contentType?.startsWith('text/') ? bytes.toString('utf8') : bytes.length > 0 ? 'bytes' : '',
    headers: res.headers,
  });
  return { status: res.status, headers: res.headers, body, bytes };
}

interface CallInit {
  readonly json?: unknown;
  readonly raw?: Uint8Array | string;
  readonly headers?: Record<string, string>;
  /** How the document judges the JSON request: valid by its schema (the default), or refused by it. */
  readonly request?: 'valid' | 'refused';
}

interface Summary {
  id: string;
  messageId: string;
  threadId: string;
}

interface StoredMessage extends Summary {
  resources: { contentId: string; status: string }[];
}

describe.each(testDatabases())('the mailbox answers as its OpenAPI description says ($name)', (database) => {
  const doc = loadOpenApi(DOCUMENT);
  const http = testHttp();
  let fed: MailFederation;
  let alice: UserClient;
  let bob: UserClient;
  const photo = randomBytes(3000);
  /** What the first test delivered, for the second. */
  let delivered: { sentId: string; messageId: string; photoId: string } | undefined;

  /** A call of the client API as the webmail makes it, its JSON request and its answer checked. */
  async function call<T = Record<string, unknown>>(
    user: UserClient,
    method: string,
    path: string,
    expected: number,
    init: CallInit = {},
  ): Promise<Answer<T>> {
    if (init.json !== undefined) {
      const request = { method, path: `/api/v1${path}`, contentType: 'application/json', body: init.json };
      if (init.request === 'refused') {
        expect(() => validateRequestBody(doc, request), `${method} ${path} request`).toThrow(OpenApiValidationError);
      } else {
        validateRequestBody(doc, request);
      }
    }
    const res = await user.api(path, { method, json: init.json, raw: init.raw, headers: init.headers });
    return documented<T>(doc, method, `/api/v1${path}`, res, expected);
  }

  /** A call of another domain's endpoint (or an unauthenticated one), its answer checked. */
  async function fetchDocumented<T = Record<string, unknown>>(
    url: string,
    expected: number,
    init: { method?: string; headers?: Record<string, string>; body?: string } = {},
  ): Promise<Answer<T>> {
    const method = init.method ?? 'GET';
    const res = (await http.fetch(url, { method, headers: init.headers, body: init.body })) as unknown as Response;
    return documented<T>(doc, method, url, res, expected);
  }

  beforeAll(async () => {
    fed = await startMailFederation(['example.com', 'example.net'], { database: database.create });
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password');
    alice = await fed.user('alice@example.com', 'alice password');
    bob = await fed.user('bob@example.net', 'bob password');
  });
  afterAll(async () => {
    await http.close();
    await fed?.close();
  });

  it('the client API, through a whole delivery from alice@example.com to bob@example.net', async () => {
    const session = await call(alice, 'GET', '/session', 200);
    expect(session.body).toMatchObject({ address: 'alice@example.com', domain: 'example.com', storageUsed: 0 });
    const bobState = await call<{ state: string }>(bob, 'GET', '/state', 200);

    // Resources: upload, download (whole, a range, revalidated, out of range, headers only), and refusals.
    const text = 'Hi Bob,\n\nthe view from our hotel in Venice.\n\nAlice\n';
    type Uploaded = { contentId: string; size: number; mediaType: string };
    const upText = await call<Uploaded>(alice, 'POST', '/resources', 201, {
      raw: text,
      headers: { 'content-type': 'text/plain; charset=utf-8' },
    });
    const upPhoto = await call<Uploaded>(alice, 'POST', '/resources', 201, {
      raw: photo,
      headers: { 'content-type': 'image/png' },
    });
    expect(upPhoto.body).toEqual({ contentId: contentId(photo), size: photo.length, mediaType: 'image/png' });
    expect(upPhoto.headers.get('location')).toBe(`/api/v1/resources/${contentId(photo).slice(1, -1)}`);
    await call(alice, 'POST', '/resources', 400, { raw: 'x', headers: { 'content-type': 'not a media type' } });
    const digest = upPhoto.body.contentId.slice(1, -1);
    const whole = await call(alice, 'GET', `/resources/${digest}`, 200);
    expect(whole.bytes.equals(photo)).toBe(true);
    const part = await call(alice, 'GET', `/resources/${digest}`, 206, { headers: { range: 'bytes=100-199' } });
    expect(part.bytes.equals(photo.subarray(100, 200))).toBe(true);
    expect(part.headers.get('content-range')).toBe(`bytes 100-199/${photo.length}`);
    await call(alice, 'GET', `/resources/${digest}`, 304, { headers: { 'if-none-match': `"${digest}"` } });
    // resources.ts sets the resource's Content-Type before it finds the range unsatisfiable, and res.json keeps
    // it: the JSON error goes out labelled image/png (reported). Its body and headers are checked as the JSON it is.
    const beyond = await alice.api(`/resources/${digest}`, { headers: { range: `bytes=${photo.length}-` } });
    const beyondText = await beyond.text();
    expect(beyond.status, beyondText).toBe(416);
    validateResponse(doc, {
      method: 'GET',
      path: `/api/v1/resources/${digest}`,
      status: beyond.status,
      contentType: 'application/json',
      body: beyondText,
      headers: beyond.headers,
    });
    await call(alice, 'HEAD', `/resources/${digest}`, 200);
    await call(alice, 'GET', `/resources/${contentId(randomBytes(16)).slice(1, -1)}`, 404);
    await call(alice, 'GET', '/resources/..%2F..%2Fetc%2Fpasswd', 404);

    // Sending: the refusals of §4.1, then the message.
    const messageId = `<${randomUUID()}@example.com>`;
    const draftWith = (from: string, leaves: { contentId: string; size: number; type: string }[]): Message => ({
      envelope: [
        {
          headers: [
            { From: from },
            { To: 'Bob <bob@example.net>' },
            { Subject: 'Vacation photo' },
            { 'Message-ID': messageId },
            { 'X-Thread-ID': messageId },
          ],
        },
      ],
      body: {
        parts: leaves.map((leaf, i): Part => ({
          headers: [
            { 'Content-Disposition': i === 0 ? 'inline' : 'attachment; filename="Venice.png"' },
            { 'Content-ID': leaf.contentId },
            { 'Content-Type': externalContentType(leaf.size, leaf.type) },
          ],
        })),
      },
    });
    const textLeaf = { contentId: upText.body.contentId, size: upText.body.size, type: 'text/plain; charset=UTF-8' };
    const photoLeaf = { contentId: upPhoto.body.contentId, size: photo.length, type: 'image/png' };
    const refusals: [number, string, unknown, CallInit['request']][] = [
      [400, 'invalid_message', { message: { envelope: [] } }, 'refused'],
      [400, 'invalid_message', { message: { ...draftWith('alice@example.com', [textLeaf]), body: 'text' } }, 'refused'],
      [403, 'from_not_user', { message: draftWith('Mallory <mallory@example.com>', [textLeaf]) }, 'valid'],
      [
        400,
        'resource_not_held',
        { message: draftWith('alice@example.com', [{ ...textLeaf, contentId: contentId(randomBytes(9)), size: 9 }]) },
        'valid',
      ],
      [400, 'resource_size_mismatch', { message: draftWith('alice@example.com', [{ ...textLeaf, size: 7 }]) }, 'valid'],
    ];
    for (const [status, error, json, request] of refusals) {
      const refused = await call(alice, 'POST', '/messages/send', status, { json, request });
      expect(refused.body.error).toBe(error);
    }
    const sent = await call<{ id: string; copies: number; deliveries: unknown[] }>(
      alice,
      'POST',
      '/messages/send',
      202,
      {
        json: { message: draftWith('Alice <alice@example.com>', [textLeaf, photoLeaf]) },
      },
    );
    expect(sent.body).toMatchObject({
      copies: 1,
      deliveries: [{ recipient: 'bob@example.net', domain: 'example.net', status: 'queued' }],
    });
    const sentId = sent.body.id;

    // Reading: the lists, the message once fetched, the batch read, the thread; and what is not there.
    const sentList = await call<{ messages: Summary[] }>(alice, 'GET', '/messages?mailbox=sent&limit=10', 200);
    expect(sentList.body.messages.map((m) => m.id)).toContain(sentId);
    const entry = await until("the message in Bob's inbox", async () => {
      const list = await call<{ messages: Summary[] }>(bob, 'GET', '/messages?mailbox=inbox', 200);
      return list.body.messages.find((m) => m.messageId === messageId);
    });
    await until('both resources fetched', async () => {
      const m = await call<StoredMessage>(bob, 'GET', `/messages/${entry.id}`, 200);
      return m.body.resources.every((r) => r.status === 'held') ? m.body : undefined;
    });
    const bobsPhoto = await call(bob, 'GET', `/resources/${digest}`, 200);
    expect(bobsPhoto.bytes.equals(photo)).toBe(true);
    const unknownId = '01jfv4k3q8d2x7m5n9p0r6s1tb';
    const batch = await call<{ messages: Summary[]; notFound: string[] }>(bob, 'POST', '/messages/get', 200, {
      json: { ids: [entry.id, unknownId, 'junk', entry.id] },
    });
    expect(batch.body.messages.map((m) => m.id)).toEqual([entry.id]);
    expect(batch.body.notFound).toEqual([unknownId, 'junk']);
    await call(bob, 'POST', '/messages/get', 400, { json: { ids: 'all' }, request: 'refused' });
    await call(bob, 'POST', '/messages/get', 415, { raw: 'ids', headers: { 'content-type': 'text/plain' } });
    const thread = await call<{ messages: Summary[] }>(bob, 'GET', `/threads/${encodeURIComponent(messageId)}`, 200);
    expect(thread.body.messages.map((m) => m.id)).toEqual([entry.id]);
    await call(bob, 'GET', `/threads/${encodeURIComponent('<no-such-thread@example.net>')}`, 404);
    await call(bob, 'GET', `/messages/${unknownId}`, 404);
    await call(bob, 'GET', '/messages/not-an-id', 404);
    await call(bob, 'GET', '/messages?limit=0', 400);
    await call(bob, 'GET', '/messages?mailbox=spam', 400);
    await call(bob, 'GET', '/messages?cursor=', 400);
    await call(bob, 'GET', '/messages?cursor=nonsense', 400);

    // The delivery as the sender sees it.
    const fetched = await until('the delivery marked fetched', async () => {
      const d = await call<{ deliveries: { status: string }[] }>(alice, 'GET', `/messages/${sentId}/deliveries`, 200);
      return d.body.deliveries.find((x) => x.status === 'fetched');
    });
    expect(fetched).toMatchObject({ recipient: 'bob@example.net', domain: 'example.net', fetchedBy: 'example.net' });
    await call(alice, 'GET', `/messages/${unknownId}/deliveries`, 404);

    // Organizing.
    const patched = await call(bob, 'PATCH', `/messages/${entry.id}`, 200, { json: { seen: true, flagged: true } });
    expect(patched.body).toMatchObject({ id: entry.id, seen: true, flagged: true, mailbox: 'inbox' });
    await call(bob, 'PATCH', `/messages/${entry.id}`, 400, { json: {}, request: 'refused' });
    await call(bob, 'PATCH', `/messages/${entry.id}`, 400, { json: { seen: 'yes' }, request: 'refused' });
    await call(bob, 'PATCH', `/messages/${entry.id}`, 415, { raw: 'seen', headers: { 'content-type': 'text/plain' } });
    await call(bob, 'PATCH', `/messages/${unknownId}`, 404, { json: { seen: true } });

    // Synchronization.
    const changes = await call<{ created: string[]; state: string }>(
      bob,
      'GET',
      `/changes?since=${bobState.body.state}`,
      200,
    );
    expect(changes.body.created).toContain(entry.id);
    const quiet = await call(bob, 'GET', `/changes?since=${changes.body.state}&wait=0&maxChanges=10`, 200);
    expect(quiet.body).toMatchObject({ created: [], updated: [], destroyed: [], hasMore: false });
    expect((await call(bob, 'GET', '/changes', 400)).body.error).toBe('invalid_request');
    expect((await call(bob, 'GET', '/changes?since=garbage', 400)).body.error).toBe('invalid_state');
    expect((await call(bob, 'GET', '/changes?since=999999999', 410)).body.error).toBe('cannot_calculate_changes');
    await call(bob, 'GET', '/state', 200);

    // The forwarding rule.
    expect((await call(bob, 'GET', '/forwarding', 200)).body).toEqual({
      targets: [],
      keepCopy: true,
      enabled: false,
      updatedAt: null,
    });
    const rule = { targets: ['Bobby <bobby@example.org>'], keepCopy: true, enabled: false };
    expect((await call(bob, 'PUT', '/forwarding', 200, { json: rule })).body).toMatchObject({
      targets: ['bobby@example.org'],
    });
    await call(bob, 'PUT', '/forwarding', 400, { json: { ...rule, targets: ['bob@example.net'] } });
    await call(bob, 'PUT', '/forwarding', 400, { json: { targets: [] }, request: 'refused' });
    await call(bob, 'GET', '/forwarding', 200);

    // Unsending what the sender did not send.
    expect((await call(bob, 'POST', `/messages/${entry.id}/unsend`, 409)).body.error).toBe('not_sent');
    await call(alice, 'POST', `/messages/${sentId}/unsend`, 400, { json: { recipients: [] }, request: 'refused' });

    // Authentication: no token, a malformed one, a proof that is not one: every answer a 401 with a challenge.
    const origin = fed.domains['example.com']!.publicUrl;
    for (const path of ['/session', '/messages', '/changes?since=1', `/resources/${digest}`]) {
      const refused = await fetchDocumented(`${origin}/api/v1${path}`, 401);
      expect(refused.headers.get('www-authenticate')).toMatch(/^DPoP /);
    }
    await call(alice, 'GET', '/session', 401, { headers: { authorization: 'DPoP not a token' } });
    const badProof = await call(alice, 'GET', '/session', 401, { headers: { dpop: 'e30.e30.c2ln' } });
    expect(badProof.body.error).toBe('invalid_dpop_proof');

    // Forwarding by hand (PROTOCOL.md §7): Bob forwards the message back to example.com; the refusals.
    const forwarded = await call<{ recipients: string[]; deliveries: unknown[] }>(
      bob,
      'POST',
      `/messages/${entry.id}/forward`,
      202,
      { json: { to: 'Alice <alice@example.com>' } },
    );
    expect(forwarded.body).toMatchObject({
      id: entry.id,
      messageId,
      recipients: ['alice@example.com'],
      deliveries: [{ recipient: 'alice@example.com', domain: 'example.com', status: 'queued' }],
    });
    await call(bob, 'GET', `/messages/${entry.id}/deliveries`, 200);
    await call(bob, 'POST', `/messages/${entry.id}/forward`, 400, { json: { to: 'bob@example.net' } });
    await call(bob, 'POST', `/messages/${entry.id}/forward`, 400, { json: { to: ['x@y.z'] }, request: 'refused' });
    await call(bob, 'POST', `/messages/${unknownId}/forward`, 404, { json: { to: 'alice@example.com' } });
    await call(bob, 'POST', `/messages/${entry.id}/forward`, 415, {
      raw: 'to',
      headers: { 'content-type': 'text/plain' },
    });
    const notReceived = await call(alice, 'POST', `/messages/${sentId}/forward`, 409, {
      json: { to: 'bob@example.net' },
    });
    expect(notReceived.body.error).toBe('not_received');

    // Drafts: saved without a Message-ID (one is generated), replaced, sent; another discarded; the refusals.
    const note = (from: string): Message => ({
      envelope: [{ headers: [{ From: from }, { To: 'bob@example.net' }, { Subject: 'Draft' }] }],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': textLeaf.contentId },
              { 'Content-Type': externalContentType(textLeaf.size, textLeaf.type) },
            ],
          },
        ],
      },
    });
    const saved = await call<{ id: string; messageId: string }>(alice, 'POST', '/drafts', 201, {
      json: { message: note('alice@example.com') },
    });
    expect(saved.body.messageId).toMatch(/@example\.com>$/);
    expect(saved.headers.get('location')).toBe(`/api/v1/messages/${saved.body.id}`);
    const replaced = await call<{ id: string; replaced: string }>(alice, 'PUT', `/drafts/${saved.body.id}`, 200, {
      json: { message: note('Alice <alice@example.com>') },
    });
    expect(replaced.body.replaced).toBe(saved.body.id);
    const draftSent = await call(alice, 'POST', `/drafts/${replaced.body.id}/send`, 202);
    expect(draftSent.body).toMatchObject({ messageId: saved.body.messageId, draft: replaced.body.id, copies: 1 });
    await call(alice, 'DELETE', `/drafts/${replaced.body.id}`, 404);
    await call(alice, 'POST', `/drafts/${replaced.body.id}/send`, 404);
    await call(alice, 'PUT', `/drafts/${sentId}`, 404, { json: { message: note('alice@example.com') } });
    const discarded = await call<{ id: string }>(alice, 'POST', '/drafts', 201, {
      json: { message: note('alice@example.com') },
    });
    await call(alice, 'DELETE', `/drafts/${discarded.body.id}`, 204);
    await call(alice, 'POST', '/drafts', 403, { json: { message: note('mallory@example.com') } });
    const twoBlocks = { ...note('alice@example.com'), envelope: [...note('a@example.com').envelope, { headers: [] }] };
    await call(alice, 'POST', '/drafts', 400, { json: { message: twoBlocks }, request: 'refused' });
    await call(alice, 'POST', '/drafts', 400, { json: { draft: note('alice@example.com') }, request: 'refused' });
    await call(alice, 'POST', '/drafts', 415, { raw: 'draft', headers: { 'content-type': 'text/plain' } });

    // Deleting.
    await call(bob, 'DELETE', `/messages/${entry.id}`, 204);
    await call(bob, 'DELETE', `/messages/${entry.id}`, 404);

    delivered = { sentId, messageId, photoId: upPhoto.body.contentId };
  });

  it('the federation endpoints, discovery and operations', async () => {
    expect(delivered, 'the delivery of the previous test').toBeDefined();
    const { sentId, messageId, photoId } = delivered!;
    const com = fed.domains['example.com']!;
    const net = fed.domains['example.net']!;

    for (const d of [com, net]) {
      const wellKnown = await fetchDocumented(`${d.publicUrl}/.well-known/federizer`, 200);
      expect(wellKnown.body).toMatchObject({
        domain: d.domain,
        transfer_endpoint: `${d.publicUrl}/federation/v1/transfer`,
        fetch_endpoint: `${d.publicUrl}/federation/v1/fetch`,
      });
      await fetchDocumented(`${d.publicUrl}/healthz`, 200);
      await fetchDocumented(`${d.publicUrl}/readyz`, 200);
      const metrics = await fetchDocumented(`${d.publicUrl}/metrics`, 200);
      expect(metrics.bytes.toString()).toContain('federizer_mailbox_');
      // Served once service.ts mounts it (PENDING above).
      const res = (await http.fetch(`${d.publicUrl}/openapi.json`)) as unknown as Response;
      if (res.status !== 404) {
        const served = await documented(doc, 'GET', `${d.publicUrl}/openapi.json`, res, 200);
        expect(served.body).toEqual(mailboxOpenApi(d.mailbox.config));
      } else {
        await res.arrayBuffer();
      }
    }

    // The transfer again, as example.com's outbox made it: 200, the first answer, nothing changed (§5.4).
    const [share] = await com.mailbox.shares.sharesOf(sentId);
    const sentMessage = await com.mailbox.messages.get('alice@example.com', sentId);
    const jwk = share!.dpopKey as JWK;
    const key = await importDpopKey(jwk, (jwk.alg ?? 'ES256') as JwsAlg);
    const assertion = (share!.envelope[0] as { 'jwt-assertion': string })['jwt-assertion'];
    const transferUrl = `${net.publicUrl}/federation/v1/transfer`;
    const transferBody = { message: { envelope: share!.envelope, body: sentMessage!.body } };
    const transferHeaders = async () => ({
      'content-type': 'application/json',
      authorization: `DPoP ${assertion}`,
      dpop: await createDpopProof(key, { htm: 'POST', htu: transferUrl, accessToken: assertion }),
    });
    const headers = await transferHeaders();
    validateRequestBody(doc, {
      method: 'POST',
      path: transferUrl,
      contentType: 'application/json',
      body: transferBody,
      headers,
    });
    const post = (h: Record<string, string>, body: unknown = transferBody) => ({
      method: 'POST',
      headers: h,
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    const again = await fetchDocumented(transferUrl, 200, post(headers));
    expect(again.body).toEqual({ accepted: ['bob@example.net'], rejected: [] });
    const replayed = await fetchDocumented(transferUrl, 401, post(headers));
    // PROTOCOL §5: every 401 is invalid_token; the challenge says it is the proof.
    expect(replayed.body).toMatchObject({ error: 'invalid_token', code: 'dpop_replayed' });
    expect(replayed.headers.get('www-authenticate')).toContain('error="invalid_dpop_proof"');
    const { dpop: _dpop, ...noProof } = await transferHeaders();
    expect((await fetchDocumented(transferUrl, 401, post(noProof))).body.error).toBe('invalid_token');
    const { authorization: _authorization, ...noToken } = await transferHeaders();
    expect((await fetchDocumented(transferUrl, 401, post(noToken))).body.error).toBe('invalid_token');
    const malformed = await fetchDocumented(transferUrl, 400, post(await transferHeaders(), '{"message": {}}'));
    expect(malformed.body).toMatchObject({ error: 'invalid_message', code: 'invalid_shape' });
    const tampered = {
      message: { ...transferBody.message, body: { parts: [] } },
    };
    const digestMismatch = await fetchDocumented(transferUrl, 400, post(await transferHeaders(), tampered));
    expect(digestMismatch.body).toMatchObject({ error: 'invalid_message', code: 'body_digest_mismatch' });

    // A fetch, as example.net's fetcher makes it: the token of its own AS, then ranges and refusals (§6).
    const fetchUrl = `${com.publicUrl}/federation/v1/fetch`;
    const fetchKey = await generateDpopKey();
    const token = (await net.mailbox.as.fetch(assertion, `${com.publicUrl}/api/v1`, messageId, 'example.com', fetchKey))
      .token;
    const fetchHeaders = async (extra: Record<string, string> = {}) => ({
      'content-type': 'application/json',
      authorization: `DPoP ${token}`,
      dpop: await createDpopProof(fetchKey, { htm: 'POST', htu: fetchUrl, accessToken: token }),
      ...extra,
    });
    const fetchBody = { envelope: share!.envelope, content_id: photoId, domain: 'example.net' };
    const firstHeaders = await fetchHeaders({ range: 'bytes=0-99' });
    validateRequestBody(doc, {
      method: 'POST',
      path: fetchUrl,
      contentType: 'application/json',
      body: fetchBody,
      headers: firstHeaders,
    });
    const range = await fetchDocumented(fetchUrl, 206, post(firstHeaders, fetchBody));
    expect(range.bytes.equals(photo.subarray(0, 100))).toBe(true);
    const all = await fetchDocumented(fetchUrl, 200, post(await fetchHeaders(), fetchBody));
    expect(all.bytes.equals(photo)).toBe(true);
    expect(all.headers.get('repr-digest')).toBe(
      `sha-256=:${Buffer.from(photoId.slice(1, -1), 'base64url').toString('base64')}:`,
    );
    const beyond = await fetchDocumented(fetchUrl, 416, post(await fetchHeaders({ range: 'bytes=5000-' }), fetchBody));
    expect(beyond.headers.get('content-range')).toBe(`bytes */${photo.length}`);
    const unknown = { ...fetchBody, content_id: contentId(randomBytes(4)) };
    expect((await fetchDocumented(fetchUrl, 404, post(await fetchHeaders(), unknown))).body.error).toBe(
      'unknown_resource',
    );
    expect((await fetchDocumented(fetchUrl, 400, post(await fetchHeaders(), {}))).body.error).toBe('invalid_request');
    const { authorization: _a, ...noFetchToken } = await fetchHeaders();
    const unauthorized = await fetchDocumented(fetchUrl, 401, post(noFetchToken, fetchBody));
    expect(unauthorized.body.error).toBe('invalid_token');

    // Unsending after the fetch: too late for Bob.
    const unsent = await call(alice, 'POST', `/messages/${sentId}/unsend`, 200, { json: {} });
    expect(unsent.body).toEqual({ withdrawn: [], fetched: ['bob@example.net'], unknown: [] });
  });
});

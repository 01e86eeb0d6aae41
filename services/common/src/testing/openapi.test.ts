import { mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { deref, escape, mediaTypes, operations, references } from './openapi-walk.js';
import {
  OpenApiValidationError,
  findOperation,
  loadOpenApi,
  resolvePointer,
  schemaValidator,
  validateRequestBody,
  validateResponse,
  type OpenApiDocument,
} from './openapi.js';

const REPO = new URL('../../../../', import.meta.url);
const AUTH_DOCUMENT = new URL('openapi/auth.openapi.json', REPO);
const AUTH_SRC = new URL('services/auth/src/', REPO);

/** The error a call throws, so its message can be inspected. */
function thrown(fn: () => void): OpenApiValidationError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(OpenApiValidationError);
    return e as OpenApiValidationError;
  }
  throw new Error('expected an OpenApiValidationError');
}

// ---- the validator on a small document ------------------------------------------------------------------------

const json = (schema: unknown) => ({ 'application/json': { schema } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });

function inlineDocument(): OpenApiDocument {
  return structuredClone({
    openapi: '3.1.0',
    info: { title: 'things', version: '1' },
    servers: [{ url: 'https://api.example.com/base' }],
    paths: {
      '/things': {
        get: {
          operationId: 'listThings',
          responses: {
            '200': { description: 'things', content: json({ type: 'array', items: ref('Thing') }) },
            '4XX': { $ref: '#/components/responses/Problem' },
            default: { description: 'anything else', content: json(ref('Problem')) },
          },
        },
        post: {
          operationId: 'createThing',
          requestBody: { required: true, content: json(ref('NewThing')) },
          responses: {
            '201': {
              description: 'created',
              headers: { Location: { required: true, schema: { type: 'string', pattern: '^/things/' } } },
              content: json(ref('Thing')),
            },
          },
        },
      },
      '/things/{id}': {
        parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string' } }],
        get: {
          operationId: 'getThing',
          responses: {
            '200': { description: 'a thing', content: json(ref('Thing')) },
            '404': { $ref: '#/components/responses/NotFound' },
            '4XX': { $ref: '#/components/responses/Problem' },
          },
        },
        delete: { operationId: 'deleteThing', responses: { '204': { description: 'deleted' } } },
      },
      '/things/special': {
        get: {
          operationId: 'special',
          responses: {
            '200': {
              description: 'text',
              content: { 'text/plain': { schema: { type: 'string', pattern: '^special' } } },
            },
          },
        },
      },
      '/forms': {
        post: {
          operationId: 'postForm',
          parameters: [{ name: 'X-Proof', in: 'header', required: true, schema: { type: 'string', pattern: '^p' } }],
          requestBody: {
            required: true,
            content: {
              'application/x-www-form-urlencoded': {
                schema: {
                  type: 'object',
                  required: ['a'],
                  properties: { a: { const: '1' }, n: { type: 'string', pattern: '^\\d+$' } },
                },
              },
            },
          },
          responses: {
            '204': { description: 'done' },
            '429': {
              description: 'later',
              headers: { 'Retry-After': { required: true, schema: { type: 'integer', minimum: 0 } } },
            },
          },
        },
      },
    },
    components: {
      schemas: {
        Thing: {
          type: 'object',
          required: ['id', 'name', 'createdAt', 'owner'],
          properties: {
            id: { type: 'string' },
            name: { type: 'string' },
            createdAt: { type: 'string', format: 'date-time' },
            owner: ref('Owner'),
          },
          additionalProperties: false,
        },
        Owner: {
          type: 'object',
          required: ['email'],
          properties: { email: { type: 'string', format: 'email' } },
          'x-note': 'extensions are not JSON Schema keywords',
        },
        NewThing: { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1 } } },
        Problem: {
          type: 'object',
          required: ['error'],
          properties: { error: { enum: ['bad', 'gone', 'broken'] } },
          example: { error: 'bad' },
        },
      },
      responses: {
        Problem: { description: 'a problem', content: json(ref('Problem')) },
        NotFound: {
          description: 'no such thing',
          content: json({ allOf: [ref('Problem')], properties: { error: { const: 'gone' } } }),
        },
      },
    },
  }) as OpenApiDocument;
}

const thing = {
  id: 'a/b',
  name: 'one',
  createdAt: '2024-12-22T19:49:35.000Z',
  owner: { email: 'alice@example.com' },
};

describe('validateResponse', () => {
  afterEach(() => vi.restoreAllMocks());

  it('accepts an answer the document describes, matching templates against percent-encoded paths', () => {
    const doc = inlineDocument();
    validateResponse(doc, {
      method: 'GET',
      path: '/things/a%2Fb',
      status: 200,
      contentType: 'application/json; charset=utf-8',
      body: thing,
    });
    expect(findOperation(doc, 'get', '/things/a%2Fb').params).toEqual({ id: 'a/b' });
    validateResponse(doc, { method: 'get', path: '/things', status: 200, contentType: 'application/json', body: [] });
  });

  it('strips a full URL, a query string and the path of the server URL', () => {
    const doc = inlineDocument();
    for (const path of ['https://api.example.com/base/things?limit=1', '/base/things', '/things?x=%20']) {
      validateResponse(doc, { method: 'GET', path, status: 200, contentType: 'application/json', body: [thing] });
    }
  });

  it('prefers a literal path to a template', () => {
    const doc = inlineDocument();
    expect(findOperation(doc, 'GET', '/things/special').template).toBe('/things/special');
    validateResponse(doc, {
      method: 'GET',
      path: '/things/special',
      status: 200,
      contentType: 'text/plain',
      body: 'special',
    });
  });

  it('lists every violation, nested $refs included, with the operation and the status', () => {
    const error = thrown(() =>
      validateResponse(inlineDocument(), {
        method: 'GET',
        path: '/things/x',
        status: 200,
        contentType: 'application/json',
        body: { ...thing, createdAt: 'yesterday', owner: { email: 'not an address' }, colour: 'red', name: undefined },
      }),
    );
    expect(error.operation).toBe('GET /things/{id} (getThing) → 200');
    expect(error.message).toContain('GET /things/{id} (getThing) → 200');
    expect(error.violations).toEqual(
      expect.arrayContaining([
        expect.stringContaining("body must have required property 'name'"),
        expect.stringContaining('body must NOT have additional properties (colour)'),
        expect.stringContaining('body/createdAt must match format "date-time"'),
        expect.stringContaining('body/owner/email must match format "email"'),
      ]),
    );
    expect(error.violations.every((v) => v.includes('#/components/schemas/Thing'))).toBe(true);
  });

  it('picks the response by exact status, then by range, then default', () => {
    const doc = inlineDocument();
    // 404 of getThing is its own response, which only allows `gone`
    validateResponse(doc, {
      method: 'GET',
      path: '/things/x',
      status: 404,
      contentType: 'application/json',
      body: { error: 'gone' },
    });
    const error = thrown(() =>
      validateResponse(doc, {
        method: 'GET',
        path: '/things/x',
        status: 404,
        contentType: 'application/json',
        body: { error: 'bad' },
      }),
    );
    expect(error.violations[0]).toContain('body/error must be equal to constant ("gone")');
    // 409 falls to 4XX; 503 to default
    validateResponse(doc, {
      method: 'GET',
      path: '/things/x',
      status: 409,
      contentType: 'application/json',
      body: { error: 'bad' },
    });
    validateResponse(doc, {
      method: 'GET',
      path: '/things',
      status: 418,
      contentType: 'application/json',
      body: { error: 'bad' },
    });
    validateResponse(doc, {
      method: 'GET',
      path: '/things',
      status: 503,
      contentType: 'application/json',
      body: { error: 'broken' },
    });
    const ranged = thrown(() =>
      validateResponse(doc, {
        method: 'GET',
        path: '/things',
        status: 503,
        contentType: 'application/json',
        body: { error: 'nope' },
      }),
    );
    expect(ranged.operation).toBe('GET /things (listThings) → 503 (as default)');
  });

  it('refuses an undocumented status, method or path', () => {
    const doc = inlineDocument();
    expect(
      thrown(() =>
        validateResponse(doc, {
          method: 'GET',
          path: '/things/x',
          status: 500,
          contentType: 'application/json',
          body: {},
        }),
      ).violations[0],
    ).toBe('status 500 is not documented (documented: 200, 404, 4XX)');
    expect(thrown(() => validateResponse(doc, { method: 'PUT', path: '/things/x', status: 200 })).violations[0]).toBe(
      '/things/{id} documents no PUT (documented: GET, DELETE)',
    );
    expect(thrown(() => validateResponse(doc, { method: 'GET', path: '/nothing', status: 200 })).violations[0]).toBe(
      'no path of the document matches',
    );
    expect(() => validateResponse(doc, { method: 'GET', path: '/things/', status: 200 })).toThrow(
      OpenApiValidationError,
    );
  });

  it('checks the content type, and parses JSON text', () => {
    const doc = inlineDocument();
    const base = { method: 'GET', path: '/things/x', status: 200 } as const;
    validateResponse(doc, { ...base, contentType: 'application/json', body: JSON.stringify(thing) });
    validateResponse(doc, { ...base, body: thing }); // one documented media type: no content type needed
    expect(thrown(() => validateResponse(doc, { ...base, contentType: 'text/html', body: '<p>' })).violations[0]).toBe(
      'content type text/html is not documented (documented: application/json)',
    );
    expect(
      thrown(() => validateResponse(doc, { ...base, contentType: 'application/json', body: '{"id":' })).violations[0],
    ).toMatch(/^the body is not JSON/);
    expect(thrown(() => validateResponse(doc, { ...base, contentType: null })).violations[0]).toBe(
      'there is no body, but the document describes application/json',
    );
  });

  it('wants no body where none is documented', () => {
    const doc = inlineDocument();
    validateResponse(doc, { method: 'DELETE', path: '/things/x', status: 204 });
    validateResponse(doc, { method: 'DELETE', path: '/things/x', status: 204, contentType: null, body: '' });
    expect(
      thrown(() => validateResponse(doc, { method: 'DELETE', path: '/things/x', status: 204, body: { deleted: true } }))
        .violations,
    ).toEqual(['a body is not documented here']);
  });

  it('checks the required headers of an answer when they are given', () => {
    const doc = inlineDocument();
    const created = {
      method: 'POST',
      path: '/things',
      status: 201,
      contentType: 'application/json',
      body: thing,
    } as const;
    validateResponse(doc, created); // headers not given: not checked
    validateResponse(doc, { ...created, headers: new Headers({ location: '/things/a%2Fb' }) });
    expect(thrown(() => validateResponse(doc, { ...created, headers: {} })).violations).toEqual([
      'the required header Location is missing',
    ]);
    const later = { method: 'POST', path: '/forms', status: 429 } as const;
    validateResponse(doc, { ...later, headers: { 'retry-after': '30' } });
    expect(thrown(() => validateResponse(doc, { ...later, headers: { 'Retry-After': 'soon' } })).violations[0]).toBe(
      'header Retry-After must be integer',
    );
  });

  it('compiles each schema once per document', () => {
    const doc = inlineDocument();
    const compile = vi.spyOn(Ajv2020.prototype, 'compile');
    const answer = { method: 'GET', path: '/things', status: 200, contentType: 'application/json', body: [thing] };
    validateResponse(doc, answer);
    expect(compile).toHaveBeenCalledTimes(1);
    validateResponse(doc, answer);
    validateResponse(doc, { ...answer, path: '/things?again' });
    expect(compile).toHaveBeenCalledTimes(1);
    validateResponse(inlineDocument(), answer); // another document, another cache
    expect(compile).toHaveBeenCalledTimes(2);
  });
});

describe('loadOpenApi', () => {
  it('reads a 3.1 document once, and refuses other versions', () => {
    const dir = mkdtempSync(join(tmpdir(), 'openapi-'));
    try {
      const file = join(dir, 'doc.json');
      writeFileSync(file, JSON.stringify(inlineDocument()));
      const doc = loadOpenApi(file);
      expect(loadOpenApi(pathToFileURL(file))).toBe(doc);
      expect(findOperation(doc, 'DELETE', '/things/1').operation.operationId).toBe('deleteThing');
      writeFileSync(file, JSON.stringify({ ...inlineDocument(), openapi: '3.0.3' }));
      utimesSync(file, new Date(), new Date(Date.now() + 5000));
      expect(() => loadOpenApi(file)).toThrow(/is not an OpenAPI 3\.1 document/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('validateRequestBody', () => {
  it('checks a JSON body, and that a required body is there', () => {
    const doc = inlineDocument();
    validateRequestBody(doc, {
      method: 'POST',
      path: '/things',
      contentType: 'application/json',
      body: { name: 'two' },
    });
    expect(
      thrown(() =>
        validateRequestBody(doc, {
          method: 'POST',
          path: '/things',
          contentType: 'application/json',
          body: { name: '' },
        }),
      ).violations[0],
    ).toContain('body/name must NOT have fewer than 1 characters');
    expect(thrown(() => validateRequestBody(doc, { method: 'POST', path: '/things' })).violations).toEqual([
      'the request body is required',
    ]);
    expect(
      thrown(() => validateRequestBody(doc, { method: 'GET', path: '/things', body: { name: 'x' } })).violations,
    ).toEqual(['the operation documents no request body']);
  });

  it('decodes form bodies, and checks required header parameters when headers are given', () => {
    const doc = inlineDocument();
    const form = { method: 'POST', path: '/forms', contentType: 'application/x-www-form-urlencoded' } as const;
    validateRequestBody(doc, { ...form, body: 'a=1&n=42' });
    validateRequestBody(doc, { ...form, body: new URLSearchParams({ a: '1' }), headers: { 'x-proof': 'proof' } });
    expect(thrown(() => validateRequestBody(doc, { ...form, body: 'a=2&n=x' })).violations).toEqual([
      expect.stringContaining('body/a must be equal to constant ("1")'),
      expect.stringContaining('body/n must match pattern'),
    ]);
    expect(thrown(() => validateRequestBody(doc, { ...form, body: 'a=1', headers: {} })).violations).toEqual([
      'the required header X-Proof is missing',
    ]);
  });
});

// ---- the Authorization Server's document ----------------------------------------------------------------------

function source(name: string): string {
  return readFileSync(new URL(name, AUTH_SRC), 'utf8');
}

/** `router.get('/users/:address', ...)` and the like, as [METHOD, OpenAPI template]. */
function expressRoutes(text: string, mount: string): [string, string][] {
  return [...text.matchAll(/\b(?:router|app)\.(get|post|put|patch|delete)\(\s*['`]([^'`$]+)/g)].map(
    ([, method, path]) => [method!.toUpperCase(), `${mount}${path!.replace(/:(\w+)/g, '{$1}')}`],
  );
}

/** The text of each `new <name>(...)` call of a source file. */
function constructorCalls(text: string, name: string): string[] {
  const calls: string[] = [];
  for (let at = text.indexOf(`new ${name}(`); at !== -1; at = text.indexOf(`new ${name}(`, at + 1)) {
    let depth = 0;
    let end = at + name.length + 4;
    for (; end < text.length; end++) {
      if (text[end] === '(') depth++;
      else if (text[end] === ')' && --depth === 0) break;
    }
    calls.push(text.slice(at, end + 1));
  }
  return calls;
}

describe('openapi/auth.openapi.json', () => {
  const doc = loadOpenApi(AUTH_DOCUMENT);

  it('is an OpenAPI 3.1 document by the official meta-schema', () => {
    // In JSON Schema 2020-12 `format` is an annotation unless a meta-schema asks for the format-assertion
    // vocabulary, which the OpenAPI meta-schema does not; OpenAPI 3.1 also allows relative URLs.
    const ajv = new Ajv2020({ allErrors: true, strict: false, validateFormats: false });
    // Ajv resolves `$dynamicRef` only to a `$dynamicAnchor` at a schema's root; this one is in `$defs/schema`.
    // Without a dialect that extends it (the meta-schema alone), `$dynamicRef: #meta` means `$ref: #/$defs/schema`.
    const metaSchema = JSON.parse(
      JSON.stringify(OPENAPI_3_1_SCHEMA).replaceAll('"$dynamicRef":"#meta"', '"$ref":"#/$defs/schema"'),
    ) as Record<string, unknown>;
    expect(JSON.stringify(metaSchema)).not.toContain('$dynamicRef');
    const validate = ajv.compile(metaSchema);
    const ok = validate(doc);
    expect(ok ? [] : validate.errors!.map((e) => `${e.instancePath} ${e.message}`)).toEqual([]);
    expect(doc.openapi).toBe('3.1.0');
  });

  it('resolves every $ref', () => {
    const refs = references(doc);
    expect(refs.length).toBeGreaterThan(50);
    const broken = refs.filter(({ ref }) => !ref.startsWith('#/') || resolvePointer(doc, ref) === undefined);
    expect(broken).toEqual([]);
  });

  it('gives every operation an id, tags, responses and declared path parameters', () => {
    const ids = new Set<string>();
    const tags = new Set(((doc.tags as { name: string }[] | undefined) ?? []).map((t) => t.name));
    const schemes = new Set(Object.keys((doc.components?.securitySchemes as object) ?? {}));
    for (const { template, item, operation, pointer } of operations(doc)) {
      expect(operation.operationId, pointer).toBeTypeOf('string');
      expect(ids.has(operation.operationId as string), `${pointer}: operationId used twice`).toBe(false);
      ids.add(operation.operationId as string);
      expect(Object.keys((operation.responses as object) ?? {}), pointer).not.toEqual([]);
      for (const tag of (operation.tags as string[] | undefined) ?? []) expect(tags, pointer).toContain(tag);
      for (const requirement of (operation.security as Record<string, unknown>[] | undefined) ?? []) {
        for (const name of Object.keys(requirement)) expect(schemes, pointer).toContain(name);
      }
      const declared = [...((item.parameters as unknown[]) ?? []), ...((operation.parameters as unknown[]) ?? [])]
        .map((p) => deref(doc, p, pointer).value as { name: string; in: string; required?: boolean })
        .filter((p) => p.in === 'path');
      for (const [, name] of template.matchAll(/\{([^}]+)\}/g)) {
        expect(
          declared.find((p) => p.name === name && p.required === true),
          `${pointer}: path parameter ${name}`,
        ).toBeDefined();
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
    expect(examples).toBeGreaterThan(20);
    for (const pointer of ['#/components/parameters', '#/components/headers']) {
      for (const name of Object.keys((resolvePointer(doc, pointer) as object) ?? {})) {
        schemaValidator(doc, `${pointer}/${escape(name)}/schema`);
      }
    }
  });

  it('shows the three exchanges, each request and answer an example of its own kind', () => {
    const exchange = findOperation(doc, 'POST', '/token');
    const request = (exchange.operation.requestBody as { content: Record<string, { examples: object }> }).content[
      'application/x-www-form-urlencoded'
    ]!;
    expect(Object.keys(request.examples)).toEqual(['send', 'forward', 'fetch']);
    const answers = (exchange.operation.responses as Record<string, { content: Record<string, { examples: object }> }>)[
      '200'
    ]!.content['application/json']!;
    expect(Object.keys(answers.examples)).toEqual(['send', 'forward', 'fetch']);
    const kinds = { send: 'SendExchangeRequest', forward: 'ForwardExchangeRequest', fetch: 'FetchExchangeRequest' };
    for (const [kind, schema] of Object.entries(kinds)) {
      const value = (
        deref(doc, (request.examples as Record<string, unknown>)[kind], '#').value as { value: Record<string, string> }
      ).value;
      const validate = schemaValidator(doc, `#/components/schemas/${schema}`);
      expect(validate(value) ? [] : validate.errors, kind).toEqual([]);
      validateRequestBody(doc, {
        method: 'POST',
        path: '/token',
        contentType: 'application/x-www-form-urlencoded',
        body: new URLSearchParams(value).toString(),
        headers: { DPoP: 'eyJ0eXAiOiJkcG9wK2p3dCJ9.eyJodG0iOiJQT1NUIn0.c2ln' },
      });
      // `headers` is JSON text; its content schema is checked here, since JSON Schema only annotates it.
      if (value.headers !== undefined) {
        const headers = schemaValidator(
          doc,
          `#/components/schemas/${kind === 'send' ? 'Origin' : 'Forward'}ExchangeHeaders`,
        );
        expect(headers(JSON.parse(value.headers)) ? [] : headers.errors, `${kind} headers`).toEqual([]);
      }
    }
  });

  it('documents every route of the AS source, and no admin route the source lacks', () => {
    const service = source('service.ts');
    const adminMount = /router\.use\(\s*'([^']+)',\s*adminRouter\(/.exec(service)?.[1];
    const interactionMount = /router\.use\(\s*'([^']+)',\s*interactionRouter\(/.exec(service)?.[1];
    expect(adminMount).toBe('/admin/v1');
    expect(interactionMount).toBe('/interaction');
    const admin = expressRoutes(source('admin.ts'), adminMount!);
    expect(admin.length).toBeGreaterThanOrEqual(8);
    const routes = [
      ...admin,
      ...expressRoutes(source('interactions.ts'), interactionMount!),
      ...expressRoutes(service, ''),
    ];
    const documented = operations(doc).map(({ method, template }) => `${method.toUpperCase()} ${template}`);
    const missing = routes.map(([method, path]) => `${method} ${path}`).filter((r) => !documented.includes(r));
    expect(missing).toEqual([]);
    const extra = documented.filter(
      (r) => r.includes(' /admin/') && !admin.some(([method, path]) => `${method} ${path}` === r),
    );
    expect(extra).toEqual([]);
  });

  it('documents every error code of the admin API with the status admin.ts gives it', () => {
    const text = source('admin.ts');
    const mapped = [.../const STATUS[^{]*\{([^}]*)\}/.exec(text)![1]!.matchAll(/(\w+):\s*(\d{3})/g)].map(
      ([, code, status]) => [code!, Number(status)] as const,
    );
    const direct = [...text.matchAll(/problem\(\s*res,\s*(\d{3}),\s*'(\w+)'/g)].map(
      ([, status, code]) => [code!, Number(status)] as const,
    );
    expect(mapped.length).toBeGreaterThanOrEqual(7);
    const all = [...mapped, ...direct, ['server_error', 500] as const];
    const adminOps = operations(doc).filter(({ template }) => template.startsWith('/admin/'));
    for (const [code, status] of all) {
      const accepting = adminOps.filter(({ method, template }) => {
        try {
          validateResponse(doc, {
            method,
            path: template.replace(/\{[^}]+\}/g, 'x'),
            status,
            contentType: 'application/json',
            body: { error: code, error_description: 'a description' },
          });
          return true;
        } catch {
          return false;
        }
      });
      expect(accepting.length, `${code} (${status})`).toBeGreaterThan(0);
    }
    // Every admin operation answers 401 with the challenge.
    for (const { method, template } of adminOps) {
      validateResponse(doc, {
        method,
        path: template.replace(/\{[^}]+\}/g, 'x'),
        status: 401,
        contentType: 'application/json',
        body: { error: 'invalid_token', error_description: 'the admin API needs Authorization: Bearer <admin token>' },
        headers: { 'WWW-Authenticate': 'Bearer realm="federizer-admin"' },
      });
    }
  });

  it('documents every error code of the token exchange with its status', () => {
    const calls = constructorCalls(source('exchange.ts'), 'ExchangeError').filter((c) =>
      /^new ExchangeError\(\s*'/.test(c),
    );
    expect(calls.length).toBeGreaterThan(20);
    const codes = new Map<string, number>();
    for (const call of calls) {
      const code = /^new ExchangeError\(\s*'(\w+)'/.exec(call)![1]!;
      codes.set(code, Number(/status:\s*(\d{3})/.exec(call)?.[1] ?? 400));
    }
    // and what oidc-provider answers before the exchange runs
    codes.set('unsupported_grant_type', 400).set('invalid_client', 401).set('server_error', 500);
    expect([...codes.keys()]).toEqual(
      expect.arrayContaining(['invalid_request', 'invalid_dpop_proof', 'quota_exceeded']),
    );
    for (const [code, status] of codes) {
      const answer = {
        method: 'POST',
        path: '/token',
        status,
        contentType: 'application/json',
        body: { error: code, error_description: 'a description' },
      };
      expect(() => validateResponse(doc, answer), `${code} (${status})`).not.toThrow();
    }
    expect(() =>
      validateResponse(doc, {
        method: 'POST',
        path: '/token',
        status: 429,
        contentType: 'application/json',
        body: { error: 'quota_exceeded', error_description: 'x' },
        headers: {},
      }),
    ).toThrow(/Retry-After is missing/);
    expect(() =>
      validateResponse(doc, {
        method: 'POST',
        path: '/token',
        status: 400,
        contentType: 'application/json',
        body: { error: 'quota_exceeded', error_description: 'x' },
      }),
    ).toThrow(/body\/error must be equal to one of the allowed values/);
  });
});

/**
 * The official JSON Schema of OpenAPI 3.1 documents (https://spec.openapis.org/oas/3.1/schema/2022-10-07), published by the OpenAPI Initiative
 * under the Apache License 2.0 (https://github.com/OAI/OpenAPI-Specification, schemas/v3.1/schema.json). No
 * npm package of the workspace ships it, so it is copied here verbatim. It checks the structure of the
 * document; Schema Objects are checked by compiling them with Ajv 2020 (see the tests above).
 */
const OPENAPI_3_1_SCHEMA: Record<string, unknown> = {
  $id: 'https://spec.openapis.org/oas/3.1/schema/2022-10-07',
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  description:
    'The description of OpenAPI v3.1.x documents without schema validation, as defined by https://spec.openapis.org/oas/v3.1.0',
  type: 'object',
  properties: {
    openapi: {
      type: 'string',
      pattern: '^3\\.1\\.\\d+(-.+)?$',
    },
    info: {
      $ref: '#/$defs/info',
    },
    jsonSchemaDialect: {
      type: 'string',
      format: 'uri',
      default: 'https://spec.openapis.org/oas/3.1/dialect/base',
    },
    servers: {
      type: 'array',
      items: {
        $ref: '#/$defs/server',
      },
      default: [
        {
          url: '/',
        },
      ],
    },
    paths: {
      $ref: '#/$defs/paths',
    },
    webhooks: {
      type: 'object',
      additionalProperties: {
        $ref: '#/$defs/path-item-or-reference',
      },
    },
    components: {
      $ref: '#/$defs/components',
    },
    security: {
      type: 'array',
      items: {
        $ref: '#/$defs/security-requirement',
      },
    },
    tags: {
      type: 'array',
      items: {
        $ref: '#/$defs/tag',
      },
    },
    externalDocs: {
      $ref: '#/$defs/external-documentation',
    },
  },
  required: ['openapi', 'info'],
  anyOf: [
    {
      required: ['paths'],
    },
    {
      required: ['components'],
    },
    {
      required: ['webhooks'],
    },
  ],
  $ref: '#/$defs/specification-extensions',
  unevaluatedProperties: false,
  $defs: {
    info: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#info-object',
      type: 'object',
      properties: {
        title: {
          type: 'string',
        },
        summary: {
          type: 'string',
        },
        description: {
          type: 'string',
        },
        termsOfService: {
          type: 'string',
          format: 'uri',
        },
        contact: {
          $ref: '#/$defs/contact',
        },
        license: {
          $ref: '#/$defs/license',
        },
        version: {
          type: 'string',
        },
      },
      required: ['title', 'version'],
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    contact: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#contact-object',
      type: 'object',
      properties: {
        name: {
          type: 'string',
        },
        url: {
          type: 'string',
          format: 'uri',
        },
        email: {
          type: 'string',
          format: 'email',
        },
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    license: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#license-object',
      type: 'object',
      properties: {
        name: {
          type: 'string',
        },
        identifier: {
          type: 'string',
        },
        url: {
          type: 'string',
          format: 'uri',
        },
      },
      required: ['name'],
      dependentSchemas: {
        identifier: {
          not: {
            required: ['url'],
          },
        },
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    server: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#server-object',
      type: 'object',
      properties: {
        url: {
          type: 'string',
          format: 'uri-reference',
        },
        description: {
          type: 'string',
        },
        variables: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/server-variable',
          },
        },
      },
      required: ['url'],
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'server-variable': {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#server-variable-object',
      type: 'object',
      properties: {
        enum: {
          type: 'array',
          items: {
            type: 'string',
          },
          minItems: 1,
        },
        default: {
          type: 'string',
        },
        description: {
          type: 'string',
        },
      },
      required: ['default'],
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    components: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#components-object',
      type: 'object',
      properties: {
        schemas: {
          type: 'object',
          additionalProperties: {
            $dynamicRef: '#meta',
          },
        },
        responses: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/response-or-reference',
          },
        },
        parameters: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/parameter-or-reference',
          },
        },
        examples: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/example-or-reference',
          },
        },
        requestBodies: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/request-body-or-reference',
          },
        },
        headers: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/header-or-reference',
          },
        },
        securitySchemes: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/security-scheme-or-reference',
          },
        },
        links: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/link-or-reference',
          },
        },
        callbacks: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/callbacks-or-reference',
          },
        },
        pathItems: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/path-item-or-reference',
          },
        },
      },
      patternProperties: {
        '^(schemas|responses|parameters|examples|requestBodies|headers|securitySchemes|links|callbacks|pathItems)$': {
          $comment:
            'Enumerating all of the property names in the regex above is necessary for unevaluatedProperties to work as expected',
          propertyNames: {
            pattern: '^[a-zA-Z0-9._-]+$',
          },
        },
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    paths: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#paths-object',
      type: 'object',
      patternProperties: {
        '^/': {
          $ref: '#/$defs/path-item-or-reference',
        },
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'path-item': {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#path-item-object',
      type: 'object',
      properties: {
        summary: {
          type: 'string',
        },
        description: {
          type: 'string',
        },
        servers: {
          type: 'array',
          items: {
            $ref: '#/$defs/server',
          },
        },
        parameters: {
          type: 'array',
          items: {
            $ref: '#/$defs/parameter-or-reference',
          },
        },
        get: {
          $ref: '#/$defs/operation',
        },
        put: {
          $ref: '#/$defs/operation',
        },
        post: {
          $ref: '#/$defs/operation',
        },
        delete: {
          $ref: '#/$defs/operation',
        },
        options: {
          $ref: '#/$defs/operation',
        },
        head: {
          $ref: '#/$defs/operation',
        },
        patch: {
          $ref: '#/$defs/operation',
        },
        trace: {
          $ref: '#/$defs/operation',
        },
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'path-item-or-reference': {
      if: {
        type: 'object',
        required: ['$ref'],
      },
      then: {
        $ref: '#/$defs/reference',
      },
      else: {
        $ref: '#/$defs/path-item',
      },
    },
    operation: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#operation-object',
      type: 'object',
      properties: {
        tags: {
          type: 'array',
          items: {
            type: 'string',
          },
        },
        summary: {
          type: 'string',
        },
        description: {
          type: 'string',
        },
        externalDocs: {
          $ref: '#/$defs/external-documentation',
        },
        operationId: {
          type: 'string',
        },
        parameters: {
          type: 'array',
          items: {
            $ref: '#/$defs/parameter-or-reference',
          },
        },
        requestBody: {
          $ref: '#/$defs/request-body-or-reference',
        },
        responses: {
          $ref: '#/$defs/responses',
        },
        callbacks: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/callbacks-or-reference',
          },
        },
        deprecated: {
          default: false,
          type: 'boolean',
        },
        security: {
          type: 'array',
          items: {
            $ref: '#/$defs/security-requirement',
          },
        },
        servers: {
          type: 'array',
          items: {
            $ref: '#/$defs/server',
          },
        },
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'external-documentation': {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#external-documentation-object',
      type: 'object',
      properties: {
        description: {
          type: 'string',
        },
        url: {
          type: 'string',
          format: 'uri',
        },
      },
      required: ['url'],
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    parameter: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#parameter-object',
      type: 'object',
      properties: {
        name: {
          type: 'string',
        },
        in: {
          enum: ['query', 'header', 'path', 'cookie'],
        },
        description: {
          type: 'string',
        },
        required: {
          default: false,
          type: 'boolean',
        },
        deprecated: {
          default: false,
          type: 'boolean',
        },
        schema: {
          $dynamicRef: '#meta',
        },
        content: {
          $ref: '#/$defs/content',
          minProperties: 1,
          maxProperties: 1,
        },
      },
      required: ['name', 'in'],
      oneOf: [
        {
          required: ['schema'],
        },
        {
          required: ['content'],
        },
      ],
      if: {
        properties: {
          in: {
            const: 'query',
          },
        },
        required: ['in'],
      },
      then: {
        properties: {
          allowEmptyValue: {
            default: false,
            type: 'boolean',
          },
        },
      },
      dependentSchemas: {
        schema: {
          properties: {
            style: {
              type: 'string',
            },
            explode: {
              type: 'boolean',
            },
          },
          allOf: [
            {
              $ref: '#/$defs/examples',
            },
            {
              $ref: '#/$defs/parameter/dependentSchemas/schema/$defs/styles-for-path',
            },
            {
              $ref: '#/$defs/parameter/dependentSchemas/schema/$defs/styles-for-header',
            },
            {
              $ref: '#/$defs/parameter/dependentSchemas/schema/$defs/styles-for-query',
            },
            {
              $ref: '#/$defs/parameter/dependentSchemas/schema/$defs/styles-for-cookie',
            },
            {
              $ref: '#/$defs/parameter/dependentSchemas/schema/$defs/styles-for-form',
            },
          ],
          $defs: {
            'styles-for-path': {
              if: {
                properties: {
                  in: {
                    const: 'path',
                  },
                },
                required: ['in'],
              },
              then: {
                properties: {
                  name: {
                    pattern: '[^/#?]+$',
                  },
                  style: {
                    default: 'simple',
                    enum: ['matrix', 'label', 'simple'],
                  },
                  required: {
                    const: true,
                  },
                },
                required: ['required'],
              },
            },
            'styles-for-header': {
              if: {
                properties: {
                  in: {
                    const: 'header',
                  },
                },
                required: ['in'],
              },
              then: {
                properties: {
                  style: {
                    default: 'simple',
                    const: 'simple',
                  },
                },
              },
            },
            'styles-for-query': {
              if: {
                properties: {
                  in: {
                    const: 'query',
                  },
                },
                required: ['in'],
              },
              then: {
                properties: {
                  style: {
                    default: 'form',
                    enum: ['form', 'spaceDelimited', 'pipeDelimited', 'deepObject'],
                  },
                  allowReserved: {
                    default: false,
                    type: 'boolean',
                  },
                },
              },
            },
            'styles-for-cookie': {
              if: {
                properties: {
                  in: {
                    const: 'cookie',
                  },
                },
                required: ['in'],
              },
              then: {
                properties: {
                  style: {
                    default: 'form',
                    const: 'form',
                  },
                },
              },
            },
            'styles-for-form': {
              if: {
                properties: {
                  style: {
                    const: 'form',
                  },
                },
                required: ['style'],
              },
              then: {
                properties: {
                  explode: {
                    default: true,
                  },
                },
              },
              else: {
                properties: {
                  explode: {
                    default: false,
                  },
                },
              },
            },
          },
        },
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'parameter-or-reference': {
      if: {
        type: 'object',
        required: ['$ref'],
      },
      then: {
        $ref: '#/$defs/reference',
      },
      else: {
        $ref: '#/$defs/parameter',
      },
    },
    'request-body': {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#request-body-object',
      type: 'object',
      properties: {
        description: {
          type: 'string',
        },
        content: {
          $ref: '#/$defs/content',
        },
        required: {
          default: false,
          type: 'boolean',
        },
      },
      required: ['content'],
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'request-body-or-reference': {
      if: {
        type: 'object',
        required: ['$ref'],
      },
      then: {
        $ref: '#/$defs/reference',
      },
      else: {
        $ref: '#/$defs/request-body',
      },
    },
    content: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#fixed-fields-10',
      type: 'object',
      additionalProperties: {
        $ref: '#/$defs/media-type',
      },
      propertyNames: {
        format: 'media-range',
      },
    },
    'media-type': {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#media-type-object',
      type: 'object',
      properties: {
        schema: {
          $dynamicRef: '#meta',
        },
        encoding: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/encoding',
          },
        },
      },
      allOf: [
        {
          $ref: '#/$defs/specification-extensions',
        },
        {
          $ref: '#/$defs/examples',
        },
      ],
      unevaluatedProperties: false,
    },
    encoding: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#encoding-object',
      type: 'object',
      properties: {
        contentType: {
          type: 'string',
          format: 'media-range',
        },
        headers: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/header-or-reference',
          },
        },
        style: {
          default: 'form',
          enum: ['form', 'spaceDelimited', 'pipeDelimited', 'deepObject'],
        },
        explode: {
          type: 'boolean',
        },
        allowReserved: {
          default: false,
          type: 'boolean',
        },
      },
      allOf: [
        {
          $ref: '#/$defs/specification-extensions',
        },
        {
          $ref: '#/$defs/encoding/$defs/explode-default',
        },
      ],
      unevaluatedProperties: false,
      $defs: {
        'explode-default': {
          if: {
            properties: {
              style: {
                const: 'form',
              },
            },
            required: ['style'],
          },
          then: {
            properties: {
              explode: {
                default: true,
              },
            },
          },
          else: {
            properties: {
              explode: {
                default: false,
              },
            },
          },
        },
      },
    },
    responses: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#responses-object',
      type: 'object',
      properties: {
        default: {
          $ref: '#/$defs/response-or-reference',
        },
      },
      patternProperties: {
        '^[1-5](?:[0-9]{2}|XX)$': {
          $ref: '#/$defs/response-or-reference',
        },
      },
      minProperties: 1,
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
      if: {
        $comment: 'either default, or at least one response code property must exist',
        patternProperties: {
          '^[1-5](?:[0-9]{2}|XX)$': false,
        },
      },
      then: {
        required: ['default'],
      },
    },
    response: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#response-object',
      type: 'object',
      properties: {
        description: {
          type: 'string',
        },
        headers: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/header-or-reference',
          },
        },
        content: {
          $ref: '#/$defs/content',
        },
        links: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/link-or-reference',
          },
        },
      },
      required: ['description'],
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'response-or-reference': {
      if: {
        type: 'object',
        required: ['$ref'],
      },
      then: {
        $ref: '#/$defs/reference',
      },
      else: {
        $ref: '#/$defs/response',
      },
    },
    callbacks: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#callback-object',
      type: 'object',
      $ref: '#/$defs/specification-extensions',
      additionalProperties: {
        $ref: '#/$defs/path-item-or-reference',
      },
    },
    'callbacks-or-reference': {
      if: {
        type: 'object',
        required: ['$ref'],
      },
      then: {
        $ref: '#/$defs/reference',
      },
      else: {
        $ref: '#/$defs/callbacks',
      },
    },
    example: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#example-object',
      type: 'object',
      properties: {
        summary: {
          type: 'string',
        },
        description: {
          type: 'string',
        },
        value: true,
        externalValue: {
          type: 'string',
          format: 'uri',
        },
      },
      not: {
        required: ['value', 'externalValue'],
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'example-or-reference': {
      if: {
        type: 'object',
        required: ['$ref'],
      },
      then: {
        $ref: '#/$defs/reference',
      },
      else: {
        $ref: '#/$defs/example',
      },
    },
    link: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#link-object',
      type: 'object',
      properties: {
        operationRef: {
          type: 'string',
          format: 'uri-reference',
        },
        operationId: {
          type: 'string',
        },
        parameters: {
          $ref: '#/$defs/map-of-strings',
        },
        requestBody: true,
        description: {
          type: 'string',
        },
        body: {
          $ref: '#/$defs/server',
        },
      },
      oneOf: [
        {
          required: ['operationRef'],
        },
        {
          required: ['operationId'],
        },
      ],
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'link-or-reference': {
      if: {
        type: 'object',
        required: ['$ref'],
      },
      then: {
        $ref: '#/$defs/reference',
      },
      else: {
        $ref: '#/$defs/link',
      },
    },
    header: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#header-object',
      type: 'object',
      properties: {
        description: {
          type: 'string',
        },
        required: {
          default: false,
          type: 'boolean',
        },
        deprecated: {
          default: false,
          type: 'boolean',
        },
        schema: {
          $dynamicRef: '#meta',
        },
        content: {
          $ref: '#/$defs/content',
          minProperties: 1,
          maxProperties: 1,
        },
      },
      oneOf: [
        {
          required: ['schema'],
        },
        {
          required: ['content'],
        },
      ],
      dependentSchemas: {
        schema: {
          properties: {
            style: {
              default: 'simple',
              const: 'simple',
            },
            explode: {
              default: false,
              type: 'boolean',
            },
          },
          $ref: '#/$defs/examples',
        },
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    'header-or-reference': {
      if: {
        type: 'object',
        required: ['$ref'],
      },
      then: {
        $ref: '#/$defs/reference',
      },
      else: {
        $ref: '#/$defs/header',
      },
    },
    tag: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#tag-object',
      type: 'object',
      properties: {
        name: {
          type: 'string',
        },
        description: {
          type: 'string',
        },
        externalDocs: {
          $ref: '#/$defs/external-documentation',
        },
      },
      required: ['name'],
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
    },
    reference: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#reference-object',
      type: 'object',
      properties: {
        $ref: {
          type: 'string',
          format: 'uri-reference',
        },
        summary: {
          type: 'string',
        },
        description: {
          type: 'string',
        },
      },
      unevaluatedProperties: false,
    },
    schema: {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#schema-object',
      $dynamicAnchor: 'meta',
      type: ['object', 'boolean'],
    },
    'security-scheme': {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#security-scheme-object',
      type: 'object',
      properties: {
        type: {
          enum: ['apiKey', 'http', 'mutualTLS', 'oauth2', 'openIdConnect'],
        },
        description: {
          type: 'string',
        },
      },
      required: ['type'],
      allOf: [
        {
          $ref: '#/$defs/specification-extensions',
        },
        {
          $ref: '#/$defs/security-scheme/$defs/type-apikey',
        },
        {
          $ref: '#/$defs/security-scheme/$defs/type-http',
        },
        {
          $ref: '#/$defs/security-scheme/$defs/type-http-bearer',
        },
        {
          $ref: '#/$defs/security-scheme/$defs/type-oauth2',
        },
        {
          $ref: '#/$defs/security-scheme/$defs/type-oidc',
        },
      ],
      unevaluatedProperties: false,
      $defs: {
        'type-apikey': {
          if: {
            properties: {
              type: {
                const: 'apiKey',
              },
            },
            required: ['type'],
          },
          then: {
            properties: {
              name: {
                type: 'string',
              },
              in: {
                enum: ['query', 'header', 'cookie'],
              },
            },
            required: ['name', 'in'],
          },
        },
        'type-http': {
          if: {
            properties: {
              type: {
                const: 'http',
              },
            },
            required: ['type'],
          },
          then: {
            properties: {
              scheme: {
                type: 'string',
              },
            },
            required: ['scheme'],
          },
        },
        'type-http-bearer': {
          if: {
            properties: {
              type: {
                const: 'http',
              },
              scheme: {
                type: 'string',
                pattern: '^[Bb][Ee][Aa][Rr][Ee][Rr]$',
              },
            },
            required: ['type', 'scheme'],
          },
          then: {
            properties: {
              bearerFormat: {
                type: 'string',
              },
            },
          },
        },
        'type-oauth2': {
          if: {
            properties: {
              type: {
                const: 'oauth2',
              },
            },
            required: ['type'],
          },
          then: {
            properties: {
              flows: {
                $ref: '#/$defs/oauth-flows',
              },
            },
            required: ['flows'],
          },
        },
        'type-oidc': {
          if: {
            properties: {
              type: {
                const: 'openIdConnect',
              },
            },
            required: ['type'],
          },
          then: {
            properties: {
              openIdConnectUrl: {
                type: 'string',
                format: 'uri',
              },
            },
            required: ['openIdConnectUrl'],
          },
        },
      },
    },
    'security-scheme-or-reference': {
      if: {
        type: 'object',
        required: ['$ref'],
      },
      then: {
        $ref: '#/$defs/reference',
      },
      else: {
        $ref: '#/$defs/security-scheme',
      },
    },
    'oauth-flows': {
      type: 'object',
      properties: {
        implicit: {
          $ref: '#/$defs/oauth-flows/$defs/implicit',
        },
        password: {
          $ref: '#/$defs/oauth-flows/$defs/password',
        },
        clientCredentials: {
          $ref: '#/$defs/oauth-flows/$defs/client-credentials',
        },
        authorizationCode: {
          $ref: '#/$defs/oauth-flows/$defs/authorization-code',
        },
      },
      $ref: '#/$defs/specification-extensions',
      unevaluatedProperties: false,
      $defs: {
        implicit: {
          type: 'object',
          properties: {
            authorizationUrl: {
              type: 'string',
              format: 'uri',
            },
            refreshUrl: {
              type: 'string',
              format: 'uri',
            },
            scopes: {
              $ref: '#/$defs/map-of-strings',
            },
          },
          required: ['authorizationUrl', 'scopes'],
          $ref: '#/$defs/specification-extensions',
          unevaluatedProperties: false,
        },
        password: {
          type: 'object',
          properties: {
            tokenUrl: {
              type: 'string',
              format: 'uri',
            },
            refreshUrl: {
              type: 'string',
              format: 'uri',
            },
            scopes: {
              $ref: '#/$defs/map-of-strings',
            },
          },
          required: ['tokenUrl', 'scopes'],
          $ref: '#/$defs/specification-extensions',
          unevaluatedProperties: false,
        },
        'client-credentials': {
          type: 'object',
          properties: {
            tokenUrl: {
              type: 'string',
              format: 'uri',
            },
            refreshUrl: {
              type: 'string',
              format: 'uri',
            },
            scopes: {
              $ref: '#/$defs/map-of-strings',
            },
          },
          required: ['tokenUrl', 'scopes'],
          $ref: '#/$defs/specification-extensions',
          unevaluatedProperties: false,
        },
        'authorization-code': {
          type: 'object',
          properties: {
            authorizationUrl: {
              type: 'string',
              format: 'uri',
            },
            tokenUrl: {
              type: 'string',
              format: 'uri',
            },
            refreshUrl: {
              type: 'string',
              format: 'uri',
            },
            scopes: {
              $ref: '#/$defs/map-of-strings',
            },
          },
          required: ['authorizationUrl', 'tokenUrl', 'scopes'],
          $ref: '#/$defs/specification-extensions',
          unevaluatedProperties: false,
        },
      },
    },
    'security-requirement': {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#security-requirement-object',
      type: 'object',
      additionalProperties: {
        type: 'array',
        items: {
          type: 'string',
        },
      },
    },
    'specification-extensions': {
      $comment: 'https://spec.openapis.org/oas/v3.1.0#specification-extensions',
      patternProperties: {
        '^x-': true,
      },
    },
    examples: {
      properties: {
        example: true,
        examples: {
          type: 'object',
          additionalProperties: {
            $ref: '#/$defs/example-or-reference',
          },
        },
      },
    },
    'map-of-strings': {
      type: 'object',
      additionalProperties: {
        type: 'string',
      },
    },
  },
};

/**
 * Walking an OpenAPI 3.1 document, for the tests that check one: its operations, its media types, its
 * references. Shared by the AS's and the mailbox's document tests.
 */
import { resolvePointer, type OpenApiDocument } from './openapi.js';

export const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;

export function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

export function escape(token: string): string {
  return token.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** Follows Reference Objects to their target and its pointer. */
export function deref(doc: OpenApiDocument, value: unknown, pointer: string): { value: unknown; pointer: string } {
  let current = { value, pointer };
  for (let i = 0; i < 10 && isObject(current.value) && typeof current.value.$ref === 'string'; i++) {
    const target: string = current.value.$ref;
    current = { value: resolvePointer(doc, target), pointer: target };
  }
  return current;
}

/** Every operation with its pointer. */
export function operations(doc: OpenApiDocument) {
  return Object.entries(doc.paths ?? {}).flatMap(([template, item]) =>
    METHODS.filter((m) => isObject(item[m])).map((method) => ({
      template,
      method,
      item,
      operation: item[method] as Record<string, unknown>,
      pointer: `#/paths/${escape(template)}/${method}`,
    })),
  );
}

/** Every Media Type Object (of request bodies and responses, inline or in components) with its pointer. */
export function mediaTypes(doc: OpenApiDocument): { pointer: string; media: Record<string, unknown> }[] {
  const owners: string[] = [];
  for (const { operation, pointer } of operations(doc)) {
    if (operation.requestBody !== undefined) owners.push(`${pointer}/requestBody`);
    for (const status of Object.keys((operation.responses as object) ?? {}))
      owners.push(`${pointer}/responses/${escape(status)}`);
  }
  for (const kind of ['responses', 'requestBodies']) {
    for (const name of Object.keys((doc.components?.[kind] as object) ?? {}))
      owners.push(`#/components/${kind}/${escape(name)}`);
  }
  return owners.flatMap((pointer) => {
    const owner = resolvePointer(doc, pointer);
    if (!isObject(owner) || !isObject(owner.content)) return [];
    return Object.entries(owner.content).map(([type, media]) => ({
      pointer: `${pointer}/content/${escape(type)}`,
      media: media as Record<string, unknown>,
    }));
  });
}

/** The `$ref`s of the document (example values, which are data, left out). */
export function references(node: unknown, pointer = '#', out: { at: string; ref: string }[] = []) {
  if (Array.isArray(node)) node.forEach((v, i) => references(v, `${pointer}/${i}`, out));
  if (!isObject(node)) return out;
  for (const [key, value] of Object.entries(node)) {
    if (key === '$ref' && typeof value === 'string') out.push({ at: pointer, ref: value });
    else if (
      key === 'example' ||
      (key === 'examples' && Array.isArray(value)) ||
      (key === 'value' && 'summary' in node)
    )
      continue;
    else references(value, `${pointer}/${escape(key)}`, out);
  }
  return out;
}

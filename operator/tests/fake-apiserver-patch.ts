/**
 * The document operations of the fake API server: JSON merge patch (RFC 7386), JSON patch (RFC 6902), a
 * simplified server-side apply, and label selectors. Pure functions on JSON values.
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function clone<T>(value: T): T {
  return structuredClone(value);
}

/** RFC 7386 §2. */
export function mergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject(patch)) return clone(patch);
  const result: JsonObject = isObject(target) ? clone(target) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

/** An RFC 6902 operation that cannot be applied; the server answers 422 with this message. */
export class JsonPatchError extends Error {
  override readonly name = 'JsonPatchError';
}

interface Operation {
  op: string;
  path: string;
  from?: string;
  value?: Json;
}

/** RFC 6901 §3–4. */
function parsePointer(pointer: string): string[] {
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) throw new JsonPatchError(`"${pointer}" is not a JSON pointer (RFC 6901 §3)`);
  return pointer
    .slice(1)
    .split('/')
    .map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function parentOf(doc: Json, tokens: string[], pointer: string): [Json, string] {
  let node: Json = doc;
  for (const token of tokens.slice(0, -1)) {
    if (Array.isArray(node)) node = node[Number(token)] as Json;
    else if (isObject(node)) node = node[token] as Json;
    else node = undefined as unknown as Json;
    if (node === undefined) throw new JsonPatchError(`path ${pointer} does not exist (RFC 6902 §4)`);
  }
  return [node, tokens[tokens.length - 1]!];
}

function getAt(doc: Json, pointer: string): Json {
  let node: Json | undefined = doc;
  for (const token of parsePointer(pointer)) {
    if (Array.isArray(node)) node = node[Number(token)];
    else if (isObject(node)) node = node[token];
    else node = undefined;
    if (node === undefined) throw new JsonPatchError(`path ${pointer} does not exist (RFC 6902 §4)`);
  }
  return node;
}

function arrayIndex(array: Json[], token: string, pointer: string, forAdd: boolean): number {
  if (forAdd && token === '-') return array.length;
  if (!/^(0|[1-9]\d*)$/.test(token)) throw new JsonPatchError(`"${token}" in ${pointer} is not an array index`);
  const index = Number(token);
  if (index > array.length || (!forAdd && index === array.length))
    throw new JsonPatchError(`index ${index} in ${pointer} is out of bounds (RFC 6902 §4.1)`);
  return index;
}

function add(doc: Json, pointer: string, value: Json): Json {
  const tokens = parsePointer(pointer);
  if (tokens.length === 0) return clone(value);
  const [parent, last] = parentOf(doc, tokens, pointer);
  if (Array.isArray(parent)) parent.splice(arrayIndex(parent, last, pointer, true), 0, clone(value));
  else if (isObject(parent)) parent[last] = clone(value);
  else throw new JsonPatchError(`the parent of ${pointer} is not a container`);
  return doc;
}

function remove(doc: Json, pointer: string): Json {
  const tokens = parsePointer(pointer);
  if (tokens.length === 0) throw new JsonPatchError('cannot remove the whole document');
  const [parent, last] = parentOf(doc, tokens, pointer);
  if (Array.isArray(parent)) parent.splice(arrayIndex(parent, last, pointer, false), 1);
  else if (isObject(parent) && last in parent) delete parent[last];
  else throw new JsonPatchError(`path ${pointer} does not exist (RFC 6902 §4.2)`);
  return doc;
}

function deepEqual(a: Json | undefined, b: Json | undefined): boolean {
  return JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
}

function sortKeys(value: Json | undefined): Json | undefined {
  if (Array.isArray(value)) return value.map((v) => sortKeys(v) as Json);
  if (isObject(value))
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, sortKeys(value[k]) as Json]),
    );
  return value;
}

export { deepEqual };

/** RFC 6902; the whole patch applies or none of it. */
export function jsonPatch(target: Json, operations: unknown): Json {
  if (!Array.isArray(operations)) throw new JsonPatchError('a JSON patch is an array of operations (RFC 6902 §3)');
  let doc = clone(target);
  for (const raw of operations as Operation[]) {
    if (!isObject(raw as unknown) || typeof raw.path !== 'string')
      throw new JsonPatchError('every operation has an "op" and a "path" (RFC 6902 §4)');
    switch (raw.op) {
      case 'add':
        doc = add(doc, raw.path, raw.value as Json);
        break;
      case 'remove':
        doc = remove(doc, raw.path);
        break;
      case 'replace':
        getAt(doc, raw.path);
        doc = add(remove(doc, raw.path), raw.path, raw.value as Json);
        break;
      case 'move': {
        const value = getAt(doc, raw.from ?? '');
        doc = add(remove(doc, raw.from ?? ''), raw.path, value);
        break;
      }
      case 'copy':
        doc = add(doc, raw.path, getAt(doc, raw.from ?? ''));
        break;
      case 'test':
        if (!deepEqual(getAt(doc, raw.path), raw.value as Json))
          throw new JsonPatchError(`test of ${raw.path} failed (RFC 6902 §4.6)`);
        break;
      default:
        throw new JsonPatchError(`unknown operation "${String(raw.op)}" (RFC 6902 §4)`);
    }
  }
  return doc;
}

/**
 * Server-side apply, simplified: the applied document is merged into the live object (objects key by key,
 * lists and scalars replaced whole), and a field that this manager applied last time but no longer does is
 * removed. Real SSA merges lists by their keys and tracks ownership per field across managers.
 */
export function applyDocument(live: JsonObject | undefined, applied: JsonObject, previous: JsonObject | undefined) {
  const merged = deepMerge(live ?? {}, applied) as JsonObject;
  if (previous) removeDropped(merged, previous, applied);
  return merged;
}

function deepMerge(base: Json, overlay: Json): Json {
  if (!isObject(base) || !isObject(overlay)) return clone(overlay);
  const out: JsonObject = clone(base);
  for (const [key, value] of Object.entries(overlay))
    out[key] = key in out ? deepMerge(out[key]!, value) : clone(value);
  return out;
}

function removeDropped(target: JsonObject, previous: JsonObject, applied: JsonObject): void {
  for (const [key, before] of Object.entries(previous)) {
    if (!(key in applied)) delete target[key];
    else if (isObject(before) && isObject(applied[key]) && isObject(target[key]))
      removeDropped(target[key] as JsonObject, before, applied[key] as JsonObject);
  }
}

type Requirement = (labels: Record<string, string>) => boolean;

/** Kubernetes label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`. */
export function parseLabelSelector(selector: string): Requirement[] {
  const parts: string[] = [];
  let depth = 0;
  let current = '';
  for (const ch of selector) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      parts.push(current);
      current = '';
    } else current += ch;
  }
  if (current.trim() !== '') parts.push(current);
  return parts.map((raw) => {
    const part = raw.trim();
    let m: RegExpExecArray | null;
    if ((m = /^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(part))) {
      const [, key, op, list] = m as unknown as [string, string, string, string];
      const values = list.split(',').map((v) => v.trim());
      return op === 'in'
        ? (l: Record<string, string>) => key in l && values.includes(l[key]!)
        : (l: Record<string, string>) => !(key in l) || !values.includes(l[key]!);
    }
    if ((m = /^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$/.exec(part))) {
      const [, key, op, value] = m as unknown as [string, string, string, string];
      return op === '!='
        ? (l: Record<string, string>) => l[key] !== value
        : (l: Record<string, string>) => l[key] === value;
    }
    if ((m = /^!([\w./-]+)$/.exec(part))) {
      const key = m[1]!;
      return (l: Record<string, string>) => !(key in l);
    }
    if ((m = /^([\w./-]+)$/.exec(part))) {
      const key = m[1]!;
      return (l: Record<string, string>) => key in l;
    }
    throw new TypeError(`unable to parse requirement "${part}"`);
  });
}

export function matchesLabels(requirements: Requirement[], labels: Record<string, string> | undefined): boolean {
  return requirements.every((r) => r(labels ?? {}));
}

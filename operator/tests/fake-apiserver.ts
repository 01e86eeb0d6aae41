/**
 * An in-process fake Kubernetes API server that speaks real HTTP, for testing the operator's runtime through
 * `@kubernetes/client-node` (a KubeConfig pointing at `http://127.0.0.1:<port>` with `skipTLSVerify: true`).
 *
 * What it does: discovery (`/api`, `/apis`, `/apis/<group>`, each group version's APIResourceList, `/version`);
 * for any registered kind, namespaced or cluster-scoped: get, list (label selectors, `metadata.name` and
 * `metadata.namespace` field selectors, across namespaces), create (`generateName` too), replace, delete;
 * patches as JSON merge patch (RFC 7386), JSON patch (RFC 6902), server-side apply
 * (`application/apply-patch+yaml`, `fieldManager` required, create when absent) and strategic merge on
 * built-in kinds only (custom resources answer 415 as a real server does); the `status` subresource (writes
 * to it change only `status`, writes to the main resource never change `status`); `metadata.generation`
 * raised when anything but metadata and status changes; a global `resourceVersion` and 409 Conflict when a
 * write carries a stale one (replace, patches and apply alike) or a delete's preconditions fail; no-op
 * writes keep the resourceVersion and send no event; watch streams (`?watch=1|true`, chunked JSON lines,
 * replay from `resourceVersion`, synthetic ADDED for the current state without one, `410 Expired` as an
 * ERROR event when the history was compacted past it, `timeoutSeconds`); finalizers (a delete sets
 * `deletionTimestamp`; removing the last finalizer deletes; no new finalizer while deleting);
 * owner-reference garbage collection (Background and Orphan propagation) when an owner is deleted; custom
 * resources returned with their fields sorted by name, as a real server's unstructured storage returns them;
 * fault injection and a request log (with the parsed bodies) for tests.
 *
 * What it does NOT model: authentication and authorization (any token or none is accepted; no RBAC: tests
 * compare the request log with the chart's rules instead); namespaces as objects (every namespace exists);
 * admission, defaulting, pruning and schema validation (CRD openAPIV3Schema and CEL rules are not checked,
 * unknown fields of custom resources are kept: tests validate what the operator writes against the CRDs; a Deployment without a selector is accepted); field
 * ownership and conflicts between managers in server-side apply (lists are replaced whole, not merged by
 * key; only the fields a manager dropped from its own last apply are removed; `managedFields` holds one
 * entry per applying manager without a real `fieldsV1`); strategic merge patch semantics (it is a merge
 * patch here); controllers (no Deployment ever becomes available by itself, no Pod, no Endpoint, no
 * ReplicaSet: tests write `status` themselves); Foreground deletion (treated as Background) and
 * `blockOwnerDeletion`; collection of dependents whose owner never existed; graceful deletion periods;
 * watch bookmarks, `sendInitialEvents`, `resourceVersionMatch`, pagination (`limit`/`continue` are
 * ignored: a list is always whole); a watch whose label selector stops matching an object does not get a
 * DELETED event; protobuf and table output; list items carry `apiVersion` and `kind` even for built-in kinds.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { KubeConfig } from '@kubernetes/client-node';
import { listen, type RunningServer } from '@federizer/common';
import { parse as parseYaml } from 'yaml';
import {
  applyDocument,
  clone,
  deepEqual,
  isObject,
  jsonPatch,
  JsonPatchError,
  matchesLabels,
  mergePatch,
  parseLabelSelector,
  type Json,
  type JsonObject,
} from './fake-apiserver-patch.js';

export type { Json, JsonObject };

export interface ResourceType {
  /** '' for the core group. */
  group: string;
  version: string;
  kind: string;
  plural: string;
  namespaced: boolean;
  statusSubresource: boolean;
  /** A custom resource (refuses strategic merge patches). */
  custom: boolean;
}

function builtin(group: string, version: string, kind: string, plural: string, status = false): ResourceType {
  return { group, version, kind, plural, namespaced: true, statusSubresource: status, custom: false };
}

function custom(group: string, version: string, kind: string, plural: string, status = true): ResourceType {
  return { group, version, kind, plural, namespaced: true, statusSubresource: status, custom: true };
}

export const BUILTIN_RESOURCES: readonly ResourceType[] = [
  builtin('', 'v1', 'ConfigMap', 'configmaps'),
  builtin('', 'v1', 'Secret', 'secrets'),
  builtin('', 'v1', 'Service', 'services', true),
  builtin('', 'v1', 'ServiceAccount', 'serviceaccounts'),
  builtin('', 'v1', 'PersistentVolumeClaim', 'persistentvolumeclaims', true),
  builtin('', 'v1', 'Event', 'events'),
  builtin('apps', 'v1', 'Deployment', 'deployments', true),
  builtin('apps', 'v1', 'StatefulSet', 'statefulsets', true),
  builtin('networking.k8s.io', 'v1', 'Ingress', 'ingresses', true),
  builtin('policy', 'v1', 'PodDisruptionBudget', 'poddisruptionbudgets', true),
  builtin('coordination.k8s.io', 'v1', 'Lease', 'leases'),
  builtin('events.k8s.io', 'v1', 'Event', 'events'),
];

export const FEDERIZER_RESOURCES: readonly ResourceType[] = [
  custom('federizer.io', 'v1alpha1', 'MailDomain', 'maildomains'),
  custom('federizer.io', 'v1alpha1', 'MailUser', 'mailusers'),
];

export const DNSENDPOINT_RESOURCE = custom('externaldns.k8s.io', 'v1alpha1', 'DNSEndpoint', 'dnsendpoints');
export const SERVICEMONITOR_RESOURCE = custom(
  'monitoring.coreos.com',
  'v1',
  'ServiceMonitor',
  'servicemonitors',
  false,
);

export interface FakeApiServerOptions {
  /** Registered kinds; default the built-in kinds, the Federizer CRDs and ExternalDNS's DNSEndpoint. */
  resources?: readonly ResourceType[];
  /** Watch events kept for replay; older resourceVersions get 410 Expired. Default 10,000. */
  history?: number;
}

export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  contentType: string | undefined;
  status: number;
  /** The body as parsed (JSON, or YAML for server-side apply), when there is one. */
  body?: unknown;
}

export interface Fault {
  /** Tested against `METHOD /path?query`. */
  match: RegExp;
  status: number;
  reason?: string;
  message?: string;
  /** How many matching requests fail; default 1. */
  times?: number;
}

/** A Kubernetes `Status` failure; the server answers with it. */
export class ApiError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details: JsonObject = {},
  ) {
    super(message);
  }

  toStatus(): JsonObject {
    return {
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: this.message,
      reason: this.reason,
      details: this.details,
      code: this.code,
    };
  }
}

interface WatchEvent {
  rv: number;
  typeKey: string;
  namespace: string;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: JsonObject;
}

interface Watcher {
  typeKey: string;
  namespace: string | undefined;
  matches: (o: JsonObject) => boolean;
  res: ServerResponse;
}

function meta(o: JsonObject): JsonObject {
  if (!isObject(o.metadata)) o.metadata = {};
  return o.metadata as JsonObject;
}

function str(value: Json | undefined): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

function now(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function groupVersion(t: ResourceType): string {
  return t.group === '' ? t.version : `${t.group}/${t.version}`;
}

function typeKeyOf(t: ResourceType): string {
  return `${t.group}/${t.version}/${t.plural}`;
}

function resourceName(t: ResourceType): string {
  return t.group === '' ? t.plural : `${t.plural}.${t.group}`;
}

/** Everything but metadata and status: what `generation` counts changes of. */
function specOf(o: JsonObject): JsonObject {
  const { metadata: _m, status: _s, ...rest } = o;
  return rest;
}

function sortKeys(value: Json): Json {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (!isObject(value)) return value;
  return Object.fromEntries(
    Object.keys(value)
      .sort()
      .map((k) => [k, sortKeys(value[k]!)]),
  );
}

function withoutVolatile(o: JsonObject): JsonObject {
  const copy = clone(o);
  const m = meta(copy);
  delete m.resourceVersion;
  delete m.managedFields;
  return copy;
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export class FakeApiServer {
  readonly requests: RecordedRequest[] = [];
  readonly #types = new Map<string, ResourceType>();
  readonly #objects = new Map<string, JsonObject>();
  /** Last applied document per object key and field manager, for apply's removal of dropped fields. */
  readonly #applied = new Map<string, Map<string, JsonObject>>();
  readonly #events: WatchEvent[] = [];
  readonly #watchers = new Set<Watcher>();
  readonly #faults: Fault[] = [];
  readonly #history: number;
  #rv = 100;
  #compactedThrough = 0;
  #server: RunningServer | undefined;

  private constructor(options: FakeApiServerOptions) {
    for (const t of options.resources ?? [...BUILTIN_RESOURCES, ...FEDERIZER_RESOURCES, DNSENDPOINT_RESOURCE])
      this.addResource(t);
    this.#history = options.history ?? 10_000;
  }

  static async start(options: FakeApiServerOptions = {}): Promise<FakeApiServer> {
    const fake = new FakeApiServer(options);
    fake.#server = await listen((req, res) => void fake.#handle(req, res));
    return fake;
  }

  get url(): string {
    return this.#server!.url;
  }

  /** A KubeConfig for this server: plain http needs `skipTLSVerify` in client-node 1.4. */
  kubeConfig(namespace = 'default'): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: this.url, skipTLSVerify: true }],
      users: [{ name: 'tester', token: 'fake-token' }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'tester', namespace }],
      currentContext: 'fake',
    });
    return kc;
  }

  addResource(t: ResourceType): void {
    this.#types.set(typeKeyOf(t), t);
  }

  removeResource(apiVersion: string, kind: string): void {
    const t = this.#typeOf(apiVersion, kind);
    this.#types.delete(typeKeyOf(t));
  }

  /** The next `times` requests matching `fault.match` fail with `fault.status`. */
  inject(fault: Fault): void {
    this.#faults.push({ times: 1, ...fault });
  }

  /** Ends every injected fault not yet used up (one of `times: Infinity` lasts until then). */
  clearFaults(): void {
    this.#faults.length = 0;
  }

  /** Forgets the watch history, so that a watch from any earlier resourceVersion gets 410 Expired. */
  compactHistory(): void {
    this.#compactedThrough = this.#rv;
    this.#events.length = 0;
  }

  /** Ends every open watch stream, as an API server restart would. */
  closeWatches(): void {
    for (const w of this.#watchers) w.res.end();
    this.#watchers.clear();
  }

  get watchCount(): number {
    return this.#watchers.size;
  }

  get resourceVersion(): string {
    return String(this.#rv);
  }

  async close(): Promise<void> {
    this.closeWatches();
    await this.#server?.close(100);
  }

  // ---- direct access for tests (the same code paths as HTTP, events included) ----

  get(apiVersion: string, kind: string, namespace: string, name: string): JsonObject | undefined {
    const t = this.#typeOf(apiVersion, kind);
    const o = this.#objects.get(this.#key(t, namespace, name));
    return o && clone(o);
  }

  list(apiVersion: string, kind: string, namespace?: string): JsonObject[] {
    const t = this.#typeOf(apiVersion, kind);
    return this.#list(t, namespace).map(clone);
  }

  create(object: JsonObject): JsonObject {
    const t = this.#typeOf(str(object.apiVersion) ?? '', str(object.kind) ?? '');
    return this.#create(t, str(meta(object).namespace) ?? '', object, false);
  }

  /** Merges `status` into the object's status, as a controller writing the status subresource would. */
  patchStatus(apiVersion: string, kind: string, namespace: string, name: string, status: JsonObject): JsonObject {
    const t = this.#typeOf(apiVersion, kind);
    return this.#patch(t, namespace, name, 'application/merge-patch+json', { status }, {}, 'status');
  }

  mergePatch(apiVersion: string, kind: string, namespace: string, name: string, patch: JsonObject): JsonObject {
    const t = this.#typeOf(apiVersion, kind);
    return this.#patch(t, namespace, name, 'application/merge-patch+json', patch, {}, undefined);
  }

  delete(apiVersion: string, kind: string, namespace: string, name: string): JsonObject {
    const t = this.#typeOf(apiVersion, kind);
    return this.#delete(t, namespace, name, {});
  }

  // ---- storage ----

  #typeOf(apiVersion: string, kind: string): ResourceType {
    for (const t of this.#types.values()) if (groupVersion(t) === apiVersion && t.kind === kind) return t;
    throw new ApiError(404, 'NotFound', `the server could not find the requested resource (${apiVersion} ${kind})`);
  }

  #key(t: ResourceType, namespace: string, name: string): string {
    return `${typeKeyOf(t)}|${t.namespaced ? namespace : ''}|${name}`;
  }

  #list(t: ResourceType, namespace: string | undefined): JsonObject[] {
    const prefix = `${typeKeyOf(t)}|`;
    return [...this.#objects.entries()]
      .filter(([k, o]) => k.startsWith(prefix) && (namespace === undefined || meta(o).namespace === namespace))
      .map(([, o]) => o)
      .sort((a, b) => `${meta(a).namespace}/${meta(a).name}`.localeCompare(`${meta(b).namespace}/${meta(b).name}`));
  }

  #emit(t: ResourceType, type: WatchEvent['type'], object: JsonObject, rv: number): void {
    const event: WatchEvent = {
      rv,
      typeKey: typeKeyOf(t),
      namespace: str(meta(object).namespace) ?? '',
      type,
      object: clone(object),
    };
    this.#events.push(event);
    if (this.#events.length > this.#history) this.#compactedThrough = this.#events.shift()!.rv;
    for (const w of this.#watchers) this.#send(w, event);
  }

  #send(w: Watcher, event: WatchEvent): void {
    if (w.typeKey !== event.typeKey) return;
    if (w.namespace !== undefined && w.namespace !== event.namespace) return;
    if (!w.matches(event.object)) return;
    w.res.write(`${JSON.stringify({ type: event.type, object: event.object })}\n`);
  }

  #create(t: ResourceType, namespace: string, body: unknown, dropStatus = true): JsonObject {
    if (!isObject(body)) throw new ApiError(400, 'BadRequest', 'the body of a create is a JSON object');
    const o = clone(body);
    this.#checkTypeOfBody(t, o);
    const m = meta(o);
    if (t.namespaced) {
      if (m.namespace !== undefined && m.namespace !== namespace)
        throw new ApiError(
          400,
          'BadRequest',
          'the namespace of the provided object does not match the namespace sent on the request',
        );
      m.namespace = namespace;
    } else delete m.namespace;
    if (typeof m.name !== 'string' || m.name === '') {
      if (typeof m.generateName !== 'string' || m.generateName === '')
        throw new ApiError(
          422,
          'Invalid',
          `${t.kind} is invalid: metadata.name: Required value: name or generateName is required`,
        );
      m.name = `${m.generateName}${randomUUID().slice(0, 5)}`;
    }
    const name = m.name as string;
    const key = this.#key(t, namespace, name);
    if (this.#objects.has(key))
      throw new ApiError(409, 'AlreadyExists', `${resourceName(t)} "${name}" already exists`, {
        name,
        group: t.group,
        kind: t.plural,
      });
    if (m.resourceVersion !== undefined && m.resourceVersion !== '')
      throw new ApiError(400, 'BadRequest', 'resourceVersion should not be set on objects to be created');
    o.apiVersion = groupVersion(t);
    o.kind = t.kind;
    m.uid = randomUUID();
    m.creationTimestamp = now();
    m.generation = 1;
    delete m.deletionTimestamp;
    if (t.statusSubresource && dropStatus) delete o.status;
    const rv = ++this.#rv;
    m.resourceVersion = String(rv);
    const stored = this.#store(t, key, o);
    this.#emit(t, 'ADDED', stored, rv);
    return clone(stored);
  }

  /**
   * A custom resource is kept as the API server keeps it, an unstructured Go map, whose fields come back
   * sorted by name whatever order they were written in; built-in kinds keep their writer's order here.
   */
  #store(t: ResourceType, key: string, o: JsonObject): JsonObject {
    const stored = t.custom ? (sortKeys(o) as JsonObject) : o;
    this.#objects.set(key, stored);
    return stored;
  }

  #checkTypeOfBody(t: ResourceType, o: JsonObject): void {
    if (o.apiVersion !== undefined && o.apiVersion !== groupVersion(t))
      throw new ApiError(400, 'BadRequest', `apiVersion ${String(o.apiVersion)} does not match ${groupVersion(t)}`);
    if (o.kind !== undefined && o.kind !== t.kind)
      throw new ApiError(400, 'BadRequest', `kind ${String(o.kind)} does not match ${t.kind}`);
  }

  #existing(t: ResourceType, namespace: string, name: string): JsonObject {
    const o = this.#objects.get(this.#key(t, namespace, name));
    if (!o)
      throw new ApiError(404, 'NotFound', `${resourceName(t)} "${name}" not found`, {
        name,
        group: t.group,
        kind: t.plural,
      });
    return o;
  }

  /** The common path of every write to an existing object. */
  #update(t: ResourceType, existing: JsonObject, candidate: JsonObject, subresource: string | undefined): JsonObject {
    this.#checkTypeOfBody(t, candidate);
    const before = meta(existing);
    const name = before.name as string;
    const wanted = str(meta(candidate).resourceVersion);
    if (wanted !== undefined && wanted !== '' && wanted !== before.resourceVersion)
      throw new ApiError(
        409,
        'Conflict',
        `Operation cannot be fulfilled on ${resourceName(t)} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
        { name, group: t.group, kind: t.plural },
      );
    let next: JsonObject;
    if (subresource === 'status') {
      next = clone(existing);
      if (candidate.status === undefined) delete next.status;
      else next.status = clone(candidate.status);
    } else {
      next = clone(candidate);
      if (t.statusSubresource) {
        if (existing.status === undefined) delete next.status;
        else next.status = clone(existing.status);
      }
      const m = meta(next);
      for (const field of ['name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp', 'generation'])
        if (before[field] === undefined) delete m[field];
        else m[field] = clone(before[field]!);
      const oldFinalizers = (before.finalizers as string[] | undefined) ?? [];
      const newFinalizers = (m.finalizers as string[] | undefined) ?? [];
      if (before.deletionTimestamp !== undefined && newFinalizers.some((f) => !oldFinalizers.includes(f)))
        throw new ApiError(
          422,
          'Invalid',
          `${t.kind} "${name}" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted`,
        );
      if (!deepEqual(specOf(existing), specOf(next))) m.generation = ((before.generation as number) ?? 1) + 1;
    }
    next.apiVersion = groupVersion(t);
    next.kind = t.kind;
    meta(next).resourceVersion = before.resourceVersion!;
    if (
      deepEqual(withoutVolatile(existing), withoutVolatile(next)) &&
      deepEqual(before.managedFields, meta(next).managedFields)
    )
      return clone(existing);
    const rv = ++this.#rv;
    meta(next).resourceVersion = String(rv);
    const key = this.#key(t, str(before.namespace) ?? '', name);
    const stored = this.#store(t, key, next);
    this.#emit(t, 'MODIFIED', stored, rv);
    const finalizers = (meta(stored).finalizers as string[] | undefined) ?? [];
    if (meta(stored).deletionTimestamp !== undefined && finalizers.length === 0)
      this.#remove(t, key, stored, 'Background');
    return clone(stored);
  }

  #replace(t: ResourceType, namespace: string, name: string, body: unknown, subresource: string | undefined) {
    if (!isObject(body)) throw new ApiError(400, 'BadRequest', 'the body of a replace is a JSON object');
    if (meta(body).name !== undefined && meta(body).name !== name)
      throw new ApiError(
        400,
        'BadRequest',
        `the name of the object (${String(meta(body).name)}) does not match the URL (${name})`,
      );
    return this.#update(t, this.#existing(t, namespace, name), body, subresource);
  }

  #patch(
    t: ResourceType,
    namespace: string,
    name: string,
    contentType: string,
    patch: unknown,
    query: Record<string, string>,
    subresource: string | undefined,
  ): JsonObject {
    switch (contentType) {
      case 'application/merge-patch+json':
        return this.#update(
          t,
          this.#existing(t, namespace, name),
          mergePatch(this.#existing(t, namespace, name), patch as Json) as JsonObject,
          subresource,
        );
      case 'application/strategic-merge-patch+json':
        if (t.custom)
          throw new ApiError(
            415,
            'UnsupportedMediaType',
            `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml`,
          );
        return this.#update(
          t,
          this.#existing(t, namespace, name),
          mergePatch(this.#existing(t, namespace, name), patch as Json) as JsonObject,
          subresource,
        );
      case 'application/json-patch+json': {
        let result: Json;
        try {
          result = jsonPatch(this.#existing(t, namespace, name), patch);
        } catch (e) {
          if (e instanceof JsonPatchError) throw new ApiError(422, 'Invalid', e.message);
          throw e;
        }
        if (!isObject(result)) throw new ApiError(422, 'Invalid', 'a JSON patch must leave an object');
        return this.#update(t, this.#existing(t, namespace, name), result, subresource);
      }
      case 'application/apply-patch+yaml':
        return this.#apply(t, namespace, name, patch, query, subresource);
      default:
        throw new ApiError(
          415,
          'UnsupportedMediaType',
          `the body of the request was in an unknown format - ${contentType}`,
        );
    }
  }

  #apply(
    t: ResourceType,
    namespace: string,
    name: string,
    doc: unknown,
    query: Record<string, string>,
    subresource: string | undefined,
  ): JsonObject {
    const manager = query.fieldManager;
    if (manager === undefined || manager === '')
      throw new ApiError(
        422,
        'Invalid',
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
      );
    if (!isObject(doc)) throw new ApiError(400, 'BadRequest', 'an applied configuration is an object');
    if (typeof doc.apiVersion !== 'string' || typeof doc.kind !== 'string')
      throw new ApiError(400, 'BadRequest', 'an applied configuration needs apiVersion and kind');
    if (meta(doc).name !== undefined && meta(doc).name !== name)
      throw new ApiError(
        400,
        'BadRequest',
        `the name of the object (${String(meta(doc).name)}) does not match the URL (${name})`,
      );
    const key = this.#key(t, namespace, name);
    const managers = this.#applied.get(key) ?? new Map<string, JsonObject>();
    const existing = this.#objects.get(key);
    const entry = {
      manager,
      operation: 'Apply',
      apiVersion: groupVersion(t),
      time: now(),
      fieldsType: 'FieldsV1',
      fieldsV1: {},
      ...(subresource ? { subresource } : {}),
    };
    if (!existing) {
      if (subresource) throw new ApiError(404, 'NotFound', `${resourceName(t)} "${name}" not found`);
      const created = clone(doc);
      meta(created).name = name;
      meta(created).managedFields = [entry];
      // Unlike a create, apply keeps the status it is given only through the status subresource.
      const result = this.#create(t, namespace, created);
      managers.set(`${manager}|`, clone(doc));
      this.#applied.set(key, managers);
      return result;
    }
    const scope = subresource === 'status' ? { status: doc.status ?? null } : doc;
    const previous = managers.get(`${manager}|${subresource ?? ''}`);
    const merged = applyDocument(existing, scope as JsonObject, previous);
    const fields = ((meta(existing).managedFields as JsonObject[] | undefined) ?? []).filter(
      (f) => !(f.manager === manager && f.operation === 'Apply' && (f.subresource ?? '') === (subresource ?? '')),
    );
    const unchanged = deepEqual(withoutVolatile(existing), withoutVolatile(merged));
    meta(merged).managedFields = unchanged ? ((meta(existing).managedFields as Json) ?? []) : [...fields, entry];
    // The applied document's resourceVersion, if any, is a precondition as in any other write.
    meta(merged).resourceVersion = str(meta(doc).resourceVersion) ?? (meta(existing).resourceVersion as string);
    const result = this.#update(t, existing, merged, subresource);
    managers.set(`${manager}|${subresource ?? ''}`, clone(scope as JsonObject));
    this.#applied.set(key, managers);
    return result;
  }

  #delete(t: ResourceType, namespace: string, name: string, options: JsonObject): JsonObject {
    const existing = this.#existing(t, namespace, name);
    const m = meta(existing);
    const preconditions = isObject(options.preconditions) ? options.preconditions : {};
    if (
      (preconditions.uid !== undefined && preconditions.uid !== m.uid) ||
      (preconditions.resourceVersion !== undefined && preconditions.resourceVersion !== m.resourceVersion)
    )
      throw new ApiError(
        409,
        'Conflict',
        `Operation cannot be fulfilled on ${resourceName(t)} "${name}": Precondition failed: UID in precondition: ${String(preconditions.uid)}, UID in object meta: ${String(m.uid)}`,
      );
    const policy = str(options.propagationPolicy) ?? 'Background';
    const finalizers = (m.finalizers as string[] | undefined) ?? [];
    const key = this.#key(t, namespace, name);
    if (finalizers.length > 0) {
      if (m.deletionTimestamp !== undefined) return clone(existing);
      const next = clone(existing);
      meta(next).deletionTimestamp = now();
      meta(next).deletionGracePeriodSeconds = 0;
      const rv = ++this.#rv;
      meta(next).resourceVersion = String(rv);
      const stored = this.#store(t, key, next);
      this.#emit(t, 'MODIFIED', stored, rv);
      return clone(stored);
    }
    return this.#remove(t, key, existing, policy);
  }

  #remove(t: ResourceType, key: string, object: JsonObject, policy: string): JsonObject {
    this.#objects.delete(key);
    this.#applied.delete(key);
    const rv = ++this.#rv;
    const gone = clone(object);
    meta(gone).resourceVersion = String(rv);
    this.#emit(t, 'DELETED', gone, rv);
    this.#collect(str(meta(object).uid)!, policy);
    return gone;
  }

  /** Garbage collection of the dependents of a deleted owner. */
  #collect(ownerUid: string, policy: string): void {
    const liveUids = new Set([...this.#objects.values()].map((o) => meta(o).uid));
    for (const [key, o] of [...this.#objects.entries()]) {
      const refs = (meta(o).ownerReferences as JsonObject[] | undefined) ?? [];
      if (!refs.some((r) => r.uid === ownerUid)) continue;
      const t = this.#types.get(key.split('|')[0]!)!;
      const m = meta(o);
      if (policy === 'Orphan') {
        const next = clone(o);
        meta(next).ownerReferences = refs.filter((r) => r.uid !== ownerUid);
        this.#update(t, o, next, undefined);
      } else if (refs.every((r) => !liveUids.has(r.uid as string) || r.uid === ownerUid)) {
        if (this.#objects.has(key)) this.#delete(t, str(m.namespace) ?? '', m.name as string, {});
      }
    }
  }

  // ---- HTTP ----

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake');
    const query = Object.fromEntries(url.searchParams.entries());
    const contentType = req.headers['content-type']?.split(';')[0]?.trim();
    const record: RecordedRequest = { method: req.method ?? 'GET', path: url.pathname, query, contentType, status: 0 };
    this.requests.push(record);
    const reply = (status: number, body: unknown) => {
      record.status = status;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    try {
      const raw = await readBody(req);
      const fault = this.#faults.find((f) => f.match.test(`${record.method} ${url.pathname}${url.search}`));
      if (fault) {
        fault.times = (fault.times ?? 1) - 1;
        if (fault.times <= 0) this.#faults.splice(this.#faults.indexOf(fault), 1);
        throw new ApiError(fault.status, fault.reason ?? 'InternalError', fault.message ?? `injected ${fault.status}`);
      }
      const discovery = this.#discovery(url.pathname);
      if (discovery !== undefined) return reply(200, discovery);
      const route = this.#route(url.pathname);
      const body = raw === '' ? undefined : this.#parseBody(raw, contentType);
      if (body !== undefined) record.body = body;
      const { t, namespace, name, subresource } = route;
      const ns = namespace ?? '';
      const watching = query.watch === '1' || query.watch === 'true';
      switch (record.method) {
        case 'GET':
          if (name !== undefined) return reply(200, clone(this.#existing(t, ns, name)));
          if (watching) {
            record.status = 200;
            return this.#watch(t, namespace, query, req, res);
          }
          return reply(200, this.#listResponse(t, namespace, query));
        case 'POST':
          if (name !== undefined) throw new ApiError(405, 'MethodNotAllowed', 'POST to a named object');
          return reply(201, this.#create(t, ns, body));
        case 'PUT':
          if (name === undefined) throw new ApiError(405, 'MethodNotAllowed', 'PUT to a collection');
          return reply(200, this.#replace(t, ns, name, body, subresource));
        case 'PATCH': {
          if (name === undefined) throw new ApiError(405, 'MethodNotAllowed', 'PATCH to a collection');
          if (query.force !== undefined && contentType !== 'application/apply-patch+yaml')
            throw new ApiError(422, 'Invalid', 'force: Invalid value: true: may not be specified for non-apply patch');
          const existed = this.#objects.has(this.#key(t, ns, name));
          const result = this.#patch(t, ns, name, contentType ?? '', body, query, subresource);
          return reply(existed ? 200 : 201, result);
        }
        case 'DELETE': {
          if (name === undefined) throw new ApiError(405, 'MethodNotAllowed', 'DELETE of a collection');
          const options = isObject(body) ? body : {};
          if (query.propagationPolicy) options.propagationPolicy = query.propagationPolicy;
          return reply(200, this.#delete(t, ns, name, options));
        }
        default:
          throw new ApiError(405, 'MethodNotAllowed', `${record.method} is not supported`);
      }
    } catch (e) {
      const error =
        e instanceof ApiError ? e : new ApiError(500, 'InternalError', `fake API server: ${(e as Error).message}`);
      if (!res.headersSent) reply(error.code, error.toStatus());
      else res.end();
    }
  }

  #parseBody(raw: string, contentType: string | undefined): unknown {
    try {
      return contentType === 'application/apply-patch+yaml' ? parseYaml(raw) : JSON.parse(raw);
    } catch (e) {
      throw new ApiError(
        400,
        'BadRequest',
        `the request body is not ${contentType ?? 'JSON'}: ${(e as Error).message}`,
      );
    }
  }

  #discovery(path: string): JsonObject | undefined {
    const types = [...this.#types.values()];
    if (path === '/version') return { major: '1', minor: '31', gitVersion: 'v1.31.0-fake', platform: 'linux/amd64' };
    if (path === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [] };
    const groups = [...new Set(types.filter((t) => t.group !== '').map((t) => t.group))].sort();
    const groupObject = (g: string): JsonObject => {
      const versions = [...new Set(types.filter((t) => t.group === g).map((t) => t.version))].map((v) => ({
        groupVersion: `${g}/${v}`,
        version: v,
      }));
      return { name: g, versions, preferredVersion: versions[0]! };
    };
    if (path === '/apis') return { kind: 'APIGroupList', apiVersion: 'v1', groups: groups.map(groupObject) };
    const groupOnly = /^\/apis\/([^/]+)$/.exec(path);
    if (groupOnly) {
      if (!groups.includes(groupOnly[1]!))
        throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
      return { kind: 'APIGroup', apiVersion: 'v1', ...groupObject(groupOnly[1]!) };
    }
    const gv = /^\/api\/(v1)$/.exec(path) ?? /^\/apis\/([^/]+\/[^/]+)$/.exec(path);
    if (!gv) return undefined;
    const inVersion = types.filter((t) => groupVersion(t) === gv[1]);
    if (inVersion.length === 0) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
    const verbs = ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'];
    return {
      kind: 'APIResourceList',
      apiVersion: 'v1',
      groupVersion: gv[1]!,
      resources: inVersion.flatMap((t) => [
        { name: t.plural, singularName: t.kind.toLowerCase(), namespaced: t.namespaced, kind: t.kind, verbs },
        ...(t.statusSubresource
          ? [
              {
                name: `${t.plural}/status`,
                singularName: '',
                namespaced: t.namespaced,
                kind: t.kind,
                verbs: ['get', 'patch', 'update'],
              },
            ]
          : []),
      ]),
    };
  }

  #route(path: string): { t: ResourceType; namespace?: string; name?: string; subresource?: string } {
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    let gv: string;
    let rest: string[];
    if (parts[0] === 'api' && parts.length >= 3) [gv, rest] = [parts[1]!, parts.slice(2)];
    else if (parts[0] === 'apis' && parts.length >= 4) [gv, rest] = [`${parts[1]}/${parts[2]}`, parts.slice(3)];
    else throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
    let namespace: string | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3) {
      namespace = rest[1];
      rest = rest.slice(2);
    }
    const [plural, name, subresource, ...extra] = rest;
    const t = [...this.#types.values()].find((x) => groupVersion(x) === gv && x.plural === plural);
    if (!t || extra.length > 0) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
    if (t.namespaced && namespace === undefined && name !== undefined)
      throw new ApiError(404, 'NotFound', `${t.kind} is namespaced: the path needs /namespaces/<namespace>`);
    if (subresource !== undefined && (subresource !== 'status' || !t.statusSubresource))
      throw new ApiError(404, 'NotFound', `${resourceName(t)} has no subresource ${subresource}`);
    return {
      t,
      ...(namespace === undefined ? {} : { namespace }),
      ...(name === undefined ? {} : { name }),
      ...(subresource === undefined ? {} : { subresource }),
    };
  }

  #matcher(query: Record<string, string>): (o: JsonObject) => boolean {
    let labels: ReturnType<typeof parseLabelSelector>;
    try {
      labels = parseLabelSelector(query.labelSelector ?? '');
    } catch (e) {
      throw new ApiError(400, 'BadRequest', `labelSelector: ${(e as Error).message}`);
    }
    const fields = (query.fieldSelector ?? '')
      .split(',')
      .filter(Boolean)
      .map((f) => {
        const m = /^metadata\.(name|namespace)(==|=|!=)(.*)$/.exec(f);
        if (!m) throw new ApiError(400, 'BadRequest', `field selector "${f}" is not supported here`);
        return (o: JsonObject) => (m[2] === '!=' ? meta(o)[m[1]!] !== m[3] : meta(o)[m[1]!] === m[3]);
      });
    return (o) => matchesLabels(labels, meta(o).labels as Record<string, string>) && fields.every((f) => f(o));
  }

  #listResponse(t: ResourceType, namespace: string | undefined, query: Record<string, string>): JsonObject {
    const matches = this.#matcher(query);
    return {
      apiVersion: groupVersion(t),
      kind: `${t.kind}List`,
      metadata: { resourceVersion: String(this.#rv) },
      items: this.#list(t, namespace).filter(matches).map(clone),
    };
  }

  #watch(
    t: ResourceType,
    namespace: string | undefined,
    query: Record<string, string>,
    req: IncomingMessage,
    res: ServerResponse,
  ): void {
    const matches = this.#matcher(query);
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    // Headers go out at once, as from a real API server: a client waits for them before it reads events.
    res.flushHeaders();
    const watcher: Watcher = { typeKey: typeKeyOf(t), namespace, matches, res };
    const from = query.resourceVersion;
    if (from === undefined || from === '' || from === '0') {
      for (const o of this.#list(t, namespace))
        if (matches(o)) res.write(`${JSON.stringify({ type: 'ADDED', object: o })}\n`);
    } else {
      const since = Number(from);
      if (!Number.isInteger(since) || since < this.#compactedThrough) {
        const expired = new ApiError(
          410,
          'Expired',
          `too old resource version: ${from} (${this.#compactedThrough + 1})`,
        );
        res.end(`${JSON.stringify({ type: 'ERROR', object: expired.toStatus() })}\n`);
        return;
      }
      for (const event of this.#events) if (event.rv > since) this.#send(watcher, event);
    }
    this.#watchers.add(watcher);
    const timeout = Number(query.timeoutSeconds);
    const timer = Number.isFinite(timeout) && timeout > 0 ? setTimeout(() => res.end(), timeout * 1000) : undefined;
    const drop = () => {
      if (timer) clearTimeout(timer);
      this.#watchers.delete(watcher);
    };
    req.on('close', drop);
    res.on('close', drop);
  }
}

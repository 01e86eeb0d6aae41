/**
 * A small REST client for any kind, on `@kubernetes/client-node`'s KubeConfig (authentication, TLS, in-cluster
 * config) and its fetch transport. The typed APIs and `KubernetesObjectApi` are not used for writes: they
 * serialize through generated models, which silently drop fields the model does not know, and
 * `KubernetesObjectApi.patch` defaults to strategic merge, which custom resources refuse.
 */
import {
  HttpMethod,
  IsomorphicFetchHttpLibrary,
  ServerConfiguration,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';

export interface ObjectRef {
  apiVersion: string;
  kind: string;
  namespace?: string;
  name: string;
}

/** A Kubernetes `Status` failure (or a transport failure, with `status` 0). */
export class KubeApiError extends Error {
  override readonly name = 'KubeApiError';
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export function isStatus(e: unknown, status: number): boolean {
  return e instanceof KubeApiError && e.status === status;
}

interface ResourceInfo {
  plural: string;
  namespaced: boolean;
}

interface RequestOptions {
  query?: Record<string, string | undefined>;
  body?: unknown;
  contentType?: string;
}

export const FIELD_MANAGER = 'federizer-operator';

export class KubeClient {
  readonly #kc: KubeConfig;
  readonly #server: ServerConfiguration<Record<string, string>>;
  readonly #http = new IsomorphicFetchHttpLibrary();
  readonly #timeoutMs: number;
  readonly #discovery = new Map<string, Promise<Map<string, ResourceInfo>>>();

  constructor(kc: KubeConfig, options: { timeoutMs?: number } = {}) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new TypeError('the kubeconfig has no current cluster');
    this.#kc = kc;
    this.#server = new ServerConfiguration(cluster.server.replace(/\/$/, ''), {});
    this.#timeoutMs = options.timeoutMs ?? 30_000;
  }

  get kubeConfig(): KubeConfig {
    return this.#kc;
  }

  async request<T>(method: HttpMethod, path: string, options: RequestOptions = {}): Promise<T> {
    const ctx = this.#server.makeRequestContext(path, method);
    for (const [name, value] of Object.entries(options.query ?? {}))
      if (value !== undefined) ctx.setQueryParam(name, value);
    ctx.setHeaderParam('Accept', 'application/json');
    if (options.body !== undefined) {
      ctx.setHeaderParam('Content-Type', options.contentType ?? 'application/json');
      ctx.setBody(JSON.stringify(options.body));
    }
    await this.#kc.applySecurityAuthentication(ctx);
    ctx.setSignal(AbortSignal.timeout(this.#timeoutMs));
    let response;
    try {
      response = await this.#http.send(ctx).toPromise();
    } catch (e) {
      throw new KubeApiError(0, 'Unreachable', `${method} ${path}: ${(e as Error).message}`, { cause: e });
    }
    const text = await response.body.text();
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (response.httpStatusCode >= 200 && response.httpStatusCode < 300) return body as T;
    const status = body as { reason?: string; message?: string } | undefined;
    throw new KubeApiError(
      response.httpStatusCode,
      status?.reason ?? 'Unknown',
      `${method} ${path}: ${response.httpStatusCode} ${status?.message ?? text.slice(0, 200)}`,
    );
  }

  /** The group version's resources from discovery, cached; a miss asks again once (a CRD may be new). */
  async #resources(apiVersion: string, refresh = false): Promise<Map<string, ResourceInfo>> {
    let entry = this.#discovery.get(apiVersion);
    if (!entry || refresh) {
      const path = apiVersion.includes('/') ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
      entry = this.request<{ resources: { name: string; kind: string; namespaced: boolean }[] }>(
        HttpMethod.GET,
        path,
      ).then((list) => {
        const byKind = new Map<string, ResourceInfo>();
        for (const r of list.resources)
          if (!r.name.includes('/')) byKind.set(r.kind, { plural: r.name, namespaced: r.namespaced });
        return byKind;
      });
      this.#discovery.set(apiVersion, entry);
      entry.catch(() => this.#discovery.delete(apiVersion));
    }
    return entry;
  }

  async resource(apiVersion: string, kind: string): Promise<ResourceInfo> {
    const found = (await this.#resources(apiVersion)).get(kind) ?? (await this.#resources(apiVersion, true)).get(kind);
    if (!found) throw new KubeApiError(404, 'NotFound', `the server has no ${kind} in ${apiVersion}`);
    return found;
  }

  /** Whether the server serves `kind` in `apiVersion` now (a CRD such as ServiceMonitor may come and go). */
  async hasResource(apiVersion: string, kind: string): Promise<boolean> {
    try {
      return (await this.#resources(apiVersion, true)).has(kind);
    } catch (e) {
      if (isStatus(e, 404)) return false;
      throw e;
    }
  }

  /** The collection path (no name) or the object path, with an optional subresource. */
  async path(ref: Omit<ObjectRef, 'name'> & { name?: string }, subresource?: string): Promise<string> {
    const info = await this.resource(ref.apiVersion, ref.kind);
    const root = ref.apiVersion.includes('/') ? `/apis/${ref.apiVersion}` : `/api/${ref.apiVersion}`;
    const parts = [root];
    if (info.namespaced && ref.namespace !== undefined) parts.push('namespaces', encodeURIComponent(ref.namespace));
    parts.push(info.plural);
    if (ref.name !== undefined) parts.push(encodeURIComponent(ref.name));
    if (subresource !== undefined) parts.push(subresource);
    return parts.join('/');
  }

  async get<T extends KubernetesObject>(ref: ObjectRef): Promise<T | undefined> {
    try {
      return await this.request<T>(HttpMethod.GET, await this.path(ref));
    } catch (e) {
      if (isStatus(e, 404)) return undefined;
      throw e;
    }
  }

  async list<T extends KubernetesObject>(
    apiVersion: string,
    kind: string,
    namespace?: string,
    options: { labelSelector?: string } = {},
  ): Promise<KubernetesListObject<T>> {
    const list = await this.request<KubernetesListObject<T>>(
      HttpMethod.GET,
      await this.path({ apiVersion, kind, ...(namespace === undefined ? {} : { namespace }) }),
      { query: { labelSelector: options.labelSelector } },
    );
    // List items omit apiVersion and kind on real servers; informers and callers want them.
    list.items = (list.items ?? []).map((item) => ({ ...item, apiVersion, kind }));
    return list;
  }

  async create<T extends KubernetesObject>(object: T): Promise<T> {
    const m = object.metadata ?? {};
    return this.request<T>(
      HttpMethod.POST,
      await this.path({ apiVersion: object.apiVersion!, kind: object.kind!, namespace: m.namespace }),
      { body: object, query: { fieldManager: FIELD_MANAGER } },
    );
  }

  /** Server-side apply with the operator's one field manager, taking over conflicting fields. */
  async apply<T extends KubernetesObject>(object: T): Promise<T> {
    const m = object.metadata ?? {};
    if (!m.name) throw new TypeError(`cannot apply a ${object.kind} without metadata.name`);
    return this.request<T>(
      HttpMethod.PATCH,
      await this.path({ apiVersion: object.apiVersion!, kind: object.kind!, namespace: m.namespace, name: m.name }),
      {
        body: object,
        contentType: 'application/apply-patch+yaml',
        query: { fieldManager: FIELD_MANAGER, force: 'true' },
      },
    );
  }

  async mergePatch<T extends KubernetesObject>(ref: ObjectRef, patch: unknown, subresource?: string): Promise<T> {
    return this.request<T>(HttpMethod.PATCH, await this.path(ref, subresource), {
      body: patch,
      contentType: 'application/merge-patch+json',
      query: { fieldManager: FIELD_MANAGER },
    });
  }

  async replace<T extends KubernetesObject>(object: T): Promise<T> {
    const m = object.metadata ?? {};
    return this.request<T>(
      HttpMethod.PUT,
      await this.path({ apiVersion: object.apiVersion!, kind: object.kind!, namespace: m.namespace, name: m.name }),
      { body: object, query: { fieldManager: FIELD_MANAGER } },
    );
  }

  /** Deletes; false when it was already gone. */
  async delete(ref: ObjectRef, options: { propagationPolicy?: string } = {}): Promise<boolean> {
    try {
      await this.request(HttpMethod.DELETE, await this.path(ref), {
        query: { propagationPolicy: options.propagationPolicy },
      });
      return true;
    } catch (e) {
      if (isStatus(e, 404)) return false;
      throw e;
    }
  }
}

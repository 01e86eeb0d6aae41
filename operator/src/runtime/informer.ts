/**
 * client-node's ListWatch, kept alive: it stops for good on any error but 410 (a list or watch that fails,
 * an API server that goes away), so it is restarted here with exponential backoff; and its watch has no
 * timeout, so it is restarted on a period too, in case a connection hangs without closing.
 *
 * Each (re)start is a new ListWatch: stopping one aborts its request, and the abort comes back later as an
 * error that would abort whatever request the same ListWatch had made since. The new one relists; objects
 * that were in the old cache and are not in the new list are reported deleted, so no deletion is lost.
 */
import { ListWatch, Watch, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from '@federizer/common';
import type { KubeClient } from './kube-client.js';

export type InformerEvent = 'add' | 'update' | 'delete';

export interface InformerOptions<T extends KubernetesObject> {
  client: KubeClient;
  apiVersion: string;
  kind: string;
  /** Undefined: every namespace. */
  namespace?: string;
  labelSelector?: string;
  onEvent: (event: InformerEvent, object: T) => void;
  logger: Logger;
  /** Called on each restart after an error, for metrics. */
  onRestart?: () => void;
  /** First restart delay; default 1 s, doubling to `maxBackoffMs` (default 60 s). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Watch restart period; default 5 minutes. */
  rewatchMs?: number;
}

function keyOf(o: KubernetesObject): string {
  return `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;
}

export class ResilientInformer<T extends KubernetesObject> {
  readonly #options: InformerOptions<T>;
  #informer: ListWatch<T> | undefined;
  #generation = 0;
  #failures = 0;
  #synced = false;
  #stopped = true;
  #timer: NodeJS.Timeout | undefined;
  #lastError: unknown;
  /** The generation whose ListWatch reported an error (its restart is scheduled, not a rewatch). */
  #failed = -1;
  #path: string | undefined;

  constructor(options: InformerOptions<T>) {
    this.#options = options;
  }

  get kind(): string {
    return this.#options.kind;
  }

  /** True once a first list has filled the cache. */
  get synced(): boolean {
    return this.#synced;
  }

  get lastError(): unknown {
    return this.#lastError;
  }

  list(namespace?: string): readonly T[] {
    return this.#informer?.list(namespace) ?? [];
  }

  get(name: string, namespace?: string): T | undefined {
    return this.#informer?.get(name, namespace);
  }

  /** Resolves after the first attempt to list (successful or not: failures are retried in the background). */
  async start(): Promise<void> {
    if (!this.#stopped) return;
    this.#stopped = false;
    await this.#run(++this.#generation);
  }

  async #run(generation: number): Promise<void> {
    const { client, apiVersion, kind, namespace, labelSelector } = this.#options;
    try {
      this.#path ??= await client.path({ apiVersion, kind, ...(namespace === undefined ? {} : { namespace }) });
    } catch (e) {
      this.#onError(generation, e);
      return;
    }
    const previous = this.#informer;
    const informer: ListWatch<T> = new ListWatch<T>(
      this.#path,
      new Watch(client.kubeConfig),
      async () => {
        const list = await client.list<T>(apiVersion, kind, namespace, labelSelector ? { labelSelector } : {});
        if (generation !== this.#generation) return list;
        this.#synced = true;
        this.#failures = 0;
        if (previous && previous !== informer) {
          const present = new Set(list.items.map(keyOf));
          for (const gone of previous.list()) if (!present.has(keyOf(gone))) this.#options.onEvent('delete', gone);
        }
        this.#informer = informer;
        return list;
      },
      false,
      labelSelector,
    );
    const forward = (event: InformerEvent) => (object: T) => {
      if (generation === this.#generation && !this.#stopped) this.#options.onEvent(event, object);
    };
    informer.on('add', forward('add'));
    informer.on('update', forward('update'));
    informer.on('delete', forward('delete'));
    informer.on('error', (err: unknown) => this.#onError(generation, err));
    this.#informer ??= informer;
    await informer.start();
    // A list that failed inside start() has already scheduled the restart; a rewatch must not replace it.
    if (generation === this.#generation && !this.#stopped && this.#failed !== generation)
      this.#schedule(generation, this.#options.rewatchMs ?? 300_000);
  }

  #schedule(generation: number, delayMs: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      if (this.#stopped || generation !== this.#generation) return;
      const old = this.#informer;
      const next = ++this.#generation;
      void old?.stop();
      void this.#run(next);
    }, delayMs);
    this.#timer.unref();
  }

  #onError(generation: number, err: unknown): void {
    if (generation !== this.#generation || this.#stopped) return;
    this.#failed = generation;
    this.#lastError = err;
    const delay = Math.min(
      this.#options.maxBackoffMs ?? 60_000,
      (this.#options.backoffMs ?? 1000) * 2 ** Math.min(this.#failures, 20),
    );
    this.#failures++;
    this.#options.logger.warn(
      { kind: this.#options.kind, err: (err as Error)?.message ?? String(err), retryInMs: delay },
      'informer stopped; restarting',
    );
    this.#options.onRestart?.();
    this.#schedule(generation, delay);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#generation++;
    clearTimeout(this.#timer);
    await this.#informer?.stop();
  }
}

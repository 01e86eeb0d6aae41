/**
 * The operator's composition root: leader election gates everything that writes; the leader runs the
 * informers, the MailDomain and MailUser controllers and their reconcilers; every instance serves
 * `/metrics`, `/healthz` and `/readyz`.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { hostname } from 'node:os';
import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
import { listen, silentLogger, type Logger, type RunningServer } from '@federizer/common';
import { Controller } from './controller.js';
import { EventRecorder } from './events.js';
import { ResilientInformer } from './informer.js';
import { KubeClient } from './kube-client.js';
import { LeaderElector } from './leader-election.js';
import { DEFAULT_PRUNE_KINDS, MailDomainReconciler, type Component, type DnsUpdater } from './maildomain-reconciler.js';
import { MailUserReconciler, mailUserAddress, type HttpFetch } from './mailuser-reconciler.js';
import { createOperatorMetrics, type OperatorMetrics } from './metrics.js';
import type { Rfc2136Settings } from './dns-settings.js';
import { API_VERSION, type MailDomainBuilder, type MailDomainObject, type MailUserObject } from './types.js';
import type { WorkQueueOptions } from './work-queue.js';

export interface OperatorRuntimeOptions {
  kubeConfig: KubeConfig;
  /** The pure desired-state builder. */
  build: MailDomainBuilder;
  /** Only this namespace; undefined watches every namespace. */
  namespace?: string;
  /** Unique per instance; default `<hostname>-<random>`. */
  identity?: string;
  /** false runs as leader at once (one replica, tests). Default: a Lease in `leaseNamespace`. */
  leaderElection?:
    | false
    | { namespace: string; name?: string; leaseDurationMs?: number; renewDeadlineMs?: number; retryPeriodMs?: number };
  workers?: number;
  resyncMs?: number;
  queue?: WorkQueueOptions;
  informer?: { backoffMs?: number; maxBackoffMs?: number; rewatchMs?: number };
  /** Serve /metrics, /healthz and /readyz here (port 0: any free port). Omitted: no server. */
  http?: { host?: string; port: number };
  logger?: Logger;
  now?: () => number;
  /** The MailUser reconciler's HTTP client for the AS admin API (tests route the in-cluster URL to loopback). */
  fetch?: HttpFetch;
  dnsUpdater?: (namespace: string, settings: Rfc2136Settings) => Promise<DnsUpdater>;
  componentOf?: (object: KubernetesObject) => Component | undefined;
  /** Kinds whose changes re-queue their owning MailDomain; those the server lacks are skipped. */
  ownedKinds?: readonly { apiVersion: string; kind: string }[];
}

export const DEFAULT_OWNED_KINDS = [
  { apiVersion: 'v1', kind: 'Secret' },
  { apiVersion: 'v1', kind: 'PersistentVolumeClaim' },
  ...DEFAULT_PRUNE_KINDS,
] as const;

function keyOf(o: KubernetesObject): string {
  return `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;
}

interface Leading {
  informers: ResilientInformer<KubernetesObject>[];
  domains: Controller;
  users: Controller;
}

export class OperatorRuntime {
  readonly metrics: OperatorMetrics;
  readonly client: KubeClient;
  readonly identity: string;
  readonly #o: OperatorRuntimeOptions;
  readonly #logger: Logger;
  readonly #elector: LeaderElector | undefined;
  readonly #events: EventRecorder;
  #leading: Leading | undefined;
  #transition: Promise<void> = Promise.resolve();
  #http: RunningServer | undefined;
  #closed = false;

  private constructor(options: OperatorRuntimeOptions) {
    this.#o = options;
    this.#logger = options.logger ?? silentLogger();
    this.identity = options.identity ?? `${hostname()}-${randomUUID().slice(0, 8)}`;
    this.client = new KubeClient(options.kubeConfig);
    this.metrics = createOperatorMetrics();
    this.metrics.leader.set(0);
    this.#events = new EventRecorder(this.client, {
      instance: this.identity,
      logger: this.#logger,
      ...(options.now ? { now: options.now } : {}),
    });
    const le = options.leaderElection;
    if (le !== false && le !== undefined)
      this.#elector = new LeaderElector({
        client: this.client,
        namespace: le.namespace,
        name: le.name ?? 'federizer-operator',
        identity: this.identity,
        logger: this.#logger,
        ...(le.leaseDurationMs ? { leaseDurationMs: le.leaseDurationMs } : {}),
        ...(le.renewDeadlineMs ? { renewDeadlineMs: le.renewDeadlineMs } : {}),
        ...(le.retryPeriodMs ? { retryPeriodMs: le.retryPeriodMs } : {}),
        onStartedLeading: () => this.#lead(true),
        onStoppedLeading: () => this.#lead(false),
      });
  }

  static async start(options: OperatorRuntimeOptions): Promise<OperatorRuntime> {
    if (options.leaderElection === undefined)
      throw new TypeError('leaderElection: give { namespace } for a Lease, or false for a single instance');
    const runtime = new OperatorRuntime(options);
    if (options.http) runtime.#http = await listen((req, res) => runtime.#serve(req, res), options.http);
    if (runtime.#elector) runtime.#elector.start();
    else await runtime.#lead(true);
    return runtime;
  }

  /** `http://host:port` of the metrics and probe server, if one runs. */
  get url(): string | undefined {
    return this.#http?.url;
  }

  get isLeader(): boolean {
    return this.#leading !== undefined;
  }

  /** A standby is ready; a leader is ready once every informer has listed. */
  get ready(): boolean {
    if (this.#closed) return false;
    return this.#leading === undefined || this.#leading.informers.every((i) => i.synced);
  }

  /** The MailDomain controller while leading (tests watch its queue). */
  get domainController(): Controller | undefined {
    return this.#leading?.domains;
  }

  #lead(leading: boolean): Promise<void> {
    // Leadership flips are serialized: a stop must finish before a new start builds new controllers.
    this.#transition = this.#transition.then(() => (leading ? this.#startLeading() : this.#stopLeading()));
    return this.#transition;
  }

  async #startLeading(): Promise<void> {
    if (this.#leading || this.#closed) return;
    const o = this.#o;
    const scope = o.namespace === undefined ? {} : { namespace: o.namespace };
    const informerOptions = {
      client: this.client,
      logger: this.#logger,
      ...o.informer,
    };
    const caches = new Map<string, ResilientInformer<KubernetesObject>>();
    const cachedList = (apiVersion: string, kind: string, namespace: string) => {
      const informer = caches.get(`${apiVersion}|${kind}`);
      return informer?.synced ? informer.list(namespace) : undefined;
    };
    const mdReconciler = new MailDomainReconciler({
      client: this.client,
      build: o.build,
      events: this.#events,
      logger: this.#logger,
      metrics: this.metrics,
      cachedList,
      ...(o.now ? { now: o.now } : {}),
      ...(o.dnsUpdater ? { dnsUpdater: o.dnsUpdater } : {}),
      ...(o.componentOf ? { componentOf: o.componentOf } : {}),
    });
    const muReconciler = new MailUserReconciler({
      client: this.client,
      events: this.#events,
      logger: this.#logger,
      ...(o.now ? { now: o.now } : {}),
      ...(o.fetch ? { fetch: o.fetch } : {}),
    });
    const mdInformer = new ResilientInformer<MailDomainObject>({
      ...informerOptions,
      ...scope,
      apiVersion: API_VERSION,
      kind: 'MailDomain',
      onEvent: (_event, md) => {
        domains.enqueue(keyOf(md));
        // A domain's AS becoming ready (or going) concerns its users.
        const domain = String(md.spec?.domain ?? '').toLowerCase();
        for (const mu of muInformer.list(md.metadata?.namespace))
          if (mailUserAddress(mu)?.endsWith(`@${domain}`)) users.enqueue(keyOf(mu));
      },
      onRestart: () => this.metrics.informerRestarts.inc({ kind: 'MailDomain' }),
    });
    const muInformer = new ResilientInformer<MailUserObject>({
      ...informerOptions,
      ...scope,
      apiVersion: API_VERSION,
      kind: 'MailUser',
      // A deletion needs no memory of the object: the finalizer keeps it readable until its user is gone.
      onEvent: (_event, mu) => users.enqueue(keyOf(mu)),
      onRestart: () => this.metrics.informerRestarts.inc({ kind: 'MailUser' }),
    });
    const owned: ResilientInformer<KubernetesObject>[] = [];
    for (const { apiVersion, kind } of o.ownedKinds ?? DEFAULT_OWNED_KINDS) {
      if (!(await this.client.hasResource(apiVersion, kind))) {
        this.#logger.info({ apiVersion, kind }, 'kind not served by this cluster; not watched');
        continue;
      }
      const informer = new ResilientInformer<KubernetesObject>({
        ...informerOptions,
        ...scope,
        apiVersion,
        kind,
        onEvent: (_event, object) => {
          for (const ref of object.metadata?.ownerReferences ?? [])
            if (ref.kind === 'MailDomain' && ref.apiVersion === API_VERSION)
              domains.enqueue(`${object.metadata?.namespace ?? ''}/${ref.name}`);
        },
        onRestart: () => this.metrics.informerRestarts.inc({ kind }),
      });
      owned.push(informer);
      caches.set(`${apiVersion}|${kind}`, informer);
    }
    const controllerOptions = {
      logger: this.#logger,
      metrics: this.metrics,
      ...(o.workers ? { workers: o.workers } : {}),
      ...(o.resyncMs ? { resyncMs: o.resyncMs } : {}),
      ...(o.queue ? { queue: o.queue } : {}),
    };
    const domains: Controller = new Controller({
      ...controllerOptions,
      name: 'maildomain',
      reconcile: (namespace, name) => mdReconciler.reconcile(namespace, name),
      keys: () => mdInformer.list().map(keyOf),
    });
    const users: Controller = new Controller({
      ...controllerOptions,
      name: 'mailuser',
      reconcile: (namespace, name) => muReconciler.reconcile(namespace, name),
      keys: () => muInformer.list().map(keyOf),
    });
    const informers = [
      mdInformer as ResilientInformer<KubernetesObject>,
      muInformer as ResilientInformer<KubernetesObject>,
      ...owned,
    ];
    this.#leading = { informers, domains, users };
    this.metrics.leader.set(1);
    domains.start();
    users.start();
    await Promise.all(informers.map((i) => i.start()));
    this.#logger.info({ identity: this.identity, namespace: o.namespace ?? '(all)' }, 'controllers started');
  }

  async #stopLeading(): Promise<void> {
    const leading = this.#leading;
    if (!leading) return;
    this.#leading = undefined;
    this.metrics.leader.set(0);
    await Promise.all(leading.informers.map((i) => i.stop()));
    await Promise.all([leading.domains.stop(), leading.users.stop()]);
    this.#logger.info({ identity: this.identity }, 'controllers stopped');
  }

  #serve(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    const text = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return text(405, 'method not allowed\n');
    if (path === '/healthz') return text(this.#closed ? 503 : 200, this.#closed ? 'stopping\n' : 'ok\n');
    if (path === '/readyz') {
      const pending = this.#leading?.informers.filter((i) => !i.synced).map((i) => i.kind) ?? [];
      if (this.ready) return text(200, `ok (${this.isLeader ? 'leader' : 'standby'})\n`);
      return text(503, this.#closed ? 'stopping\n' : `waiting for informers: ${pending.join(', ')}\n`);
    }
    if (path === '/metrics') {
      this.metrics.registry
        .metrics()
        .then((body) => text(200, body, this.metrics.registry.contentType))
        .catch((e: Error) => text(500, `${e.message}\n`));
      return;
    }
    text(404, 'not found\n');
  }

  /** Stops the controllers, releases the Lease, closes the probe server. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#elector) await this.#elector.stop();
    await this.#lead(false);
    await this.#http?.close(1000);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

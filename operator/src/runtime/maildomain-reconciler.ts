/**
 * One reconcile of a MailDomain: build the desired objects (the injected pure builder), apply them with
 * server-side apply, create the Secrets that do not exist yet (never overwriting one), prune what the
 * builder no longer wants, put the SRV records where `spec.dns` says, and write the status conditions.
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from '@federizer/common';
import { Rfc2136Client, type SrvRecordSpec } from '../dns/index.js';
import { findCondition, mergeConditions, transitions, type Condition, type DesiredCondition } from './conditions.js';
import { readDnsSettings, rfc2136Server, SpecError, type DnsSettings, type Rfc2136Settings } from './dns-settings.js';
import type { EventRecorder } from './events.js';
import { isStatus, type KubeClient, type ObjectRef } from './kube-client.js';
import type { OperatorMetrics } from './metrics.js';
import { sameJson } from './same-json.js';
import {
  API_VERSION,
  CREATE_ONLY_ANNOTATION,
  DNS_FINALIZER,
  type BuildResult,
  type DnsRecordStatus,
  type MailDomainBuilder,
  type MailDomainObject,
  type SecretObject,
  type SrvRecord,
} from './types.js';

export type Component = 'auth' | 'mailbox' | 'webmail';

/** Reads `app.kubernetes.io/component` (`auth`, `mailbox`, `webmail`; `as` also means auth). */
export function defaultComponentOf(object: KubernetesObject): Component | undefined {
  const label = object.metadata?.labels?.['app.kubernetes.io/component'];
  if (label === 'auth' || label === 'as' || label === 'authorization-server') return 'auth';
  if (label === 'mailbox' || label === 'webmail') return label;
  return undefined;
}

/** What the operator needs from a DNS server that takes updates; Rfc2136Client by default. */
export interface DnsUpdater {
  replaceSrvRecords(records: readonly SrvRecordSpec[], alsoDelete: readonly string[]): Promise<void>;
  deleteSrvRecords(names: readonly string[]): Promise<void>;
}

export interface MailDomainReconcilerOptions {
  client: KubeClient;
  build: MailDomainBuilder;
  events: EventRecorder;
  logger: Logger;
  metrics?: OperatorMetrics;
  now?: () => number;
  componentOf?: (object: KubernetesObject) => Component | undefined;
  /** The DNS server of an rfc2136 MailDomain; default an Rfc2136Client with the TSIG key from its Secret. */
  dnsUpdater?: (namespace: string, settings: Rfc2136Settings) => Promise<DnsUpdater>;
  /** Owned objects of these kinds that the builder stops returning are deleted (never create-only ones). */
  pruneKinds?: readonly { apiVersion: string; kind: string }[];
  /** Lists from an informer cache instead of the API, where one runs for that kind. */
  cachedList?: (apiVersion: string, kind: string, namespace: string) => readonly KubernetesObject[] | undefined;
}

export const DEFAULT_PRUNE_KINDS = [
  { apiVersion: 'apps/v1', kind: 'Deployment' },
  { apiVersion: 'v1', kind: 'Service' },
  { apiVersion: 'v1', kind: 'ConfigMap' },
  { apiVersion: 'networking.k8s.io/v1', kind: 'Ingress' },
  { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget' },
  { apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor' },
  { apiVersion: 'externaldns.k8s.io/v1alpha1', kind: 'DNSEndpoint' },
] as const;

/** Secrets and configuration first, so that Deployments start with what they mount. */
const APPLY_ORDER = ['Secret', 'ConfigMap', 'PersistentVolumeClaim', 'ServiceAccount', 'Service', 'Deployment'];

function order(kind: string | undefined): number {
  const i = APPLY_ORDER.indexOf(kind ?? '');
  return i === -1 ? APPLY_ORDER.length : i;
}

function refOf(o: KubernetesObject): ObjectRef {
  return {
    apiVersion: o.apiVersion!,
    kind: o.kind!,
    name: o.metadata!.name!,
    ...(o.metadata?.namespace ? { namespace: o.metadata.namespace } : {}),
  };
}

function ownedBy(o: KubernetesObject, uid: string | undefined): boolean {
  return uid !== undefined && (o.metadata?.ownerReferences ?? []).some((r) => r.uid === uid);
}

/** Secrets (generated keys and tokens) and objects marked create-only are created once, never written again. */
function isCreateOnly(o: KubernetesObject): boolean {
  return (o.apiVersion === 'v1' && o.kind === 'Secret') || o.metadata?.annotations?.[CREATE_ONLY_ANNOTATION] === 'true';
}

function bareName(name: string): string {
  return name.replace(/\.$/, '').toLowerCase();
}

/** status.dnsRecords as crds/maildomain.yaml has it: names and targets without the final dot. */
function recordsStatus(records: readonly SrvRecord[]): DnsRecordStatus[] {
  return records
    .map((r) => ({
      name: bareName(r.name),
      type: 'SRV' as const,
      ttl: r.ttl,
      priority: r.priority,
      weight: r.weight,
      port: r.port,
      target: bareName(r.target),
    }))
    .sort((a, b) => `${a.name} ${a.target} ${a.port}`.localeCompare(`${b.name} ${b.target} ${b.port}`));
}

function sameRecords(a: readonly SrvRecord[] | undefined, b: readonly SrvRecord[]): boolean {
  return sameJson(a ?? [], b);
}

interface DeploymentLike extends KubernetesObject {
  spec?: { replicas?: number };
  status?: { availableReplicas?: number; replicas?: number };
}

export interface ReconcileOutcome {
  /** The object is gone or finalized: nothing more to do. */
  done?: boolean;
  /** The domain is not Ready yet: look again after this long. */
  requeueAfterMs?: number;
}

export class MailDomainReconciler {
  readonly #o: MailDomainReconcilerOptions;
  readonly #now: () => number;
  readonly #componentOf: (object: KubernetesObject) => Component | undefined;

  constructor(options: MailDomainReconcilerOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#componentOf = options.componentOf ?? defaultComponentOf;
  }

  async reconcile(namespace: string, name: string): Promise<ReconcileOutcome> {
    const { client } = this.#o;
    const md = await client.get<MailDomainObject>({ apiVersion: API_VERSION, kind: 'MailDomain', namespace, name });
    if (!md) return { done: true };
    let dns: DnsSettings | SpecError;
    try {
      dns = readDnsSettings(md);
    } catch (e) {
      if (!(e instanceof SpecError)) throw e;
      dns = e;
    }
    if (md.metadata?.deletionTimestamp) return this.#finalize(md, dns);

    let current = md;
    const finalizers = md.metadata?.finalizers ?? [];
    const wantsFinalizer = !(dns instanceof SpecError) && dns.mode === 'rfc2136';
    if (wantsFinalizer && !finalizers.includes(DNS_FINALIZER)) {
      current = await this.#setFinalizers(md, [...finalizers, DNS_FINALIZER]);
    } else if (!wantsFinalizer && finalizers.includes(DNS_FINALIZER) && !(dns instanceof SpecError)) {
      // The domain left rfc2136: records in that server are no longer the operator's to keep.
      const names = (md.status?.dnsRecords ?? []).map((r) => r.name);
      await this.#o.events.record(
        md,
        'Warning',
        'DNSRecordsOrphaned',
        'ChangeDNSMode',
        `DNS mode is now ${dns.mode}; the RFC 2136 records ${names.join(', ') || '(none)'} were left in place`,
      );
      current = await this.#setFinalizers(
        md,
        finalizers.filter((f) => f !== DNS_FINALIZER),
      );
    }

    let built: BuildResult;
    try {
      built = this.#o.build(current, {
        existingSecrets: await this.#existingSecrets(current),
        hasServiceMonitorCrd: await client.hasResource('monitoring.coreos.com/v1', 'ServiceMonitor'),
      });
    } catch (e) {
      // An invalid spec: say so in the status; retrying will not help until the spec changes.
      const message = (e as Error).message;
      await this.#writeStatus(current, [{ type: 'Ready', status: 'False', reason: 'InvalidSpec', message }]);
      return { done: true };
    }

    const applied = await this.#applyAll(current, built.objects);
    await this.#prune(current, built.objects);

    const records = recordsStatus(built.srvRecords);
    let dnsCondition: DesiredCondition;
    let dnsError: Error | undefined;
    try {
      dnsCondition = await this.#syncDns(current, dns, records);
    } catch (e) {
      dnsError = e as Error;
      const invalid = e instanceof SpecError;
      dnsCondition = {
        type: 'DNSRecordsReady',
        status: 'False',
        reason: invalid ? 'InvalidDNSSettings' : 'UpdateFailed',
        message: (e as Error).message,
      };
      if (!invalid) this.#o.metrics?.dnsUpdates.inc({ result: 'error' });
    }

    const components = this.#readiness(applied);
    const notReady = [...components, dnsCondition].filter((c) =>
      c.type === 'DNSRecordsReady' ? c.status === 'False' : c.status !== 'True',
    );
    const ready: DesiredCondition =
      notReady.length === 0
        ? { type: 'Ready', status: 'True', reason: 'Ready', message: 'the mail domain is serving' }
        : {
            type: 'Ready',
            status: 'False',
            reason: 'NotReady',
            message: `waiting for ${notReady.map((c) => c.type.replace(/Ready$/, '')).join(', ')}`,
          };
    await this.#writeStatus(current, [ready, ...components, dnsCondition], { records, urls: built.urls });
    if (dnsError && !(dnsError instanceof SpecError)) throw dnsError;
    return ready.status === 'True' ? {} : { requeueAfterMs: 30_000 };
  }

  async #setFinalizers(md: MailDomainObject, finalizers: string[]): Promise<MailDomainObject> {
    // The resourceVersion makes this a compare-and-swap: a concurrent change answers 409 and is retried.
    return this.#o.client.mergePatch<MailDomainObject>(refOf(md), {
      metadata: { finalizers, resourceVersion: md.metadata?.resourceVersion },
    });
  }

  async #existingSecrets(md: MailDomainObject): Promise<ReadonlySet<string>> {
    // Never from a cache: a Secret created a moment ago and missing there would be generated anew (and
    // the pods would be configured with a key that the create, refused with 409, never stored).
    const namespace = md.metadata!.namespace!;
    const secrets = (await this.#o.client.list<SecretObject>('v1', 'Secret', namespace)).items;
    return new Set(secrets.map((s) => s.metadata!.name!));
  }

  async #applyAll(md: MailDomainObject, objects: readonly KubernetesObject[]): Promise<KubernetesObject[]> {
    const namespace = md.metadata!.namespace!;
    const applied: KubernetesObject[] = [];
    const created: string[] = [];
    const sorted = [...objects].sort((a, b) => order(a.kind) - order(b.kind));
    for (const desired of sorted) {
      const object = {
        ...desired,
        metadata: { ...desired.metadata, namespace: desired.metadata?.namespace ?? namespace },
      };
      if (isCreateOnly(object)) {
        const existing = await this.#o.client.get(refOf(object));
        if (existing) continue;
        try {
          await this.#o.client.create(object);
          created.push(`${object.kind} ${object.metadata.name}`);
        } catch (e) {
          // Created meanwhile (by another reconcile or by hand): it stays as it is.
          if (!isStatus(e, 409)) throw e;
        }
        continue;
      }
      applied.push(await this.#o.client.apply(object));
    }
    if (created.length > 0)
      await this.#o.events.record(md, 'Normal', 'Generated', 'Create', `created ${created.join(', ')}`);
    return applied;
  }

  async #prune(md: MailDomainObject, desired: readonly KubernetesObject[]): Promise<void> {
    const namespace = md.metadata!.namespace!;
    const wanted = new Set(desired.map((o) => `${o.apiVersion}|${o.kind}|${o.metadata?.name}`));
    for (const { apiVersion, kind } of this.#o.pruneKinds ?? DEFAULT_PRUNE_KINDS) {
      let live = this.#o.cachedList?.(apiVersion, kind, namespace);
      if (live === undefined) {
        try {
          live = (await this.#o.client.list(apiVersion, kind, namespace)).items;
        } catch (e) {
          if (isStatus(e, 404)) continue; // the kind is not served here (an absent CRD)
          throw e;
        }
      }
      for (const o of live) {
        if (!ownedBy(o, md.metadata?.uid) || isCreateOnly(o)) continue;
        if (wanted.has(`${apiVersion}|${kind}|${o.metadata?.name}`)) continue;
        await this.#o.client.delete({ apiVersion, kind, namespace, name: o.metadata!.name! });
        await this.#o.events.record(md, 'Normal', 'Pruned', 'Delete', `deleted ${kind} ${o.metadata!.name}`);
      }
    }
  }

  async #updater(namespace: string, settings: Rfc2136Settings): Promise<DnsUpdater> {
    if (this.#o.dnsUpdater) return this.#o.dnsUpdater(namespace, settings);
    return new Rfc2136Client(await rfc2136Server(this.#o.client, namespace, settings));
  }

  async #syncDns(
    md: MailDomainObject,
    dns: DnsSettings | SpecError,
    records: DnsRecordStatus[],
  ): Promise<DesiredCondition> {
    if (dns instanceof SpecError) throw dns;
    const type = 'DNSRecordsReady';
    switch (dns.mode) {
      case 'none':
        return {
          type,
          status: 'Unknown',
          reason: 'ManualDNS',
          message: `DNS mode none: an administrator creates the ${records.length} records listed in status.dnsRecords`,
        };
      case 'externaldns':
        return {
          type,
          status: 'True',
          reason: 'DNSEndpointApplied',
          message: `ExternalDNS publishes ${records.length} records from the DNSEndpoint`,
        };
      case 'rfc2136': {
        const previous = md.status?.dnsRecords;
        const wasReady = findCondition(md.status?.conditions, type)?.status === 'True';
        if (wasReady && sameRecords(previous, records))
          return {
            type,
            status: 'True',
            reason: 'RecordsUpdated',
            message: `${records.length} records at ${dns.host}:${dns.port}`,
          };
        const names = new Set(records.map((r) => r.name));
        const stale = [...new Set((previous ?? []).map((r) => r.name))].filter((n) => !names.has(n));
        const updater = await this.#updater(md.metadata!.namespace!, dns);
        await updater.replaceSrvRecords(records, stale);
        this.#o.metrics?.dnsUpdates.inc({ result: 'success' });
        await this.#o.events.record(
          md,
          'Normal',
          'DNSRecordsUpdated',
          'Update',
          `${records.length} SRV records in zone ${dns.zone} at ${dns.host}:${dns.port}`,
        );
        return {
          type,
          status: 'True',
          reason: 'RecordsUpdated',
          message: `${records.length} records at ${dns.host}:${dns.port}`,
        };
      }
    }
  }

  #readiness(applied: readonly KubernetesObject[]): DesiredCondition[] {
    const deployments = applied.filter((o) => o.kind === 'Deployment') as DeploymentLike[];
    const condition = (component: Component, type: string, absent: DesiredCondition['status']): DesiredCondition => {
      const mine = deployments.filter((d) => this.#componentOf(d) === component);
      if (mine.length === 0)
        return absent === 'True'
          ? { type, status: 'True', reason: 'Disabled', message: `no ${component} is deployed for this domain` }
          : {
              type,
              status: 'False',
              reason: 'NotDeployed',
              message: `the builder produced no ${component} Deployment`,
            };
      const want = mine.reduce((n, d) => n + (d.spec?.replicas ?? 1), 0);
      const available = mine.reduce((n, d) => n + (d.status?.availableReplicas ?? 0), 0);
      const ok = mine.every((d) => (d.status?.availableReplicas ?? 0) >= (d.spec?.replicas ?? 1));
      return {
        type,
        status: ok ? 'True' : 'False',
        reason: ok ? 'Available' : 'Progressing',
        message: `${available}/${want} replicas available`,
      };
    };
    return [
      condition('auth', 'AuthServerReady', 'False'),
      condition('mailbox', 'MailboxReady', 'False'),
      condition('webmail', 'WebmailReady', 'True'),
    ];
  }

  async #writeStatus(
    md: MailDomainObject,
    desired: DesiredCondition[],
    built: { records: DnsRecordStatus[]; urls: BuildResult['urls'] } | undefined = undefined,
  ): Promise<void> {
    const previous = md.status?.conditions;
    const generation = md.metadata?.generation;
    const conditions = mergeConditions(previous, desired, generation, this.#now());
    const status = {
      observedGeneration: generation,
      conditions,
      ...(built === undefined ? {} : { dnsRecords: built.records }),
      // A merge patch removes a key given as null: a builder that stops reporting a URL clears it.
      ...(built?.urls === undefined
        ? {}
        : {
            urls: {
              ...Object.fromEntries(Object.keys(md.status?.urls ?? {}).map((k) => [k, null])),
              ...built.urls,
            },
          }),
    };
    const unchanged =
      md.status?.observedGeneration === generation &&
      sameJson(previous ?? [], conditions) &&
      (built === undefined ||
        (sameRecords(md.status?.dnsRecords, built.records) &&
          (built.urls === undefined || sameJson(md.status?.urls, built.urls))));
    if (unchanged) return;
    await this.#o.client.mergePatch(
      refOf(md),
      { metadata: { resourceVersion: md.metadata?.resourceVersion }, status },
      'status',
    );
    for (const c of transitions(previous, conditions)) await this.#announce(md, c);
  }

  async #announce(md: MailDomainObject, c: Condition): Promise<void> {
    // Components becoming ready are summed up by Ready; their failures are worth an event each.
    if (c.type === 'Ready' && c.status === 'True')
      await this.#o.events.record(md, 'Normal', 'Ready', 'Reconcile', c.message);
    else if (c.status === 'False' && (c.type === 'Ready' ? c.reason === 'InvalidSpec' : c.reason !== 'Progressing'))
      await this.#o.events.record(md, 'Warning', c.reason, 'Reconcile', `${c.type}: ${c.message}`);
  }

  async #finalize(md: MailDomainObject, dns: DnsSettings | SpecError): Promise<ReconcileOutcome> {
    const finalizers = md.metadata?.finalizers ?? [];
    if (!finalizers.includes(DNS_FINALIZER)) return { done: true };
    const names = [...new Set((md.status?.dnsRecords ?? []).map((r) => r.name))];
    if (dns instanceof SpecError) {
      // Without a valid server there is nothing to delete from; keeping the finalizer would block forever.
      await this.#o.events.record(md, 'Warning', 'DNSRecordsOrphaned', 'Delete', dns.message);
    } else if (dns.mode === 'rfc2136' && names.length > 0) {
      try {
        const updater = await this.#updater(md.metadata!.namespace!, dns);
        await updater.deleteSrvRecords(names);
        this.#o.metrics?.dnsUpdates.inc({ result: 'success' });
      } catch (e) {
        this.#o.metrics?.dnsUpdates.inc({ result: 'error' });
        await this.#o.events.record(md, 'Warning', 'DNSRecordsDeleteFailed', 'Delete', (e as Error).message);
        throw e;
      }
      await this.#o.events.record(md, 'Normal', 'DNSRecordsDeleted', 'Delete', `deleted ${names.join(', ')}`);
    }
    try {
      await this.#setFinalizers(
        md,
        finalizers.filter((f) => f !== DNS_FINALIZER),
      );
    } catch (e) {
      if (!isStatus(e, 404)) throw e;
    }
    this.#o.logger.info({ maildomain: `${md.metadata?.namespace}/${md.metadata?.name}` }, 'finalized');
    return { done: true };
  }
}

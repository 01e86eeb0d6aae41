/**
 * The operator's runtime: `runOperator` for `federizer operator run`, and the parts it is made of.
 *
 * Environment read by `readOperatorEnv` (and so by `runOperator`):
 *   KUBECONFIG                          a kubeconfig file; else ~/.kube/config; else the in-cluster service account
 *   FEDERIZER_OPERATOR_NAMESPACE        watch only this namespace (default: every namespace)
 *   FEDERIZER_OPERATOR_LEASE_NAMESPACE  where the leader Lease lives (default: POD_NAMESPACE, the service
 *                                       account's namespace, the watched namespace, then "default")
 *   FEDERIZER_OPERATOR_LEASE_NAME       default federizer-operator
 *   FEDERIZER_OPERATOR_LEADER_ELECTION  0 to run without a Lease (one replica only)
 *   FEDERIZER_OPERATOR_METRICS_PORT     /metrics, /healthz, /readyz (default 8080)
 *   FEDERIZER_OPERATOR_METRICS_HOST     default 0.0.0.0
 *   FEDERIZER_OPERATOR_WORKERS          reconciles in parallel per controller (default 2, at most 32)
 *   FEDERIZER_OPERATOR_RESYNC           seconds between resyncs of every object (default 300)
 *   POD_NAME                            this instance's identity in the Lease (default hostname + random)
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { createLogger, type Logger } from '@federizer/common';
import { OperatorRuntime, type OperatorRuntimeOptions } from './runtime.js';
import type { MailDomainBuilder } from './types.js';

export { OperatorRuntime, DEFAULT_OWNED_KINDS, type OperatorRuntimeOptions } from './runtime.js';
export { KubeClient, KubeApiError, FIELD_MANAGER, isStatus, type ObjectRef } from './kube-client.js';
export { WorkQueue, type WorkQueueOptions } from './work-queue.js';
export { Controller, type ControllerOptions } from './controller.js';
export { ResilientInformer, type InformerOptions } from './informer.js';
export { LeaderElector, type LeaderElectionOptions } from './leader-election.js';
export { EventRecorder } from './events.js';
export { createOperatorMetrics, type OperatorMetrics } from './metrics.js';
export {
  MailDomainReconciler,
  defaultComponentOf,
  DEFAULT_PRUNE_KINDS,
  type Component,
  type DnsUpdater,
  type MailDomainReconcilerOptions,
} from './maildomain-reconciler.js';
export { MailUserReconciler, mailUserAddress, AdminApiError, type HttpFetch } from './mailuser-reconciler.js';
export { sameJson } from './same-json.js';
export { readDnsSettings, SpecError, type DnsSettings, type Rfc2136Settings } from './dns-settings.js';
export {
  mergeConditions,
  findCondition,
  MAILDOMAIN_CONDITIONS,
  type Condition,
  type ConditionStatus,
} from './conditions.js';
export * from './types.js';

const SERVICE_ACCOUNT_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

export interface OperatorEnv {
  namespace?: string;
  leaseNamespace: string;
  leaseName: string;
  leaderElection: boolean;
  metricsHost: string;
  metricsPort: number;
  workers: number;
  resyncMs: number;
  identity?: string;
}

function integer(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min || value > max)
    throw new TypeError(`${name}="${raw}" is not an integer from ${min} to ${max}`);
  return value;
}

/** The operator's settings from the environment; a bad value throws a TypeError naming the variable. */
export function readOperatorEnv(env: NodeJS.ProcessEnv = process.env): OperatorEnv {
  const namespace = env.FEDERIZER_OPERATOR_NAMESPACE?.trim() || undefined;
  const serviceAccountNamespace = existsSync(SERVICE_ACCOUNT_NAMESPACE)
    ? readFileSync(SERVICE_ACCOUNT_NAMESPACE, 'utf8').trim() || undefined
    : undefined;
  const election = (env.FEDERIZER_OPERATOR_LEADER_ELECTION ?? '1').trim();
  if (!['0', '1', 'true', 'false'].includes(election))
    throw new TypeError(`FEDERIZER_OPERATOR_LEADER_ELECTION="${election}" is not 0 or 1`);
  return {
    ...(namespace ? { namespace } : {}),
    leaseNamespace:
      env.FEDERIZER_OPERATOR_LEASE_NAMESPACE?.trim() ||
      env.POD_NAMESPACE?.trim() ||
      serviceAccountNamespace ||
      namespace ||
      'default',
    leaseName: env.FEDERIZER_OPERATOR_LEASE_NAME?.trim() || 'federizer-operator',
    leaderElection: election === '1' || election === 'true',
    metricsHost: env.FEDERIZER_OPERATOR_METRICS_HOST?.trim() || '0.0.0.0',
    metricsPort: integer(env, 'FEDERIZER_OPERATOR_METRICS_PORT', 8080, 0, 65535),
    workers: integer(env, 'FEDERIZER_OPERATOR_WORKERS', 2, 1, 32),
    resyncMs: integer(env, 'FEDERIZER_OPERATOR_RESYNC', 300, 10, 86_400) * 1000,
    ...(env.POD_NAME?.trim() ? { identity: env.POD_NAME.trim() } : {}),
  };
}

const SERVICE_ACCOUNT_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/** KUBECONFIG if set, else ~/.kube/config, else the in-cluster service account (client-node's order). */
export function loadKubeConfig(env: NodeJS.ProcessEnv = process.env): KubeConfig {
  // With none of them client-node falls back to http://localhost:8080, where no API server is, or worse,
  // the operator's own metrics port: say what is missing instead.
  if (!env.KUBECONFIG && !existsSync(join(homedir(), '.kube', 'config')) && !existsSync(SERVICE_ACCOUNT_TOKEN))
    throw new TypeError('no Kubernetes cluster: set KUBECONFIG, or run in a cluster with a service account');
  const kc = new KubeConfig();
  kc.loadFromDefault();
  if (!kc.getCurrentCluster()) throw new TypeError('no Kubernetes cluster: the kubeconfig has no current context');
  return kc;
}

export interface RunOperatorOptions {
  /** The desired-state builder (operator/src/builders' buildMailDomain). */
  build: MailDomainBuilder;
  env?: NodeJS.ProcessEnv;
  logger?: Logger;
  /** Default: loadKubeConfig(). */
  kubeConfig?: KubeConfig;
  /** Anything else of OperatorRuntimeOptions, over what the environment says. */
  overrides?: Partial<OperatorRuntimeOptions>;
}

/** Starts the operator as `federizer operator run` does; the caller closes it (on SIGTERM). */
export async function runOperator(options: RunOperatorOptions): Promise<OperatorRuntime> {
  const settings = readOperatorEnv(options.env);
  const logger = options.logger ?? createLogger({ name: 'operator' });
  const runtime = await OperatorRuntime.start({
    kubeConfig: options.kubeConfig ?? loadKubeConfig(),
    build: options.build,
    ...(settings.namespace ? { namespace: settings.namespace } : {}),
    ...(settings.identity ? { identity: settings.identity } : {}),
    leaderElection: settings.leaderElection ? { namespace: settings.leaseNamespace, name: settings.leaseName } : false,
    workers: settings.workers,
    resyncMs: settings.resyncMs,
    http: { host: settings.metricsHost, port: settings.metricsPort },
    logger,
    ...options.overrides,
  });
  logger.info(
    { url: runtime.url, namespace: settings.namespace ?? '(all)', leaderElection: settings.leaderElection },
    'operator started',
  );
  return runtime;
}

/**
 * Deployments, Services, PersistentVolumeClaims and PodDisruptionBudgets of the AS, the mailbox and the
 * webmail. Every pod runs the same image with a different `federizer` subcommand, under the restricted Pod
 * Security Standard: non-root, read-only root filesystem (an emptyDir on /tmp for the temporary files Node
 * and the services may write), no capabilities, the runtime's default seccomp profile.
 */
import type { ResolvedMailDomain, ResourceRequirements, StorageSpec } from '../model.js';
import {
  CONTAINER_PORT,
  DATA_DIR,
  METRICS_PORT,
  authEnv,
  configHash,
  configMap,
  mailboxEnv,
  webmailEnv,
  type EnvVar,
} from './config.js';
import { CONFIG_HASH_ANNOTATION, metadata, names, selectorLabels, type Component, type Manifest } from './meta.js';

/** The image's non-root user (see the Dockerfile). */
export const RUN_AS = 10001;

type Workload = 'auth' | 'mailbox' | 'webmail';

interface WorkloadPlan {
  component: Workload;
  replicas: number;
  args: string[];
  env: { config: Record<string, string>; secrets: EnvVar[] };
  resources: Required<ResourceRequirements>;
  /** A claim mounted at DATA_DIR, when the component keeps files. */
  storage?: { claim: string; spec: StorageSpec & { size: string; accessMode: string; retainOnDelete: boolean } };
  /** The webmail has no dependency to wait for: it is ready when it is alive. */
  readinessPath: '/readyz' | '/healthz';
  /**
   * The container port that serves /metrics and the probes: `http` for the AS and the mailbox, whose Ingress
   * rules list only public paths; `metrics`, a port of its own, for the webmail, whose public port the
   * Ingress reaches on every path.
   */
  metricsPort: 'http' | 'metrics';
  terminationGracePeriodSeconds: number;
}

function plans(md: ResolvedMailDomain): WorkloadPlan[] {
  const { spec } = md;
  const n = names(md);
  const result: WorkloadPlan[] = [
    {
      component: 'auth',
      replicas: spec.authServer.replicas,
      args: ['auth'],
      env: authEnv(md),
      resources: spec.authServer.resources,
      // With PostgreSQL the AS keeps no files.
      ...(spec.database.type === 'sqlite' ? { storage: { claim: n.authData, spec: spec.authServer.storage } } : {}),
      readinessPath: '/readyz',
      metricsPort: 'http',
      terminationGracePeriodSeconds: 30,
    },
    {
      component: 'mailbox',
      replicas: spec.mailbox.replicas,
      args: ['mailbox'],
      env: mailboxEnv(md),
      resources: spec.mailbox.resources,
      // The resources (blobs) are files whatever the database.
      storage: { claim: n.mailboxData, spec: spec.mailbox.storage },
      readinessPath: '/readyz',
      metricsPort: 'http',
      // Requests in flight finish and claimed queue work is handed back on SIGTERM.
      terminationGracePeriodSeconds: 60,
    },
  ];
  if (spec.webmail.enabled) {
    result.push({
      component: 'webmail',
      replicas: spec.webmail.replicas,
      args: ['webmail'],
      env: webmailEnv(md),
      resources: spec.webmail.resources,
      readinessPath: '/healthz',
      metricsPort: 'metrics',
      terminationGracePeriodSeconds: 10,
    });
  }
  return result;
}

/** The kubelet probes the pod directly, on the port that serves the probes (never through the Ingress). */
function probe(port: WorkloadPlan['metricsPort'], path: string, periodSeconds: number, failureThreshold: number) {
  return { httpGet: { path, port }, periodSeconds, failureThreshold, timeoutSeconds: 3 };
}

const containerPorts = (plan: WorkloadPlan) => [
  { name: 'http', containerPort: CONTAINER_PORT, protocol: 'TCP' },
  ...(plan.metricsPort === 'metrics' ? [{ name: 'metrics', containerPort: METRICS_PORT, protocol: 'TCP' }] : []),
];

function deployment(md: ResolvedMailDomain, plan: WorkloadPlan): Manifest {
  const { spec } = md;
  const name = names(md)[plan.component];
  const hash = configHash(plan.env.config, plan.env.secrets);
  // Two pods on one ReadWriteOnce volume, or on one SQLite file (whose locks network filesystems do not
  // always honour), must never overlap during a rollout.
  const exclusive =
    plan.storage !== undefined && (plan.storage.spec.accessMode === 'ReadWriteOnce' || spec.database.type === 'sqlite');
  const volumes: unknown[] = [{ name: 'tmp', emptyDir: { sizeLimit: '256Mi' } }];
  const mounts: unknown[] = [{ name: 'tmp', mountPath: '/tmp' }];
  if (plan.storage) {
    volumes.push({ name: 'data', persistentVolumeClaim: { claimName: plan.storage.claim } });
    mounts.push({ name: 'data', mountPath: DATA_DIR });
  }
  // Annotation-based scrapers find /metrics without a ServiceMonitor.
  const podAnnotations: Record<string, string> = {
    [CONFIG_HASH_ANNOTATION]: hash,
    'prometheus.io/scrape': 'true',
    'prometheus.io/port': String(plan.metricsPort === 'metrics' ? METRICS_PORT : CONTAINER_PORT),
    'prometheus.io/path': '/metrics',
  };
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: metadata(md, plan.component, name),
    spec: {
      replicas: plan.replicas,
      revisionHistoryLimit: 5,
      selector: { matchLabels: selectorLabels(md, plan.component) },
      strategy: exclusive
        ? { type: 'Recreate' }
        : { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
      template: {
        metadata: { labels: metadata(md, plan.component, name).labels, annotations: podAnnotations },
        spec: {
          // The services never talk to the Kubernetes API.
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          terminationGracePeriodSeconds: plan.terminationGracePeriodSeconds,
          ...(spec.image.pullSecrets.length > 0
            ? { imagePullSecrets: spec.image.pullSecrets.map((s) => ({ name: s })) }
            : {}),
          securityContext: {
            runAsNonRoot: true,
            runAsUser: RUN_AS,
            runAsGroup: RUN_AS,
            fsGroup: RUN_AS,
            // A mailbox volume holds many files: never chown them all at every start.
            fsGroupChangePolicy: 'OnRootMismatch',
            seccompProfile: { type: 'RuntimeDefault' },
          },
          containers: [
            {
              name: plan.component,
              image: `${spec.image.repository}:${spec.image.tag}`,
              imagePullPolicy: spec.image.pullPolicy,
              args: plan.args,
              ports: containerPorts(plan),
              envFrom: [{ configMapRef: { name } }],
              ...(plan.env.secrets.length > 0 ? { env: plan.env.secrets } : {}),
              // Up to two minutes before the liveness probe takes over: before it listens the AS migrates its
              // database, and the mailbox its database and a blob store of the earlier layout (migrateLayout).
              startupProbe: probe(plan.metricsPort, '/healthz', 2, 60),
              livenessProbe: probe(plan.metricsPort, '/healthz', 10, 3),
              readinessProbe: probe(plan.metricsPort, plan.readinessPath, 5, 3),
              resources: plan.resources,
              securityContext: {
                allowPrivilegeEscalation: false,
                readOnlyRootFilesystem: true,
                runAsNonRoot: true,
                capabilities: { drop: ['ALL'] },
                seccompProfile: { type: 'RuntimeDefault' },
              },
              volumeMounts: mounts,
            },
          ],
          volumes,
        },
      },
    },
  };
}

/**
 * `http` is what the Ingress sends to; `metrics` is what the ServiceMonitor scrapes, on every Service alike,
 * leading to whichever container port serves /metrics.
 */
function service(md: ResolvedMailDomain, plan: WorkloadPlan): Manifest {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: metadata(md, plan.component, names(md)[plan.component]),
    spec: {
      type: 'ClusterIP',
      selector: selectorLabels(md, plan.component),
      ports: [
        { name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' },
        { name: 'metrics', port: METRICS_PORT, targetPort: plan.metricsPort, protocol: 'TCP' },
      ],
    },
  };
}

function claim(md: ResolvedMailDomain, component: Component, plan: NonNullable<WorkloadPlan['storage']>): Manifest {
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    // Retained claims have no owner: deleting the MailDomain must not let the garbage collector take the mail.
    metadata: metadata(md, component, plan.claim, {
      owned: !plan.spec.retainOnDelete,
      ...(plan.spec.retainOnDelete ? { annotations: { 'federizer.io/retain-on-delete': 'true' } } : {}),
    }),
    spec: {
      accessModes: [plan.spec.accessMode],
      ...(plan.spec.storageClassName !== undefined ? { storageClassName: plan.spec.storageClassName } : {}),
      resources: { requests: { storage: plan.spec.size } },
    },
  };
}

function disruptionBudget(md: ResolvedMailDomain, component: Workload): Manifest {
  return {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: metadata(md, component, names(md)[component]),
    spec: { maxUnavailable: 1, selector: { matchLabels: selectorLabels(md, component) } },
  };
}

/** ConfigMaps, claims, Deployments, Services and (with more than one replica) PodDisruptionBudgets. */
export function buildWorkloads(md: ResolvedMailDomain): {
  configMaps: Manifest[];
  claims: Manifest[];
  deployments: Manifest[];
  services: Manifest[];
  disruptionBudgets: Manifest[];
} {
  const all = plans(md);
  return {
    configMaps: all.map((p) => configMap(md, p.component, p.env.config)),
    claims: all.flatMap((p) => (p.storage ? [claim(md, p.component, p.storage)] : [])),
    deployments: all.map((p) => deployment(md, p)),
    services: all.map((p) => service(md, p)),
    disruptionBudgets: all.filter((p) => p.replicas > 1).map((p) => disruptionBudget(md, p.component)),
  };
}

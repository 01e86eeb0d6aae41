/**
 * MailDomain in, manifests out: the desired state of a mail domain, without any Kubernetes. The runtime
 * applies `objects` (server-side apply, except CREATE_ONLY_ANNOTATION objects, created once) and publishes
 * `srvRecords` as dns.mode says (rfc2136 updates, or the status list with none; with externaldns they are
 * among the objects already).
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import { validateMailDomain, withDefaults, type DomainUrls, type MailDomain, type SrvRecord } from '../model.js';
import { buildDnsEndpoint, buildIngress, buildServiceMonitor, srvRecords } from './edge.js';
import { urls, type Manifest } from './meta.js';
import { buildSecrets, generateMaterial, type GeneratedMaterial } from './secrets.js';
import { buildWorkloads } from './workloads.js';

export interface BuildContext {
  /**
   * The Secrets already in the MailDomain's namespace, by name (a set, a list, or a record keyed by name):
   * generated Secrets are built only when absent.
   */
  readonly existingSecrets: ReadonlySet<string> | readonly string[] | Readonly<Record<string, unknown>>;
  /** Whether the cluster serves monitoring.coreos.com/v1 ServiceMonitor (the Prometheus Operator's CRD). */
  readonly hasServiceMonitorCrd: boolean;
  /** The operator's own image, run by MailDomains that name none. */
  readonly image?: string;
  /** The namespace of a MailDomain whose metadata has none (a file given to `render`). */
  readonly namespace?: string;
  /** Where the random material of new Secrets comes from (tests pin it). */
  readonly generate?: () => GeneratedMaterial;
}

export interface BuildResult {
  /** In apply order: Secrets and ConfigMaps before the pods that read them, claims before their pods. */
  readonly objects: Manifest[];
  readonly srvRecords: SrvRecord[];
  /** For status.urls. */
  readonly urls: DomainUrls;
}

/**
 * Takes the MailDomain as the cluster stores it (or as a file declares it) and checks it first, as the CRD
 * does: an invalid one throws an InvalidResourceError naming every problem, and nothing is built.
 */
export function buildMailDomain(
  input: MailDomain | (KubernetesObject & { spec?: unknown }),
  ctx: BuildContext,
): BuildResult {
  const md = validateMailDomain(input);
  const resolved = withDefaults(md, {
    ...(ctx.image !== undefined ? { image: ctx.image } : {}),
    ...(ctx.namespace !== undefined ? { namespace: ctx.namespace } : {}),
  });
  const given = ctx.existingSecrets;
  const existing = new Set(
    given instanceof Set || Array.isArray(given) ? (given as Iterable<string>) : Object.keys(given),
  );
  const workloads = buildWorkloads(resolved);
  const records = srvRecords(resolved);
  const ingress = buildIngress(resolved);
  const objects: Manifest[] = [
    ...buildSecrets(resolved, existing, ctx.generate ?? generateMaterial),
    ...workloads.configMaps,
    ...workloads.claims,
    ...workloads.services,
    ...workloads.deployments,
    ...workloads.disruptionBudgets,
    ...(ingress ? [ingress] : []),
    ...(ctx.hasServiceMonitorCrd ? [buildServiceMonitor(resolved)] : []),
    ...(resolved.spec.dns.mode === 'externaldns' ? [buildDnsEndpoint(resolved, records)] : []),
  ];
  const u = urls(resolved);
  return {
    objects,
    srvRecords: records,
    urls: {
      issuer: u.issuer,
      mailbox: u.mailbox,
      ...(resolved.spec.webmail.enabled ? { webmail: u.webmail } : {}),
    },
  };
}

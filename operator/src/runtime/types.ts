/**
 * What the runtime needs to know of the custom resources and of the desired-state builder: structural types,
 * so that the builders and the model can evolve apart from the runtime.
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import type { Condition, DnsRecordStatus, SrvRecord } from '../model.js';

export { API_VERSION, GROUP } from '../model.js';
export type { DnsRecordStatus, SrvRecord } from '../model.js';

export const DNS_FINALIZER = 'federizer.io/dns-records';
/** On a MailUser whose user exists in its AS: the user is deleted there before the MailUser goes. */
export const USER_FINALIZER = 'federizer.io/user';
// The builders set it and the reconciler honours it: one constant, so that the two cannot drift.
export { CREATE_ONLY_ANNOTATION } from '../builders/meta.js';

export interface MailDomainStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  /** The SRV records the domain needs; with DNS mode `none`, for an administrator to create. */
  dnsRecords?: DnsRecordStatus[];
  urls?: Record<string, string>;
  [key: string]: unknown;
}

export interface MailDomainObject extends KubernetesObject {
  spec?: Record<string, unknown>;
  status?: MailDomainStatus;
}

export interface MailUserObject extends KubernetesObject {
  spec?: Record<string, unknown>;
  status?: { observedGeneration?: number; conditions?: Condition[]; [key: string]: unknown };
}

export interface SecretObject extends KubernetesObject {
  data?: Record<string, string>;
  stringData?: Record<string, string>;
  type?: string;
}

export interface BuildContext {
  /** Names of the Secrets in the MailDomain's namespace: those are never generated (nor written) again. */
  existingSecrets: ReadonlySet<string>;
  /** Whether the cluster serves `monitoring.coreos.com/v1` ServiceMonitor. */
  hasServiceMonitorCrd: boolean;
}

export interface BuildResult {
  objects: KubernetesObject[];
  srvRecords: SrvRecord[];
  /** Where the domain is served, for status.urls (issuer, mailbox, webmail). */
  urls?: Readonly<Record<string, string>>;
}

/** The pure desired-state builder (operator/src/builders), injected. May throw on an invalid spec. */
export type MailDomainBuilder = (md: MailDomainObject, ctx: BuildContext) => BuildResult;

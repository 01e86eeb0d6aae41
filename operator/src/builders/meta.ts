/**
 * Names, labels and owner references shared by every object a MailDomain becomes. Object names are derived
 * from the MailDomain's name (the CRD keeps it short enough for every suffix below).
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import { API_VERSION, type ResolvedMailDomain } from '../model.js';

/** A manifest as the builders make it: kind, apiVersion and a name always set. */
export type Manifest = KubernetesObject & {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: OwnerReference[];
  };
  [field: string]: unknown;
};

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller: boolean;
  blockOwnerDeletion: boolean;
}

export type Component = 'auth' | 'mailbox' | 'webmail' | 'dns' | 'ingress' | 'monitoring';

/**
 * Objects carrying this annotation are created when absent and never patched, applied or deleted by the
 * runtime afterwards: generated secrets (keys, tokens) must survive every reconcile. An administrator rotates
 * one by editing it, or by deleting it so that a new one is generated (then restarting the pods using it).
 */
export const CREATE_ONLY_ANNOTATION = 'federizer.io/create-only';

/** The SHA-256 of the pods' configuration: a changed ConfigMap rolls the Deployment. */
export const CONFIG_HASH_ANNOTATION = 'federizer.io/config-hash';

export const names = (md: ResolvedMailDomain) => {
  const n = md.metadata.name;
  return {
    auth: `${n}-auth`,
    mailbox: `${n}-mailbox`,
    webmail: `${n}-webmail`,
    authData: `${n}-auth-data`,
    mailboxData: `${n}-mailbox-data`,
    adminToken: `${n}-admin-token`,
    cookieKeys: `${n}-auth-cookie-keys`,
    mtaKey: `${n}-mta-key`,
    ingress: n,
    /** The certificate cert-manager obtains for the Ingress, when spec.ingress.tls names an issuer. */
    certificate: `${n}-tls`,
    serviceMonitor: n,
    dnsEndpoint: `${n}-srv`,
  };
};

/** Labels that select a component's pods; never change them (a Deployment's selector is immutable). */
export function selectorLabels(md: ResolvedMailDomain, component: Component): Record<string, string> {
  return {
    'app.kubernetes.io/name': 'federizer',
    'app.kubernetes.io/instance': md.metadata.name,
    'app.kubernetes.io/component': component,
  };
}

export function labels(md: ResolvedMailDomain, component: Component): Record<string, string> {
  return {
    ...selectorLabels(md, component),
    'app.kubernetes.io/part-of': 'federizer',
    'app.kubernetes.io/managed-by': 'federizer-operator',
    'app.kubernetes.io/version': md.spec.image.tag.slice(0, 63),
  };
}

/** The MailDomain as owner, when it has a uid (a rendered MailDomain that never met a cluster has none). */
export function ownerReferences(md: ResolvedMailDomain): OwnerReference[] | undefined {
  if (md.metadata.uid === undefined) return undefined;
  return [
    {
      apiVersion: API_VERSION,
      kind: 'MailDomain',
      name: md.metadata.name,
      uid: md.metadata.uid,
      controller: true,
      blockOwnerDeletion: true,
    },
  ];
}

export function metadata(
  md: ResolvedMailDomain,
  component: Component,
  name: string,
  options: { annotations?: Record<string, string>; owned?: boolean } = {},
): Manifest['metadata'] {
  const owners = options.owned === false ? undefined : ownerReferences(md);
  return {
    name,
    namespace: md.metadata.namespace,
    labels: labels(md, component),
    ...(options.annotations && Object.keys(options.annotations).length > 0 ? { annotations: options.annotations } : {}),
    ...(owners ? { ownerReferences: owners } : {}),
  };
}

/** Public URLs of the domain's three services. */
export function urls(md: ResolvedMailDomain) {
  const { hostnames } = md.spec;
  return {
    issuer: `https://${hostnames.authServer}`,
    mailbox: `https://${hostnames.mailbox}`,
    /** The mailbox client API's resource indicator (RFC 8707): the audience of user tokens. */
    mailboxResource: `https://${hostnames.mailbox}/api/v1`,
    webmail: `https://${hostnames.webmail}`,
  };
}

/** Where the operator (and the mailbox) reach the AS admin API inside the cluster. */
export function authServiceUrl(md: ResolvedMailDomain): string {
  return `http://${names(md).auth}.${md.metadata.namespace}.svc`;
}

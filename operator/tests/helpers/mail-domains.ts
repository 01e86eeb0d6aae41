/**
 * MailDomains as the builder and CRD tests write them: `example.com` in namespace `mail`, and the objects the
 * builder makes for one that names only its domain (a single-replica SQLite domain behind an Ingress).
 */
import type { MailDomain, MailDomainSpec, ObjectMeta } from '../../src/model.js';

export function exampleDomain(
  spec: Partial<MailDomainSpec> = {},
  name = 'example-com',
  metadata: Omit<ObjectMeta, 'name' | 'namespace'> = {},
): MailDomain {
  return {
    apiVersion: 'federizer.io/v1alpha1',
    kind: 'MailDomain',
    metadata: { name, namespace: 'mail', ...metadata },
    spec: { domain: 'example.com', ...spec },
  };
}

/** `Kind/name` of each object built for `exampleDomain()`, in the builder's order. */
export const DEFAULT_DOMAIN_OBJECTS: readonly string[] = [
  'Secret/example-com-admin-token',
  'Secret/example-com-auth-cookie-keys',
  'Secret/example-com-mta-key',
  'ConfigMap/example-com-auth',
  'ConfigMap/example-com-mailbox',
  'ConfigMap/example-com-webmail',
  'PersistentVolumeClaim/example-com-auth-data',
  'PersistentVolumeClaim/example-com-mailbox-data',
  'Service/example-com-auth',
  'Service/example-com-mailbox',
  'Service/example-com-webmail',
  'Deployment/example-com-auth',
  'Deployment/example-com-mailbox',
  'Deployment/example-com-webmail',
  'Ingress/example-com',
];

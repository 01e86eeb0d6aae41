/**
 * The pure desired-state builders: MailDomain in, manifests and SRV records out; MailUser in, AS admin API
 * calls out. Nothing here talks to a cluster.
 */
export { buildMailDomain, type BuildContext, type BuildResult } from './mail-domain.js';
export { buildMailUser, belongsTo, type AdminCall, type MailUserPlan } from './mail-user.js';
export { CONFIG_HASH_ANNOTATION, CREATE_ONLY_ANNOTATION, type Manifest, type OwnerReference } from './meta.js';
export { SECRET_KEYS, type GeneratedMaterial } from './secrets.js';
export { manifestYaml, parseDocuments, type ParsedDocument } from './yaml.js';
export type { SrvRecord } from '../model.js';

/**
 * The MailDomain and MailUser custom resources (crds/*.yaml) in TypeScript: their spec and status types, the
 * defaults (`withDefaults`, the one place that knows them: the CRDs carry none, so an object keeps only what
 * its author chose and the defaults can improve with the operator), and a validation that mirrors the CRDs'
 * schemas and CEL rules, so that `federizer operator render` rejects what an API server would, with no cluster.
 * Tests compare the rules here with the CRD files, rule by rule.
 */

export const GROUP = 'federizer.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;

/** The image a MailDomain runs when it names none: the operator passes its own (see `withDefaults`). */
export const DEFAULT_IMAGE = 'ghcr.io/federizer/federizer:0.1.0';

export type SigningAlgorithm = 'ES256' | 'EdDSA' | 'RS256';
export type ForwardingPolicy = 'any' | 'manual' | 'none';
export type DnsMode = 'none' | 'externaldns' | 'rfc2136';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
export type AccessMode = 'ReadWriteOnce' | 'ReadWriteMany';

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

export interface SecretKeyRef {
  name: string;
  key?: string;
}

export interface StorageSpec {
  /** A Kubernetes quantity, e.g. 10Gi. */
  size?: string;
  storageClassName?: string;
  accessMode?: AccessMode;
  /** Keep the PersistentVolumeClaim when the MailDomain is deleted (no owner reference). */
  retainOnDelete?: boolean;
}

export interface ResourceRequirements {
  requests?: Record<string, string | number>;
  limits?: Record<string, string | number>;
}

export interface MailDomainSpec {
  domain: string;
  hostnames?: { authServer?: string; mailbox?: string; webmail?: string };
  image?: {
    repository?: string;
    tag?: string;
    pullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
    pullSecrets?: string[];
  };
  logLevel?: LogLevel;
  authServer?: {
    replicas?: number;
    signingAlgorithm?: SigningAlgorithm;
    /** A duration as `federizer auth` reads it: 3600, 90m, 12h, 30d. */
    keyRotation?: string;
    storage?: StorageSpec;
    resources?: ResourceRequirements;
  };
  mailbox?: {
    replicas?: number;
    storage?: StorageSpec;
    /** Bytes one account may hold, as `federizer mailbox` reads sizes: 50GiB. */
    quota?: string;
    resources?: ResourceRequirements;
  };
  database?: { type: 'sqlite' | 'postgres'; postgres?: { secretRef: SecretKeyRef } };
  shareWindow?: string;
  maxResourceSize?: string;
  webmail?: { enabled?: boolean; replicas?: number; resources?: ResourceRequirements };
  ingress?: {
    enabled?: boolean;
    className?: string;
    annotations?: Record<string, string>;
    tls?: { secretName?: string; certManager?: { issuer: string; kind?: 'Issuer' | 'ClusterIssuer' } };
  };
  dns?: {
    mode?: DnsMode;
    ttl?: number;
    rfc2136?: {
      server: string;
      /** Default: the domain. */
      zone?: string;
      /** Default: `keyName` in the TSIG Secret. */
      tsigKeyName?: string;
      /** Default: `algorithm` in the TSIG Secret, else hmac-sha256. */
      tsigAlgorithm?: TsigAlgorithm;
      tsigSecretRef: SecretKeyRef;
    };
  };
  forwarding?: { defaultPolicy?: ForwardingPolicy };
}

export type TsigAlgorithm = 'hmac-sha256' | 'hmac-sha384' | 'hmac-sha512';

export type ConditionStatus = 'True' | 'False' | 'Unknown';

/** metav1.Condition. */
export interface Condition {
  type: string;
  status: ConditionStatus;
  observedGeneration?: number;
  lastTransitionTime: string;
  reason: string;
  message: string;
}

export interface SrvRecord {
  /** Owner name without the final dot, e.g. `_federizer._as._tcp.example.com`. */
  name: string;
  /** Target host without the final dot. */
  target: string;
  port: number;
  priority: number;
  weight: number;
  ttl: number;
}

/** An SRV record as status.dnsRecords lists it (crds/maildomain.yaml). */
export type DnsRecordStatus = SrvRecord & { type: 'SRV' };

export interface MailDomainStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  /** The SRV records the domain needs; with dns.mode none an administrator creates them. */
  dnsRecords?: DnsRecordStatus[];
  urls?: DomainUrls;
}

/** Where a domain is served (status.urls): the AS's issuer, the mailbox and, when enabled, the webmail. */
export type DomainUrls = {
  issuer: string;
  mailbox: string;
  webmail?: string;
};

export interface MailDomain {
  apiVersion: typeof API_VERSION;
  kind: 'MailDomain';
  metadata: ObjectMeta;
  spec: MailDomainSpec;
  status?: MailDomainStatus;
}

export interface MailUserSpec {
  address: string;
  displayName?: string;
  passwordSecretRef: SecretKeyRef;
  forwardingPolicy?: ForwardingPolicy;
  sendQuotaPerDay?: number;
  disabled?: boolean;
}

export interface MailUserStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  address?: string;
  /** The resourceVersion of the password Secret last sent to the AS, so a changed Secret is sent again. */
  passwordSecretVersion?: string;
}

export interface MailUser {
  apiVersion: typeof API_VERSION;
  kind: 'MailUser';
  metadata: ObjectMeta;
  spec: MailUserSpec;
  status?: MailUserStatus;
}

/** Every field present (the resolved spec has no holes where a default exists). */
type Filled<T> = { [K in keyof T]-?: Exclude<T[K], undefined> };

/** A spec with every default filled in; what the builders read. Optional fields stay optional only where absence means something. */
export interface ResolvedSpec {
  domain: string;
  hostnames: Filled<NonNullable<MailDomainSpec['hostnames']>>;
  image: { repository: string; tag: string; pullPolicy: 'Always' | 'IfNotPresent' | 'Never'; pullSecrets: string[] };
  logLevel: LogLevel;
  authServer: {
    replicas: number;
    signingAlgorithm: SigningAlgorithm;
    keyRotation: string;
    storage: Filled<Omit<StorageSpec, 'storageClassName'>> & { storageClassName?: string };
    resources: Filled<ResourceRequirements>;
  };
  mailbox: {
    replicas: number;
    storage: Filled<Omit<StorageSpec, 'storageClassName'>> & { storageClassName?: string };
    quota: string;
    resources: Filled<ResourceRequirements>;
  };
  database: { type: 'sqlite' } | { type: 'postgres'; postgres: { secretRef: Required<SecretKeyRef> } };
  shareWindow: string;
  maxResourceSize: string;
  webmail: { enabled: boolean; replicas: number; resources: Filled<ResourceRequirements> };
  ingress: {
    enabled: boolean;
    className?: string;
    annotations: Record<string, string>;
    /** As given (one of the two): the builders name the Secret cert-manager fills. */
    tls?: { secretName: string } | { certManager: { issuer: string; kind: 'Issuer' | 'ClusterIssuer' } };
  };
  dns: {
    mode: DnsMode;
    ttl: number;
    /** The key name and algorithm may be left to the TSIG Secret, which the runtime reads. */
    rfc2136?: {
      server: string;
      zone: string;
      tsigKeyName?: string;
      tsigAlgorithm?: TsigAlgorithm;
      tsigSecretRef: Required<SecretKeyRef>;
    };
  };
  forwarding: { defaultPolicy: ForwardingPolicy };
}

export interface ResolvedMailDomain {
  metadata: { name: string; namespace: string; uid?: string; generation?: number };
  spec: ResolvedSpec;
}

function imageParts(image: string): { repository: string; tag: string } {
  const colon = image.lastIndexOf(':');
  // A colon before the last slash belongs to a registry's port, not to a tag.
  if (colon > image.lastIndexOf('/')) return { repository: image.slice(0, colon), tag: image.slice(colon + 1) };
  return { repository: image, tag: 'latest' };
}

/**
 * The MailDomain with every default filled in. Every default of the operator is here and nowhere else.
 * `options.image` is the operator's own image (the chart sets it): a domain runs the version that manages it
 * unless it pins another.
 */
export function withDefaults(md: MailDomain, options: { image?: string; namespace?: string } = {}): ResolvedMailDomain {
  const s = md.spec;
  const domain = s.domain;
  const fallbackImage = imageParts(options.image ?? DEFAULT_IMAGE);
  const storage = (given: StorageSpec | undefined, size: string) => ({
    size: given?.size ?? size,
    ...(given?.storageClassName !== undefined ? { storageClassName: given.storageClassName } : {}),
    accessMode: given?.accessMode ?? 'ReadWriteOnce',
    // The mail outlives the MailDomain unless its owner says otherwise: deleting a resource by mistake must
    // not delete everyone's mailboxes.
    retainOnDelete: given?.retainOnDelete ?? true,
  });
  const resources = (given: ResourceRequirements | undefined, fallback: Filled<ResourceRequirements>) => ({
    requests: given?.requests ?? fallback.requests,
    limits: given?.limits ?? fallback.limits,
  });
  const tls = s.ingress?.tls;
  const rfc = s.dns?.rfc2136;
  return {
    metadata: {
      name: md.metadata.name ?? '',
      namespace: md.metadata.namespace ?? options.namespace ?? 'default',
      ...(md.metadata.uid !== undefined ? { uid: md.metadata.uid } : {}),
      ...(md.metadata.generation !== undefined ? { generation: md.metadata.generation } : {}),
    },
    spec: {
      domain,
      // Three hosts, three origins: cookies, CORS and the webmail's service worker stay apart.
      hostnames: {
        authServer: s.hostnames?.authServer ?? `as.${domain}`,
        mailbox: s.hostnames?.mailbox ?? `mail.${domain}`,
        webmail: s.hostnames?.webmail ?? `webmail.${domain}`,
      },
      image: {
        repository: s.image?.repository ?? fallbackImage.repository,
        tag: s.image?.tag ?? fallbackImage.tag,
        pullPolicy: s.image?.pullPolicy ?? 'IfNotPresent',
        pullSecrets: s.image?.pullSecrets ?? [],
      },
      logLevel: s.logLevel ?? 'info',
      authServer: {
        replicas: s.authServer?.replicas ?? 1,
        signingAlgorithm: s.authServer?.signingAlgorithm ?? 'ES256',
        keyRotation: s.authServer?.keyRotation ?? '30d',
        // Users, sessions and signing keys: small.
        storage: storage(s.authServer?.storage, '1Gi'),
        // scrypt password hashing and token signing are CPU bursts; the heap holds oidc-provider's caches.
        resources: resources(s.authServer?.resources, {
          requests: { cpu: '100m', memory: '192Mi' },
          limits: { cpu: '1', memory: '512Mi' },
        }),
      },
      mailbox: {
        replicas: s.mailbox?.replicas ?? 1,
        // The External Resources themselves live here: size it for the mail, not for the database.
        storage: storage(s.mailbox?.storage, '10Gi'),
        quota: s.mailbox?.quota ?? '50GiB',
        // Resources stream to and from disk, so memory does not grow with their size.
        resources: resources(s.mailbox?.resources, {
          requests: { cpu: '100m', memory: '256Mi' },
          limits: { cpu: '1', memory: '1Gi' },
        }),
      },
      database:
        s.database?.type === 'postgres' && s.database.postgres
          ? {
              type: 'postgres',
              postgres: {
                secretRef: {
                  name: s.database.postgres.secretRef.name,
                  key: s.database.postgres.secretRef.key ?? 'url',
                },
              },
            }
          : { type: 'sqlite' },
      // PROTOCOL.md §4.6: the assertion lifetime and the share window, 7 days.
      shareWindow: s.shareWindow ?? '7d',
      maxResourceSize: s.maxResourceSize ?? '5GiB',
      webmail: {
        enabled: s.webmail?.enabled ?? true,
        replicas: s.webmail?.replicas ?? 1,
        // Static files only.
        resources: resources(s.webmail?.resources, {
          requests: { cpu: '25m', memory: '64Mi' },
          limits: { cpu: '250m', memory: '128Mi' },
        }),
      },
      ingress: {
        enabled: s.ingress?.enabled ?? true,
        ...(s.ingress?.className !== undefined ? { className: s.ingress.className } : {}),
        annotations: s.ingress?.annotations ?? {},
        ...(tls?.certManager
          ? { tls: { certManager: { issuer: tls.certManager.issuer, kind: tls.certManager.kind ?? 'ClusterIssuer' } } }
          : tls?.secretName !== undefined
            ? { tls: { secretName: tls.secretName } }
            : {}),
      },
      dns: {
        mode: s.dns?.mode ?? 'none',
        ttl: s.dns?.ttl ?? 3600,
        ...(rfc
          ? {
              rfc2136: {
                server: rfc.server,
                zone: rfc.zone ?? domain,
                ...(rfc.tsigKeyName !== undefined ? { tsigKeyName: rfc.tsigKeyName } : {}),
                ...(rfc.tsigAlgorithm !== undefined ? { tsigAlgorithm: rfc.tsigAlgorithm } : {}),
                tsigSecretRef: { name: rfc.tsigSecretRef.name, key: rfc.tsigSecretRef.key ?? 'secret' },
              },
            }
          : {}),
      },
      // The AS's own default for new users (services/auth storage/users.ts).
      forwarding: { defaultPolicy: s.forwarding?.defaultPolicy ?? 'manual' },
    },
  };
}

/* ------------------------------------------------------------------------------------------------------------
 * Validation. The shape checks mirror the CRDs' openAPIV3Schema (with kubectl's strict field validation:
 * unknown fields are errors); CEL_RULES mirror their x-kubernetes-validations, with the same messages.
 * ---------------------------------------------------------------------------------------------------------- */

export interface ValidationIssue {
  /** Where, e.g. `spec.mailbox.replicas`. */
  readonly path: string;
  readonly message: string;
}

export class InvalidResourceError extends TypeError {
  override readonly name = 'InvalidResourceError';
  constructor(
    readonly kind: string,
    readonly issues: readonly ValidationIssue[],
  ) {
    super(`invalid ${kind}:\n${issues.map((i) => `  ${i.path || '(root)'}: ${i.message}`).join('\n')}`);
  }
}

/** The patterns of the CRDs, character for character (a test reads them from the files). */
export const PATTERNS = {
  domain: /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9][-a-z0-9]{0,61}[a-z0-9]$/,
  zone: /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9][-a-z0-9]{0,61}[a-z0-9]$/,
  objectName: /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/,
  secretKey: /^[-._a-zA-Z0-9]+$/,
  imageRepository: /^[a-z0-9]([-a-z0-9._/:]*[a-z0-9])?$/,
  imageTag: /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/,
  duration: /^[0-9]+[smhd]?$/,
  bytes: /^[0-9]+([KkMmGgTt]i?B?)?$/,
  storageSize: /^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$/,
  resourceQuantity: /^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$/,
  dnsServer: /^(\[[0-9a-fA-F:.]+\]|[-a-zA-Z0-9.]+)(:[0-9]{1,5})?$/,
  tsigKeyName: /^[-a-zA-Z0-9._]+$/,
  address:
    /^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9][-a-z0-9]{0,61}[a-z0-9]$/,
  metadataName: /^[a-z]([-a-z0-9]*[a-z0-9])?$/,
  // eslint-disable-next-line no-control-regex
  displayName: /^[^\x00-\x1F\x7F]*$/,
} as const;

type Check = (value: unknown, path: string, out: ValidationIssue[]) => void;

const describe = (v: unknown) => (typeof v === 'string' ? JSON.stringify(v) : Array.isArray(v) ? 'a list' : String(v));
const at = (path: string, key: string) => (path === '' ? key : `${path}.${key}`);

function str(o: { pattern?: RegExp; minLength?: number; maxLength?: number; enum?: readonly string[] } = {}): Check {
  return (v, path, out) => {
    if (typeof v !== 'string') return void out.push({ path, message: `must be a string, not ${describe(v)}` });
    if (o.enum && !o.enum.includes(v))
      return void out.push({ path, message: `must be one of ${o.enum.join(', ')}, not ${describe(v)}` });
    if (o.maxLength !== undefined && v.length > o.maxLength)
      out.push({ path, message: `must be at most ${o.maxLength} characters` });
    if (o.minLength !== undefined && v.length < o.minLength)
      out.push({ path, message: `must be at least ${o.minLength} characters` });
    if (o.pattern && !o.pattern.test(v)) out.push({ path, message: `${describe(v)} must match ${o.pattern.source}` });
  };
}

function int(minimum: number, maximum: number): Check {
  return (v, path, out) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < minimum || v > maximum)
      out.push({ path, message: `must be an integer from ${minimum} to ${maximum}, not ${describe(v)}` });
  };
}

const bool: Check = (v, path, out) => {
  if (typeof v !== 'boolean') out.push({ path, message: `must be true or false, not ${describe(v)}` });
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function obj(props: Record<string, Check>, required: readonly string[] = []): Check {
  return (v, path, out) => {
    if (!isObject(v)) return void out.push({ path, message: `must be an object, not ${describe(v)}` });
    for (const key of required) if (v[key] === undefined) out.push({ path: at(path, key), message: 'is required' });
    for (const [key, value] of Object.entries(v)) {
      const check = props[key];
      if (check === undefined) out.push({ path: at(path, key), message: 'is not a field of this object' });
      else if (value !== undefined) check(value, at(path, key), out);
    }
  };
}

function list(item: Check, maxItems: number): Check {
  return (v, path, out) => {
    if (!Array.isArray(v)) return void out.push({ path, message: `must be a list, not ${describe(v)}` });
    if (v.length > maxItems) out.push({ path, message: `must have at most ${maxItems} items` });
    v.forEach((x, i) => item(x, `${path}[${i}]`, out));
  };
}

function map(value: Check, maxProperties: number): Check {
  return (v, path, out) => {
    if (!isObject(v)) return void out.push({ path, message: `must be an object, not ${describe(v)}` });
    if (Object.keys(v).length > maxProperties)
      out.push({ path, message: `must have at most ${maxProperties} entries` });
    for (const [key, x] of Object.entries(v)) value(x, at(path, key), out);
  };
}

const quantity: Check = (v, path, out) => {
  if (typeof v === 'number' && Number.isInteger(v)) return;
  str({ pattern: PATTERNS.resourceQuantity })(v, path, out);
};

const name = str({ maxLength: 253, pattern: PATTERNS.objectName });
const secretKeyRef = obj({ name, key: str({ maxLength: 253, pattern: PATTERNS.secretKey }) }, ['name']);
const hostname = str({ maxLength: 253, pattern: PATTERNS.domain });
const storage = obj({
  size: str({ maxLength: 32, pattern: PATTERNS.storageSize }),
  storageClassName: name,
  accessMode: str({ enum: ['ReadWriteOnce', 'ReadWriteMany'] }),
  retainOnDelete: bool,
});
const resources = obj({ requests: map(quantity, 8), limits: map(quantity, 8) });
const replicas = int(1, 20);
const duration = str({ maxLength: 16, pattern: PATTERNS.duration });
const bytes = str({ maxLength: 24, pattern: PATTERNS.bytes });

const mailDomainSpec = obj(
  {
    domain: str({ minLength: 4, maxLength: 253, pattern: PATTERNS.domain }),
    hostnames: obj({ authServer: hostname, mailbox: hostname, webmail: hostname }),
    image: obj({
      repository: str({ maxLength: 255, pattern: PATTERNS.imageRepository }),
      tag: str({ maxLength: 128, pattern: PATTERNS.imageTag }),
      pullPolicy: str({ enum: ['Always', 'IfNotPresent', 'Never'] }),
      pullSecrets: list(name, 8),
    }),
    logLevel: str({ enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] }),
    authServer: obj({
      replicas,
      signingAlgorithm: str({ enum: ['ES256', 'EdDSA', 'RS256'] }),
      keyRotation: duration,
      storage,
      resources,
    }),
    mailbox: obj({ replicas, storage, quota: bytes, resources }),
    database: obj(
      { type: str({ enum: ['sqlite', 'postgres'] }), postgres: obj({ secretRef: secretKeyRef }, ['secretRef']) },
      ['type'],
    ),
    shareWindow: duration,
    maxResourceSize: bytes,
    webmail: obj({ enabled: bool, replicas, resources }),
    ingress: obj({
      enabled: bool,
      className: name,
      annotations: map(str({ maxLength: 4096 }), 64),
      tls: obj({
        secretName: name,
        certManager: obj({ issuer: name, kind: str({ enum: ['Issuer', 'ClusterIssuer'] }) }, ['issuer']),
      }),
    }),
    dns: obj({
      mode: str({ enum: ['none', 'externaldns', 'rfc2136'] }),
      ttl: int(60, 86400),
      rfc2136: obj(
        {
          server: str({ maxLength: 261, pattern: PATTERNS.dnsServer }),
          zone: str({ maxLength: 253, pattern: PATTERNS.zone }),
          tsigKeyName: str({ maxLength: 253, pattern: PATTERNS.tsigKeyName }),
          tsigAlgorithm: str({ enum: ['hmac-sha256', 'hmac-sha384', 'hmac-sha512'] }),
          tsigSecretRef: secretKeyRef,
        },
        ['server', 'tsigSecretRef'],
      ),
    }),
    forwarding: obj({ defaultPolicy: str({ enum: ['any', 'manual', 'none'] }) }),
  },
  ['domain'],
);

const mailUserSpec = obj(
  {
    address: str({ maxLength: 254, pattern: PATTERNS.address }),
    displayName: str({ maxLength: 200, pattern: PATTERNS.displayName }),
    passwordSecretRef: secretKeyRef,
    forwardingPolicy: str({ enum: ['any', 'manual', 'none'] }),
    sendQuotaPerDay: int(0, 1_000_000),
    disabled: bool,
  },
  ['address', 'passwordSecretRef'],
);

/**
 * A CEL rule of a CRD, in TypeScript. `path` is where the CRD attaches it (a `*` stands for the places a
 * shared schema is used); `check` answers the rule for `self` (and `oldSelf` for transition rules, which
 * run only on an update where both exist, as in Kubernetes).
 */
export interface CelRule {
  readonly kind: 'MailDomain' | 'MailUser';
  readonly path: string;
  readonly message: string;
  readonly transition: boolean;
  readonly check: (self: never, oldSelf: never) => boolean;
}

function rule<T>(
  kind: CelRule['kind'],
  path: string,
  message: string,
  check: (self: T, oldSelf: T) => boolean,
  transition = false,
): CelRule {
  return { kind, path, message, transition, check: check as CelRule['check'] };
}

const derivedHosts = (s: MailDomainSpec) => [
  s.hostnames?.authServer ?? `as.${s.domain}`,
  s.hostnames?.mailbox ?? `mail.${s.domain}`,
  s.hostnames?.webmail ?? `webmail.${s.domain}`,
];

export const CEL_RULES: readonly CelRule[] = [
  rule<MailDomain>(
    'MailDomain',
    '',
    'metadata.name starts with a letter and has at most 50 lowercase letters, digits and hyphens: Service names (DNS labels of at most 63) are derived from it',
    (self) => (self.metadata.name ?? '').length <= 50 && PATTERNS.metadataName.test(self.metadata.name ?? ''),
  ),
  rule<MailDomainSpec>(
    'MailDomain',
    'spec',
    'the hostnames of the Authorization Server, the mailbox and the webmail (as given, or derived: as., mail., webmail. + domain) are distinct: each is its own origin',
    (self) => new Set(derivedHosts(self)).size === 3,
  ),
  rule<MailDomainSpec>(
    'MailDomain',
    'spec',
    'a derived hostname (as., mail., webmail. + domain) would be longer than 253 characters: set spec.hostnames',
    (self) => derivedHosts(self).every((h) => h.length <= 253),
  ),
  rule<MailDomainSpec>(
    'MailDomain',
    'spec',
    'mailbox.replicas above 1 needs database.type postgres: an SQLite file is written by one process',
    (self) => (self.mailbox?.replicas ?? 1) <= 1 || self.database?.type === 'postgres',
  ),
  rule<MailDomainSpec>(
    'MailDomain',
    'spec',
    'authServer.replicas above 1 needs database.type postgres: an SQLite file is written by one process',
    (self) => (self.authServer?.replicas ?? 1) <= 1 || self.database?.type === 'postgres',
  ),
  rule<MailDomainSpec>(
    'MailDomain',
    'spec',
    'dns.rfc2136.zone is the domain or one of its parents: the SRV records are names under the domain',
    (self) => {
      const zone = self.dns?.rfc2136?.zone;
      return zone === undefined || self.domain === zone || self.domain.endsWith(`.${zone}`);
    },
  ),
  rule<string>(
    'MailDomain',
    'spec.domain',
    'domain is immutable: create another MailDomain for another domain',
    (self, oldSelf) => self === oldSelf,
    true,
  ),
  rule<StorageSpec>(
    'MailDomain',
    'spec.*.storage',
    "storageClassName cannot change once set (a PersistentVolumeClaim's class is immutable)",
    (self, oldSelf) => oldSelf.storageClassName === undefined || self.storageClassName === oldSelf.storageClassName,
    true,
  ),
  // Compared with their defaults filled in: a claim made ReadWriteOnce by default cannot become ReadWriteMany.
  rule<MailDomainSpec>(
    'MailDomain',
    'spec',
    "mailbox.storage.accessMode cannot change (default ReadWriteOnce): a PersistentVolumeClaim's access modes are immutable",
    (self, oldSelf) =>
      (self.mailbox?.storage?.accessMode ?? 'ReadWriteOnce') ===
      (oldSelf.mailbox?.storage?.accessMode ?? 'ReadWriteOnce'),
    true,
  ),
  rule<MailDomainSpec>(
    'MailDomain',
    'spec',
    "authServer.storage.accessMode cannot change (default ReadWriteOnce): a PersistentVolumeClaim's access modes are immutable",
    (self, oldSelf) =>
      (self.authServer?.storage?.accessMode ?? 'ReadWriteOnce') ===
      (oldSelf.authServer?.storage?.accessMode ?? 'ReadWriteOnce'),
    true,
  ),
  rule<NonNullable<MailDomainSpec['mailbox']>>(
    'MailDomain',
    'spec.mailbox',
    'mailbox.replicas above 1 needs mailbox.storage.accessMode ReadWriteMany: every replica reads and writes the same resources',
    (self) => (self.replicas ?? 1) <= 1 || self.storage?.accessMode === 'ReadWriteMany',
  ),
  rule<NonNullable<MailDomainSpec['database']>>(
    'MailDomain',
    'spec.database',
    'database.postgres is set exactly when database.type is postgres',
    (self) => (self.type === 'postgres') === (self.postgres !== undefined),
  ),
  rule<NonNullable<NonNullable<MailDomainSpec['ingress']>['tls']>>(
    'MailDomain',
    'spec.ingress.tls',
    'ingress.tls has either secretName or certManager, not both',
    (self) => (self.secretName !== undefined) !== (self.certManager !== undefined),
  ),
  rule<NonNullable<MailDomainSpec['dns']>>(
    'MailDomain',
    'spec.dns',
    'dns.rfc2136 is set exactly when dns.mode is rfc2136',
    (self) => (self.mode === 'rfc2136') === (self.rfc2136 !== undefined),
  ),
  rule<string>(
    'MailUser',
    'spec.address',
    'address is immutable: create another MailUser for another address',
    (self, oldSelf) => self === oldSelf,
    true,
  ),
  rule<string>(
    'MailUser',
    'spec.address',
    'the local part of an address has at most 64 characters (RFC 5321)',
    (self) => (self.split('@')[0] ?? '').length <= 64,
  ),
];

/** The values at a rule's path (several where the path has a `*`). */
function valuesAt(root: unknown, path: string): unknown[] {
  let current: unknown[] = [root];
  for (const part of path === '' ? [] : path.split('.')) {
    current = current.flatMap((v) => {
      if (!isObject(v)) return [];
      if (part === '*') return Object.values(v);
      return v[part] === undefined ? [] : [v[part]];
    });
  }
  return current;
}

/** The paths (with `*` expanded) a rule applies to in `root`, so old and new values pair up by place. */
function placesOf(root: unknown, path: string): string[] {
  let places: string[] = [''];
  for (const part of path === '' ? [] : path.split('.')) {
    places = places.flatMap((p) => {
      const [v] = valuesAt(root, p);
      if (!isObject(v)) return [];
      const keys = part === '*' ? Object.keys(v) : v[part] === undefined ? [] : [part];
      return keys.map((k) => at(p, k));
    });
  }
  return places;
}

function checkCel(kind: CelRule['kind'], object: unknown, old: unknown, out: ValidationIssue[]): void {
  for (const r of CEL_RULES.filter((x) => x.kind === kind)) {
    for (const place of placesOf(object, r.path)) {
      const [self] = valuesAt(object, place);
      if (r.transition) {
        const [oldSelf] = old === undefined ? [] : valuesAt(old, place);
        if (oldSelf === undefined) continue;
        if (!r.check(self as never, oldSelf as never)) out.push({ path: place, message: r.message });
      } else if (!r.check(self as never, undefined as never)) {
        out.push({ path: place, message: r.message });
      }
    }
  }
}

function checkObject(kind: 'MailDomain' | 'MailUser', input: unknown, old: unknown, spec: Check): ValidationIssue[] {
  const out: ValidationIssue[] = [];
  if (!isObject(input)) return [{ path: '', message: `a ${kind} is an object, not ${describe(input)}` }];
  if (input.apiVersion !== API_VERSION)
    out.push({ path: 'apiVersion', message: `must be ${API_VERSION}, not ${describe(input.apiVersion)}` });
  if (input.kind !== kind) out.push({ path: 'kind', message: `must be ${kind}, not ${describe(input.kind)}` });
  if (!isObject(input.metadata)) out.push({ path: 'metadata', message: 'is required' });
  else {
    const { name: n, namespace } = input.metadata;
    if (typeof n !== 'string' || n === '') out.push({ path: 'metadata.name', message: 'is required' });
    if (namespace !== undefined)
      str({ maxLength: 63, pattern: PATTERNS.objectName })(namespace, 'metadata.namespace', out);
  }
  for (const key of Object.keys(input))
    if (!['apiVersion', 'kind', 'metadata', 'spec', 'status'].includes(key))
      out.push({ path: key, message: 'is not a field of this object' });
  if (input.spec === undefined) out.push({ path: 'spec', message: 'is required' });
  else spec(input.spec, 'spec', out);
  // As in Kubernetes, CEL rules see only objects that passed the schema.
  if (out.length === 0) checkCel(kind, input, old, out);
  return out;
}

/** Issues that would make an API server reject this MailDomain (or this update of `old`); none when valid. */
export function mailDomainIssues(input: unknown, old?: MailDomain): ValidationIssue[] {
  return checkObject('MailDomain', input, old, mailDomainSpec);
}

export function mailUserIssues(input: unknown, old?: MailUser): ValidationIssue[] {
  return checkObject('MailUser', input, old, mailUserSpec);
}

/** The MailDomain, typed, or an InvalidResourceError listing every issue. */
export function validateMailDomain(input: unknown, old?: MailDomain): MailDomain {
  const issues = mailDomainIssues(input, old);
  if (issues.length > 0) throw new InvalidResourceError('MailDomain', issues);
  return input as MailDomain;
}

export function validateMailUser(input: unknown, old?: MailUser): MailUser {
  const issues = mailUserIssues(input, old);
  if (issues.length > 0) throw new InvalidResourceError('MailUser', issues);
  return input as MailUser;
}

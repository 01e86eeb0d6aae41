/**
 * Test support (not exported by the package): validates manifests the way an API server would, as far as
 * that is possible without one.
 *
 * - Built-in kinds go through kubernetes-models 4.5.1. It accepts unknown fields, so every key is also
 *   checked against the vocabulary of Kubernetes field names (read from kubernetes-models' type
 *   declarations): a typo like `replicass` is not a field of any Kubernetes type.
 * - MailDomain and MailUser go through their CRD's openAPIV3Schema with Ajv (unknown fields rejected, as
 *   kubectl's strict field validation does), then through the CEL rules' TypeScript mirror (model.ts).
 * - DNSEndpoint and ServiceMonitor, whose CRDs belong to ExternalDNS and the Prometheus Operator, go through
 *   the part of those CRDs' schemas that the builders use, written here.
 * - Label keys and values are checked with the API server's syntax.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type AnySchema, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import { parse } from 'yaml';
import { Secret, ConfigMap, Service, PersistentVolumeClaim, ServiceAccount } from 'kubernetes-models/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { Ingress } from 'kubernetes-models/networking.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { CustomResourceDefinition } from 'kubernetes-models/apiextensions.k8s.io/v1';
import { mailDomainIssues, mailUserIssues } from '../../model.js';

export const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));

interface Validatable {
  validate(): void;
}
type ModelClass = new (data: never) => Validatable;

const MODELS: Record<string, ModelClass> = {
  'v1/Secret': Secret,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim,
  'v1/ServiceAccount': ServiceAccount,
  'apps/v1/Deployment': Deployment,
  'networking.k8s.io/v1/Ingress': Ingress,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding,
  'rbac.authorization.k8s.io/v1/Role': Role,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding,
  'apiextensions.k8s.io/v1/CustomResourceDefinition': CustomResourceDefinition,
};

/** Every field name of every Kubernetes type kubernetes-models declares. */
function vocabulary(): Set<string> {
  const words = new Set<string>();
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir)) {
      const path = join(dir, entry);
      if (statSync(path).isDirectory()) walk(path);
      else if (entry.endsWith('.d.ts'))
        for (const m of readFileSync(path, 'utf8').matchAll(/"(\w+)"\??:/g)) words.add(m[1]!);
    }
  };
  walk(join(ROOT, 'node_modules/kubernetes-models'));
  walk(join(ROOT, 'node_modules/@kubernetes-models/apimachinery'));
  return words;
}

let words: Set<string> | undefined;

/** Fields whose keys are data, not field names (label keys, Secret keys, resource names). */
const MAPS = new Set([
  'labels',
  'annotations',
  'data',
  'stringData',
  'binaryData',
  'matchLabels',
  'requests',
  'limits',
  'nodeSelector',
]);

/** Paths of keys that are no Kubernetes field name. */
export function unknownFields(value: unknown, path = ''): string[] {
  words ??= vocabulary();
  if (Array.isArray(value)) return value.flatMap((v, i) => unknownFields(v, `${path}[${i}]`));
  if (typeof value !== 'object' || value === null) return [];
  const found: string[] = [];
  for (const [key, v] of Object.entries(value)) {
    const here = path === '' ? key : `${path}.${key}`;
    if (!words.has(key)) found.push(here);
    // A Service's selector is a map of labels; a workload's is a LabelSelector.
    const isMap =
      MAPS.has(key) ||
      (key === 'selector' &&
        path.endsWith('spec') &&
        !('matchLabels' in (v as object)) &&
        !('matchExpressions' in (v as object)));
    // A CRD's schema is JSON Schema, not Kubernetes fields.
    if (!isMap && !here.endsWith('openAPIV3Schema')) found.push(...unknownFields(v, here));
  }
  return found;
}

const LABEL_KEY =
  /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$/;

function labelIssues(labels: unknown, where: string): string[] {
  if (labels === undefined) return [];
  return Object.entries(labels as Record<string, unknown>).flatMap(([k, v]) =>
    LABEL_KEY.test(k) && typeof v === 'string' && LABEL_VALUE.test(v)
      ? []
      : [`${where}: invalid label ${k}=${String(v)}`],
  );
}

/** Kubernetes' structural-schema extensions become plain JSON Schema that Ajv understands. */
export function toAjvSchema(schema: unknown): AnySchema {
  if (Array.isArray(schema)) return schema.map(toAjvSchema) as unknown as AnySchema;
  if (typeof schema !== 'object' || schema === null) return schema as AnySchema;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema)) {
    if (k.startsWith('x-kubernetes-')) continue;
    // Conditions describe part of an object: closing them would make them never match.
    if (k === 'if' || k === 'then' || k === 'else') {
      out[k] = v;
      continue;
    }
    out[k] =
      k === 'properties'
        ? Object.fromEntries(Object.entries(v as object).map(([p, s]) => [p, toAjvSchema(s)]))
        : toAjvSchema(v);
  }
  const s = schema as Record<string, unknown>;
  // kubectl's strict field validation: an unknown field is an error, not silently pruned.
  if (s.properties && s.additionalProperties === undefined && !s['x-kubernetes-preserve-unknown-fields'])
    out.additionalProperties = false;
  return out as AnySchema;
}

export function newAjv(): Ajv {
  const ajv = new Ajv({ allErrors: true, strictTypes: false });
  (addFormatsModule as unknown as (a: Ajv) => Ajv)(ajv);
  ajv.addFormat('int32', { type: 'number', validate: (n: number) => Number.isInteger(n) && Math.abs(n) < 2 ** 31 });
  ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isSafeInteger(n) });
  return ajv;
}

export function readYamlFile(relative: string): unknown {
  return parse(readFileSync(join(ROOT, relative), 'utf8'));
}

interface Crd {
  spec: { versions: { name: string; schema: { openAPIV3Schema: unknown } }[] };
}

/** A validator of objects of a CRD's (only) version, with Ajv. */
export function crdValidator(relative: string): ValidateFunction {
  const crd = readYamlFile(relative) as Crd;
  return newAjv().compile(toAjvSchema(crd.spec.versions[0]!.schema.openAPIV3Schema));
}

const objectMeta = {
  type: 'object',
  required: ['name'],
  properties: {
    name: { type: 'string', maxLength: 253, pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$' },
    namespace: { type: 'string' },
    labels: { type: 'object', additionalProperties: { type: 'string' } },
    annotations: { type: 'object', additionalProperties: { type: 'string' } },
    ownerReferences: { type: 'array' },
  },
};

/** The part of ExternalDNS's DNSEndpoint CRD (externaldns.k8s.io/v1alpha1) the builders use. */
const DNS_ENDPOINT = {
  type: 'object',
  required: ['apiVersion', 'kind', 'metadata', 'spec'],
  properties: {
    apiVersion: { const: 'externaldns.k8s.io/v1alpha1' },
    kind: { const: 'DNSEndpoint' },
    metadata: objectMeta,
    spec: {
      type: 'object',
      properties: {
        endpoints: {
          type: 'array',
          maxItems: 1000,
          items: {
            type: 'object',
            required: ['dnsName', 'recordType'],
            properties: {
              dnsName: {
                type: 'string',
                maxLength: 254,
                pattern:
                  '^(\\*\\.)?([a-zA-Z0-9_]([-a-zA-Z0-9_]{0,61}[a-zA-Z0-9_])?\\.)*[a-zA-Z0-9_]([-a-zA-Z0-9_]{0,61}[a-zA-Z0-9_])?\\.?$',
              },
              recordType: { enum: ['A', 'AAAA', 'CNAME', 'DNAME', 'MX', 'NAPTR', 'NS', 'PTR', 'SRV', 'TLSA', 'TXT'] },
              recordTTL: { type: 'integer', minimum: 0, maximum: 2147483647 },
              targets: { type: 'array', maxItems: 1000, items: { type: 'string', minLength: 1, maxLength: 4096 } },
              labels: { type: 'object', additionalProperties: { type: 'string' } },
              setIdentifier: { type: 'string', maxLength: 255 },
            },
            // The CRD's CEL rule for SRV: absolute targets, `priority weight port host.`.
            if: { properties: { recordType: { const: 'SRV' } } },
            then: { properties: { targets: { items: { pattern: '^[0-9]{1,5} [0-9]{1,5} [0-9]{1,5} [^ ]+\\.$' } } } },
          },
        },
      },
    },
  },
};

const duration = {
  type: 'string',
  pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$',
};
const labelSelector = {
  type: 'object',
  properties: {
    matchLabels: { type: 'object', additionalProperties: { type: 'string' } },
    matchExpressions: {
      type: 'array',
      items: {
        type: 'object',
        required: ['key', 'operator'],
        properties: {
          key: { type: 'string' },
          operator: { enum: ['In', 'NotIn', 'Exists', 'DoesNotExist'] },
          values: { type: 'array', items: { type: 'string' } },
        },
      },
    },
  },
};

/** The part of the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1) the builders and the chart use. */
const SERVICE_MONITOR = {
  type: 'object',
  required: ['apiVersion', 'kind', 'metadata', 'spec'],
  properties: {
    apiVersion: { const: 'monitoring.coreos.com/v1' },
    kind: { const: 'ServiceMonitor' },
    metadata: objectMeta,
    spec: {
      type: 'object',
      required: ['selector'],
      properties: {
        selector: labelSelector,
        namespaceSelector: {
          type: 'object',
          properties: { any: { type: 'boolean' }, matchNames: { type: 'array', items: { type: 'string' } } },
        },
        jobLabel: { type: 'string' },
        endpoints: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              port: { type: 'string' },
              path: { type: 'string' },
              scheme: { enum: ['http', 'https'] },
              interval: duration,
              scrapeTimeout: duration,
              honorLabels: { type: 'boolean' },
            },
          },
        },
      },
    },
  },
};

let ajvValidators: Record<string, ValidateFunction> | undefined;

function validators(): Record<string, ValidateFunction> {
  if (ajvValidators) return ajvValidators;
  const ajv = newAjv();
  ajvValidators = {
    'externaldns.k8s.io/v1alpha1/DNSEndpoint': ajv.compile(toAjvSchema(DNS_ENDPOINT)),
    'monitoring.coreos.com/v1/ServiceMonitor': ajv.compile(toAjvSchema(SERVICE_MONITOR)),
    'federizer.io/v1alpha1/MailDomain': crdValidator('crds/maildomain.yaml'),
    'federizer.io/v1alpha1/MailUser': crdValidator('crds/mailuser.yaml'),
  };
  return ajvValidators;
}

/** Every reason an API server would refuse this manifest, as far as these schemas tell; empty when valid. */
export function manifestIssues(manifest: unknown): string[] {
  const m = manifest as { apiVersion?: string; kind?: string; metadata?: { name?: string; labels?: unknown } };
  const id = `${m.apiVersion}/${m.kind}`;
  const where = `${m.kind} ${m.metadata?.name}`;
  const issues = labelIssues(m.metadata?.labels, `${where} metadata.labels`);
  const spec = (manifest as { spec?: { template?: { metadata?: { labels?: unknown } } } }).spec;
  issues.push(...labelIssues(spec?.template?.metadata?.labels, `${where} spec.template.metadata.labels`));
  const Model = MODELS[id];
  if (Model) {
    try {
      new Model(manifest as never).validate();
    } catch (e) {
      const errors = (e as { errors?: { instancePath: string; message: string }[] }).errors;
      issues.push(
        ...(errors ?? [{ instancePath: '', message: (e as Error).message }]).map(
          (x) => `${where} ${x.instancePath}: ${x.message}`,
        ),
      );
    }
    issues.push(...unknownFields(manifest).map((path) => `${where}: ${path} is not a Kubernetes field`));
    return issues;
  }
  const validate = validators()[id];
  if (!validate) return [...issues, `${where}: no schema for ${id}`];
  if (!validate(manifest))
    issues.push(
      ...(validate.errors ?? []).map((x) => `${where} ${x.instancePath}: ${x.message} ${JSON.stringify(x.params)}`),
    );
  else if (m.kind === 'MailDomain')
    issues.push(...mailDomainIssues(manifest).map((i) => `${where} ${i.path}: ${i.message}`));
  else if (m.kind === 'MailUser')
    issues.push(...mailUserIssues(manifest).map((i) => `${where} ${i.path}: ${i.message}`));
  return issues;
}

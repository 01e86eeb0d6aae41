/**
 * The MailDomain builder without any Kubernetes: which objects, their key fields, every manifest valid for
 * an API server (kubernetes-models and the CRD schemas, see testing/validate.ts), and the environment it
 * gives each component accepted by that component's own configuration reader.
 */
import { calculateJwkThumbprint, importJWK, jwtVerify, SignJWT, type JWK } from 'jose';
import { describe, expect, it } from 'vitest';
import { readAuthEnv } from '@federizer/auth';
import { readMailboxEnv } from '@federizer/mailbox';
import { readWebmailEnv } from '../../../services/cli/src/federation/webmail-server.js';
import { InvalidResourceError, type MailDomain, type MailDomainSpec } from '../model.js';
import { buildMailDomain, type BuildContext } from './mail-domain.js';
import { CREATE_ONLY_ANNOTATION, type Manifest } from './meta.js';
import { containerEnv, find } from './testing/manifests.js';
import { manifestIssues, unknownFields } from './testing/validate.js';
import { DEFAULT_DOMAIN_OBJECTS, exampleDomain } from '../../tests/helpers/mail-domains.js';

const UID = '2f0c8a9e-55a4-4d38-9d0b-1a7f4d0c9f11';

const domain = (spec: Partial<MailDomainSpec> = {}, name = 'example-com'): MailDomain =>
  exampleDomain(spec, name, { uid: UID, generation: 1 });

const ctx: BuildContext = { existingSecrets: [], hasServiceMonitorCrd: false };

const FULL: Partial<MailDomainSpec> = {
  hostnames: { authServer: 'login.example.com', mailbox: 'mx.example.com', webmail: 'mail.example.com' },
  image: {
    repository: 'registry.example.net:5000/federizer',
    tag: '1.2.3',
    pullPolicy: 'Always',
    pullSecrets: ['regcred'],
  },
  logLevel: 'debug',
  authServer: { replicas: 2, signingAlgorithm: 'EdDSA', keyRotation: '14d' },
  mailbox: {
    replicas: 3,
    storage: { size: '500Gi', storageClassName: 'cephfs', accessMode: 'ReadWriteMany', retainOnDelete: false },
    quota: '20GiB',
    resources: { requests: { cpu: '500m', memory: '1Gi' }, limits: { memory: '4Gi' } },
  },
  database: { type: 'postgres', postgres: { secretRef: { name: 'mail-db', key: 'dsn' } } },
  shareWindow: '14d',
  maxResourceSize: '2GiB',
  webmail: { enabled: true, replicas: 2 },
  ingress: {
    className: 'nginx',
    annotations: { 'nginx.ingress.kubernetes.io/proxy-body-size': '2g' },
    tls: { certManager: { issuer: 'letsencrypt', kind: 'Issuer' } },
  },
  dns: { mode: 'externaldns', ttl: 300 },
  forwarding: { defaultPolicy: 'any' },
};

/** The variables a reader asked for, by running it on a recording environment. */
function namesRead(reader: (env: Record<string, string | undefined>) => unknown, env: Record<string, string>) {
  const read = new Set<string>();
  reader(new Proxy(env, { get: (target, key: string) => (read.add(key), target[key]) }));
  return read;
}

describe('buildMailDomain', () => {
  it('makes, for a MailDomain that names only its domain, the objects of a single-replica SQLite domain', () => {
    const { objects, srvRecords } = buildMailDomain(domain(), ctx);
    expect(objects.map((o) => `${o.kind}/${o.metadata.name}`)).toEqual(DEFAULT_DOMAIN_OBJECTS);
    expect(srvRecords).toEqual([
      {
        name: '_federizer._as._tcp.example.com',
        target: 'as.example.com',
        port: 443,
        priority: 0,
        weight: 0,
        ttl: 3600,
      },
      {
        name: '_federizer._rs._tcp.example.com',
        target: 'mail.example.com',
        port: 443,
        priority: 0,
        weight: 0,
        ttl: 3600,
      },
    ]);
  });

  it.each([
    ['the defaults', domain()],
    ['every option', domain(FULL)],
    [
      'rfc2136 DNS, a TLS Secret, no webmail, no Ingress',
      domain({
        dns: { mode: 'rfc2136', rfc2136: { server: '192.0.2.53', tsigSecretRef: { name: 'tsig' } } },
        webmail: { enabled: false },
        ingress: { enabled: false, tls: { secretName: 'example-com-cert' } },
      }),
    ],
  ])('makes only manifests an API server accepts, with %s', (_what, md) => {
    const { objects } = buildMailDomain(md, { ...ctx, hasServiceMonitorCrd: true });
    expect(objects.length).toBeGreaterThan(10);
    for (const object of objects) expect(manifestIssues(object), `${object.kind}/${object.metadata.name}`).toEqual([]);
  });

  it('has a validator that does catch a misspelt field and a wrong type (so the test above can fail)', () => {
    const { objects } = buildMailDomain(domain(), ctx);
    const d = structuredClone(find(objects, 'Deployment', 'example-com-mailbox'));
    d.spec.replicass = 2;
    expect(unknownFields(d)).toEqual(['spec.replicass']);
    d.spec.replicas = 'two';
    expect(manifestIssues(d).join('\n')).toMatch(/spec\/replicas: must be integer/);
    const endpoint = buildMailDomain(domain({ dns: { mode: 'externaldns' } }), ctx).objects.find(
      (o) => o.kind === 'DNSEndpoint',
    )!;
    const relative = structuredClone(endpoint) as Manifest & { spec: { endpoints: { targets: string[] }[] } };
    relative.spec.endpoints[0]!.targets = ['0 0 443 as.example.com'];
    // ExternalDNS's CRD rule: SRV targets end with a dot.
    expect(manifestIssues(relative).join('\n')).toMatch(/targets\/0: must match pattern/);
  });

  it('runs every pod non-root, read-only, without capabilities, with probes, resources and a scrape annotation', () => {
    const { objects } = buildMailDomain(domain(), ctx);
    for (const name of ['example-com-auth', 'example-com-mailbox', 'example-com-webmail']) {
      const pod = find(objects, 'Deployment', name).spec.template;
      expect(pod.spec.securityContext).toMatchObject({
        runAsNonRoot: true,
        runAsUser: 10001,
        fsGroup: 10001,
        seccompProfile: { type: 'RuntimeDefault' },
      });
      expect(pod.spec.automountServiceAccountToken).toBe(false);
      const [c] = pod.spec.containers;
      expect(c.securityContext).toEqual({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        runAsNonRoot: true,
        capabilities: { drop: ['ALL'] },
        seccompProfile: { type: 'RuntimeDefault' },
      });
      expect(c.volumeMounts).toContainEqual({ name: 'tmp', mountPath: '/tmp' });
      expect(pod.spec.volumes).toContainEqual({ name: 'tmp', emptyDir: { sizeLimit: '256Mi' } });
      // The webmail's probes and /metrics are on a port of their own, which the Ingress does not reach.
      const webmail = name.endsWith('webmail');
      expect(c.ports).toEqual([
        { name: 'http', containerPort: 8080, protocol: 'TCP' },
        ...(webmail ? [{ name: 'metrics', containerPort: 9090, protocol: 'TCP' }] : []),
      ]);
      expect(c.livenessProbe.httpGet).toEqual({ path: '/healthz', port: webmail ? 'metrics' : 'http' });
      expect(c.readinessProbe.httpGet.path).toBe(webmail ? '/healthz' : '/readyz');
      expect(Object.keys(c.resources)).toEqual(['requests', 'limits']);
      expect(pod.metadata.annotations).toMatchObject({
        'prometheus.io/scrape': 'true',
        'prometheus.io/port': webmail ? '9090' : '8080',
      });
      expect(find(objects, 'Service', name).spec.ports).toEqual([
        { name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' },
        { name: 'metrics', port: 9090, targetPort: webmail ? 'metrics' : 'http', protocol: 'TCP' },
      ]);
      expect(c.image).toBe('ghcr.io/federizer/federizer:0.1.0');
      expect(c.args).toEqual([name.replace('example-com-', '')]);
    }
  });

  it('labels everything, owns everything but a retained claim, and selects pods by stable labels', () => {
    const { objects } = buildMailDomain(domain(), ctx);
    for (const o of objects) {
      expect(o.metadata.labels).toMatchObject({
        'app.kubernetes.io/name': 'federizer',
        'app.kubernetes.io/instance': 'example-com',
        'app.kubernetes.io/managed-by': 'federizer-operator',
        'app.kubernetes.io/part-of': 'federizer',
      });
      expect(o.metadata.namespace).toBe('mail');
      const retained = o.kind === 'PersistentVolumeClaim';
      expect(o.metadata.ownerReferences, `${o.kind}/${o.metadata.name}`).toEqual(
        retained
          ? undefined
          : [
              {
                apiVersion: 'federizer.io/v1alpha1',
                kind: 'MailDomain',
                name: 'example-com',
                uid: UID,
                controller: true,
                blockOwnerDeletion: true,
              },
            ],
      );
    }
    const mailbox = find(objects, 'Deployment', 'example-com-mailbox');
    expect(mailbox.spec.selector.matchLabels).toEqual({
      'app.kubernetes.io/name': 'federizer',
      'app.kubernetes.io/instance': 'example-com',
      'app.kubernetes.io/component': 'mailbox',
    });
    expect(find(objects, 'Service', 'example-com-mailbox').spec.selector).toEqual(mailbox.spec.selector.matchLabels);
  });

  it('keeps the mail: claims without owner unless retainOnDelete is false; one writer at a time on SQLite', () => {
    const sqlite = buildMailDomain(domain(), ctx).objects;
    const claim = find(sqlite, 'PersistentVolumeClaim', 'example-com-mailbox-data');
    expect(claim.metadata.ownerReferences).toBeUndefined();
    expect(claim.spec).toEqual({ accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '10Gi' } } });
    expect(find(sqlite, 'Deployment', 'example-com-mailbox').spec.strategy).toEqual({ type: 'Recreate' });
    expect(find(sqlite, 'Deployment', 'example-com-webmail').spec.strategy.type).toBe('RollingUpdate');

    const full = buildMailDomain(domain(FULL), ctx).objects;
    const shared = find(full, 'PersistentVolumeClaim', 'example-com-mailbox-data');
    expect(shared.metadata.ownerReferences?.[0]?.uid).toBe(UID);
    expect(shared.spec).toEqual({
      accessModes: ['ReadWriteMany'],
      storageClassName: 'cephfs',
      resources: { requests: { storage: '500Gi' } },
    });
    expect(find(full, 'Deployment', 'example-com-mailbox').spec.strategy).toEqual({
      type: 'RollingUpdate',
      rollingUpdate: { maxUnavailable: 0, maxSurge: 1 },
    });
    // With PostgreSQL the AS keeps no files.
    expect(full.some((o) => o.metadata.name === 'example-com-auth-data')).toBe(false);
  });

  it('adds disruption budgets for replicated components, the ServiceMonitor when its CRD exists, the DNSEndpoint with externaldns', () => {
    const { objects } = buildMailDomain(domain(FULL), { ...ctx, hasServiceMonitorCrd: true });
    expect(objects.filter((o) => o.kind === 'PodDisruptionBudget').map((o) => o.metadata.name)).toEqual([
      'example-com-auth',
      'example-com-mailbox',
      'example-com-webmail',
    ]);
    expect(find(objects, 'PodDisruptionBudget', 'example-com-mailbox').spec).toEqual({
      maxUnavailable: 1,
      selector: { matchLabels: find(objects, 'Deployment', 'example-com-mailbox').spec.selector.matchLabels },
    });
    expect(find(objects, 'ServiceMonitor', 'example-com').spec.endpoints).toEqual([
      { port: 'metrics', path: '/metrics', interval: '30s', scheme: 'http' },
    ]);
    expect(find(objects, 'DNSEndpoint', 'example-com-srv').spec.endpoints).toEqual([
      {
        dnsName: '_federizer._as._tcp.example.com',
        recordType: 'SRV',
        recordTTL: 300,
        targets: ['0 0 443 login.example.com.'],
      },
      {
        dnsName: '_federizer._rs._tcp.example.com',
        recordType: 'SRV',
        recordTTL: 300,
        targets: ['0 0 443 mx.example.com.'],
      },
    ]);
    const without = buildMailDomain(domain(FULL), ctx).objects;
    expect(without.some((o) => o.kind === 'ServiceMonitor')).toBe(false);
    const single = buildMailDomain(domain(), ctx).objects;
    expect(single.some((o) => o.kind === 'PodDisruptionBudget' || o.kind === 'DNSEndpoint')).toBe(false);
  });

  it('routes each hostname to its Service and asks cert-manager for one certificate covering them', () => {
    const ingress = find(buildMailDomain(domain(FULL), ctx).objects, 'Ingress', 'example-com');
    expect(ingress.metadata.annotations).toEqual({
      'nginx.ingress.kubernetes.io/proxy-body-size': '2g',
      'cert-manager.io/issuer': 'letsencrypt',
    });
    expect(ingress.spec.ingressClassName).toBe('nginx');
    expect(ingress.spec.tls).toEqual([
      { hosts: ['login.example.com', 'mx.example.com', 'mail.example.com'], secretName: 'example-com-tls' },
    ]);
    expect(
      ingress.spec.rules.map((r: { host: string; http: { paths: { backend: { service: { name: string } } }[] } }) => [
        r.host,
        r.http.paths[0]!.backend.service.name,
      ]),
    ).toEqual([
      ['login.example.com', 'example-com-auth'],
      ['mx.example.com', 'example-com-mailbox'],
      ['mail.example.com', 'example-com-webmail'],
    ]);
    const secretTls = find(
      buildMailDomain(domain({ ingress: { tls: { secretName: 'wildcard' } }, webmail: { enabled: false } }), ctx)
        .objects,
      'Ingress',
      'example-com',
    );
    expect(secretTls.metadata.annotations).toBeUndefined();
    expect(secretTls.spec.tls).toEqual([{ hosts: ['as.example.com', 'mail.example.com'], secretName: 'wildcard' }]);
  });

  it('generates only the Secrets that do not exist, marked create-only, whatever form the list of existing ones takes', () => {
    const generated = (existing: BuildContext['existingSecrets']) =>
      buildMailDomain(domain(), { ...ctx, existingSecrets: existing })
        .objects.filter((o) => o.kind === 'Secret')
        .map((o) => o.metadata.name);
    expect(generated(['example-com-admin-token', 'example-com-auth-cookie-keys', 'example-com-mta-key'])).toEqual([]);
    expect(generated(new Set(['example-com-mta-key']))).toEqual([
      'example-com-admin-token',
      'example-com-auth-cookie-keys',
    ]);
    expect(generated({ 'example-com-admin-token': { kind: 'Secret' } })).toEqual([
      'example-com-auth-cookie-keys',
      'example-com-mta-key',
    ]);
    for (const s of buildMailDomain(domain(), ctx).objects.filter((o) => o.kind === 'Secret'))
      expect(s.metadata.annotations).toEqual({ [CREATE_ONLY_ANNOTATION]: 'true' });
    // Two builds, two sets of random values: the runtime must create them once, never apply them again.
    const token = () =>
      (find(buildMailDomain(domain(), ctx).objects, 'Secret', 'example-com-admin-token').data as Record<string, string>)
        .token;
    expect(token()).not.toBe(token());
  });

  it("generates an MTA key pair whose private JWK signs what the AS's public JWKS verifies", async () => {
    const { objects } = buildMailDomain(domain(), ctx);
    const data = find(objects, 'Secret', 'example-com-mta-key').data as Record<string, string>;
    const privateJwk = JSON.parse(Buffer.from(data['private.jwk']!, 'base64').toString()) as JWK;
    const jwks = JSON.parse(Buffer.from(data['public.jwks']!, 'base64').toString()) as { keys: JWK[] };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).not.toHaveProperty('d');
    expect(privateJwk).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
    expect(privateJwk.kid).toBe(await calculateJwkThumbprint(jwks.keys[0]!));
    const jwt = await new SignJWT({ iss: 'mta.example.com' })
      .setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid! })
      .sign(await importJWK(privateJwk, 'ES256'));
    const { payload } = await jwtVerify(jwt, await importJWK(jwks.keys[0]!, 'ES256'));
    expect(payload.iss).toBe('mta.example.com');
  });

  it('gives the AS an environment that readAuthEnv accepts, using only variables it reads', () => {
    const { objects } = buildMailDomain(domain(FULL), ctx);
    const env = containerEnv(objects, 'example-com-auth');
    const { config, secrets } = readAuthEnv(env);
    expect(config).toMatchObject({
      issuer: 'https://login.example.com',
      domain: 'example.com',
      host: '0.0.0.0',
      port: 8080,
      mailboxResource: 'https://mx.example.com/api/v1',
      signingAlg: 'EdDSA',
      keyRotationSeconds: 14 * 86400,
      shareWindowSeconds: 14 * 86400,
      trustProxy: true,
      dev: false,
      databaseUrl: 'postgres://u:p@db/dsn',
      corsOrigins: ['https://mail.example.com'],
      webmail: {
        clientId: 'webmail',
        redirectUris: ['https://mail.example.com/callback'],
        postLogoutRedirectUris: ['https://mail.example.com/'],
      },
    });
    expect(config.mta.jwks?.keys).toHaveLength(1);
    expect(secrets.adminToken.length).toBeGreaterThanOrEqual(16);
    expect(secrets.cookieKeys).toHaveLength(1);
    // FEDERIZER_LOG_LEVEL is read by the shared logger, not by readAuthEnv.
    const unread = [...Object.keys(env)].filter((k) => !namesRead(readAuthEnv, env).has(k));
    expect(unread).toEqual(['FEDERIZER_LOG_LEVEL']);
    expect(
      readAuthEnv(containerEnv(buildMailDomain(domain(), ctx).objects, 'example-com-auth')).config.databaseUrl,
    ).toBe('sqlite:/data/auth.db');
  });

  it('gives the mailbox an environment that readMailboxEnv accepts, using only variables it reads', () => {
    const { objects } = buildMailDomain(domain(FULL), ctx);
    const env = containerEnv(objects, 'example-com-mailbox');
    const { config, secrets } = readMailboxEnv(env);
    expect(config).toMatchObject({
      domain: 'example.com',
      publicUrl: 'https://mx.example.com',
      issuer: 'https://login.example.com',
      host: '0.0.0.0',
      port: 8080,
      blobDir: '/data/blobs',
      databaseUrl: 'postgres://u:p@db/dsn',
      maxResourceSize: 2 * 1024 ** 3,
      quotaBytes: 20 * 1024 ** 3,
      corsOrigins: ['https://mail.example.com'],
      webmailUrl: 'https://mail.example.com/',
      authAdminUrl: 'https://login.example.com',
      mtaClientId: 'mta.example.com',
      shareWindowSeconds: 14 * 86400,
    });
    // Shares live exactly as long as the AS's assertions that grant them.
    expect(config.shareWindowSeconds).toBe(
      readAuthEnv(containerEnv(objects, 'example-com-auth')).config.shareWindowSeconds,
    );
    expect(secrets.mtaPrivateJwk).toMatchObject({ kty: 'EC', alg: 'ES256' });
    expect(secrets.authAdminToken).toBe(readAuthEnv(containerEnv(objects, 'example-com-auth')).secrets.adminToken);
    const unread = [...Object.keys(env)].filter((k) => !namesRead(readMailboxEnv, env).has(k));
    expect(unread).toEqual(['FEDERIZER_LOG_LEVEL']);
    expect(
      readMailboxEnv(containerEnv(buildMailDomain(domain(), ctx).objects, 'example-com-mailbox')).config.databaseUrl,
    ).toBe('sqlite:/data/mailbox.db');
  });

  it('gives the webmail an environment that readWebmailEnv accepts, using only variables it reads', () => {
    const { objects } = buildMailDomain(domain(FULL), ctx);
    const env = containerEnv(objects, 'example-com-webmail');
    expect(readWebmailEnv(env)).toMatchObject({
      domain: 'example.com',
      issuer: 'https://login.example.com',
      mailboxUrl: 'https://mx.example.com',
      publicUrl: 'https://mail.example.com',
      host: '0.0.0.0',
      port: 8080,
      metricsHost: '0.0.0.0',
      metricsPort: 9090,
    });
    const unread = [...Object.keys(env)].filter((k) => !namesRead(readWebmailEnv, env).has(k));
    expect(unread).toEqual(['FEDERIZER_LOG_LEVEL']);
  });

  it('rolls the pods when their configuration changes, and only then', () => {
    const hash = (md: MailDomain, name: string) =>
      find(buildMailDomain(md, ctx).objects, 'Deployment', name).spec.template.metadata.annotations[
        'federizer.io/config-hash'
      ];
    expect(hash(domain(), 'example-com-mailbox')).toBe(hash(domain(), 'example-com-mailbox'));
    expect(hash(domain({ maxResourceSize: '1GiB' }), 'example-com-mailbox')).not.toBe(
      hash(domain(), 'example-com-mailbox'),
    );
    expect(hash(domain({ maxResourceSize: '1GiB' }), 'example-com-auth')).toBe(hash(domain(), 'example-com-auth'));
  });

  it('runs the image the operator passes, unless the MailDomain names one', () => {
    const image = (md: MailDomain) =>
      find(
        buildMailDomain(md, { ...ctx, image: 'registry.local:5000/fz:9.9.9' }).objects,
        'Deployment',
        'example-com-auth',
      ).spec.template.spec.containers[0].image;
    expect(image(domain())).toBe('registry.local:5000/fz:9.9.9');
    expect(image(domain({ image: { tag: '1.0.0' } }))).toBe('registry.local:5000/fz:1.0.0');
  });

  it('builds nothing from an invalid MailDomain, and says why (the CRD rules, mirrored)', () => {
    expect(() => buildMailDomain(domain({ mailbox: { replicas: 2 } }), ctx)).toThrow(InvalidResourceError);
    expect(() => buildMailDomain(domain({ mailbox: { replicas: 2 } }), ctx)).toThrow(
      /spec: mailbox.replicas above 1 needs database.type postgres/,
    );
    expect(() => buildMailDomain({ ...domain(), spec: { domain: 'Example.COM' } } as MailDomain, ctx)).toThrow(
      /spec.domain: "Example.COM" must match/,
    );
    // Without a uid (never stored in a cluster), nothing can name the MailDomain as owner.
    const rendered = buildMailDomain({ ...domain(), metadata: { name: 'example-com' } }, ctx).objects;
    expect(rendered.every((o) => o.metadata.ownerReferences === undefined && o.metadata.namespace === 'default')).toBe(
      true,
    );
  });
});

/**
 * The CustomResourceDefinitions: valid CRDs, their schemas applied with Ajv to example objects (with
 * kubectl's strict field validation), and their CEL rules, which no library here evaluates, checked through
 * their TypeScript mirror in model.ts: the test fails when a rule is added to one and not to the other, and
 * each rejection below names the rule that makes it.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  CEL_RULES,
  PATTERNS,
  mailDomainIssues,
  mailUserIssues,
  withDefaults,
  type MailDomain,
  type MailUser,
} from '../src/model.js';
import { ROOT, crdValidator, manifestIssues, readYamlFile } from '../src/builders/testing/validate.js';
import { exampleDomain } from './helpers/mail-domains.js';

interface Schema {
  properties?: Record<string, Schema>;
  items?: Schema;
  additionalProperties?: Schema | boolean;
  pattern?: string;
  'x-kubernetes-validations'?: { rule: string; message: string }[];
}
interface Crd {
  metadata: { name: string };
  spec: {
    versions: {
      name: string;
      subresources?: { status?: object };
      additionalPrinterColumns?: { name: string; jsonPath: string }[];
      schema: { openAPIV3Schema: Schema };
    }[];
  };
}

const domainCrd = readYamlFile('crds/maildomain.yaml') as Crd;
const userCrd = readYamlFile('crds/mailuser.yaml') as Crd;
const validateDomain = crdValidator('crds/maildomain.yaml');
const validateUser = crdValidator('crds/mailuser.yaml');

/** Every (path, message) of a schema's CEL rules, and every (path, pattern). */
function walk(schema: Schema, path = '', out = { rules: [] as string[], patterns: new Map<string, string>() }) {
  for (const r of schema['x-kubernetes-validations'] ?? []) out.rules.push(`${path} :: ${r.message}`);
  if (schema.pattern) out.patterns.set(path, schema.pattern);
  for (const [k, s] of Object.entries(schema.properties ?? {})) walk(s, path === '' ? k : `${path}.${k}`, out);
  if (schema.items) walk(schema.items, `${path}[]`, out);
  if (typeof schema.additionalProperties === 'object') walk(schema.additionalProperties, `${path}.*`, out);
  return out;
}

const domain = exampleDomain;

/** What the schema (Ajv) and the CEL mirror say, in one list of messages. */
function verdict(object: unknown, old?: MailDomain): string[] {
  const schema = validateDomain(object)
    ? []
    : (validateDomain.errors ?? []).map((e) => `schema ${e.instancePath} ${e.message}`);
  const mirror = mailDomainIssues(object, old).map((i) => `${i.path}: ${i.message}`);
  // The mirror must reject whatever the schema rejects (render runs with no Ajv and no API server).
  if (schema.length > 0)
    expect(mirror, `the model accepts what the schema rejects: ${schema.join('; ')}`).not.toEqual([]);
  return [...schema, ...mirror];
}

describe('the CRDs', () => {
  it('are valid CustomResourceDefinitions with a status subresource and Domain/Address, Ready, Age columns', () => {
    for (const [crd, first] of [
      [domainCrd, 'Domain'],
      [userCrd, 'Address'],
    ] as const) {
      expect(manifestIssues(crd)).toEqual([]);
      const [version] = crd.spec.versions;
      expect(version!.name).toBe('v1alpha1');
      expect(version!.subresources).toEqual({ status: {} });
      expect(version!.additionalPrinterColumns!.map((c) => c.name)).toEqual([first, 'Ready', 'Age']);
      expect(version!.additionalPrinterColumns![1]!.jsonPath).toBe('.status.conditions[?(@.type=="Ready")].status');
    }
  });

  it('are copied byte for byte into the chart', () => {
    for (const file of ['maildomain.yaml', 'mailuser.yaml'])
      expect(readFileSync(join(ROOT, 'charts/federizer/crds', file), 'utf8'), file).toBe(
        readFileSync(join(ROOT, 'crds', file), 'utf8'),
      );
  });

  it('have exactly the CEL rules model.ts mirrors, at the same places, with the same messages', () => {
    const glob = (p: string) => new RegExp(`^${p.replace(/\./g, '\\.').replace(/\*/g, '[^.]+')}$`);
    for (const [crd, kind] of [
      [domainCrd, 'MailDomain'],
      [userCrd, 'MailUser'],
    ] as const) {
      const inCrd = walk(crd.spec.versions[0]!.schema.openAPIV3Schema).rules;
      const mirrors = CEL_RULES.filter((r) => r.kind === kind);
      for (const entry of inCrd) {
        const [path, message] = entry.split(' :: ') as [string, string];
        expect(
          mirrors.some((r) => r.message === message && glob(r.path).test(path)),
          `no mirror of ${entry}`,
        ).toBe(true);
      }
      for (const r of mirrors)
        expect(
          inCrd.some((e) => e.endsWith(` :: ${r.message}`) && glob(r.path).test(e.split(' :: ')[0]!)),
          r.message,
        ).toBe(true);
    }
    expect(CEL_RULES.filter((r) => r.kind === 'MailDomain')).toHaveLength(14);
  });

  it('use the same patterns as model.ts', () => {
    const patterns = new Set(
      [domainCrd, userCrd].flatMap((crd) => [...walk(crd.spec.versions[0]!.schema.openAPIV3Schema).patterns.values()]),
    );
    const mirrored = new Set(Object.values(PATTERNS).map((p) => p.source));
    // The status' condition patterns are the API server's, not the spec's: model.ts does not validate status.
    const specOnly = [...patterns].filter(
      (p) => !p.startsWith('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.') && !p.startsWith('^[A-Za-z]([A-Za-z0-9_,:]'),
    );
    for (const p of specOnly) expect(mirrored.has(p), p).toBe(true);
  });
});

describe('a MailDomain', () => {
  it.each([
    ['only a domain', domain()],
    [
      'every field',
      domain({
        hostnames: { authServer: 'login.example.com', mailbox: 'mx.example.com', webmail: 'mail.example.com' },
        image: {
          repository: 'registry.example.net:5000/federizer',
          tag: '1.2.3',
          pullPolicy: 'Always',
          pullSecrets: ['regcred'],
        },
        logLevel: 'warn',
        authServer: {
          replicas: 2,
          signingAlgorithm: 'RS256',
          keyRotation: '90d',
          storage: { size: '2Gi' },
          resources: { requests: { cpu: 1, memory: '1Gi' } },
        },
        mailbox: {
          replicas: 4,
          storage: { size: '1.5Ti', storageClassName: 'nfs', accessMode: 'ReadWriteMany', retainOnDelete: true },
          quota: '100GiB',
        },
        database: { type: 'postgres', postgres: { secretRef: { name: 'db', key: 'url' } } },
        shareWindow: '30d',
        maxResourceSize: '10G',
        webmail: { enabled: false, replicas: 1 },
        ingress: { enabled: true, className: 'traefik', annotations: { a: 'b' }, tls: { secretName: 'cert' } },
        dns: {
          mode: 'rfc2136',
          ttl: 600,
          rfc2136: {
            server: '[2001:db8::53]:5353',
            zone: 'example.com',
            tsigKeyName: 'federizer.',
            tsigAlgorithm: 'hmac-sha512',
            tsigSecretRef: { name: 'tsig', key: 'secret' },
          },
        },
        forwarding: { defaultPolicy: 'manual' },
      }),
    ],
    [
      'a subdomain in a parent zone',
      domain({
        domain: 'mail.example.co.uk',
        dns: { mode: 'rfc2136', rfc2136: { server: 'ns1', zone: 'example.co.uk', tsigSecretRef: { name: 't' } } },
      }),
    ],
  ])('with %s is accepted by the schema and by the rules', (_what, md) => {
    expect(verdict(md)).toEqual([]);
  });

  it('with every default filled in (withDefaults) is still a valid MailDomain', () => {
    for (const md of [
      domain(),
      domain({
        ingress: { tls: { certManager: { issuer: 'le' } } },
        dns: { mode: 'rfc2136', rfc2136: { server: 'ns', tsigSecretRef: { name: 't' } } },
      }),
    ]) {
      const { spec } = withDefaults(md);
      expect(verdict({ ...md, spec })).toEqual([]);
      expect(spec.hostnames).toEqual({
        authServer: 'as.example.com',
        mailbox: 'mail.example.com',
        webmail: 'webmail.example.com',
      });
      expect(spec.mailbox.storage.retainOnDelete).toBe(true);
    }
  });

  // Each case: the object, then the rule that must reject it (schema or CEL), as a pattern of its message.
  const rejections: [string, MailDomain, RegExp][] = [
    ['schema: domain is lowercase', domain({ domain: 'Example.com' }), /spec\.domain: "Example\.com" must match/],
    ['schema: domain has a dot', domain({ domain: 'localhost' }), /spec\.domain: "localhost" must match/],
    [
      'schema: a hostname is a domain name',
      domain({ hostnames: { mailbox: 'mail_box.example.com' } }),
      /spec\.hostnames\.mailbox: .* must match/,
    ],
    [
      'schema: replicas from 1 to 20',
      domain({ webmail: { replicas: 0 } }),
      /spec\.webmail\.replicas: must be an integer from 1 to 20, not 0/,
    ],
    [
      'schema: signing algorithms',
      domain({ authServer: { signingAlgorithm: 'HS256' as never } }),
      /must be one of ES256, EdDSA, RS256/,
    ],
    ['schema: durations', domain({ shareWindow: '1 week' }), /spec\.shareWindow: "1 week" must match/],
    ['schema: sizes', domain({ maxResourceSize: '5 gigabytes' }), /spec\.maxResourceSize: .* must match/],
    [
      'schema: storage quantities',
      domain({ mailbox: { storage: { size: '10GB' } } }),
      /spec\.mailbox\.storage\.size: .* must match/,
    ],
    [
      'schema: strict fields',
      domain({ mailbox: { replicass: 2 } as never }),
      /spec\.mailbox\.replicass: is not a field/,
    ],
    ['schema: database type required', domain({ database: {} as never }), /spec\.database\.type: is required/],
    ['schema: dns modes', domain({ dns: { mode: 'route53' as never } }), /must be one of none, externaldns, rfc2136/],
    [
      'schema: rfc2136 server',
      domain({ dns: { mode: 'rfc2136', rfc2136: { server: 'ns1:abc', tsigSecretRef: { name: 't' } } } }),
      /spec\.dns\.rfc2136\.server: .* must match/,
    ],
    ['schema: ttl range', domain({ dns: { ttl: 5 } }), /spec\.dns\.ttl: must be an integer from 60 to 86400/],
    ['CEL: metadata.name', domain({}, 'a'.repeat(51)), /metadata\.name starts with a letter and has at most 50/],
    ['CEL: metadata.name starts with a letter', domain({}, '1example'), /metadata\.name starts with a letter/],
    [
      'CEL: distinct hostnames',
      domain({ hostnames: { authServer: 'mail.example.com' } }),
      /spec: the hostnames of the Authorization Server, the mailbox and the webmail .* are distinct/,
    ],
    [
      'CEL: derived hostnames fit',
      domain({ domain: `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(58)}` }),
      /spec: a derived hostname .* would be longer than 253/,
    ],
    [
      'CEL: mailbox replicas need postgres',
      domain({ mailbox: { replicas: 2, storage: { accessMode: 'ReadWriteMany' } } }),
      /spec: mailbox\.replicas above 1 needs database\.type postgres/,
    ],
    [
      'CEL: AS replicas need postgres',
      domain({ authServer: { replicas: 3 } }),
      /spec: authServer\.replicas above 1 needs database\.type postgres/,
    ],
    [
      'CEL: mailbox replicas need shared storage',
      domain({ mailbox: { replicas: 2 }, database: { type: 'postgres', postgres: { secretRef: { name: 'db' } } } }),
      /spec\.mailbox: mailbox\.replicas above 1 needs mailbox\.storage\.accessMode ReadWriteMany/,
    ],
    [
      'CEL: postgres needs its Secret',
      domain({ database: { type: 'postgres' } }),
      /spec\.database: database\.postgres is set exactly when database\.type is postgres/,
    ],
    [
      'CEL: sqlite takes no postgres',
      domain({ database: { type: 'sqlite', postgres: { secretRef: { name: 'db' } } } }),
      /spec\.database: database\.postgres is set exactly/,
    ],
    [
      'CEL: one kind of TLS',
      domain({ ingress: { tls: { secretName: 'c', certManager: { issuer: 'le' } } } }),
      /spec\.ingress\.tls: ingress\.tls has either secretName or certManager/,
    ],
    ['CEL: TLS names one', domain({ ingress: { tls: {} } }), /spec\.ingress\.tls: ingress\.tls has either/],
    [
      'CEL: rfc2136 settings go with rfc2136',
      domain({ dns: { mode: 'externaldns', rfc2136: { server: 'ns', tsigSecretRef: { name: 't' } } } }),
      /spec\.dns: dns\.rfc2136 is set exactly when dns\.mode is rfc2136/,
    ],
    ['CEL: rfc2136 needs its settings', domain({ dns: { mode: 'rfc2136' } }), /spec\.dns: dns\.rfc2136 is set exactly/],
    [
      'CEL: the zone holds the domain',
      domain({ dns: { mode: 'rfc2136', rfc2136: { server: 'ns', zone: 'ample.com', tsigSecretRef: { name: 't' } } } }),
      /spec: dns\.rfc2136\.zone is the domain or one of its parents/,
    ],
  ];

  it.each(rejections)('is rejected by %s', (_rule, md, reason) => {
    const found = verdict(md);
    expect(found.join('\n')).toMatch(reason);
  });

  it('cannot change its domain, nor the class or access mode of its claims (transition rules)', () => {
    const old = domain({ mailbox: { storage: { storageClassName: 'fast', accessMode: 'ReadWriteOnce' } } });
    expect(verdict(domain({ domain: 'example.org', mailbox: old.spec.mailbox }), old)).toEqual([
      'spec.domain: domain is immutable: create another MailDomain for another domain',
    ]);
    expect(
      verdict(domain({ mailbox: { storage: { storageClassName: 'slow', accessMode: 'ReadWriteOnce' } } }), old),
    ).toEqual([
      "spec.mailbox.storage: storageClassName cannot change once set (a PersistentVolumeClaim's class is immutable)",
    ]);
    // Leaving the access mode out means ReadWriteOnce: the same claim, allowed.
    expect(verdict(domain({ mailbox: { storage: { storageClassName: 'fast' } } }), old)).toEqual([]);
    // A claim made ReadWriteOnce by default cannot become ReadWriteMany by naming it.
    expect(verdict(domain({ mailbox: { storage: { accessMode: 'ReadWriteMany' } } }), domain())).toEqual([
      "spec: mailbox.storage.accessMode cannot change (default ReadWriteOnce): a PersistentVolumeClaim's access modes are immutable",
    ]);
    expect(verdict(domain({ authServer: { storage: { accessMode: 'ReadWriteMany' } } }), domain())).toEqual([
      "spec: authServer.storage.accessMode cannot change (default ReadWriteOnce): a PersistentVolumeClaim's access modes are immutable",
    ]);
    // Growing a claim is allowed, and so is naming a class for the first time.
    expect(
      verdict(
        domain({ mailbox: { storage: { storageClassName: 'fast', accessMode: 'ReadWriteOnce', size: '1Ti' } } }),
        old,
      ),
    ).toEqual([]);
    expect(verdict(domain({ authServer: { storage: { storageClassName: 'fast' } } }), domain())).toEqual([]);
  });
});

describe('a MailUser', () => {
  const user = (spec: Partial<MailUser['spec']>): MailUser => ({
    apiVersion: 'federizer.io/v1alpha1',
    kind: 'MailUser',
    metadata: { name: 'alice', namespace: 'mail' },
    spec: { address: 'alice@example.com', passwordSecretRef: { name: 'alice' }, ...spec },
  });
  const userVerdict = (object: MailUser, old?: MailUser) => {
    const schema = validateUser(object)
      ? []
      : (validateUser.errors ?? []).map((e) => `schema ${e.instancePath} ${e.message}`);
    const mirror = mailUserIssues(object, old).map((i) => `${i.path}: ${i.message}`);
    if (schema.length > 0) expect(mirror).not.toEqual([]);
    return [...schema, ...mirror].join('\n');
  };

  it('with every field is accepted', () => {
    expect(
      userVerdict(
        user({
          displayName: 'Alice Liddell',
          forwardingPolicy: 'any',
          sendQuotaPerDay: 200,
          disabled: false,
          passwordSecretRef: { name: 'alice', key: 'pw' },
        }),
      ),
    ).toBe('');
  });

  it.each([
    [
      'schema: addresses are lowercase addr-specs',
      user({ address: 'Alice@Example.com' }),
      /spec\.address: .* must match/,
    ],
    [
      'schema: a password Secret is required',
      { ...user({}), spec: { address: 'alice@example.com' } } as MailUser,
      /spec\.passwordSecretRef: is required/,
    ],
    [
      'schema: forwarding policies',
      user({ forwardingPolicy: 'sometimes' as never }),
      /must be one of any, manual, none/,
    ],
    [
      'schema: display names without control characters',
      user({ displayName: 'Alice\u0007' }),
      /spec\.displayName: .* must match/,
    ],
    [
      'schema: quota range',
      user({ sendQuotaPerDay: -1 }),
      /spec\.sendQuotaPerDay: must be an integer from 0 to 1000000/,
    ],
    [
      'CEL: local part of at most 64',
      user({ address: `${'a'.repeat(65)}@example.com` }),
      /the local part of an address has at most 64 characters/,
    ],
  ])('is rejected by %s', (_rule, mu, reason) => {
    expect(userVerdict(mu)).toMatch(reason);
  });

  it('cannot change its address', () => {
    expect(userVerdict(user({ address: 'bob@example.com' }), user({}))).toBe(
      'spec.address: address is immutable: create another MailUser for another address',
    );
  });
});

/**
 * `federizer operator render` end to end through the CLI's run(): files and standard input in, multi-document
 * YAML out, every document a manifest an API server accepts; invalid input exits 2 and says where and why.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../services/cli/src/run.js';
import { manifestIssues } from '../src/builders/testing/validate.js';
import { DEFAULT_IMAGE } from '../src/model.js';
import { DEFAULT_DOMAIN_OBJECTS } from './helpers/mail-domains.js';

interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

async function federizer(args: string[], stdin = ''): Promise<Output> {
  let stdout = '';
  let stderr = '';
  const code = await run(args, {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    readStdin: async () => Buffer.from(stdin),
  });
  return { code, stdout, stderr };
}

const DOMAIN = `apiVersion: federizer.io/v1alpha1
kind: MailDomain
metadata:
  name: example-com
  namespace: mail
spec:
  domain: example.com
  ingress:
    className: nginx
    tls:
      certManager:
        issuer: letsencrypt
  dns:
    mode: externaldns
`;

const USER = `apiVersion: federizer.io/v1alpha1
kind: MailUser
metadata:
  name: alice
  namespace: mail
spec:
  address: alice@example.com
  displayName: Alice
  passwordSecretRef:
    name: alice-password
`;

const docs = (yaml: string) =>
  parseAllDocuments(yaml)
    .map((d) => d.toJS() as { kind: string; metadata: { name: string; namespace: string } } | null)
    .filter((d) => d !== null);

describe('federizer operator render', () => {
  let dir: string;
  const file = async (name: string, text: string) => {
    const path = join(dir, name);
    await writeFile(path, text);
    return path;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-render-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('prints the manifests of a MailDomain as multi-document YAML, each valid, its SRV records as a comment', async () => {
    const out = await federizer(['operator', 'render', '-f', await file('domain.yaml', `${DOMAIN}---\n${USER}`)]);
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    const objects = docs(out.stdout);
    expect(objects.map((o) => `${o.kind}/${o.metadata.name}`)).toEqual([
      ...DEFAULT_DOMAIN_OBJECTS,
      'DNSEndpoint/example-com-srv',
    ]);
    for (const o of objects) expect(manifestIssues(o), `${o.kind}/${o.metadata.name}`).toEqual([]);
    expect(objects.every((o) => o.metadata.namespace === 'mail')).toBe(true);
    expect(out.stdout.startsWith('---\n# MailDomain example-com (example.com): 16 objects.\n')).toBe(true);
    expect(out.stdout).toContain('#   _federizer._as._tcp.example.com. 3600 IN SRV 0 0 443 as.example.com.\n');
    expect(out.stdout).toContain('#   _federizer._rs._tcp.example.com. 3600 IN SRV 0 0 443 mail.example.com.\n');
  });

  it('reads standard input with -f -, and takes the namespace, the ServiceMonitor and the image from flags', async () => {
    const bare = DOMAIN.replace('  namespace: mail\n', '').replace(/ {2}dns:\n {4}mode: externaldns\n/, '');
    const out = await federizer(
      [
        'operator',
        'render',
        '-f',
        '-',
        '--namespace',
        'tenant-a',
        '--service-monitor',
        '--image',
        'registry.local/fz:2.0.0',
      ],
      bare,
    );
    expect(out.code).toBe(0);
    const objects = docs(out.stdout) as unknown as { kind: string; metadata: { namespace: string }; spec: any }[]; // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(objects.every((o) => o.metadata.namespace === 'tenant-a')).toBe(true);
    expect(objects.map((o) => o.kind)).toContain('ServiceMonitor');
    expect(objects.map((o) => o.kind)).not.toContain('DNSEndpoint');
    const deployment = objects.find((o) => o.kind === 'Deployment')!;
    expect(deployment.spec.template.spec.containers[0].image).toBe('registry.local/fz:2.0.0');
    expect(out.stdout).toContain('# Its SRV records, for an administrator to create (dns.mode none):');
  });

  it('renders every MailDomain of a file, in order', async () => {
    const second = DOMAIN.replace(/example-com/g, 'example-org').replace('domain: example.com', 'domain: example.org');
    const out = await federizer(['operator', 'render', '-f', await file('two.yaml', `${DOMAIN}---\n${second}---\n`)]);
    expect(out.code).toBe(0);
    const names = docs(out.stdout).map((o) => o.metadata.name);
    expect(names.filter((n) => n.startsWith('example-com'))).toHaveLength(16);
    expect(names.filter((n) => n.startsWith('example-org'))).toHaveLength(16);
    expect(names.indexOf('example-org-admin-token')).toBe(16);
  });

  it('exits 2 on an invalid MailDomain, naming the document, the field and the CRD rule', async () => {
    const invalid = DOMAIN.replace('  dns:\n', '  mailbox:\n    replicas: 3\n    replicass: 1\n  dns:\n');
    const out = await federizer(['operator', 'render', '-f', await file('bad.yaml', `${USER}---\n${invalid}`)]);
    expect(out.code).toBe(2);
    expect(out.stdout).toBe('');
    expect(out.stderr).toContain(`${join(dir, 'bad.yaml')}, document 2: invalid MailDomain:`);
    expect(out.stderr).toContain('spec.mailbox.replicass: is not a field of this object');
    const cel = await federizer(['operator', 'render', '-f', '-'], invalid.replace('    replicass: 1\n', ''));
    expect(cel.code).toBe(2);
    expect(cel.stderr).toContain('standard input, document 1: invalid MailDomain:');
    expect(cel.stderr).toContain('spec: mailbox.replicas above 1 needs database.type postgres');
    expect(cel.stderr).toContain(
      'spec.mailbox: mailbox.replicas above 1 needs mailbox.storage.accessMode ReadWriteMany',
    );
  });

  it('exits 2 on an invalid MailUser, on broken YAML, and on a file with no MailDomain', async () => {
    const user = await federizer(
      ['operator', 'render', '-f', '-'],
      `${DOMAIN}---\n${USER.replace('alice@example.com', 'Alice')}`,
    );
    expect(user.code).toBe(2);
    expect(user.stderr).toMatch(/document 2: invalid MailUser:\n {2}spec\.address: "Alice" must match/);
    const broken = await federizer(['operator', 'render', '-f', '-'], 'spec: [unclosed\n');
    expect(broken.code).toBe(2);
    expect(broken.stderr).toMatch(/standard input, document 1: not YAML: /);
    const none = await federizer(['operator', 'render', '-f', '-'], USER);
    expect(none).toMatchObject({ code: 2, stderr: 'federizer: standard input holds no MailDomain\n' });
    const notAnObject = await federizer(['operator', 'render', '-f', '-'], '- a list\n');
    expect(notAnObject.code).toBe(2);
    expect(notAnObject.stderr).toContain('(root): a MailDomain is an object, not a list');
  });

  it('explains its usage: help, a missing or unreadable file, an unknown option or subcommand', async () => {
    expect(await federizer(['operator', '--help'])).toMatchObject({ code: 0, stderr: '' });
    expect((await federizer(['operator', '--help'])).stdout).toMatch(/^federizer operator render -f FILE\|-/);
    // The help names the image of MailDomains that name none: the model's default, which it must follow.
    expect((await federizer(['operator', '--help'])).stdout).toContain(`(default ${DEFAULT_IMAGE};`);
    expect((await federizer(['operator'])).code).toBe(2);
    const missing = await federizer(['operator', 'render']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^federizer: operator render needs -f FILE/);
    const unreadable = await federizer(['operator', 'render', '-f', join(dir, 'nope.yaml')]);
    expect(unreadable.code).toBe(2);
    expect(unreadable.stderr).toMatch(/cannot read .*nope\.yaml: ENOENT/);
    expect((await federizer(['operator', 'render', '-f', '-', '--cluster', 'x'])).stderr).toMatch(
      /^federizer: unknown option --cluster\nRun `federizer operator render --help` for its options\.\n$/,
    );
    const unknown = await federizer(['operator', 'deploy']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "operator deploy"/);
    expect((await federizer(['--help'])).stdout).toContain('federizer operator render -f FILE');
  });
});

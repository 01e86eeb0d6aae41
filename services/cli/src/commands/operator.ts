import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { MailDomain } from '@federizer/operator';
import type { CommandIo } from '../io.js';
import { optionMistake, UsageError } from '../io.js';
import { untilSignal } from '../signals.js';

const HELP = `federizer operator render -f FILE|- [--namespace NS] [--service-monitor] [--image IMAGE]
federizer operator run

The Kubernetes operator of Federizer (see docs/operations.md).

run      runs the operator: MailDomain and MailUser objects become mail domains and their users. The Helm
         chart (charts/federizer) runs it in the cluster; configured by the environment:
  KUBECONFIG                          a kubeconfig; default ~/.kube/config, then the in-cluster service account
  FEDERIZER_OPERATOR_IMAGE            the image of MailDomains that name none (the chart sets its own;
                                      default ghcr.io/federizer/federizer:0.1.0)
  FEDERIZER_OPERATOR_NAMESPACE        watch only this namespace (default every namespace)
  FEDERIZER_OPERATOR_LEADER_ELECTION  0 to run without a Lease (one replica only; default 1)
  FEDERIZER_OPERATOR_LEASE_NAMESPACE, FEDERIZER_OPERATOR_LEASE_NAME (federizer-operator), POD_NAME,
  POD_NAMESPACE, FEDERIZER_OPERATOR_METRICS_HOST, FEDERIZER_OPERATOR_METRICS_PORT (8080: /metrics,
  /healthz, /readyz), FEDERIZER_OPERATOR_WORKERS (2), FEDERIZER_OPERATOR_RESYNC (300 seconds),
  FEDERIZER_LOG_LEVEL.
         Stops on SIGINT or SIGTERM: reconciles in flight finish and the Lease is released.

render   prints, as multi-document YAML, the objects the operator would apply for the MailDomain objects in
         FILE (YAML, several documents allowed; "-" reads standard input), without any cluster. MailUser
         documents are checked and skipped (they become users through the AS admin API, not objects).
  -f, --file FILE        the MailDomain objects
  --namespace NS         for objects that name none (default: default)
  --service-monitor      include the ServiceMonitor (as on a cluster with the Prometheus Operator)
  --image IMAGE          the image of MailDomains that name none (default ghcr.io/federizer/federizer:0.1.0;
                         render does not read FEDERIZER_OPERATOR_IMAGE)
Generated Secrets (admin token, cookie keys, the MTA's key pair) are new random values at every run; in a
cluster the operator creates them once and never replaces them. Without a uid the objects carry no owner
references. Exit code 2 when an object is invalid, with every reason and where.`;

type Subcommand = (args: readonly string[], io: CommandIo) => Promise<number>;

const SUBCOMMANDS: Record<string, Subcommand> = {
  render: renderCommand,
  run: runCommand,
};

export async function operatorCommand(args: readonly string[], io: CommandIo): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === '--help' || sub === '-h') {
    (sub === undefined ? io.stderr : io.stdout).write(`${HELP}\n`);
    return sub === undefined ? 2 : 0;
  }
  const command = SUBCOMMANDS[sub];
  if (command === undefined) throw new UsageError(`unknown command "operator ${sub}"\n\n${HELP}`);
  return command(rest, io);
}

async function renderCommand(args: readonly string[], io: CommandIo): Promise<number> {
  let values: { file?: string; namespace?: string; 'service-monitor'?: boolean; image?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: {
        file: { type: 'string', short: 'f' },
        namespace: { type: 'string' },
        'service-monitor': { type: 'boolean' },
        image: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw optionMistake(e, 'operator render');
  }
  if (values.help) {
    io.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (values.file === undefined)
    throw new UsageError(`operator render needs -f FILE (or -f - for standard input)\n\n${HELP}`);
  // The operator and its builders load only when rendering: the other commands do not pay for them.
  const operator = await import('@federizer/operator');
  let bytes: Buffer;
  try {
    bytes = values.file === '-' ? await io.readStdin() : await readFile(values.file);
  } catch (e) {
    throw new UsageError(`cannot read ${values.file}: ${(e as Error).message}`);
  }
  const text = bytes.toString('utf8');
  const source = values.file === '-' ? 'standard input' : values.file;
  const problems: string[] = [];
  const domains: MailDomain[] = [];
  for (const doc of operator.parseDocuments(text)) {
    const where = `${source}, document ${doc.index}`;
    if (doc.error !== undefined) {
      problems.push(`${where}: not YAML: ${doc.error}`);
      continue;
    }
    try {
      if ((doc.value as { kind?: unknown }).kind === 'MailUser') operator.validateMailUser(doc.value);
      else domains.push(operator.validateMailDomain(doc.value));
    } catch (e) {
      if (!(e instanceof operator.InvalidResourceError)) throw e;
      problems.push(`${where}: ${e.message}`);
    }
  }
  if (problems.length > 0) throw new UsageError(problems.join('\n'));
  if (domains.length === 0) throw new UsageError(`${source} holds no MailDomain`);
  for (const md of domains) {
    const { objects, srvRecords } = operator.buildMailDomain(md, {
      existingSecrets: [],
      hasServiceMonitorCrd: values['service-monitor'] === true,
      ...(values.image !== undefined ? { image: values.image } : {}),
      ...(values.namespace !== undefined ? { namespace: values.namespace } : {}),
    });
    const mode = md.spec.dns?.mode ?? 'none';
    const comment = [
      `MailDomain ${md.metadata.name} (${md.spec.domain}): ${objects.length} objects.`,
      `Its SRV records, ${PUBLISHED_BY[mode]}:`,
      ...srvRecords.map((r) => `  ${r.name}. ${r.ttl} IN SRV ${r.priority} ${r.weight} ${r.port} ${r.target}.`),
    ].join('\n');
    objects.forEach((object, i) => io.stdout.write(operator.manifestYaml(object, i === 0 ? comment : undefined)));
  }
  return 0;
}

async function runCommand(args: readonly string[], io: CommandIo): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    io.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (args.length > 0) throw new UsageError(`operator run takes no arguments\n\n${HELP}`);
  // Loaded here only: `render` runs without @kubernetes/client-node.
  const [{ buildMailDomain }, runtime] = await Promise.all([
    import('@federizer/operator'),
    import('@federizer/operator/runtime'),
  ]);
  let kubeConfig: ReturnType<typeof runtime.loadKubeConfig>;
  try {
    runtime.readOperatorEnv();
    kubeConfig = runtime.loadKubeConfig();
  } catch (e) {
    throw new UsageError(`configuration: ${(e as Error).message}\n\n${HELP}`);
  }
  const image = process.env.FEDERIZER_OPERATOR_IMAGE?.trim() || undefined;
  const operator = await runtime.runOperator({
    kubeConfig,
    build: (md, ctx) => buildMailDomain(md, { ...ctx, ...(image !== undefined ? { image } : {}) }),
  });
  await untilSignal();
  await operator.close();
  return 0;
}

const PUBLISHED_BY = {
  none: 'for an administrator to create (dns.mode none)',
  externaldns: 'published by ExternalDNS from the DNSEndpoint below',
  rfc2136: 'sent by the operator as RFC 2136 updates',
} as const;

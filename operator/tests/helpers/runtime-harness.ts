/**
 * What the runtime tests share: a small desired-state builder whose output the tests control (a Secret
 * offered anew at every build, replicas from the spec; runtime-maildomain.test.ts and
 * runtime-mailuser.test.ts run the real builder), an operator on the fake API server with short delays, and
 * polling.
 */
import { randomBytes } from 'node:crypto';
import type { KubernetesObject } from '@kubernetes/client-node';
import { silentLogger } from '@federizer/common';
import { OperatorRuntime, type OperatorRuntimeOptions } from '../../src/runtime/index.js';
import type { BuildContext, MailDomainBuilder, MailDomainObject, SrvRecord } from '../../src/runtime/types.js';
import type { FakeApiServer, JsonObject } from '../fake-apiserver.js';

export const MD_API = 'federizer.io/v1alpha1';

export interface TestBuilder extends MailDomainBuilder {
  calls: number;
  contexts: BuildContext[];
}

/**
 * Per MailDomain: a create-only admin-token Secret (a new random token each time it is built: the runtime,
 * not the builder, must keep the first), a ConfigMap, the AS Service, and Deployments for auth, mailbox
 * and (unless `spec.webmail.enabled` is false) webmail; the two SRV records.
 */
export function testBuilder(options: { alwaysReturnSecret?: boolean } = {}): TestBuilder {
  const build = ((md: MailDomainObject, ctx: BuildContext) => {
    build.calls++;
    build.contexts.push(ctx);
    const spec = (md.spec ?? {}) as { domain?: string; webmail?: { enabled?: boolean }; replicas?: number };
    if (!spec.domain) throw new TypeError('spec.domain is required');
    const name = md.metadata!.name!;
    const namespace = md.metadata!.namespace!;
    const ownerReferences = [
      {
        apiVersion: MD_API,
        kind: 'MailDomain',
        name,
        uid: md.metadata!.uid!,
        controller: true,
        blockOwnerDeletion: true,
      },
    ];
    const meta = (suffix: string, component: string, extra: JsonObject = {}) => ({
      name: `${name}-${suffix}`,
      namespace,
      labels: { 'app.kubernetes.io/instance': name, 'app.kubernetes.io/component': component },
      ownerReferences,
      ...extra,
    });
    const deployment = (component: string): KubernetesObject =>
      ({
        apiVersion: 'apps/v1',
        kind: 'Deployment',
        metadata: meta(component, component),
        spec: {
          replicas: spec.replicas ?? 1,
          selector: { matchLabels: { 'app.kubernetes.io/instance': name, 'app.kubernetes.io/component': component } },
          template: {
            metadata: { labels: { 'app.kubernetes.io/instance': name, 'app.kubernetes.io/component': component } },
            spec: {
              containers: [
                {
                  name: component,
                  image: 'federizer:test',
                  args: [component],
                  env:
                    component === 'auth'
                      ? [
                          {
                            name: 'FEDERIZER_AUTH_ADMIN_TOKEN',
                            valueFrom: { secretKeyRef: { name: `${name}-admin-token`, key: 'token' } },
                          },
                        ]
                      : [],
                },
              ],
            },
          },
        },
      }) as KubernetesObject;
    const objects: KubernetesObject[] = [];
    if (options.alwaysReturnSecret || !ctx.existingSecrets.has(`${name}-admin-token`))
      objects.push({
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: meta('admin-token', 'auth', { annotations: { 'federizer.io/create-only': 'true' } }),
        type: 'Opaque',
        data: { token: Buffer.from(randomBytes(24).toString('base64url')).toString('base64') },
      } as KubernetesObject);
    objects.push(
      {
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: meta('config', 'auth'),
        data: { FEDERIZER_DOMAIN: spec.domain },
      } as KubernetesObject,
      {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: meta('auth', 'auth'),
        spec: { selector: { 'app.kubernetes.io/component': 'auth' }, ports: [{ name: 'http', port: 80 }] },
      } as KubernetesObject,
      deployment('auth'),
      deployment('mailbox'),
    );
    if (spec.webmail?.enabled !== false) objects.push(deployment('webmail'));
    const srvRecords: SrvRecord[] = [
      {
        name: `_federizer._as._tcp.${spec.domain}`,
        target: `as.${spec.domain}`,
        port: 443,
        priority: 0,
        weight: 1,
        ttl: 300,
      },
      {
        name: `_federizer._rs._tcp.${spec.domain}`,
        target: `mail.${spec.domain}`,
        port: 443,
        priority: 0,
        weight: 1,
        ttl: 300,
      },
    ];
    return { objects, srvRecords };
  }) as TestBuilder;
  build.calls = 0;
  build.contexts = [];
  return build;
}

export function mailDomain(name: string, namespace: string, spec: JsonObject): JsonObject {
  return { apiVersion: MD_API, kind: 'MailDomain', metadata: { name, namespace }, spec };
}

/** Polls `check` until it returns without throwing (an `expect` inside), or fails with its last error. */
export async function eventually<T>(check: () => T | Promise<T>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw last;
    await new Promise((r) => setTimeout(r, 25));
  }
}

export function startOperator(
  api: FakeApiServer,
  overrides: Partial<OperatorRuntimeOptions> & Pick<OperatorRuntimeOptions, 'build'>,
): Promise<OperatorRuntime> {
  return OperatorRuntime.start({
    kubeConfig: api.kubeConfig(),
    leaderElection: false,
    workers: 2,
    resyncMs: 60_000,
    queue: { baseDelayMs: 50, maxDelayMs: 1000 },
    informer: { backoffMs: 50, maxBackoffMs: 500 },
    logger: silentLogger(),
    ...overrides,
  });
}

export function condition(object: JsonObject | undefined, type: string): JsonObject | undefined {
  const conditions = ((object?.status as JsonObject | undefined)?.conditions ?? []) as JsonObject[];
  return conditions.find((c) => c.type === type);
}

/** Simulates the Deployment controller: every Deployment of `namespace` has its replicas available. */
export function makeDeploymentsAvailable(api: FakeApiServer, namespace: string): void {
  for (const d of api.list('apps/v1', 'Deployment', namespace)) {
    const replicas = ((d.spec as JsonObject | undefined)?.replicas as number | undefined) ?? 1;
    const m = d.metadata as JsonObject;
    api.patchStatus('apps/v1', 'Deployment', namespace, m.name as string, {
      replicas,
      readyReplicas: replicas,
      availableReplicas: replicas,
      observedGeneration: m.generation as number,
    });
  }
}

/** Test support: reading built manifests as the kubelet would. */
import type { Manifest } from '../meta.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Loose = Manifest & Record<string, any>;

export function find(objects: readonly Manifest[], kind: string, name: string): Loose {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found)
    throw new Error(`no ${kind} ${name} among ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(', ')}`);
  return found as Loose;
}

/**
 * A container's environment as the kubelet would make it: the ConfigMap, then the Secret references.
 * `external` stands in for Secrets the MailDomain names but does not make (a database URL), by key.
 */
export function containerEnv(
  objects: readonly Manifest[],
  deployment: string,
  external: (secret: string, key: string) => string = (_s, key) => `postgres://u:p@db/${key}`,
): Record<string, string> {
  const container = find(objects, 'Deployment', deployment).spec.template.spec.containers[0];
  const env: Record<string, string> = {};
  for (const from of container.envFrom ?? [])
    Object.assign(env, find(objects, 'ConfigMap', from.configMapRef.name).data);
  for (const e of container.env ?? []) {
    if (e.value !== undefined) {
      env[e.name] = e.value;
      continue;
    }
    const ref = e.valueFrom.secretKeyRef as { name: string; key: string };
    const secret = objects.find((o) => o.kind === 'Secret' && o.metadata.name === ref.name) as Loose | undefined;
    env[e.name] = secret ? Buffer.from(secret.data[ref.key], 'base64').toString('utf8') : external(ref.name, ref.key);
  }
  return env;
}

/** A named container port of a Deployment's container, as a Service's named targetPort reaches it. */
export interface ContainerPort {
  readonly name: string;
  readonly containerPort: number;
}

/**
 * Where a Service's port leads, as kube-proxy resolves it: the Deployment whose pods the Service selects,
 * and the container port its targetPort names. Throws when the chain is broken (no such port or pod).
 */
export function serviceTarget(objects: readonly Manifest[], service: string, portName: string): ContainerPort {
  const svc = find(objects, 'Service', service);
  const port = (svc.spec.ports as { name: string; targetPort: string | number }[]).find((p) => p.name === portName);
  if (!port) throw new Error(`Service ${service} has no port ${portName}`);
  const selects = (labels: Record<string, string>) =>
    Object.entries(svc.spec.selector as Record<string, string>).every(([k, v]) => labels[k] === v);
  const pods = objects.filter((o) => o.kind === 'Deployment' && selects((o as Loose).spec.template.metadata.labels));
  if (pods.length !== 1) throw new Error(`Service ${service} selects ${pods.length} Deployments`);
  const ports = (pods[0] as Loose).spec.template.spec.containers[0].ports as ContainerPort[];
  const target = ports.find((p) =>
    typeof port.targetPort === 'string' ? p.name === port.targetPort : p.containerPort === port.targetPort,
  );
  if (!target)
    throw new Error(`Service ${service} port ${portName} targets ${port.targetPort}, which no container port is`);
  return { name: target.name, containerPort: target.containerPort };
}

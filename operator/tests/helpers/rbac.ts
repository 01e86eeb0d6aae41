/**
 * The chart's RBAC against what the operator really asked of the API server: each request in the fake API
 * server's log becomes the authorization attributes a real API server checks (API group, resource and
 * subresource, verb, namespace), and each must be allowed by the rules `helm template` renders for the
 * operator's ServiceAccount: the ClusterRole (or, with watchNamespace, the Role there) and the leader
 * election Role in the release's namespace.
 */
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { helm } from '../../src/builders/testing/helm.js';
import { ROOT } from '../../src/builders/testing/validate.js';
import type { RecordedRequest } from '../fake-apiserver.js';

export const RELEASE_NAMESPACE = 'federizer-system';

export interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
}

export interface Attributes {
  group: string;
  /** With its subresource, as RBAC names it: `maildomains/status`. */
  resource: string;
  verb: string;
  namespace?: string;
}

/** What a request asks for, or undefined for discovery (allowed to every authenticated user). */
export function attributesOf(request: RecordedRequest): Attributes[] | undefined {
  const parts = request.path.split('/').filter((p) => p !== '');
  let rest: string[];
  let group: string;
  if (parts[0] === 'api' && parts.length > 2) {
    group = '';
    rest = parts.slice(2);
  } else if (parts[0] === 'apis' && parts.length > 3) {
    group = parts[1]!;
    rest = parts.slice(3);
  } else return undefined;
  let namespace: string | undefined;
  if (rest[0] === 'namespaces' && rest.length > 2) {
    namespace = rest[1];
    rest = rest.slice(2);
  }
  const [plural, name, subresource] = rest;
  const resource = subresource ? `${plural}/${subresource}` : plural!;
  const named = name !== undefined;
  const verb = {
    GET: named ? 'get' : request.query.watch === '1' || request.query.watch === 'true' ? 'watch' : 'list',
    POST: 'create',
    PUT: 'update',
    PATCH: 'patch',
    DELETE: named ? 'delete' : 'deletecollection',
  }[request.method];
  if (verb === undefined) throw new Error(`no RBAC verb for ${request.method}`);
  const attributes: Attributes[] = [{ group, resource, verb, ...(namespace ? { namespace } : {}) }];
  // A server-side apply that creates the object is also checked as a create.
  if (request.method === 'PATCH' && request.status === 201)
    attributes.push({ group, resource, verb: 'create', ...(namespace ? { namespace } : {}) });
  return attributes;
}

interface RoleDoc {
  kind: string;
  metadata: { name: string; namespace?: string };
  rules: Rule[];
}

/** The operator's rules from `helm template`, each with the namespace it applies in (undefined: all). */
export async function chartRules(...set: string[]): Promise<{ namespace?: string; rules: Rule[] }[]> {
  const args = ['template', 'fz', join(ROOT, 'charts/federizer'), '--namespace', RELEASE_NAMESPACE];
  if (set.length > 0) args.push('--set', set.join(','));
  const result = await helm(args);
  if (result.code !== 0) throw new Error(`helm template: ${result.stderr}`);
  return parseAllDocuments(result.stdout)
    .map((d) => d.toJS() as RoleDoc | null)
    .filter((d): d is RoleDoc => d !== null && (d.kind === 'ClusterRole' || d.kind === 'Role'))
    .map((d) => ({ ...(d.kind === 'Role' ? { namespace: d.metadata.namespace } : {}), rules: d.rules }));
}

export function allows(roles: { namespace?: string; rules: Rule[] }[], a: Attributes): boolean {
  return roles.some(
    (role) =>
      (role.namespace === undefined || role.namespace === a.namespace) &&
      role.rules.some(
        (r) => r.apiGroups.includes(a.group) && r.resources.includes(a.resource) && r.verbs.includes(a.verb),
      ),
  );
}

/** Every request of the log that the chart's RBAC would refuse, described; empty when all are allowed. */
export async function rbacViolations(requests: readonly RecordedRequest[], ...set: string[]): Promise<string[]> {
  const roles = await chartRules(...set);
  const refused = new Set<string>();
  for (const request of requests)
    for (const a of attributesOf(request) ?? [])
      if (!allows(roles, a))
        refused.add(`${a.verb} ${a.group || 'core'}/${a.resource} in ${a.namespace ?? '(all namespaces)'}`);
  return [...refused].sort();
}

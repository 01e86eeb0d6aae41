/**
 * One reconcile of a MailUser: the user exists in its domain's Authorization Server as the MailUser declares
 * it. What is sent is the plan of `buildMailUser` (operator/src/builders/mail-user.ts), the one place that
 * turns a MailUser and its MailDomain into AS admin API calls: the in-cluster AS URL, where the admin token
 * and the password are, and the bodies, the domain's `forwarding.defaultPolicy` included.
 *
 * The user lives outside the cluster, in the AS database, so a MailUser carries the finalizer
 * `federizer.io/user` from before its user is created: deleting the MailUser, even while the operator is down,
 * deletes the user from the AS first, and only then lets the MailUser go. When the MailDomain is gone or being
 * deleted too, the finalizer is simply removed: the domain's AS goes with it.
 */
import type { Logger } from '@federizer/common';
import { buildMailUser, type AdminCall, type MailUserPlan } from '../builders/index.js';
import {
  InvalidResourceError,
  validateMailDomain,
  validateMailUser,
  type MailDomain,
  type MailUser,
} from '../model.js';
import { findCondition, mergeConditions, type DesiredCondition } from './conditions.js';
import type { EventRecorder } from './events.js';
import { isStatus, type KubeClient, type ObjectRef } from './kube-client.js';
import { sameJson } from './same-json.js';
import { API_VERSION, USER_FINALIZER, type MailDomainObject, type MailUserObject, type SecretObject } from './types.js';

export type HttpFetch = (url: string, init: RequestInit) => Promise<Response>;

export interface MailUserReconcilerOptions {
  client: KubeClient;
  events: EventRecorder;
  logger: Logger;
  now?: () => number;
  /** Default: global fetch. Tests route the in-cluster URL to a real AS on loopback. */
  fetch?: HttpFetch;
}

/** The AS answered with an error; `code` is its `error` member (user_exists, weak_password, ...). */
export class AdminApiError extends Error {
  override readonly name = 'AdminApiError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** The address a MailUser names, lowercase, or undefined (the CRD requires one; this only finds its domain). */
export function mailUserAddress(mu: MailUserObject): string | undefined {
  const address = str(mu.spec?.address)?.trim().toLowerCase();
  return address && /^[^@\s]+@[^@\s]+$/.test(address) ? address : undefined;
}

function secretValue(secret: SecretObject, key: string): string | undefined {
  const data = secret.data?.[key];
  // `kubectl create secret --from-file` keeps the file's final newline; nobody means it as part of a password.
  if (data !== undefined)
    return Buffer.from(data, 'base64')
      .toString('utf8')
      .replace(/\r?\n$/, '');
  return secret.stringData?.[key];
}

function refOf(mu: MailUserObject): ObjectRef {
  return { apiVersion: API_VERSION, kind: 'MailUser', namespace: mu.metadata!.namespace!, name: mu.metadata!.name! };
}

type Outcome = { requeueAfterMs?: number };

export class MailUserReconciler {
  readonly #o: MailUserReconcilerOptions;
  readonly #fetch: HttpFetch;
  readonly #now: () => number;

  constructor(options: MailUserReconcilerOptions) {
    this.#o = options;
    this.#fetch = options.fetch ?? ((url, init) => fetch(url, init));
    this.#now = options.now ?? Date.now;
  }

  async reconcile(namespace: string, name: string): Promise<Outcome> {
    const mu = await this.#o.client.get<MailUserObject>({ apiVersion: API_VERSION, kind: 'MailUser', namespace, name });
    if (!mu) return {};
    if (mu.metadata?.deletionTimestamp) return this.#finalize(mu);

    let user: MailUser;
    try {
      user = validateMailUser(mu);
    } catch (e) {
      if (!(e instanceof InvalidResourceError)) throw e;
      await this.#status(mu, { status: 'False', reason: 'InvalidSpec', message: e.message });
      return {};
    }
    const address = user.spec.address.toLowerCase();
    const domain = address.slice(address.lastIndexOf('@') + 1);
    const found = await this.#domainOf(namespace, domain);
    if (!found) {
      await this.#status(mu, {
        status: 'False',
        reason: 'DomainNotFound',
        message: `no MailDomain in ${namespace} serves ${domain}`,
      });
      return { requeueAfterMs: 60_000 };
    }
    let md: MailDomain;
    try {
      md = validateMailDomain(found);
    } catch (e) {
      if (!(e instanceof InvalidResourceError)) throw e;
      await this.#status(mu, {
        status: 'False',
        reason: 'DomainInvalid',
        message: `MailDomain ${found.metadata?.name} is invalid (see its status)`,
      });
      return { requeueAfterMs: 60_000 };
    }
    if (findCondition(found.status?.conditions, 'AuthServerReady')?.status !== 'True') {
      await this.#status(mu, {
        status: 'False',
        reason: 'AuthServerNotReady',
        message: `waiting for the Authorization Server of ${md.metadata.name}`,
      });
      return { requeueAfterMs: 15_000 };
    }

    // The plan says where the password is before its value is known.
    const where = buildMailUser(user, md, '').password;
    const secret = await this.#o.client.get<SecretObject>({
      apiVersion: 'v1',
      kind: 'Secret',
      namespace,
      name: where.secretName,
    });
    const password = secret && secretValue(secret, where.key);
    if (!password) {
      await this.#status(mu, {
        status: 'False',
        reason: 'PasswordSecretMissing',
        message: `Secret ${where.secretName} with key ${where.key} not found`,
      });
      return { requeueAfterMs: 60_000 };
    }
    const secretVersion = secret!.metadata!.resourceVersion!;
    const plan = buildMailUser(user, md, password);
    const token = await this.#adminToken(namespace, plan);
    if (token === undefined) {
      await this.#status(mu, {
        status: 'False',
        reason: 'AdminTokenMissing',
        message: `Secret ${plan.adminToken.secretName} with key ${plan.adminToken.key} not found`,
      });
      return { requeueAfterMs: 30_000 };
    }

    // From here on the user may exist in the AS: deleting the MailUser must delete it there first.
    let current = mu;
    const finalizers = mu.metadata?.finalizers ?? [];
    if (!finalizers.includes(USER_FINALIZER)) current = await this.#setFinalizers(mu, [...finalizers, USER_FINALIZER]);

    try {
      const read: AdminCall = { method: 'GET' as AdminCall['method'], path: plan.update.path };
      let existing = await this.#send(plan, token, read, { allow: [404] });
      let version = str(current.status?.passwordSecretVersion);
      if (existing === undefined) {
        try {
          existing = await this.#send(plan, token, plan.create);
          version = secretVersion;
          await this.#o.events.record(current, 'Normal', 'UserCreated', 'Create', `${address} created in the AS`);
        } catch (e) {
          // Created meanwhile (by hand, or by a reconcile that stopped before its status write): it is updated below.
          if (!(e instanceof AdminApiError && e.status === 409)) throw e;
          existing = await this.#send(plan, token, read);
        }
      }
      // The update is the whole desired state (creation takes no `disabled`): sent when the AS differs from it.
      const body = plan.update.body ?? {};
      if (Object.entries(body).some(([k, v]) => existing?.[k] !== v)) await this.#send(plan, token, plan.update);
      if (version !== secretVersion) {
        await this.#send(plan, token, plan.setPassword);
        version = secretVersion;
        await this.#o.events.record(current, 'Normal', 'PasswordSet', 'Update', `password of ${address} set`);
      }
      await this.#status(
        current,
        { status: 'True', reason: 'Provisioned', message: `${address} exists in the Authorization Server` },
        { address, passwordSecretVersion: version },
      );
      return {};
    } catch (e) {
      if (e instanceof AdminApiError && e.status >= 400 && e.status < 500 && e.status !== 429) {
        // The AS refused the values (weak_password, wrong_domain, ...): fixed by editing the spec, not by retrying.
        await this.#status(current, { status: 'False', reason: 'Rejected', message: e.message });
        await this.#o.events.record(current, 'Warning', 'Rejected', 'Reconcile', e.message);
        return {};
      }
      await this.#status(current, { status: 'False', reason: 'AdminAPIUnavailable', message: (e as Error).message });
      throw e;
    }
  }

  async #domainOf(namespace: string, domain: string): Promise<MailDomainObject | undefined> {
    const domains = await this.#o.client.list<MailDomainObject>(API_VERSION, 'MailDomain', namespace);
    return domains.items.find((d) => str(d.spec?.domain)?.toLowerCase() === domain);
  }

  async #adminToken(namespace: string, plan: MailUserPlan): Promise<string | undefined> {
    const { secretName, key } = plan.adminToken;
    const secret = await this.#o.client.get<SecretObject>({
      apiVersion: 'v1',
      kind: 'Secret',
      namespace,
      name: secretName,
    });
    return (secret && secretValue(secret, key)) || undefined;
  }

  /** Sends one call of the plan; statuses in `allow` answer undefined instead of throwing. */
  async #send(
    plan: MailUserPlan,
    token: string,
    call: AdminCall,
    options: { allow?: number[] } = {},
  ): Promise<Record<string, unknown> | undefined> {
    const res = await this.#fetch(`${plan.adminUrl}${call.path}`, {
      method: call.method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(call.body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(call.body === undefined ? {} : { body: JSON.stringify(call.body) }),
      signal: AbortSignal.timeout(15_000),
    });
    const text = await res.text();
    let json: Record<string, unknown> | undefined;
    try {
      json = text === '' ? undefined : (JSON.parse(text) as Record<string, unknown>);
    } catch {
      json = undefined;
    }
    if (res.ok) return json ?? {};
    if (options.allow?.includes(res.status)) return undefined;
    throw new AdminApiError(
      res.status,
      str(json?.error) ?? String(res.status),
      `${call.method} ${call.path}: ${res.status} ${str(json?.error) ?? ''} ${str(json?.error_description) ?? text.slice(0, 200)}`.trim(),
    );
  }

  async #setFinalizers(mu: MailUserObject, finalizers: string[]): Promise<MailUserObject> {
    // The resourceVersion makes this a compare-and-swap: a concurrent change answers 409 and is retried.
    return this.#o.client.mergePatch<MailUserObject>(refOf(mu), {
      metadata: { finalizers, resourceVersion: mu.metadata?.resourceVersion },
    });
  }

  async #finalize(mu: MailUserObject): Promise<Outcome> {
    const finalizers = mu.metadata?.finalizers ?? [];
    if (!finalizers.includes(USER_FINALIZER)) return {};
    const namespace = mu.metadata!.namespace!;
    const address = mailUserAddress(mu);
    const domain = address?.slice(address.lastIndexOf('@') + 1);
    const found = domain === undefined ? undefined : await this.#domainOf(namespace, domain);
    if (found && !found.metadata?.deletionTimestamp) {
      // The finalizer is added only to a MailUser and a MailDomain that were valid, and both are immutable where it matters.
      const plan = buildMailUser(mu as unknown as MailUser, found as unknown as MailDomain, '');
      try {
        const token = await this.#adminToken(namespace, plan);
        if (token === undefined) throw new Error(`Secret ${plan.adminToken.secretName} has no admin token`);
        await this.#send(plan, token, plan.remove, { allow: [404] });
      } catch (e) {
        await this.#o.events.record(mu, 'Warning', 'UserDeleteFailed', 'Delete', (e as Error).message);
        throw e;
      }
      await this.#o.events.record(mu, 'Normal', 'UserDeleted', 'Delete', `${address} deleted from the AS`);
      this.#o.logger.info({ address }, 'user deleted from the AS');
    } else {
      this.#o.logger.info({ address }, 'the MailDomain of a deleted MailUser is gone: nothing to delete in its AS');
    }
    try {
      await this.#setFinalizers(
        mu,
        finalizers.filter((f) => f !== USER_FINALIZER),
      );
    } catch (e) {
      if (!isStatus(e, 404)) throw e;
    }
    return {};
  }

  async #status(
    mu: MailUserObject,
    ready: Omit<DesiredCondition, 'type'>,
    extra: Record<string, unknown> = {},
  ): Promise<void> {
    const generation = mu.metadata?.generation;
    const conditions = mergeConditions(mu.status?.conditions, [{ type: 'Ready', ...ready }], generation, this.#now());
    const status = { ...extra, observedGeneration: generation, conditions };
    const before = { ...mu.status };
    if (sameJson({ ...before, ...status }, before)) return;
    await this.#o.client.mergePatch(
      refOf(mu),
      { metadata: { resourceVersion: mu.metadata?.resourceVersion }, status },
      'status',
    );
  }
}

/**
 * MailUser in, AS admin API calls out (openapi/auth.openapi.json, services/auth/src/admin.ts). The runtime
 * reads the password from the MailUser's Secret and the admin token from the domain's, then makes the calls:
 * `create` when the user is new (a 409 means it exists), then `update` when the AS differs from it (the full
 * desired state, so it is idempotent and also applies `disabled`, which creation does not take), `setPassword`
 * when the password Secret's resourceVersion differs from status.passwordSecretVersion, and `remove` when the
 * MailUser is deleted (operator/src/runtime/mailuser-reconciler.ts, behind the finalizer federizer.io/user).
 */
import { withDefaults, type MailDomain, type MailUser } from '../model.js';
import { authServiceUrl, names } from './meta.js';
import { SECRET_KEYS } from './secrets.js';

export interface AdminCall {
  readonly method: 'POST' | 'PATCH' | 'PUT' | 'DELETE';
  /** Relative to `adminUrl`. */
  readonly path: string;
  readonly body?: Record<string, unknown>;
}

export interface MailUserPlan {
  /** The AS Service inside the cluster (plain http on the cluster network; the admin API is under /admin/v1). */
  readonly adminUrl: string;
  /** Where the bearer token of the admin API is. */
  readonly adminToken: { readonly secretName: string; readonly key: string };
  /** Where the password is. */
  readonly password: { readonly secretName: string; readonly key: string };
  readonly create: AdminCall;
  readonly update: AdminCall;
  readonly setPassword: AdminCall;
  readonly remove: AdminCall;
}

/** Whether a MailUser belongs to a MailDomain: same namespace, and its address is in the domain. */
export function belongsTo(mu: MailUser, md: MailDomain): boolean {
  const address = mu.spec.address.toLowerCase();
  return (
    (mu.metadata.namespace ?? 'default') === (md.metadata.namespace ?? 'default') &&
    address.slice(address.lastIndexOf('@') + 1) === md.spec.domain
  );
}

/** `password` is the value read from the password Secret. */
export function buildMailUser(mu: MailUser, md: MailDomain, password: string): MailUserPlan {
  if (!belongsTo(mu, md))
    throw new TypeError(
      `MailUser ${mu.spec.address} does not belong to MailDomain ${md.metadata.name} (${md.spec.domain})`,
    );
  const domain = withDefaults(md);
  const address = mu.spec.address.toLowerCase();
  const user = `/admin/v1/users/${encodeURIComponent(address)}`;
  const forwardingPolicy = mu.spec.forwardingPolicy ?? domain.spec.forwarding.defaultPolicy;
  const quota = mu.spec.sendQuotaPerDay !== undefined ? { sendQuotaPerDay: mu.spec.sendQuotaPerDay } : {};
  return {
    adminUrl: authServiceUrl(domain),
    adminToken: { secretName: names(domain).adminToken, key: SECRET_KEYS.adminToken },
    password: { secretName: mu.spec.passwordSecretRef.name, key: mu.spec.passwordSecretRef.key ?? 'password' },
    create: {
      method: 'POST',
      path: '/admin/v1/users',
      body: {
        address,
        password,
        ...(mu.spec.displayName !== undefined ? { displayName: mu.spec.displayName } : {}),
        forwardingPolicy,
        ...quota,
      },
    },
    update: {
      method: 'PATCH',
      path: user,
      body: {
        // The AS stores an empty display name when none is given; say so, so that removing it from the spec clears it.
        displayName: mu.spec.displayName ?? '',
        forwardingPolicy,
        ...quota,
        disabled: mu.spec.disabled ?? false,
      },
    },
    setPassword: { method: 'PUT', path: `${user}/password`, body: { password } },
    remove: { method: 'DELETE', path: user },
  };
}

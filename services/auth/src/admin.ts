/**
 * The admin API: users (create, read, update, disable, delete, password) and signing keys (list, rotate).
 * Authenticated by a bearer secret compared in constant time. Storage errors carry codes; they become
 * HTTP answers here, once.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { KeyRing } from './keys.js';
import { UserStoreError, type User, type UserStore } from './storage/users.js';

export interface AdminDeps {
  readonly users: UserStore;
  readonly keys: () => KeyRing;
  readonly adminToken: string;
  /** Makes a new signing key current and returns its kid (the service also rebuilds the provider). */
  readonly rotateKeys: () => Promise<string>;
}

const STATUS: Record<UserStoreError['code'], number> = {
  user_exists: 409,
  user_not_found: 404,
  invalid_address: 400,
  wrong_domain: 400,
  weak_password: 400,
  invalid_policy: 400,
  invalid_quota: 400,
};

export function userJson(user: User) {
  return {
    address: user.address,
    displayName: user.displayName,
    forwardingPolicy: user.forwardingPolicy,
    sendQuotaPerDay: user.sendQuotaPerDay,
    disabled: user.disabled,
    createdAt: user.createdAt.toISOString(),
    updatedAt: user.updatedAt.toISOString(),
  };
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

function problem(res: Response, status: number, error: string, description: string): void {
  res.status(status).json({ error, error_description: description });
}

const ALLOWED_UPDATE = new Set(['displayName', 'forwardingPolicy', 'sendQuotaPerDay', 'disabled']);

export function adminRouter(deps: AdminDeps): Router {
  const router = express.Router();
  const expected = digest(deps.adminToken);

  router.use((req, res, next) => {
    const header = req.get('authorization') ?? '';
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    // Hash both sides so the comparison takes the same time whatever the length of the guess.
    if (!m || !timingSafeEqual(digest(m[1]!), expected)) {
      // RFC 6750 §3.1: a presented but wrong token is invalid_token; no token at all carries no error code.
      res.set(
        'WWW-Authenticate',
        m ? 'Bearer realm="federizer-admin", error="invalid_token"' : 'Bearer realm="federizer-admin"',
      );
      return problem(res, 401, 'invalid_token', 'the admin API needs Authorization: Bearer <admin token>');
    }
    next();
  });
  router.use(express.json({ limit: '16kb' }));

  router.get('/users', async (req, res) => {
    const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > 1000)
      return problem(res, 400, 'invalid_request', 'limit is an integer from 1 to 1000');
    const after = typeof req.query.after === 'string' ? req.query.after : undefined;
    const users = await deps.users.list({ after, limit });
    res.json({ users: users.map(userJson), next: users.length === limit ? users.at(-1)!.address : null });
  });

  router.post('/users', async (req, res) => {
    const { address, displayName, password, forwardingPolicy, sendQuotaPerDay } = (req.body ?? {}) as Record<
      string,
      unknown
    >;
    if (typeof address !== 'string' || typeof password !== 'string')
      return problem(res, 400, 'invalid_request', 'address and password are required strings');
    const user = await deps.users.create({
      address,
      password,
      displayName: typeof displayName === 'string' ? displayName : undefined,
      forwardingPolicy: forwardingPolicy as User['forwardingPolicy'] | undefined,
      sendQuotaPerDay: sendQuotaPerDay as number | undefined,
    });
    res
      .status(201)
      .location(`${req.baseUrl}/users/${encodeURIComponent(user.address)}`)
      .json(userJson(user));
  });

  router.get('/users/:address', async (req, res) => {
    const user = await deps.users.get(req.params.address);
    if (user === undefined) return problem(res, 404, 'user_not_found', `no user ${req.params.address}`);
    res.json(userJson(user));
  });

  router.patch('/users/:address', async (req, res) => {
    const changes = (req.body ?? {}) as Record<string, unknown>;
    const unknown = Object.keys(changes).filter((k) => !ALLOWED_UPDATE.has(k));
    if (unknown.length > 0) return problem(res, 400, 'invalid_request', `cannot change ${unknown.join(', ')} here`);
    res.json(userJson(await deps.users.update(req.params.address, changes)));
  });

  router.put('/users/:address/password', async (req, res) => {
    const password = (req.body as { password?: unknown } | undefined)?.password;
    if (typeof password !== 'string') return problem(res, 400, 'invalid_request', 'password is a required string');
    await deps.users.setPassword(req.params.address, password);
    res.status(204).end();
  });

  router.delete('/users/:address', async (req, res) => {
    await deps.users.delete(req.params.address);
    res.status(204).end();
  });

  router.get('/keys', (_req, res) => {
    const ring = deps.keys();
    res.json({
      keys: ring.keys.map((k) => ({
        kid: k.kid,
        alg: k.alg,
        current: k.kid === ring.current.kid,
        activatedAt: new Date(k.activatedAt).toISOString(),
        retiredAt: k.retiredAt === null ? null : new Date(k.retiredAt).toISOString(),
      })),
    });
  });

  router.post('/keys/rotate', async (_req, res) => {
    res.json({ kid: await deps.rotateKeys() });
  });

  router.use((_req, res) => problem(res, 404, 'not_found', 'no such admin resource'));

  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (err instanceof UserStoreError) return problem(res, STATUS[err.code], err.code, err.message);
    // Caller mistakes the store reports as TypeErrors (a wrong type or length of a field) are bad requests.
    if (err instanceof TypeError) return problem(res, 400, 'invalid_request', err.message);
    if ((err as { type?: string }).type === 'entity.parse.failed')
      return problem(res, 400, 'invalid_request', 'the body is not JSON');
    if ((err as { type?: string }).type === 'entity.too.large')
      return problem(res, 413, 'invalid_request', 'the body is too large');
    next(err);
  });
  return router;
}

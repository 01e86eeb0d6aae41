/**
 * The sign-in interaction (oidc-provider's `interactions.url`): our own pages, since devInteractions are
 * off. First-party clients skip consent (their grant is made in `loadExistingGrant`). Login attempts are
 * throttled per account and per client address, with exponential backoff, and each form carries a CSRF
 * token bound to its interaction, on top of the interaction cookie being SameSite=Lax.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import express, { type Request, type Response, type Router } from 'express';
import type Provider from 'oidc-provider';
import { accountThrottleKey, ipThrottleKey, type LoginThrottle } from './storage/throttle.js';
import type { UserStore } from './storage/users.js';
import { PAGE_CSP, errorPage, loginPage } from './pages.js';

export interface InteractionDeps {
  readonly provider: () => Provider;
  readonly users: UserStore;
  readonly throttle: LoginThrottle;
  readonly domain: string;
  readonly csrfKey: string;
  readonly clientNames: Readonly<Record<string, string>>;
  /** Clients of the domain itself (webmail, CLI): what they ask for is granted without a consent page. */
  readonly firstParty: ReadonlySet<string>;
  readonly now: () => number;
  readonly onLogin?: (outcome: 'success' | 'failure' | 'throttled') => void;
}

function csrfToken(key: string, uid: string): string {
  return createHmac('sha256', key).update(`interaction:${uid}`).digest('base64url');
}

function csrfValid(key: string, uid: string, token: unknown): boolean {
  if (typeof token !== 'string') return false;
  const expected = Buffer.from(csrfToken(key, uid));
  const given = Buffer.from(token);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** Grants a first-party client what the consent prompt says is missing, and returns the grant's id. */
async function grantAll(
  provider: Provider,
  details: Awaited<ReturnType<Provider['interactionDetails']>>,
): Promise<string> {
  const { Grant } = provider;
  const grant = details.grantId
    ? await Grant.find(details.grantId)
    : new Grant({ accountId: details.session!.accountId, clientId: String(details.params.client_id) });
  const missing = details.prompt.details as {
    missingOIDCScope?: string[];
    missingOIDCClaims?: string[];
    missingResourceScopes?: Record<string, string[]>;
  };
  if (missing.missingOIDCScope) grant!.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant!.addOIDCClaims(missing.missingOIDCClaims);
  for (const [resource, scopes] of Object.entries(missing.missingResourceScopes ?? {}))
    grant!.addResourceScope(resource, scopes.join(' '));
  return grant!.save();
}

function send(res: Response, status: number, body: string): void {
  res
    .status(status)
    .set({
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Security-Policy': PAGE_CSP,
      'Cache-Control': 'no-store',
    })
    .send(body);
}

export function interactionRouter(deps: InteractionDeps): Router {
  const router = express.Router();
  const form = express.urlencoded({ extended: false, limit: '8kb', parameterLimit: 10 });

  const renderLogin = (
    req: Request,
    res: Response,
    status: number,
    uid: string,
    clientId: string,
    extra: { address?: string; error?: string } = {},
  ) =>
    send(
      res,
      status,
      loginPage({
        action: `${req.baseUrl}/${uid}/login`,
        domain: deps.domain,
        clientName: deps.clientNames[clientId] ?? clientId,
        csrf: csrfToken(deps.csrfKey, uid),
        ...extra,
      }),
    );

  router.get('/:uid', async (req, res, next) => {
    try {
      const provider = deps.provider();
      const details = await provider.interactionDetails(req, res);
      if (details.uid !== req.params.uid)
        return send(res, 400, errorPage('invalid_request', 'this sign-in link belongs to another session'));
      const clientId = String(details.params.client_id);
      if (details.prompt.name === 'login') return renderLogin(req, res, 200, details.uid, clientId);
      if (details.prompt.name === 'consent' && deps.firstParty.has(clientId)) {
        return provider.interactionFinished(
          req,
          res,
          { consent: { grantId: await grantAll(provider, details) } },
          { mergeWithLastSubmission: true },
        );
      }
      // Consent is never asked of anyone: only first-party clients are registered here.
      return provider.interactionFinished(
        req,
        res,
        { error: 'access_denied', error_description: `${clientId} is not a first-party client of ${deps.domain}` },
        { mergeWithLastSubmission: false },
      );
    } catch (e) {
      next(e);
    }
  });

  router.post('/:uid/login', form, async (req, res, next) => {
    try {
      const provider = deps.provider();
      const details = await provider.interactionDetails(req, res);
      const uid = details.uid;
      const clientId = String(details.params.client_id);
      if (uid !== req.params.uid || !csrfValid(deps.csrfKey, uid, req.body?.csrf)) {
        return send(
          res,
          403,
          errorPage(
            'invalid_request',
            'the sign-in form expired or came from elsewhere; start again from your mail app',
          ),
        );
      }
      if (details.prompt.name !== 'login')
        return send(res, 400, errorPage('invalid_request', 'this sign-in is already complete'));
      const address = typeof req.body.address === 'string' ? req.body.address.trim().toLowerCase() : '';
      const password = typeof req.body.password === 'string' ? req.body.password : '';
      // The form is novalidate: an empty or absurd address is just a failed attempt, counted for the client
      // address only (there is no account to count it against).
      const plausible = address.length >= 3 && address.length <= 254 && address.includes('@');
      const accountKey = plausible ? [accountThrottleKey(address)] : [];
      // The client address first: an address that must wait touches no account's counter.
      const keys = [ipThrottleKey(req.ip ?? 'unknown'), ...accountKey];
      // Reserved (counted as a failure) before the password is checked, in one statement per key, so that
      // parallel guesses cannot all pass a check made before any of them was counted.
      const gate = await deps.throttle.reserve(keys, new Date(deps.now()));
      if (!gate.allowed) {
        deps.onLogin?.('throttled');
        res.set('Retry-After', String(gate.retryAfterSeconds));
        return renderLogin(req, res, 429, uid, clientId, {
          address,
          error: `Too many attempts. Try again in ${gate.retryAfterSeconds} seconds.`,
        });
      }
      let user: Awaited<ReturnType<UserStore['verifyPassword']>>;
      try {
        user = plausible && password !== '' ? await deps.users.verifyPassword(address, password) : undefined;
      } catch (e) {
        // Nothing was decided about the password: the attempt does not count.
        await deps.throttle.release(gate).catch(() => undefined);
        throw e;
      }
      if (user === undefined) {
        // The reservation stays: it is this failure.
        deps.onLogin?.('failure');
        return renderLogin(req, res, 401, uid, clientId, {
          address,
          error: 'The email address or password is not right.',
        });
      }
      // A success does not count against the client address; the account's counter is cleared. Not the
      // address's: clearing it would let one valid account reset it between guesses at others.
      await deps.throttle.release(gate);
      await deps.throttle.recordSuccess(accountKey);
      deps.onLogin?.('success');
      return provider.interactionFinished(
        req,
        res,
        { login: { accountId: user.address } },
        { mergeWithLastSubmission: false },
      );
    } catch (e) {
      next(e);
    }
  });

  router.post('/:uid/abort', form, async (req, res, next) => {
    try {
      const provider = deps.provider();
      const details = await provider.interactionDetails(req, res);
      if (details.uid !== req.params.uid || !csrfValid(deps.csrfKey, details.uid, req.body?.csrf)) {
        return send(res, 403, errorPage('invalid_request', 'the form expired or came from elsewhere'));
      }
      return provider.interactionFinished(
        req,
        res,
        { error: 'access_denied', error_description: 'the user cancelled the sign-in' },
        { mergeWithLastSubmission: false },
      );
    } catch (e) {
      next(e);
    }
  });

  // A missing or expired interaction cookie is the common case here: say so in words, not a stack.
  router.use(
    (
      err: Error & { error?: string; error_description?: string; status?: number },
      _req: Request,
      res: Response,
      next: (e?: unknown) => void,
    ) => {
      if (res.headersSent) return next(err);
      if (err.error !== undefined)
        return send(
          res,
          err.status ?? 400,
          errorPage(err.error, err.error_description ?? 'the sign-in session expired; start again from your mail app'),
        );
      return next(err);
    },
  );
  return router;
}

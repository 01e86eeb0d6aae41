/**
 * The oidc-provider instance: clients from configuration, JWT access tokens for the mailbox resource,
 * DPoP, PKCE, rotating refresh tokens, our own login pages (devInteractions off), and the token exchange.
 * It is rebuilt when the signing keys change (provider keystores are fixed at construction); everything
 * it stores lives in the database, so a rebuilt provider carries on where the old one stopped.
 */
import { createHash } from 'node:crypto';
import type { ClientMetadata, Configuration, KoaContextWithOIDC } from 'oidc-provider';
import Provider, { errors, interactionPolicy } from 'oidc-provider';
import type { ReplayStore } from '@federizer/protocol';
import type { AuthConfig, AuthSecrets } from './config.js';
import { EXCHANGE_PARAMS, TOKEN_EXCHANGE, tokenExchangeHandler, type ExchangeDeps } from './exchange.js';
import type { KeyRing } from './keys.js';
import { keepPromiseHooksOff } from './promise-hooks.js';
import type { KnexAdapter } from './storage/adapter.js';
import type { UserStore } from './storage/users.js';

/** Scopes the first-party clients may ask for; `mailbox` is the client API of the domain's mailbox. */
export const SCOPES = ['openid', 'offline_access', 'email', 'profile', 'mailbox'] as const;

export interface ProviderDeps {
  readonly config: AuthConfig;
  readonly secrets: AuthSecrets;
  readonly keys: KeyRing;
  readonly users: UserStore;
  readonly adapter: (name: string) => KnexAdapter;
  readonly exchange: Omit<ExchangeDeps, 'keys' | 'config'>;
  readonly renderError: NonNullable<Configuration['renderError']>;
  readonly logoutSource: NonNullable<
    NonNullable<NonNullable<Configuration['features']>['rpInitiatedLogout']>['logoutSource']
  >;
  readonly postLogoutSuccessSource: NonNullable<
    NonNullable<NonNullable<Configuration['features']>['rpInitiatedLogout']>['postLogoutSuccessSource']
  >;
  /** The path of the issuer URL (`/as1` for `https://example.com/as1`), where our own routes are mounted too. */
  readonly basePath: string;
}

export function clientsOf(config: AuthConfig, secrets: AuthSecrets): ClientMetadata[] {
  const userClient = {
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    scope: SCOPES.join(' '),
    id_token_signed_response_alg: config.signingAlg,
  } as const;
  const mta = {
    client_id: config.mta.clientId,
    grant_types: [TOKEN_EXCHANGE],
    response_types: [],
    redirect_uris: [],
    scope: 'internet_mail',
    ...(config.mta.jwks
      ? {
          token_endpoint_auth_method: 'private_key_jwt',
          jwks: { keys: [...config.mta.jwks.keys] },
          token_endpoint_auth_signing_alg: config.mta.jwks.keys[0]?.alg,
        }
      : { token_endpoint_auth_method: 'client_secret_basic', client_secret: secrets.mtaClientSecret }),
  } as ClientMetadata;
  const clients: ClientMetadata[] = [
    mta,
    {
      ...userClient,
      client_id: config.cli.clientId,
      application_type: 'native',
      redirect_uris: [...config.cli.redirectUris],
    },
  ];
  if (config.webmail.redirectUris.length > 0) {
    clients.push({
      ...userClient,
      client_id: config.webmail.clientId,
      application_type: 'web',
      redirect_uris: [...config.webmail.redirectUris],
      post_logout_redirect_uris: [...config.webmail.postLogoutRedirectUris],
    });
  }
  return clients;
}

export function createProvider(deps: ProviderDeps): Provider {
  const { config, secrets } = deps;
  const firstParty = new Set([config.webmail.clientId, config.cli.clientId]);
  keepPromiseHooksOff();
  const provider = new Provider(config.issuer, {
    adapter: deps.adapter as unknown as Configuration['adapter'],
    clients: clientsOf(config, secrets),
    jwks: { keys: deps.keys.keys.map((k) => ({ ...k.privateJwk })) } as Configuration['jwks'],
    cookies: {
      keys: [...secrets.cookieKeys],
      long: { signed: true, httpOnly: true, sameSite: 'lax', secure: !config.dev },
      short: { signed: true, httpOnly: true, sameSite: 'lax', secure: !config.dev },
    },
    clientDefaults: {
      id_token_signed_response_alg: config.signingAlg,
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
    // RFC 8414 metadata lists what is accepted: client secrets only in development mode (PROTOCOL §4.4).
    clientAuthMethods: config.dev ? ['none', 'private_key_jwt', 'client_secret_basic'] : ['none', 'private_key_jwt'],
    enabledJWA: {
      idTokenSigningAlgValues: ['ES256', 'EdDSA', 'RS256'],
      clientAuthSigningAlgValues: ['ES256', 'EdDSA', 'RS256'],
      dPoPSigningAlgValues: ['ES256', 'EdDSA', 'RS256'],
    },
    scopes: [...SCOPES, 'internet_mail'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    responseTypes: ['code'],
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      dPoP: { enabled: true },
      // RFC 7009 §2.1: a client revokes only the tokens issued to it.
      revocation: { enabled: true, allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId },
      introspection: { enabled: false },
      userinfo: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: deps.logoutSource,
        postLogoutSuccessSource: deps.postLogoutSuccessSource,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => config.mailboxResource,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => {
          if (resource !== config.mailboxResource) throw new errors.InvalidTarget(`unknown resource ${resource}`);
          return {
            scope: 'mailbox',
            audience: config.mailboxResource,
            accessTokenTTL: config.userAccessTokenSeconds,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: config.signingAlg } },
          };
        },
      },
    },
    ttl: {
      AccessToken: config.userAccessTokenSeconds,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 30 * 24 * 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 30 * 24 * 3600,
    },
    // Public clients in a browser: every refresh rotates the token; reuse of a rotated one revokes the grant.
    rotateRefreshToken: () => true,
    // JWT access tokens are not stored, so they carry their grant: the token exchange checks it still stands.
    extraTokenClaims: async (_ctx, token) =>
      token.kind === 'AccessToken' && token.grantId ? { gid: token.grantId } : undefined,
    issueRefreshToken: async (_ctx, client, code) =>
      client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
    // The signed-in user is the session's account; an account that was disabled or deleted since is gone.
    findAccount: async (_ctx, sub) => {
      const user = await deps.users.get(sub);
      if (user === undefined || user.disabled) return undefined;
      return {
        accountId: user.address,
        claims: async () => ({ sub: user.address, email: user.address, email_verified: true, name: user.displayName }),
      };
    },
    interactions: {
      url: (_ctx, interaction) => `${deps.basePath}/interaction/${interaction.uid}`,
      policy: loginPolicy(deps.users),
    },
    // First-party clients need no consent screen: the grant is created on the fly in the interaction.
    loadExistingGrant: async (ctx: KoaContextWithOIDC) => {
      const grantId = ctx.oidc.result?.consent?.grantId ?? ctx.oidc.session!.grantIdFor(ctx.oidc.client!.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      if (!firstParty.has(ctx.oidc.client!.clientId) || ctx.oidc.session?.accountId === undefined) return undefined;
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client!.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(SCOPES.filter((s) => s !== 'mailbox').join(' '));
      grant.addResourceScope(config.mailboxResource, 'mailbox');
      await grant.save();
      return grant;
    },
    renderError: deps.renderError,
    // RFC 7523 §3: what oidc-provider leaves open about client assertions (private_key_jwt).
    assertJwtClientAuthClaimsAndHeader: (_ctx, claims) =>
      assertClientAssertionClaims(claims, {
        issuer: config.issuer,
        tokenEndpoint: `${config.issuer}/token`,
        now: Math.floor(Date.now() / 1000),
      }),
    clientBasedCORS: (_ctx, origin) => config.corsOrigins.includes(origin),
  });
  // The provider reads the scheme, host and client address from X-Forwarded-Proto/Host/For, which the service
  // sets in front of it to the issuer's scheme and host and to the client address it decided on (service.ts,
  // `seenAtIssuer`): whatever a caller sends, the URLs the provider builds are the issuer's.
  provider.proxy = true;
  provider.use(unauthorizedClientForGrantType);
  recordReplaysIn(provider, deps.exchange.replay);
  // A handler per provider: the users' tokens it has verified are forgotten when the keys change (VerifiedTokens).
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    tokenExchangeHandler({ ...deps.exchange, config, keys: () => deps.keys }),
    [...EXCHANGE_PARAMS],
    [],
  );
  return provider;
}

/** The longest a client assertion may be used: its `exp` at most this long after now and after its `iat`. */
export const CLIENT_ASSERTION_MAX_SECONDS = 300;
/** How far ahead of this server's clock a client assertion's `iat` may be (oidc-provider's clockTolerance). */
const CLIENT_ASSERTION_SKEW_SECONDS = 15;

/** `invalid_client` (401) whose `error_description` says what is wrong with the client assertion. */
export class ClientAssertionRefused extends errors.InvalidClientAuth {
  constructor(description: string) {
    super(description);
    this.error_description = `client assertion: ${description}`;
  }
}

/**
 * The checks of a client assertion (RFC 7523 §3) that oidc-provider does not make, run after it verified
 * the signature, `iss`, `sub`, `jti`, and that `exp` is present and not past:
 * - item 3: `aud` is this AS, named by its issuer identifier or its token endpoint URL, as a string or an
 *   array of that one value. oidc-provider also accepts the URL of the endpoint called, and an array naming
 *   anything else besides, which would let an assertion made for another server be replayed here;
 * - item 4 (`exp` limits the time window) and item 6 (`iat`): `iat` is required and not ahead of the clock,
 *   and `exp` lies after `iat`, at most CLIENT_ASSERTION_MAX_SECONDS after it and after now. A client
 *   assertion otherwise could be made to serve for a year.
 */
export function assertClientAssertionClaims(
  claims: Readonly<Record<string, unknown>>,
  expected: { readonly issuer: string; readonly tokenEndpoint: string; readonly now: number },
): void {
  const accepted = [expected.issuer, expected.tokenEndpoint];
  const { aud, iat, exp } = claims;
  const single = Array.isArray(aud) && aud.length === 1 ? (aud[0] as unknown) : aud;
  if (typeof single !== 'string' || !accepted.includes(single)) {
    throw new ClientAssertionRefused(
      `aud must be ${expected.issuer} or ${expected.tokenEndpoint} (a string, or an array of that one value), not ${JSON.stringify(aud)}`,
    );
  }
  if (typeof iat !== 'number' || !Number.isFinite(iat))
    throw new ClientAssertionRefused('iat (a NumericDate, the time it was made) is required');
  if (iat > expected.now + CLIENT_ASSERTION_SKEW_SECONDS)
    throw new ClientAssertionRefused(`iat ${iat} is in the future (now ${expected.now})`);
  if (typeof exp !== 'number' || exp <= iat)
    throw new ClientAssertionRefused(`exp ${String(exp)} is not after iat ${iat}`);
  if (exp - iat > CLIENT_ASSERTION_MAX_SECONDS || exp - expected.now > CLIENT_ASSERTION_MAX_SECONDS) {
    throw new ClientAssertionRefused(
      `exp ${exp} is more than ${CLIENT_ASSERTION_MAX_SECONDS} s after iat ${iat} or after now (${expected.now}); make a new assertion for each request`,
    );
  }
}

/** What oidc-provider says when a client asks for a grant type it is not registered for. */
const GRANT_TYPE_NOT_ALLOWED = 'requested grant type is not allowed for this client';

/**
 * RFC 6749 §5.2: a client that is "not authorized to use this authorization grant type" is answered
 * `unauthorized_client`; oidc-provider 9 says `invalid_request` with GRANT_TYPE_NOT_ALLOWED. Exactly that
 * answer of the token endpoint is renamed, after the provider rendered it (status 400 either way).
 */
async function unauthorizedClientForGrantType(ctx: KoaContextWithOIDC, next: () => Promise<unknown>): Promise<void> {
  await next();
  const body = ctx.body as { error?: unknown; error_description?: unknown } | undefined;
  if (
    ctx.oidc?.route === 'token' &&
    body !== null &&
    typeof body === 'object' &&
    body.error === 'invalid_request' &&
    body.error_description === GRANT_TYPE_NOT_ALLOWED
  ) {
    body.error = 'unauthorized_client';
  }
}

/** The OAuth error code the token endpoint answers for `err` (the name `unauthorizedClientForGrantType` gives). */
export function tokenErrorCode(err: { error?: string; error_description?: string }): string | undefined {
  return err.error === 'invalid_request' && err.error_description === GRANT_TYPE_NOT_ALLOWED
    ? 'unauthorized_client'
    : err.error;
}

/**
 * The key under which a jti that oidc-provider must see only once is recorded in the replay table: the
 * same SHA-256 of `iss` and `jti` the provider's own ReplayDetection model uses as its id (so migration
 * 0002 could carry the records it had made over), in a namespace of its own beside the DPoP proofs of the
 * token exchange.
 */
export function providerReplayKey(iss: string, jti: string): string {
  return `oidc:${createHash('sha256').update(`${iss}${jti}`).digest('base64url')}`;
}

/**
 * oidc-provider checks client assertion jti values (RFC 7523 §3) and the DPoP proofs of its own grants
 * with `ReplayDetection.unique`, a find then a save through the adapter: two round trips, and not atomic,
 * so two requests carrying the same assertion at the same moment can both pass the find. Here the one
 * atomic insert-if-absent of the replay table decides instead, as it does for the token exchange's DPoP
 * proofs: exactly one of several concurrent uses wins, on every replica and after a restart.
 */
function recordReplaysIn(provider: Provider, replay: ReplayStore): void {
  provider.ReplayDetection.unique = (iss: string, jti: string, exp: number) =>
    replay.checkAndRecord(providerReplayKey(iss, jti), Math.ceil(exp));
}

/**
 * oidc-provider's default prompts, with one more reason to sign in again: the session's account was
 * disabled or deleted since. Without it the session keeps its accountId, findAccount finds nothing, and
 * the consent step fails on the missing grant instead of asking who is there.
 */
function loginPolicy(users: UserStore): ReturnType<typeof interactionPolicy.base> {
  const policy = interactionPolicy.base();
  policy.get('login')!.checks.add(
    new interactionPolicy.Check(
      'account_inactive',
      'the signed-in account was disabled or deleted',
      async (ctx: KoaContextWithOIDC) => {
        const accountId = ctx.oidc.session?.accountId;
        if (accountId === undefined) return interactionPolicy.Check.NO_NEED_TO_PROMPT;
        const user = await users.get(accountId);
        return user === undefined || user.disabled
          ? interactionPolicy.Check.REQUEST_PROMPT
          : interactionPolicy.Check.NO_NEED_TO_PROMPT;
      },
    ),
  );
  return policy;
}

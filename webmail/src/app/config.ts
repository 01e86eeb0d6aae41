/**
 * The runtime configuration: the server that serves the webmail for a domain answers `GET /config.json`
 * on the webmail's own origin, so one build serves every domain.
 */

export interface WebmailConfig {
  readonly domain: string;
  /** The domain's Authorization Server (its RFC 8414 issuer identifier). */
  readonly issuer: string;
  readonly clientId: string;
  /** Origin of the domain's mailbox; the client API is at `mailboxUrl + "/api/v1"`. */
  readonly mailboxUrl: string;
  readonly redirectUri: string;
  readonly postLogoutRedirectUri: string;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

const URL_FIELDS = ['issuer', 'mailboxUrl', 'redirectUri', 'postLogoutRedirectUri'] as const;

/** Checks the shape of config.json and says which member is wrong. */
export function parseConfig(value: unknown): WebmailConfig {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new ConfigError('config.json must be a JSON object');
  const v = value as Record<string, unknown>;
  const text = (name: string): string => {
    const member = v[name];
    if (typeof member !== 'string' || member === '') throw new ConfigError(`config.json: ${name} must be a string`);
    return member;
  };
  for (const name of URL_FIELDS) {
    const member = text(name);
    let url: URL;
    try {
      url = new URL(member);
    } catch {
      throw new ConfigError(`config.json: ${name} is not an absolute URL: ${JSON.stringify(member)}`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:')
      throw new ConfigError(`config.json: ${name} must be an http(s) URL: ${member}`);
  }
  return {
    domain: text('domain').toLowerCase(),
    issuer: text('issuer'),
    clientId: text('clientId'),
    // Paths are appended to it: no trailing slash.
    mailboxUrl: text('mailboxUrl').replace(/\/+$/, ''),
    redirectUri: text('redirectUri'),
    postLogoutRedirectUri: text('postLogoutRedirectUri'),
  };
}

export async function loadConfig(fetchFn: typeof fetch = fetch, url = '/config.json'): Promise<WebmailConfig> {
  const res = await fetchFn(url, { headers: { accept: 'application/json' } });
  if (!res.ok) throw new ConfigError(`${url} answered HTTP ${res.status}`);
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    throw new ConfigError(`${url} is not JSON`);
  }
  return parseConfig(body);
}

/** The resource indicator of the mailbox's client API (RFC 8707): the `aud` of the access tokens. */
export function apiBase(config: Pick<WebmailConfig, 'mailboxUrl'>): string {
  return `${config.mailboxUrl}/api/v1`;
}

import type { JWK, JWSHeaderParameters } from 'jose';
import { importPublicJwk, selectJwk, type JwsAlg } from './jwt.js';
import { ProtocolError } from './errors.js';
import type { TrustResolver, VerificationKey } from './trust.js';

/** One SRV resource record (RFC 2782); `name` is the target host. */
export interface SrvRecord {
  name: string;
  port: number;
  priority: number;
  weight: number;
}

/** An SRV RRset; `ttl` is the smallest TTL of the set, in seconds. */
export interface SrvAnswer {
  records: SrvRecord[];
  ttl?: number;
}

/** Throws when the name does not exist; an empty `records` also means there is none. */
export type SrvResolver = (name: string) => Promise<SrvAnswer>;

/** The subset of WHATWG `fetch` that discovery needs. */
export type HttpGet = (
  url: string,
  init: { redirect: 'manual'; headers: Record<string, string>; signal?: AbortSignal },
) => Promise<Response>;

export interface AuthorizationServerInfo {
  /** Exactly as the RFC 8414 document writes it: it is compared byte for byte with `iss`. */
  issuer: string;
  metadata: Record<string, unknown>;
  /** `https://<target>:<port>` of the SRV target that answered (default port left out). */
  baseUrl: string;
}

/** PROTOCOL.md §8: the document at `/.well-known/federizer` of a mailbox. */
export interface MailboxMetadata {
  domain: string;
  authorization_server: string;
  mta_client_id: string;
  resource: string;
  transfer_endpoint: string;
  fetch_endpoint: string;
  api: string;
  webmail: string;
  max_resource_size: number;
}

export interface DiscoveryOptions {
  resolveSrv: SrvResolver;
  httpGet: HttpGet;
  /** Milliseconds since the epoch. */
  now?: () => number;
  /** Uniform in [0, 1). */
  random?: () => number;
  /** Development mode: `http://` base URLs, redirects and metadata URLs are allowed. */
  allowHttp?: boolean;
  maxTtlSeconds?: number;
  /** Used when the SRV answer carries no TTL. */
  defaultTtlSeconds?: number;
  negativeTtlSeconds?: number;
  /**
   * How long a failure that may pass at any moment is cached (a target refusing connections or timing
   * out, a 5xx, a DNS server failure): default negativeTtlSeconds. A few seconds keep a blip from turning
   * into half a minute of refusals while still sparing a domain that is down.
   */
  transientNegativeTtlSeconds?: number;
  jwksMinRefetchSeconds?: number;
  /** For one DNS lookup, and for one target's whole exchange (redirects and body included). */
  timeoutMs?: number;
}

const MAX_REDIRECTS = 3;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const MAX_DOCUMENT_BYTES = 1024 * 1024;
const AS_PATH = '/.well-known/oauth-authorization-server';
const MAILBOX_PATH = '/.well-known/federizer';
const ACCEPT_JSON = { Accept: 'application/json' };
/** Node's dns error codes that say "try again later" rather than "this name has no records". */
const TRANSIENT_DNS_CODES = new Set(['ETIMEOUT', 'ESERVFAIL', 'ECONNREFUSED', 'EREFUSED', 'ECANCELLED']);

// ---------------------------------------------------------------------------------------------------
// Names and SRV ordering

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** Lower-cased, without the trailing dot; undefined unless every label is LDH and the name fits DNS. */
function normalizeHostname(name: string): string | undefined {
  const host = name.toLowerCase().replace(/\.$/, '');
  if (host.length === 0 || host.length > 253) return undefined;
  return host.split('.').every((label) => LABEL.test(label)) ? host : undefined;
}

function normalizeDomain(domain: string): string {
  const host = normalizeHostname(domain);
  if (host === undefined) {
    throw new ProtocolError('discovery_failed', `${JSON.stringify(domain)}: not a valid domain name`);
  }
  return host;
}

/** PROTOCOL.md §8: the SRV owner name that leads to a domain's authorization server or mailbox. */
export function srvName(kind: 'as' | 'rs', domain: string): string {
  return `_federizer._${kind}._tcp.${normalizeDomain(domain)}`;
}

/** RFC 2782: a lone record whose target is the root means the service is decidedly not available. */
function isServiceRefused(records: readonly SrvRecord[]): boolean {
  return records.length === 1 && (records[0]!.name === '.' || records[0]!.name === '');
}

/** The RFC 2782 order in which targets are tried: by priority, then weighted random within a priority. */
export function orderSrv(records: readonly SrvRecord[], random: () => number = Math.random): SrvRecord[] {
  if (isServiceRefused(records)) {
    throw new ProtocolError('discovery_no_records', 'SRV target ".": service decidedly not available');
  }
  const byPriority = [...records].sort((a, b) => a.priority - b.priority);
  const ordered: SrvRecord[] = [];
  for (let start = 0; start < byPriority.length;) {
    const priority = byPriority[start]!.priority;
    let end = start;
    while (end < byPriority.length && byPriority[end]!.priority === priority) end++;
    ordered.push(...orderByWeight(byPriority.slice(start, end), random));
    start = end;
  }
  return ordered;
}

function weightOf(record: SrvRecord): number {
  return Number.isFinite(record.weight) && record.weight > 0 ? record.weight : 0;
}

function orderByWeight(group: SrvRecord[], random: () => number): SrvRecord[] {
  // RFC 2782 puts the weight-0 records first so that they keep a (tiny) chance of being chosen early.
  const pending = [...group.filter((r) => weightOf(r) === 0), ...group.filter((r) => weightOf(r) > 0)];
  const ordered: SrvRecord[] = [];
  while (pending.length > 1) ordered.push(...pending.splice(pickWeighted(pending, random()), 1));
  return [...ordered, ...pending];
}

/**
 * The running-sum selection of RFC 2782, with a continuous draw in [0, sum]: weights 1 and 3 give exactly
 * 25 % and 75 %, and a weight-0 record is picked only on a draw of exactly 0 or once no weight is left.
 */
function pickWeighted(pending: readonly SrvRecord[], draw: number): number {
  const total = pending.reduce((sum, r) => sum + weightOf(r), 0);
  const target = Math.min(Math.max(Number.isFinite(draw) ? draw : 0, 0), 1) * total;
  let running = 0;
  for (let i = 0; i < pending.length; i++) {
    running += weightOf(pending[i]!);
    if (running >= target) return i;
  }
  return pending.length - 1;
}

// ---------------------------------------------------------------------------------------------------
// Caching

interface Loaded<T> {
  value: T;
  ttlSeconds: number;
}

interface Entry<T> {
  promise: Promise<T>;
  /** Infinity while in flight, so that concurrent callers share it. */
  expiresAt: number;
}

/**
 * Settled promises kept for their TTL: a success for the answer's TTL, a failure for the negative TTL
 * (the shorter transient one for a network failure).
 */
class TtlCache<T> {
  readonly #entries = new Map<string, Entry<T>>();
  readonly #now: () => number;
  readonly #negativeTtlMs: number;
  readonly #transientNegativeTtlMs: number;

  constructor(now: () => number, negativeTtlMs: number, transientNegativeTtlMs: number = negativeTtlMs) {
    this.#now = now;
    this.#negativeTtlMs = negativeTtlMs;
    this.#transientNegativeTtlMs = Math.min(transientNegativeTtlMs, negativeTtlMs);
  }

  get(key: string, load: () => Promise<Loaded<T>>): Promise<T> {
    const hit = this.#entries.get(key);
    if (hit !== undefined && this.#now() < hit.expiresAt) return hit.promise;
    return this.#start(key, load).promise;
  }

  /** Loads again even when cached; a failed reload leaves the previous entry in place. */
  refresh(key: string, load: () => Promise<Loaded<T>>): Promise<T> {
    const previous = this.#entries.get(key);
    if (previous?.expiresAt === Infinity) return previous.promise;
    const entry = this.#start(key, load);
    return entry.promise.catch((error: unknown) => {
      // A failed refetch must not take away keys that still verify.
      if (previous !== undefined && this.#entries.get(key) === entry) this.#entries.set(key, previous);
      throw error;
    });
  }

  #start(key: string, load: () => Promise<Loaded<T>>): Entry<T> {
    this.#sweep();
    const entry = { expiresAt: Infinity } as Entry<T>;
    entry.promise = load().then(
      (loaded) => {
        entry.expiresAt = this.#now() + Math.max(0, loaded.ttlSeconds) * 1000;
        return loaded.value;
      },
      (error: unknown) => {
        entry.expiresAt = this.#now() + (isTransient(error) ? this.#transientNegativeTtlMs : this.#negativeTtlMs);
        throw error;
      },
    );
    this.#entries.set(key, entry);
    return entry;
  }

  /** Keeps a long-running resolver from holding every name it ever saw. */
  #sweep(): void {
    if (this.#entries.size < 1024) return;
    const now = this.#now();
    for (const [key, entry] of this.#entries) if (entry.expiresAt <= now) this.#entries.delete(key);
  }
}

// ---------------------------------------------------------------------------------------------------
// HTTP

interface Deadline {
  readonly signal: AbortSignal;
  readonly expired: boolean;
  race<T>(promise: Promise<T>): Promise<T>;
  dispose(): void;
}

/** Races every step against one timer, so that an HttpGet that ignores its signal cannot hang discovery. */
function startDeadline(ms: number): Deadline {
  const controller = new AbortController();
  const expiry = new Promise<never>((_, reject) => {
    controller.signal.addEventListener('abort', () => reject(controller.signal.reason), { once: true });
  });
  expiry.catch(() => undefined);
  const timer = setTimeout(() => controller.abort(new Error(`timed out after ${ms} ms`)), ms);
  return {
    signal: controller.signal,
    get expired() {
      return controller.signal.aborted;
    },
    race: (promise) => Promise.race([promise, expiry]),
    dispose: () => clearTimeout(timer),
  };
}

/** Failures after which the next SRV target is tried: network errors, timeouts, 5xx. */
const transientErrors = new WeakSet<object>();

function transient(error: ProtocolError): ProtocolError {
  transientErrors.add(error);
  return error;
}

/** Failures where the request got no HTTP answer at all (refused, reset, not HTTP), before any time-out. */
const unanswered = new WeakSet<object>();

function isTransient(error: unknown): error is ProtocolError {
  return error instanceof ProtocolError && transientErrors.has(error);
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function parseUrl(value: string, base?: string): URL | undefined {
  try {
    return new URL(value, base);
  } catch {
    return undefined;
  }
}

function discardBody(response: Response): void {
  response.body?.cancel().catch(() => undefined);
}

async function readLimited(response: Response, url: string): Promise<Uint8Array> {
  if (Number(response.headers.get('content-length')) > MAX_DOCUMENT_BYTES) throw tooLarge(url);
  if (response.body === null) return new Uint8Array();
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
    size += chunk.value.byteLength;
    if (size > MAX_DOCUMENT_BYTES) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge(url);
    }
    chunks.push(chunk.value);
  }
  return Buffer.concat(chunks);
}

function tooLarge(url: string): ProtocolError {
  return new ProtocolError('discovery_invalid_metadata', `${url}: document larger than ${MAX_DOCUMENT_BYTES} bytes`);
}

function parseJson(bytes: Uint8Array, url: string): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (cause) {
    throw new ProtocolError('discovery_invalid_metadata', `${url}: not a JSON document`, { cause });
  }
}

/** 200 passes; 5xx lets the caller try another target; anything else is the final answer. */
function checkStatus(url: string, response: Response): Response {
  if (response.status === 200) return response;
  discardBody(response);
  const error = new ProtocolError('discovery_failed', `${url}: HTTP ${response.status}`);
  throw response.status >= 500 ? transient(error) : error;
}

// ---------------------------------------------------------------------------------------------------
// Document validation

function invalidField(url: string, field: string, problem: string): ProtocolError {
  return new ProtocolError('discovery_invalid_metadata', `${url}: "${field}" ${problem}`);
}

function requireObject(document: unknown, url: string): Record<string, unknown> {
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new ProtocolError('discovery_invalid_metadata', `${url}: not a JSON object`);
  }
  return document as Record<string, unknown>;
}

function stringField(doc: Record<string, unknown>, field: string, url: string): string {
  const value = doc[field];
  if (typeof value !== 'string' || value.length === 0) throw invalidField(url, field, 'must be a non-empty string');
  return value;
}

function urlProblem(value: string, allowHttp: boolean): string | undefined {
  const parsed = parseUrl(value);
  if (parsed === undefined) return 'must be an absolute URL';
  if (parsed.protocol !== 'https:' && !(allowHttp && parsed.protocol === 'http:')) {
    return allowHttp ? 'must be an https or http URL' : 'must be an https URL';
  }
  if (parsed.username !== '' || parsed.password !== '') return 'must not carry credentials';
  if (value.includes('#')) return 'must not have a fragment';
  return undefined;
}

function urlField(doc: Record<string, unknown>, field: string, url: string, allowHttp: boolean): string {
  const value = stringField(doc, field, url);
  const problem = urlProblem(value, allowHttp);
  if (problem !== undefined) throw invalidField(url, field, problem);
  return value;
}

/**
 * §8: the metadata's `issuer` is authoritative, wherever it points: SRV targets, redirects and hosting (one AS
 * for many domains, an issuer with a path) make RFC 8414 §3.3's rule (the issuer is the URL the metadata was
 * fetched under) inapplicable. A domain claiming another's issuer gains nothing: `keyFor` takes the keys of
 * the JWKS that the verified domain's own metadata names, never an issuer-wide table.
 */
function issuerField(doc: Record<string, unknown>, url: string, allowHttp: boolean): string {
  const issuer = urlField(doc, 'issuer', url, allowHttp);
  if (issuer.includes('?')) throw invalidField(url, 'issuer', 'must not have a query');
  return issuer;
}

interface AsDocument {
  issuer: string;
  jwksUri: string;
  metadata: Record<string, unknown>;
}

function checkAsMetadata(document: unknown, url: string, allowHttp: boolean): AsDocument {
  const metadata = requireObject(document, url);
  const issuer = issuerField(metadata, url, allowHttp);
  const jwksUri = urlField(metadata, 'jwks_uri', url, allowHttp);
  urlField(metadata, 'token_endpoint', url, allowHttp);
  return { issuer, jwksUri, metadata };
}

function checkMailbox(document: unknown, url: string, domain: string, allowHttp: boolean): MailboxMetadata {
  const doc = requireObject(document, url);
  const link = (field: string): string => urlField(doc, field, url, allowHttp);
  const declared = stringField(doc, 'domain', url);
  if (normalizeHostname(declared) !== domain) {
    throw invalidField(url, 'domain', `is ${JSON.stringify(declared)}, not the domain asked for (${domain})`);
  }
  const size = doc.max_resource_size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw invalidField(url, 'max_resource_size', 'must be a non-negative safe integer');
  }
  return {
    domain,
    authorization_server: link('authorization_server'),
    mta_client_id: stringField(doc, 'mta_client_id', url),
    resource: link('resource'),
    transfer_endpoint: link('transfer_endpoint'),
    fetch_endpoint: link('fetch_endpoint'),
    api: link('api'),
    webmail: link('webmail'),
    max_resource_size: size,
  };
}

/** RFC 7517 §5: members that are not JWKs at all are skipped rather than failing the whole set. */
function checkJwks(document: unknown, url: string): JWK[] {
  const keys = requireObject(document, url).keys;
  if (!Array.isArray(keys)) throw invalidField(url, 'keys', 'must be an array of JWKs');
  return keys.filter((k): k is JWK => typeof k === 'object' && k !== null && typeof k.kty === 'string');
}

// ---------------------------------------------------------------------------------------------------
// Discovery

interface Discovered {
  baseUrl: string;
  /** Where the document finally came from, after redirects. */
  url: string;
  document: unknown;
  ttlSeconds: number;
}

/** What a domain's AS metadata says about its keys. */
interface KeySource {
  issuer: string;
  jwksUri: string;
  ttlSeconds: number;
}

/** PROTOCOL.md §8 through injected DNS and HTTP; the TrustResolver the verifiers of §5–§7 use in production. */
export class Discovery implements TrustResolver {
  readonly #resolveSrv: SrvResolver;
  readonly #httpGet: HttpGet;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #allowHttp: boolean;
  readonly #maxTtlSeconds: number;
  readonly #defaultTtlSeconds: number;
  readonly #jwksMinRefetchMs: number;
  readonly #timeoutMs: number;
  readonly #servers: TtlCache<AuthorizationServerInfo>;
  readonly #mailboxes: TtlCache<MailboxMetadata>;
  readonly #jwks: TtlCache<JWK[]>;
  /** Per domain, the issuer and JWKS its latest AS lookup found (`keyFor` reads the domain's own). */
  readonly #keySources = new Map<string, KeySource>();
  readonly #jwksFetchedAt = new Map<string, number>();
  readonly #imported = new Map<string, Promise<VerificationKey>>();

  constructor(options: DiscoveryOptions) {
    this.#resolveSrv = options.resolveSrv;
    this.#httpGet = options.httpGet;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#allowHttp = options.allowHttp ?? false;
    this.#maxTtlSeconds = options.maxTtlSeconds ?? 3600;
    this.#defaultTtlSeconds = options.defaultTtlSeconds ?? 300;
    this.#jwksMinRefetchMs = (options.jwksMinRefetchSeconds ?? 60) * 1000;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    const negativeTtlMs = (options.negativeTtlSeconds ?? 30) * 1000;
    const transientMs = (options.transientNegativeTtlSeconds ?? options.negativeTtlSeconds ?? 30) * 1000;
    this.#servers = new TtlCache(this.#now, negativeTtlMs, transientMs);
    this.#mailboxes = new TtlCache(this.#now, negativeTtlMs, transientMs);
    this.#jwks = new TtlCache(this.#now, negativeTtlMs, transientMs);
  }

  /** §8: the RFC 8414 metadata that `_federizer._as._tcp.<domain>` leads to. */
  async authorizationServer(domain: string): Promise<AuthorizationServerInfo> {
    const name = srvName('as', domain);
    return this.#servers.get(name, async () => {
      const found = await this.#discover(name, AS_PATH);
      const { issuer, jwksUri, metadata } = checkAsMetadata(found.document, found.url, this.#allowHttp);
      this.#keySources.set(normalizeDomain(domain), { issuer, jwksUri, ttlSeconds: found.ttlSeconds });
      return { value: { issuer, metadata, baseUrl: found.baseUrl }, ttlSeconds: found.ttlSeconds };
    });
  }

  /** §8: the mailbox document that `_federizer._rs._tcp.<domain>` leads to. */
  async mailbox(domain: string): Promise<MailboxMetadata> {
    const host = normalizeDomain(domain);
    const name = srvName('rs', host);
    return this.#mailboxes.get(name, async () => {
      const found = await this.#discover(name, MAILBOX_PATH);
      return { value: checkMailbox(found.document, found.url, host, this.#allowHttp), ttlSeconds: found.ttlSeconds };
    });
  }

  async issuerFor(domain: string): Promise<string> {
    return (await this.authorizationServer(domain)).issuer;
  }

  async mtaClientIdFor(domain: string): Promise<string> {
    return (await this.mailbox(domain)).mta_client_id;
  }

  /**
   * §5.4: from the JWKS that `domain`'s AS metadata names, whose `issuer` must be `issuer`; one refetch a
   * minute on an unknown kid. Keys are looked up per domain: the same issuer claimed by another domain's
   * metadata (with another JWKS) never lends its keys to this one.
   */
  async keyFor(issuer: string, header: JWSHeaderParameters, domain: string): Promise<VerificationKey> {
    const found = await this.authorizationServer(domain);
    const source = this.#keySources.get(normalizeDomain(domain));
    if (found.issuer !== issuer || source === undefined || source.issuer !== issuer) {
      throw new ProtocolError('issuer_mismatch', `${issuer}: not the issuer ${srvName('as', domain)} leads to`);
    }
    // The JWKS is cached by its URL: several domains hosted on one AS share it.
    const cacheKey = source.jwksUri;
    const load = (): Promise<Loaded<JWK[]>> => this.#loadJwks(source);
    let jwk = selectJwk(await this.#jwks.get(cacheKey, load), header);
    if (jwk === undefined && this.#mayRefetchJwks(source.jwksUri)) {
      jwk = selectJwk(await this.#jwks.refresh(cacheKey, load), header);
    }
    if (jwk === undefined || header.alg === undefined) {
      const kid = header.kid === undefined ? 'no kid' : `kid ${JSON.stringify(header.kid)}`;
      const alg = header.alg ?? 'no alg';
      throw new ProtocolError('unknown_key', `${source.jwksUri}: no single ${alg} signing key for ${kid}`);
    }
    return this.#importOnce(jwk, header.alg);
  }

  #mayRefetchJwks(jwksUri: string): boolean {
    const last = this.#jwksFetchedAt.get(jwksUri);
    return last === undefined || this.#now() - last >= this.#jwksMinRefetchMs;
  }

  async #loadJwks(source: KeySource): Promise<Loaded<JWK[]>> {
    // Counted at the attempt, not the success: a failing JWKS endpoint is not hammered either.
    this.#jwksFetchedAt.set(source.jwksUri, this.#now());
    const { url, document } = await this.#fetchJson(source.jwksUri);
    return { value: checkJwks(document, url), ttlSeconds: source.ttlSeconds };
  }

  #importOnce(jwk: JWK, alg: string): Promise<VerificationKey> {
    // The alg is part of the identity: WebCrypto binds an imported RSA key to RS256 or PS256.
    const id = `${alg}\n${JSON.stringify(jwk)}`;
    let key = this.#imported.get(id);
    if (key === undefined) {
      if (this.#imported.size >= 1024) this.#imported.clear();
      key = importPublicJwk(jwk, alg as JwsAlg, 'discovery_invalid_metadata');
      this.#imported.set(id, key);
      key.catch(() => this.#imported.delete(id));
    }
    return key;
  }

  /** Tries the SRV targets in RFC 2782 order until one answers; only transient failures move on. */
  async #discover(name: string, path: string): Promise<Discovered> {
    const answer = await this.#resolve(name);
    const ttlSeconds = this.#ttlSeconds(answer.ttl);
    const failures: ProtocolError[] = [];
    for (const record of orderSrv(answer.records, this.#random)) {
      try {
        let baseUrl = this.#baseUrl(name, record);
        try {
          return { baseUrl, ttlSeconds, ...(await this.#fetchJson(baseUrl + path)) };
        } catch (error) {
          // Development mode allows http, it does not require it: a target that refused the plain connection
          // (it speaks TLS) is asked again over https. A time-out or an HTTP answer is not retried.
          if (!this.#allowHttp || !unanswered.has(error as object)) throw error;
          baseUrl = `https${baseUrl.slice('http'.length)}`;
          return { baseUrl, ttlSeconds, ...(await this.#fetchJson(baseUrl + path)) };
        }
      } catch (error) {
        if (!isTransient(error)) throw error;
        failures.push(error);
      }
    }
    const why = failures.map((f) => f.message).join('; ');
    throw transient(
      new ProtocolError('discovery_failed', `${name}: no target answered: ${why}`, { cause: failures.at(-1) }),
    );
  }

  async #resolve(name: string): Promise<SrvAnswer> {
    const deadline = startDeadline(this.#timeoutMs);
    let answer: SrvAnswer;
    try {
      answer = await deadline.race(Promise.resolve().then(() => this.#resolveSrv(name)));
    } catch (cause) {
      throw dnsFailure(name, cause, deadline.expired);
    } finally {
      deadline.dispose();
    }
    if (answer.records.length === 0) throw new ProtocolError('discovery_no_records', `${name}: no SRV records`);
    if (isServiceRefused(answer.records)) {
      throw new ProtocolError('discovery_no_records', `${name}: service decidedly not available (SRV target ".")`);
    }
    return answer;
  }

  #ttlSeconds(ttl: number | undefined): number {
    const seconds = ttl !== undefined && Number.isFinite(ttl) ? ttl : this.#defaultTtlSeconds;
    return Math.min(Math.max(seconds, 0), this.#maxTtlSeconds);
  }

  /** An unusable target is skipped like an unreachable one: the other records may still be fine. */
  #baseUrl(name: string, record: SrvRecord): string {
    const host = normalizeHostname(record.name);
    if (host === undefined || !Number.isInteger(record.port) || record.port < 1 || record.port > 65535) {
      const target = `${JSON.stringify(record.name)} port ${record.port}`;
      throw transient(new ProtocolError('discovery_failed', `${name}: SRV target ${target} is not usable`));
    }
    return new URL(`${this.#allowHttp ? 'http' : 'https'}://${host}:${record.port}`).origin;
  }

  /** One GET with the §8 redirect rules, under one deadline that also covers the body. */
  async #fetchJson(startUrl: string): Promise<{ url: string; document: unknown }> {
    const deadline = startDeadline(this.#timeoutMs);
    try {
      const { url, response } = await this.#follow(startUrl, deadline);
      return { url, document: parseJson(await this.#read(url, response, deadline), url) };
    } finally {
      deadline.dispose();
    }
  }

  async #follow(startUrl: string, deadline: Deadline): Promise<{ url: string; response: Response }> {
    let url = startUrl;
    for (let redirects = 0; ; redirects++) {
      const response = await this.#get(url, deadline);
      if (!REDIRECT_STATUSES.has(response.status)) return { url, response: checkStatus(url, response) };
      discardBody(response);
      if (redirects === MAX_REDIRECTS) {
        const message = `${startUrl}: more than ${MAX_REDIRECTS} redirects (the last one from ${url})`;
        throw new ProtocolError('discovery_too_many_redirects', message);
      }
      url = this.#redirectTarget(url, response);
    }
  }

  async #get(url: string, deadline: Deadline): Promise<Response> {
    const init = { redirect: 'manual' as const, headers: { ...ACCEPT_JSON }, signal: deadline.signal };
    try {
      return await deadline.race(Promise.resolve().then(() => this.#httpGet(url, init)));
    } catch (cause) {
      const why = deadline.expired ? `timed out after ${this.#timeoutMs} ms` : messageOf(cause);
      const error = transient(new ProtocolError('discovery_failed', `${url}: ${why}`, { cause }));
      if (!deadline.expired) unanswered.add(error);
      throw error;
    }
  }

  async #read(url: string, response: Response, deadline: Deadline): Promise<Uint8Array> {
    try {
      return await deadline.race(readLimited(response, url));
    } catch (cause) {
      if (cause instanceof ProtocolError) throw cause;
      const why = deadline.expired ? `timed out after ${this.#timeoutMs} ms` : messageOf(cause);
      throw transient(new ProtocolError('discovery_failed', `${url}: reading the body: ${why}`, { cause }));
    }
  }

  #redirectTarget(url: string, response: Response): string {
    const location = response.headers.get('location');
    const next = location === null ? undefined : parseUrl(location, url);
    if (next === undefined) {
      const what = location === null ? 'no Location' : `an invalid Location ${JSON.stringify(location)}`;
      throw new ProtocolError('discovery_failed', `${url}: HTTP ${response.status} with ${what}`);
    }
    if (next.protocol !== 'https:' && !(this.#allowHttp && next.protocol === 'http:')) {
      const why = next.protocol === 'http:' ? 'http:// is allowed only in development mode' : 'not an https URL';
      throw new ProtocolError('discovery_failed', `${url}: redirect to ${next.href} refused: ${why}`);
    }
    next.hash = '';
    return next.href;
  }
}

function dnsFailure(name: string, cause: unknown, timedOut: boolean): ProtocolError {
  const code = (cause as { code?: unknown } | null)?.code;
  if (timedOut || (typeof code === 'string' && TRANSIENT_DNS_CODES.has(code))) {
    const why = timedOut ? 'timed out' : messageOf(cause);
    return transient(new ProtocolError('discovery_failed', `${name}: SRV lookup failed: ${why}`, { cause }));
  }
  return new ProtocolError('discovery_no_records', `${name}: no SRV records (${messageOf(cause)})`, { cause });
}

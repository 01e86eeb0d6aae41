/**
 * The client API's resources (PROTOCOL.md §9): streaming upload, deduplicated per account and counted
 * against its quota, and immutable download with Range, ETag and Repr-Digest. A resource is served only
 * to an account whose uploads or messages reference it: knowing a Content-ID grants nothing.
 *
 * The download follows RFC 9110: the entity tag is the Content-ID itself in quotes (`"<digest>"`, angle
 * brackets included, as PROTOCOL.md §9 says; the bracket-less `"digest"` sent before is still matched, for
 * clients that cached it). Preconditions are evaluated in the order of §13.2.2: If-Match (strong, 412),
 * If-None-Match (weak, 304), then Range, for GET only (§14.2), unless an If-Range does not strongly match
 * (§13.1.5). Only a 200, 206 or 304 is cacheable; every error answer is `Cache-Control: no-store`.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { isB64uSha256 } from '@federizer/protocol';
import { BlobStoreError, parseRange, type DiskBlobStore } from '../blobs/index.js';

export interface ResourceAccounts {
  addResource(
    address: string,
    resource: { contentId: string; size: number; mediaType: string },
    options: { quota: number },
  ): Promise<unknown>;
  resource(address: string, contentId: string): Promise<{ size: number; mediaType: string } | undefined>;
}

export interface ResourcesDeps {
  readonly blobs: DiskBlobStore;
  readonly accounts: ResourceAccounts;
  readonly maxResourceSize: number;
  readonly quotaBytes: number;
  readonly onUploaded?: (bytes: number) => void;
  /** An upload refused because the storage is full (507 `insufficient_storage`): for the operators' log. */
  readonly onStorageFull?: (err: unknown) => void;
}

/**
 * The codes of storage that is full, anywhere in an error's chain of causes (the blob store wraps the file
 * system's error): the file system (`ENOSPC`) or the user's disk quota (`EDQUOT`) for the resource files,
 * and the database for the row that records the upload (SQLite `SQLITE_FULL`, PostgreSQL `53100 disk_full`).
 */
const STORAGE_FULL = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL', '53100']);

/** Whether `e` says the storage is full (see STORAGE_FULL), rather than that something is broken. */
export function isStorageFull(e: unknown): boolean {
  let cause = e;
  for (let depth = 0; depth < 8 && typeof cause === 'object' && cause !== null; depth++) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === 'string' && STORAGE_FULL.has(code)) return true;
    cause = (cause as { cause?: unknown }).cause;
  }
  return false;
}

const MEDIA_TYPE =
  /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\/[!#$%&'*+\-.^_`|~0-9A-Za-z]+(\s*;\s*[!#$%&'*+\-.^_`|~0-9A-Za-z]+=("[^"]*"|[!#$%&'*+\-.^_`|~0-9A-Za-z]+))*$/;

/** What a resource answers with, PROTOCOL.md §9: immutable, and private to the accounts that hold it. */
const CACHE_CONTROL = 'private, immutable';

/**
 * An error answer: never cached, and without the entity tag Express would compute for its JSON (an error
 * is not a representation of the resource; a cache must not keep it, nor revalidate against it).
 */
function problem(res: Response, status: number, error: string, description: string): void {
  if (res.headersSent) return;
  for (const name of ['ETag', 'Repr-Digest', 'Accept-Ranges', 'X-Content-Type-Options']) res.removeHeader(name);
  res
    .status(status)
    .set({ 'Cache-Control': 'no-store', 'Content-Type': 'application/json; charset=utf-8' })
    .end(JSON.stringify({ error, error_description: description }));
}

/** The entity-tags of a list header (RFC 9110 §8.8.3, §13.1.1, §13.1.2), or '*'. */
function entityTags(header: string | undefined): { weak: boolean; opaque: string }[] | '*' | undefined {
  if (header === undefined) return undefined;
  if (header.trim() === '*') return '*';
  return [...header.matchAll(/(W\/)?"([^"]*)"/g)].map((m) => ({ weak: m[1] !== undefined, opaque: m[2]! }));
}

/** Strong comparison (RFC 9110 §8.8.3.2): neither tag weak, the opaque tags equal. */
function strongMatch(tag: { weak: boolean; opaque: string }, current: readonly string[]): boolean {
  return !tag.weak && current.includes(tag.opaque);
}

/** Weak comparison: the opaque tags equal, weak or not. */
function weakMatch(tag: { weak: boolean; opaque: string }, current: readonly string[]): boolean {
  return current.includes(tag.opaque);
}

/**
 * If-Range (RFC 9110 §13.1.5): true when the Range may be honoured. An entity-tag must match strongly; a
 * date never matches, as a resource has no Last-Modified.
 */
function ifRangeHolds(header: string | undefined, current: readonly string[]): boolean {
  if (header === undefined) return true;
  const tag = /^\s*(W\/)?"([^"]*)"\s*$/.exec(header);
  return tag !== null && strongMatch({ weak: tag[1] !== undefined, opaque: tag[2]! }, current);
}

export function resourcesRouter(deps: ResourcesDeps): Router {
  const router = express.Router();

  router.post('/', async (req: Request, res: Response, next: NextFunction) => {
    const address = req.user!.address;
    const mediaType = (req.get('content-type') ?? 'application/octet-stream').trim();
    if (!MEDIA_TYPE.test(mediaType))
      return problem(res, 400, 'invalid_request', `Content-Type ${JSON.stringify(mediaType)} is not a media type`);
    const declared = req.get('content-length');
    if (declared !== undefined && Number(declared) > deps.maxResourceSize) {
      // Refused before reading a byte; the connection is closed so the client stops sending.
      res.set('Connection', 'close');
      return problem(res, 413, 'too_large', `a resource is at most ${deps.maxResourceSize} bytes`);
    }
    const abort = new AbortController();
    req.on('aborted', () => abort.abort());
    try {
      const stored = await deps.blobs.put(req, { maxSize: deps.maxResourceSize, signal: abort.signal });
      await deps.accounts.addResource(
        address,
        { contentId: stored.contentId, size: stored.size, mediaType },
        { quota: deps.quotaBytes },
      );
      deps.onUploaded?.(stored.size);
      res
        .status(201)
        .location(`${req.baseUrl}/${stored.contentId.slice(1, -1)}`)
        .json({ contentId: stored.contentId, size: stored.size, mediaType });
    } catch (e) {
      if (e instanceof BlobStoreError && e.code === 'too_large') {
        res.set('Connection', 'close');
        return problem(
          res,
          413,
          'too_large',
          `a resource is at most ${deps.maxResourceSize} bytes; nothing was stored`,
        );
      }
      if (e instanceof BlobStoreError && e.code === 'aborted')
        return problem(res, 400, 'aborted', 'the upload was interrupted; nothing was stored');
      if ((e as { code?: string }).code === 'quota_exceeded')
        return problem(res, 507, 'quota_exceeded', (e as Error).message);
      if (isStorageFull(e)) {
        // The blob store removed its temporary file (a file published before the database refused its row is
        // one no row knows, which the blob collector deletes); no row was written, so no quota was charged.
        // Closed like a 413: the client stops sending what cannot be stored.
        deps.onStorageFull?.(e);
        res.set('Connection', 'close');
        return problem(
          res,
          507,
          'insufficient_storage',
          'this mailbox has no storage left for the upload: nothing of it was stored, and nothing counts against your quota; try again later',
        );
      }
      next(e);
    }
  });

  router.get('/:digest', async (req: Request, res: Response, next: NextFunction) => {
    try {
      const digest = String(req.params.digest).replace(/^<|>$/g, '');
      // Checked before anything else: a Content-ID is a digest, never a path (`../../etc/passwd` ends here).
      if (!isB64uSha256(digest))
        return problem(res, 404, 'not_found', 'no such resource: a Content-ID is 43 base64url characters');
      const contentId = `<${digest}>`;
      const resource = await deps.accounts.resource(req.user!.address, contentId);
      if (resource === undefined || !(await deps.blobs.has(contentId))) {
        return problem(res, 404, 'not_found', 'no such resource in this mailbox');
      }
      // The entity tag is the Content-ID (PROTOCOL.md §9); the bracket-less form is the one sent before.
      const etag = `"${contentId}"`;
      const current = [contentId, digest];
      const cacheable = { ETag: etag, 'Cache-Control': CACHE_CONTROL };

      // RFC 9110 §13.2.2: If-Match first (§13.1.1, strong comparison; `*` matches any existing resource).
      const ifMatch = entityTags(req.get('if-match'));
      if (ifMatch !== undefined && ifMatch !== '*' && !ifMatch.some((t) => strongMatch(t, current)))
        return problem(res, 412, 'precondition_failed', `If-Match does not name this resource's entity tag ${etag}`);
      // Then If-None-Match (§13.1.2, weak comparison): the cached copy is current. A 304 carries what a 200
      // would among the validators and cache directives (§15.4.5), and no Content-Type or Repr-Digest.
      const ifNoneMatch = entityTags(req.get('if-none-match'));
      if (ifNoneMatch === '*' || ifNoneMatch?.some((t) => weakMatch(t, current)))
        return void res.status(304).set(cacheable).end();

      // Range is defined for GET only (§14.2): a HEAD answers the headers of the whole resource.
      const rangeHeader =
        req.method === 'GET' && ifRangeHolds(req.get('if-range'), current) ? req.get('range') : undefined;
      const range = parseRange(rangeHeader, resource.size);
      if (range.kind === 'unsatisfiable') {
        // Not cacheable like the resource: no ETag, no immutable (problem() answers no-store).
        res.set('Content-Range', `bytes */${resource.size}`);
        return problem(res, 416, 'range_not_satisfiable', `the resource has ${resource.size} bytes`);
      }
      const slice = range.kind === 'range' ? range : undefined;
      const reader = await deps.blobs.openReader(contentId, slice);
      // The media type as declared at upload: Express's res.set would add a charset to text/*.
      res.setHeader('Content-Type', resource.mediaType);
      res.set({
        ...cacheable,
        'Accept-Ranges': 'bytes',
        'X-Content-Type-Options': 'nosniff',
        // The Content-ID is the SHA-256 of the bytes: the Repr-Digest (RFC 9530) is known without reading them.
        'Repr-Digest': `sha-256=:${Buffer.from(digest, 'base64url').toString('base64')}:`,
      });
      if (slice) {
        res.status(206).set('Content-Range', `bytes ${slice.start}-${slice.end}/${resource.size}`);
        res.set('Content-Length', String(slice.end - slice.start + 1));
      } else {
        res.status(200).set('Content-Length', String(resource.size));
      }
      if (req.method === 'HEAD') {
        await reader.close();
        return void res.end();
      }
      // A failure destroys the answer (the client sees a short body); there is no status left to send.
      reader.pipeTo(res).catch(() => undefined);
    } catch (e) {
      if (e instanceof BlobStoreError && e.code === 'invalid_content_id')
        return problem(res, 404, 'not_found', 'no such resource');
      // The service's error handler answers 500; it must not be cacheable either.
      if (!res.headersSent) res.set('Cache-Control', 'no-store');
      next(e);
    }
  });
  return router;
}

/**
 * The client API's resources (PROTOCOL.md §9): streaming upload, deduplicated per account and counted
 * against its quota, and immutable download with Range, ETag and Repr-Digest. A resource is served only
 * to an account whose uploads or messages reference it: knowing a Content-ID grants nothing.
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
}

const MEDIA_TYPE =
  /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\/[!#$%&'*+\-.^_`|~0-9A-Za-z]+(\s*;\s*[!#$%&'*+\-.^_`|~0-9A-Za-z]+=("[^"]*"|[!#$%&'*+\-.^_`|~0-9A-Za-z]+))*$/;

function problem(res: Response, status: number, error: string, description: string): void {
  if (!res.headersSent) res.status(status).json({ error, error_description: description });
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
      const etag = `"${digest}"`;
      res.set({
        ETag: etag,
        'Cache-Control': 'private, max-age=31536000, immutable',
        'Accept-Ranges': 'bytes',
        'Content-Type': resource.mediaType,
        'X-Content-Type-Options': 'nosniff',
        // The Content-ID is the SHA-256 of the bytes: the Repr-Digest (RFC 9530) is known without reading them.
        'Repr-Digest': `sha-256=:${Buffer.from(digest, 'base64url').toString('base64')}:`,
      });
      if (
        req
          .get('if-none-match')
          ?.split(',')
          .some((t) => t.trim() === etag || t.trim() === '*')
      )
        return void res.status(304).end();
      const range = parseRange(req.get('range'), resource.size);
      if (range.kind === 'unsatisfiable') {
        // The error is JSON, not the resource's type set above.
        res.removeHeader('Content-Type');
        res.set('Content-Range', `bytes */${resource.size}`);
        return problem(res, 416, 'range_not_satisfiable', `the resource has ${resource.size} bytes`);
      }
      const slice = range.kind === 'range' ? range : undefined;
      const reader = await deps.blobs.openReader(contentId, slice);
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
      next(e);
    }
  });
  return router;
}

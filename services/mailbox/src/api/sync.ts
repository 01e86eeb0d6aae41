/**
 * Webmail synchronization (PROTOCOL.md §9, after JMAP RFC 8620 §5.2), mounted at `/api/v1` behind
 * `requireUser`:
 *
 * - `GET /changes?since=<state>&wait=<seconds>&maxChanges=<n>` answers
 *   `{"state", "created", "updated", "destroyed", "hasMore"}` with ids only. When nothing changed since
 *   `since` and `wait` is above 0, the request is held (a long poll) until the account changes, `wait`
 *   seconds pass, or the client goes away. `410 cannot_calculate_changes` when `since` is older than the
 *   retained log (or is no state of this account): the client resynchronizes from scratch.
 *   `400 invalid_state` when `since` is not a state this server issues.
 * - `GET /state` answers `{"state"}`: where a client starting from scratch begins.
 *
 * Every answer carries `Cache-Control: no-store`; a `/changes` answer also carries `Server-Timing` with the
 * handler's time spent reading the change log and, after a long poll, the time it waited.
 */
import express, { type Request, type Response, type Router } from 'express';
import { DEFAULT_MAX_CHANGES, MAX_MAX_CHANGES, isMailStoreError, type ChangeLog } from '../storage/index.js';
import type { ChangeNotifier } from './notifier.js';

export interface SyncDeps {
  readonly changes: Pick<ChangeLog, 'since' | 'state'>;
  readonly notifier: Pick<ChangeNotifier, 'wait'>;
  /** The longest a poll is held; a larger `wait` is lowered to it (default 60). */
  readonly maxWaitSeconds?: number;
}

class BadRequest extends Error {}

function problem(res: Response, status: number, error: string, description: string): void {
  if (!res.headersSent) res.status(status).json({ error, error_description: description });
}

function userOf(req: Request): string {
  const address = req.user?.address;
  if (address === undefined) throw new Error('the sync API is mounted without requireUser');
  return address;
}

/** A query parameter given at most once. */
function param(req: Request, name: string): string | undefined {
  const value = (req.query as Record<string, unknown>)[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw new BadRequest(`${name} must be given once`);
  return value;
}

/** A decimal integer parameter; above `max` it is refused, or lowered to `max` with `clamp`. */
function integer(
  req: Request,
  name: string,
  options: { min: number; max: number; fallback: number; clamp?: boolean; unit?: string },
): number {
  const text = param(req, name);
  if (text === undefined) return options.fallback;
  const n = Number(text);
  if (!/^[0-9]{1,15}$/.test(text) || n < options.min || (n > options.max && !options.clamp)) {
    const range = options.clamp
      ? `of at least ${options.min} (at most ${options.max} is used)`
      : `from ${options.min} to ${options.max}`;
    throw new BadRequest(`${name} must be an integer${options.unit ?? ''} ${range}, not ${JSON.stringify(text)}`);
  }
  return Math.min(n, options.max);
}

function serverTiming(changesMs: number, waitMs: number): string {
  const timing = `changes;dur=${changesMs.toFixed(2)};desc="change log"`;
  return waitMs > 0 ? `${timing}, wait;dur=${waitMs.toFixed(0)};desc="long poll"` : timing;
}

export function syncRouter(deps: SyncDeps): Router {
  const maxWait = deps.maxWaitSeconds ?? 60;
  if (!Number.isSafeInteger(maxWait) || maxWait < 0) throw new TypeError('maxWaitSeconds must be an integer >= 0');
  const router = express.Router();

  router.get('/state', async (req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store');
    res.json({ state: await deps.changes.state(userOf(req)) });
  });

  router.get('/changes', async (req: Request, res: Response) => {
    const started = performance.now();
    let waited = 0;
    res.set('Cache-Control', 'no-store');
    const address = userOf(req);
    let since: string;
    let wait: number;
    let maxChanges: number;
    try {
      const given = param(req, 'since');
      if (given === undefined || given === '') {
        throw new BadRequest('since is required: the state of the previous answer, or of GET /state');
      }
      since = given;
      // A longer wait than the server holds is lowered, not refused: the client just polls again sooner.
      wait = integer(req, 'wait', { min: 0, max: maxWait, fallback: 0, clamp: true, unit: ' number of seconds' });
      maxChanges = integer(req, 'maxChanges', { min: 1, max: MAX_MAX_CHANGES, fallback: DEFAULT_MAX_CHANGES });
    } catch (e) {
      if (e instanceof BadRequest) return problem(res, 400, 'invalid_request', e.message);
      throw e;
    }

    // The response closes before it finished only when the client went away: stop waiting for it.
    const gone = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) gone.abort();
    };
    res.on('close', onClose);
    // A client that went away before this handler ran (while its token was being checked) closed the
    // response already, and that 'close' does not come again: without this check the poll would be held,
    // for nobody, for the whole `wait`.
    if (req.destroyed || res.destroyed || req.socket.destroyed) {
      res.off('close', onClose);
      return;
    }
    try {
      const deadline = Date.now() + wait * 1000;
      let result = await deps.changes.since(address, since, { maxChanges });
      while (wait > 0 && !result.hasMore && result.state === since) {
        const remaining = deadline - Date.now();
        if (remaining <= 0) break;
        const waitStarted = performance.now();
        const outcome = await deps.notifier.wait(address, gone.signal, remaining, { state: since });
        waited += performance.now() - waitStarted;
        if (outcome === 'aborted') return;
        if (outcome === 'timeout') break;
        // Woken: something may have changed (or a mutation changed nothing): read again, wait again if not.
        result = await deps.changes.since(address, since, { maxChanges });
      }
      // The handler's own time apart from the long poll's wait (W3C Server Timing), for the webmail's
      // developer tools and for bench/mailbox-sync.bench.ts; it tells nothing about the account.
      res.set('Server-Timing', serverTiming(performance.now() - started - waited, waited));
      res.json({
        state: result.state,
        created: result.created,
        updated: result.updated,
        destroyed: result.destroyed,
        hasMore: result.hasMore,
      });
    } catch (e) {
      if (isMailStoreError(e, 'invalid_state')) return problem(res, 400, 'invalid_state', e.message);
      if (isMailStoreError(e, 'cannot_calculate_changes')) {
        return problem(res, 410, 'cannot_calculate_changes', `${e.message}: resynchronize from GET /state`);
      }
      throw e;
    } finally {
      res.off('close', onClose);
    }
  });

  return router;
}

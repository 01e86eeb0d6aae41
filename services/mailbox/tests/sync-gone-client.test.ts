/**
 * A long poll of `GET /api/v1/changes` (PROTOCOL.md §9) whose client went away before the handler ran:
 * while an asynchronous middleware (the token check, in the service) was still working. The response's
 * 'close' has then come already and never comes again, so the handler must notice on its own, or it holds
 * a waiter for nobody for the whole `wait`. Real HTTP, real SQLite and PostgreSQL.
 */
import express, { type NextFunction, type Request, type Response } from 'express';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { listen, type RunningServer } from '@federizer/common';
import { ChangeNotifier } from '../src/api/notifier.js';
import { syncRouter } from '../src/api/sync.js';
import { ChangeLog } from '../src/storage/index.js';
import { openMailboxDatabase, testDatabases, type MailboxTestDatabase } from '../src/storage/testing.js';

const ALICE = 'alice@example.com';

describe.each(testDatabases())('a long poll whose client is gone before the handler runs ($name)', (database) => {
  let db: MailboxTestDatabase;
  let server: RunningServer;
  let notifier: ChangeNotifier;
  /** Called when the middleware has the request; with `untilGone` it passes it on only once the client left. */
  let entered: () => void = () => undefined;
  let untilGone = true;
  let passedOn: Promise<void> = Promise.resolve();

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    const changes = new ChangeLog(db.knex);
    notifier = new ChangeNotifier({ changes, intervalMs: 3_600_000 });
    const app = express();
    // Stands for requireUser: asynchronous, and (with untilGone) it finishes only once the client has gone.
    app.use('/api/v1', (req: Request, res: Response, next: NextFunction) => {
      req.user = { address: ALICE } as Request['user'];
      entered();
      if (!untilGone) return next();
      passedOn = new Promise<void>((resolve) => {
        res.once('close', () =>
          setImmediate(() => {
            next();
            resolve();
          }),
        );
      });
    });
    app.use('/api/v1', syncRouter({ changes, notifier }));
    server = await listen(app, { port: 0 });
    return async () => {
      notifier.close();
      await server.close();
      await db.destroy();
    };
  });

  it('holds no waiter for a client that left during the token check (the waiter would live for the whole wait)', async () => {
    const abort = new AbortController();
    const reached = new Promise<void>((resolve) => (entered = resolve));
    const poll = fetch(`${server.url}/api/v1/changes?since=0&wait=30`, { signal: abort.signal });
    await reached;
    abort.abort();
    await expect(poll).rejects.toThrow();
    await passedOn;
    // Long enough for the handler to read the log and start waiting, were it to.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(notifier.openPolls()).toBe(0);

    // A client still there when the handler runs is held as before, and released when it leaves.
    untilGone = false;
    const staying = new AbortController();
    const held = fetch(`${server.url}/api/v1/changes?since=0&wait=30`, { signal: staying.signal });
    await vi.waitFor(() => expect(notifier.openPolls()).toBe(1), { timeout: 5_000 });
    staying.abort();
    await expect(held).rejects.toThrow();
    await vi.waitFor(() => expect(notifier.openPolls()).toBe(0), { timeout: 5_000 });
  });
});

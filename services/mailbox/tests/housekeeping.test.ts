/**
 * The retention of shares and jobs as a running mailbox applies it, across two real domains (real ASes,
 * real HTTP, SQLite and PostgreSQL). The rule: nothing grows without bound, and nothing is lost on the way.
 *
 * A copy transferred but never fetched stays `transferred` until its share window ends; then the mailbox
 * marks it failed (`expired`) as send.ts promises. Thirty days later the share goes, with its deliveries and
 * its private DPoP key. Finished jobs are forgotten seven days after they finished; pending ones never.
 * The mailbox is restarted with a clock moved forward to get there (its `now`, which every store follows).
 * The DPoP proof records every request leaves are deleted once they can no longer refuse anything.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { KnexReplayStore, createLogger } from '@federizer/common';
import { externalContentType, type Message } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { JobQueue, ShareStore } from '../src/storage/index.js';
import type { MailboxService } from '../src/index.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';

const DAY = 24 * 3600_000;

/** The value of the series `name` carrying `labels` in the Prometheus text format; 0 when absent. */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  const line = text
    .split('\n')
    .find(
      (l) =>
        (l.startsWith(`${name} `) || l.startsWith(`${name}{`)) &&
        Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)),
    );
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe.each(testDatabases())('the retention of shares and jobs in a running mailbox ($name)', (database) => {
  let fed: MailFederation;
  let alice: UserClient;
  let sentId: string;
  let transferKey: string;
  let freshShare: string;
  let freshExpiresAt: number;

  beforeAll(async () => {
    // The workers are driven by hand until the origin restarts: example.net never fetches.
    fed = await startMailFederation(['example.com', 'example.net'], {
      database: database.create,
      mailbox: { startWorkers: false },
    });
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.net']!.createUser('bob@example.net', 'bob password');
    alice = await fed.user('alice@example.com', 'alice password');
  });
  afterAll(() => fed?.close());

  const origin = (): MailboxService => fed.domains['example.com']!.mailbox;

  /** Restarts example.com's mailbox with its workers, its clock `aheadMs` ahead and retention every 50 ms. */
  async function restartAhead(aheadMs: number, logger?: ReturnType<typeof createLogger>) {
    await fed.stop('example.com');
    return fed.restart('example.com', {
      startWorkers: true,
      now: () => Date.now() + aheadMs,
      housekeeping: { intervalMs: 50 },
      ...(logger ? { logger } : {}),
    });
  }

  async function metrics(mailbox: MailboxService): Promise<string> {
    return (await fetch(`${mailbox.url}/metrics`)).text();
  }

  it('the rule: a transferred copy never fetched is marked expired once its window ends; finished jobs go after 7 days, pending ones stay', async () => {
    const up = (await (
      await alice.api('/resources', { method: 'POST', raw: 'Hi Bob\n', headers: { 'content-type': 'text/plain' } })
    ).json()) as { contentId: string; size: number };
    const message: Message = {
      envelope: [
        {
          headers: [
            { From: 'Alice <alice@example.com>' },
            { To: 'bob@example.net' },
            { Subject: 'Never fetched' },
            { 'Message-ID': `<${randomUUID()}@example.com>` },
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'inline' },
              { 'Content-ID': up.contentId },
              { 'Content-Type': externalContentType(up.size, 'text/plain') },
            ],
          },
        ],
      },
    };
    const sent = await alice.api('/messages/send', { method: 'POST', json: { message } });
    expect(sent.status, await sent.clone().text()).toBe(202);
    sentId = ((await sent.json()) as { id: string }).id;
    await origin().outbox.poll();
    const shares = new ShareStore(origin().knex);
    await vi.waitFor(
      async () => expect((await shares.deliveries({ message: sentId }))[0]?.status).toBe('transferred'),
      {
        timeout: 10_000,
        interval: 50,
      },
    );
    const [share] = await shares.sharesOf(sentId);
    transferKey = `${share!.id}:example.net`;
    expect((await new JobQueue(origin().knex).find('transfer', transferKey))?.status).toBe('done');

    // A job no worker takes stays pending whatever its age; a share whose window is still open is left alone.
    const ahead = 8 * DAY; // past the 7-day share window, and past the 7 days finished jobs are kept
    await new JobQueue(origin().knex).enqueue('probe', 'pending forever', 'example.com', {});
    freshExpiresAt = Date.now() + ahead + 7 * DAY;
    freshShare = await new ShareStore(origin().knex).create({
      message: sentId,
      address: 'alice@example.com',
      messageId: `<${randomUUID()}@example.com>`,
      assertionDigest: 'fresh',
      envelope: [],
      recipients: ['dave@example.net'],
      dpopKey: { kty: 'EC' },
      expiresAt: freshExpiresAt,
    });

    const mailbox = await restartAhead(ahead);
    const store = new ShareStore(mailbox.knex);
    await vi.waitFor(
      async () =>
        expect((await store.deliveries({ share: share!.id }))[0]).toMatchObject({
          status: 'failed',
          detail: 'expired',
        }),
      { timeout: 10_000, interval: 50 },
    );
    const jobs = new JobQueue(mailbox.knex);
    await vi.waitFor(async () => expect(await jobs.find('transfer', transferKey)).toBeUndefined(), {
      timeout: 10_000,
      interval: 50,
    });
    expect((await jobs.find('probe', 'pending forever'))?.status).toBe('pending');
    expect((await store.deliveries({ share: freshShare }))[0]?.status).toBe('queued');
    // The expired share itself is kept for 30 days: its sender still sees how each delivery ended.
    expect((await store.get(share!.id))?.dpopKey).toBeDefined();
    const m = await metrics(mailbox);
    expect(metric(m, 'federizer_mailbox_deliveries_expired_total')).toBe(1);
    expect(metric(m, 'federizer_mailbox_jobs_purged_total')).toBeGreaterThanOrEqual(1);
    expect(metric(m, 'federizer_mailbox_shares_deleted_total')).toBe(0);
    expect(metric(m, 'federizer_mailbox_share_cleanups_total', { outcome: 'completed' })).toBeGreaterThan(0);
    expect(metric(m, 'federizer_mailbox_job_purges_total', { outcome: 'completed' })).toBeGreaterThan(0);
  });

  it('the rule: 30 days after its window ended a share is deleted, with its deliveries and its private DPoP key', async () => {
    const mailbox = await restartAhead(38 * DAY); // 7 days of window, 30 of grace, and one more
    const store = new ShareStore(mailbox.knex);
    await vi.waitFor(async () => expect(await store.sharesOf(sentId)).toHaveLength(1), {
      timeout: 10_000,
      interval: 50,
    });
    // What remains is the share whose window ended less than 30 days ago, its delivery now marked expired.
    const [left] = await store.sharesOf(sentId);
    expect(left!.id).toBe(freshShare);
    expect((await store.deliveries({ share: freshShare }))[0]).toMatchObject({ status: 'failed', detail: 'expired' });
    const orphans = await mailbox.knex('mail_deliveries').whereNot({ share: freshShare });
    expect(orphans).toEqual([]);
    expect((await new JobQueue(mailbox.knex).find('probe', 'pending forever'))?.status).toBe('pending');
    const m = await metrics(mailbox);
    expect(metric(m, 'federizer_mailbox_shares_deleted_total')).toBe(1);
    expect(metric(m, 'federizer_mailbox_deliveries_expired_total')).toBe(1);
  });

  it('the rule, a failed run: logged and counted, never thrown; the job retention still runs, and the next runs clean up', async () => {
    const lines: { msg: string; expired?: number; deleted?: number }[] = [];
    const logger = createLogger({
      name: 'mailbox-test',
      level: 'info',
      destination: { write: (line: string) => void lines.push(JSON.parse(line) as (typeof lines)[number]) },
    });
    const mailbox = await restartAhead(100 * DAY, logger);
    // Stopped at once: the table is out of reach, so every share cleanup fails until it is back.
    await mailbox.knex.schema.renameTable('mail_shares', 'mail_shares_away');
    await vi.waitFor(() => expect(lines.some((l) => l.msg === 'cleaning up expired shares failed')).toBe(true), {
      timeout: 10_000,
      interval: 20,
    });
    const failed = await metrics(mailbox);
    expect(metric(failed, 'federizer_mailbox_share_cleanups_total', { outcome: 'failed' })).toBeGreaterThan(0);
    expect(metric(failed, 'federizer_mailbox_job_purges_total', { outcome: 'completed' })).toBeGreaterThan(0);
    await mailbox.knex.schema.renameTable('mail_shares_away', 'mail_shares');
    await vi.waitFor(
      () => expect(lines.some((l) => l.msg === 'expired shares cleaned up' && l.deleted === 1)).toBe(true),
      {
        timeout: 10_000,
        interval: 20,
      },
    );
    expect(await new ShareStore(mailbox.knex).sharesOf(sentId)).toEqual([]);
  });

  it('the rule: DPoP proof records are deleted once stale (every run, in batches); live ones stay and still refuse', async () => {
    const mailbox = await restartAhead(0);
    const knex = mailbox.knex;
    const seconds = Math.floor(Date.now() / 1000);
    const stale = Array.from({ length: 6000 }, (_, i) => ({ key: `stale-${i}`, expires_at: seconds - 10 }));
    for (let i = 0; i < stale.length; i += 500) await knex('mail_replay').insert(stale.slice(i, i + 500));
    await knex('mail_replay').insert({ key: 'live', expires_at: seconds + 400 * 24 * 3600 });
    await vi.waitFor(
      async () => expect(await mailbox.knex('mail_replay').where('key', 'like', 'stale-%')).toHaveLength(0),
      { timeout: 10_000, interval: 50 },
    );
    expect(await mailbox.knex('mail_replay').where({ key: 'live' })).toHaveLength(1);
    // The live record still refuses its proof (RFC 9449 §11.1).
    const replay = new KnexReplayStore(mailbox.knex, { table: 'mail_replay' });
    expect(await replay.checkAndRecord('live', seconds + 60)).toBe(false);
    const m = await metrics(mailbox);
    expect(metric(m, 'federizer_mailbox_replay_records_pruned_total')).toBeGreaterThanOrEqual(stale.length);
    expect(metric(m, 'federizer_mailbox_replay_prunes_total', { outcome: 'completed' })).toBeGreaterThan(0);
  });

  it('refuses retention settings that are not whole numbers of ms', async () => {
    await fed.stop('example.com');
    await expect(fed.restart('example.com', { housekeeping: { intervalMs: 0 } })).rejects.toThrow(/intervalMs/);
    await expect(fed.restart('example.com', { housekeeping: { jobKeepMs: -1 } })).rejects.toThrow(/jobKeepMs/);
    await expect(fed.restart('example.com', { housekeeping: { shareGraceMs: 1.5 } })).rejects.toThrow(/shareGraceMs/);
    await fed.restart('example.com');
  });
});

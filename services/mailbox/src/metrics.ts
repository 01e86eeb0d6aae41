/**
 * The mailbox's Prometheus series (on the service's own registry): deliveries by outcome, bytes fetched,
 * transfer and fetch durations, the work queues' depth and oldest age, open long polls, what the blob
 * collector deleted, the change log rows pruned, and what the retention of shares and jobs removed.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { JobQueue } from './storage/index.js';

/** The queues of mail in flight; the blob collector's recurring job (`gc`) is always pending and left out. */
const KINDS = ['transfer', 'fetch', 'relay'] as const;

export interface MailboxMetrics {
  readonly deliveries: Counter<'outcome'>;
  readonly fetchedBytes: Counter;
  readonly uploadedBytes: Counter;
  readonly transferDuration: Histogram;
  readonly fetchDuration: Histogram;
  readonly blobsCollected: Counter;
  readonly blobBytesCollected: Counter;
  readonly blobCollections: Counter<'outcome'>;
  readonly changesPruned: Counter;
  readonly changePrunes: Counter<'outcome'>;
  readonly deliveriesExpired: Counter;
  readonly sharesDeleted: Counter;
  readonly shareCleanups: Counter<'outcome'>;
  readonly jobsPurged: Counter;
  readonly jobPurges: Counter<'outcome'>;
  readonly replayRecordsPruned: Counter;
  readonly replayPrunes: Counter<'outcome'>;
}

export function mailboxMetrics(
  registry: Registry,
  sources: { jobs: JobQueue; openPolls: () => number },
): MailboxMetrics {
  const durations = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
  new Gauge({
    name: 'federizer_mailbox_queue_depth',
    help: 'Pending jobs in the durable queues, by kind (transfer, fetch, relay).',
    labelNames: ['kind'],
    registers: [registry],
    async collect() {
      const depth = await sources.jobs.depth();
      for (const kind of KINDS) this.set({ kind }, depth[kind] ?? 0);
    },
  });
  new Gauge({
    name: 'federizer_mailbox_queue_oldest_age_seconds',
    help: 'Age of the oldest pending job, by kind; 0 when none is pending.',
    labelNames: ['kind'],
    registers: [registry],
    async collect() {
      const oldest = await sources.jobs.oldestAgeMs();
      for (const kind of KINDS) this.set({ kind }, (oldest[kind] ?? 0) / 1000);
    },
  });
  new Gauge({
    name: 'federizer_mailbox_open_polls',
    help: 'Long polls of /api/v1/changes waiting now.',
    registers: [registry],
    collect() {
      this.set(sources.openPolls());
    },
  });
  return {
    deliveries: new Counter({
      name: 'federizer_mailbox_deliveries_total',
      help: 'Transfer attempts to other domains, by outcome (transferred, retried, failed).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    fetchedBytes: new Counter({
      name: 'federizer_mailbox_fetched_bytes_total',
      help: 'Bytes of resources fetched from other domains.',
      registers: [registry],
    }),
    uploadedBytes: new Counter({
      name: 'federizer_mailbox_uploaded_bytes_total',
      help: 'Bytes of resources uploaded by users.',
      registers: [registry],
    }),
    transferDuration: new Histogram({
      name: 'federizer_mailbox_transfer_duration_seconds',
      help: 'Duration of transfer attempts to other domains.',
      buckets: durations,
      registers: [registry],
    }),
    fetchDuration: new Histogram({
      name: 'federizer_mailbox_fetch_duration_seconds',
      help: 'Duration of successful resource fetches from other domains.',
      buckets: durations,
      registers: [registry],
    }),
    blobsCollected: new Counter({
      name: 'federizer_mailbox_blobs_collected_total',
      help: 'Resource files deleted by the blob collector (unreferenced for longer than the share window).',
      registers: [registry],
    }),
    blobBytesCollected: new Counter({
      name: 'federizer_mailbox_blob_bytes_collected_total',
      help: 'Bytes of the resource files deleted by the blob collector.',
      registers: [registry],
    }),
    blobCollections: new Counter({
      name: 'federizer_mailbox_blob_collections_total',
      help: 'Runs of the blob collector by this replica, by outcome (completed, failed).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    changesPruned: new Counter({
      name: 'federizer_mailbox_changes_pruned_total',
      help: 'Rows of the sync change log removed by retention (older than 30 days and beyond the newest 100,000 of the account).',
      registers: [registry],
    }),
    changePrunes: new Counter({
      name: 'federizer_mailbox_change_prunes_total',
      help: 'Runs of the change log retention by this replica, by outcome (completed, failed).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    deliveriesExpired: new Counter({
      name: 'federizer_mailbox_deliveries_expired_total',
      help: 'Deliveries never fetched (queued or transferred) whose share window ended, marked failed (expired).',
      registers: [registry],
    }),
    sharesDeleted: new Counter({
      name: 'federizer_mailbox_shares_deleted_total',
      help: 'Shared copies deleted with their deliveries and private DPoP keys, 30 days after their share window ended.',
      registers: [registry],
    }),
    shareCleanups: new Counter({
      name: 'federizer_mailbox_share_cleanups_total',
      help: 'Runs of the share retention (expiry, then deletion) by this replica, by outcome (completed, failed).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    jobsPurged: new Counter({
      name: 'federizer_mailbox_jobs_purged_total',
      help: 'Finished jobs (done, failed, cancelled) removed from the queue 7 days after they finished.',
      registers: [registry],
    }),
    jobPurges: new Counter({
      name: 'federizer_mailbox_job_purges_total',
      help: 'Runs of the job queue retention by this replica, by outcome (completed, failed).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    replayRecordsPruned: new Counter({
      name: 'federizer_mailbox_replay_records_pruned_total',
      help: 'DPoP proof records (jti seen) deleted once their proofs could no longer be accepted anyway.',
      registers: [registry],
    }),
    replayPrunes: new Counter({
      name: 'federizer_mailbox_replay_prunes_total',
      help: 'Runs of the DPoP replay record pruning by this replica, by outcome (completed, failed).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
  };
}

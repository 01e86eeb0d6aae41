/**
 * The blob collector inside a running mailbox: the service schedules the recurring run when it starts;
 * once the share window has passed (the mailbox's clock moved on a week), a run deletes the files of the
 * resources nothing refers to (an upload never used, bytes sent and then deleted by sender and recipient),
 * releases their quota, counts them in /metrics, and keeps what a draft still references.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { externalContentType, type Message } from '@federizer/protocol';
import { testDatabases } from '../../common/src/testing/databases.js';
import { testHttp } from '../../auth/tests/exchange-client.js';
import { GC_JOB } from '../src/gc/blob-collector.js';
import { upload, type Uploaded } from './fetch-helpers.js';
import { startMailFederation, type MailFederation, type UserClient } from './mail-federation.js';

const WEEK = 7 * 24 * 3600 * 1000;

describe.each(testDatabases())('blob collection in a running mailbox ($name)', (database) => {
  let fed: MailFederation;
  let alice: UserClient;
  let bob: UserClient;
  let offset = 0;
  const http = testHttp();

  const com = () => fed.domains['example.com']!.mailbox;

  function message(to: string, resource: Uploaded): Message {
    return {
      envelope: [
        {
          headers: [
            { From: 'alice@example.com' },
            { To: to },
            { Subject: 'Collected later' },
            { 'Message-ID': `<${randomUUID()}@example.com>` },
          ],
        },
      ],
      body: {
        parts: [
          {
            headers: [
              { 'Content-Disposition': 'attachment; filename="data.bin"' },
              { 'Content-ID': resource.contentId },
              { 'Content-Type': externalContentType(resource.size, resource.mediaType) },
            ],
          },
        ],
      },
    };
  }

  async function status(user: UserClient, resource: Uploaded): Promise<number> {
    const res = await user.api(`/resources/${resource.contentId.slice(1, -1)}`, { method: 'HEAD' });
    return res.status;
  }

  async function storageUsed(user: UserClient): Promise<number> {
    return ((await (await user.api('/session')).json()) as { storageUsed: number }).storageUsed;
  }

  beforeAll(async () => {
    fed = await startMailFederation(['example.com'], {
      database: database.create,
      // Files are judged by the share window alone here; the disk grace has its own tests.
      config: { blobGcGraceSeconds: 0 },
      mailbox: { now: () => Date.now() + offset },
    });
    await fed.auth.domains['example.com']!.createUser('alice@example.com', 'alice password');
    await fed.auth.domains['example.com']!.createUser('bob@example.com', 'bob password');
    alice = await fed.user('alice@example.com', 'alice password');
    bob = await fed.user('bob@example.com', 'bob password');
  });
  afterAll(async () => {
    await http.close();
    await fed?.close();
  });

  it('deletes what nothing refers to a share window later, keeps what a draft references, and counts it', async () => {
    const scheduled = await com().jobs.find(GC_JOB, 'blobs');
    expect(scheduled).toMatchObject({ status: 'pending', destination: 'example.com' });
    // An hour (the default interval) after the service started (planned a moment before the row was written).
    expect(scheduled!.nextAttemptAt - scheduled!.createdAt).toBeGreaterThan(3600 * 1000 - 1000);
    expect(scheduled!.nextAttemptAt - scheduled!.createdAt).toBeLessThanOrEqual(3600 * 1000);

    const kept = await upload(alice, randomBytes(1500), 'application/octet-stream');
    const neverUsed = await upload(alice, randomBytes(2500), 'application/octet-stream');
    const sentThenDeleted = await upload(alice, randomBytes(3500), 'application/octet-stream');
    const draft = await alice.api('/drafts', { method: 'POST', json: { message: message('bob@example.com', kept) } });
    expect(draft.status).toBe(201);
    const sent = await alice.api('/messages/send', {
      method: 'POST',
      json: { message: message('bob@example.com', sentThenDeleted) },
    });
    expect(sent.status).toBe(202);
    const { id: sentId } = (await sent.json()) as { id: string };
    const inbox = (await (await bob.api('/messages?mailbox=inbox')).json()) as { messages: { id: string }[] };
    expect(inbox.messages).toHaveLength(1);
    expect((await alice.api(`/messages/${sentId}`, { method: 'DELETE' })).status).toBe(204);
    expect((await bob.api(`/messages/${inbox.messages[0]!.id}`, { method: 'DELETE' })).status).toBe(204);
    expect(await storageUsed(alice)).toBe(1500 + 2500 + 3500);
    expect(await storageUsed(bob)).toBe(3500);

    // A day short of the window (the run is due: its hour has passed): nothing goes.
    offset = WEEK - 24 * 3600 * 1000;
    await com().collector.poll();
    offset = 0;
    expect(await status(alice, neverUsed)).toBe(200);

    offset = WEEK + 60_000;
    await com().collector.poll();
    const next = await com().jobs.find(GC_JOB, 'blobs');
    expect(next).toMatchObject({ status: 'pending', attempts: 0 });
    expect(next!.nextAttemptAt).toBeGreaterThan(Date.now() + WEEK);
    offset = 0;

    expect(await status(alice, neverUsed)).toBe(404);
    expect(await status(alice, sentThenDeleted)).toBe(404);
    expect(await status(bob, sentThenDeleted)).toBe(404);
    expect(await status(alice, kept)).toBe(200);
    expect(await com().blobs.has(neverUsed.contentId)).toBe(false);
    expect(await com().blobs.has(sentThenDeleted.contentId)).toBe(false);
    expect(await com().blobs.has(kept.contentId)).toBe(true);
    expect(await storageUsed(alice)).toBe(1500);
    expect(await storageUsed(bob)).toBe(0);

    const metrics = await (await http.fetch(`${com().url}/metrics`)).text();
    expect(metrics).toContain('federizer_mailbox_blobs_collected_total{service="mailbox"} 2\n');
    expect(metrics).toContain(`federizer_mailbox_blob_bytes_collected_total{service="mailbox"} ${2500 + 3500}\n`);
    expect(metrics).toContain('federizer_mailbox_blob_collections_total{outcome="completed",service="mailbox"} 2\n');
  });
});

/**
 * The transfer endpoint (PROTOCOL §5) when this mailbox itself fails, and with DPoP proofs whose `iat` has a
 * fraction, over real HTTP with real assertions (the transfer harness). docs/protocol.md §5.3: a failure that
 * is not the request's (the replay store's database, the user directory of check 9, the transfer log) answers
 * 503 `unavailable` with Retry-After, which the sender retries, never a 500 or a refusal; the retry, once the
 * mailbox has recovered, is accepted.
 */
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KnexReplayStore, createKnex } from '@federizer/common';
import { testDatabases } from '../../common/src/testing/databases.js';
import { freePort } from '../../auth/tests/harness.js';
import { TransferLog } from '../src/index.js';
import { UserDirectory } from '../src/directory.js';
import type { TransferDeps } from '../src/federation/transfer.js';
import { startTransferHarness, type TransferHarness } from './transfer-harness.js';

interface ErrorBody {
  error: string;
  code?: string;
  error_description: string;
}

describe.each(testDatabases())('PROTOCOL §5: the transfer endpoint when example.net fails ($name)', (database) => {
  let h: TransferHarness;

  beforeAll(async () => {
    h = await startTransferHarness(database);
  });
  afterAll(async () => {
    await h?.close();
  });

  const stored = async (messageId: string) => (await h.messages.byMessageId('bob@example.net', messageId)).length;

  /**
   * Posts the copy to an app of example.net whose deps are changed by `overrides`: the answer must be §5.3's
   * 503, the failure reported to `onError`, and nothing stored. Then the sender's retry to the healthy app
   * is accepted (202).
   */
  async function expectUnavailableThenAccepted(messageId: string, overrides: Partial<TransferDeps>): Promise<void> {
    const reported: unknown[] = [];
    const app = await h.startApp({ ...overrides, onError: (err) => reported.push(err) });
    const sent = await h.send({ messageId, to: 'Bob <bob@example.net>', resources: [`${messageId} text`] });
    try {
      const res = await h.post(sent, { endpoint: app.endpoint });
      const body = (await res.json()) as ErrorBody;
      expect({ status: res.status, error: body.error }).toEqual({ status: 503, error: 'unavailable' });
      expect(body.error_description).toMatch(/retry later/);
      expect(body.code).toBeUndefined();
      expect(res.headers.get('retry-after')).toBe('30');
      expect(res.headers.get('cache-control')).toBe('no-store');
      expect(res.headers.get('www-authenticate')).toBeNull();
      expect(reported).toHaveLength(1);
      expect(reported[0]).toBeInstanceOf(Error);
      expect(await stored(messageId)).toBe(0);
    } finally {
      await app.close();
    }
    const retry = await h.post(sent);
    expect(retry.status).toBe(202);
    expect(await retry.json()).toEqual({ accepted: ['bob@example.net'], rejected: [] });
    expect(await stored(messageId)).toBe(1);
  }

  it('PROTOCOL §5, §5.6, RFC 7519 §2: a DPoP proof whose iat has a fraction is accepted (202), and only once', async () => {
    const sent = await h.send({ messageId: '<fractional-iat@example.com>', to: 'bob@example.net' });
    const proofOptions = { now: Date.now() / 1000 + 0.5, jti: 'fractional-iat-transfer' };
    expect(proofOptions.now % 1).not.toBe(0);
    const res = await h.post(sent, { proofOptions });
    expect(res.status, await res.clone().text()).toBe(202);
    const again = (await (await h.post(sent, { proofOptions })).json()) as ErrorBody;
    expect(again).toMatchObject({ error: 'invalid_token', code: 'dpop_replayed' });
  });

  it('PROTOCOL §5.6, docs/protocol.md §10.3: a proof with a jti of 4 000 characters is accepted (202)', async () => {
    const sent = await h.send({ messageId: '<long-jti@example.com>', to: 'bob@example.net' });
    const res = await h.post(sent, { proofOptions: { jti: 'j'.repeat(4000) } });
    expect(res.status, await res.clone().text()).toBe(202);
  });

  it('PROTOCOL §5.3: the replay store’s database failing during check 6 answers 503 unavailable, not 500', async () => {
    // The real database, asked about a table it does not have: the insert fails as an outage would.
    const replay = new KnexReplayStore(h.knex, { table: 'mail_replay_missing' });
    await expectUnavailableThenAccepted('<replay-store-down@example.com>', { replay });
  });

  it('PROTOCOL §5.3: the user directory not answering during check 9 answers 503 unavailable, not 500', async () => {
    // The AS admin API the directory asks is down: nothing listens on its port.
    const directory = new UserDirectory(`http://127.0.0.1:${await freePort()}`, 'admin-token', h.http);
    await expectUnavailableThenAccepted('<directory-down@example.com>', {
      recipientExists: (address) => directory.exists(address),
    });
  });

  it('PROTOCOL §5.3: the transfer log’s database failing (idempotency, §5.4) answers 503 unavailable, not 500', async () => {
    // A database that cannot be opened: every query fails.
    const broken = createKnex({ client: 'sqlite', filename: join(tmpdir(), 'no-such-directory-federizer', 'x.db') });
    try {
      await expectUnavailableThenAccepted('<transfer-log-down@example.com>', { transfers: new TransferLog(broken) });
    } finally {
      await broken.destroy();
    }
  });
});

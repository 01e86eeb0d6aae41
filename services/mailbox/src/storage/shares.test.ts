import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ChangeLog } from './changes.js';
import { isMailStoreError } from './errors.js';
import { MessageStore } from './messages.js';
import { ShareStore, type NewShare } from './shares.js';
import {
  DAY,
  MINUTE,
  T0,
  clearMailboxTables,
  openMailboxDatabase,
  statementsOf,
  testClock,
  testDatabases,
  type MailboxTestDatabase,
} from './testing.js';

const ALICE = 'alice@example.com';
const BOB = 'bob@example.net';
const CAROL = 'carol@example.net';
const DAVE = 'dave@example.org';
const ENVELOPE = [{ 'jwt-assertion': 'eyJ.a1.sig' }, { headers: [{ 'Message-ID': '<s1@example.com>' }] }];

describe.each(testDatabases())('ShareStore on $name', (database) => {
  let db: MailboxTestDatabase;
  const clock = testClock();
  let shares: ShareStore;
  let messages: MessageStore;
  let changes: ChangeLog;
  let sent: string;

  const newShare = (overrides: Partial<NewShare> = {}): NewShare => ({
    message: sent,
    address: ALICE,
    messageId: '<s1@example.com>',
    assertionDigest: 'digest-of-a1',
    envelope: ENVELOPE,
    recipients: [BOB, CAROL, DAVE],
    dpopKey: { kty: 'EC', crv: 'P-256', x: 'x', y: 'y', d: 'd' },
    expiresAt: T0 + 7 * DAY,
    ...overrides,
  });

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    shares = new ShareStore(db.knex, { now: clock.now });
    messages = new MessageStore(db.knex, { now: clock.now });
    changes = new ChangeLog(db.knex, { now: clock.now });
  });

  afterAll(async () => {
    await db?.destroy();
  });

  beforeEach(async () => {
    await clearMailboxTables(db.knex);
    clock.set(T0);
    sent = await messages.create({
      address: ALICE,
      mailbox: 'sent',
      messageId: '<s1@example.com>',
      threadId: '<s1@example.com>',
      envelope: ENVELOPE,
      body: { parts: [] },
      date: T0,
    });
  });

  it('stores a copy with one queued delivery per recipient, found by what a fetch presents', async () => {
    const id = await shares.create(newShare({ recipients: [BOB, CAROL, DAVE, BOB] }));
    const share = await shares.findForFetch('<s1@example.com>', 'digest-of-a1');
    expect(share).toEqual({
      id,
      message: sent,
      address: ALICE,
      messageId: '<s1@example.com>',
      assertionDigest: 'digest-of-a1',
      envelope: ENVELOPE,
      recipients: [BOB, CAROL, DAVE],
      dpopKey: { kty: 'EC', crv: 'P-256', x: 'x', y: 'y', d: 'd' },
      expiresAt: T0 + 7 * DAY,
      createdAt: T0,
    });
    expect(await shares.findForFetch('<s1@example.com>', 'another digest')).toBeUndefined();
    expect(await shares.get(id)).toEqual(share);
    const deliveries = await shares.deliveries({ share: id });
    expect(deliveries.map((d) => [d.recipient, d.domain, d.status])).toEqual([
      [BOB, 'example.net', 'queued'],
      [CAROL, 'example.net', 'queued'],
      [DAVE, 'example.org', 'queued'],
    ]);
    const bcc = await shares.create(newShare({ recipients: ['eve@example.org'], assertionDigest: 'bcc' }));
    expect((await shares.deliveries({ message: sent })).map((d) => [d.share, d.recipient])).toEqual([
      [id, BOB],
      [id, CAROL],
      [id, DAVE],
      [bcc, 'eve@example.org'],
    ]);
    expect((await shares.sharesOf(sent)).map((s) => s.id)).toEqual([id, bcc]);
  });

  it('tracks delivery status per recipient: transferred, then fetched by which domain and when', async () => {
    const id = await shares.create(newShare());
    const state = await changes.state(ALICE);
    expect(await shares.setDelivery(id, { domain: 'example.net' }, 'transferred')).toBe(2);
    clock.advance(MINUTE);
    expect(await shares.setDelivery(id, { domain: 'example.net' }, 'fetched', { fetchedBy: 'Example.NET' })).toBe(2);
    clock.advance(MINUTE);
    expect(await shares.setDelivery(id, { domain: 'example.net' }, 'fetched')).toBe(0); // kept as first fetched
    expect(await shares.setDelivery(id, { recipient: DAVE }, 'failed', { detail: 'no such recipient' })).toBe(1);
    const byRecipient = Object.fromEntries((await shares.deliveries({ share: id })).map((d) => [d.recipient, d]));
    expect(byRecipient[BOB]).toMatchObject({ status: 'fetched', fetchedBy: 'example.net', fetchedAt: T0 + MINUTE });
    expect(byRecipient[DAVE]).toMatchObject({ status: 'failed', detail: 'no such recipient', fetchedAt: undefined });
    // A fetch is believed after the sender gave up; a fetched delivery never goes back.
    expect(await shares.setDelivery(id, { recipient: DAVE }, 'fetched', { fetchedBy: 'example.com' })).toBe(1);
    expect(await shares.setDelivery(id, { recipient: BOB }, 'transferred')).toBe(0);
    expect(await shares.setDelivery(id, { recipient: BOB }, 'failed')).toBe(0);
    // The sender's webmail hears about it through sync.
    expect(await changes.since(ALICE, state)).toMatchObject({ updated: [sent] });

    const error = await shares.setDelivery('missing', { recipient: BOB }, 'fetched').catch((e: unknown) => e);
    expect(isMailStoreError(error, 'share_not_found')).toBe(true);
  });

  it('sets a delivery of a share the caller holds without reading the share again', async () => {
    const id = await shares.create(newShare());
    const share = (await shares.get(id))!;
    const state = await changes.state(ALICE);
    await shares.setDelivery(id, { recipient: DAVE }, 'transferred'); // the sender's account is known now
    const byId = await statementsOf(db.knex, () => shares.setDelivery(id, { recipient: BOB }, 'transferred'));
    const byValue = await statementsOf(db.knex, async () => {
      expect(await shares.setDelivery(share, { domain: 'example.net' }, 'fetched')).toBe(2);
    });
    expect(byValue).toHaveLength(byId.length - 1);
    expect(byValue.filter((q) => /mail_shares/.test(q))).toEqual([]);
    expect((await shares.deliveries({ share: id })).map((d) => [d.recipient, d.status, d.fetchedBy])).toEqual([
      [BOB, 'fetched', 'example.net'],
      [CAROL, 'fetched', 'example.net'],
      [DAVE, 'transferred', undefined],
    ]);
    expect(await changes.since(ALICE, state)).toMatchObject({ updated: [sent] });
    // Deleted since (with its message): as for an unknown id.
    await messages.delete(ALICE, sent);
    const error = await shares.setDelivery(share, { recipient: BOB }, 'failed').catch((e: unknown) => e);
    expect(isMailStoreError(error, 'share_not_found')).toBe(true);
  });

  it('withdraws for one recipient, leaving the domain fetchable for the others', async () => {
    const id = await shares.create(newShare());
    expect(await shares.withdraw(id, [BOB, 'nobody@example.net'])).toEqual({
      withdrawn: [BOB],
      fetched: [],
      unknown: ['nobody@example.net'],
    });
    const status = Object.fromEntries((await shares.deliveries({ share: id })).map((d) => [d.recipient, d.status]));
    expect(status).toEqual({ [BOB]: 'withdrawn', [CAROL]: 'queued', [DAVE]: 'queued' });
    expect(await shares.isWithdrawn(id, 'example.net')).toBe(false); // Carol still needs it
    expect(await shares.withdraw(id, [CAROL])).toMatchObject({ withdrawn: [CAROL] });
    expect(await shares.isWithdrawn(id, 'example.net')).toBe(true);
    expect(await shares.isWithdrawn(id, 'example.org')).toBe(false);
    expect(await shares.isWithdrawn(id, 'forward-target.example')).toBe(false); // Dave's copy may be forwarded
    // A late transfer acknowledgement does not undo the withdrawal.
    expect(await shares.setDelivery(id, { recipient: BOB }, 'transferred')).toBe(0);
    expect(await shares.setDelivery(id, { recipient: BOB }, 'fetched')).toBe(0);
  });

  it('withdraws for all, except recipients already fetched, who are reported', async () => {
    const id = await shares.create(newShare());
    await shares.setDelivery(id, { domain: 'example.org' }, 'fetched');
    await shares.setDelivery(id, { recipient: CAROL }, 'transferred');
    const state = await changes.state(ALICE);
    expect(await shares.withdraw(id)).toEqual({ withdrawn: [BOB, CAROL], fetched: [DAVE], unknown: [] });
    const status = Object.fromEntries((await shares.deliveries({ share: id })).map((d) => [d.recipient, d.status]));
    expect(status).toEqual({ [BOB]: 'withdrawn', [CAROL]: 'withdrawn', [DAVE]: 'fetched' });
    expect(await changes.since(ALICE, state)).toMatchObject({ updated: [sent] });
    expect(await shares.isWithdrawn(id, 'example.net')).toBe(true);
    expect(await shares.isWithdrawn(id, 'example.org')).toBe(false);
    expect(await shares.isWithdrawn(id, 'forward-target.example')).toBe(false);
    // Again: nothing more to withdraw, the same answer.
    expect(await shares.withdraw(id)).toEqual({ withdrawn: [BOB, CAROL], fetched: [DAVE], unknown: [] });
    expect(await shares.isWithdrawn('missing', 'example.net')).toBe(true);
    const error = await shares.withdraw('missing').catch((e: unknown) => e);
    expect(isMailStoreError(error, 'share_not_found')).toBe(true);
  });

  it('reads the share, its withdrawal for a domain and the sent body for the outbox, in one statement', async () => {
    const id = await shares.create(newShare());
    const domains = ['example.net', 'example.org', 'forward-target.example'];
    // forTransfer's withdrawal is isWithdrawn's answer, whatever the deliveries' states.
    const agrees = async () => {
      for (const domain of domains) {
        const found = await shares.forTransfer(id, domain);
        expect(found?.withdrawn, domain).toBe(await shares.isWithdrawn(id, domain));
      }
    };
    let found: Awaited<ReturnType<ShareStore['forTransfer']>>;
    expect(
      await statementsOf(db.knex, async () => {
        found = await shares.forTransfer(id, 'Example.NET');
      }),
    ).toHaveLength(1);
    expect(found).toEqual({ share: await shares.get(id), withdrawn: false, body: { parts: [] } });
    await agrees();
    await shares.withdraw(id, [BOB]);
    await agrees();
    await shares.setDelivery(id, { recipient: DAVE }, 'fetched');
    await shares.withdraw(id, [CAROL]);
    await agrees();
    expect((await shares.forTransfer(id, 'example.net'))?.withdrawn).toBe(true);
    await shares.withdraw(id);
    await agrees();
    await db.knex('mail_deliveries').where({ share: id }).delete(); // no delivery at all: nothing to send
    expect((await shares.forTransfer(id, 'example.org'))?.withdrawn).toBe(true);
    expect(await shares.forTransfer('missing', 'example.net')).toBeUndefined();
    // Deleting the sent message deletes its shares.
    await messages.delete(ALICE, sent);
    expect(await shares.forTransfer(id, 'example.net')).toBeUndefined();
  });

  it('refuses forward targets once every delivery is withdrawn', async () => {
    const id = await shares.create(newShare({ recipients: [BOB] }));
    expect(await shares.isWithdrawn(id, 'forward-target.example')).toBe(false);
    await shares.withdraw(id);
    expect(await shares.isWithdrawn(id, 'forward-target.example')).toBe(true);
  });

  it('fails deliveries still open when the share window ends, and later deletes the copy', async () => {
    const id = await shares.create(newShare());
    await shares.setDelivery(id, { domain: 'example.org' }, 'fetched');
    await shares.setDelivery(id, { recipient: CAROL }, 'transferred');
    const share = (await shares.get(id))!;
    expect(shares.isExpired(share)).toBe(false);
    expect(await shares.expire()).toBe(0);
    clock.set(T0 + 7 * DAY);
    expect(shares.isExpired(share)).toBe(true);
    expect(await shares.expire()).toBe(2);
    expect(await shares.expire()).toBe(0);
    const status = Object.fromEntries(
      (await shares.deliveries({ share: id })).map((d) => [d.recipient, [d.status, d.detail]]),
    );
    expect(status).toEqual({
      [BOB]: ['failed', 'expired'],
      [CAROL]: ['failed', 'expired'],
      [DAVE]: ['fetched', undefined],
    });
    expect(await shares.deleteExpired(30 * DAY)).toBe(0);
    clock.advance(30 * DAY);
    expect(await shares.deleteExpired(30 * DAY)).toBe(1);
    expect(await shares.get(id)).toBeUndefined();
    expect(await shares.deliveries({ share: id })).toEqual([]);
  });
});

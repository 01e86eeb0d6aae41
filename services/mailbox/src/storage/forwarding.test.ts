import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ForwardingStore } from './forwarding.js';
import {
  MINUTE,
  T0,
  clearMailboxTables,
  openMailboxDatabase,
  testClock,
  testDatabases,
  type MailboxTestDatabase,
} from './testing.js';

const BOB = 'bob@example.net';

describe.each(testDatabases())('ForwardingStore on $name', (database) => {
  let db: MailboxTestDatabase;
  const clock = testClock();
  let store: ForwardingStore;

  beforeAll(async () => {
    db = await openMailboxDatabase(database);
    store = new ForwardingStore(db.knex, { now: clock.now });
  });

  afterAll(async () => {
    await db?.destroy();
  });

  beforeEach(async () => {
    await clearMailboxTables(db.knex);
    clock.set(T0);
  });

  it('sets, replaces, reads and deletes an account’s rule', async () => {
    expect(await store.get(BOB)).toBeUndefined();
    const set = await store.set(BOB, {
      targets: ['dave@example.org', 'dave@example.org'],
      keepCopy: true,
      enabled: true,
    });
    expect(set).toEqual({ targets: ['dave@example.org'], keepCopy: true, enabled: true, updatedAt: T0 });
    expect(await store.get(BOB)).toEqual(set);
    clock.advance(MINUTE);
    await store.set(BOB, { targets: ['eve@example.org'], keepCopy: false, enabled: false });
    expect(await store.get(BOB)).toEqual({
      targets: ['eve@example.org'],
      keepCopy: false,
      enabled: false,
      updatedAt: T0 + MINUTE,
    });
    expect(await store.get('carol@example.net')).toBeUndefined();
    expect(await store.delete(BOB)).toBe(true);
    expect(await store.delete(BOB)).toBe(false);
    expect(await store.get(BOB)).toBeUndefined();
  });

  it('rejects rules that cannot work', async () => {
    await expect(store.set(BOB, { targets: [BOB], keepCopy: true, enabled: true })).rejects.toThrow(TypeError);
    await expect(store.set(BOB, { targets: [], keepCopy: true, enabled: true })).rejects.toThrow(TypeError);
    await expect(store.set(BOB, { targets: ['not an address'], keepCopy: true, enabled: true })).rejects.toThrow(
      TypeError,
    );
    // A disabled rule may keep no targets.
    expect((await store.set(BOB, { targets: [], keepCopy: true, enabled: false })).enabled).toBe(false);
  });
});

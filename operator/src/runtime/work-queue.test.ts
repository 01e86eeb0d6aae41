import { describe, expect, it } from 'vitest';
import { WorkQueue } from './work-queue.js';

describe('WorkQueue', () => {
  it('queues a waiting key once however often it is added', async () => {
    const q = new WorkQueue();
    q.add('ns/a');
    q.add('ns/a');
    q.add('ns/b');
    expect(q.length).toBe(2);
    expect(await q.get()).toBe('ns/a');
    expect(await q.get()).toBe('ns/b');
  });

  it('never hands a key being processed to a second worker; one added meanwhile comes back after done', async () => {
    const q = new WorkQueue();
    q.add('k');
    const key = await q.get();
    q.add('k');
    q.add('k');
    expect(q.length).toBe(0);
    let second: string | undefined;
    void q.get().then((k) => (second = k));
    await Promise.resolve();
    expect(second).toBeUndefined();
    q.done(key!);
    await Promise.resolve();
    expect(second).toBe('k');
  });

  it('backs off per key exponentially up to the cap, and forget resets it', () => {
    const q = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 1000 });
    expect([1, 2, 3, 4, 5, 6].map(() => q.addRateLimited('k'))).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(q.addRateLimited('other')).toBe(100);
    q.forget('k');
    expect(q.nextDelay('k')).toBe(100);
    q.shutDown();
  });

  it('keeps the earliest of two delayed adds of one key', async () => {
    const q = new WorkQueue();
    q.addAfter('k', 10_000);
    q.addAfter('k', 20);
    const start = Date.now();
    expect(await q.get()).toBe('k');
    expect(Date.now() - start).toBeLessThan(10_000);
    q.shutDown();
  });

  it('wakes waiting workers with undefined on shutdown and takes nothing after', async () => {
    const q = new WorkQueue();
    const waiting = q.get();
    q.shutDown();
    expect(await waiting).toBeUndefined();
    q.add('k');
    expect(await q.get()).toBeUndefined();
  });

  it('refuses delays that cannot work', () => {
    expect(() => new WorkQueue({ baseDelayMs: 0 })).toThrow(RangeError);
    expect(() => new WorkQueue({ baseDelayMs: 10, maxDelayMs: 5 })).toThrow('0 < baseDelayMs <= maxDelayMs');
  });
});

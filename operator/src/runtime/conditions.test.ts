import { describe, expect, it } from 'vitest';
import { mergeConditions, transitions } from './conditions.js';

const T0 = Date.UTC(2025, 0, 1, 12, 0, 0);
const T1 = T0 + 60_000;

describe('mergeConditions', () => {
  it('keeps lastTransitionTime while the status is unchanged, moves it when the status changes', () => {
    const first = mergeConditions(
      undefined,
      [
        { type: 'Ready', status: 'False', reason: 'NotReady', message: 'waiting' },
        { type: 'MailboxReady', status: 'False', reason: 'Progressing', message: '0/1' },
      ],
      1,
      T0,
    );
    expect(first[0]).toEqual({
      type: 'Ready',
      status: 'False',
      reason: 'NotReady',
      message: 'waiting',
      observedGeneration: 1,
      lastTransitionTime: '2025-01-01T12:00:00Z',
    });
    const second = mergeConditions(
      first,
      [
        { type: 'Ready', status: 'False', reason: 'NotReady', message: 'still waiting' },
        { type: 'MailboxReady', status: 'True', reason: 'Available', message: '1/1' },
      ],
      2,
      T1,
    );
    expect(second[0]).toMatchObject({
      message: 'still waiting',
      observedGeneration: 2,
      lastTransitionTime: '2025-01-01T12:00:00Z',
    });
    expect(second[1]).toMatchObject({ status: 'True', lastTransitionTime: '2025-01-01T12:01:00Z' });
    expect(transitions(first, second).map((c) => c.type)).toEqual(['MailboxReady']);
  });

  it('keeps conditions of other types as they were', () => {
    const foreign = { type: 'Custom', status: 'True' as const, reason: 'X', message: '', lastTransitionTime: 'then' };
    const merged = mergeConditions([foreign], [{ type: 'Ready', status: 'True', reason: 'Ready', message: '' }], 3, T0);
    expect(merged.map((c) => c.type)).toEqual(['Ready', 'Custom']);
    expect(merged[1]).toBe(foreign);
  });
});

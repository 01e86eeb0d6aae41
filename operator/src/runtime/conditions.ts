/**
 * Status conditions as Kubernetes API conventions describe them (`metav1.Condition`): a transition time that
 * moves only when the status does, and the generation each condition was computed from.
 */
import type { Condition } from '../model.js';

export type { Condition, ConditionStatus } from '../model.js';

export type DesiredCondition = Omit<Condition, 'lastTransitionTime' | 'observedGeneration'>;

export const MAILDOMAIN_CONDITIONS = [
  'Ready',
  'AuthServerReady',
  'MailboxReady',
  'WebmailReady',
  'DNSRecordsReady',
] as const;

/** RFC 3339 with seconds, as the API server writes times. */
export function conditionTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/**
 * The new conditions list: each desired condition keeps the previous `lastTransitionTime` when its status
 * is unchanged; conditions of other types already present are kept as they are.
 */
export function mergeConditions(
  previous: readonly Condition[] | undefined,
  desired: readonly DesiredCondition[],
  generation: number | undefined,
  nowMs: number,
): Condition[] {
  const before = new Map((previous ?? []).map((c) => [c.type, c]));
  const out: Condition[] = [];
  for (const d of desired) {
    const old = before.get(d.type);
    before.delete(d.type);
    out.push({
      type: d.type,
      status: d.status,
      reason: d.reason,
      message: d.message,
      ...(generation === undefined ? {} : { observedGeneration: generation }),
      lastTransitionTime: old && old.status === d.status ? old.lastTransitionTime : conditionTime(nowMs),
    });
  }
  return [...out, ...before.values()];
}

export function findCondition(conditions: readonly Condition[] | undefined, type: string): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}

/** The conditions whose status changed between two lists, with their new value. */
export function transitions(before: readonly Condition[] | undefined, after: readonly Condition[]): Condition[] {
  return after.filter((c) => findCondition(before, c.type)?.status !== c.status);
}

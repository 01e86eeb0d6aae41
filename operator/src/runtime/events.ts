/**
 * Kubernetes Events about the custom resources, for `kubectl describe` and `kubectl events`: events.k8s.io/v1
 * where the server has it, core v1 otherwise. Recording an event never fails a reconcile.
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from '@federizer/common';
import { isStatus, type KubeClient } from './kube-client.js';

export type EventType = 'Normal' | 'Warning';

export const REPORTING_CONTROLLER = 'federizer.io/operator';

/** MicroTime: events.k8s.io/v1 wants microseconds. */
function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/Z$/, '000Z');
}

export class EventRecorder {
  readonly #client: KubeClient;
  readonly #instance: string;
  readonly #logger: Logger;
  readonly #now: () => number;
  #api: 'events.k8s.io/v1' | 'v1' = 'events.k8s.io/v1';

  constructor(client: KubeClient, options: { instance: string; logger: Logger; now?: () => number }) {
    this.#client = client;
    this.#instance = options.instance;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
  }

  async record(regarding: KubernetesObject, type: EventType, reason: string, action: string, note: string) {
    const m = regarding.metadata ?? {};
    const ref = {
      apiVersion: regarding.apiVersion,
      kind: regarding.kind,
      name: m.name,
      namespace: m.namespace,
      uid: m.uid,
      resourceVersion: m.resourceVersion,
    };
    const now = this.#now();
    // The API server caps a note at 1 KiB.
    const message = note.length > 1000 ? `${note.slice(0, 997)}...` : note;
    const metadata = { generateName: `${m.name}.`, namespace: m.namespace };
    try {
      if (this.#api === 'events.k8s.io/v1') {
        try {
          await this.#client.create({
            apiVersion: 'events.k8s.io/v1',
            kind: 'Event',
            metadata,
            eventTime: microTime(now),
            reportingController: REPORTING_CONTROLLER,
            reportingInstance: this.#instance,
            action,
            reason,
            note: message,
            type,
            regarding: ref,
          } as KubernetesObject);
          return;
        } catch (e) {
          if (!isStatus(e, 404)) throw e;
          this.#api = 'v1';
        }
      }
      const time = new Date(now).toISOString().replace(/\.\d{3}Z$/, 'Z');
      await this.#client.create({
        apiVersion: 'v1',
        kind: 'Event',
        metadata,
        involvedObject: ref,
        reason,
        action,
        message,
        type,
        firstTimestamp: time,
        lastTimestamp: time,
        count: 1,
        source: { component: REPORTING_CONTROLLER },
        reportingComponent: REPORTING_CONTROLLER,
        reportingInstance: this.#instance,
      } as KubernetesObject);
    } catch (e) {
      this.#logger.warn(
        { err: (e as Error).message, reason, object: `${m.namespace}/${m.name}` },
        'event not recorded',
      );
    }
  }
}

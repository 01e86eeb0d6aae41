/**
 * Leader election on a coordination.k8s.io/v1 Lease, as client-go's `leaderelection` does it: every write is
 * a compare-and-swap on the Lease's resourceVersion; a candidate takes over only after it has seen the
 * same record unchanged for a whole lease duration on its own clock (clocks of different nodes are never
 * compared); a leader that cannot renew within the renew deadline stops leading; a leader that stops
 * releases the Lease so that another takes over at once.
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from '@federizer/common';
import { isStatus, type KubeClient } from './kube-client.js';

interface LeaseObject extends KubernetesObject {
  spec?: {
    holderIdentity?: string | null;
    leaseDurationSeconds?: number;
    acquireTime?: string | null;
    renewTime?: string | null;
    leaseTransitions?: number;
  };
}

export interface LeaderElectionOptions {
  client: KubeClient;
  namespace: string;
  name: string;
  identity: string;
  logger: Logger;
  /** Default 15 s. */
  leaseDurationMs?: number;
  /** A leader that has not renewed for this long stops leading; default 10 s. */
  renewDeadlineMs?: number;
  /** Between attempts; default 2 s. */
  retryPeriodMs?: number;
  onStartedLeading: () => void | Promise<void>;
  onStoppedLeading: () => void | Promise<void>;
  /** Monotonic milliseconds; default performance.now. */
  clock?: () => number;
}

/** MicroTime, as Lease times are written. */
function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/Z$/, '000Z');
}

export class LeaderElector {
  readonly #o: Required<Omit<LeaderElectionOptions, 'clock'>> & { clock: () => number };
  #leader = false;
  #running = false;
  #timer: NodeJS.Timeout | undefined;
  #observed: { key: string; at: number } | undefined;
  #lastRenew = 0;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;

  constructor(options: LeaderElectionOptions) {
    this.#o = {
      leaseDurationMs: 15_000,
      renewDeadlineMs: 10_000,
      retryPeriodMs: 2_000,
      clock: () => performance.now(),
      ...options,
    };
    if (!(this.#o.leaseDurationMs > this.#o.renewDeadlineMs && this.#o.renewDeadlineMs > this.#o.retryPeriodMs))
      throw new RangeError('leader election: leaseDuration > renewDeadline > retryPeriod');
  }

  get isLeader(): boolean {
    return this.#leader;
  }

  get identity(): string {
    return this.#o.identity;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#loop = this.#run();
  }

  async #run(): Promise<void> {
    while (this.#running) {
      try {
        await this.#tryAcquireOrRenew();
      } catch (e) {
        this.#o.logger.warn({ err: (e as Error).message, lease: this.#o.name }, 'leader election attempt failed');
      }
      if (this.#leader && this.#o.clock() - this.#lastRenew > this.#o.renewDeadlineMs) {
        this.#o.logger.warn({ lease: this.#o.name }, 'could not renew the lease in time; stopping leading');
        await this.#setLeader(false);
      }
      if (!this.#running) break;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        this.#timer = setTimeout(resolve, this.#o.retryPeriodMs);
      });
    }
  }

  async #setLeader(leader: boolean): Promise<void> {
    if (this.#leader === leader) return;
    this.#leader = leader;
    this.#o.logger.info(
      { lease: this.#o.name, identity: this.#o.identity, leader },
      leader ? 'leading' : 'not leading',
    );
    try {
      await (leader ? this.#o.onStartedLeading() : this.#o.onStoppedLeading());
    } catch (e) {
      this.#o.logger.error({ err: (e as Error).message }, 'leadership callback failed');
    }
  }

  async #tryAcquireOrRenew(): Promise<void> {
    const { client, namespace, name, identity } = this.#o;
    const ref = { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', namespace, name };
    const now = this.#o.clock();
    const wall = Date.now();
    const lease = await client.get<LeaseObject>(ref);
    const durationSeconds = Math.ceil(this.#o.leaseDurationMs / 1000);
    if (!lease) {
      try {
        await client.create<LeaseObject>({
          ...ref,
          metadata: { name, namespace },
          spec: {
            holderIdentity: identity,
            leaseDurationSeconds: durationSeconds,
            acquireTime: microTime(wall),
            renewTime: microTime(wall),
            leaseTransitions: 0,
          },
        });
      } catch (e) {
        if (isStatus(e, 409)) return; // another candidate created it first
        throw e;
      }
      this.#lastRenew = now;
      await this.#setLeader(true);
      return;
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const key = `${holder}|${spec.renewTime ?? ''}|${spec.leaseDurationSeconds ?? ''}`;
    if (this.#observed?.key !== key) this.#observed = { key, at: now };
    const observedDurationMs = (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    const expired = this.#observed.at + observedDurationMs <= now;
    if (holder !== identity && holder !== '' && !expired) {
      await this.#setLeader(false);
      return;
    }
    const takingOver = holder !== identity;
    try {
      await client.replace<LeaseObject>({
        ...lease,
        spec: {
          ...spec,
          holderIdentity: identity,
          leaseDurationSeconds: durationSeconds,
          renewTime: microTime(wall),
          ...(takingOver
            ? { acquireTime: microTime(wall), leaseTransitions: (spec.leaseTransitions ?? 0) + (holder === '' ? 0 : 1) }
            : {}),
        },
      });
    } catch (e) {
      // Someone else wrote the Lease since it was read: they renewed or took it; look again next time.
      if (isStatus(e, 409)) return;
      throw e;
    }
    this.#lastRenew = now;
    await this.#setLeader(true);
  }

  /** Stops trying; a leader stops leading and releases the Lease (holder cleared) for another to take at once. */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    clearTimeout(this.#timer);
    this.#wake?.();
    await this.#loop;
    if (!this.#leader) return;
    await this.#setLeader(false);
    const { client, namespace, name, identity } = this.#o;
    try {
      const lease = await client.get<LeaseObject>({
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        namespace,
        name,
      });
      if (lease?.spec?.holderIdentity !== identity) return;
      await client.replace<LeaseObject>({
        ...lease,
        spec: { ...lease.spec, holderIdentity: null, leaseDurationSeconds: 1, renewTime: microTime(Date.now()) },
      });
    } catch (e) {
      this.#o.logger.warn({ err: (e as Error).message }, 'could not release the lease');
    }
  }
}

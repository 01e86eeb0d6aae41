/**
 * What `federizer up` does when a domain's process dies under it (killed, out of memory, a crash): it starts
 * the domain again, on the same ports and data, after a pause that doubles while the domain keeps dying within
 * a minute of each restart (1, 2, 4, 8, then 16 s), and leaves it down, saying so, when it dies that soon
 * after the fifth. A domain that ran for a minute before it died starts from a 1 s pause again. Its mail is safe on disk:
 * the restarted mailbox takes back at once the transfers and fetches the dead process held (LeasedWorker).
 */

/** A start that lasted this long was not a crash loop: the next death waits 1 s again. */
export const STABLE_AFTER_MS = 60_000;
/** Restarts in a row, each followed by a death within STABLE_AFTER_MS, before the domain is left down. */
export const MAX_QUICK_RESTARTS = 5;
const FIRST_PAUSE_MS = 1_000;

export interface RestartOptions {
  /** Starts the domain again (LocalFederation.startDomain); resolves once it serves. */
  readonly start: (domain: string) => Promise<void>;
  /** One line for the person watching (`federizer up: ` is prefixed by the caller). */
  readonly say: (line: string) => void;
  readonly now?: () => number;
}

export class DomainRestarts {
  readonly #o: RestartOptions;
  readonly #now: () => number;
  /** Per domain: deaths in a row, each but the first within a minute of a restart, and the last start. */
  readonly #history = new Map<string, { deaths: number; startedAt: number }>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #stopped = false;

  constructor(options: RestartOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  /** The domain's process died (`how`: its signal, or its exit code); schedules its restart. */
  died(domain: string, how: string): void {
    this.#again(domain, `${domain} stopped unexpectedly (${how})`, 'starting it again');
  }

  #again(domain: string, what: string, next: string): void {
    if (this.#stopped) return;
    const last = this.#history.get(domain);
    const quick = last !== undefined && this.#now() - last.startedAt < STABLE_AFTER_MS;
    const deaths = quick ? last.deaths + 1 : 1;
    this.#history.set(domain, { deaths, startedAt: last?.startedAt ?? 0 });
    if (deaths > MAX_QUICK_RESTARTS) {
      this.#o.say(
        `${what}: left down, as it died within a minute of each of its last ${MAX_QUICK_RESTARTS} restarts ` +
          '(its log is above; restart federizer up once the cause is fixed)',
      );
      return;
    }
    const pause = FIRST_PAUSE_MS * 2 ** (deaths - 1);
    this.#o.say(`${what}; ${next} in ${pause / 1000} s`);
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      void this.#restart(domain, deaths);
    }, pause);
    this.#timers.add(timer);
  }

  async #restart(domain: string, deaths: number): Promise<void> {
    if (this.#stopped) return;
    this.#history.set(domain, { deaths, startedAt: this.#now() });
    try {
      await this.#o.start(domain);
    } catch (e) {
      // Stopping meanwhile (Ctrl-C) is not a failure to report.
      if (!this.#stopped)
        this.#again(domain, `${domain} could not start again (${(e as Error).message})`, 'trying again');
      return;
    }
    if (!this.#stopped) this.#o.say(`${domain} is running again`);
  }

  /** No restart from now on (the federation is stopping); pending ones are dropped. */
  stop(): void {
    this.#stopped = true;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }
}

/**
 * The base of every store: an immutable snapshot and subscribers, the contract of React's
 * `useSyncExternalStore`. Stores are plain classes that hold the business logic; components only read
 * snapshots and call methods.
 */
export class Store<S> {
  #state: S;
  readonly #listeners = new Set<() => void>();

  constructor(initial: S) {
    this.#state = initial;
  }

  readonly getSnapshot = (): S => this.#state;

  readonly subscribe = (listener: () => void): (() => void) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  get state(): S {
    return this.#state;
  }

  protected setState(next: Partial<S> | ((current: S) => S)): void {
    const value = typeof next === 'function' ? next(this.#state) : { ...this.#state, ...next };
    if (value === this.#state) return;
    this.#state = value;
    for (const listener of [...this.#listeners]) listener();
  }
}

/**
 * The webmail's one IndexedDB database, shared by the pages and the service worker: the signed-in
 * session (with its non-extractable DPoP key), the sync state, and the mail already synced, so that it
 * stays readable offline. A few promise helpers over the raw API are all it needs.
 */

export const DB_NAME = 'federizer-webmail';
const DB_VERSION = 1;

/** Object stores: `kv` holds single records under fixed keys; the others are keyed by message id or Content-ID. */
export type StoreName = 'kv' | 'summaries' | 'messages' | 'bodies';

export type KvKey = 'auth' | 'pending-sign-in' | 'sync' | 'account' | 'as-metadata';

/**
 * A write refused because the work it belonged to was stopped (sign-out, or the sync stopped): a step
 * that was already under way when the user signed out must not put their mail back after the clear.
 */
export class StoppedError extends Error {
  override readonly name = 'StoppedError';
}

export class LocalDb {
  private constructor(
    private readonly db: IDBDatabase,
    /** Writes through this handle are refused once any of these has aborted. */
    private readonly signals: readonly AbortSignal[] = [],
  ) {}

  static async open(factory: IDBFactory = indexedDB, name = DB_NAME): Promise<LocalDb> {
    const request = factory.open(name, DB_VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      db.createObjectStore('kv');
      db.createObjectStore('summaries', { keyPath: 'id' }).createIndex('mailbox', 'mailbox');
      db.createObjectStore('messages', { keyPath: 'id' });
      db.createObjectStore('bodies');
    };
    const db = await settle(request);
    // Another context upgrading the schema must not be blocked by this connection.
    db.onversionchange = () => db.close();
    return new LocalDb(db);
  }

  close(): void {
    this.db.close();
  }

  /**
   * The same database, whose writes are refused (StoppedError) once `signal` aborts. The check is made
   * when the transaction is created, in the same task: IndexedDB runs overlapping read-write
   * transactions in creation order, so a write let through here is always followed by a sign-out's
   * clear, never the other way round.
   */
  scoped(...signals: readonly (AbortSignal | undefined)[]): LocalDb {
    const more = signals.filter((s): s is AbortSignal => s !== undefined);
    return more.length === 0 ? this : new LocalDb(this.db, [...this.signals, ...more]);
  }

  /** Whether the work of this handle was stopped. */
  get stopped(): boolean {
    return this.signals.some((s) => s.aborted);
  }

  /** Throws StoppedError when stopped: called before changing anything that mirrors the database, too. */
  assertLive(): void {
    if (this.stopped) throw new StoppedError('stopped: this write belongs to a session or a sync that has ended');
  }

  async get<T>(store: StoreName, key: IDBValidKey): Promise<T | undefined> {
    return (await settle(this.db.transaction(store).objectStore(store).get(key))) as T | undefined;
  }

  kv<T>(key: KvKey): Promise<T | undefined> {
    return this.get<T>('kv', key);
  }

  async setKv(key: KvKey, value: unknown): Promise<void> {
    await this.write(['kv'], (t) => t.objectStore('kv').put(value, key));
  }

  async deleteKv(key: KvKey): Promise<void> {
    await this.write(['kv'], (t) => t.objectStore('kv').delete(key));
  }

  async getAll<T>(store: StoreName): Promise<T[]> {
    return (await settle(this.db.transaction(store).objectStore(store).getAll())) as T[];
  }

  async getMany<T>(store: StoreName, keys: readonly IDBValidKey[]): Promise<(T | undefined)[]> {
    const t = this.db.transaction(store);
    const os = t.objectStore(store);
    return Promise.all(keys.map((k) => settle(os.get(k)) as Promise<T | undefined>));
  }

  /** One read-write transaction over `stores`; resolves when it commits, rejects when it aborts. */
  write(stores: readonly StoreName[], body: (t: IDBTransaction) => void): Promise<void> {
    if (this.stopped) return Promise.reject(new StoppedError(`stopped: not writing ${stores.join(', ')}`));
    const t = this.db.transaction(stores, 'readwrite');
    const done = new Promise<void>((resolve, reject) => {
      t.oncomplete = () => resolve();
      t.onabort = () => reject(t.error ?? new Error('IndexedDB transaction aborted'));
      t.onerror = () => reject(t.error ?? new Error('IndexedDB transaction failed'));
    });
    try {
      body(t);
    } catch (e) {
      t.abort();
      throw e;
    }
    return done;
  }

  /** Forgets everything: used at sign-out and when the mailbox says the sync state is too old. */
  clear(stores: readonly StoreName[] = ['kv', 'summaries', 'messages', 'bodies']): Promise<void> {
    return this.write(stores, (t) => stores.forEach((s) => t.objectStore(s).clear()));
  }
}

function settle<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error ?? new Error('IndexedDB request failed'));
  });
}

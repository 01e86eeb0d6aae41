/**
 * Keeps V8's promise hooks off in a process that runs this AS.
 *
 * oidc-provider (9.x) handles every request inside an AsyncLocalStorage (`als.run(ctx, next)` in its
 * helpers/initialize_app.js), for two things only: its static `Provider.ctx` getter and the Client ID
 * Metadata Document feature. This AS uses neither (`createProvider` leaves that feature off; nothing here
 * reads `Provider.ctx`). On Node 20, the first `run` of an AsyncLocalStorage turns on promise hooks for the
 * whole process, and they stay on: from then on every promise, in the AS and in the mailbox and webmail
 * that share its process in the local federation, pays for a hook at creation and at resolution. On the
 * federation bench (three runs each way, one round each, warm-up included) the CPU per delivery went from a
 * median of 52.3 to 50.5 ms.
 *
 * So that storage's `run` becomes a plain call. The package has no export map, so its module is the same
 * instance oidc-provider imports. A version where it is no longer an AsyncLocalStorage is left alone
 * (reported as false); one that moved the file fails to load here, at start, and in the tests.
 */
// The declaration of that untyped module is brought in from here, so that every program compiling this
// file has it (the webmail's test program too); an import cannot bring in an ambient declaration.
// eslint-disable-next-line @typescript-eslint/triple-slash-reference
/// <reference path="./oidc-provider-als.d.ts" />
import { AsyncLocalStorage } from 'node:async_hooks';
import providerStorage from 'oidc-provider/lib/helpers/als.js';

let done = false;

/** True when oidc-provider's storage no longer turns promise hooks on (now or from an earlier call). */
export function keepPromiseHooksOff(): boolean {
  if (done) return true;
  if (!(providerStorage instanceof AsyncLocalStorage)) return false;
  const plainRun = <R, A extends unknown[]>(_store: unknown, callback: (...args: A) => R, ...args: A): R =>
    callback(...args);
  providerStorage.run = plainRun;
  // Hooks turned on by a request handled before this call go off again.
  providerStorage.disable();
  done = true;
  return true;
}

/** Whether oidc-provider's storage is active (the promise hooks it needs are on); for tests. */
export function providerStorageActive(): boolean {
  return (providerStorage as unknown as { enabled?: boolean }).enabled === true;
}

/**
 * The two-domain set-up of the store tests: example.com and example.net started once for the suite it is
 * called in, Alice signed in on the first and Bob on the second, all closed after the suite.
 */
import { afterAll, beforeAll } from 'vitest';
import { startWebmailFederation, type SignedIn, type WebmailFederation } from './federation.js';

export interface AliceAndBob {
  fed: WebmailFederation;
  /** alice@example.com */
  alice: SignedIn;
  /** bob@example.net */
  bob: SignedIn;
}

/** Registers the hooks in the calling suite; the fields are set once its beforeAll hooks have run. */
export function useAliceAndBob(): AliceAndBob {
  const world = {} as AliceAndBob;
  beforeAll(async () => {
    world.fed = await startWebmailFederation(['example.com', 'example.net']);
    world.alice = await world.fed.signIn('alice@example.com');
    world.bob = await world.fed.signIn('bob@example.net');
  });
  afterAll(() => world.fed?.close());
  return world;
}

/**
 * The set-up the runtime tests share: a fresh fake API server for each test, and the operator a test starts
 * on it, both closed after the test (the operator first, so that it sees no server vanish under it).
 */
import { afterEach, beforeEach } from 'vitest';
import type { OperatorRuntime } from '../../src/runtime/index.js';
import { FakeApiServer, type FakeApiServerOptions } from '../fake-apiserver.js';

export interface OperatorFixture {
  /** The current test's API server. */
  api: FakeApiServer;
  /** Set by a test that starts an operator; closed after it, unless the test closed it and set this back. */
  operator: OperatorRuntime | undefined;
}

/**
 * Registers the hooks in the suite it is called in. The hooks of that suite registered before this call run
 * before the server starts and after it is closed (vitest runs afterEach hooks in reverse order).
 */
export function useFakeApiServer(options?: FakeApiServerOptions): OperatorFixture {
  const fixture = { operator: undefined } as OperatorFixture;
  beforeEach(async () => {
    fixture.api = await FakeApiServer.start(options);
  });
  afterEach(async () => {
    await fixture.operator?.close();
    fixture.operator = undefined;
    await fixture.api.close();
  });
  return fixture;
}

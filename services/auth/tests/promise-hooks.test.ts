/**
 * oidc-provider would turn on V8's promise hooks for the whole process with the first request it handles
 * (its AsyncLocalStorage); the AS keeps them off (src/promise-hooks.ts). Checked after real requests: a
 * sign-in through the login form and the token endpoint, and the discovery document.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testDatabases } from '../../common/src/testing/databases.js';
import { providerStorageActive } from '../src/promise-hooks.js';
import { signIn, testHttp } from './exchange-client.js';
import { startFederation, type Federation } from './harness.js';

describe("oidc-provider's request storage", () => {
  let fed: Federation;
  beforeAll(async () => {
    fed = await startFederation(['example.com'], { database: testDatabases()[0]!.create });
    await fed.domains['example.com']!.createUser('alice@example.com', 'alice password');
  });
  afterAll(() => fed?.close());

  it('reports an active storage as Node does (the check below can tell)', () => {
    const storage = new AsyncLocalStorage<number>();
    storage.run(1, () => expect(storage.getStore()).toBe(1));
    expect((storage as unknown as { enabled?: boolean }).enabled).toBe(true);
    storage.disable();
    expect((storage as unknown as { enabled?: boolean }).enabled).toBe(false);
  });

  it('stays inactive while the AS signs a user in and issues tokens', async () => {
    const com = fed.domains['example.com']!;
    const http = testHttp();
    const session = await signIn(com, http, 'alice@example.com', 'alice password');
    expect(session.accessToken).toMatch(/^ey/);
    const discovery = await http.fetch(`${com.issuer}/.well-known/openid-configuration`);
    expect(discovery.status).toBe(200);
    expect(providerStorageActive()).toBe(false);
  });
});

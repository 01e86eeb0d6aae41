/**
 * The MailUser builder's calls made for real: an Authorization Server started from the environment the
 * MailDomain builder gives it (only its database, address and port moved to this machine), and each call of
 * the plan sent to its admin API as the runtime would send it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthService, readAuthEnv } from '@federizer/auth';
import type { MailDomain, MailUser } from '../model.js';
import { buildMailDomain } from './mail-domain.js';
import { belongsTo, buildMailUser, type AdminCall } from './mail-user.js';
import { containerEnv, find } from './testing/manifests.js';

const md: MailDomain = {
  apiVersion: 'federizer.io/v1alpha1',
  kind: 'MailDomain',
  metadata: { name: 'example-com', namespace: 'mail', uid: '8d7e3c1e-0000-4000-8000-000000000001' },
  spec: { domain: 'example.com', forwarding: { defaultPolicy: 'none' } },
};

function user(spec: Partial<MailUser['spec']> = {}): MailUser {
  return {
    apiVersion: 'federizer.io/v1alpha1',
    kind: 'MailUser',
    metadata: { name: 'alice', namespace: 'mail' },
    spec: { address: 'Alice@example.com', passwordSecretRef: { name: 'alice-password' }, ...spec },
  };
}

describe('buildMailUser against a real AS configured by the MailDomain builder', () => {
  let dir: string;
  let as: AuthService;
  let adminToken: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-mailuser-'));
    const { objects } = buildMailDomain(md, { existingSecrets: [], hasServiceMonitorCrd: false });
    const env = {
      ...containerEnv(objects, 'example-com-auth'),
      // The pod's volume, address and port, on this machine.
      FEDERIZER_AUTH_DATABASE: `sqlite:${join(dir, 'auth.db')}`,
      FEDERIZER_AUTH_HOST: '127.0.0.1',
      FEDERIZER_AUTH_PORT: '0',
    };
    const settings = readAuthEnv(env);
    as = await AuthService.start(settings.config, settings.secrets);
    adminToken = Buffer.from(
      (find(objects, 'Secret', 'example-com-admin-token').data as Record<string, string>).token!,
      'base64',
    ).toString();
  });

  afterAll(async () => {
    await as?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const send = async (call: AdminCall) => {
    const res = await fetch(`${as.url}${call.path}`, {
      method: call.method,
      headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
      ...(call.body ? { body: JSON.stringify(call.body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : undefined };
  };
  const get = (address: string) => send({ method: 'GET' as AdminCall['method'], path: `/admin/v1/users/${address}` });

  it('names the in-cluster AS Service and the Secrets to read', () => {
    const plan = buildMailUser(user(), md, 'a long password');
    expect(plan.adminUrl).toBe('http://example-com-auth.mail.svc');
    expect(plan.adminToken).toEqual({ secretName: 'example-com-admin-token', key: 'token' });
    expect(plan.password).toEqual({ secretName: 'alice-password', key: 'password' });
  });

  it('creates the user with the domain default forwarding policy, then updates, re-creates (409) and deletes it', async () => {
    const password = 'correct horse battery staple';
    let plan = buildMailUser(user({ displayName: 'Alice Liddell' }), md, password);
    expect(await send(plan.create)).toMatchObject({
      status: 201,
      body: { address: 'alice@example.com', displayName: 'Alice Liddell', forwardingPolicy: 'none', disabled: false },
    });
    // The runtime treats 409 as "exists", then sends the update.
    expect((await send(plan.create)).status).toBe(409);

    plan = buildMailUser(
      user({ forwardingPolicy: 'any', disabled: true, sendQuotaPerDay: 50 }),
      md,
      'another long password',
    );
    expect(await send(plan.update)).toMatchObject({
      status: 200,
      body: { displayName: '', forwardingPolicy: 'any', disabled: true, sendQuotaPerDay: 50 },
    });
    expect((await send(plan.setPassword)).status).toBe(204);
    expect((await get('alice%40example.com')).body).toMatchObject({ forwardingPolicy: 'any', disabled: true });

    expect((await send(plan.remove)).status).toBe(204);
    expect((await get('alice%40example.com')).status).toBe(404);
  });

  it('carries the AS refusal of a weak password back, so the runtime can report it', async () => {
    const plan = buildMailUser(user({ address: 'bob@example.com' }), md, 'short');
    expect(await send(plan.create)).toMatchObject({ status: 400, body: { error: 'weak_password' } });
  });

  it('refuses a MailUser of another domain or namespace', () => {
    expect(belongsTo(user({ address: 'carol@example.org' }), md)).toBe(false);
    expect(belongsTo({ ...user(), metadata: { name: 'alice', namespace: 'other' } }, md)).toBe(false);
    expect(() => buildMailUser(user({ address: 'carol@example.org' }), md, 'a long password')).toThrow(
      /does not belong to MailDomain example-com \(example.com\)/,
    );
  });
});

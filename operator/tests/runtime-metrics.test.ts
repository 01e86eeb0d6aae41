/**
 * The operator's HTTP endpoints: `/metrics` (which must pass `promtool check metrics`, from Debian's
 * `prometheus` package that .ci/run installs), `/healthz` and `/readyz`.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { condition, eventually, mailDomain, MD_API, startOperator, testBuilder } from './helpers/runtime-harness.js';
import { useFakeApiServer } from './helpers/operator-fixture.js';

const hasPromtool = spawnSync('promtool', ['--version'], { encoding: 'utf8' }).status === 0;

const cluster = useFakeApiServer();

describe('the probe and metrics server', () => {
  it('exposes reconciles by result, their duration, queue depth and leadership', async () => {
    cluster.api.inject({ match: /^PATCH .*\/maildomains\/example\/status/, status: 409, reason: 'Conflict' });
    cluster.operator = await startOperator(cluster.api, { build: testBuilder(), http: { host: '127.0.0.1', port: 0 } });
    cluster.api.create(mailDomain('example', 'mail', { domain: 'example.com' }));
    await eventually(() =>
      expect(condition(cluster.api.get(MD_API, 'MailDomain', 'mail', 'example'), 'Ready')).toBeDefined(),
    );
    const res = await fetch(`${cluster.operator.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    expect(text).toMatch(
      /^federizer_operator_reconciles_total\{controller="maildomain",result="error",service="operator"\} 1$/m,
    );
    expect(text).toMatch(
      /^federizer_operator_reconciles_total\{controller="maildomain",result="requeue",service="operator"\} \d+$/m,
    );
    expect(text).toMatch(
      /^federizer_operator_reconcile_duration_seconds_count\{service="operator",controller="maildomain"\} [1-9]/m,
    );
    expect(text).toMatch(/^federizer_operator_queue_depth\{controller="maildomain",service="operator"\} 0$/m);
    expect(text).toMatch(/^federizer_operator_leader\{service="operator"\} 1$/m);
  });

  // promtool comes from Debian's `prometheus` package (installed by .ci/run); without it, only this is skipped.
  it.skipIf(!hasPromtool)('passes `promtool check metrics`', async () => {
    cluster.operator = await startOperator(cluster.api, { build: testBuilder(), http: { host: '127.0.0.1', port: 0 } });
    cluster.api.create(mailDomain('example', 'mail', { domain: 'example.com' }));
    await eventually(() =>
      expect(condition(cluster.api.get(MD_API, 'MailDomain', 'mail', 'example'), 'Ready')).toBeDefined(),
    );
    const text = await (await fetch(`${cluster.operator.url}/metrics`)).text();
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(`${check.stdout}${check.stderr}`).toBe('');
    expect(check.status).toBe(0);
  });

  it('answers /healthz, and /readyz once its informers have listed (503 until then)', async () => {
    cluster.api.inject({ match: /^GET \/apis\/federizer\.io\/v1alpha1\/mailusers(\?|$)/, status: 500, times: 3 });
    cluster.operator = await startOperator(cluster.api, {
      build: testBuilder(),
      http: { host: '127.0.0.1', port: 0 },
      informer: { backoffMs: 300, maxBackoffMs: 300 },
    });
    expect((await fetch(`${cluster.operator.url}/healthz`)).status).toBe(200);
    const waiting = await fetch(`${cluster.operator.url}/readyz`);
    expect(waiting.status).toBe(503);
    expect(await waiting.text()).toBe('waiting for informers: MailUser\n');
    await eventually(async () => expect((await fetch(`${cluster.operator!.url}/readyz`)).status).toBe(200));
    expect((await fetch(`${cluster.operator.url}/nothing`)).status).toBe(404);
  });
});

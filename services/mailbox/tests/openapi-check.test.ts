/**
 * The check every mailbox test applies to the answers it reads (`documented`), against a server that
 * answers what the document does not say, so that a mismatch is known to fail the test that meets it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listen, type RunningServer } from '@federizer/common';
import { OpenApiValidationError } from '../../common/src/testing/openapi.js';
import { documented } from './openapi-check.js';

describe('documented(): every answer checked against openapi/mailbox.openapi.json', () => {
  let server: RunningServer;
  const answers: Record<string, { status: number; type?: string; body?: string; headers?: Record<string, string> }> = {
    '/healthz': { status: 200, type: 'application/json', body: '{"status":"ok"}' },
    '/readyz': { status: 200, type: 'application/json', body: '{"status":"maybe"}' },
    '/api/v1/session': { status: 418, type: 'application/json', body: '{"error":"teapot"}' },
    '/api/v1/state': { status: 200, type: 'text/html', body: '<p>state</p>' },
    '/api/v1/nowhere': { status: 200, type: 'application/json', body: '{}' },
    '/api/v1/messages/01jfv4k3q8d2x7m5n9p0r6s1tb': {
      status: 401,
      type: 'application/json',
      body: '{"error":"invalid_token","error_description":"no challenge"}',
    },
  };

  beforeAll(async () => {
    server = await listen((req, res) => {
      const a = answers[req.url ?? '']!;
      res.writeHead(a.status, { ...(a.type ? { 'content-type': a.type } : {}), ...a.headers });
      res.end(a.body);
    });
  });
  afterAll(() => server?.close(0));

  async function check(path: string): Promise<Response> {
    return documented('GET', `${server.url}${path}`, await fetch(`${server.url}${path}`));
  }

  async function violations(path: string): Promise<readonly string[]> {
    try {
      await check(path);
    } catch (e) {
      expect(e).toBeInstanceOf(OpenApiValidationError);
      return (e as OpenApiValidationError).violations;
    }
    throw new Error(`${path}: the answer was accepted`);
  }

  it('hands back a documented answer whole, unread', async () => {
    const res = await check('/healthz');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(await res.json()).toEqual({ status: 'ok' });
  });

  it('fails on a body against its schema, an undocumented status, content type or path, a missing header', async () => {
    expect((await violations('/readyz'))[0]).toMatch(/^body\/status must be equal to constant/);
    expect((await violations('/api/v1/session'))[0]).toMatch(/^status 418 is not documented/);
    expect((await violations('/api/v1/state'))[0]).toMatch(/^content type text\/html is not documented/);
    expect((await violations('/api/v1/nowhere'))[0]).toBe('no path of the document matches');
    expect(await violations('/api/v1/messages/01jfv4k3q8d2x7m5n9p0r6s1tb')).toContain(
      'the required header WWW-Authenticate is missing',
    );
  });
});

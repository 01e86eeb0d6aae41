/**
 * The local federation as `npm start` runs it: each domain in a child process of its own. A domain killed
 * with SIGKILL is reported and the others keep serving; started again, it has its mail and takes new mail;
 * closing the federation leaves no process behind.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { externalContentType } from '@federizer/protocol';
import {
  startLocalFederation,
  type FederationEvent,
  type LocalFederation,
} from '../src/federation/local-federation.js';
import { federationClient, type FederationClient, type FederationUserClient } from '../src/federation/testing.js';

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function send(alice: FederationUserClient, text: string): Promise<string> {
  const upload = (await (
    await alice.api('/resources', { method: 'POST', raw: text, headers: { 'content-type': 'text/plain' } })
  ).json()) as { contentId: string; size: number };
  const messageId = `<${randomUUID()}@example.com>`;
  const sent = await alice.api('/messages/send', {
    method: 'POST',
    json: {
      message: {
        envelope: [
          {
            headers: [
              { From: alice.address },
              { To: 'bob@example.net' },
              { Subject: 'across processes' },
              { 'Message-ID': messageId },
            ],
          },
        ],
        body: {
          parts: [
            {
              headers: [
                { 'Content-Disposition': 'inline' },
                { 'Content-ID': upload.contentId },
                { 'Content-Type': externalContentType(upload.size, 'text/plain') },
              ],
            },
          ],
        },
      },
    },
  });
  expect(sent.status, await sent.clone().text()).toBe(202);
  return messageId;
}

async function inInbox(bob: FederationUserClient, messageId: string): Promise<void> {
  await until(`${messageId} fetched into bob's inbox`, async () => {
    const list = (await (await bob.api('/messages?mailbox=inbox')).json()) as {
      messages: { id: string; messageId: string }[];
    };
    const entry = list.messages.find((m) => m.messageId === messageId);
    if (!entry) return undefined;
    const full = (await (await bob.api(`/messages/${entry.id}`)).json()) as { resources: { status: string }[] };
    return full.resources.every((r) => r.status === 'held') || undefined;
  });
}

describe('the local federation, one process per domain', () => {
  let dir: string;
  let fed: LocalFederation;
  let client: FederationClient;
  const events: FederationEvent[] = [];
  const logs: { domain: string; line: string }[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-up-proc-'));
    fed = await startLocalFederation({
      domains: ['example.com', 'example.net'],
      dataDir: dir,
      portBase: 0,
      processes: true,
      logLevel: 'info',
      log: (domain, line) => logs.push({ domain, line }),
      onEvent: (e) => events.push(e),
      webmailDist: join(dir, 'no-webmail'),
    });
    client = federationClient(fed);
  });

  afterAll(async () => {
    await client?.close();
    await fed?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('runs each domain in its own process, and hands their logs to the caller by domain', () => {
    const pids = Object.values(fed.domains).map((d) => d.pid);
    expect(pids.every((p) => typeof p === 'number' && p !== process.pid && alive(p))).toBe(true);
    expect(new Set(pids).size).toBe(2);
    for (const domain of ['example.com', 'example.net']) {
      const messages = logs
        .filter((l) => l.domain === domain && l.line.startsWith('{'))
        .map((l) => JSON.parse(l.line) as { msg: string; domain: string });
      expect(messages.map((m) => m.msg)).toEqual(
        expect.arrayContaining(['authorization server listening', 'mailbox listening', 'webmail listening']),
      );
      expect(messages.every((m) => m.domain === domain)).toBe(true);
    }
  });

  it('carries mail between the processes', async () => {
    const alice = await client.user('alice@example.com');
    const bob = await client.user('bob@example.net');
    await inInbox(bob, await send(alice, 'between two processes\n'));
  });

  it('reports a domain killed from outside; the other keeps serving; started again it has its mail', async () => {
    const net = fed.domains['example.net']!;
    const com = fed.domains['example.com']!;
    const bobBefore = await client.user('bob@example.net');
    const before = (await (await bobBefore.api('/messages?mailbox=inbox')).json()) as { messages: unknown[] };
    const pid = net.pid!;
    process.kill(pid, 'SIGKILL');
    const exit = await until('the exit event', async () => events.find((e) => e.type === 'exit'));
    expect(exit).toEqual({ type: 'exit', domain: 'example.net', code: null, signal: 'SIGKILL' });
    expect(net.running).toBe(false);
    expect(net.pid).toBeUndefined();
    expect((await fetch(`http://127.0.0.1:${com.ports.mailbox}/healthz`)).ok).toBe(true);

    await fed.startDomain('example.net');
    expect(net.pid).not.toBe(pid);
    const bob = await client.user('bob@example.net');
    const after = (await (await bob.api('/messages?mailbox=inbox')).json()) as { messages: unknown[] };
    expect(after.messages).toEqual(before.messages);
    await inInbox(bob, await send(await client.user('alice@example.com'), 'after a kill -9\n'));
  });

  it('stopDomain with kill: true is SIGKILL, and is not reported as unexpected', async () => {
    events.length = 0;
    const pid = fed.domains['example.com']!.pid!;
    await fed.stopDomain('example.com', { kill: true });
    expect(alive(pid)).toBe(false);
    expect(events).toEqual([]);
    await fed.startDomain('example.com');
    expect(fed.domains['example.com']!.running).toBe(true);
  });

  it('close stops every process gracefully', async () => {
    const pids = Object.values(fed.domains).map((d) => d.pid!);
    logs.length = 0;
    await fed.close();
    expect(pids.filter(alive)).toEqual([]);
    // The mailbox handed back its claimed work and the AS said goodbye: a graceful stop, not a kill.
    const said = logs.map((l) => (l.line.startsWith('{') ? (JSON.parse(l.line) as { msg: string }).msg : l.line));
    expect(said.filter((m) => m === 'authorization server stopped')).toHaveLength(2);
    expect(events).toEqual([]);
  });
});

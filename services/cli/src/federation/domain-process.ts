/**
 * The entry point of a domain's child process (forked by local-federation.ts with an IPC channel). The
 * parent sends `start` with the domain's spec; the child answers `ready` or `failed`, and stops gracefully
 * on `stop`, on SIGTERM, or when the channel closes because the parent is gone, so no domain outlives the
 * federation. SIGINT is left to the parent: Ctrl-C reaches the whole process group, and the parent decides
 * the order of the shutdown.
 */
import { startDomainServices, type DomainSpec, type RunningDomain } from './domain-services.js';

export type ParentMessage = { type: 'start'; spec: DomainSpec } | { type: 'stop' };
export type ChildMessage = { type: 'ready' } | { type: 'failed'; message: string; code?: string } | { type: 'stopped' };

const send = (message: ChildMessage) => {
  if (process.connected) process.send?.(message);
};

let running: Promise<RunningDomain | undefined> | undefined;
let stopping = false;

async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  const domain = await running?.catch(() => undefined);
  await domain?.close();
  send({ type: 'stopped' });
  if (process.connected) process.disconnect();
  // Whatever might still hold the event loop (a lingering socket) must not keep a stopped domain alive.
  setTimeout(() => process.exit(0), 5_000).unref();
}

if (process.send === undefined) {
  process.stderr.write('domain-process is started by `federizer up`, not by hand\n');
  process.exitCode = 2;
} else {
  process.on('message', (message: ParentMessage) => {
    if (message.type === 'start' && running === undefined) {
      running = startDomainServices(message.spec, process.stdout).then(
        (domain) => {
          send({ type: 'ready' });
          return domain;
        },
        (e: unknown) => {
          const error = e as Error & { code?: string };
          send({ type: 'failed', message: error?.message ?? String(e), code: error?.code });
          void stop();
          return undefined;
        },
      );
    } else if (message.type === 'stop') {
      void stop();
    }
  });
  process.on('disconnect', () => void stop());
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => {
    if (!process.connected) void stop();
  });
}

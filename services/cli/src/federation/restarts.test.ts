/**
 * The restart policy of `federizer up` for a domain whose process dies, on a fake clock: the pauses, the
 * reset after a minute of running, the domain left down after five quick deaths, and nothing after a stop.
 * (up-command.test.ts kills a real domain process and sees it come back.)
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DomainRestarts, MAX_QUICK_RESTARTS, STABLE_AFTER_MS } from './restarts.js';

describe('DomainRestarts', () => {
  let said: string[];
  let starts: string[];
  let failing: boolean;
  let restarts: DomainRestarts;

  beforeEach(() => {
    vi.useFakeTimers();
    said = [];
    starts = [];
    failing = false;
    restarts = new DomainRestarts({
      start: async (domain) => {
        starts.push(domain);
        if (failing) throw new Error('port 8421 (the mailbox of example.net) is already in use');
      },
      say: (line) => said.push(line),
    });
  });
  afterEach(() => {
    restarts.stop();
    vi.useRealTimers();
  });

  it('starts a dead domain again after 1 s, then doubles the pause while it keeps dying soon after', async () => {
    restarts.died('example.net', 'SIGKILL');
    expect(said).toEqual(['example.net stopped unexpectedly (SIGKILL); starting it again in 1 s']);
    await vi.advanceTimersByTimeAsync(999);
    expect(starts).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(starts).toEqual(['example.net']);
    expect(said.at(-1)).toBe('example.net is running again');

    // Dead again 10 s later: 2 s, then 4 s.
    await vi.advanceTimersByTimeAsync(10_000);
    restarts.died('example.net', 'exit code 1');
    expect(said.at(-1)).toBe('example.net stopped unexpectedly (exit code 1); starting it again in 2 s');
    await vi.advanceTimersByTimeAsync(2_000);
    restarts.died('example.net', 'exit code 1');
    expect(said.at(-1)).toBe('example.net stopped unexpectedly (exit code 1); starting it again in 4 s');
    await vi.advanceTimersByTimeAsync(4_000);
    expect(starts).toHaveLength(3);

    // A minute of running: the next death is a first one again.
    await vi.advanceTimersByTimeAsync(STABLE_AFTER_MS);
    restarts.died('example.net', 'SIGKILL');
    expect(said.at(-1)).toBe('example.net stopped unexpectedly (SIGKILL); starting it again in 1 s');
  });

  it('leaves a domain down when it dies within a minute of each of five restarts in a row, and says so', async () => {
    for (let i = 0; i < MAX_QUICK_RESTARTS; i++) {
      restarts.died('example.org', 'exit code 1');
      await vi.advanceTimersByTimeAsync(16_000);
    }
    expect(starts).toHaveLength(MAX_QUICK_RESTARTS);
    restarts.died('example.org', 'exit code 1');
    expect(said.at(-1)).toBe(
      'example.org stopped unexpectedly (exit code 1): left down, as it died within a minute of each of its last 5 ' +
        'restarts (its log is above; restart federizer up once the cause is fixed)',
    );
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(starts).toHaveLength(MAX_QUICK_RESTARTS);
  });

  it('counts a start that fails as another death, with its reason', async () => {
    failing = true;
    restarts.died('example.net', 'SIGKILL');
    await vi.advanceTimersByTimeAsync(1_000);
    expect(said.at(-1)).toBe(
      'example.net could not start again (port 8421 (the mailbox of example.net) is already in use); trying again ' +
        'in 2 s',
    );
    failing = false;
    await vi.advanceTimersByTimeAsync(2_000);
    expect(said.at(-1)).toBe('example.net is running again');
  });

  it('starts nothing once stopped, not even a restart already scheduled', async () => {
    restarts.died('example.net', 'SIGKILL');
    restarts.stop();
    restarts.died('example.com', 'SIGKILL');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(starts).toEqual([]);
    expect(said).toEqual(['example.net stopped unexpectedly (SIGKILL); starting it again in 1 s']);
  });
});

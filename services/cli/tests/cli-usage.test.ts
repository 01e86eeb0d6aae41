/**
 * Usage as `main.ts` runs it, in-process through `run(argv, io)`: help asked for is output (stdout, exit 0),
 * help after a command line without a command is a usage error (stderr, exit 2); and `federizer protocol
 * digest` with a file that cannot be read, a mistake on the command line said in one line (exit 2).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandIo } from '../src/io.js';
import { run } from '../src/run.js';

async function cli(argv: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const io: CommandIo = {
    stdout: { write: (chunk: string) => (stdout += chunk) },
    stderr: { write: (chunk: string) => (stderr += chunk) },
    readStdin: () => Promise.reject(new Error('standard input must not be read')),
  };
  const code = await run(argv, io);
  return { code, stdout, stderr };
}

describe('a command line without its command', () => {
  it('prints the help on stderr, not on stdout, and exits 2', async () => {
    for (const argv of [[], ['mail'], ['user'], ['protocol'], ['operator']]) {
      const out = await cli(argv);
      expect(out.code, argv.join(' ')).toBe(2);
      expect(out.stdout, argv.join(' ')).toBe('');
      expect(out.stderr, argv.join(' ')).toMatch(/^federizer /);
    }
  });

  it('--help prints it on stdout and exits 0', async () => {
    for (const argv of [['--help'], ['mail', '--help'], ['user', '--help'], ['operator', '--help']]) {
      const out = await cli(argv);
      expect(out.code, argv.join(' ')).toBe(0);
      expect(out.stdout, argv.join(' ')).toMatch(/^federizer /);
      expect(out.stderr, argv.join(' ')).toBe('');
    }
  });
});

describe('a mistake in the options', () => {
  it('is said in one line with where the options are, not followed by the whole help (exit 2)', async () => {
    const cases: [string[], string][] = [
      [['mail', 'send', '--bogus'], 'unknown option --bogus\nRun `federizer mail --help` for its options.'],
      [['mail', 'list', '--user'], '--user needs a value\nRun `federizer mail --help` for its options.'],
      [['user', 'set', '--disable=yes'], '--disable takes no value\nRun `federizer user --help` for its options.'],
      [['operator', 'render', '-q'], 'unknown option -q\nRun `federizer operator render --help` for its options.'],
      [['auth', 'extra'], 'unexpected argument "extra"\nRun `federizer auth --help` for its options.'],
    ];
    for (const [argv, said] of cases) {
      const out = await cli(argv);
      expect(out.code, argv.join(' ')).toBe(2);
      expect(out.stdout, argv.join(' ')).toBe('');
      expect(out.stderr, argv.join(' ')).toBe(`federizer: ${said}\n`);
    }
  });
});

describe('federizer protocol digest', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'federizer-protocol-cli-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('answers --help on stdout with exit 0, as every command does', async () => {
    for (const argv of [
      ['protocol', '--help'],
      ['protocol', 'digest', '--help'],
      ['protocol', 'digest', '-h'],
    ]) {
      const out = await cli(argv);
      expect(out.code, argv.join(' ')).toBe(0);
      expect(out.stdout, argv.join(' ')).toMatch(/^federizer protocol digest FILE\|-\n/);
      expect(out.stderr, argv.join(' ')).toBe('');
    }
  });

  it('a file that does not exist, or a directory, is a usage error in one line (exit 2)', async () => {
    const missing = join(dir, 'missing.json');
    expect(await cli(['protocol', 'digest', missing])).toEqual({
      code: 2,
      stdout: '',
      stderr: `federizer: ${missing}: no such file\n`,
    });
    expect(await cli(['protocol', 'digest', dir])).toEqual({
      code: 2,
      stdout: '',
      stderr: `federizer: ${dir}: a directory, not a file\n`,
    });
  });

  it('more than one FILE is named as the mistake', async () => {
    const out = await cli(['protocol', 'digest', 'a.json', 'b.json']);
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(/^federizer: protocol digest takes one FILE, or - for standard input\n/);
  });
});

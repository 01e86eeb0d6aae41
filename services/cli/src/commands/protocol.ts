import { readFile } from 'node:fs/promises';
import { digestReport, parseMessage } from '@federizer/protocol';
import { UsageError, type CommandIo } from '../io.js';

const HELP = `federizer protocol digest FILE|-

Reads a Placeholder Message (JSON or YAML) from FILE, or from standard input with "-", and prints
{"bodyDigest", "blocks": [{"index", "ehl", "recipientsDigest", "eht"}]} for every headers block that holds
From (origin) or Forwarded-From (forward). Exit code 2 when the message is invalid.`;

export async function protocolCommand(args: readonly string[], io: CommandIo): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === '--help' || sub === '-h') {
    (sub === undefined ? io.stderr : io.stdout).write(`${HELP}\n`);
    return sub === undefined ? 2 : 0;
  }
  if (sub !== 'digest') throw new UsageError(`unknown command "protocol ${sub}"\n\n${HELP}`);
  if (rest.includes('--help') || rest.includes('-h')) {
    io.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (rest.length !== 1) throw new UsageError(`protocol digest takes one FILE, or - for standard input\n\n${HELP}`);
  const file = rest[0]!;
  const bytes = file === '-' ? await io.readStdin() : await readMessageFile(file);
  const message = parseMessage(bytes);
  io.stdout.write(`${JSON.stringify(digestReport(message))}\n`);
  return 0;
}

/** A file that cannot be read is a mistake on the command line (exit 2), said in a line. */
async function readMessageFile(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EISDIR'
          ? 'a directory, not a file'
          : code === 'EACCES' || code === 'EPERM'
            ? 'permission denied'
            : (e as Error).message;
    throw new UsageError(`${file}: ${why}`);
  }
}

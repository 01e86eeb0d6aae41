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
    io.stdout.write(`${HELP}\n`);
    return sub === undefined ? 2 : 0;
  }
  if (sub !== 'digest') throw new UsageError(`unknown command "protocol ${sub}"\n\n${HELP}`);
  if (rest.length !== 1 || rest[0] === '--help') throw new UsageError(HELP);
  const file = rest[0]!;
  const bytes = file === '-' ? await io.readStdin() : await readFile(file);
  const message = parseMessage(bytes);
  io.stdout.write(`${JSON.stringify(digestReport(message))}\n`);
  return 0;
}

import { StringDecoder } from 'node:string_decoder';

/** What a command may touch, so tests can run commands in-process with their own streams. */
export interface CommandIo {
  readonly stdout: { write(chunk: string): unknown };
  /** `isTTY`: whether progress may be drawn (a terminal, not a log file or a pipe). */
  readonly stderr: { write(chunk: string): unknown; readonly isTTY?: boolean; readonly columns?: number };
  readStdin(): Promise<Buffer>;
  /**
   * One line of standard input without its line end, read without waiting for the end of the input; at a
   * terminal the prompt is shown on stderr and the typing is not echoed. Optional: without it, commands take
   * the first line of `readStdin()`.
   */
  readStdinLine?(prompt: string): Promise<string>;
}

/** A mistake in how the command was called: printed without a stack, exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/**
 * A mistake node:util's parseArgs found, said the way the rest of the CLI speaks (its own messages carry
 * advice about `--` that fits no command here), followed by where the options are described.
 */
export function optionMistake(error: unknown, command: string): UsageError {
  const message = error instanceof Error ? error.message : String(error);
  const quoted = /'([^']*)'/.exec(message)?.[1];
  const option = quoted?.replace(/ <value>$/, '');
  let what = message;
  switch ((error as { code?: unknown }).code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      if (option !== undefined) what = `unknown option ${option}`;
      break;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      if (option !== undefined)
        what = / argument missing$/.test(message) ? `${option} needs a value` : `${option} takes no value`;
      break;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      if (quoted !== undefined) what = `unexpected argument ${JSON.stringify(quoted)}`;
      break;
  }
  return new UsageError(`${what}\nRun \`federizer ${command} --help\` for its options.`);
}

export async function readAll(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

/**
 * Reads up to the first line end and leaves the rest unread, so a person at a terminal needs no Ctrl-D. At a
 * terminal the line is read in raw mode: nothing typed is echoed (it is a password), Backspace and Ctrl-U
 * edit it, Ctrl-C and Ctrl-D abandon it.
 */
export function readLine(
  stdin: NodeJS.ReadStream,
  stderr: { write(chunk: string): unknown },
  prompt: string,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const tty = stdin.isTTY === true;
    const decoder = new StringDecoder('utf8');
    let line = '';
    const finish = (error?: Error) => {
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      stdin.off('error', onError);
      if (tty) {
        stdin.setRawMode(false);
        stderr.write('\n');
        stdin.pause();
      } else {
        // A paused pipe still keeps the process alive until the writer closes it: this command is done with it.
        stdin.destroy();
      }
      if (error) reject(error);
      else resolve(line);
    };
    const onData = (chunk: Buffer) => {
      for (const ch of decoder.write(chunk)) {
        if (ch === '\n' || ch === '\r') return finish();
        if (tty && (ch === '\u0003' || ch === '\u0004'))
          return finish(new Error('no password: the input was abandoned'));
        if (tty && (ch === '\u007f' || ch === '\b')) line = [...line].slice(0, -1).join('');
        else if (tty && ch === '\u0015') line = '';
        else line += ch;
      }
    };
    const onEnd = () => {
      line += decoder.end();
      finish();
    };
    const onError = (error: Error) => finish(error);
    if (tty) {
      stderr.write(prompt);
      stdin.setRawMode(true);
    }
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    stdin.once('error', onError);
    stdin.resume();
  });
}

export const processIo: CommandIo = {
  stdout: process.stdout,
  stderr: process.stderr,
  readStdin: () => readAll(process.stdin),
  readStdinLine: (prompt) => readLine(process.stdin, process.stderr, prompt),
};

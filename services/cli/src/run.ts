import { ProtocolError } from '@federizer/protocol';
import { UsageError, type CommandIo } from './io.js';

const HELP = `federizer — Internet mail as signed Placeholder Messages

Commands:
  federizer protocol digest FILE|-   print the digests of a Placeholder Message
  federizer auth                     run a domain's Authorization Server (configured by the environment)
  federizer mailbox                  run a domain's mailbox and mail agent (configured by the environment)
  federizer user add|list|show|set|password|delete ...
                                     manage a domain's users through the AS admin API
  federizer mail send|list|get|forward ...
                                     a user's mail: send, list, download resources, forward
  federizer up                       run a local federation of several domains (npm start)
  federizer webmail                  serve a domain's webmail (configured by the environment)
  federizer operator render -f FILE  print the Kubernetes objects of a MailDomain (no cluster needed)
  federizer operator run             run the Kubernetes operator (configured by the environment)

Every command answers --help.

Exit codes: 0 success, 1 failure, 2 invalid input or usage.`;

type Command = (args: readonly string[], io: CommandIo) => Promise<number>;

const COMMANDS: Record<string, Command> = {
  // Loaded on demand: `federizer protocol digest` should not pay for oidc-provider, knex and the rest.
  protocol: async (args, io) => (await import('./commands/protocol.js')).protocolCommand(args, io),
  auth: async (args, io) => (await import('./commands/auth.js')).authCommand(args, io),
  user: async (args, io) => (await import('./commands/user.js')).userCommand(args, io),
  mailbox: async (args, io) => (await import('./commands/mailbox.js')).mailboxCommand(args, io),
  operator: async (args, io) => (await import('./commands/operator.js')).operatorCommand(args, io),
  mail: async (args, io) => (await import('./commands/mail.js')).mailCommand(args, io),
  up: async (args, io) => (await import('./commands/up.js')).upCommand(args, io),
  webmail: async (args, io) => (await import('./commands/webmail.js')).webmailCommand(args, io),
};

/** Runs one command line; returns the exit code. Never calls process.exit, so tests can call it. */
export async function run(argv: readonly string[], io: CommandIo): Promise<number> {
  const [name, ...args] = argv;
  try {
    if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
      // Asked for, the help is the output (stdout); a command line without a command is a usage error (stderr).
      (name === undefined ? io.stderr : io.stdout).write(`${HELP}\n`);
      return name === undefined ? 2 : 0;
    }
    const command = COMMANDS[name];
    if (command === undefined) throw new UsageError(`unknown command "${name}"\n\n${HELP}`);
    return await command(args, io);
  } catch (e) {
    if (e instanceof ProtocolError || e instanceof UsageError) {
      io.stderr.write(`federizer: ${e.message}\n`);
      return 2;
    }
    io.stderr.write(`federizer: ${(e as Error)?.message ?? String(e)}\n`);
    return 1;
  }
}

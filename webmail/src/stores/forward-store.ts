/**
 * Forwarding a received message by hand, through the chain (PROTOCOL.md §7): the mailbox signs a
 * forward block and the new recipients fetch from the origin; nothing is uploaded again.
 */
import type { MailboxClient } from '../api/client.js';
import { recipientError, recipientsOf } from '../api/draft.js';
import type { ForwardResult } from '../api/types.js';
import { Store } from './store.js';

/** As many as the mailbox accepts in one forward. */
const MAX_FORWARD_RECIPIENTS = 16;

export interface ForwardState {
  readonly to: string;
  readonly error: string | undefined;
  readonly sending: boolean;
  readonly result: ForwardResult | undefined;
}

export class ForwardStore extends Store<ForwardState> {
  constructor(
    private readonly api: MailboxClient,
    private readonly me: string,
  ) {
    super({ to: '', error: undefined, sending: false, result: undefined });
  }

  setTo(to: string): void {
    this.setState({ to, error: undefined });
  }

  async forward(id: string): Promise<boolean> {
    const to = this.state.to.trim();
    const problem =
      recipientError(to) ??
      (recipientsOf(to).length === 0
        ? 'add the address to forward to'
        : recipientsOf(to).length > MAX_FORWARD_RECIPIENTS
          ? `at most ${MAX_FORWARD_RECIPIENTS} addresses`
          : recipientsOf(to).includes(this.me.toLowerCase())
            ? 'a message cannot be forwarded to yourself'
            : undefined);
    if (problem) {
      this.setState({ error: problem });
      return false;
    }
    this.setState({ sending: true, error: undefined });
    try {
      this.setState({ result: await this.api.forward(id, to), sending: false });
      return true;
    } catch (e) {
      this.setState({ error: (e as Error).message, sending: false });
      return false;
    }
  }
}

/**
 * The forwarding rule (PROTOCOL.md §7): where the mailbox forwards what arrives, and whether it keeps
 * a copy. The AS still applies the user's forwarding policy when it signs each forward.
 */
import type { MailboxClient } from '../api/client.js';
import { recipientError, recipientsOf, splitAddressEntries } from '../api/draft.js';
import type { ForwardingRule } from '../api/types.js';
import { Store } from './store.js';

/** As many as the mailbox accepts (`ForwardingUpdate.targets.maxItems`). */
export const MAX_FORWARDING_TARGETS = 10;

export interface SettingsState {
  readonly loading: boolean;
  readonly rule: ForwardingRule | undefined;
  /** The form: targets as typed, one per line or separated by commas. */
  readonly targets: string;
  readonly keepCopy: boolean;
  readonly enabled: boolean;
  readonly error: string | undefined;
  readonly saving: boolean;
  readonly saved: boolean;
}

/** One forwarding target per line or per comma (a line is an address list: splitAddressEntries). */
export function splitTargets(text: string): string[] {
  return text
    .split('\n')
    .flatMap((line) => splitAddressEntries(line))
    .map((t) => t.trim())
    .filter((t) => t !== '');
}

export class SettingsStore extends Store<SettingsState> {
  constructor(
    private readonly api: MailboxClient,
    private readonly me: string,
  ) {
    super({
      loading: false,
      rule: undefined,
      targets: '',
      keepCopy: true,
      enabled: false,
      error: undefined,
      saving: false,
      saved: false,
    });
  }

  async load(): Promise<void> {
    this.setState({ loading: true, error: undefined });
    try {
      this.#show(await this.api.getForwarding());
    } catch (e) {
      this.setState({ error: (e as Error).message });
    } finally {
      this.setState({ loading: false });
    }
  }

  #show(rule: ForwardingRule): void {
    this.setState({ rule, targets: rule.targets.join('\n'), keepCopy: rule.keepCopy, enabled: rule.enabled });
  }

  edit(patch: Partial<Pick<SettingsState, 'targets' | 'keepCopy' | 'enabled'>>): void {
    this.setState({ ...patch, saved: false, error: undefined });
  }

  /** The reason the form cannot be saved, checked here so the mailbox's refusal is the exception. */
  problem(): string | undefined {
    const targets = splitTargets(this.state.targets);
    for (const t of targets) {
      const error = recipientError(t);
      // Name the target unless the reason already does.
      if (error) return error.includes(t) ? error : `${t}: ${error}`;
    }
    if (targets.length > MAX_FORWARDING_TARGETS) return `at most ${MAX_FORWARDING_TARGETS} addresses`;
    if (targets.flatMap(recipientsOf).includes(this.me.toLowerCase())) return 'an account cannot forward to itself';
    if (this.state.enabled && targets.length === 0) return 'add at least one address to forward to';
    return undefined;
  }

  async save(): Promise<boolean> {
    const problem = this.problem();
    if (problem) {
      this.setState({ error: problem });
      return false;
    }
    this.setState({ saving: true, error: undefined });
    try {
      this.#show(
        await this.api.setForwarding({
          targets: splitTargets(this.state.targets),
          keepCopy: this.state.keepCopy,
          enabled: this.state.enabled,
        }),
      );
      this.setState({ saved: true });
      return true;
    } catch (e) {
      this.setState({ error: (e as Error).message });
      return false;
    } finally {
      this.setState({ saving: false });
    }
  }
}

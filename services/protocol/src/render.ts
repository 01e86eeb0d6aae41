/** The human renderings of a Placeholder Message. Both read back through `parseMessage` to the same value. */
import { stringify } from 'yaml';
import type { Message } from './message.js';

export function messageToJson(message: Message, indent = 2): string {
  return `${JSON.stringify(message, null, indent)}\n`;
}

/**
 * YAML with every scalar a string (the parser reads YAML with the failsafe schema). The default schema
 * here only decides quoting, so `123`, `true` or `null` as header values come out quoted and unambiguous.
 */
export function messageToYaml(message: Message): string {
  return stringify(message, { lineWidth: 0, aliasDuplicateObjects: false });
}

/** What `federizer protocol digest` prints: the digests of a message, recomputed from what it holds. */
import { bodyDigest, ehtOrUndefined, recipientsDigest } from './digests.js';
import { FORWARD_EHL, ORIGIN_EHL, findHeader, isHeadersBlock, type Message } from './message.js';

export interface BlockDigests {
  /** Position of the headers block in `envelope`. */
  readonly index: number;
  readonly ehl: readonly string[];
  readonly recipientsDigest: string;
  /** null when the block lacks a header that `ehl` names. */
  readonly eht: string | null;
}

export interface DigestReport {
  readonly bodyDigest: string;
  readonly blocks: readonly BlockDigests[];
}

/**
 * Which `ehl` signs a headers block: the origin list for a block holding `From`, the forward list for one
 * holding `Forwarded-From` (From decides when a block would hold both), none otherwise (a receive block).
 */
export function blockKind(headers: Parameters<typeof findHeader>[0]): 'origin' | 'forward' | undefined {
  if (findHeader(headers, 'From') !== undefined) return 'origin';
  if (findHeader(headers, 'Forwarded-From') !== undefined) return 'forward';
  return undefined;
}

export function digestReport(message: Message): DigestReport {
  const blocks: BlockDigests[] = [];
  message.envelope.forEach((block, index) => {
    if (!isHeadersBlock(block)) return;
    const kind = blockKind(block.headers);
    if (kind === undefined) return;
    const ehl = kind === 'origin' ? ORIGIN_EHL : FORWARD_EHL;
    blocks.push({
      index,
      ehl,
      recipientsDigest: recipientsDigest(block.headers, kind),
      eht: ehtOrUndefined(block.headers, ehl) ?? null,
    });
  });
  return { bodyDigest: bodyDigest(message.body), blocks };
}

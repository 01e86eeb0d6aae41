/**
 * Building envelopes (PROTOCOL.md §4, §5, §7). Blocks are prepended, never edited: what was signed stays
 * byte-for-byte what it was. Inputs are messages that `parseMessage`/`validateMessage` accepted.
 */
import { parseAddressList, parseSingleMailbox, normalizeAddress, type Mailbox } from './address.js';
import { formatDate } from './date.js';
import { assertionDigest, bodyDigest, recipientsDigest } from './digests.js';
import { ProtocolError } from './errors.js';
import {
  FORWARD_EHL,
  ORIGIN_EHL,
  findHeader,
  headerValue,
  isHeadersBlock,
  type Block,
  type Header,
  type HeadersBlock,
  type Message,
} from './message.js';

/** One copy of a sent message, for one distinct view of its recipients (§4.3). */
export interface OutgoingCopy {
  /** The copy's envelope: one headers block H0, awaiting its assertion. */
  readonly message: Message;
  /** Lower-cased addr-specs this copy is delivered to. */
  readonly recipients: readonly string[];
  /** The header objects sent in the token exchange, in ORIGIN_EHL order (§4.4). */
  readonly exchangeHeaders: readonly Header[];
  /** 'to-cc' for the copy without Bcc, or the Bcc recipient this copy is for. */
  readonly view: 'to-cc' | { readonly bcc: string };
}

export interface SendOptions {
  readonly date: Date;
  /** Minutes east of UTC for the Date header; UTC by default. */
  readonly offsetMinutes?: number;
}

/** The one headers block of a draft; throws when the envelope is not a draft's. */
export function draftHeaders(draft: Message): readonly Header[] {
  const [only, ...rest] = draft.envelope;
  if (only === undefined || rest.length > 0 || !isHeadersBlock(only)) {
    throw new ProtocolError('invalid_chain', 'a draft has exactly one headers block', { path: 'envelope' });
  }
  if (findHeader(only.headers, 'Date') !== undefined) {
    throw new ProtocolError('invalid_chain', 'a draft has no Date header: a Date means the message was sent', {
      path: 'envelope[0].headers',
    });
  }
  // Stamping would add a second one (§4.2), and every receiver refuses a block holding two (§7.4).
  const stamped = MAILBOX_HEADERS.find((name) => findHeader(only.headers, name) !== undefined);
  if (stamped !== undefined) {
    throw new ProtocolError('invalid_header', `a draft has no ${stamped} header: only mailboxes write it`, {
      path: 'envelope[0].headers',
    });
  }
  return only.headers;
}

/** §4.1: the headers that only mailboxes write, never a draft. */
const MAILBOX_HEADERS = [
  'Recipients-Digest',
  'Body-Digest',
  'JWT-Assertion-Digest',
  'Received',
  'Forwarded-From',
  'Forwarded-To',
] as const;

/** Formats a mailbox for a header value: `Name <addr>`, the name quoted when it needs to be. */
export function formatMailbox(box: Mailbox): string {
  if (box.name === undefined || box.name === '') return box.address;
  const safe = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ \u0080-\uFFFF]+$/.test(box.name) && box.name.trim() === box.name;
  const name = safe ? box.name : `"${box.name.replace(/(["\\])/g, '\\$1')}"`;
  return `${name} <${box.address}>`;
}

function prependSendHeaders(headers: readonly Header[], message: Message, options: SendOptions): Header[] {
  return [
    { Date: formatDate(options.date, options.offsetMinutes) },
    { 'Recipients-Digest': recipientsDigest(headers, 'origin') },
    { 'Body-Digest': bodyDigest(message.body) },
    ...headers,
  ];
}

function exchangeHeaders(headers: readonly Header[], ehl: readonly string[]): Header[] {
  return ehl.map((name) => {
    const h = findHeader(headers, name);
    if (h === undefined) throw new ProtocolError('missing_header', `the block has no ${name} header`);
    return { [name]: h[name]! };
  });
}

function addressesIn(headers: readonly Header[], names: readonly string[]): Mailbox[] {
  return names.flatMap((name) => {
    const value = headerValue(headers, name);
    return value === undefined ? [] : parseAddressList(value);
  });
}

/**
 * §4.2–4.3: stamps Date, Recipients-Digest and Body-Digest on a draft and splits it into one copy per
 * distinct view: the To/Cc copy carries no Bcc; each Bcc recipient gets a copy whose Bcc names that
 * recipient alone, also one who is a To or Cc recipient too (§4.3 makes no exception: that copy tells them
 * they were also a blind recipient, which the To/Cc copy does not).
 */
export function prepareSend(draft: Message, options: SendOptions): OutgoingCopy[] {
  const headers = draftHeaders(draft);
  if (headerValue(headers, 'From') === undefined)
    throw new ProtocolError('missing_header', 'a message needs a From header');
  if (headerValue(headers, 'Message-ID') === undefined)
    throw new ProtocolError('missing_header', 'a message needs a Message-ID header');
  const withoutBcc = headers.filter((h) => !Object.hasOwn(h, 'Bcc'));
  const visible = addressesIn(headers, ['To', 'Cc']);
  const visibleSet = new Set(visible.map((m) => normalizeAddress(m.address)));
  const copies: OutgoingCopy[] = [];

  const build = (blockHeaders: Header[], recipients: string[], view: OutgoingCopy['view']): void => {
    const stamped = prependSendHeaders(blockHeaders, draft, options);
    copies.push({
      message: { envelope: [{ headers: stamped }], body: draft.body },
      recipients,
      exchangeHeaders: exchangeHeaders(stamped, ORIGIN_EHL),
      view,
    });
  };

  if (visibleSet.size > 0) build(withoutBcc, [...visibleSet], 'to-cc');
  const bccDone = new Set<string>();
  for (const box of addressesIn(headers, ['Bcc'])) {
    const address = normalizeAddress(box.address);
    if (bccDone.has(address)) continue;
    bccDone.add(address);
    // the Bcc header keeps its place among the headers, holding this recipient alone
    const blockHeaders = headers.map((h) => (Object.hasOwn(h, 'Bcc') ? { Bcc: formatMailbox(box) } : h));
    build(blockHeaders, [address], { bcc: address });
  }
  if (copies.length === 0)
    throw new ProtocolError('missing_header', 'a message needs at least one recipient in To, Cc or Bcc');
  return copies;
}

/** §4.7 and §7: the envelope with the new assertion on top. */
export function withAssertion(message: Message, assertion: string): Message {
  return { envelope: [{ 'jwt-assertion': assertion }, ...message.envelope], body: message.body };
}

/** §5: the block a receiving mailbox prepends on acceptance. */
export function receiveBlock(options: {
  messageId: string;
  assertion: string;
  senderDomain: string;
  receiverDomain: string;
  date: Date;
  offsetMinutes?: number;
}): HeadersBlock {
  return {
    headers: [
      { 'Message-ID': options.messageId },
      { 'JWT-Assertion-Digest': assertionDigest(options.assertion) },
      {
        Received: `from ${options.senderDomain} by ${options.receiverDomain}; ${formatDate(options.date, options.offsetMinutes)}`,
      },
    ],
  };
}

export interface ForwardPreparation {
  /** The envelope with the forward headers prepended to the newest block, awaiting the new assertion. */
  readonly message: Message;
  /** The header objects sent in the forward token exchange, in FORWARD_EHL order (§7). */
  readonly exchangeHeaders: readonly Header[];
  /** The assertion the forward exchange presents as its subject token (the newest of the chain). */
  readonly subjectAssertion: string;
  readonly recipients: readonly string[];
}

/**
 * §7: a mailbox forwards a message it received. `received` is the stored envelope whose newest block is
 * the receive block (Message-ID, JWT-Assertion-Digest, Received), followed by the chain as it arrived.
 * Prepends, top to bottom, Date, Recipients-Digest, Forwarded-To, Forwarded-From to that block.
 */
export function prepareForward(
  received: Message,
  options: SendOptions & { forwardedFrom: string; forwardedTo: string },
): ForwardPreparation {
  const [newest, assertionBlock, ...older] = received.envelope;
  if (
    newest === undefined ||
    !isHeadersBlock(newest) ||
    assertionBlock === undefined ||
    isHeadersBlock(assertionBlock)
  ) {
    throw new ProtocolError(
      'invalid_chain',
      'a received message starts with its receive block, then the assertion it came with',
    );
  }
  if (
    findHeader(newest.headers, 'JWT-Assertion-Digest') === undefined ||
    findHeader(newest.headers, 'Forwarded-From') !== undefined
  ) {
    throw new ProtocolError('invalid_chain', 'the newest block is not a receive block', { path: 'envelope[0]' });
  }
  parseSingleMailbox(options.forwardedFrom);
  const recipients = parseAddressList(options.forwardedTo).map((m) => normalizeAddress(m.address));
  if (recipients.length === 0) throw new ProtocolError('missing_header', 'Forwarded-To names no recipient');
  const forwardTo: Header = { 'Forwarded-To': options.forwardedTo };
  const headers: Header[] = [
    { Date: formatDate(options.date, options.offsetMinutes) },
    { 'Recipients-Digest': recipientsDigest([forwardTo], 'forward') },
    forwardTo,
    { 'Forwarded-From': options.forwardedFrom },
    ...newest.headers,
  ];
  const envelope: Block[] = [{ headers }, assertionBlock, ...older];
  return {
    message: { envelope, body: received.body },
    exchangeHeaders: exchangeHeaders(headers, FORWARD_EHL),
    subjectAssertion: assertionBlock['jwt-assertion'],
    recipients: [...new Set(recipients)],
  };
}

/** The envelope as it travels: without the receive block a mailbox added on top (§6.2). */
export function transmittedEnvelope(stored: Message): readonly Block[] {
  const [first, ...rest] = stored.envelope;
  if (first !== undefined && isHeadersBlock(first) && rest.length > 0 && !isHeadersBlock(rest[0]!)) {
    const isReceive =
      findHeader(first.headers, 'From') === undefined && findHeader(first.headers, 'Forwarded-From') === undefined;
    if (isReceive) return rest;
  }
  return stored.envelope;
}

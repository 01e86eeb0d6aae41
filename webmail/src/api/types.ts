/** The shapes of the mailbox client API (openapi/mailbox.openapi.json) that the webmail reads and writes. */
import type { Block, Body, PlaceholderMessage } from './protocol.js';

export const MAILBOXES = ['inbox', 'sent', 'drafts', 'archive', 'trash'] as const;
export type MailboxName = (typeof MAILBOXES)[number];

export interface Session {
  readonly address: string;
  readonly domain: string;
  readonly limits: { readonly maxResourceSize: number; readonly quotaBytes: number; readonly maxMessageBytes: number };
  readonly storageUsed: number;
}

export interface MessageSummary {
  readonly id: string;
  readonly mailbox: MailboxName;
  readonly messageId: string;
  readonly threadId: string;
  readonly subject: string;
  readonly from: string;
  /** Epoch milliseconds. */
  readonly date: number;
  readonly receivedAt: number;
  readonly seen: boolean;
  readonly flagged: boolean;
  readonly size: number;
}

export type ResourceStatus = 'held' | 'pending' | 'failed';

export interface MessageResource {
  readonly contentId: string;
  readonly size: number;
  readonly status: ResourceStatus;
  /** With `failed`: why, as the mailbox recorded it (the origin's answer to the last fetch, or the quota). */
  readonly failure?: string;
}

export interface Message extends MessageSummary {
  readonly envelope: readonly Block[];
  readonly body: Body;
  readonly resources: readonly MessageResource[];
}

export interface MessagePage {
  readonly messages: readonly MessageSummary[];
  readonly next: string | null;
}

export interface UploadedResource {
  readonly contentId: string;
  readonly size: number;
  readonly mediaType: string;
}

/** A draft: one headers block, no Date or digests (the mailbox stamps them when sending). */
export type Draft = PlaceholderMessage;

export interface SavedDraft {
  readonly id: string;
  readonly messageId: string;
  readonly message: Draft;
}

export interface SendResult {
  readonly id: string;
  readonly messageId: string;
  readonly copies: number;
  /** As `GET /messages/{id}/deliveries` lists them: `fetched` at once for recipients of this domain. */
  readonly deliveries: readonly Delivery[];
}

export type DeliveryStatus = 'queued' | 'transferred' | 'fetched' | 'failed' | 'withdrawn';

export interface Delivery {
  readonly recipient: string;
  readonly domain: string;
  readonly status: DeliveryStatus;
  readonly updatedAt: number;
  readonly fetchedBy?: string | null;
  readonly fetchedAt?: number | null;
  readonly detail?: string;
}

export interface UnsendResult {
  readonly withdrawn: readonly string[];
  readonly fetched: readonly string[];
  readonly unknown: readonly string[];
}

export interface ForwardResult {
  readonly id: string;
  readonly messageId: string;
  readonly recipients: readonly string[];
  readonly deliveries: readonly Delivery[];
}

export interface ForwardingRule {
  readonly targets: readonly string[];
  readonly keepCopy: boolean;
  readonly enabled: boolean;
  readonly updatedAt: number | null;
}

export interface Changes {
  readonly state: string;
  readonly created: readonly string[];
  readonly updated: readonly string[];
  readonly destroyed: readonly string[];
  readonly hasMore: boolean;
}

export interface MessagePatch {
  readonly seen?: boolean;
  readonly flagged?: boolean;
  readonly mailbox?: MailboxName;
}

export function summaryOf(m: Message | MessageSummary): MessageSummary {
  return {
    id: m.id,
    mailbox: m.mailbox,
    messageId: m.messageId,
    threadId: m.threadId,
    subject: m.subject,
    from: m.from,
    date: m.date,
    receivedAt: m.receivedAt,
    seen: m.seen,
    flagged: m.flagged,
    size: m.size,
  };
}

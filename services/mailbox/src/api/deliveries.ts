/**
 * One recipient's delivery as the client API shows it, in every answer that carries one (send, a draft
 * sent, forward, `GET /messages/:id/deliveries`): the same object and the same status words as the store
 * keeps (`queued`, `transferred`, `fetched`, `failed`, `withdrawn`), so a client never translates between
 * answers. A recipient of the sender's own domain is `fetched` at once, by that domain: its mailbox holds the
 * message and the resources already.
 */
import type { Delivery } from '../storage/index.js';

export interface DeliveryJson {
  readonly recipient: string;
  readonly domain: string;
  readonly status: Delivery['status'];
  readonly updatedAt: number;
  readonly fetchedBy?: string | null;
  readonly fetchedAt?: number | null;
  readonly detail?: string;
}

export function deliveryJson(d: Delivery): DeliveryJson {
  return {
    recipient: d.recipient,
    domain: d.domain,
    status: d.status,
    updatedAt: d.updatedAt,
    ...(d.status === 'fetched' ? { fetchedBy: d.fetchedBy ?? null, fetchedAt: d.fetchedAt ?? null } : {}),
    ...(d.detail !== undefined ? { detail: d.detail } : {}),
  };
}

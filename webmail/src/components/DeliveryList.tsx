/** Where each copy of a sent message stands, per recipient, and unsend for those not fetched yet. */
import styled from 'styled-components';
import type { Delivery, DeliveryStatus } from '../api/types.js';
import type { SentState } from '../stores/reader-store.js';
import { Button } from './Button.js';

const LABEL: Record<DeliveryStatus, string> = {
  queued: 'queued',
  transferred: 'delivered',
  fetched: 'fetched',
  failed: 'failed',
  withdrawn: 'withdrawn',
};

const Box = styled.section`
  margin-top: 1rem;
  padding: 0.75rem;
  border: 1px solid ${(p) => p.theme.color.border};
  border-radius: ${(p) => p.theme.radius};
  font-size: 0.9rem;
  h3 {
    margin: 0 0 0.5rem;
    font-size: 0.9rem;
  }
  ul {
    list-style: none;
    margin: 0 0 0.5rem;
    padding: 0;
  }
  li {
    display: flex;
    gap: 0.5rem;
    flex-wrap: wrap;
    padding: 0.2rem 0;
  }
`;

const Status = styled.span<{ $status: DeliveryStatus }>`
  font-weight: 600;
  color: ${(p) =>
    p.$status === 'failed'
      ? p.theme.color.danger
      : p.$status === 'fetched' || p.$status === 'transferred'
        ? p.theme.color.success
        : p.$status === 'withdrawn'
          ? p.theme.color.textMuted
          : p.theme.color.warning};
`;

const Muted = styled.span`
  color: ${(p) => p.theme.color.textMuted};
`;

function explain(d: Delivery): string {
  if (d.status === 'fetched') return `by ${d.fetchedBy ?? d.domain}`;
  if (d.status === 'failed') return d.detail ?? '';
  return '';
}

export function DeliveryList({ sent, onUnsend }: { sent: SentState; onUnsend: () => void }) {
  const deliveries = sent.deliveries ?? [];
  const withdrawable = deliveries.some((d) => d.status === 'queued' || d.status === 'transferred');
  return (
    <Box aria-label="Delivery status">
      <h3>Delivery</h3>
      {sent.deliveries === undefined && !sent.error && <Muted>Loading…</Muted>}
      {sent.deliveries !== undefined && deliveries.length === 0 && <Muted>No copies left this mailbox.</Muted>}
      <ul data-testid="deliveries">
        {deliveries.map((d) => (
          <li key={`${d.recipient} ${d.domain}`} data-status={d.status}>
            <span>{d.recipient}</span>
            <Status $status={d.status}>{LABEL[d.status]}</Status>
            <Muted>{explain(d)}</Muted>
          </li>
        ))}
      </ul>
      {sent.unsent && (
        <p role="status">
          {sent.unsent.withdrawn.length > 0 && `Withdrawn for ${sent.unsent.withdrawn.join(', ')}. `}
          {sent.unsent.fetched.length > 0 && `Too late for ${sent.unsent.fetched.join(', ')}: already fetched.`}
        </p>
      )}
      {sent.error && <p role="alert">{sent.error}</p>}
      {withdrawable && (
        <Button type="button" $variant="danger" onClick={onUnsend} disabled={sent.unsending}>
          {sent.unsending ? 'Unsending…' : 'Unsend'}
        </Button>
      )}
    </Box>
  );
}

/** The operator's Prometheus metrics, on its own registry (see @federizer/common's createRegistry). */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { createRegistry } from '@federizer/common';

export type ReconcileResult = 'success' | 'error' | 'requeue';

export interface OperatorMetrics {
  registry: Registry;
  reconciles: Counter<'controller' | 'result'>;
  reconcileDuration: Histogram<'controller'>;
  queueDepth: Gauge<'controller'>;
  leader: Gauge;
  informerRestarts: Counter<'kind'>;
  dnsUpdates: Counter<'result'>;
}

export function createOperatorMetrics(): OperatorMetrics {
  const registry = createRegistry('operator');
  return {
    registry,
    reconciles: new Counter({
      name: 'federizer_operator_reconciles_total',
      help: 'Reconciles finished, by controller and result.',
      labelNames: ['controller', 'result'],
      registers: [registry],
    }),
    reconcileDuration: new Histogram({
      name: 'federizer_operator_reconcile_duration_seconds',
      help: 'Duration of reconciles, by controller.',
      labelNames: ['controller'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    queueDepth: new Gauge({
      name: 'federizer_operator_queue_depth',
      help: 'Keys waiting in the work queue, by controller.',
      labelNames: ['controller'],
      registers: [registry],
    }),
    leader: new Gauge({
      name: 'federizer_operator_leader',
      help: '1 while this instance holds the leader Lease, else 0.',
      registers: [registry],
    }),
    informerRestarts: new Counter({
      name: 'federizer_operator_informer_restarts_total',
      help: 'Informer restarts after a list or watch error, by kind.',
      labelNames: ['kind'],
      registers: [registry],
    }),
    dnsUpdates: new Counter({
      name: 'federizer_operator_dns_updates_total',
      help: 'RFC 2136 updates sent, by result.',
      labelNames: ['result'],
      registers: [registry],
    }),
  };
}

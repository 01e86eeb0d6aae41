/**
 * One prom-client registry per service, never the global one: several services may share a process
 * (tests, the local federation), and their series must not mix. Default process metrics are left out
 * because some are gauges named `*_total`, which `promtool check metrics` rejects (prom-client #283);
 * the few that matter are re-exported under compliant names.
 */
import type { NextFunction, Request, Response } from 'express';
import { Gauge, Histogram, Registry } from 'prom-client';

export function createRegistry(service: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  new Gauge({
    name: 'federizer_process_resident_memory_bytes',
    help: 'Resident memory size in bytes.',
    registers: [registry],
    collect() {
      this.set(process.memoryUsage.rss());
    },
  });
  new Gauge({
    name: 'federizer_process_start_time_seconds',
    help: 'Start time of the process since the Unix epoch, in seconds.',
    registers: [registry],
    collect() {
      this.set(Math.round(Date.now() / 1000 - process.uptime()));
    },
  });
  return registry;
}

/** Express middleware observing every request's duration, labelled by route pattern (never by raw path). */
export function httpMetrics(registry: Registry, prefix: string) {
  const histogram = new Histogram({
    name: `${prefix}_http_request_duration_seconds`,
    help: 'Duration of HTTP requests, by method, route and status code.',
    labelNames: ['method', 'route', 'code'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  return (req: Request, res: Response, next: NextFunction) => {
    const end = histogram.startTimer();
    res.on('finish', () => {
      const route = (req.route?.path as string | undefined) ?? (req.routeLabel as string | undefined) ?? 'other';
      end({ method: req.method, route: `${req.baseUrl}${route}`, code: String(res.statusCode) });
    });
    next();
  };
}

/** `GET /metrics` in the Prometheus text format. */
export function metricsHandler(registry: Registry) {
  return async (_req: Request, res: Response) => {
    res.set('Content-Type', registry.contentType);
    res.send(await registry.metrics());
  };
}

declare module 'express-serve-static-core' {
  interface Request {
    /** A route label for requests that no express route matched (e.g. those handed to oidc-provider). */
    routeLabel?: string;
  }
}

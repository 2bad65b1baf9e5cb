/** Metrics the agents report: the Redis store, per-VM/host reads and the Prometheus text. */

export * from './metrics.controller.js';
export * from './metrics.module.js';
export * from './metrics.schemas.js';
export * from './metrics.service.js';
export * from './metrics.store.js';
export * from './prometheus.js';

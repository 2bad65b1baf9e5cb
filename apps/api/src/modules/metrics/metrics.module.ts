import { Global, Module } from '@nestjs/common';
import { CONTROL_PLANE_SETTINGS, type ControlPlaneSettings } from '../conductor/control-plane.settings.js';
import { VmsModule } from '../vms/vms.module.js';
import { MetricsService } from './metrics.service.js';
import { METRICS_STORE_OPTIONS, MetricsStore, type MetricsStoreOptions } from './metrics.store.js';

/**
 * Metrics (global): the Redis store the AgentGateway writes and the reads (per VM, per host,
 * Prometheus). Needs the global PrismaModule, RedisModule and the control-plane settings.
 */
@Global()
@Module({
  imports: [VmsModule],
  providers: [
    {
      provide: METRICS_STORE_OPTIONS,
      useFactory: (settings: ControlPlaneSettings): MetricsStoreOptions => ({ ttlMs: settings.metricsTtlMs }),
      inject: [CONTROL_PLANE_SETTINGS],
    },
    MetricsStore,
    MetricsService,
  ],
  exports: [MetricsStore, MetricsService],
})
export class MetricsModule {}

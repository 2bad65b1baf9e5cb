import { Global, Module } from '@nestjs/common';
import { HANGAR_CONFIG } from '../../config/config.module.js';
import type { HangarConfig } from '../../config/hangar-config.js';
import { AgentClientModule } from '../../infra/agent-client/agent-client.module.js';
import { QueueModule } from '../../infra/queue/queue.module.js';
import { RedisModule } from '../../infra/redis/redis.module.js';
import {
  CONTROL_PLANE_SETTINGS,
  type ControlPlaneSettings,
  loadControlPlaneSettings,
} from './control-plane.settings.js';

/**
 * The control-plane settings (global), read from the environment once. Tests replace them with
 * `overrideProvider(CONTROL_PLANE_SETTINGS)`.
 */
@Global()
@Module({
  providers: [{ provide: CONTROL_PLANE_SETTINGS, useFactory: () => loadControlPlaneSettings() }],
  exports: [CONTROL_PLANE_SETTINGS],
})
export class ControlPlaneSettingsModule {}

/**
 * What both roles of the VM backend share, configured from HangarConfig and the settings: Redis
 * (one key prefix per deployment), the operations queue producer and the agent client pool (mTLS
 * with the control plane's certificate unless HANGAR_GRPC_INSECURE). Imported by the api-side
 * VmsApiModule and the worker-side ConductorModule; Nest creates it once either way.
 */
@Global()
@Module({
  imports: [
    ControlPlaneSettingsModule,
    RedisModule.forRootAsync({
      useFactory: (config: HangarConfig) => ({ url: config.redisUrl, keyPrefix: config.redisPrefix }),
      inject: [HANGAR_CONFIG],
    }),
    QueueModule.forRootAsync({
      useFactory: (settings: ControlPlaneSettings) => ({
        attempts: settings.operationAttempts,
        backoffMs: settings.operationBackoffMs,
      }),
      inject: [CONTROL_PLANE_SETTINGS],
    }),
    AgentClientModule.forRootAsync({
      useFactory: (config: HangarConfig) => (config.grpc.tls ? { tls: config.grpc.tls } : {}),
      inject: [HANGAR_CONFIG],
    }),
  ],
  exports: [ControlPlaneSettingsModule],
})
export class ControlPlaneCoreModule {}

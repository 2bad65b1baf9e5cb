import { Module } from '@nestjs/common';
import { HANGAR_CONFIG } from '../../config/config.module.js';
import type { HangarConfig } from '../../config/hangar-config.js';
import {
  AGENT_GATEWAY_SERVER_OPTIONS,
  AgentGatewayServer,
  type AgentGatewayServerOptions,
} from '../../infra/grpc/agent-gateway.server.js';
import { CONTROL_PLANE_SETTINGS, type ControlPlaneSettings } from '../conductor/control-plane.settings.js';
import { GATEWAY_OPTIONS, type GatewayOptions, GatewayService } from './gateway.service.js';

/**
 * The AgentGateway (role api): the gRPC server agents dial in to (HANGAR_GRPC_HOST/PORT, mTLS
 * unless HANGAR_GRPC_INSECURE) and the domain handlers behind it. Needs the global config,
 * PrismaModule, MetricsModule and control-plane settings. The server binds on application
 * bootstrap and ends every Session on shutdown.
 */
@Module({
  providers: [
    {
      provide: GATEWAY_OPTIONS,
      useFactory: (settings: ControlPlaneSettings): GatewayOptions => ({
        heartbeatIntervalMs: settings.heartbeatIntervalMs,
        metricsIntervalMs: settings.metricsIntervalMs,
      }),
      inject: [CONTROL_PLANE_SETTINGS],
    },
    {
      provide: AGENT_GATEWAY_SERVER_OPTIONS,
      useFactory: (config: HangarConfig): AgentGatewayServerOptions => ({
        host: config.grpc.host,
        port: config.grpc.port,
        tls: config.grpc.tls,
      }),
      inject: [HANGAR_CONFIG],
    },
    GatewayService,
    AgentGatewayServer,
  ],
  exports: [GatewayService, AgentGatewayServer],
})
export class GatewayModule {}

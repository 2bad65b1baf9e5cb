import { Module } from '@nestjs/common';
import { ControlPlaneCoreModule } from '../conductor/control-plane-core.module.js';
import { GatewayModule } from '../gateway/gateway.module.js';
import {
  HostMetricsController,
  PrometheusController,
  VmMetricsController,
} from '../metrics/metrics.controller.js';
import { MetricsModule } from '../metrics/metrics.module.js';
import { OperationsController } from '../operations/operations.controller.js';
import { OperationsModule } from '../operations/operations.module.js';
import { VmsController } from './vms.controller.js';
import { VmsModule } from './vms.module.js';

/**
 * The api side of the VM backend (role api or all): `/v1/vms`, `/v1/operations`, the metrics
 * reads (`/v1/vms/{id}/metrics`, `/v1/hosts/{id}/metrics`, `/metrics`) and the AgentGateway gRPC
 * server. Needs the global config and PrismaModule.
 */
@Module({
  imports: [ControlPlaneCoreModule, VmsModule, OperationsModule, MetricsModule, GatewayModule],
  controllers: [
    VmsController,
    VmMetricsController,
    OperationsController,
    HostMetricsController,
    PrometheusController,
  ],
  exports: [VmsModule, OperationsModule, MetricsModule, GatewayModule],
})
export class VmsApiModule {}

import { Module } from '@nestjs/common';
import {
  HOST_LIVENESS_OPTIONS,
  type HostLivenessOptions,
  HostLivenessService,
} from '../gateway/host-liveness.service.js';
import { OperationsModule } from '../operations/operations.module.js';
import { PlacementModule } from '../placement/placement.module.js';
import { ConductorWorker } from './conductor.worker.js';
import { CONTROL_PLANE_SETTINGS, type ControlPlaneSettings } from './control-plane.settings.js';
import { ControlPlaneCoreModule } from './control-plane-core.module.js';
import { OperationRunner } from './operation-runner.js';
import { OperationSweeper } from './operation-sweeper.js';

/**
 * The conductor (role worker or all): the BullMQ worker that runs operations, the sweeper and the
 * host liveness check. Needs the global config and PrismaModule; brings the shared
 * ControlPlaneCoreModule. The worker starts on application bootstrap and drains on shutdown.
 */
@Module({
  imports: [ControlPlaneCoreModule, PlacementModule, OperationsModule],
  providers: [
    {
      provide: HOST_LIVENESS_OPTIONS,
      useFactory: (settings: ControlPlaneSettings): HostLivenessOptions => ({
        heartbeatIntervalMs: settings.heartbeatIntervalMs,
        missedHeartbeats: settings.missedHeartbeats,
      }),
      inject: [CONTROL_PLANE_SETTINGS],
    },
    HostLivenessService,
    OperationRunner,
    OperationSweeper,
    ConductorWorker,
  ],
  exports: [ConductorWorker, OperationSweeper, HostLivenessService, OperationRunner],
})
export class ConductorModule {}

import { Module } from '@nestjs/common';
import { VmsService } from './vms.service.js';

/**
 * The VM use cases. Needs the global PrismaModule, QueueModule (OperationQueue) and
 * AgentClientModule (console reads).
 */
@Module({ providers: [VmsService], exports: [VmsService] })
export class VmsModule {}

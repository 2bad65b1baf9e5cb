import { Module } from '@nestjs/common';
import { OperationService } from './operation.service.js';

/** Operations (get, list, wait, cancel; the conductor's status transitions). Needs Prisma and Redis. */
@Module({ providers: [OperationService], exports: [OperationService] })
export class OperationsModule {}

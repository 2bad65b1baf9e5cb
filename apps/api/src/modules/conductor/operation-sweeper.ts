import { Injectable, Logger } from '@nestjs/common';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { OperationQueue } from '../../infra/queue/operation-queue.js';
import { type ControlPlaneSettings, InjectControlPlaneSettings } from './control-plane.settings.js';

/** What one sweep found. */
export interface SweepResult {
  /** Unfinished operations it looked at. */
  readonly checked: number;
  /** Of those, how many got a new job. */
  readonly requeued: string[];
}

/** Operations looked at per sweep, oldest first; the next sweep takes the rest. */
const SWEEP_BATCH = 500;

/**
 * PostgreSQL is the source of truth for operations, Redis only carries their jobs: every sweep
 * gives each operation that is still PENDING/RUNNING (and untouched for the grace period) a job
 * again when its job is gone — a Redis flush, a failover that lost writes, a job that failed
 * while the database was away. A job that is waiting, delayed or running is left alone (a
 * crashed worker's running job is BullMQ's stalled-job check to recover).
 */
@Injectable()
export class OperationSweeper {
  private readonly log = new Logger('OperationSweeper');

  constructor(
    private readonly prisma: PrismaService,
    private readonly queue: OperationQueue,
    @InjectControlPlaneSettings() private readonly settings: ControlPlaneSettings,
  ) {}

  async sweep(now: Date = new Date()): Promise<SweepResult> {
    const operations = await this.prisma.operation.findMany({
      where: {
        status: { in: ['PENDING', 'RUNNING'] },
        updatedAt: { lt: new Date(now.getTime() - this.settings.sweepGraceMs) },
      },
      select: { id: true, kind: true },
      orderBy: { updatedAt: 'asc' },
      take: SWEEP_BATCH,
    });
    const requeued: string[] = [];
    for (const operation of operations) {
      if (await this.queue.ensureJob(operation)) requeued.push(operation.id);
    }
    if (requeued.length > 0) {
      this.log.warn(
        `re-enqueued ${requeued.length} unfinished operations whose jobs were gone: ${requeued.join(', ')}`,
      );
    }
    return { checked: operations.length, requeued };
  }
}

import { Inject, Injectable, type OnApplicationShutdown, Optional } from '@nestjs/common';
import { type JobState, Queue } from 'bullmq';
import { RedisService } from '../redis/redis.service.js';

/** The conductor's one queue: one job per operation, job id = operation id. */
export const OPERATIONS_QUEUE = 'operations';

/** Periodic cluster chores (host liveness, the operation sweeper), produced by job schedulers. */
export const MAINTENANCE_QUEUE = 'maintenance';

/** What an operation job carries: only the id; the operation row in PostgreSQL holds the rest. */
export interface OperationJobData {
  readonly operationId: string;
  /** The operation's kind, for logs and queue dashboards. */
  readonly kind: string;
}

/** Nest injection token for {@link OperationQueueOptions}. */
export const OPERATION_QUEUE_OPTIONS = Symbol('OPERATION_QUEUE_OPTIONS');

/** Retry policy of operation jobs. */
export interface OperationQueueOptions {
  /** Tries per job, the first included (default 8). Only transient agent errors use them. */
  readonly attempts?: number;
  /** First retry delay; doubles on every retry (default 1 s: 1, 2, 4 … 64 s). */
  readonly backoffMs?: number;
}

/** Job states in which the job will still run (or runs now). */
const LIVE_STATES: ReadonlySet<JobState | 'unknown'> = new Set([
  'waiting',
  'active',
  'delayed',
  'prioritized',
  'waiting-children',
]);

/**
 * The producer side of the operations queue. PostgreSQL stays the source of truth: a job only
 * says "look at operation X", so a job lost with Redis is recreated by the sweeper from the
 * operation row, and a duplicate job finds the operation already finished and does nothing.
 */
@Injectable()
export class OperationQueue implements OnApplicationShutdown {
  readonly attempts: number;
  readonly backoffMs: number;
  private created: Queue<OperationJobData> | undefined;

  constructor(
    private readonly redis: RedisService,
    @Optional() @Inject(OPERATION_QUEUE_OPTIONS) options?: OperationQueueOptions,
  ) {
    this.attempts = Math.max(1, options?.attempts ?? 8);
    this.backoffMs = Math.max(10, options?.backoffMs ?? 1_000);
  }

  /** The BullMQ queue, connected on first use (a process that never enqueues never touches Redis). */
  get queue(): Queue<OperationJobData> {
    if (!this.created) {
      this.created = new Queue<OperationJobData>(OPERATIONS_QUEUE, {
        connection: this.redis.bullConnection(),
        prefix: this.redis.bullPrefix,
      });
      this.created.on('error', () => undefined);
    }
    return this.created;
  }

  /**
   * Enqueues the job of an operation. Adding a job id that exists is a no-op in BullMQ, so a
   * retried enqueue (or the sweeper racing the api) never runs an operation twice at once.
   */
  async enqueue(operation: { id: string; kind: string }): Promise<void> {
    await this.queue.add(
      operation.kind,
      { operationId: operation.id, kind: operation.kind },
      {
        jobId: operation.id,
        attempts: this.attempts,
        backoff: { type: 'exponential', delay: this.backoffMs },
        // Finished jobs stay a while for dashboards; the operation row is the lasting record.
        removeOnComplete: { age: 3_600, count: 10_000 },
        removeOnFail: { age: 24 * 3_600, count: 10_000 },
      },
    );
  }

  /** BullMQ's state of an operation's job (`unknown` when there is none). */
  async jobState(operationId: string): Promise<JobState | 'unknown'> {
    return this.queue.getJobState(operationId);
  }

  /**
   * Makes sure an unfinished operation has a job that will run: nothing to do when its job is
   * waiting, delayed or active; a job that is missing (Redis lost it) or already finished
   * (completed/failed while the operation row says otherwise) is replaced. Returns whether a
   * new job was added.
   */
  async ensureJob(operation: { id: string; kind: string }): Promise<boolean> {
    const state = await this.jobState(operation.id);
    if (LIVE_STATES.has(state)) return false;
    if (state !== 'unknown') await this.queue.remove(operation.id);
    await this.enqueue(operation);
    return true;
  }

  async onApplicationShutdown(): Promise<void> {
    const queue = this.created;
    this.created = undefined;
    await queue?.close();
  }
}

import { Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { type Job, Worker } from 'bullmq';
import {
  OPERATIONS_QUEUE,
  type OperationJobData,
  OperationQueue,
} from '../../infra/queue/operation-queue.js';
import { RedisService } from '../../infra/redis/redis.service.js';
import { HostLivenessService } from '../gateway/host-liveness.service.js';
import { type ControlPlaneSettings, InjectControlPlaneSettings } from './control-plane.settings.js';
import { OperationRunner, type RunOutcome } from './operation-runner.js';
import { OperationSweeper } from './operation-sweeper.js';

/**
 * The conductor (role worker): a BullMQ worker on the operations queue, plus two periodic chores
 * — host liveness and the operation sweeper. The chores run on a timer in every worker process
 * rather than on a BullMQ job scheduler: a scheduler lives in Redis and would vanish with the
 * very flush the sweeper must repair, and both chores are idempotent conditional writes, so
 * running them in several workers is harmless (docs/adr/0033).
 */
@Injectable()
export class ConductorWorker implements OnApplicationBootstrap, OnApplicationShutdown {
  private worker: Worker<OperationJobData, RunOutcome> | undefined;
  private timers: NodeJS.Timeout[] = [];
  private readonly busy = new Set<string>();
  private readonly log = new Logger('Conductor');

  constructor(
    private readonly redis: RedisService,
    private readonly queue: OperationQueue,
    private readonly runner: OperationRunner,
    private readonly sweeper: OperationSweeper,
    private readonly liveness: HostLivenessService,
    @InjectControlPlaneSettings() private readonly settings: ControlPlaneSettings,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    await this.start();
  }

  async onApplicationShutdown(): Promise<void> {
    await this.stop();
  }

  /** Whether the worker is consuming jobs. */
  get running(): boolean {
    return this.worker !== undefined;
  }

  /** Starts consuming operation jobs and the periodic chores (a sweep runs at once). */
  async start(): Promise<void> {
    if (this.worker) return;
    const worker = new Worker<OperationJobData, RunOutcome>(OPERATIONS_QUEUE, (job) => this.process(job), {
      connection: this.redis.bullConnection(),
      prefix: this.redis.bullPrefix,
      concurrency: this.settings.workerConcurrency,
      lockDuration: this.settings.workerLockMs,
      stalledInterval: this.settings.workerStalledCheckMs,
      // A job whose worker died is taken over this many times before BullMQ fails it; the
      // sweeper re-enqueues even then, because the operation row is still unfinished.
      maxStalledCount: 5,
      autorun: true,
    });
    worker.on('error', (error) => this.log.error(`worker error: ${error.message}`));
    this.worker = worker;
    await worker.waitUntilReady();
    this.every('sweep', this.settings.sweepIntervalMs, () => this.sweeper.sweep());
    this.every('liveness', this.settings.livenessCheckMs, () => this.liveness.check());
    void this.chore('sweep', () => this.sweeper.sweep());
    this.log.log(
      `conductor consuming ${OPERATIONS_QUEUE} (prefix ${this.redis.bullPrefix}, concurrency ${this.settings.workerConcurrency})`,
    );
  }

  /** Stops taking jobs and lets the running ones finish. */
  async stop(): Promise<void> {
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    const worker = this.worker;
    this.worker = undefined;
    await worker?.close();
  }

  private async process(job: Job<OperationJobData, RunOutcome>): Promise<RunOutcome> {
    const attempt = job.attemptsMade + 1;
    const maxAttempts = job.opts.attempts ?? this.queue.attempts;
    const backoff = job.opts.backoff;
    const baseDelay = typeof backoff === 'number' ? backoff : (backoff?.delay ?? this.queue.backoffMs);
    return this.runner.run(job.data.operationId, {
      attempt,
      maxAttempts,
      nextDelayMs: baseDelay * 2 ** (attempt - 1),
    });
  }

  private every(name: string, ms: number, fn: () => Promise<unknown>): void {
    this.timers.push(setInterval(() => void this.chore(name, fn), ms));
  }

  /** Runs a chore unless the previous run of it is still going; failures are logged, never thrown. */
  private async chore(name: string, fn: () => Promise<unknown>): Promise<void> {
    if (this.busy.has(name)) return;
    this.busy.add(name);
    try {
      await fn();
    } catch (error) {
      this.log.warn(`${name} failed: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      this.busy.delete(name);
    }
  }
}

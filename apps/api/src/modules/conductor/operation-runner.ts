import { Injectable, Logger } from '@nestjs/common';
import { DomainError } from '../../errors/domain-error.js';
import { AgentCallError } from '../../infra/agent-client/agent-call.error.js';
import { AgentClientPool } from '../../infra/agent-client/agent-client.pool.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { OperationService } from '../operations/operation.service.js';
import { PlacementService } from '../placement/placement.service.js';
import { type ControlPlaneSettings, InjectControlPlaneSettings } from './control-plane.settings.js';
import { createVmStep } from './steps/create-vm.step.js';
import { deleteVmStep } from './steps/delete-vm.step.js';
import { powerActionStep } from './steps/power-action.step.js';
import { resizeVmStep } from './steps/resize-vm.step.js';
import { type OperationStep, type StepContext, StepFailure } from './steps/step-context.js';

/** The steps of every operation kind the conductor runs. */
const STEPS: Readonly<Record<string, OperationStep>> = {
  create: createVmStep,
  start: powerActionStep('start'),
  stop: powerActionStep('stop'),
  reboot: powerActionStep('reboot'),
  pause: powerActionStep('pause'),
  resume: powerActionStep('resume'),
  delete: deleteVmStep,
  resize: resizeVmStep,
};

/** Where a job's run stands for the retry decision (BullMQ's counters). */
export interface RunAttempt {
  /** 1 for the first run, 2 for the first retry, … */
  readonly attempt: number;
  /** Runs BullMQ allows in total. */
  readonly maxAttempts: number;
  /** Delay before the next try when this one fails transiently. */
  readonly nextDelayMs: number;
}

/** What one run did. */
export type RunOutcome =
  | { readonly status: 'skipped' }
  | { readonly status: 'succeeded'; readonly result: Record<string, unknown> }
  | { readonly status: 'failed'; readonly code: string; readonly message: string };

/** A run failed transiently and has tries left: BullMQ runs it again after its backoff. */
export class RetryableOperationError extends Error {
  override readonly name = 'RetryableOperationError';
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

interface Classified {
  readonly code: string;
  readonly message: string;
  readonly transient: boolean;
  readonly result?: Record<string, unknown>;
}

/**
 * Runs one operation (one BullMQ job): PENDING/RUNNING → RUNNING, the kind's step, then
 * SUCCEEDED or FAILED with a stable code. Transient failures (the agent unreachable or out of
 * time, the database away) are retried by BullMQ with backoff; permanent ones (INVALID_STATE,
 * INVALID_SPEC, NO_VALID_HOST, …) fail at once; the last retry fails as HOST_UNREACHABLE. A
 * finished or cancelled operation is skipped, so duplicate jobs are harmless.
 */
@Injectable()
export class OperationRunner {
  private readonly log = new Logger('Conductor');

  constructor(
    private readonly prisma: PrismaService,
    private readonly agents: AgentClientPool,
    private readonly placement: PlacementService,
    private readonly operations: OperationService,
    @InjectControlPlaneSettings() private readonly settings: ControlPlaneSettings,
  ) {}

  /**
   * Runs the operation once.
   *
   * @throws RetryableOperationError when BullMQ should run it again
   */
  async run(operationId: string, attempt: RunAttempt): Promise<RunOutcome> {
    const operation = await this.operations.beginAttempt(operationId);
    if (!operation) return { status: 'skipped' };
    const step = STEPS[operation.kind];
    if (!step) {
      await this.operations.fail(
        operationId,
        'INTERNAL',
        `this conductor cannot run ${operation.kind} operations`,
      );
      return { status: 'failed', code: 'INTERNAL', message: `unknown operation kind ${operation.kind}` };
    }
    const context: StepContext = {
      prisma: this.prisma,
      agents: this.agents,
      placement: this.placement,
      operations: this.operations,
      operation,
      diskPools: this.settings.vmDiskPools,
    };
    try {
      const result = await step.run(context);
      await this.operations.succeed(operationId, result);
      this.log.log(`operation ${operationId} (${operation.kind}) succeeded`);
      return { status: 'succeeded', result };
    } catch (error) {
      const failure = classify(error);
      if (failure.transient && attempt.attempt < attempt.maxAttempts) {
        this.log.warn(
          `operation ${operationId} (${operation.kind}) attempt ${attempt.attempt}/${attempt.maxAttempts} failed, ` +
            `retrying in ${attempt.nextDelayMs} ms: ${failure.message}`,
        );
        await this.operations
          .noteRetry(operationId, attempt.attempt, failure.code, failure.message, attempt.nextDelayMs)
          .catch(() => undefined);
        throw new RetryableOperationError(failure.code, failure.message, { cause: error });
      }
      const code = failure.transient ? transientFinalCode(failure.code) : failure.code;
      const message = failure.transient
        ? `gave up after ${attempt.attempt} attempts: ${failure.message}`
        : failure.message;
      if (step.compensate) {
        try {
          await step.compensate(context, { code, message });
        } catch (compensationError) {
          this.log.error(
            `operation ${operationId} (${operation.kind}): undoing after failure failed: ${String(compensationError)}`,
          );
        }
      }
      await this.operations.fail(operationId, code, message, failure.result);
      this.log.warn(`operation ${operationId} (${operation.kind}) failed: ${code}: ${message}`);
      return { status: 'failed', code, message };
    }
  }
}

/** What a transient failure is called once the retries are used up. */
function transientFinalCode(code: string): string {
  return code === 'UNAVAILABLE' ||
    code === 'DEADLINE_EXCEEDED' ||
    code === 'RESOURCE_EXHAUSTED' ||
    code === 'TIMEOUT'
    ? 'HOST_UNREACHABLE'
    : code;
}

function classify(error: unknown): Classified {
  if (error instanceof StepFailure) {
    return {
      code: error.code,
      message: error.message,
      transient: false,
      ...(error.result ? { result: error.result } : {}),
    };
  }
  if (error instanceof AgentCallError) {
    return { code: error.code, message: error.message, transient: error.transient };
  }
  if (error instanceof DomainError) return { code: error.code, message: error.message, transient: false };
  const code = (error as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && /^[A-Z][A-Z0-9_]+$/.test(code)) {
    // Domain errors of other layers (VM_NOT_FOUND from the data layer, …).
    return { code, message: (error as Error).message, transient: false };
  }
  // Anything else (the database away, a bug): retried, then FAILED as INTERNAL.
  return {
    code: 'INTERNAL',
    message: error instanceof Error ? error.message : String(error),
    transient: true,
  };
}

import type { Host, Image, Operation, Vm } from '../../../gen/prisma/client.js';
import type { AgentClientPool } from '../../../infra/agent-client/agent-client.pool.js';
import type { PrismaService } from '../../../infra/prisma/prisma.service.js';
import type { OperationService } from '../../operations/operation.service.js';
import type { PlacementService } from '../../placement/placement.service.js';

/** What every step of an operation can use. */
export interface StepContext {
  readonly prisma: PrismaService;
  readonly agents: AgentClientPool;
  readonly placement: PlacementService;
  readonly operations: OperationService;
  readonly operation: Operation;
  /** Storage pools for VM disks, by preference. */
  readonly diskPools: readonly string[];
}

/** A VM with what the steps need to command its host. */
export type VmWithHost = Vm & { image: Image; host: Host | null };

/**
 * A permanent failure a step decided on (NO_VALID_HOST, a VM that vanished): the operation
 * fails with this code at once, without retries.
 */
export class StepFailure extends Error {
  override readonly name = 'StepFailure';
  constructor(
    readonly code: string,
    message: string,
    readonly result?: Record<string, unknown>,
  ) {
    super(message);
  }
}

/** One operation kind: what it does, and what it undoes or records when it fails for good. */
export interface OperationStep {
  /** Runs (or resumes) the operation; idempotent, so a retry or a new worker can run it again. */
  run(context: StepContext): Promise<Record<string, unknown>>;
  /** After a permanent failure (or the last retry), before the operation is marked FAILED. */
  compensate?(context: StepContext, failure: { code: string; message: string }): Promise<void>;
}

/** Loads the operation's VM with its image and host (null when it is gone or deleted). */
export async function loadVm(context: StepContext): Promise<VmWithHost | null> {
  const vmId = context.operation.vmId;
  if (!vmId) return null;
  const vm = await context.prisma.vm.findUnique({
    where: { id: vmId },
    include: { image: true, host: true },
  });
  return vm && vm.deletedAt === null ? vm : null;
}

import type { Operation, OperationStatus } from '../../gen/prisma/client.js';

/** The VM operations the conductor runs (one job per operation). */
export const VM_OPERATION_KINDS = [
  'create',
  'start',
  'stop',
  'reboot',
  'pause',
  'resume',
  'delete',
  'resize',
] as const;
/** A kind of VM operation. */
export type VmOperationKind = (typeof VM_OPERATION_KINDS)[number];

/** Statuses after which an operation never changes again. */
export const TERMINAL_OPERATION_STATUSES: readonly OperationStatus[] = ['SUCCEEDED', 'FAILED', 'CANCELLED'];

/** Statuses of an operation that still holds its VM ("one action per VM at a time"). */
export const ACTIVE_OPERATION_STATUSES: readonly OperationStatus[] = ['PENDING', 'RUNNING'];

/** Whether the operation is finished. */
export function isTerminal(operation: Pick<Operation, 'status'>): boolean {
  return TERMINAL_OPERATION_STATUSES.includes(operation.status);
}

/** Filters of the operations list. */
export interface ListOperationsQuery {
  /** Only this project's operations (members, readers); all projects when undefined (admin). */
  readonly projectId?: string;
  readonly vmId?: string;
  readonly status?: OperationStatus;
  readonly kind?: string;
}

import type { VmState } from '@hangar/vmm-core';
import type { Prisma, PrismaClient } from '../../gen/prisma/client.js';

/** Who saw the state change: the conductor finishing a step, or the host's agent reporting. */
export type VmStateSource = 'conductor' | 'heartbeat' | 'agent-event' | 'host-liveness' | 'api';

/** One observed-state change to record. */
export interface VmStateChange {
  readonly vmId: string;
  readonly to: VmState;
  readonly source: VmStateSource;
  /** Only change from one of these states (e.g. UNKNOWN → observed only while still UNKNOWN). */
  readonly onlyFrom?: readonly VmState[];
  /** Why (an agent's reason, an operation's error). Shown on the VM while it is in ERROR. */
  readonly reason?: string;
  readonly operationId?: string;
  /** Other columns written in the same statement (host, desired state, deletion). */
  readonly also?: Prisma.VmUncheckedUpdateInput;
}

/** What {@link changeVmState} did. */
export interface VmStateChangeResult {
  readonly changed: boolean;
  readonly from: VmState | undefined;
}

type Db = Pick<PrismaClient, '$transaction'>;

/**
 * Sets a VM's observed state and writes a `vm.state_changed` event row in the same transaction,
 * only when the state really changes: the VM row is locked first, so two reporters (a heartbeat
 * and the conductor) never both record the same change, and a duplicate report (at-least-once
 * delivery) changes nothing. The version trigger bumps the VM's ETag. `errorMessage` follows the
 * state: set to `reason` when entering ERROR, cleared otherwise.
 */
export async function changeVmState(db: Db, change: VmStateChange): Promise<VmStateChangeResult> {
  return db.$transaction(async (tx) => changeVmStateIn(tx, change));
}

/** {@link changeVmState} inside the caller's transaction. */
export async function changeVmStateIn(
  tx: Prisma.TransactionClient,
  change: VmStateChange,
): Promise<VmStateChangeResult> {
  const rows = await tx.$queryRaw<{ state: VmState; projectId: string }[]>`
    SELECT observed_state::text AS state, project_id::text AS "projectId"
      FROM vms WHERE id = ${change.vmId}::uuid AND deleted_at IS NULL FOR UPDATE`;
  const row = rows[0];
  if (!row) return { changed: false, from: undefined };
  const from = row.state;
  const stateChanges =
    from !== change.to && (change.onlyFrom === undefined || change.onlyFrom.includes(from));
  if (!stateChanges) {
    if (change.also && from === change.to) {
      await tx.vm.update({ where: { id: change.vmId }, data: change.also });
    }
    return { changed: false, from };
  }
  await tx.vm.update({
    where: { id: change.vmId },
    data: {
      ...change.also,
      observedState: change.to,
      errorMessage: change.to === 'ERROR' ? (change.reason ?? 'unknown error') : null,
    },
  });
  await tx.event.create({
    data: {
      resourceType: 'vm',
      resourceId: change.vmId,
      projectId: row.projectId,
      kind: 'vm.state_changed',
      data: {
        from,
        to: change.to,
        source: change.source,
        ...(change.reason === undefined ? {} : { reason: change.reason }),
        ...(change.operationId === undefined ? {} : { operationId: change.operationId }),
      },
    },
  });
  return { changed: true, from };
}

import { ACTION_ALLOWED_FROM, isActionAllowed, type VmState } from '@hangar/vmm-core';
import { DomainError } from '../../../errors/domain-error.js';
import type { Operation, Prisma, Vm } from '../../../gen/prisma/client.js';
import type { PrismaService } from '../../../infra/prisma/prisma.service.js';
import { updateVm, VmNotFoundError } from '../../../infra/prisma/vm-version.js';
import { claimAllocation, releaseAllocation } from '../../placement/claim-allocation.js';
import { NoValidHostError } from '../../placement/placement.errors.js';
import { FILTER_NAMES, type FilterName } from '../../placement/placement.types.js';
import {
  flavorNotFound,
  invalidState,
  operationInProgress,
  projectNotFound,
  quotaExceeded,
} from '../vm.errors.js';
import type { ResizeParams } from './resize-vm.schemas.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** What a client asks for: resize `vmId` to `flavor` (id or name), as the caller's project sees it. */
export interface ResizeVmInput {
  readonly vmId: string;
  readonly flavor: string;
  /** The caller's project; undefined for an admin (every project). */
  readonly projectId?: string | undefined;
}

/** A VM's size: what a resize changes. */
export interface VmSizeRow {
  readonly flavorId: string;
  readonly vcpus: number;
  readonly memoryMib: number;
}

/** The VM row a resize works on, locked (`FOR UPDATE`), with its image's pool for the claim. */
export interface LockedVmForResize extends VmSizeRow {
  readonly id: string;
  readonly projectId: string;
  readonly hostId: string | null;
  readonly hostName: string | null;
  readonly state: VmState;
  readonly cpuModel: string;
  readonly machineType: string;
  readonly antiAffinityGroup: string | null;
  readonly imagePool: string;
}

/** The transaction options of resize transactions: they wait for host and project row locks. */
export const RESIZE_TRANSACTION = { maxWait: 15_000, timeout: 30_000 } as const;

/**
 * Accepts a resize: under the VM's row lock, with no other operation of the VM active
 * (OPERATION_IN_PROGRESS), the flavor must exist (FLAVOR_NOT_FOUND), the VM must be STOPPED
 * (INVALID_STATE naming its state), the flavor must be another one
 * (CONFLICT), the project's quota must allow the growth (QUOTA_EXCEEDED) and the VM's host must
 * still have room for the new size (NO_VALID_HOST with what each filter removed; a resize never
 * moves a VM). The quota and capacity checks are made for the answer only — their changes are
 * rolled back — and repeated for real by the conductor's `resize` step, so a resize cancelled
 * before it runs leaves nothing to undo. Returns the VM and the new `resize` operation (PENDING);
 * the caller enqueues it.
 */
export async function requestResize(
  prisma: PrismaService,
  input: ResizeVmInput,
): Promise<{ vm: Vm; operation: Operation }> {
  if (!UUID.test(input.vmId)) throw new VmNotFoundError(input.vmId);
  const flavor = await prisma.flavor.findFirst({
    where: UUID.test(input.flavor) ? { id: input.flavor } : { name: input.flavor },
  });
  return prisma.$transaction(async (tx) => {
    const row = await lockVmForResize(tx, input.vmId);
    if (!row || (input.projectId !== undefined && row.projectId !== input.projectId)) {
      throw new VmNotFoundError(input.vmId);
    }
    const active = await tx.operation.findFirst({
      where: { vmId: row.id, status: { in: ['PENDING', 'RUNNING'] } },
      select: { id: true, kind: true },
    });
    if (active) throw operationInProgress(row.id, active);
    if (!flavor) throw flavorNotFound(input.flavor);
    if (!isActionAllowed('resize', row.state)) {
      throw invalidState(row.id, 'resize', row.state, ACTION_ALLOWED_FROM.resize);
    }
    if (flavor.id === row.flavorId) {
      throw new DomainError('CONFLICT', `VM ${row.id} already has flavor ${flavor.name}`, {
        field: 'flavor',
        extensions: { flavor_id: flavor.id },
      });
    }
    const target: VmSizeRow = { flavorId: flavor.id, vcpus: flavor.vcpus, memoryMib: flavor.memoryMib };
    await assertResizeWithinQuota(tx, row, target);
    await tx.$executeRawUnsafe('SAVEPOINT hangar_resize_check');
    await swapAllocation(tx, row, target);
    await tx.$executeRawUnsafe('ROLLBACK TO SAVEPOINT hangar_resize_check');
    await tx.$executeRawUnsafe('RELEASE SAVEPOINT hangar_resize_check');

    const params: ResizeParams = {
      flavor_id: flavor.id,
      flavor: flavor.name,
      vcpus: flavor.vcpus,
      memory_mib: flavor.memoryMib,
      from: { flavor_id: row.flavorId, vcpus: row.vcpus, memory_mib: row.memoryMib },
    };
    // Conditional insert, as every VM action does: the operation exists only if no other one
    // of the VM is active (the row lock above makes this a guarantee).
    const inserted = await tx.$queryRaw<{ id: string }[]>`
      INSERT INTO operations (project_id, kind, vm_id, host_id, params)
      SELECT ${row.projectId}::uuid, 'resize', ${row.id}::uuid, ${row.hostId}::uuid, ${JSON.stringify(params)}::jsonb
       WHERE NOT EXISTS (
         SELECT 1 FROM operations WHERE vm_id = ${row.id}::uuid AND status IN ('PENDING', 'RUNNING'))
      RETURNING id::text AS id`;
    const operationId = inserted[0]?.id;
    if (!operationId) throw operationInProgress(row.id);
    await tx.event.create({
      data: {
        resourceType: 'vm',
        resourceId: row.id,
        projectId: row.projectId,
        kind: 'vm.action_requested',
        data: {
          action: 'resize',
          flavor: flavor.name,
          from: params.from,
          to: { flavor_id: flavor.id, vcpus: flavor.vcpus, memory_mib: flavor.memoryMib },
          operationId,
          state: row.state,
        },
      },
    });
    const [vm, operation] = await Promise.all([
      tx.vm.findUniqueOrThrow({ where: { id: row.id } }),
      tx.operation.findUniqueOrThrow({ where: { id: operationId } }),
    ]);
    return { vm, operation };
  }, RESIZE_TRANSACTION);
}

/** Locks a live VM's row (`FOR UPDATE`) and reads what a resize needs; undefined when it is gone. */
export async function lockVmForResize(
  tx: Prisma.TransactionClient,
  vmId: string,
): Promise<LockedVmForResize | undefined> {
  const rows = await tx.$queryRaw<LockedVmForResize[]>`
    SELECT v.id::text AS id, v.project_id::text AS "projectId", v.host_id::text AS "hostId",
           h.name AS "hostName", v.observed_state::text AS state, v.flavor_id::text AS "flavorId",
           v.vcpus, v.memory_mib AS "memoryMib", v.cpu_model AS "cpuModel",
           v.machine_type AS "machineType", v.anti_affinity_group AS "antiAffinityGroup",
           i.pool AS "imagePool"
      FROM vms v JOIN images i ON i.id = v.image_id LEFT JOIN hosts h ON h.id = v.host_id
     WHERE v.id = ${vmId}::uuid AND v.deleted_at IS NULL
       FOR UPDATE OF v`;
  return rows[0];
}

/**
 * Checks that the project can take the resize's growth (shrinking always passes), locking the
 * project row as a create does, so concurrent creates and resizes cannot together exceed it.
 *
 * @throws DomainError QUOTA_EXCEEDED naming the resource, its limit, the usage and the growth
 */
export async function assertResizeWithinQuota(
  tx: Prisma.TransactionClient,
  vm: Pick<LockedVmForResize, 'projectId' | 'vcpus' | 'memoryMib'>,
  target: Pick<VmSizeRow, 'vcpus' | 'memoryMib'>,
): Promise<void> {
  const growVcpus = target.vcpus - vm.vcpus;
  const growMemory = target.memoryMib - vm.memoryMib;
  if (growVcpus <= 0 && growMemory <= 0) return;
  const projects = await tx.$queryRaw<{ quotaVcpus: number; quotaMemoryMib: number }[]>`
    SELECT quota_vcpus AS "quotaVcpus", quota_memory_mib AS "quotaMemoryMib"
      FROM projects WHERE id = ${vm.projectId}::uuid FOR UPDATE`;
  const project = projects[0];
  if (!project) throw projectNotFound(vm.projectId);
  const usage = await tx.$queryRaw<{ vcpus: number; memoryMib: number }[]>`
    SELECT coalesce(sum(vcpus), 0)::int AS vcpus, coalesce(sum(memory_mib), 0)::int AS "memoryMib"
      FROM vms WHERE project_id = ${vm.projectId}::uuid AND deleted_at IS NULL`;
  const used = usage[0] ?? { vcpus: 0, memoryMib: 0 };
  if (growVcpus > 0 && used.vcpus + growVcpus > project.quotaVcpus) {
    throw quotaExceeded('vcpus', project.quotaVcpus, used.vcpus, growVcpus);
  }
  if (growMemory > 0 && used.memoryMib + growMemory > project.quotaMemoryMib) {
    throw quotaExceeded('memory_mib', project.quotaMemoryMib, used.memoryMib, growMemory);
  }
}

/**
 * Replaces the VM's allocation on its host by one of the new size, with the placement claim
 * helpers in the caller's transaction: the old allocation is released and the new one claimed
 * on the same host only, under the host's row lock and with every placement filter, so the host
 * can never be overcommitted. When the host cannot take the new size, the release is rolled back
 * too and NO_VALID_HOST names the filter that refused it. A VM without a host holds nothing.
 *
 * @throws NoValidHostError when the VM's host cannot take the new size
 */
export async function swapAllocation(
  tx: Prisma.TransactionClient,
  vm: LockedVmForResize,
  size: Pick<VmSizeRow, 'vcpus' | 'memoryMib'>,
): Promise<void> {
  if (!vm.hostId) return;
  await tx.$executeRawUnsafe('SAVEPOINT hangar_resize_swap');
  try {
    await releaseAllocation(tx, vm.id, vm.hostId);
    const claim = await claimAllocation(
      tx,
      {
        vmId: vm.id,
        projectId: vm.projectId,
        kind: 'primary',
        vcpus: size.vcpus,
        memoryMib: size.memoryMib,
        cpuModel: vm.cpuModel,
        machineType: vm.machineType,
        storagePool: vm.imagePool,
        antiAffinityGroup: vm.antiAffinityGroup,
      },
      [vm.hostId],
    );
    if (!claim.ok) {
      const reason = claim.rejected[0]?.reason ?? 'capacity';
      throw noRoomOnHost(vm, size, reason === 'gone' ? 'host-state' : reason);
    }
    await tx.$executeRawUnsafe('RELEASE SAVEPOINT hangar_resize_swap');
  } catch (error) {
    await tx.$executeRawUnsafe('ROLLBACK TO SAVEPOINT hangar_resize_swap').catch(() => undefined);
    throw error;
  }
}

/**
 * Gives a VM back the size it had before a failed resize: rows (flavor, vCPUs, memory) and its
 * allocation. The allocation goes back only if the host can take it again; if another claim took
 * the room meanwhile, the larger allocation stays (the host is never overcommitted; the next
 * resize or the delete corrects it). Returns false when the VM is gone.
 */
export async function revertResize(
  tx: Prisma.TransactionClient,
  vmId: string,
  from: VmSizeRow,
): Promise<boolean> {
  const row = await lockVmForResize(tx, vmId);
  if (!row) return false;
  try {
    await swapAllocation(tx, row, from);
  } catch (error) {
    if (!(error instanceof NoValidHostError)) throw error;
  }
  await updateVm(tx, vmId, undefined, {
    flavorId: from.flavorId,
    vcpus: from.vcpus,
    memoryMib: from.memoryMib,
  });
  return true;
}

/** NO_VALID_HOST for a resize: the one host considered, removed by `filter`. */
function noRoomOnHost(
  vm: LockedVmForResize,
  size: Pick<VmSizeRow, 'vcpus' | 'memoryMib'>,
  filter: FilterName,
): NoValidHostError {
  const filters = FILTER_NAMES.map((name) => ({ name, removed: name === filter ? 1 : 0 }));
  const host = vm.hostName ?? vm.hostId ?? 'its host';
  return new NoValidHostError({
    code: 'NO_VALID_HOST',
    detail:
      `VM ${vm.id} cannot have ${size.vcpus} vCPUs and ${size.memoryMib} MiB on its host ${host}: ` +
      `1 host considered; ${filter} removed 1 (a resize does not move a VM)`,
    filters,
  });
}

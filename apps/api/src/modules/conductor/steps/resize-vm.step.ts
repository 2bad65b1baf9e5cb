import { AgentCallError } from '../../../infra/agent-client/agent-call.error.js';
import { vmStateFromProto } from '../../../infra/agent-client/vm-state.mapping.js';
import { updateVm } from '../../../infra/prisma/vm-version.js';
import { NoValidHostError } from '../../placement/placement.errors.js';
import {
  assertResizeWithinQuota,
  lockVmForResize,
  RESIZE_TRANSACTION,
  revertResize,
  swapAllocation,
  type VmSizeRow,
} from '../../vms/usecases/resize-vm.js';
import { type ResizeParams, ResizeParamsSchema } from '../../vms/usecases/resize-vm.schemas.js';
import { invalidState } from '../../vms/vm.errors.js';
import { loadVm, type OperationStep, type StepContext, StepFailure } from './step-context.js';

function paramsOf(context: StepContext): ResizeParams {
  const parsed = ResizeParamsSchema.safeParse(context.operation.params);
  if (!parsed.success) {
    throw new StepFailure('INTERNAL', `resize operation ${context.operation.id} has malformed params`);
  }
  return parsed.data;
}

function hasSize(row: VmSizeRow, size: { flavor_id: string; vcpus: number; memory_mib: number }): boolean {
  return row.flavorId === size.flavor_id && row.vcpus === size.vcpus && row.memoryMib === size.memory_mib;
}

/**
 * `resize` (the VM is STOPPED): first the rows — under the VM's row lock, the project's quota is
 * checked again for the growth, the VM's allocation on its host is swapped for one of the new
 * size with the placement claim helpers (NO_VALID_HOST when the host has no room: a resize never
 * moves a VM) and the VM gets the flavor's vCPUs and memory (its version, the ETag, moves) — then
 * the host: the agent gets the VM's own definition back with the new size (CreateVm of an
 * existing VM that differs only in size resizes it), which QEMU uses at the next start. Disks,
 * seed and console log stay on the host. Every part can run again: rows already at the new size
 * are left alone, a host definition already at the new size is not sent again, and the agent
 * replays a call it already made for this operation.
 *
 * A resize that fails for good after the rows changed puts them back (see `compensate`), unless
 * the host already has the new size.
 */
export const resizeVmStep: OperationStep = {
  async run(context) {
    const { operation } = context;
    const target = paramsOf(context);
    const vm = await loadVm(context);
    if (!vm) throw new StepFailure('VM_NOT_FOUND', `VM ${operation.vmId} no longer exists`);
    const host = vm.host;
    if (!host)
      throw new StepFailure('INVALID_STATE', `VM ${vm.id} is not on any host (it is ${vm.observedState})`);
    const where = { hostId: host.id, host: host.name };

    if (!hasSize(vm, target)) {
      await context.operations.progress(operation.id, 20, 'claiming', where);
      try {
        await context.prisma.$transaction(async (tx) => {
          const row = await lockVmForResize(tx, vm.id);
          if (!row) throw new StepFailure('VM_NOT_FOUND', `VM ${vm.id} no longer exists`);
          if (hasSize(row, target)) return;
          // A VM the host reports running (started behind the api's back) keeps its size.
          if (row.state !== 'STOPPED') throw invalidState(vm.id, 'resize', row.state, ['STOPPED']);
          const size = { flavorId: target.flavor_id, vcpus: target.vcpus, memoryMib: target.memory_mib };
          await assertResizeWithinQuota(tx, row, size);
          await swapAllocation(tx, row, size);
          await updateVm(tx, vm.id, undefined, size);
          await tx.event.create({
            data: {
              resourceType: 'vm',
              resourceId: vm.id,
              projectId: vm.projectId,
              kind: 'vm.resized',
              data: {
                flavor: target.flavor,
                from: target.from,
                to: { flavor_id: target.flavor_id, vcpus: target.vcpus, memory_mib: target.memory_mib },
                operationId: operation.id,
              },
            },
          });
        }, RESIZE_TRANSACTION);
      } catch (error) {
        if (error instanceof NoValidHostError) {
          throw new StepFailure('NO_VALID_HOST', error.message, {
            filters: error.filters.map((f) => ({ ...f })),
          });
        }
        throw error;
      }
    }

    await context.operations.progress(operation.id, 60, 'redefining', where);
    const current = (await context.agents.getVm(host.agentAddress, { vmId: vm.id })).vm;
    const spec = current?.spec;
    if (!current || !spec) {
      throw new StepFailure(
        'AGENT_ERROR',
        `the agent of host ${host.name} did not return VM ${vm.id}'s definition`,
      );
    }
    if (spec.vcpus !== target.vcpus || spec.memoryMib !== target.memory_mib) {
      const state = vmStateFromProto(current.state);
      if (state !== undefined && state !== 'STOPPED') {
        throw invalidState(vm.id, 'resize', state, ['STOPPED']);
      }
      // The host's own definition with the new size: nothing else may differ, or the agent
      // refuses (VM_EXISTS) instead of redefining the VM.
      const answered = await context.agents.createVm(host.agentAddress, {
        operationId: operation.id,
        spec: { ...spec, vcpus: target.vcpus, memoryMib: target.memory_mib },
      });
      const now = answered.vm?.spec;
      if (now?.vcpus !== target.vcpus || now.memoryMib !== target.memory_mib) {
        throw new StepFailure(
          'AGENT_ERROR',
          `the agent of host ${host.name} answered VM ${vm.id} with ${now?.vcpus ?? '?'} vCPUs and ` +
            `${now?.memoryMib ?? '?'} MiB instead of ${target.vcpus} and ${target.memory_mib}`,
        );
      }
    }
    return {
      flavor_id: target.flavor_id,
      flavor: target.flavor,
      vcpus: target.vcpus,
      memory_mib: target.memory_mib,
      hostId: host.id,
      host: host.name,
    };
  },

  /**
   * The resize failed for good: rows changed by `run` go back to the old size (flavor, vCPUs,
   * memory and the allocation), so the api shows what the host will boot — unless the host
   * already has the new definition (its answer was lost), in which case the rows keep it.
   */
  async compensate(context, failure) {
    let target: ResizeParams;
    try {
      target = paramsOf(context);
    } catch {
      return;
    }
    const vm = await loadVm(context);
    if (!vm || !hasSize(vm, target)) return;
    if (vm.host) {
      try {
        const spec = (await context.agents.getVm(vm.host.agentAddress, { vmId: vm.id })).vm?.spec;
        if (spec?.vcpus === target.vcpus && spec.memoryMib === target.memory_mib) return;
      } catch (error) {
        // Unreachable or gone: the host most likely never saw the new size.
        if (!(error instanceof AgentCallError)) throw error;
      }
    }
    await context.prisma.$transaction(async (tx) => {
      const from = {
        flavorId: target.from.flavor_id,
        vcpus: target.from.vcpus,
        memoryMib: target.from.memory_mib,
      };
      if (!(await revertResize(tx, vm.id, from))) return;
      await tx.event.create({
        data: {
          resourceType: 'vm',
          resourceId: vm.id,
          projectId: vm.projectId,
          kind: 'vm.resize_reverted',
          data: {
            from: { flavor_id: target.flavor_id, vcpus: target.vcpus, memory_mib: target.memory_mib },
            to: target.from,
            reason: `${failure.code}: ${failure.message}`,
            operationId: context.operation.id,
          },
        },
      });
    }, RESIZE_TRANSACTION);
  },
};

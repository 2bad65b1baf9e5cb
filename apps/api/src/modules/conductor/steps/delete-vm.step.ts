import { AgentCallError } from '../../../infra/agent-client/agent-call.error.js';
import { vmStateFromProto } from '../../../infra/agent-client/vm-state.mapping.js';
import { releaseVmAllocations } from '../../placement/claim-allocation.js';
import { changeVmState, changeVmStateIn } from '../../vms/vm-state.writer.js';
import { loadVm, type OperationStep } from './step-context.js';

/**
 * `delete`: DELETING → the host powers the VM off if it still runs (force) and removes its
 * runtime folder and disks → allocations released → DELETED (the row stays, with `deleted_at`,
 * so events and operations keep their subject; the name is free again). A VM the host does not
 * know is already gone there.
 */
export const deleteVmStep: OperationStep = {
  async run(context) {
    const operationId = context.operation.id;
    const vm = await loadVm(context);
    if (!vm) return { deleted: true };
    await changeVmState(context.prisma, { vmId: vm.id, to: 'DELETING', source: 'conductor', operationId });
    if (vm.host) {
      const address = vm.host.agentAddress;
      await context.operations.progress(operationId, 20, 'stopping', {
        hostId: vm.host.id,
        host: vm.host.name,
      });
      let state: string | undefined;
      try {
        state = vmStateFromProto((await context.agents.getVm(address, { vmId: vm.id })).vm?.state);
      } catch (error) {
        if (!(error instanceof AgentCallError && error.code === 'VM_NOT_FOUND')) throw error;
      }
      if (state !== undefined && state !== 'STOPPED') {
        await context.agents.stopVm(address, { vmId: vm.id, operationId, force: true });
      }
      await context.operations.progress(operationId, 60, 'deleting', {
        hostId: vm.host.id,
        host: vm.host.name,
      });
      await context.agents.deleteVm(address, { vmId: vm.id, operationId });
    }
    await context.prisma.$transaction(async (tx) => {
      await releaseVmAllocations(tx, vm.id);
      await changeVmStateIn(tx, {
        vmId: vm.id,
        to: 'DELETED',
        source: 'conductor',
        operationId,
        also: { deletedAt: new Date(), hostId: null },
      });
    });
    return { deleted: true };
  },

  async compensate(context, failure) {
    const vm = await loadVm(context);
    if (!vm) return;
    await changeVmState(context.prisma, {
      vmId: vm.id,
      to: 'ERROR',
      source: 'conductor',
      operationId: context.operation.id,
      reason: `delete failed: ${failure.code}: ${failure.message}`,
    });
  },
};

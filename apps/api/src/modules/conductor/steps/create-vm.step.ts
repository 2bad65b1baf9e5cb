import { AgentCallError } from '../../../infra/agent-client/agent-call.error.js';
import { vmStateFromProto } from '../../../infra/agent-client/vm-state.mapping.js';
import { releaseVmAllocations } from '../../placement/claim-allocation.js';
import { NoValidHostError } from '../../placement/placement.errors.js';
import { changeVmState, changeVmStateIn } from '../../vms/vm-state.writer.js';
import { buildVmSpec, diskPoolFor } from '../vm-spec.builder.js';
import { loadVm, type OperationStep, type StepContext, StepFailure } from './step-context.js';

/**
 * `create`: PENDING → SCHEDULING (placement claims an allocation) → CREATING (agent CreateVm,
 * then StartVm, both keyed by the operation id) → RUNNING. Every step can run again: placement
 * returns the allocation the VM already holds, the agent replays a call it already made, and a
 * VM the agent already has under this id is ours. A permanent failure removes what the host made,
 * gives the allocation back and leaves the VM in ERROR with the reason.
 */
export const createVmStep: OperationStep = {
  async run(context: StepContext) {
    const { operation } = context;
    const vm = await loadVm(context);
    if (!vm) throw new StepFailure('VM_NOT_FOUND', `VM ${operation.vmId} no longer exists`);
    if (vm.observedState === 'RUNNING' && vm.hostId) {
      // A previous run got this far and died before recording success.
      return { hostId: vm.hostId };
    }
    await changeVmState(context.prisma, {
      vmId: vm.id,
      to: 'SCHEDULING',
      onlyFrom: ['PENDING'],
      source: 'conductor',
      operationId: operation.id,
    });
    await context.operations.progress(operation.id, 10, 'scheduling');
    let placed: { hostId: string };
    try {
      placed = await context.placement.placeVm(vm.id);
    } catch (error) {
      if (error instanceof NoValidHostError) {
        throw new StepFailure('NO_VALID_HOST', error.message, {
          filters: error.filters.map((f) => ({ ...f })),
        });
      }
      throw error;
    }
    const host = await context.prisma.host.findUnique({ where: { id: placed.hostId } });
    if (!host)
      throw new StepFailure(
        'HOST_NOT_FOUND',
        `host ${placed.hostId} was removed while the VM was placed on it`,
      );
    await changeVmState(context.prisma, {
      vmId: vm.id,
      to: 'CREATING',
      onlyFrom: ['PENDING', 'SCHEDULING'],
      source: 'conductor',
      operationId: operation.id,
    });
    await context.prisma.operation.updateMany({ where: { id: operation.id }, data: { hostId: host.id } });
    await context.operations.progress(operation.id, 30, 'creating', { hostId: host.id, host: host.name });

    const spec = buildVmSpec(vm, vm.image, diskPoolFor(host, vm.image, context.diskPools));
    try {
      await context.agents.createVm(host.agentAddress, { operationId: operation.id, spec });
    } catch (error) {
      // The VM ids are ours alone: a VM the host already has under this id was made by an
      // earlier run whose outcome the agent did not keep.
      if (!(error instanceof AgentCallError && error.code === 'VM_EXISTS')) throw error;
    }
    await context.operations.progress(operation.id, 60, 'starting', { hostId: host.id, host: host.name });
    const started = await context.agents.startVm(host.agentAddress, {
      vmId: vm.id,
      operationId: operation.id,
    });
    const observed = vmStateFromProto(started.vm?.state) ?? 'RUNNING';
    await changeVmState(context.prisma, {
      vmId: vm.id,
      to: observed,
      source: 'conductor',
      operationId: operation.id,
      also: { hostId: host.id },
    });
    return { hostId: host.id, host: host.name, state: observed };
  },

  async compensate(context, failure) {
    const vm = await loadVm(context);
    if (!vm) return;
    if (vm.host) {
      // Best effort: whatever the host made for this VM goes (the agent forgets unknown VMs happily).
      await context.agents
        .deleteVm(vm.host.agentAddress, { vmId: vm.id, operationId: context.operation.id })
        .catch(() => undefined);
    }
    await context.prisma.$transaction(async (tx) => {
      await releaseVmAllocations(tx, vm.id);
      await changeVmStateIn(tx, {
        vmId: vm.id,
        to: 'ERROR',
        source: 'conductor',
        operationId: context.operation.id,
        reason: `${failure.code}: ${failure.message}`,
        also: { hostId: null },
      });
    });
  },
};

import type { agentv1 } from '@hangar/proto';
import type { VmState } from '@hangar/vmm-core';
import { AgentCallError } from '../../../infra/agent-client/agent-call.error.js';
import { vmStateFromProto } from '../../../infra/agent-client/vm-state.mapping.js';
import { changeVmState } from '../../vms/vm-state.writer.js';
import {
  loadVm,
  type OperationStep,
  type StepContext,
  StepFailure,
  type VmWithHost,
} from './step-context.js';

/** The power actions and the state each leaves the VM in when the agent does not say. */
export type PowerAction = 'start' | 'stop' | 'reboot' | 'pause' | 'resume';

const EXPECTED: Readonly<Record<PowerAction, VmState>> = {
  start: 'RUNNING',
  stop: 'STOPPED',
  reboot: 'RUNNING',
  pause: 'PAUSED',
  resume: 'RUNNING',
};

async function callAgent(
  context: StepContext,
  action: PowerAction,
  address: string,
  vmId: string,
): Promise<agentv1.Vm | undefined> {
  const operationId = context.operation.id;
  const agents = context.agents;
  switch (action) {
    case 'start':
      return (await agents.startVm(address, { vmId, operationId })).vm;
    case 'stop': {
      const force = (context.operation.params as { force?: unknown } | null)?.force === true;
      return (await agents.stopVm(address, { vmId, operationId, force })).vm;
    }
    case 'reboot':
      return (await agents.rebootVm(address, { vmId, operationId })).vm;
    case 'pause':
      return (await agents.pauseVm(address, { vmId, operationId })).vm;
    case 'resume':
      return (await agents.resumeVm(address, { vmId, operationId })).vm;
  }
}

function requireHost(vm: VmWithHost): NonNullable<VmWithHost['host']> {
  if (!vm.host)
    throw new StepFailure('INVALID_STATE', `VM ${vm.id} is not on any host (it is ${vm.observedState})`);
  return vm.host;
}

/**
 * A power action (start, stop [force], reboot, pause, resume): one agent call keyed by the
 * operation id, then the observed state the agent answers with. When the agent refuses for good
 * (e.g. INVALID_STATE: the host saw the VM in another state than the api), the VM's observed
 * state is refreshed from the agent and its desired state set back to match it.
 */
export function powerActionStep(action: PowerAction): OperationStep {
  return {
    async run(context) {
      const vm = await loadVm(context);
      if (!vm) throw new StepFailure('VM_NOT_FOUND', `VM ${context.operation.vmId} no longer exists`);
      const host = requireHost(vm);
      await context.operations.progress(context.operation.id, 20, action, {
        hostId: host.id,
        host: host.name,
      });
      const answered = await callAgent(context, action, host.agentAddress, vm.id);
      const observed = vmStateFromProto(answered?.state) ?? EXPECTED[action];
      await changeVmState(context.prisma, {
        vmId: vm.id,
        to: observed,
        source: 'conductor',
        operationId: context.operation.id,
      });
      return { state: observed };
    },

    async compensate(context) {
      const vm = await loadVm(context);
      if (!vm?.host) return;
      let observed: VmState | undefined;
      try {
        observed = vmStateFromProto(
          (await context.agents.getVm(vm.host.agentAddress, { vmId: vm.id })).vm?.state,
        );
      } catch (error) {
        if (!(error instanceof AgentCallError)) throw error;
      }
      if (observed) {
        await changeVmState(context.prisma, {
          vmId: vm.id,
          to: observed,
          source: 'conductor',
          operationId: context.operation.id,
        });
      }
      const now = observed ?? vm.observedState;
      const desired = now === 'STOPPED' ? 'STOPPED' : now === 'PAUSED' ? 'PAUSED' : 'RUNNING';
      await context.prisma.vm.updateMany({
        where: { id: vm.id, deletedAt: null },
        data: { desiredState: desired },
      });
    },
  };
}

import { agentv1 } from '@hangar/proto';
import { VM_STATES, type VmState } from '@hangar/vmm-core';

/** The proto enum of a state table entry (`RUNNING` → `VM_STATE_RUNNING`). */
export function vmStateToProto(state: VmState): agentv1.VmState {
  return agentv1.VmState[`VM_STATE_${state}`];
}

/** The state table entry of a proto enum value; undefined for UNSPECIFIED or an unknown number. */
export function vmStateFromProto(state: agentv1.VmState | undefined): VmState | undefined {
  if (state === undefined) return undefined;
  const name = agentv1.VmState[state];
  if (typeof name !== 'string' || !name.startsWith('VM_STATE_')) return undefined;
  const plain = name.slice('VM_STATE_'.length);
  return (VM_STATES as readonly string[]).includes(plain) ? (plain as VmState) : undefined;
}

import { agentv1, controlv1 } from '@hangar/proto';
import type { HostSample, OrphanInfo, VmEvent, VmSample, VmState } from '@hangar/vmm-core';
import type { InventoryVm, PoolSample } from './inventory.js';

/**
 * Mapping from what the inventory holds (vmm-core shapes) to the control.v1 report bodies the
 * session sends. Kept apart from the session so the mapping can be read (and reused) on its own.
 */

/** vmm-core's state name → the proto enum (`RUNNING` → `VM_STATE_RUNNING`). */
export function toProtoVmState(state: VmState | undefined): agentv1.VmState {
  if (state === undefined) return agentv1.VmState.VM_STATE_UNSPECIFIED;
  return agentv1.VmState[`VM_STATE_${state}`];
}

const EVENT_TYPES: Record<VmEvent['type'], controlv1.VmEventType> = {
  state: controlv1.VmEventType.VM_EVENT_TYPE_STATE,
  'device-deleted': controlv1.VmEventType.VM_EVENT_TYPE_DEVICE_DELETED,
  migration: controlv1.VmEventType.VM_EVENT_TYPE_MIGRATION,
  reset: controlv1.VmEventType.VM_EVENT_TYPE_RESET,
};

/** One VM's observed and desired state as a heartbeat line. */
export function toVmStatus(vm: InventoryVm): controlv1.VmStatus {
  return {
    vmId: vm.vmId,
    state: toProtoVmState(vm.state),
    qemuStatus: vm.qemuStatus,
    pid: vm.pid,
    desiredState: toProtoVmState(vm.desiredState),
    drift: vm.drift,
  };
}

/** A heartbeat carrying the whole inventory: a VM missing from it is gone from this host. */
export function toHeartbeat(
  snapshot: { vms: InventoryVm[]; orphans: OrphanInfo[] },
  sentAt: Date = new Date(),
): controlv1.Heartbeat {
  return {
    sentAt,
    inventory: snapshot.vms.map(toVmStatus),
    orphans: snapshot.orphans.map((o) => ({ path: o.path, pid: o.pid, reason: o.reason })),
  };
}

/** A vmm-core VM event as sent up the session. */
export function toProtoVmEvent(event: VmEvent): controlv1.VmEvent {
  return {
    vmId: event.vmId,
    type: EVENT_TYPES[event.type] ?? controlv1.VmEventType.VM_EVENT_TYPE_UNSPECIFIED,
    state: toProtoVmState(event.state),
    reason: event.reason,
    at: event.at,
    detail: event.detail === undefined ? undefined : jsonStruct(event.detail),
  };
}

/** One metrics sample of the host and its running VMs. */
export function toMetricsBatch(sample: {
  host: HostSample;
  vms: VmSample[];
  pools?: PoolSample[];
}): controlv1.MetricsBatch {
  const { host } = sample;
  return {
    host: {
      sampledAt: host.at,
      cpuCount: host.cpuCount,
      cpuSeconds: { ...host.cpuSeconds },
      memoryTotalBytes: host.memoryTotalBytes,
      memoryAvailableBytes: host.memoryAvailableBytes,
      load1: host.load1,
      load5: host.load5,
      load15: host.load15,
      pools: (sample.pools ?? []).map((p) => ({
        name: p.name,
        totalBytes: p.totalBytes,
        freeBytes: p.freeBytes,
      })),
    },
    vms: sample.vms.map((vm) => ({
      vmId: vm.vmId,
      sampledAt: vm.at,
      vcpuSeconds: [...vm.vcpuSeconds],
      cpuSecondsTotal: vm.cpuSecondsTotal,
      rssBytes: vm.rssBytes,
      block: vm.block.map((b) => ({ ...b })),
      nics: vm.nics.map((n) => ({ ...n })),
    })),
  };
}

/**
 * google.protobuf.Struct holds JSON only: a QMP event's data is JSON already, but a field set to
 * `undefined` (or a Date) must not break encoding, so round-trip through JSON.
 */
function jsonStruct(detail: Record<string, unknown>): Record<string, unknown> {
  try {
    return JSON.parse(JSON.stringify(detail)) as Record<string, unknown>;
  } catch {
    return { unserializable: true };
  }
}

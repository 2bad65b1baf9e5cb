import type { HostSample, OrphanInfo, VmEvent, VmSample, VmState } from '@hangar/vmm-core';

/** One VM as the agent reports it: what QEMU says, what the control plane wants, and whether they differ. */
export interface InventoryVm {
  vmId: string;
  state: VmState;
  qemuStatus: string | undefined;
  pid: number | undefined;
  /** Desired state persisted on this host; undefined for a VM the agent never received a wish for. */
  desiredState: VmState | undefined;
  /** Desired RUNNING but found STOPPED (or the reverse): reported, never flapped. */
  drift: boolean;
}

/** Usage of one storage pool, sent with each metrics batch. */
export interface PoolSample {
  name: string;
  totalBytes: number;
  freeBytes: number;
}

/**
 * What the control-plane session needs from the rest of the agent. The runtime implements it;
 * the session only reads it, so either side can be tested alone.
 */
export interface AgentInventory {
  snapshot(): Promise<{ vms: InventoryVm[]; orphans: OrphanInfo[] }>;
  onEvent(handler: (event: VmEvent) => void): () => void;
  /** One sample of the host and its running VMs; `pools` is optional (filled into HostSample.pools). */
  sampleMetrics(): Promise<{ host: HostSample; vms: VmSample[]; pools?: PoolSample[] }>;
}

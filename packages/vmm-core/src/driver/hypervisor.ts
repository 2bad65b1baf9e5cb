import type { DiskSpec, NicSpec, VmSpec, VmSpecInput } from '../spec/vm-spec.js';
import type { VmState } from '../state/vm-state.js';

export type Accelerator = 'kvm' | 'tcg' | 'fake';

/** What a driver can do on this host; the api's placement filters read it. */
export interface HypervisorCapabilities {
  driver: 'qemu' | 'fake';
  accelerator: Accelerator;
  acceleratorReason: string;
  qemuVersion: string;
  machineTypes: string[];
  defaultMachineType: string;
  cpuModels: string[];
  defaultCpuModel: string;
  features: {
    liveMigration: boolean;
    saveRestore: boolean;
    diskHotplug: boolean;
    nicHotplug: boolean;
    internalSnapshots: boolean;
    externalSnapshots: boolean;
  };
}

export interface StoragePool {
  path: string;
  /** Visible at the same path on every host of the cluster (NFS, CephFS): required for live migration. */
  shared: boolean;
}

export interface VmInfo {
  id: string;
  name: string;
  state: VmState;
  /** QEMU's own RunState when a process is up (`running`, `paused`, `inmigrate`, ...). */
  qemuStatus: string | undefined;
  pid: number | undefined;
  spec: VmSpec;
}

export interface VmEvent {
  vmId: string;
  /** `state` when the observed state changed; `device-deleted`, `migration` otherwise. */
  type: 'state' | 'device-deleted' | 'migration' | 'reset';
  state?: VmState;
  reason?: string;
  detail?: Record<string, unknown>;
  at: Date;
}

export interface OrphanInfo {
  /** The runtime folder or process that is not explained by any known VM. */
  path: string;
  pid: number | undefined;
  reason: string;
}

export interface AdoptResult {
  adopted: VmInfo[];
  orphans: OrphanInfo[];
}

export interface StopOptions {
  /** How long the guest gets to power off after ACPI powerdown before QEMU is told to quit. */
  timeoutMs?: number;
}

export interface MigrateOptions {
  downtimeLimitMs?: number;
  /** Bytes per second. */
  maxBandwidth?: number;
  autoConverge?: boolean;
  /** Total time allowed; the migration is cancelled (and the source keeps running) past it. */
  completionTimeoutMs?: number;
  /** Cancel when `remaining` has not dropped for this long and auto-converge cannot help. */
  stallTimeoutMs?: number;
  progressIntervalMs?: number;
}

export interface MigrationProgress {
  status: string;
  transferredBytes: number;
  remainingBytes: number;
  totalBytes: number;
  dirtyPagesRate: number;
  expectedDowntimeMs: number | undefined;
  cpuThrottlePercent: number | undefined;
  percent: number;
  elapsedMs: number;
}

export interface MigrationResult {
  downtimeMs: number;
  totalMs: number;
  transferredBytes: number;
  setupMs: number | undefined;
}

export interface PrepareIncomingOptions {
  /** Address the destination listens on (loopback in tests, the host's migration address in clusters). */
  listenHost: string;
  /** Fixed port, or 0 to let the driver pick a free one. */
  port?: number;
}

export interface SaveResult {
  file: string;
  bytes: number;
  totalMs: number;
}

export interface SnapshotInfo {
  name: string;
  disk: string;
  vmStateBytes: number;
  createdAt: Date;
}

export interface VmSample {
  vmId: string;
  at: Date;
  vcpuSeconds: number[];
  cpuSecondsTotal: number;
  rssBytes: number;
  block: Array<{ device: string; rdBytes: number; wrBytes: number; rdOps: number; wrOps: number }>;
  nics: Array<{
    name: string;
    ifname: string;
    rxBytes: number;
    txBytes: number;
    rxPackets: number;
    txPackets: number;
  }>;
}

export interface HostSample {
  at: Date;
  cpuCount: number;
  /** Cumulative seconds since boot, so consumers can take deltas. */
  cpuSeconds: { user: number; system: number; idle: number; iowait: number; steal: number };
  memoryTotalBytes: number;
  memoryAvailableBytes: number;
  load1: number;
  load5: number;
  load15: number;
}

/** The size of a VM, as {@link Hypervisor.resize} changes it. */
export interface VmSize {
  vcpus: number;
  memoryMiB: number;
}

/**
 * A hypervisor driver. `qemu` runs real guests; `fake` keeps VMs in memory for scale tests of
 * the layers above and passes the same contract tests. Every method that changes a VM validates
 * its current state with the shared state table and fails with a VmmError.
 */
export interface Hypervisor {
  readonly driver: 'qemu' | 'fake';
  capabilities(): Promise<HypervisorCapabilities>;

  /** Validates the spec, creates its runtime folder, disk overlays and cloud-init seed. Does not start it. */
  create(spec: VmSpecInput): Promise<VmInfo>;
  start(id: string): Promise<VmInfo>;
  /** ACPI powerdown, then QMP quit after the timeout, then SIGKILL. */
  stop(id: string, options?: StopOptions): Promise<VmInfo>;
  forceStop(id: string): Promise<VmInfo>;
  reboot(id: string): Promise<VmInfo>;
  pause(id: string): Promise<VmInfo>;
  resume(id: string): Promise<VmInfo>;
  /**
   * Changes the vCPUs and memory of a STOPPED VM's definition; its next start uses them. Disks,
   * seed, snapshots and console log are kept (INVALID_STATE unless STOPPED, INVALID_SPEC when the
   * size is out of range).
   */
  resize(id: string, size: VmSize): Promise<VmInfo>;
  /** Removes the runtime folder and every file vmm-core created for the VM. The VM must be stopped. */
  delete(id: string): Promise<void>;
  get(id: string): Promise<VmInfo>;
  list(): Promise<VmInfo[]>;
  /** Re-attaches to every VM found in the runtime folder after a restart; never kills anything. */
  adopt(): Promise<AdoptResult>;
  onEvent(handler: (event: VmEvent) => void): () => void;
  consoleLog(id: string, options?: { tailBytes?: number }): Promise<string>;

  prepareIncoming(spec: VmSpecInput, options: PrepareIncomingOptions): Promise<{ uri: string; vm: VmInfo }>;
  migrate(
    id: string,
    uri: string,
    options?: MigrateOptions,
    onProgress?: (p: MigrationProgress) => void,
  ): Promise<MigrationResult>;
  cancelMigration(id: string): Promise<void>;
  /** Destination side: waits until the incoming guest runs. */
  finishIncoming(id: string, options?: { timeoutMs?: number }): Promise<VmInfo>;
  /** Source side after success: the source QEMU quits and its runtime folder is cleaned, disks kept. */
  completeOutgoing(id: string): Promise<void>;
  /** Destination side after failure: kills the incoming QEMU and removes what prepareIncoming made. */
  abortIncoming(id: string): Promise<void>;

  save(id: string, file: string): Promise<SaveResult>;
  restore(id: string, file: string): Promise<VmInfo>;

  attachDisk(id: string, disk: DiskSpec): Promise<VmInfo>;
  detachDisk(id: string, name: string, options?: { timeoutMs?: number }): Promise<VmInfo>;
  attachNic(id: string, nic: NicSpec): Promise<VmInfo>;
  detachNic(id: string, name: string, options?: { timeoutMs?: number }): Promise<VmInfo>;

  createSnapshot(id: string, name: string): Promise<SnapshotInfo[]>;
  listSnapshots(id: string): Promise<SnapshotInfo[]>;
  revertSnapshot(id: string, name: string): Promise<void>;
  deleteSnapshot(id: string, name: string): Promise<void>;

  sampleVm(id: string): Promise<VmSample>;
  sampleHost(): Promise<HostSample>;

  /** Disconnects monitors. Guests keep running. */
  close(): Promise<void>;
}

import { agentv1 } from '@hangar/proto';
import type {
  DiskSpecInput,
  MigrateOptions,
  MigrationProgress,
  MigrationResult,
  NicSpecInput,
  OrphanInfo,
  PoolPath,
  SnapshotInfo,
  VmInfo,
  VmSpec,
  VmSpecInput,
  VmState,
} from '@hangar/vmm-core';
import { AgentError } from '../runtime/agent-error.js';

// Proto → vmm-core. Zero values and unset optionals mean "vmm-core's default" (agent.proto), so
// they map to `undefined` and vmm-core's schema applies its defaults and does the deep checks
// (INVALID_SPEC / PATH_ESCAPE). Here only what the wire format cannot express is caught: missing
// messages, unknown enum numbers, and unsigned fields that carry a negative number.

function invalid(message: string): AgentError {
  return new AgentError('INVALID_REQUEST', message);
}

/** A required sub-message. */
export function required<T>(value: T | undefined, field: string): T {
  if (value === undefined || value === null) throw invalid(`${field} is required`);
  return value;
}

/**
 * A uint32 field. Proto3 clients that put -1 into a uint32 send 4294967295: no real size or count
 * is ≥ 2^31 here, so such values are refused as negative instead of as "too large".
 */
function u32(value: number, field: string): number {
  if (value < 0 || value >= 2 ** 31)
    throw invalid(`${field} must not be negative (got ${value} on the wire)`);
  return value;
}

function optionalU32(value: number | undefined, field: string): number | undefined {
  return value === undefined ? undefined : u32(value, field);
}

/** uint64 fields decode to numbers; past 2^53 they are not byte counts this agent can mean. */
function optionalU64(value: number | undefined, field: string): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isSafeInteger(value) || value < 0) throw invalid(`${field} is out of range (got ${value})`);
  return value;
}

function poolPathFromProto(p: agentv1.PoolPath | undefined, field: string): PoolPath {
  const v = required(p, field);
  return { pool: v.pool, path: v.path };
}

function diskFormat(f: agentv1.DiskFormat, field: string): 'qcow2' | 'raw' | undefined {
  switch (f) {
    case agentv1.DiskFormat.DISK_FORMAT_UNSPECIFIED:
      return undefined;
    case agentv1.DiskFormat.DISK_FORMAT_QCOW2:
      return 'qcow2';
    case agentv1.DiskFormat.DISK_FORMAT_RAW:
      return 'raw';
    default:
      throw invalid(`${field} has an unknown value ${f}`);
  }
}

function cacheMode(c: agentv1.DiskCacheMode, field: string): DiskSpecInput['cache'] {
  switch (c) {
    case agentv1.DiskCacheMode.DISK_CACHE_MODE_UNSPECIFIED:
      return undefined;
    case agentv1.DiskCacheMode.DISK_CACHE_MODE_NONE:
      return 'none';
    case agentv1.DiskCacheMode.DISK_CACHE_MODE_WRITEBACK:
      return 'writeback';
    case agentv1.DiskCacheMode.DISK_CACHE_MODE_WRITETHROUGH:
      return 'writethrough';
    case agentv1.DiskCacheMode.DISK_CACHE_MODE_DIRECTSYNC:
      return 'directsync';
    case agentv1.DiskCacheMode.DISK_CACHE_MODE_UNSAFE:
      return 'unsafe';
    default:
      throw invalid(`${field} has an unknown value ${c}`);
  }
}

function nicModel(m: agentv1.NicModel, field: string): NicSpecInput['model'] {
  switch (m) {
    case agentv1.NicModel.NIC_MODEL_UNSPECIFIED:
      return undefined;
    case agentv1.NicModel.NIC_MODEL_VIRTIO_NET_PCI:
      return 'virtio-net-pci';
    case agentv1.NicModel.NIC_MODEL_E1000:
      return 'e1000';
    default:
      throw invalid(`${field} has an unknown value ${m}`);
  }
}

/** A disk of a spec or a hot-plug request. */
export function diskFromProto(d: agentv1.DiskSpec | undefined, field: string): DiskSpecInput {
  const disk = required(d, field);
  const out: DiskSpecInput = {
    name: disk.name,
    file: poolPathFromProto(disk.file, `${field}.file`),
    format: diskFormat(disk.format, `${field}.format`),
    cache: cacheMode(disk.cache, `${field}.cache`),
    readOnly: disk.readOnly,
  };
  if (disk.backing) {
    out.backing = {
      pool: disk.backing.pool,
      path: disk.backing.path,
      format: diskFormat(disk.backing.format, `${field}.backing.format`),
    };
  }
  const size = optionalU64(disk.sizeBytes, `${field}.size_bytes`);
  if (size !== undefined) out.sizeBytes = size;
  const bootIndex = optionalU32(disk.bootIndex, `${field}.boot_index`);
  if (bootIndex !== undefined) out.bootIndex = bootIndex;
  return out;
}

/**
 * A NIC of a spec or a hot-plug request. An empty MAC is derived from the VM id; a tap with an
 * empty ifname asks the agent to create the tap on its bridge.
 */
export function nicFromProto(n: agentv1.NicSpec | undefined, field: string): NicSpecInput {
  const nic = required(n, field);
  const backend = required(nic.backend, `${field}.backend (tap or user)`);
  return {
    name: nic.name,
    mac: nic.mac,
    backend: backend.$case === 'tap' ? { type: 'tap', ifname: backend.value.ifname } : { type: 'user' },
    model: nicModel(nic.model, `${field}.model`),
  };
}

/** A full VM spec (CreateVm, PrepareIncoming). */
export function vmSpecFromProto(s: agentv1.VmSpec | undefined, field = 'spec'): VmSpecInput {
  const spec = required(s, field);
  const boot = required(spec.boot, `${field}.boot (kernel or disk)`);
  const out: VmSpecInput = {
    id: spec.id,
    name: spec.name,
    vcpus: u32(spec.vcpus, `${field}.vcpus`),
    memoryMiB: u32(spec.memoryMib, `${field}.memory_mib`),
    boot:
      boot.$case === 'kernel'
        ? {
            type: 'kernel',
            kernel: poolPathFromProto(boot.value.kernel, `${field}.boot.kernel.kernel`),
            ...(boot.value.initrd
              ? { initrd: poolPathFromProto(boot.value.initrd, `${field}.boot.kernel.initrd`) }
              : {}),
            ...(boot.value.cmdline !== undefined ? { cmdline: boot.value.cmdline } : {}),
          }
        : { type: 'disk' },
    disks: spec.disks.map((d, i) => diskFromProto(d, `${field}.disks[${i}]`)),
    nics: spec.nics.map((n, i) => nicFromProto(n, `${field}.nics[${i}]`)),
    debugShell: spec.debugShell,
  };
  if (spec.machineType !== '') out.machineType = spec.machineType;
  if (spec.cpuModel !== '') out.cpuModel = spec.cpuModel;
  if (spec.cloudInit) {
    out.cloudInit = {
      hostname: spec.cloudInit.hostname,
      ...(spec.cloudInit.instanceId !== undefined ? { instanceId: spec.cloudInit.instanceId } : {}),
      ...(spec.cloudInit.userData !== undefined ? { userData: spec.cloudInit.userData } : {}),
      ...(spec.cloudInit.networkConfig !== undefined ? { networkConfig: spec.cloudInit.networkConfig } : {}),
    };
  }
  return out;
}

export function poolPathArg(p: agentv1.PoolPath | undefined, field: string): PoolPath {
  return poolPathFromProto(p, field);
}

export function migrateOptionsFromProto(o: agentv1.MigrateOptions | undefined): MigrateOptions {
  const out: MigrateOptions = {};
  if (!o) return out;
  const downtime = optionalU32(o.downtimeLimitMs, 'options.downtime_limit_ms');
  if (downtime !== undefined) out.downtimeLimitMs = downtime;
  const bandwidth = optionalU64(o.maxBandwidth, 'options.max_bandwidth');
  if (bandwidth !== undefined) out.maxBandwidth = bandwidth;
  if (o.autoConverge !== undefined) out.autoConverge = o.autoConverge;
  const completion = optionalU64(o.completionTimeoutMs, 'options.completion_timeout_ms');
  if (completion !== undefined) out.completionTimeoutMs = completion;
  const stall = optionalU64(o.stallTimeoutMs, 'options.stall_timeout_ms');
  if (stall !== undefined) out.stallTimeoutMs = stall;
  const interval = optionalU32(o.progressIntervalMs, 'options.progress_interval_ms');
  if (interval !== undefined) {
    if (interval < 10) throw invalid('options.progress_interval_ms must be at least 10');
    out.progressIntervalMs = interval;
  }
  return out;
}

/** Optional millisecond timeouts of requests. */
export function timeoutArg(value: number | undefined, field: string): number | undefined {
  return optionalU32(value, field);
}

// vmm-core → proto.

export function vmStateToProto(state: VmState): agentv1.VmState {
  return agentv1.VmState[`VM_STATE_${state}`];
}

const FORMAT_TO_PROTO = {
  qcow2: agentv1.DiskFormat.DISK_FORMAT_QCOW2,
  raw: agentv1.DiskFormat.DISK_FORMAT_RAW,
};
const CACHE_TO_PROTO = {
  none: agentv1.DiskCacheMode.DISK_CACHE_MODE_NONE,
  writeback: agentv1.DiskCacheMode.DISK_CACHE_MODE_WRITEBACK,
  writethrough: agentv1.DiskCacheMode.DISK_CACHE_MODE_WRITETHROUGH,
  directsync: agentv1.DiskCacheMode.DISK_CACHE_MODE_DIRECTSYNC,
  unsafe: agentv1.DiskCacheMode.DISK_CACHE_MODE_UNSAFE,
} as const;
const MODEL_TO_PROTO = {
  'virtio-net-pci': agentv1.NicModel.NIC_MODEL_VIRTIO_NET_PCI,
  e1000: agentv1.NicModel.NIC_MODEL_E1000,
} as const;

export function vmSpecToProto(spec: VmSpec): agentv1.VmSpec {
  return {
    id: spec.id,
    name: spec.name,
    vcpus: spec.vcpus,
    memoryMib: spec.memoryMiB,
    machineType: spec.machineType,
    cpuModel: spec.cpuModel,
    boot:
      spec.boot.type === 'kernel'
        ? {
            $case: 'kernel',
            value: {
              kernel: { ...spec.boot.kernel },
              initrd: spec.boot.initrd ? { ...spec.boot.initrd } : undefined,
              cmdline: spec.boot.cmdline,
            },
          }
        : { $case: 'disk', value: {} },
    disks: spec.disks.map((d) => ({
      name: d.name,
      file: { ...d.file },
      format: FORMAT_TO_PROTO[d.format],
      backing: d.backing
        ? { pool: d.backing.pool, path: d.backing.path, format: FORMAT_TO_PROTO[d.backing.format] }
        : undefined,
      sizeBytes: d.sizeBytes,
      cache: CACHE_TO_PROTO[d.cache],
      readOnly: d.readOnly,
      bootIndex: d.bootIndex,
    })),
    nics: spec.nics.map((n) => ({
      name: n.name,
      mac: n.mac,
      backend:
        n.backend.type === 'tap'
          ? { $case: 'tap', value: { ifname: n.backend.ifname } }
          : { $case: 'user', value: {} },
      model: MODEL_TO_PROTO[n.model],
    })),
    cloudInit: spec.cloudInit
      ? {
          hostname: spec.cloudInit.hostname,
          instanceId: spec.cloudInit.instanceId,
          userData: spec.cloudInit.userData,
          networkConfig: spec.cloudInit.networkConfig,
        }
      : undefined,
    debugShell: spec.debugShell,
  };
}

export function vmToProto(vm: VmInfo): agentv1.Vm {
  return {
    id: vm.id,
    name: vm.name,
    state: vmStateToProto(vm.state),
    qemuStatus: vm.qemuStatus,
    pid: vm.pid,
    spec: vmSpecToProto(vm.spec),
  };
}

export function orphanToProto(o: OrphanInfo): agentv1.OrphanInfo {
  return { path: o.path, pid: o.pid, reason: o.reason };
}

export function snapshotToProto(s: SnapshotInfo): agentv1.SnapshotInfo {
  return { name: s.name, disk: s.disk, vmStateBytes: s.vmStateBytes, createdAt: s.createdAt };
}

export function progressToProto(p: MigrationProgress): agentv1.MigrationProgress {
  return {
    status: p.status,
    transferredBytes: p.transferredBytes,
    remainingBytes: p.remainingBytes,
    totalBytes: p.totalBytes,
    dirtyPagesRate: p.dirtyPagesRate,
    expectedDowntimeMs: p.expectedDowntimeMs,
    cpuThrottlePercent: p.cpuThrottlePercent,
    percent: p.percent,
    elapsedMs: p.elapsedMs,
  };
}

export function migrationResultToProto(r: MigrationResult): agentv1.MigrationResult {
  return {
    downtimeMs: r.downtimeMs,
    totalMs: r.totalMs,
    transferredBytes: r.transferredBytes,
    setupMs: r.setupMs,
  };
}

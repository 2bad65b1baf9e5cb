import { VmmError } from '../errors.js';
import type { VmSpec } from '../spec/vm-spec.js';
import { type PoolMap, resolvePoolPath, vmRuntimePaths } from '../util/paths.js';
import type { HypervisorCapabilities } from './hypervisor.js';

/**
 * Checks every driver makes before it writes anything: each pool reference resolves inside its
 * pool (INVALID_SPEC / PATH_ESCAPE), and the CPU model and machine type are known to this host.
 * Returns the resolved boot files so a driver can check they exist.
 */
export function assertSpecFitsHost(
  spec: VmSpec,
  runtimeDir: string,
  pools: PoolMap,
  caps: HypervisorCapabilities,
): { kernel?: string; initrd?: string } {
  vmRuntimePaths(runtimeDir, spec.id);
  for (const d of spec.disks) {
    resolvePoolPath(pools, d.file);
    if (d.backing) resolvePoolPath(pools, d.backing);
  }
  if (!caps.cpuModels.includes(spec.cpuModel)) {
    throw new VmmError(
      'INVALID_SPEC',
      `CPU model ${spec.cpuModel} is not known to QEMU ${caps.qemuVersion} here`,
    );
  }
  if (!caps.machineTypes.includes(spec.machineType)) {
    throw new VmmError(
      'INVALID_SPEC',
      `machine type ${spec.machineType} is not known to QEMU ${caps.qemuVersion}`,
    );
  }
  if (spec.boot.type !== 'kernel') return {};
  return {
    kernel: resolvePoolPath(pools, spec.boot.kernel),
    ...(spec.boot.initrd ? { initrd: resolvePoolPath(pools, spec.boot.initrd) } : {}),
  };
}

/** Live migration over shared storage needs every disk on a shared pool and opened with cache=none. */
export function assertMigratable(spec: VmSpec, pools: PoolMap): void {
  for (const disk of spec.disks) {
    if (!pools[disk.file.pool]?.shared) {
      throw new VmmError(
        'MIGRATION_REFUSED',
        `disk ${disk.name} is on pool "${disk.file.pool}", which is not shared storage; live migration needs every disk on a shared pool`,
        { details: { disk: disk.name, pool: disk.file.pool, reason: 'DISK_NOT_SHARED' } },
      );
    }
    if (disk.cache !== 'none') {
      throw new VmmError(
        'MIGRATION_REFUSED',
        `disk ${disk.name} uses cache=${disk.cache}; live migration over shared storage needs cache=none`,
        { details: { disk: disk.name, cache: disk.cache, reason: 'DISK_CACHE_NOT_NONE' } },
      );
    }
  }
}

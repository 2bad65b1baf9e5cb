import { agentv1 } from '@hangar/proto';
import type { Host, Image, Vm } from '../../gen/prisma/client.js';

const GIB = 1024 * 1024 * 1024;

/** The pool names a host reported on Register (`hosts.pools` JSON). */
export function hostPoolNames(host: Pick<Host, 'pools'>): string[] {
  return Array.isArray(host.pools)
    ? host.pools.flatMap((p) =>
        p !== null && typeof p === 'object' && typeof (p as { name?: unknown }).name === 'string'
          ? [(p as { name: string }).name]
          : [],
      )
    : [];
}

/**
 * Where a VM's own disks go on `host`: the first of `preferred` the host has (shared storage
 * first, so the VM can live-migrate), else the image's pool.
 */
export function diskPoolFor(
  host: Pick<Host, 'pools'>,
  image: Pick<Image, 'pool'>,
  preferred: readonly string[],
): string {
  const pools = new Set(hostPoolNames(host));
  return preferred.find((p) => pools.has(p)) ?? image.pool;
}

/** A guest host name from a VM name (RFC 1123: no `_`, at most 63 characters). */
export function guestHostname(name: string): string {
  const cleaned = name
    .replace(/[^A-Za-z0-9.-]/g, '-')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 63)
    .replace(/[^A-Za-z0-9]+$/, '');
  return cleaned || 'vm';
}

/**
 * The agent's VmSpec of a VM: its flavor's size (copied onto the VM row), the image's direct
 * kernel boot or disk boot, one disk — a qcow2 overlay over the image's disk, in the VM's own
 * folder of `diskPool` — and a NoCloud seed with the host name, the VM id as instance id and the
 * user-data. The same rows always give the same spec, so a retried CreateVm matches the first.
 */
export function buildVmSpec(
  vm: Pick<Vm, 'id' | 'name' | 'vcpus' | 'memoryMib' | 'diskGib' | 'cpuModel' | 'machineType' | 'userData'>,
  image: Pick<Image, 'pool' | 'kernelPath' | 'initrdPath' | 'cmdline' | 'diskPath' | 'format'>,
  diskPool: string,
): agentv1.VmSpec {
  const kernelBoot = image.kernelPath !== null && image.kernelPath !== '';
  const disks: agentv1.DiskSpec[] = [];
  if (image.diskPath) {
    disks.push({
      name: 'root',
      file: { pool: diskPool, path: `vms/${vm.id}/root.qcow2` },
      format: agentv1.DiskFormat.DISK_FORMAT_QCOW2,
      backing: {
        pool: image.pool,
        path: image.diskPath,
        format:
          image.format === 'raw' ? agentv1.DiskFormat.DISK_FORMAT_RAW : agentv1.DiskFormat.DISK_FORMAT_QCOW2,
      },
      sizeBytes: vm.diskGib > 0 ? vm.diskGib * GIB : undefined,
      cache: agentv1.DiskCacheMode.DISK_CACHE_MODE_NONE,
      readOnly: false,
      bootIndex: kernelBoot ? undefined : 0,
    });
  }
  return {
    id: vm.id,
    name: vm.name,
    vcpus: vm.vcpus,
    memoryMib: vm.memoryMib,
    machineType: vm.machineType,
    cpuModel: vm.cpuModel,
    boot: kernelBoot
      ? {
          $case: 'kernel',
          value: {
            kernel: { pool: image.pool, path: image.kernelPath ?? '' },
            initrd: image.initrdPath ? { pool: image.pool, path: image.initrdPath } : undefined,
            cmdline: image.cmdline ?? undefined,
          },
        }
      : { $case: 'disk', value: {} },
    disks,
    nics: [],
    cloudInit: {
      hostname: guestHostname(vm.name),
      instanceId: vm.id,
      userData: vm.userData ?? undefined,
      networkConfig: undefined,
    },
    debugShell: false,
  };
}

import type { BlockdevOptions, DeviceAddOptions, NetdevAddOptions } from '../../qmp/commands.js';
import type { DiskCacheMode, DiskSpec, NicSpec, VmSpec } from '../../spec/vm-spec.js';
import { type PoolMap, resolvePoolPath, type VmRuntimePaths } from '../../util/paths.js';

export interface ArgvOptions {
  binary: string;
  accelerator: 'kvm' | 'tcg';
  paths: VmRuntimePaths;
  pools: PoolMap;
  /** Present when a cloud-init seed image was built for the VM. */
  seed: boolean;
  /** Start waiting for an incoming migration (`-incoming defer`). */
  incoming: boolean;
}

interface CacheFlags {
  direct: boolean;
  noFlush: boolean;
  writeCache: 'on' | 'off';
}

/** QEMU's legacy `cache=` modes expressed as -blockdev / -device properties (see qemu-options.hx). */
const CACHE_FLAGS: Record<DiskCacheMode, CacheFlags> = {
  none: { direct: true, noFlush: false, writeCache: 'on' },
  writeback: { direct: false, noFlush: false, writeCache: 'on' },
  writethrough: { direct: false, noFlush: false, writeCache: 'off' },
  directsync: { direct: true, noFlush: false, writeCache: 'off' },
  unsafe: { direct: false, noFlush: true, writeCache: 'on' },
};

/** The two -blockdev nodes and the -device of one disk, as QMP/JSON objects (reused by hot-plug). */
export function diskBackendObjects(
  disk: DiskSpec,
  pools: PoolMap,
): { file: BlockdevOptions; format: BlockdevOptions; device: DeviceAddOptions } {
  const flags = CACHE_FLAGS[disk.cache];
  const filename = resolvePoolPath(pools, disk.file);
  const file: BlockdevOptions = {
    driver: 'file',
    filename,
    'node-name': `file-${disk.name}`,
    cache: { direct: flags.direct, 'no-flush': flags.noFlush },
    'auto-read-only': true,
    discard: 'unmap',
  };
  const format: BlockdevOptions = {
    driver: disk.format,
    file: `file-${disk.name}`,
    'node-name': `disk-${disk.name}`,
    'read-only': disk.readOnly,
    cache: { direct: flags.direct, 'no-flush': flags.noFlush },
  };
  const device: DeviceAddOptions = {
    driver: 'virtio-blk-pci',
    id: disk.name,
    drive: `disk-${disk.name}`,
    'write-cache': flags.writeCache,
  };
  if (disk.bootIndex !== undefined) device.bootindex = disk.bootIndex;
  return { file, format, device };
}

export function nicBackendObjects(nic: NicSpec): { netdev: NetdevAddOptions; device: DeviceAddOptions } {
  const netdev: NetdevAddOptions =
    nic.backend.type === 'tap'
      ? { type: 'tap', id: `net-${nic.name}`, ifname: nic.backend.ifname, script: 'no', downscript: 'no' }
      : { type: 'user', id: `net-${nic.name}`, restrict: true };
  const device = { driver: nic.model, id: nic.name, netdev: `net-${nic.name}`, mac: nic.mac };
  return { netdev, device };
}

/**
 * Builds QEMU's argv as an array (never a shell string). Devices and block nodes use QEMU's JSON
 * syntax so file names need no comma escaping.
 */
export function buildQemuArgv(spec: VmSpec, opts: ArgvOptions): string[] {
  const { paths } = opts;
  const argv: string[] = [
    opts.binary,
    '-name',
    `guest=${spec.name},debug-threads=on`,
    '-machine',
    spec.machineType,
    '-accel',
    opts.accelerator,
    '-cpu',
    spec.cpuModel,
    '-smp',
    String(spec.vcpus),
    '-m',
    String(spec.memoryMiB),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-rtc',
    'base=utc',
    '-daemonize',
    '-pidfile',
    paths.pidfile,
    '-qmp',
    `unix:${paths.qmpSocket},server=on,wait=off`,
    '-chardev',
    `socket,id=console0,path=${paths.consoleSocket},server=on,wait=off,logfile=${paths.serialLog},logappend=on`,
    '-serial',
    'chardev:console0',
  ];
  if (spec.debugShell) {
    argv.push(
      '-chardev',
      `socket,id=shell0,path=${paths.shellSocket},server=on,wait=off`,
      '-serial',
      'chardev:shell0',
    );
  }
  if (spec.boot.type === 'kernel') {
    argv.push('-kernel', resolvePoolPath(opts.pools, spec.boot.kernel));
    if (spec.boot.initrd) argv.push('-initrd', resolvePoolPath(opts.pools, spec.boot.initrd));
    argv.push('-append', spec.boot.cmdline);
  }
  for (const disk of spec.disks) {
    const { file, format, device } = diskBackendObjects(disk, opts.pools);
    argv.push(
      '-blockdev',
      JSON.stringify(file),
      '-blockdev',
      JSON.stringify(format),
      '-device',
      JSON.stringify(device),
    );
  }
  if (opts.seed) {
    argv.push(
      '-blockdev',
      JSON.stringify({ driver: 'file', filename: paths.seed, 'node-name': 'file-seed', 'read-only': true }),
      '-blockdev',
      JSON.stringify({ driver: 'raw', file: 'file-seed', 'node-name': 'disk-seed', 'read-only': true }),
      '-device',
      JSON.stringify({ driver: 'virtio-blk-pci', id: 'seed', drive: 'disk-seed' }),
    );
  }
  for (const nic of spec.nics) {
    const { netdev, device } = nicBackendObjects(nic);
    // -netdev takes JSON only from QEMU 7.1 on; interface names are plain, so keyval is safe here.
    const keyval = Object.entries(netdev)
      .map(([k, v]) => (k === 'type' ? String(v) : `${k}=${v === true ? 'on' : String(v)}`))
      .join(',');
    argv.push('-netdev', keyval, '-device', JSON.stringify(device));
  }
  if (opts.incoming) argv.push('-incoming', 'defer');
  return argv;
}

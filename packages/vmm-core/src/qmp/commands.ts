import { z } from 'zod';
import { VmmError } from '../errors.js';
import { QmpDisconnectedError, QmpProtocolError, QmpTimeoutError } from './errors.js';
import type { QmpCallOptions, QmpMonitor } from './monitor.js';
import type { QemuVersion, QmpEvent } from './protocol.js';

// Enumerations below list QEMU 7.2's values for autocompletion but accept any string, so a newer
// QEMU adding a value does not turn a working query into a protocol error.
type OpenString = string & Record<never, never>;

/** QEMU's run state (`RunState` in the QMP schema). */
export type RunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo'
  | OpenString;

/** Result of `query-status`. */
export interface StatusInfo {
  status: RunState;
  /** True only while vCPUs execute; false in `prelaunch`, `paused`, `inmigrate`, `postmigrate`. */
  running: boolean;
  /** Deprecated by QEMU; absent in newer versions. */
  singlestep?: boolean;
}

/** Result of `query-version`. */
export interface VersionInfo {
  qemu: QemuVersion;
  /** Distribution build string, e.g. `Debian 1:7.2+dfsg-7`. */
  package: string;
}

/** Result of `query-kvm`: `present` is compiled-in support, `enabled` whether this VM uses it. */
export interface KvmInfo {
  enabled: boolean;
  present: boolean;
}

/** One vCPU from `query-cpus-fast`. */
export interface CpuInfoFast {
  cpuIndex: number;
  /** Host thread running this vCPU (for pinning and per-vCPU CPU accounting). */
  threadId: number;
  qomPath: string;
  target: string;
  props?: CpuInstanceProperties;
}

/** Topology position of a vCPU. */
export interface CpuInstanceProperties {
  nodeId?: number;
  socketId?: number;
  dieId?: number;
  clusterId?: number;
  coreId?: number;
  threadId?: number;
}

/** One vCPU slot from `query-hotpluggable-cpus`; `qomPath` is absent while the slot is empty. */
export interface HotpluggableCpu {
  type: string;
  vcpusCount: number;
  props: CpuInstanceProperties;
  qomPath?: string;
}

/** One block backend from `query-block`. */
export interface BlockInfo {
  /** Legacy drive name; empty for `-blockdev` / `blockdev-add` backends. */
  device: string;
  /** QOM path or id of the attached guest device. */
  qdev?: string;
  type: string;
  removable: boolean;
  locked: boolean;
  trayOpen?: boolean;
  ioStatus?: 'ok' | 'failed' | 'nospace' | OpenString;
  /** The medium, absent for an empty drive. */
  inserted?: BlockDeviceInfo;
}

/** The medium of a block backend. */
export interface BlockDeviceInfo {
  file: string;
  nodeName?: string;
  readOnly: boolean;
  driver: string;
  backingFile?: string;
  backingFileDepth: number;
  encrypted: boolean;
  detectZeroes: string;
  cache: { writeback: boolean; direct: boolean; noFlush: boolean };
  image: BlockImageInfo;
  /** I/O limits; 0 means unlimited. */
  bps: number;
  bpsRd: number;
  bpsWr: number;
  iops: number;
  iopsRd: number;
  iopsWr: number;
  writeThreshold: number;
}

/** An image file as QEMU sees it. */
export interface BlockImageInfo {
  filename: string;
  format: string;
  virtualSize: number;
  actualSize?: number;
  clusterSize?: number;
  dirtyFlag?: boolean;
  encrypted?: boolean;
  compressed?: boolean;
  backingFilename?: string;
  fullBackingFilename?: string;
  backingFilenameFormat?: string;
}

/** I/O counters of one block backend or node from `query-blockstats`. */
export interface BlockStats {
  device?: string;
  qdev?: string;
  nodeName?: string;
  stats: BlockDeviceStats;
}

/** Cumulative I/O counters since the backend was opened. */
export interface BlockDeviceStats {
  rdBytes: number;
  wrBytes: number;
  unmapBytes: number;
  rdOperations: number;
  wrOperations: number;
  flushOperations: number;
  unmapOperations: number;
  rdTotalTimeNs: number;
  wrTotalTimeNs: number;
  flushTotalTimeNs: number;
  unmapTotalTimeNs: number;
  wrHighestOffset: number;
  rdMerged: number;
  wrMerged: number;
  unmapMerged: number;
  /** Time since the last I/O; absent before the first. */
  idleTimeNs?: number;
  failedRdOperations: number;
  failedWrOperations: number;
  failedFlushOperations: number;
  failedUnmapOperations: number;
  invalidRdOperations: number;
  invalidWrOperations: number;
  invalidFlushOperations: number;
  invalidUnmapOperations: number;
  accountInvalid: boolean;
  accountFailed: boolean;
}

/** One PCI bus from `query-pci`. */
export interface PciBusInfo {
  bus: number;
  devices: PciDeviceInfo[];
}

/** One PCI function. */
export interface PciDeviceInfo {
  bus: number;
  slot: number;
  function: number;
  classInfo: { class: number; desc?: string };
  id: { vendor: number; device: number; subsystem?: number; subsystemVendor?: number };
  irq?: number;
  irqPin: number;
  /** The `id` given at `device_add`, or empty. */
  qdevId: string;
  regions: {
    bar: number;
    type: string;
    address: number;
    size: number;
    prefetch?: boolean;
    mem64?: boolean;
  }[];
  /** For a bridge: the bus behind it and its devices. */
  pciBridge?: { bus: { number: number; secondary: number; subordinate: number }; devices: PciDeviceInfo[] };
}

/** A machine type from `query-machines`. */
export interface MachineInfo {
  name: string;
  alias?: string;
  isDefault: boolean;
  cpuMax: number;
  hotpluggableCpus: boolean;
  numaMemSupported: boolean;
  deprecated: boolean;
  defaultCpuType?: string;
  defaultRamId?: string;
}

/** A CPU model from `query-cpu-definitions`. */
export interface CpuDefinitionInfo {
  name: string;
  /** Whether the model is safe to live-migrate between hosts that report it usable. */
  migrationSafe?: boolean;
  static: boolean;
  /** Features the host lacks for this model; empty means usable here. */
  unavailableFeatures?: string[];
  typename: string;
  aliasOf?: string;
  deprecated: boolean;
}

/**
 * Options for `blockdev-add`, in QEMU's own spelling (`node-name`, `read-only`): the schema is a
 * union over ~40 drivers with nested references, so it is passed through verbatim rather than
 * re-spelled. Common members are typed; driver-specific ones (`filename`, `size`, …) go through
 * the index signature.
 */
export interface BlockdevOptions {
  driver: string;
  'node-name': string;
  'read-only'?: boolean;
  'auto-read-only'?: boolean;
  'force-share'?: boolean;
  discard?: 'ignore' | 'unmap';
  cache?: { direct?: boolean; 'no-flush'?: boolean };
  'detect-zeroes'?: 'off' | 'on' | 'unmap';
  /** A node name, or nested options of the protocol layer. */
  file?: string | BlockdevNestedOptions;
  backing?: string | BlockdevNestedOptions | null;
  [option: string]: unknown;
}

/** Nested `blockdev-add` options, whose node name QEMU may generate. */
export type BlockdevNestedOptions = Omit<BlockdevOptions, 'node-name'> & { 'node-name'?: string };

/** Options for `device_add`, in QEMU's spelling; properties are driver-specific (`drive`, `netdev`, `mac`, `addr`). */
export interface DeviceAddOptions {
  driver: string;
  /** Required here so the device can be found and removed again. */
  id: string;
  bus?: string;
  [property: string]: unknown;
}

/** Options for `netdev_add`, in QEMU's spelling (`ifname`, `script`, `vhost`). */
export interface NetdevAddOptions {
  type: 'tap' | 'user' | 'bridge' | 'socket' | 'stream' | 'dgram' | 'vhost-user' | 'hubport' | OpenString;
  id: string;
  [option: string]: unknown;
}

/** Options for `blockdev-snapshot-sync`: snapshot the node `nodeName` (or legacy drive `device`). */
export type BlockdevSnapshotSyncOptions = (
  | { nodeName: string; device?: never }
  | { device: string; nodeName?: never }
) & {
  /** The overlay to create (or, with mode `existing`, to open). */
  snapshotFile: string;
  /** Node name for the new overlay; choose one, or QEMU generates an opaque one. */
  snapshotNodeName?: string;
  /** Overlay format; QEMU's default is qcow2. */
  format?: string;
  mode?: 'existing' | 'absolute-paths';
};

/** Migration capabilities of QEMU 7.2, for autocompletion. */
export type MigrationCapability =
  | 'xbzrle'
  | 'auto-converge'
  | 'zero-blocks'
  | 'compress'
  | 'events'
  | 'postcopy-ram'
  | 'release-ram'
  | 'return-path'
  | 'pause-before-switchover'
  | 'multifd'
  | 'dirty-bitmaps'
  | 'postcopy-blocktime'
  | 'late-block-activate'
  | 'x-ignore-shared'
  | 'validate-uuid'
  | 'background-snapshot'
  | 'zero-copy-send'
  | 'postcopy-preempt'
  | OpenString;

/** Tunable migration parameters (units in the names or docs; QEMU's names in `MIGRATION_PARAMETER_NAMES`). */
export interface MigrationParameters {
  /** Longest acceptable pause of the guest at switchover, in ms. */
  downtimeLimitMs?: number;
  /** Bandwidth cap in bytes per second. */
  maxBandwidth?: number;
  /** Throttle percentage applied first by auto-converge. */
  cpuThrottleInitial?: number;
  /** Percentage added per round while the guest still dirties memory too fast. */
  cpuThrottleIncrement?: number;
  cpuThrottleTailslow?: boolean;
  maxCpuThrottle?: number;
  /** Percentage of dirty pages over transferred pages per round that triggers throttling. */
  throttleTriggerThreshold?: number;
  multifdChannels?: number;
  multifdCompression?: 'none' | 'zlib' | 'zstd';
  /** In bytes. */
  xbzrleCacheSize?: number;
  /** Bytes per second during postcopy; 0 is unlimited. */
  maxPostcopyBandwidth?: number;
  announceInitialMs?: number;
  announceMaxMs?: number;
  announceRounds?: number;
  announceStepMs?: number;
  compressLevel?: number;
  compressThreads?: number;
  decompressThreads?: number;
  tlsCreds?: string;
  tlsHostname?: string;
  tlsAuthz?: string;
}

/** QEMU's name for each {@link MigrationParameters} member. */
export const MIGRATION_PARAMETER_NAMES = Object.freeze({
  downtimeLimitMs: 'downtime-limit',
  maxBandwidth: 'max-bandwidth',
  cpuThrottleInitial: 'cpu-throttle-initial',
  cpuThrottleIncrement: 'cpu-throttle-increment',
  cpuThrottleTailslow: 'cpu-throttle-tailslow',
  maxCpuThrottle: 'max-cpu-throttle',
  throttleTriggerThreshold: 'throttle-trigger-threshold',
  multifdChannels: 'multifd-channels',
  multifdCompression: 'multifd-compression',
  xbzrleCacheSize: 'xbzrle-cache-size',
  maxPostcopyBandwidth: 'max-postcopy-bandwidth',
  announceInitialMs: 'announce-initial',
  announceMaxMs: 'announce-max',
  announceRounds: 'announce-rounds',
  announceStepMs: 'announce-step',
  compressLevel: 'compress-level',
  compressThreads: 'compress-threads',
  decompressThreads: 'decompress-threads',
  tlsCreds: 'tls-creds',
  tlsHostname: 'tls-hostname',
  tlsAuthz: 'tls-authz',
} as const satisfies Record<keyof Required<MigrationParameters>, string>);

/** Migration state (`MigrationStatus`); `none` when no migration has run. */
export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover'
  | 'completed'
  | 'failed'
  | 'colo'
  | 'pre-switchover'
  | 'device'
  | 'wait-unplug'
  | OpenString;

/** RAM (or legacy block) transfer counters of a migration. Sizes in bytes. */
export interface MigrationStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  skipped?: number;
  normal: number;
  normalBytes: number;
  /** Pages dirtied per second by the guest; compare with the transfer rate to predict convergence. */
  dirtyPagesRate: number;
  /** Transfer rate in megabits per second. */
  mbps: number;
  /** Passes over dirty memory so far. */
  dirtySyncCount: number;
  postcopyRequests?: number;
  pageSize?: number;
  multifdBytes?: number;
  pagesPerSecond?: number;
  precopyBytes?: number;
  downtimeBytes?: number;
  postcopyBytes?: number;
}

/** XBZRLE cache statistics of a migration. */
export interface XbzrleCacheStats {
  cacheSize: number;
  bytes: number;
  pages: number;
  cacheMiss: number;
  cacheMissRate: number;
  encodingRate?: number;
  overflow: number;
}

/** Result of `query-migrate`, on either side of a migration. */
export interface MigrationInfo {
  status: MigrationStatus;
  ram?: MigrationStats;
  disk?: MigrationStats;
  xbzrleCache?: XbzrleCacheStats;
  /** Since the start; the final total once completed. */
  totalTimeMs?: number;
  /** QEMU's estimate while active. */
  expectedDowntimeMs?: number;
  /** Actual guest pause, once completed. */
  downtimeMs?: number;
  setupTimeMs?: number;
  /** Current auto-converge throttle. */
  cpuThrottlePercentage?: number;
  /** Why the migration failed, when it did. */
  errorDesc?: string;
  /** Why a migration could not start now (e.g. a device that blocks migration). */
  blockedReasons?: string[];
  /**
   * On the destination after `migrate-incoming`: where it listens, with the port QEMU chose when
   * the URI asked for port 0.
   */
  socketAddress?: MigrationSocketAddress[];
}

/**
 * A socket address from `query-migrate`, flattened over QEMU's `SocketAddress` union: `inet` has
 * `host` and `port`, `unix` has `path`, `vsock` has `cid` and `port`, `fd` has `str`. Ports are
 * strings, as in QEMU (they may be service names).
 */
export interface MigrationSocketAddress {
  type: 'inet' | 'unix' | 'vsock' | 'fd' | OpenString;
  host?: string;
  port?: string;
  path?: string;
  cid?: string;
  str?: string;
}

/** Options for {@link QmpCommands.deviceDel}. */
export interface DeviceDelOptions {
  /**
   * How long to wait until the device is gone (`DEVICE_DELETED`), command reply included. PCI
   * unplug needs the guest's cooperation (ACPI or PCIe native hotplug), so this can take seconds;
   * a guest that is not running never completes it. Default 30 s.
   */
  timeoutMs?: number;
}

/** Options for {@link QmpCommands.migrate}. */
export interface QmpMigrateOptions extends QmpCallOptions {
  /** Resume a paused postcopy migration instead of starting a new one. */
  resume?: boolean;
}

const DEFAULT_DEVICE_DEL_TIMEOUT_MS = 30_000;

/**
 * One typed method per QMP command used by Hangar. Arguments and results are in camelCase and
 * mapped to QEMU's spelling here; replies are validated, and one of an unexpected shape rejects with
 * {@link QmpProtocolError} (the connection stays usable). Every method takes `{ timeoutMs }` to
 * override the monitor's per-command timeout. Schema: QEMU 7.2 (`query-qmp-schema`).
 */
export class QmpCommands {
  /** The monitor, for commands without a typed method. */
  readonly monitor: QmpMonitor;

  constructor(monitor: QmpMonitor) {
    this.monitor = monitor;
  }

  /** `query-status`: the run state, as QEMU sees it (the source of truth, not our database). */
  async queryStatus(options?: QmpCallOptions): Promise<StatusInfo> {
    return this.query('query-status', undefined, statusInfoSchema, options);
  }

  /** `query-version`. */
  async queryVersion(options?: QmpCallOptions): Promise<VersionInfo> {
    return this.query('query-version', undefined, versionInfoSchema, options);
  }

  /** `query-kvm`. */
  async queryKvm(options?: QmpCallOptions): Promise<KvmInfo> {
    return this.query('query-kvm', undefined, kvmInfoSchema, options);
  }

  /** `query-name`: the `-name` given at launch, if any. */
  async queryName(options?: QmpCallOptions): Promise<string | undefined> {
    const info = await this.query('query-name', undefined, nameInfoSchema, options);
    return info.name;
  }

  /** `stop`: pause all vCPUs (state `paused`; QEMU emits `STOP`). */
  async stop(options?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('stop', undefined, options);
  }

  /** `cont`: resume vCPUs, also from `prelaunch` (QEMU emits `RESUME`). */
  async cont(options?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('cont', undefined, options);
  }

  /** `system_powerdown`: ask the guest to shut down (ACPI power button); it may ignore it. */
  async systemPowerdown(options?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('system_powerdown', undefined, options);
  }

  /** `system_reset`: hard reset, like the reset button. */
  async systemReset(options?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('system_reset', undefined, options);
  }

  /**
   * `quit`: QEMU exits at once, without a guest shutdown. Resolves once QEMU has closed the
   * connection; losing the connection before the reply counts as success, as QEMU may exit before
   * the reply is flushed. Watch the process itself to know when it has exited.
   */
  async quit(options?: QmpCallOptions): Promise<void> {
    const timeoutMs = options?.timeoutMs ?? this.monitor.timeoutFor('quit');
    const startedAt = Date.now();
    try {
      await this.monitor.execute('quit', undefined, { timeoutMs });
    } catch (err) {
      if (
        err instanceof QmpDisconnectedError &&
        (err.reason === 'remote-closed' || err.reason === 'socket-error')
      ) {
        return;
      }
      throw err;
    }
    const remaining = Math.max(0, timeoutMs - (Date.now() - startedAt));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new QmpTimeoutError(
              `QEMU acknowledged 'quit' but kept the QMP connection open for ${timeoutMs} ms`,
              {
                command: 'quit',
                timeoutMs,
              },
            ),
          ),
        remaining,
      );
    });
    try {
      await Promise.race([this.monitor.disconnected, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** `query-cpus-fast`: vCPUs and their host thread ids, without interrupting the guest. */
  async queryCpusFast(options?: QmpCallOptions): Promise<CpuInfoFast[]> {
    return this.query('query-cpus-fast', undefined, z.array(cpuInfoFastSchema), options);
  }

  /** `query-hotpluggable-cpus`: vCPU slots, filled or not (machine types with CPU hotplug only). */
  async queryHotpluggableCpus(options?: QmpCallOptions): Promise<HotpluggableCpu[]> {
    return this.query('query-hotpluggable-cpus', undefined, z.array(hotpluggableCpuSchema), options);
  }

  /** `query-block`: block backends attached to guest devices. */
  async queryBlock(options?: QmpCallOptions): Promise<BlockInfo[]> {
    return this.query('query-block', undefined, z.array(blockInfoSchema), options);
  }

  /** `query-blockstats`; with `queryNodes`, also nodes not attached to a device (by node name). */
  async queryBlockstats(options?: QmpCallOptions & { queryNodes?: boolean }): Promise<BlockStats[]> {
    const args = options?.queryNodes === undefined ? undefined : { 'query-nodes': options.queryNodes };
    return this.query('query-blockstats', args, z.array(blockStatsSchema), options);
  }

  /** `query-pci`: buses and functions, including hot-plugged devices. */
  async queryPci(options?: QmpCallOptions): Promise<PciBusInfo[]> {
    const buses = await this.query('query-pci', undefined, z.array(rawPciBusSchema), options);
    return buses.map((bus) => ({ bus: bus.bus, devices: bus.devices.map(toPciDeviceInfo) }));
  }

  /** `query-machines`: machine types this binary offers. */
  async queryMachines(options?: QmpCallOptions): Promise<MachineInfo[]> {
    return this.query('query-machines', undefined, z.array(machineInfoSchema), options);
  }

  /** `query-cpu-definitions`: CPU models, with what is unavailable on this host and accelerator. */
  async queryCpuDefinitions(options?: QmpCallOptions): Promise<CpuDefinitionInfo[]> {
    return this.query('query-cpu-definitions', undefined, z.array(cpuDefinitionSchema), options);
  }

  /** `blockdev-add`: open a block node graph; options in QEMU's spelling. */
  async blockdevAdd(options: BlockdevOptions, callOptions?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('blockdev-add', { ...options }, callOptions);
  }

  /** `blockdev-del`: close a node added with `blockdev-add`; fails while a device still uses it. */
  async blockdevDel(nodeName: string, options?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('blockdev-del', { 'node-name': nodeName }, options);
  }

  /**
   * `blockdev-snapshot-sync`: create an overlay on top of a node and switch the guest to it, the
   * original becoming its read-only backing file.
   */
  async blockdevSnapshotSync(
    options: BlockdevSnapshotSyncOptions,
    callOptions?: QmpCallOptions,
  ): Promise<void> {
    const args: Record<string, unknown> = { 'snapshot-file': options.snapshotFile };
    if (options.nodeName !== undefined) args['node-name'] = options.nodeName;
    if (options.device !== undefined) args.device = options.device;
    if (options.snapshotNodeName !== undefined) args['snapshot-node-name'] = options.snapshotNodeName;
    if (options.format !== undefined) args.format = options.format;
    if (options.mode !== undefined) args.mode = options.mode;
    await this.monitor.execute('blockdev-snapshot-sync', args, callOptions);
  }

  /** `device_add`: hot-plug a device (or add it before the guest starts, under `-S`). */
  async deviceAdd(options: DeviceAddOptions, callOptions?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('device_add', { ...options }, callOptions);
  }

  /**
   * `device_del`, resolving only once QEMU reports `DEVICE_DELETED` for `id`: the command merely
   * *requests* the unplug, and the backend (disk node, netdev) stays in use until the device is
   * really gone. Rejects with `DEVICE_ERROR` when the guest refuses (`DEVICE_UNPLUG_GUEST_ERROR`),
   * with {@link QmpCommandError} when QEMU rejects the request (e.g. `DeviceNotFound`) and with
   * {@link QmpTimeoutError} when the device is not gone within `timeoutMs`.
   */
  async deviceDel(id: string, options?: DeviceDelOptions): Promise<void> {
    const timeoutMs = options?.timeoutMs ?? DEFAULT_DEVICE_DEL_TIMEOUT_MS;
    const forThisDevice = (event: QmpEvent): boolean => event.data.device === id;
    // Both waits start before the command: QEMU can emit the event before its reply.
    const deleted = this.monitor.expectEvent('DEVICE_DELETED', {
      predicate: forThisDevice,
      timeoutMs,
      command: 'device_del',
    });
    const refused = this.monitor.expectEvent('DEVICE_UNPLUG_GUEST_ERROR', {
      predicate: forThisDevice,
      timeoutMs,
      command: 'device_del',
    });
    try {
      await this.monitor.execute(
        'device_del',
        { id },
        {
          timeoutMs: Math.min(timeoutMs, this.monitor.timeoutFor('device_del')),
        },
      );
      await Promise.race([
        deleted.promise,
        refused.promise.then((event) => {
          throw new VmmError('DEVICE_ERROR', `guest refused to release device '${id}'`, {
            details: { id, path: event.data.path },
          });
        }),
      ]);
    } finally {
      deleted.cancel();
      refused.cancel();
    }
  }

  /** `netdev_add`: create a host network backend (tap, user, …) for a NIC to use. */
  async netdevAdd(options: NetdevAddOptions, callOptions?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('netdev_add', { ...options }, callOptions);
  }

  /** `netdev_del`. */
  async netdevDel(id: string, options?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('netdev_del', { id }, options);
  }

  /** `migrate-set-capabilities`: e.g. `{ 'auto-converge': true, events: true }`. Set on both sides before migrating. */
  async migrateSetCapabilities(
    capabilities: Partial<Record<MigrationCapability, boolean>>,
    options?: QmpCallOptions,
  ): Promise<void> {
    const list = Object.entries(capabilities)
      .filter((entry): entry is [string, boolean] => typeof entry[1] === 'boolean')
      .map(([capability, state]) => ({ capability, state }));
    await this.monitor.execute('migrate-set-capabilities', { capabilities: list }, options);
  }

  /** `query-migrate-capabilities`, as a map from capability to state. */
  async queryMigrateCapabilities(options?: QmpCallOptions): Promise<Record<string, boolean>> {
    const list = await this.query(
      'query-migrate-capabilities',
      undefined,
      z.array(z.object({ capability: z.string(), state: z.boolean() })),
      options,
    );
    return Object.fromEntries(list.map((c) => [c.capability, c.state]));
  }

  /** `migrate-set-parameters`; members left undefined keep their current value. */
  async migrateSetParameters(parameters: MigrationParameters, options?: QmpCallOptions): Promise<void> {
    const args: Record<string, unknown> = {};
    for (const [key, qemuName] of Object.entries(MIGRATION_PARAMETER_NAMES)) {
      const value = parameters[key as keyof MigrationParameters];
      if (value !== undefined) args[qemuName] = value;
    }
    await this.monitor.execute('migrate-set-parameters', args, options);
  }

  /** `query-migrate-parameters`, mapped back to camelCase (TLS members: empty string when unset). */
  async queryMigrateParameters(options?: QmpCallOptions): Promise<MigrationParameters> {
    const raw = await this.query(
      'query-migrate-parameters',
      undefined,
      z.record(z.string(), z.unknown()),
      options,
    );
    const parameters: Record<string, unknown> = {};
    for (const [key, qemuName] of Object.entries(MIGRATION_PARAMETER_NAMES)) {
      if (raw[qemuName] !== undefined) parameters[key] = raw[qemuName];
    }
    return parse(migrationParametersSchema, 'query-migrate-parameters', parameters);
  }

  /**
   * `migrate`: start an outgoing migration to `uri` (e.g. `tcp:10.0.0.2:4444`). Returns once
   * started; follow it with {@link QmpCommands.queryMigrate} or `MIGRATION` events.
   */
  async migrate(uri: string, options?: QmpMigrateOptions): Promise<void> {
    const args: Record<string, unknown> = { uri };
    if (options?.resume !== undefined) args.resume = options.resume;
    await this.monitor.execute('migrate', args, options);
  }

  /** `migrate-incoming`: listen on `uri` on a QEMU started with `-incoming defer`. */
  async migrateIncoming(uri: string, options?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('migrate-incoming', { uri }, options);
  }

  /** `migrate_cancel`: ends in status `cancelled`; the source guest keeps running. */
  async migrateCancel(options?: QmpCallOptions): Promise<void> {
    await this.monitor.execute('migrate_cancel', undefined, options);
  }

  /** `query-migrate`: progress of the current or last migration (`status: 'none'` if there was none). */
  async queryMigrate(options?: QmpCallOptions): Promise<MigrationInfo> {
    return this.query('query-migrate', undefined, migrationInfoSchema, options);
  }

  /** `human-monitor-command`: an HMP command line, for diagnostics; the output is free text. */
  async humanMonitorCommand(
    commandLine: string,
    options?: QmpCallOptions & { cpuIndex?: number },
  ): Promise<string> {
    const args: Record<string, unknown> = { 'command-line': commandLine };
    if (options?.cpuIndex !== undefined) args['cpu-index'] = options.cpuIndex;
    return this.query('human-monitor-command', args, z.string(), options);
  }

  private async query<S extends z.ZodType>(
    command: string,
    args: Record<string, unknown> | undefined,
    schema: S,
    options: QmpCallOptions | undefined,
  ): Promise<z.output<S>> {
    const reply = await this.monitor.execute(command, args, options);
    return parse(schema, command, reply);
  }
}

function parse<S extends z.ZodType>(schema: S, command: string, value: unknown): z.output<S> {
  const result = schema.safeParse(value);
  if (!result.success) {
    throw new QmpProtocolError(`unexpected reply to '${command}': ${z.prettifyError(result.error)}`, {
      cause: result.error,
    });
  }
  return result.data;
}

const int = z.number();
const optInt = z.number().optional();

const statusInfoSchema = z
  .object({ status: z.string(), running: z.boolean(), singlestep: z.boolean().optional() })
  .transform(
    (r): StatusInfo => ({
      status: r.status,
      running: r.running,
      ...(r.singlestep === undefined ? {} : { singlestep: r.singlestep }),
    }),
  );

const versionInfoSchema = z.object({
  qemu: z.object({ major: int, minor: int, micro: int }),
  package: z.string(),
});

const kvmInfoSchema = z.object({ enabled: z.boolean(), present: z.boolean() });

const nameInfoSchema = z.object({ name: z.string().optional() });

const cpuPropsSchema = z
  .object({
    'node-id': optInt,
    'socket-id': optInt,
    'die-id': optInt,
    'cluster-id': optInt,
    'core-id': optInt,
    'thread-id': optInt,
  })
  .transform(
    (r): CpuInstanceProperties =>
      withoutUndefined({
        nodeId: r['node-id'],
        socketId: r['socket-id'],
        dieId: r['die-id'],
        clusterId: r['cluster-id'],
        coreId: r['core-id'],
        threadId: r['thread-id'],
      }),
  );

const cpuInfoFastSchema = z
  .object({
    'cpu-index': int,
    'qom-path': z.string(),
    'thread-id': int,
    target: z.string(),
    props: cpuPropsSchema.optional(),
  })
  .transform(
    (r): CpuInfoFast =>
      withoutUndefined({
        cpuIndex: r['cpu-index'],
        threadId: r['thread-id'],
        qomPath: r['qom-path'],
        target: r.target,
        props: r.props,
      }),
  );

const hotpluggableCpuSchema = z
  .object({ type: z.string(), 'vcpus-count': int, props: cpuPropsSchema, 'qom-path': z.string().optional() })
  .transform(
    (r): HotpluggableCpu =>
      withoutUndefined({
        type: r.type,
        vcpusCount: r['vcpus-count'],
        props: r.props,
        qomPath: r['qom-path'],
      }),
  );

const blockImageInfoSchema = z
  .object({
    filename: z.string(),
    format: z.string(),
    'virtual-size': int,
    'actual-size': optInt,
    'cluster-size': optInt,
    'dirty-flag': z.boolean().optional(),
    encrypted: z.boolean().optional(),
    compressed: z.boolean().optional(),
    'backing-filename': z.string().optional(),
    'full-backing-filename': z.string().optional(),
    'backing-filename-format': z.string().optional(),
  })
  .transform(
    (r): BlockImageInfo =>
      withoutUndefined({
        filename: r.filename,
        format: r.format,
        virtualSize: r['virtual-size'],
        actualSize: r['actual-size'],
        clusterSize: r['cluster-size'],
        dirtyFlag: r['dirty-flag'],
        encrypted: r.encrypted,
        compressed: r.compressed,
        backingFilename: r['backing-filename'],
        fullBackingFilename: r['full-backing-filename'],
        backingFilenameFormat: r['backing-filename-format'],
      }),
  );

const blockDeviceInfoSchema = z
  .object({
    file: z.string(),
    'node-name': z.string().optional(),
    ro: z.boolean(),
    drv: z.string(),
    backing_file: z.string().optional(),
    backing_file_depth: int,
    encrypted: z.boolean(),
    detect_zeroes: z.string(),
    cache: z.object({ writeback: z.boolean(), direct: z.boolean(), 'no-flush': z.boolean() }),
    image: blockImageInfoSchema,
    bps: int,
    bps_rd: int,
    bps_wr: int,
    iops: int,
    iops_rd: int,
    iops_wr: int,
    write_threshold: int,
  })
  .transform(
    (r): BlockDeviceInfo =>
      withoutUndefined({
        file: r.file,
        nodeName: r['node-name'],
        readOnly: r.ro,
        driver: r.drv,
        backingFile: r.backing_file,
        backingFileDepth: r.backing_file_depth,
        encrypted: r.encrypted,
        detectZeroes: r.detect_zeroes,
        cache: { writeback: r.cache.writeback, direct: r.cache.direct, noFlush: r.cache['no-flush'] },
        image: r.image,
        bps: r.bps,
        bpsRd: r.bps_rd,
        bpsWr: r.bps_wr,
        iops: r.iops,
        iopsRd: r.iops_rd,
        iopsWr: r.iops_wr,
        writeThreshold: r.write_threshold,
      }),
  );

const blockInfoSchema = z
  .object({
    device: z.string(),
    qdev: z.string().optional(),
    type: z.string(),
    removable: z.boolean(),
    locked: z.boolean(),
    tray_open: z.boolean().optional(),
    'io-status': z.string().optional(),
    inserted: blockDeviceInfoSchema.optional(),
  })
  .transform(
    (r): BlockInfo =>
      withoutUndefined({
        device: r.device,
        qdev: r.qdev,
        type: r.type,
        removable: r.removable,
        locked: r.locked,
        trayOpen: r.tray_open,
        ioStatus: r['io-status'],
        inserted: r.inserted,
      }),
  );

const blockDeviceStatsSchema = z
  .object({
    rd_bytes: int,
    wr_bytes: int,
    unmap_bytes: int,
    rd_operations: int,
    wr_operations: int,
    flush_operations: int,
    unmap_operations: int,
    rd_total_time_ns: int,
    wr_total_time_ns: int,
    flush_total_time_ns: int,
    unmap_total_time_ns: int,
    wr_highest_offset: int,
    rd_merged: int,
    wr_merged: int,
    unmap_merged: int,
    idle_time_ns: optInt,
    failed_rd_operations: int,
    failed_wr_operations: int,
    failed_flush_operations: int,
    failed_unmap_operations: int,
    invalid_rd_operations: int,
    invalid_wr_operations: int,
    invalid_flush_operations: int,
    invalid_unmap_operations: int,
    account_invalid: z.boolean(),
    account_failed: z.boolean(),
  })
  .transform(
    (r): BlockDeviceStats =>
      withoutUndefined({
        rdBytes: r.rd_bytes,
        wrBytes: r.wr_bytes,
        unmapBytes: r.unmap_bytes,
        rdOperations: r.rd_operations,
        wrOperations: r.wr_operations,
        flushOperations: r.flush_operations,
        unmapOperations: r.unmap_operations,
        rdTotalTimeNs: r.rd_total_time_ns,
        wrTotalTimeNs: r.wr_total_time_ns,
        flushTotalTimeNs: r.flush_total_time_ns,
        unmapTotalTimeNs: r.unmap_total_time_ns,
        wrHighestOffset: r.wr_highest_offset,
        rdMerged: r.rd_merged,
        wrMerged: r.wr_merged,
        unmapMerged: r.unmap_merged,
        idleTimeNs: r.idle_time_ns,
        failedRdOperations: r.failed_rd_operations,
        failedWrOperations: r.failed_wr_operations,
        failedFlushOperations: r.failed_flush_operations,
        failedUnmapOperations: r.failed_unmap_operations,
        invalidRdOperations: r.invalid_rd_operations,
        invalidWrOperations: r.invalid_wr_operations,
        invalidFlushOperations: r.invalid_flush_operations,
        invalidUnmapOperations: r.invalid_unmap_operations,
        accountInvalid: r.account_invalid,
        accountFailed: r.account_failed,
      }),
  );

const blockStatsSchema = z
  .object({
    device: z.string().optional(),
    qdev: z.string().optional(),
    'node-name': z.string().optional(),
    stats: blockDeviceStatsSchema,
  })
  .transform(
    (r): BlockStats =>
      withoutUndefined({ device: r.device, qdev: r.qdev, nodeName: r['node-name'], stats: r.stats }),
  );

interface RawPciDevice {
  bus: number;
  slot: number;
  function: number;
  class_info: { class: number; desc?: string | undefined };
  id: {
    vendor: number;
    device: number;
    subsystem?: number | undefined;
    'subsystem-vendor'?: number | undefined;
  };
  irq?: number | undefined;
  irq_pin: number;
  qdev_id: string;
  regions: {
    bar: number;
    type: string;
    address: number;
    size: number;
    prefetch?: boolean | undefined;
    mem_type_64?: boolean | undefined;
  }[];
  pci_bridge?:
    | {
        bus: { number: number; secondary: number; subordinate: number };
        devices?: RawPciDevice[] | undefined;
      }
    | undefined;
}

const rawPciDeviceSchema: z.ZodType<RawPciDevice> = z.lazy(() =>
  z.object({
    bus: int,
    slot: int,
    function: int,
    class_info: z.object({ class: int, desc: z.string().optional() }),
    id: z.object({ vendor: int, device: int, subsystem: optInt, 'subsystem-vendor': optInt }),
    irq: optInt,
    irq_pin: int,
    qdev_id: z.string(),
    regions: z.array(
      z.object({
        bar: int,
        type: z.string(),
        address: int,
        size: int,
        prefetch: z.boolean().optional(),
        mem_type_64: z.boolean().optional(),
      }),
    ),
    pci_bridge: z
      .object({
        bus: z.object({ number: int, secondary: int, subordinate: int }),
        devices: z.array(rawPciDeviceSchema).optional(),
      })
      .optional(),
  }),
);

const rawPciBusSchema = z.object({ bus: int, devices: z.array(rawPciDeviceSchema) });

function toPciDeviceInfo(r: RawPciDevice): PciDeviceInfo {
  return withoutUndefined({
    bus: r.bus,
    slot: r.slot,
    function: r.function,
    classInfo: withoutUndefined({ class: r.class_info.class, desc: r.class_info.desc }),
    id: withoutUndefined({
      vendor: r.id.vendor,
      device: r.id.device,
      subsystem: r.id.subsystem,
      subsystemVendor: r.id['subsystem-vendor'],
    }),
    irq: r.irq,
    irqPin: r.irq_pin,
    qdevId: r.qdev_id,
    regions: r.regions.map((region) =>
      withoutUndefined({
        bar: region.bar,
        type: region.type,
        address: region.address,
        size: region.size,
        prefetch: region.prefetch,
        mem64: region.mem_type_64,
      }),
    ),
    pciBridge:
      r.pci_bridge === undefined
        ? undefined
        : {
            bus: {
              number: r.pci_bridge.bus.number,
              secondary: r.pci_bridge.bus.secondary,
              subordinate: r.pci_bridge.bus.subordinate,
            },
            devices: (r.pci_bridge.devices ?? []).map(toPciDeviceInfo),
          },
  });
}

const machineInfoSchema = z
  .object({
    name: z.string(),
    alias: z.string().optional(),
    'is-default': z.boolean().optional(),
    'cpu-max': int,
    'hotpluggable-cpus': z.boolean(),
    'numa-mem-supported': z.boolean(),
    deprecated: z.boolean(),
    'default-cpu-type': z.string().optional(),
    'default-ram-id': z.string().optional(),
  })
  .transform(
    (r): MachineInfo =>
      withoutUndefined({
        name: r.name,
        alias: r.alias,
        isDefault: r['is-default'] ?? false,
        cpuMax: r['cpu-max'],
        hotpluggableCpus: r['hotpluggable-cpus'],
        numaMemSupported: r['numa-mem-supported'],
        deprecated: r.deprecated,
        defaultCpuType: r['default-cpu-type'],
        defaultRamId: r['default-ram-id'],
      }),
  );

const cpuDefinitionSchema = z
  .object({
    name: z.string(),
    'migration-safe': z.boolean().optional(),
    static: z.boolean(),
    'unavailable-features': z.array(z.string()).optional(),
    typename: z.string(),
    'alias-of': z.string().optional(),
    deprecated: z.boolean(),
  })
  .transform(
    (r): CpuDefinitionInfo =>
      withoutUndefined({
        name: r.name,
        migrationSafe: r['migration-safe'],
        static: r.static,
        unavailableFeatures: r['unavailable-features'],
        typename: r.typename,
        aliasOf: r['alias-of'],
        deprecated: r.deprecated,
      }),
  );

const migrationStatsSchema = z
  .object({
    transferred: int,
    remaining: int,
    total: int,
    duplicate: int,
    skipped: optInt,
    normal: int,
    'normal-bytes': int,
    'dirty-pages-rate': int,
    mbps: z.number(),
    'dirty-sync-count': int,
    'postcopy-requests': optInt,
    'page-size': optInt,
    'multifd-bytes': optInt,
    'pages-per-second': optInt,
    'precopy-bytes': optInt,
    'downtime-bytes': optInt,
    'postcopy-bytes': optInt,
  })
  .transform(
    (r): MigrationStats =>
      withoutUndefined({
        transferred: r.transferred,
        remaining: r.remaining,
        total: r.total,
        duplicate: r.duplicate,
        skipped: r.skipped,
        normal: r.normal,
        normalBytes: r['normal-bytes'],
        dirtyPagesRate: r['dirty-pages-rate'],
        mbps: r.mbps,
        dirtySyncCount: r['dirty-sync-count'],
        postcopyRequests: r['postcopy-requests'],
        pageSize: r['page-size'],
        multifdBytes: r['multifd-bytes'],
        pagesPerSecond: r['pages-per-second'],
        precopyBytes: r['precopy-bytes'],
        downtimeBytes: r['downtime-bytes'],
        postcopyBytes: r['postcopy-bytes'],
      }),
  );

const xbzrleCacheSchema = z
  .object({
    'cache-size': int,
    bytes: int,
    pages: int,
    'cache-miss': int,
    'cache-miss-rate': z.number(),
    'encoding-rate': z.number().optional(),
    overflow: int,
  })
  .transform(
    (r): XbzrleCacheStats =>
      withoutUndefined({
        cacheSize: r['cache-size'],
        bytes: r.bytes,
        pages: r.pages,
        cacheMiss: r['cache-miss'],
        cacheMissRate: r['cache-miss-rate'],
        encodingRate: r['encoding-rate'],
        overflow: r.overflow,
      }),
  );

const socketAddressSchema = z
  .object({
    type: z.string(),
    host: z.string().optional(),
    port: z.string().optional(),
    path: z.string().optional(),
    cid: z.string().optional(),
    str: z.string().optional(),
  })
  .transform((r): MigrationSocketAddress => withoutUndefined(r));

const migrationInfoSchema = z
  .object({
    status: z.string().optional(),
    ram: migrationStatsSchema.optional(),
    disk: migrationStatsSchema.optional(),
    'xbzrle-cache': xbzrleCacheSchema.optional(),
    'total-time': optInt,
    'expected-downtime': optInt,
    downtime: optInt,
    'setup-time': optInt,
    'cpu-throttle-percentage': optInt,
    'error-desc': z.string().optional(),
    'blocked-reasons': z.array(z.string()).optional(),
    'socket-address': z.array(socketAddressSchema).optional(),
  })
  .transform(
    (r): MigrationInfo =>
      withoutUndefined({
        // QEMU answers `{}` when no migration has ever run.
        status: r.status ?? 'none',
        ram: r.ram,
        disk: r.disk,
        xbzrleCache: r['xbzrle-cache'],
        totalTimeMs: r['total-time'],
        expectedDowntimeMs: r['expected-downtime'],
        downtimeMs: r.downtime,
        setupTimeMs: r['setup-time'],
        cpuThrottlePercentage: r['cpu-throttle-percentage'],
        errorDesc: r['error-desc'],
        blockedReasons: r['blocked-reasons'],
        socketAddress: r['socket-address'],
      }),
  );

const migrationParametersSchema = z.object({
  downtimeLimitMs: optInt,
  maxBandwidth: optInt,
  cpuThrottleInitial: optInt,
  cpuThrottleIncrement: optInt,
  cpuThrottleTailslow: z.boolean().optional(),
  maxCpuThrottle: optInt,
  throttleTriggerThreshold: optInt,
  multifdChannels: optInt,
  multifdCompression: z.enum(['none', 'zlib', 'zstd']).optional(),
  xbzrleCacheSize: optInt,
  maxPostcopyBandwidth: optInt,
  announceInitialMs: optInt,
  announceMaxMs: optInt,
  announceRounds: optInt,
  announceStepMs: optInt,
  compressLevel: optInt,
  compressThreads: optInt,
  decompressThreads: optInt,
  tlsCreds: z.string().optional(),
  tlsHostname: z.string().optional(),
  tlsAuthz: z.string().optional(),
}) satisfies z.ZodType<MigrationParameters>;

// Results leave out members QEMU did not send rather than carrying `key: undefined`, so they
// compare and serialise like the replies they came from.
function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter((entry) => entry[1] !== undefined)) as T;
}

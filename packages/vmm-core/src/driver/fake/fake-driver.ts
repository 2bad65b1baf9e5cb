import { VmmError } from '../../errors.js';
import {
  type DiskSpec,
  type NicSpec,
  parseDiskSpec,
  parseNicSpec,
  parseVmSpec,
  type VmSpec,
  type VmSpecInput,
} from '../../spec/vm-spec.js';
import { assertActionAllowed, type VmAction, type VmState } from '../../state/vm-state.js';
import { KeyedMutex } from '../../util/mutex.js';
import { type PoolMap, resolvePoolPath, vmRuntimePaths } from '../../util/paths.js';
import type {
  AdoptResult,
  HostSample,
  Hypervisor,
  HypervisorCapabilities,
  MigrateOptions,
  MigrationProgress,
  MigrationResult,
  PrepareIncomingOptions,
  SaveResult,
  SnapshotInfo,
  StoragePool,
  VmEvent,
  VmInfo,
  VmSample,
  VmSize,
} from '../hypervisor.js';
import { assertMigratable, assertSpecFitsHost } from '../spec-checks.js';

interface FakeVm {
  spec: VmSpec;
  state: VmState;
  pid: number | undefined;
  startedAt: number;
  cpuSeconds: number;
  snapshots: SnapshotInfo[];
  savedState?: 'RUNNING' | 'PAUSED';
  incoming?: boolean;
  migration?: { cancelled: boolean };
  console: string[];
}

/**
 * What survives a fake driver "restart": pass the same host to a new FakeDriver to model an
 * agent restart with guests still running.
 */
export class FakeHost {
  readonly vms = new Map<string, FakeVm>();
  readonly savedFiles = new Map<string, { vmId: string; spec: VmSpec; state: 'RUNNING' | 'PAUSED' }>();
  nextPid = 100_000;
}

/** Connects fake drivers so one can migrate to another (uri tcp:HOST:PORT → destination driver). */
export class FakeFabric {
  private readonly endpoints = new Map<string, { driver: FakeDriver; vmId: string }>();
  private nextPort = 49_152;

  listen(host: string, port: number, driver: FakeDriver, vmId: string): string {
    const p = port || this.nextPort++;
    const uri = `tcp:${host}:${p}`;
    if (this.endpoints.has(uri)) throw new VmmError('QEMU_FAILED', `address ${uri} already in use`);
    this.endpoints.set(uri, { driver, vmId });
    return uri;
  }

  lookup(uri: string): { driver: FakeDriver; vmId: string } | undefined {
    return this.endpoints.get(uri);
  }

  close(uri: string): void {
    this.endpoints.delete(uri);
  }
}

export interface FakeDriverOptions {
  runtimeDir: string;
  pools: Record<string, StoragePool>;
  host?: FakeHost;
  fabric?: FakeFabric;
  /** Simulated time per lifecycle call; 0 keeps scale tests fast. */
  latencyMs?: number;
  cpuModels?: string[];
  machineTypes?: string[];
  qemuVersion?: string;
}

/**
 * An in-memory hypervisor for scale tests of the layers above vmm-core. It enforces the same
 * spec validation, path rules and state table as the qemu driver and passes the same contract
 * tests; it runs no guest.
 */
export class FakeDriver implements Hypervisor {
  readonly driver = 'fake' as const;
  readonly host: FakeHost;
  private readonly fabric: FakeFabric;
  private readonly pools: PoolMap;
  private readonly listeners = new Set<(e: VmEvent) => void>();
  private readonly locks = new KeyedMutex();
  private readonly incomingUris = new Map<string, string>();

  constructor(private readonly options: FakeDriverOptions) {
    this.host = options.host ?? new FakeHost();
    this.fabric = options.fabric ?? new FakeFabric();
    this.pools = options.pools;
  }

  async capabilities(): Promise<HypervisorCapabilities> {
    return {
      driver: 'fake',
      accelerator: 'fake',
      acceleratorReason: 'fake driver: no guest runs',
      qemuVersion: this.options.qemuVersion ?? '7.2.0',
      machineTypes: this.options.machineTypes ?? ['pc', 'pc-i440fx-7.2', 'q35', 'pc-q35-7.2', 'microvm'],
      defaultMachineType: 'pc',
      cpuModels: this.options.cpuModels ?? ['qemu64', 'kvm64', 'EPYC', 'Skylake-Server'],
      defaultCpuModel: 'qemu64',
      features: {
        liveMigration: true,
        saveRestore: true,
        diskHotplug: true,
        nicHotplug: true,
        internalSnapshots: true,
        externalSnapshots: true,
      },
    };
  }

  onEvent(handler: (event: VmEvent) => void): () => void {
    this.listeners.add(handler);
    return () => this.listeners.delete(handler);
  }

  async create(input: VmSpecInput): Promise<VmInfo> {
    const spec = parseVmSpec(input);
    return this.locks.run(spec.id, async () => {
      assertSpecFitsHost(spec, this.options.runtimeDir, this.pools, await this.capabilities());
      if (this.host.vms.has(spec.id))
        throw new VmmError('VM_EXISTS', `VM ${spec.id} already exists on this host`);
      await this.delay();
      this.host.vms.set(spec.id, newVm(spec));
      return this.info(spec.id);
    });
  }

  async start(id: string): Promise<VmInfo> {
    return this.transition(id, 'start', (vm) => {
      vm.state = 'RUNNING';
      vm.pid = this.host.nextPid++;
      vm.startedAt = Date.now();
      vm.console.push('HANGAR-READY (fake)');
      return 'started';
    });
  }

  async stop(id: string): Promise<VmInfo> {
    return this.transition(id, 'stop', (vm) => this.halt(vm, 'guest-shutdown'));
  }

  async forceStop(id: string): Promise<VmInfo> {
    return this.transition(id, 'forceStop', (vm) => this.halt(vm, 'host-qmp-quit'));
  }

  async reboot(id: string): Promise<VmInfo> {
    return this.transition(id, 'reboot', () => 'reset');
  }

  async pause(id: string): Promise<VmInfo> {
    return this.transition(id, 'pause', (vm) => {
      vm.state = 'PAUSED';
      return 'stop';
    });
  }

  async resume(id: string): Promise<VmInfo> {
    return this.transition(id, 'resume', (vm) => {
      vm.state = 'RUNNING';
      return 'resume';
    });
  }

  async resize(id: string, size: VmSize): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      assertActionAllowed('resize', vm.state, id);
      const spec = parseVmSpec({ ...vm.spec, vcpus: size.vcpus, memoryMiB: size.memoryMiB });
      assertSpecFitsHost(spec, this.options.runtimeDir, this.pools, await this.capabilities());
      await this.delay();
      vm.spec = spec;
      return this.info(id);
    });
  }

  async delete(id: string): Promise<void> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      assertActionAllowed('delete', vm.state, id);
      await this.delay();
      this.host.vms.delete(id);
    });
  }

  async get(id: string): Promise<VmInfo> {
    return this.info(id);
  }

  async list(): Promise<VmInfo[]> {
    return [...this.host.vms.keys()].sort().map((id) => this.info(id));
  }

  async adopt(): Promise<AdoptResult> {
    return { adopted: await this.list(), orphans: [] };
  }

  async consoleLog(id: string, options: { tailBytes?: number } = {}): Promise<string> {
    const text = this.vm(id).console.join('\n');
    return text.slice(Math.max(0, text.length - (options.tailBytes ?? 64 * 1024)));
  }

  async prepareIncoming(
    input: VmSpecInput,
    options: PrepareIncomingOptions,
  ): Promise<{ uri: string; vm: VmInfo }> {
    const spec = parseVmSpec(input);
    assertMigratable(spec, this.pools);
    return this.locks.run(spec.id, async () => {
      assertSpecFitsHost(spec, this.options.runtimeDir, this.pools, await this.capabilities());
      if (this.host.vms.has(spec.id))
        throw new VmmError('VM_EXISTS', `VM ${spec.id} already exists on this host`);
      const vm = newVm(spec);
      vm.state = 'INCOMING';
      vm.pid = this.host.nextPid++;
      vm.incoming = true;
      this.host.vms.set(spec.id, vm);
      const uri = this.fabric.listen(options.listenHost, options.port ?? 0, this, spec.id);
      this.incomingUris.set(spec.id, uri);
      return { uri, vm: this.info(spec.id) };
    });
  }

  async migrate(
    id: string,
    uri: string,
    options: MigrateOptions = {},
    onProgress?: (p: MigrationProgress) => void,
  ): Promise<MigrationResult> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      assertMigratable(vm.spec, this.pools);
      assertActionAllowed('migrate', vm.state, id);
      if (vm.state === 'STOPPED')
        throw new VmmError('INVALID_STATE', `VM ${id} is not running`, { details: { state: 'STOPPED' } });
      const target = this.fabric.lookup(uri);
      if (!target)
        throw new VmmError('MIGRATION_FAILED', `migration of ${id} failed: failed to connect to ${uri}`);
      const dest = target.driver.host.vms.get(target.vmId);
      if (dest?.state !== 'INCOMING') {
        throw new VmmError('MIGRATION_FAILED', `migration of ${id} failed: nothing waits at ${uri}`);
      }
      const before = vm.state;
      const started = Date.now();
      vm.state = 'MIGRATING';
      vm.migration = { cancelled: false };
      this.emit({ vmId: id, type: 'state', state: 'MIGRATING', reason: 'migration-started', at: new Date() });
      const total = vm.spec.memoryMiB * 1024 * 1024;
      const steps = 4;
      try {
        for (let i = 1; i <= steps; i++) {
          await this.delay();
          if (vm.migration.cancelled) {
            vm.state = before;
            throw new VmmError(
              'MIGRATION_CANCELLED',
              `migration of ${id} was cancelled; the source keeps running`,
            );
          }
          if (
            options.completionTimeoutMs !== undefined &&
            Date.now() - started > options.completionTimeoutMs
          ) {
            vm.state = before;
            throw new VmmError(
              'MIGRATION_FAILED',
              `migration of ${id} did not complete within ${options.completionTimeoutMs} ms`,
            );
          }
          const remaining = Math.round((total * (steps - i)) / steps);
          onProgress?.({
            status: i === steps ? 'completed' : 'active',
            transferredBytes: total - remaining,
            remainingBytes: remaining,
            totalBytes: total,
            dirtyPagesRate: 0,
            expectedDowntimeMs: 1,
            cpuThrottlePercent: undefined,
            percent: i === steps ? 100 : Math.floor(((total - remaining) / total) * 100),
            elapsedMs: Date.now() - started,
          });
        }
        // Switch-over: the source stops, the destination runs with the guest's state.
        vm.state = 'STOPPED';
        dest.state = before === 'PAUSED' ? 'PAUSED' : 'RUNNING';
        dest.incoming = false;
        dest.cpuSeconds = vm.cpuSeconds;
        dest.console = [...vm.console];
        dest.startedAt = vm.startedAt;
        this.fabric.close(uri);
        return {
          downtimeMs: 1,
          totalMs: Math.max(1, Date.now() - started),
          transferredBytes: total,
          setupMs: 0,
        };
      } finally {
        vm.migration = undefined;
        this.emit({ vmId: id, type: 'state', state: vm.state, reason: 'migration-ended', at: new Date() });
      }
    });
  }

  async cancelMigration(id: string): Promise<void> {
    const vm = this.vm(id);
    if (!vm.migration) throw new VmmError('INVALID_STATE', `VM ${id} has no migration in progress`);
    vm.migration.cancelled = true;
  }

  async finishIncoming(id: string): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      if (vm.state === 'INCOMING')
        throw new VmmError('MIGRATION_FAILED', `incoming VM ${id} has not received its state`);
      return this.info(id);
    });
  }

  async completeOutgoing(id: string): Promise<void> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      if (vm.state === 'RUNNING' || vm.state === 'PAUSED') {
        throw new VmmError('INVALID_STATE', `VM ${id} still runs here; refusing to remove a live source`);
      }
      this.host.vms.delete(id);
    });
  }

  async abortIncoming(id: string): Promise<void> {
    return this.locks.run(id, async () => {
      const uri = this.incomingUris.get(id);
      if (uri) this.fabric.close(uri);
      this.incomingUris.delete(id);
      this.host.vms.delete(id);
    });
  }

  async save(id: string, file: string): Promise<SaveResult> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      assertActionAllowed('save', vm.state, id);
      const state = vm.state === 'PAUSED' ? 'PAUSED' : 'RUNNING';
      this.host.savedFiles.set(file, { vmId: id, spec: vm.spec, state });
      vm.savedState = state;
      this.halt(vm, 'saved');
      return { file, bytes: vm.spec.memoryMiB * 1024 * 1024, totalMs: 1 };
    });
  }

  async restore(id: string, file: string): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      assertActionAllowed('restore', vm.state, id);
      const saved = this.host.savedFiles.get(file);
      if (!saved || saved.vmId !== id)
        throw new VmmError('INVALID_SPEC', `saved state ${file} does not exist`);
      vm.state = saved.state;
      vm.pid = this.host.nextPid++;
      return this.info(id);
    });
  }

  async attachDisk(id: string, input: DiskSpec): Promise<VmInfo> {
    const disk = parseDiskSpec(input);
    return this.device(id, 'attachDevice', (vm) => {
      resolvePoolPath(this.pools, disk.file);
      if (hasDevice(vm.spec, disk.name))
        throw new VmmError('INVALID_SPEC', `VM ${id} already has a device named ${disk.name}`);
      vm.spec.disks.push(disk);
    });
  }

  async detachDisk(id: string, name: string): Promise<VmInfo> {
    return this.device(id, 'detachDevice', (vm) => {
      if (!vm.spec.disks.some((d) => d.name === name))
        throw new VmmError('INVALID_SPEC', `VM ${id} has no disk named ${name}`);
      vm.spec.disks = vm.spec.disks.filter((d) => d.name !== name);
    });
  }

  async attachNic(id: string, input: NicSpec): Promise<VmInfo> {
    const nic = parseNicSpec(input);
    return this.device(id, 'attachDevice', (vm) => {
      if (hasDevice(vm.spec, nic.name) || vm.spec.nics.some((n) => n.mac === nic.mac)) {
        throw new VmmError(
          'INVALID_SPEC',
          `VM ${id} already has a NIC named ${nic.name} or with MAC ${nic.mac}`,
        );
      }
      vm.spec.nics.push(nic);
    });
  }

  async detachNic(id: string, name: string): Promise<VmInfo> {
    return this.device(id, 'detachDevice', (vm) => {
      if (!vm.spec.nics.some((n) => n.name === name))
        throw new VmmError('INVALID_SPEC', `VM ${id} has no NIC named ${name}`);
      vm.spec.nics = vm.spec.nics.filter((n) => n.name !== name);
    });
  }

  async createSnapshot(id: string, name: string): Promise<SnapshotInfo[]> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      assertActionAllowed('snapshot', vm.state, id);
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$/.test(name))
        throw new VmmError('INVALID_SPEC', `bad snapshot name "${name}"`);
      if (vm.snapshots.some((s) => s.name === name))
        throw new VmmError('INVALID_SPEC', `VM ${id} already has a snapshot named ${name}`);
      const disks = vm.spec.disks.filter((d) => d.format === 'qcow2' && !d.readOnly);
      if (disks.length === 0)
        throw new VmmError('INVALID_STATE', `VM ${id} has no writable qcow2 disk to snapshot`);
      for (const d of disks)
        vm.snapshots.push({ name, disk: d.name, vmStateBytes: 0, createdAt: new Date() });
      return [...vm.snapshots];
    });
  }

  async listSnapshots(id: string): Promise<SnapshotInfo[]> {
    return [...this.vm(id).snapshots];
  }

  async revertSnapshot(id: string, name: string): Promise<void> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      assertActionAllowed('revertSnapshot', vm.state, id);
      if (!vm.snapshots.some((s) => s.name === name))
        throw new VmmError('INVALID_SPEC', `VM ${id} has no snapshot named ${name}`);
    });
  }

  async deleteSnapshot(id: string, name: string): Promise<void> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      if (!vm.snapshots.some((s) => s.name === name))
        throw new VmmError('INVALID_SPEC', `VM ${id} has no snapshot named ${name}`);
      vm.snapshots = vm.snapshots.filter((s) => s.name !== name);
    });
  }

  async sampleVm(id: string): Promise<VmSample> {
    const vm = this.vm(id);
    if (vm.state !== 'RUNNING' && vm.state !== 'PAUSED' && vm.state !== 'MIGRATING') {
      throw new VmmError('INVALID_STATE', `VM ${id} is not running`);
    }
    // A simulated guest burns 1 % of one vCPU.
    const cpu = vm.cpuSeconds + 0.001 + (Date.now() - vm.startedAt) / 100_000;
    const perVcpu = Array.from({ length: vm.spec.vcpus }, () => cpu / vm.spec.vcpus);
    return {
      vmId: id,
      at: new Date(),
      vcpuSeconds: perVcpu,
      cpuSecondsTotal: cpu,
      rssBytes: Math.round(vm.spec.memoryMiB * 1024 * 1024 * 0.25),
      block: vm.spec.disks.map((d) => ({ device: d.name, rdBytes: 0, wrBytes: 0, rdOps: 0, wrOps: 0 })),
      nics: [],
    };
  }

  async sampleHost(): Promise<HostSample> {
    return {
      at: new Date(),
      cpuCount: 64,
      cpuSeconds: { user: 0, system: 0, idle: 0, iowait: 0, steal: 0 },
      memoryTotalBytes: 256 * 1024 ** 3,
      memoryAvailableBytes: 200 * 1024 ** 3,
      load1: 0,
      load5: 0,
      load15: 0,
    };
  }

  async close(): Promise<void> {
    this.listeners.clear();
  }

  // ---- internals ---------------------------------------------------------------------------

  private vm(id: string): FakeVm {
    vmRuntimePaths(this.options.runtimeDir, id);
    const vm = this.host.vms.get(id);
    if (!vm) throw new VmmError('VM_NOT_FOUND', `VM ${id} does not exist on this host`, { details: { id } });
    return vm;
  }

  private info(id: string): VmInfo {
    const vm = this.vm(id);
    const up = vm.state !== 'STOPPED';
    const qemuStatus = !up
      ? undefined
      : vm.state === 'PAUSED'
        ? 'paused'
        : vm.state === 'INCOMING'
          ? 'inmigrate'
          : 'running';
    return {
      id,
      name: vm.spec.name,
      state: vm.state,
      qemuStatus,
      pid: up ? vm.pid : undefined,
      spec: structuredClone(vm.spec),
    };
  }

  private transition(id: string, action: VmAction, apply: (vm: FakeVm) => string): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      assertActionAllowed(action, vm.state, id);
      await this.delay();
      const reason = apply(vm);
      this.emit({
        vmId: id,
        type: reason === 'reset' ? 'reset' : 'state',
        ...(reason === 'reset' ? {} : { state: vm.state }),
        reason,
        at: new Date(),
      });
      return this.info(id);
    });
  }

  private device(id: string, action: VmAction, apply: (vm: FakeVm) => void): Promise<VmInfo> {
    return this.locks.run(id, async () => {
      const vm = this.vm(id);
      assertActionAllowed(action, vm.state, id);
      apply(vm);
      return this.info(id);
    });
  }

  private halt(vm: FakeVm, reason: string): string {
    vm.state = 'STOPPED';
    vm.pid = undefined;
    return reason;
  }

  private async delay(): Promise<void> {
    const ms = this.options.latencyMs ?? 0;
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
  }

  private emit(event: VmEvent): void {
    for (const l of this.listeners) {
      try {
        l(event);
      } catch {
        // listeners must not break the driver
      }
    }
  }
}

function newVm(spec: VmSpec): FakeVm {
  return {
    spec,
    state: 'STOPPED',
    pid: undefined,
    startedAt: Date.now(),
    cpuSeconds: 0,
    snapshots: [],
    console: [],
  };
}

function hasDevice(spec: VmSpec, name: string): boolean {
  return spec.disks.some((d) => d.name === name) || spec.nics.some((n) => n.name === name);
}
